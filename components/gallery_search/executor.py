"""Executor of GallerySearch (see component.py for the contract)."""
from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import subprocess
import sys
from typing import Any

import numpy as np
import tensorflow as tf
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from components.datasets import read_feature_folder
from components.example_gen.utils import CLASS_NAMES_PROPERTY, pixel_image_size
from models.example_codec import read_split, split_files
from models.export import load_serving_model
from models.preprocessing import ID_KEY, IMAGE_KEY, LABEL_KEY, TEXT_KEY
from models.signatures import encode_signature
from serving.approximate_index import DEFAULT_NPROBE, RECALL_K, read_meta
from serving.gallery import MODALITIES
from serving.search_model import encode_gallery, export_search_model, input_spec

PUSHED_KEY, DESTINATION_KEY, VERSION_KEY = "pushed", "pushed_destination", "pushed_version"
REPORT_FILE = "gallery_search.json"  # in the search_model artifact's uri
ANN_FLAGS = {"ann_min_items": "--ann-min-items", "ann_nlist": "--ann-nlist",
             "ann_nprobe": "--ann-nprobe"}
TEXT_SNIPPET_CHARS = 300


def raw_feature_spec(encoder, image_size: int = 0) -> dict[str, tf.io.FixedLenFeature]:
    """The example features the encoders take, as their signatures declare them; raw pixel
    images (``image_size`` > 0) are stored as one bytes value."""
    spec = {}
    for modality in (IMAGE_KEY, TEXT_KEY):
        signature = input_spec(encoder, encode_signature(modality))
        if signature.dtype == tf.string or (modality == IMAGE_KEY and image_size):
            spec[modality] = tf.io.FixedLenFeature([], tf.string)
        else:
            spec[modality] = tf.io.FixedLenFeature([int(signature.shape[-1])], tf.float32)
    return {**spec, LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
            ID_KEY: tf.io.FixedLenFeature([], tf.string)}


def gallery_splits(encoder, examples_uri: str, splits: list[str], gallery_dir: str | None,
                   image_size: int = 0):
    if gallery_dir:
        dataset = read_feature_folder(gallery_dir)
        return [dataset.splits[s] for s in splits]
    spec = raw_feature_spec(encoder, image_size)
    return [read_split(split_files(examples_uri, s), spec, image_size=image_size or None)
            for s in splits]


def gallery_items(splits, class_names: list[str], image_size: int = 0) -> list[dict]:
    """What people see of each gallery item: class, and a thumbnail or a snippet when raw."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    items = []
    for split in splits:
        for row, (item_id, label) in enumerate(zip(split.ids, split.label)):
            common = {"id": str(item_id), "label": int(label),
                      "class_name": (class_names[label] if label < len(class_names)
                                     else str(label))}
            image = {**common, "modality": IMAGE_KEY}
            if image_size:
                pixels = np.asarray(split.image[row], np.uint8).reshape(image_size, image_size, 3)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                image["thumbnail"] = base64.b64encode(buffer.getvalue()).decode()
            text = {**common, "modality": TEXT_KEY}
            value = split.text[row]
            if isinstance(value, bytes):
                text["text"] = value.decode("utf-8", "replace")[:TEXT_SNIPPET_CHARS]
            items += [image, text]
    return items


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: dict[str, list], output_dict: dict[str, list],
           exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        get = artifact_utils.get_single_instance
        pushed, search_model = get(input_dict["pushed_model"]), get(output_dict["search_model"])
        if pushed.get_int_custom_property(PUSHED_KEY) != 1:
            logging.info("GallerySearch: the model was not pushed; no search model written")
            search_model.set_int_custom_property(PUSHED_KEY, 0)
            return
        model_dir = pushed.get_string_custom_property(DESTINATION_KEY)
        version = (pushed.get_string_custom_property(VERSION_KEY)
                   or os.path.basename(model_dir.rstrip("/")))
        export_dir = os.path.join(exec_properties["search_directory"], version)
        if os.path.exists(export_dir):  # same version = same pushed model: already done
            logging.info("GallerySearch: %s exists, kept as it is", export_dir)
        else:
            # A fresh process: tracing new functions around a SavedModel loaded into the
            # process that trained and saved it can bind the wrong function by name.
            examples = get(input_dict["examples"])
            command = [sys.executable, "-m", __name__, "--model-dir", model_dir,
                       "--examples-uri", examples.uri,
                       "--splits", exec_properties["gallery_splits"],
                       "--export-dir", export_dir,
                       "--image-size", str(pixel_image_size(examples)),
                       "--class-names", _string_property(examples, CLASS_NAMES_PROPERTY) or "[]"]
            if exec_properties.get("gallery_dir"):
                command += ["--gallery-dir", exec_properties["gallery_dir"]]
            for key, flag in ANN_FLAGS.items():
                if exec_properties.get(key) is not None:
                    command += [flag, str(exec_properties[key])]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"GallerySearch: exporting {export_dir} failed:\n"
                                   f"{done.stderr[-4000:]}")
            search_model.set_int_custom_property("gallery_size", int(done.stdout.split()[-1]))
            logging.info("GallerySearch: wrote %s", export_dir)
        search_model.set_int_custom_property(PUSHED_KEY, 1)
        search_model.set_string_custom_property(DESTINATION_KEY, export_dir)
        search_model.set_string_custom_property(VERSION_KEY, version)
        report_search_paths(search_model, export_dir, exec_properties.get("ann_min_items"))


def report_search_paths(search_model, export_dir: str, ann_min_items) -> dict:
    """Which gallery modalities ``cmgan serve`` searches approximately, and the recall@10 of
    their indexes against exact search (as recorded in the version at export): custom
    properties ``<modality>_search`` and ``<modality>_ann_recall_at_10``, and REPORT_FILE."""
    report = {"export_dir": export_dir, "ann_min_items": ann_min_items, "modalities": {}}
    for modality in MODALITIES:
        meta = read_meta(export_dir, modality)
        entry = {"search": "exact" if meta is None else "approximate"}
        if meta is not None:
            recall = meta.get(f"recall_at_{RECALL_K}")
            entry.update({"items": meta["count"], "index": meta["kind"], "nlist": meta["nlist"],
                          "nprobe": meta["nprobe"], f"recall_at_{RECALL_K}": recall,
                          "recall_queries": meta.get("recall_queries")})
            if recall is not None:
                search_model.set_float_custom_property(
                    f"{modality}_ann_recall_at_{RECALL_K}", float(recall))
            logging.info("GallerySearch: %s searched with %s (nprobe %d): recall@%d %s vs exact",
                         modality, meta["kind"], meta["nprobe"], RECALL_K, recall)
        search_model.set_string_custom_property(f"{modality}_search", entry["search"])
        report["modalities"][modality] = entry
    os.makedirs(search_model.uri, exist_ok=True)
    with open(os.path.join(search_model.uri, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=1)
    return report


def _string_property(artifact, name: str) -> str:
    return artifact.get_string_custom_property(name) if artifact.has_custom_property(
        name) else ""


def export(model_dir: str, examples_uri: str, splits: str, export_dir: str,
           gallery_dir: str | None = None, image_size: int = 0,
           class_names: list[str] | None = None, **ann) -> int:
    """Encodes the gallery with the pushed model and writes the search servable (``ann``:
    export_search_model's ann_min_items, ann_nlist, ann_nprobe); returns the number of gallery
    items (both modalities)."""
    encoder = load_serving_model(model_dir)
    parts = gallery_splits(encoder, examples_uri, [s for s in splits.split(",") if s],
                           gallery_dir, image_size)
    gallery = encode_gallery(encoder, parts)
    export_search_model(model_dir, gallery, export_dir, encoder=encoder,
                        gallery_items=gallery_items(parts, class_names or [],
                                                    0 if gallery_dir else image_size),
                        **ann)
    return sum(len(p) for p in gallery.values())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Writes the gallery search servable.")
    for flag in ("--model-dir", "--examples-uri", "--splits", "--export-dir"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--gallery-dir")
    parser.add_argument("--image-size", type=int, default=0)
    parser.add_argument("--class-names", default="[]", help="JSON list")
    parser.add_argument("--ann-min-items", type=int, help="none given: no index")
    parser.add_argument("--ann-nlist", type=int)
    parser.add_argument("--ann-nprobe", type=int, default=DEFAULT_NPROBE)
    args = parser.parse_args()
    print(export(args.model_dir, args.examples_uri, args.splits, args.export_dir,
                 args.gallery_dir, args.image_size, json.loads(args.class_names),
                 ann_min_items=args.ann_min_items, ann_nlist=args.ann_nlist,
                 ann_nprobe=args.ann_nprobe))
