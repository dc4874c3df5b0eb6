"""Bad data stops the run before Transform, with a message naming the feature and the split."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2

from components.anomalies_gate.component import DataValidationError
from components.datasets import DatasetError, write_feature_folder
from components.schema_curator.component import curate_schema
from models.example_codec import split_example
from pipeline.local_runner import run_pipeline
from pipeline.metadata import latest_run_executions


def _with_wider_text(split):
    return dataclasses.replace(split, text=np.concatenate([split.text, split.text[:, :1]], 1))


def _write_example_folder(splits: dict, folder, drop: dict[str, str] | None = None) -> None:
    """The ``examples`` dataset layout: <folder>/<split>/*.tfrecord; ``drop`` split -> feature."""
    for name, split in splits.items():
        os.makedirs(folder / name)
        with tf.io.TFRecordWriter(str(folder / name / "data.tfrecord")) as writer:
            for row in range(len(split)):
                example = split_example(split, row)
                if drop and name in drop:
                    del example.features.feature[drop[name]]
                writer.write(example.SerializeToString())


def test_anomalies_stop_the_run_naming_feature_and_split(
        make_pipeline_config, tiny_dataset, tmp_path):
    """tf.Examples from elsewhere (ImportExampleGen) reach ExampleValidator; the gate stops them:
    val has 9-d texts (train: 8), test has a label outside [0, 3] and no image feature."""
    test = tiny_dataset.splits["test"]
    splits = dict(tiny_dataset.splits, val=_with_wider_text(tiny_dataset.splits["val"]),
                  test=dataclasses.replace(test, label=np.where(np.arange(len(test)) == 0, 4,
                                                                test.label)))
    _write_example_folder(splits, tmp_path / "examples", drop={"test": "image"})
    config = make_pipeline_config(tmp_path, dataset="examples", data_dir=tmp_path / "examples",
                                  pipeline_name="cmgan-anomalies")

    with pytest.raises(DataValidationError) as error:
        run_pipeline(config)

    message = str(error.value)
    assert "split 'val': feature 'text': Feature shape dropped" in message
    assert "fixed value length 9" in message
    assert "split 'test': feature 'label': Out-of-range values" in message
    assert "split 'test': feature 'image': Column dropped" in message
    assert "split 'train'" not in message
    ran = latest_run_executions(config.metadata_path, config.pipeline_name)
    assert "ExampleValidator" in ran and "Transform" not in ran


def test_feature_folder_with_another_text_dimension_fails_in_example_gen(
        make_pipeline_config, tiny_dataset, tmp_path):
    """The dataset readers refuse inconsistent feature folders before anything is written."""
    bad = dataclasses.replace(tiny_dataset, splits=dict(
        tiny_dataset.splits, val=_with_wider_text(tiny_dataset.splits["val"])))
    folder = write_feature_folder(bad, tmp_path / "features")
    config = make_pipeline_config(tmp_path, data_dir=folder, pipeline_name="cmgan-bad-folder")

    with pytest.raises(DatasetError, match=r"val\.npz: field 'text'.*9 columns, expected 8"):
        run_pipeline(config)


def _inferred_schema(num_values: int = 4) -> schema_pb2.Schema:
    stats = tfdv.generate_statistics_from_dataframe(
        pd.DataFrame({"label": [0, 1, 1], "id": ["a", "b", "c"]}))
    schema = tfdv.infer_schema(stats, infer_feature_shape=True)
    for name in ("image", "text"):
        feature = schema.feature.add(name=name, type=schema_pb2.FLOAT)
        feature.shape.dim.add(size=num_values)
    return schema


def test_curated_schema_fixes_label_domain_scalars_and_required_features():
    curated = curate_schema(_inferred_schema(), num_classes=10)
    features = {f.name: f for f in curated.feature}
    assert (features["label"].int_domain.min, features["label"].int_domain.max) == (0, 9)
    for name in ("label", "id"):
        assert features[name].HasField("shape") and not features[name].shape.dim
        assert features[name].presence.min_fraction == 1.0
    assert not features["id"].HasField("domain") and not curated.string_domain
    assert [d.size for d in features["text"].shape.dim] == [4]


def test_curation_names_a_missing_feature():
    schema = _inferred_schema()
    del schema.feature[[f.name for f in schema.feature].index("text")]
    with pytest.raises(ValueError, match="split 'train': feature 'text' is missing"):
        curate_schema(schema, num_classes=2)
