"""The project's tf.Example codec: one pair per example, written by both ExampleGens, read back
into numpy by the Trainer, the evaluator and the gallery.

An example holds ``image`` and ``text`` (each a float list, or one bytes value when raw: pixels
for ``cnn``, UTF-8 text for ``kim_cnn``), ``label`` (one int64) and ``id`` (one bytes value);
models/preprocessing.py names the features and describes the raw values. Splits are gzipped
TFRecords, in the TFX layout ``<Examples uri>/Split-<name>/*``.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf

from models.data import Split
from models.preprocessing import ID_KEY, IMAGE_KEY, LABEL_KEY, TEXT_KEY


def _value_feature(value: Any) -> tf.train.Feature:
    """One bytes value (raw pixels or text) or a float list (a feature vector)."""
    if isinstance(value, bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    return tf.train.Feature(float_list=tf.train.FloatList(
        value=np.asarray(value, np.float32).reshape(-1)))


def make_example(image: Any, text: Any, label: int, example_id: str) -> tf.train.Example:
    """The tf.Example of one pair (see the module docstring)."""
    feature = {
        IMAGE_KEY: _value_feature(image),
        TEXT_KEY: _value_feature(text),
        LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        ID_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[str(example_id).encode("utf-8")])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def split_example(split: Split, row: int) -> tf.train.Example:
    """The tf.Example of row ``row`` of a feature Split."""
    return make_example(split.image[row], split.text[row], split.label[row], split.ids[row])


def split_files(examples_uri: str, split: str) -> list[str]:
    """Files of one split of an Examples artifact (TFX layout: ``<uri>/Split-<name>/*``)."""
    files = tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
    if not files:
        raise FileNotFoundError(f"no files for split '{split}' under {examples_uri}")
    return sorted(files)


def read_split(file_patterns: str | Iterable[str],
               feature_spec: Mapping[str, tf.io.FixedLenFeature], batch_size: int = 1024,
               image_size: int | None = None) -> Split:
    """All examples of gzipped tf.Example TFRecords as one in-memory Split (file order kept).
    ``image_size``: the side of raw pixel images, when the examples hold them."""
    patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"no example files match {patterns}")
    spec = {k: feature_spec[k] for k in (IMAGE_KEY, TEXT_KEY, LABEL_KEY, ID_KEY)}
    dataset = (tf.data.TFRecordDataset(files, compression_type="GZIP")
               .batch(batch_size)
               .map(lambda records: tf.io.parse_example(records, spec)))
    parts = {k: [] for k in spec}
    for batch in dataset.as_numpy_iterator():
        for key in spec:
            parts[key].append(batch[key])
    columns = {k: np.concatenate(v) for k, v in parts.items()}
    return Split(image=_modality_array(columns[IMAGE_KEY], IMAGE_KEY, image_size),
                 text=_modality_array(columns[TEXT_KEY], TEXT_KEY, image_size),
                 label=columns[LABEL_KEY].reshape(-1).astype(np.int64),
                 ids=np.array([i.decode() for i in columns[ID_KEY].reshape(-1)], dtype=str))


def _modality_array(values: np.ndarray, key: str, image_size: int | None) -> np.ndarray:
    """Floats -> float32 [N, d]; token ids stay int64 [N, L]; raw text -> object [N] of bytes;
    raw pixel strings -> uint8-valued float32 [N, size*size*3] (``image_size`` required)."""
    if values.dtype == object:
        values = values.reshape(-1)
        if key != IMAGE_KEY:
            return values
        if not image_size:
            raise ValueError("the examples hold raw image pixels; read_split needs image_size")
        length = image_size * image_size * 3
        bad = [i for i, v in enumerate(values) if len(v) != length]
        if bad:
            raise ValueError(f"example {bad[0]}: raw image has {len(values[bad[0]])} bytes, "
                             f"expected {length} ({image_size}x{image_size}x3)")
        return np.stack([np.frombuffer(v, np.uint8) for v in values]).astype(np.float32) if len(
            values) else np.zeros([0, length], np.float32)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    return values.astype(np.float32)
