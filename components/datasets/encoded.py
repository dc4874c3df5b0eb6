"""A dataset as fixed feature vectors: pretrained encoders run once, outside Beam, and cached.

Repeated-split benchmarks train dozens of models on the same pairs; running EfficientNet or
MiniLM once per split would dominate their cost. This module reads a dataset by the pipeline's
names, runs the same encoder code the RawExampleGen runs (``torch:``/``keras:`` encoders through
their ``encode_directly`` loops, images decoded by models.image_decoding exactly as in Beam), and
keeps the vectors in an ``.npz`` keyed by the dataset's files and the encoder names.

Records that cannot be encoded (unreadable image, empty or non-UTF-8 text, unknown label) are
counted and set aside with their reason, as the RawExampleGen quarantines them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from components.datasets.errors import DatasetError
from components.datasets.raw_pairs import PAIRS_FILE, RawRecord, read_raw_pairs
from components.datasets.registry import PIPELINE_DATASETS
from models.data import SPLITS, FeatureDataset, Split
from models.encoder_kinds import FEATURES, is_keras, is_torch

# 2: torch:minilm reads a long text in 128-word-piece windows (it kept the first 256 pieces).
CACHE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class EncodedDataset:
    """Every usable pair as vectors, its split as read, and what was set aside."""

    dataset: FeatureDataset
    # True where the dataset fixes its test split (Wikipedia's standard split, a feature folder,
    # a pairs.csv with a split column); False where the split was drawn here from a seed.
    fixed_test: bool
    set_aside: dict[str, int]  # reason -> count
    cache_file: str | None = None
    computed: bool = True  # False when read from the cache


def encode_dataset(name: str, data_dir: str | os.PathLike | None, *,
                   image_encoder: str = FEATURES, text_encoder: str = FEATURES,
                   cache_dir: str | os.PathLike | None = None,
                   image_size: int | None = None) -> EncodedDataset:
    """The dataset ``name`` (``demo-features``, ``wikipedia``, ``features``, ``raw``) as vectors.

    ``features`` encoders keep what the dataset ships (Wikipedia's SIFT/LDA, npz folders); a
    ``torch:``/``keras:`` encoder computes vectors from raw images or texts. With ``cache_dir``
    the vectors are stored there and read back while the inputs are unchanged.
    """
    from components.datasets import load_dataset  # pylint: disable=import-outside-toplevel

    if name == "demo-features":
        _require_features(name, image_encoder, text_encoder)
        return EncodedDataset(load_dataset(PIPELINE_DATASETS[name].feature_reader, seed=0),
                              fixed_test=False, set_aside={})
    if name == "features":
        _require_features(name, image_encoder, text_encoder)
        return EncodedDataset(load_dataset("features", data_dir), fixed_test=True, set_aside={})
    if name == "wikipedia" and image_encoder == FEATURES and text_encoder == FEATURES:
        return EncodedDataset(load_dataset("wikipedia", data_dir, seed=0), fixed_test=True,
                              set_aside={})
    if name not in ("wikipedia", "raw"):
        raise ValueError(f"unknown dataset {name!r} for encoding; expected demo-features, "
                         "wikipedia, features or raw")
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs --data-dir")
    if name == "wikipedia" and image_encoder != FEATURES:
        raise ValueError("wikipedia ships SIFT-128 image features only (no raw images): "
                         "use --image-encoder features")
    if name == "raw" and (image_encoder == FEATURES or text_encoder == FEATURES):
        raise ValueError("a raw pair folder needs pretrained encoders for both modalities "
                         "(for example --image-encoder torch:efficientnet-lite0 "
                         "--text-encoder torch:minilm)")
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(name, data_dir, image_encoder, text_encoder, image_size)
        cache_file = str(Path(cache_dir) / f"{name}-{key}.npz")
        if os.path.exists(cache_file):
            return dataclasses.replace(_read_cache(cache_file), cache_file=cache_file,
                                       computed=False)
    encoded = _encode_records(name, data_dir, image_encoder, text_encoder, image_size)
    if cache_file is not None:
        _write_cache(encoded, cache_file)
    return dataclasses.replace(encoded, cache_file=cache_file)


def _require_features(name: str, image_encoder: str, text_encoder: str) -> None:
    if image_encoder != FEATURES or text_encoder != FEATURES:
        raise ValueError(f"dataset {name!r} holds feature vectors only: use the 'features' "
                         "encoders")


def _encode_records(name: str, data_dir, image_encoder: str, text_encoder: str,
                    image_size: int | None) -> EncodedDataset:
    from components.datasets.wikipedia_raw import read_wikipedia_raw  # pylint: disable=C0415

    if name == "wikipedia":
        pairs, fixed_test = read_wikipedia_raw(data_dir, seed=0), True
    else:
        pairs = read_raw_pairs(data_dir, seed=0)
        fixed_test = _has_split_column(Path(data_dir) / PAIRS_FILE)
    class_index = {c: i for i, c in enumerate(pairs.class_names)}
    set_aside: dict[str, int] = {}
    usable: list[tuple[RawRecord, str]] = []
    for record in pairs.records:
        reason = _problem(record, class_index)
        if reason is None:
            try:
                text = record.text.decode("utf-8").strip()
            except UnicodeDecodeError:
                text, reason = "", "non_utf8_text"
            if reason is None and not text and text_encoder != FEATURES:
                reason = "empty_text"
        if reason is None and image_encoder != FEATURES:
            reason = _image_problem(record)
        if reason is not None:
            set_aside[reason] = set_aside.get(reason, 0) + 1
            continue
        usable.append((record, text))
    if not usable:
        raise DatasetError(data_dir, None, f"no usable pairs to encode (set aside: {set_aside})")
    records = [r for r, _ in usable]
    image = (np.stack([r.image_features for r in records]).astype(np.float32)
             if image_encoder == FEATURES else
             _encode_images(image_encoder, [r.image_path for r in records], image_size))
    text = (np.stack([r.text_features for r in records]).astype(np.float32)
            if text_encoder == FEATURES else
            _encode_texts(text_encoder, [t for _, t in usable]))
    label = np.array([class_index[r.label] for r in records], np.int64)
    ids = np.array([r.id for r in records])
    split_of = np.array([r.split for r in records])
    splits = {s: Split(image[split_of == s], text[split_of == s], label[split_of == s],
                       ids[split_of == s]) for s in SPLITS}
    dataset = FeatureDataset(name=f"{pairs.name}:{image_encoder}+{text_encoder}",
                             splits=splits, class_names=pairs.class_names)
    return EncodedDataset(dataset, fixed_test=fixed_test, set_aside=set_aside)


def _problem(record: RawRecord, class_index: dict[str, int]) -> str | None:
    if record.problem is not None:
        return record.problem[0]
    if not record.label:
        return "missing_label"
    if record.label not in class_index:
        return "unknown_label"
    return None


def _image_problem(record: RawRecord) -> str | None:
    from models.image_decoding import image_problem  # pylint: disable=import-outside-toplevel

    if not record.image_path or not os.path.isfile(record.image_path):
        return "missing_image"
    with open(record.image_path, "rb") as f:
        return image_problem(f.read())


def _encode_images(spec: str, paths: Sequence[str], image_size: int | None) -> np.ndarray:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from components import torch_encoders  # pylint: disable=C0415
    from models import keras_image_encoders  # pylint: disable=C0415
    from models.image_decoding import decode_and_resize  # pylint: disable=C0415

    if is_torch(spec):
        size = torch_encoders.image_size(spec)
    elif is_keras(spec):
        size = image_size or keras_image_encoders.default_image_size(spec)
    else:
        raise ValueError(f"image encoder {spec!r} does not give fixed features (use torch: or "
                         "keras:)")
    pixels = np.stack([decode_and_resize(tf.constant(Path(p).read_bytes()), size).numpy()
                       for p in paths])
    if is_torch(spec):
        return torch_encoders.encode_directly(spec, list(pixels)).astype(np.float32)
    return keras_image_encoders.encode_images_directly(
        spec, keras_image_encoders.WEIGHTS_IMAGENET, pixels).astype(np.float32)


def _encode_texts(spec: str, texts: Sequence[str]) -> np.ndarray:
    from components import torch_encoders  # pylint: disable=import-outside-toplevel

    if not is_torch(spec):
        raise ValueError(f"text encoder {spec!r} does not give fixed features (use torch:minilm)")
    return torch_encoders.encode_directly(spec, list(texts)).astype(np.float32)


def _has_split_column(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline()
    return "split" in [c.strip().lower() for c in header.split(",")]


def _cache_key(name: str, data_dir, image_encoder: str, text_encoder: str,
               image_size: int | None) -> str:
    """Changes when the inputs' listing files or the encoders change."""
    folder = Path(data_dir).resolve()
    listing = sorted(p for p in folder.iterdir() if p.is_file())
    stamp = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in listing]
    text = json.dumps([CACHE_VERSION, name, str(folder), image_encoder, text_encoder,
                       image_size, stamp])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_cache(encoded: EncodedDataset, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    arrays = {}
    for split, data in encoded.dataset.splits.items():
        arrays.update({f"{split}_image": data.image, f"{split}_text": data.text,
                       f"{split}_label": data.label, f"{split}_ids": data.ids})
    meta = {"name": encoded.dataset.name, "class_names": list(encoded.dataset.class_names),
            "fixed_test": encoded.fixed_test, "set_aside": encoded.set_aside}
    temporary = path + ".partial.npz"
    np.savez(temporary, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(temporary, path)


def _read_cache(path: str) -> EncodedDataset:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        splits = {s: Split(data[f"{s}_image"], data[f"{s}_text"], data[f"{s}_label"],
                           data[f"{s}_ids"]) for s in SPLITS}
    return EncodedDataset(FeatureDataset(meta["name"], splits, tuple(meta["class_names"])),
                          fixed_test=meta["fixed_test"], set_aside=meta["set_aside"])
