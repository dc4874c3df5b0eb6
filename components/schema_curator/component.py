"""SchemaCurator: turns SchemaGen's inferred schema into the contract the data must keep.

SchemaGen infers from the train split only; the curator then states deliberately what
ExampleValidator checks every split against:

- ``image`` and ``text``: float lists of the fixed length seen in train, or for raw inputs (pixels
  for the cnn encoder, UTF-8 text for kim_cnn) exactly one bytes value with no vocabulary;
  present in every example;
- ``label``: one int64 per example in [0, num_classes - 1], num_classes from the dataset's class
  list (ExampleGen's ``num_classes`` property), else 1 + the largest train label;
- ``id``: one bytes value per example, no vocabulary (ids differ between splits by design).
"""

import os

from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from components.example_gen.utils import NUM_CLASSES_PROPERTY
from models.preprocessing import FEATURE_KEYS, ID_KEY, LABEL_KEY

SCHEMA_FILE = "schema.pbtxt"
TRAIN_SPLIT = "train"


def _feature(schema: schema_pb2.Schema, name: str) -> schema_pb2.Feature:
    for feature in schema.feature:
        if feature.name == name:
            return feature
    raise ValueError(f"split '{TRAIN_SPLIT}': feature '{name}' is missing from the examples")


def _require_every_example(feature: schema_pb2.Feature) -> None:
    feature.presence.min_fraction = 1.0
    feature.presence.min_count = 1


def _make_scalar(feature: schema_pb2.Feature) -> None:
    feature.ClearField("value_count")
    feature.shape.Clear()
    feature.shape.SetInParent()  # a shape without dims: exactly one value


def curate_schema(inferred: schema_pb2.Schema, num_classes: int) -> schema_pb2.Schema:
    """The curated copy of ``inferred`` (see the module docstring)."""
    schema = schema_pb2.Schema()
    schema.CopyFrom(inferred)
    for key in FEATURE_KEYS:
        feature = _feature(schema, key)
        if feature.type == schema_pb2.BYTES:
            _make_raw_value(schema, feature)
            continue
        if feature.type != schema_pb2.FLOAT:
            raise ValueError(f"split '{TRAIN_SPLIT}': feature '{key}' must be a float list or "
                             f"one bytes value, got {schema_pb2.FeatureType.Name(feature.type)}")
        if not feature.HasField("shape") or len(feature.shape.dim) != 1:
            raise ValueError(f"split '{TRAIN_SPLIT}': feature '{key}' has no fixed length "
                             "(its examples have different numbers of values)")
        _require_every_example(feature)
    label = _feature(schema, LABEL_KEY)
    if label.type != schema_pb2.INT:
        raise ValueError(f"split '{TRAIN_SPLIT}': feature '{LABEL_KEY}' must be int64")
    _make_scalar(label)
    _require_every_example(label)
    label.ClearField("domain")
    label.int_domain.Clear()
    label.int_domain.min = 0
    label.int_domain.max = num_classes - 1
    _make_raw_value(schema, _feature(schema, ID_KEY))
    return schema


def _make_raw_value(schema: schema_pb2.Schema, feature: schema_pb2.Feature) -> None:
    """One bytes value per example, free-form: no vocabulary (string domain) to check."""
    _make_scalar(feature)
    _require_every_example(feature)
    feature.ClearField("domain")
    feature.ClearField("string_domain")
    kept = [d for d in schema.string_domain if d.name != feature.name]
    del schema.string_domain[:]
    schema.string_domain.extend(kept)


def _train_label_max(statistics: standard_artifacts.ExampleStatistics) -> int:
    stats = stats_artifact_utils.load_statistics(statistics, TRAIN_SPLIT).proto()
    for feature in stats.datasets[0].features:
        if list(feature.path.step) == [LABEL_KEY]:
            return int(feature.num_stats.max)
    raise ValueError(f"split '{TRAIN_SPLIT}': feature '{LABEL_KEY}' has no statistics")


@component
def SchemaCurator(  # pylint: disable=invalid-name
        schema: InputArtifact[standard_artifacts.Schema],
        statistics: InputArtifact[standard_artifacts.ExampleStatistics],
        examples: InputArtifact[standard_artifacts.Examples],
        curated_schema: OutputArtifact[standard_artifacts.Schema]):
    """Writes the curated schema (see module docstring) for ExampleValidator and Transform."""
    num_classes = 0
    if examples.has_custom_property(NUM_CLASSES_PROPERTY):
        num_classes = int(examples.get_int_custom_property(NUM_CLASSES_PROPERTY))
    if num_classes <= 0:
        num_classes = _train_label_max(statistics) + 1
    inferred = io_utils.SchemaReader().read(os.path.join(schema.uri, SCHEMA_FILE))
    io_utils.write_pbtxt_file(os.path.join(curated_schema.uri, SCHEMA_FILE),
                              curate_schema(inferred, num_classes))
