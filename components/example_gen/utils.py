"""Shared by the project's ExampleGens (FeatureExampleGen, RawExampleGen) and their readers.

- exec-property names the driver reads (data folder, spans);
- the split spec: one input split per dataset split (train/val/test), written as gzipped
  tf.Example TFRecords;
- the data fingerprint (the cache key of a data folder);
- the custom properties written on the Examples artifact, and ``pixel_image_size`` to read the
  raw pixel size back.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import tensorflow as tf
from tfx.proto import example_gen_pb2

from components.datasets import SPLITS
from models.encoder_kinds import CNN

# Exec properties.
DATASET_KEY = "dataset"
DATA_DIR_KEY = "data_dir"
SEED_KEY = "seed"
VAL_FRACTION_KEY = "val_fraction"
SPAN_PATTERN_KEY = "span_pattern"
SPAN_WINDOW_KEY = "span_window"
EVAL_SPAN_KEY = "eval_span"

# Custom properties of the Examples artifact. Both ExampleGens write the dataset's: the schema
# curator takes the label domain from num_classes, the gallery and report the class names.
NUM_CLASSES_PROPERTY = "num_classes"
CLASS_NAMES_PROPERTY = "class_names"  # JSON list, in label order
IMAGE_DIM_PROPERTY = "image_dim"
TEXT_DIM_PROPERTY = "text_dim"
# FeatureExampleGen with spans: the window (JSON list) and the evaluation span.
SPANS_PROPERTY = "spans"
EVAL_SPAN_PROPERTY = "eval_span"
# RawExampleGen: the encoders that made the examples and the pixel side of the images.
IMAGE_SIZE_PROPERTY = "image_size"
IMAGE_ENCODER_PROPERTY = "image_encoder"
IMAGE_ENCODER_WEIGHTS_PROPERTY = "image_encoder_weights"
TEXT_ENCODER_PROPERTY = "text_encoder"


def dataset_split_spec_fields() -> dict[str, Any]:
    """The ExampleGen spec fields the project's ExampleGens share: one input split per dataset
    split (train/val/test), written as gzipped tf.Example TFRecords."""
    return dict(
        input_config=example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name=s, pattern=s) for s in SPLITS]),
        output_config=example_gen_pb2.Output(),
        output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
        output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP)


def data_fingerprint(data_dir: str) -> str:
    """Order-independent digest of every file's path, size and mtime under data_dir."""
    entries = []
    for root, _, files in tf.io.gfile.walk(data_dir):
        for name in files:
            path = os.path.join(root, name)
            stat = tf.io.gfile.stat(path)
            entries.append(f"{os.path.relpath(path, data_dir)}:{stat.length}:{stat.mtime_nsec}")
    digest = hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()[:16]
    return f"data_dir:{data_dir},num_files:{len(entries)},sha256:{digest}"


def set_dataset_properties(examples, num_classes: int, class_names: Sequence[str],
                           image_dim: int, text_dim: int) -> None:
    """The dataset's custom properties every ExampleGen of the project records."""
    examples.set_int_custom_property(NUM_CLASSES_PROPERTY, num_classes)
    examples.set_string_custom_property(CLASS_NAMES_PROPERTY, json.dumps(class_names))
    examples.set_int_custom_property(IMAGE_DIM_PROPERTY, image_dim)
    examples.set_int_custom_property(TEXT_DIM_PROPERTY, text_dim)


def pixel_image_size(examples) -> int:
    """Side of the raw pixel images an Examples artifact holds (image encoder ``cnn``); 0 when
    its ``image`` feature is a vector (features, keras:, torch: encoders)."""
    if not (examples.has_custom_property(IMAGE_ENCODER_PROPERTY)
            and examples.get_string_custom_property(IMAGE_ENCODER_PROPERTY) == CNN):
        return 0
    return int(examples.get_int_custom_property(IMAGE_SIZE_PROPERTY))
