"""Feature names, the Transform preprocessing_fn, and reading tf.Example splits into numpy.

The pipeline's tf.Examples hold one pair each: ``image`` (float list, d_img), ``text`` (float
list, d_txt), ``label`` (int64) and ``id`` (bytes). Transform z-scores both feature vectors per
dimension with training-split statistics; CM-GAN expects standardised inputs.
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2

from components.datasets.types import Split

IMAGE_KEY = "image"
TEXT_KEY = "text"
LABEL_KEY = "label"
ID_KEY = "id"
FEATURE_KEYS = (IMAGE_KEY, TEXT_KEY)


def preprocessing_fn(inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Per-dimension z-scores of both modalities (training statistics); label and id as is."""
    # Imported here: importing TFT sets TF_USE_LEGACY_KERAS=1, which readers of the feature
    # names above (e.g. serving code) should not inherit.
    import tensorflow_transform as tft  # pylint: disable=import-outside-toplevel

    outputs = {key: tft.scale_to_z_score(inputs[key], elementwise=True) for key in FEATURE_KEYS}
    outputs[LABEL_KEY] = tf.identity(inputs[LABEL_KEY])
    outputs[ID_KEY] = tf.identity(inputs[ID_KEY])
    return outputs


def num_classes_from_schema(schema: schema_pb2.Schema) -> int:
    """Class count from the label's int domain, which the schema curator sets deliberately."""
    for feature in schema.feature:
        if feature.name == LABEL_KEY:
            if feature.HasField("int_domain") and feature.int_domain.HasField("max"):
                return int(feature.int_domain.max) + 1
            break
    raise ValueError(f"schema has no int_domain with a max for feature '{LABEL_KEY}'")


def split_files(examples_uri: str, split: str) -> list[str]:
    """Files of one split of an Examples artifact (TFX layout: ``<uri>/Split-<name>/*``)."""
    files = tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
    if not files:
        raise FileNotFoundError(f"no files for split '{split}' under {examples_uri}")
    return sorted(files)


def read_split(file_patterns: str | Iterable[str],
               feature_spec: Mapping[str, tf.io.FixedLenFeature], batch_size: int = 1024) -> Split:
    """All examples of gzipped tf.Example TFRecords as one in-memory Split (file order kept)."""
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
    return Split(image=columns[IMAGE_KEY].astype(np.float32),
                 text=columns[TEXT_KEY].astype(np.float32),
                 label=columns[LABEL_KEY].reshape(-1).astype(np.int64),
                 ids=np.array([i.decode() for i in columns[ID_KEY].reshape(-1)], dtype=str))
