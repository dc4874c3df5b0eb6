"""Executor of GallerySearch (see components/gallery_search.py for the contract)."""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from typing import Any

import tensorflow as tf
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from components.datasets import read_feature_folder
from models.preprocessing import ID_KEY, IMAGE_KEY, LABEL_KEY, TEXT_KEY, read_split, split_files
from serving.search_model import encode_gallery, export_search_model

PUSHED_KEY, DESTINATION_KEY, VERSION_KEY = "pushed", "pushed_destination", "pushed_version"


def raw_feature_spec(encoder) -> dict[str, tf.io.FixedLenFeature]:
    """The raw example features the encoders take, with the dimensions their signatures declare."""
    dim = {m: int(encoder.signatures[f"encode_{m}"].structured_input_signature[1][m].shape[-1])
           for m in (IMAGE_KEY, TEXT_KEY)}
    return {IMAGE_KEY: tf.io.FixedLenFeature([dim[IMAGE_KEY]], tf.float32),
            TEXT_KEY: tf.io.FixedLenFeature([dim[TEXT_KEY]], tf.float32),
            LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
            ID_KEY: tf.io.FixedLenFeature([], tf.string)}


def gallery_splits(encoder, examples_uri: str, splits: list[str], gallery_dir: str | None):
    if gallery_dir:
        dataset = read_feature_folder(gallery_dir)
        return [dataset.splits[s] for s in splits]
    spec = raw_feature_spec(encoder)
    return [read_split(split_files(examples_uri, s), spec) for s in splits]


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
            command = [sys.executable, "-m", __name__, "--model-dir", model_dir,
                       "--examples-uri", get(input_dict["examples"]).uri,
                       "--splits", exec_properties["gallery_splits"],
                       "--export-dir", export_dir]
            if exec_properties.get("gallery_dir"):
                command += ["--gallery-dir", exec_properties["gallery_dir"]]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"GallerySearch: exporting {export_dir} failed:\n"
                                   f"{done.stderr[-4000:]}")
            search_model.set_int_custom_property("gallery_size", int(done.stdout.split()[-1]))
            logging.info("GallerySearch: wrote %s", export_dir)
        search_model.set_int_custom_property(PUSHED_KEY, 1)
        search_model.set_string_custom_property(DESTINATION_KEY, export_dir)
        search_model.set_string_custom_property(VERSION_KEY, version)


def export(model_dir: str, examples_uri: str, splits: str, export_dir: str,
           gallery_dir: str | None = None) -> int:
    """Encodes the gallery with the pushed model and writes the search servable; returns the
    number of gallery items (both modalities)."""
    encoder = tf.saved_model.load(model_dir)
    gallery = encode_gallery(encoder, gallery_splits(
        encoder, examples_uri, [s for s in splits.split(",") if s], gallery_dir))
    export_search_model(model_dir, gallery, export_dir, encoder=encoder)
    return sum(len(p) for p in gallery.values())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Writes the gallery search servable.")
    for flag in ("--model-dir", "--examples-uri", "--splits", "--export-dir"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--gallery-dir")
    args = parser.parse_args()
    print(export(args.model_dir, args.examples_uri, args.splits, args.export_dir,
                 args.gallery_dir))
