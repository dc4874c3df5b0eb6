"""FeatureExampleGen: a TFX ExampleGen for the image/text feature datasets of components.datasets.

It reads through ``components.datasets.load_dataset`` (demo | wikipedia | features) and writes
gzipped tf.Example TFRecords with splits train/val/test, each example holding ``image`` (float
list, d_img), ``text`` (float list, d_txt), ``label`` (int64) and ``id`` (bytes). Being an
ExampleGen (BaseExampleGenExecutor, standard Examples artifact with split_names), StatisticsGen,
Transform and the rest consume it like any other.

Its driver fingerprints the files under ``data_dir`` before the cache lookup, so an unchanged
folder reuses the cached examples and an edited one is read again.

Spans (``span_pattern`` set, dataset ``features``): ``data_dir`` is a root with one feature folder
per span (``components/spans.py``). The driver resolves the latest span and the rolling window
of ``span_window`` spans before the cache lookup (the fingerprint covers only the spans used);
the executor trains on the window's train splits and takes val/test from the evaluation span
(``eval_span``). The Examples artifact records TFX's ``span`` (the latest span of the window)
and the custom properties ``spans`` (JSON list of the window) and ``eval_span``.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter

from components import spans
from components.datasets import SPLITS, FeatureDataset, Split, load_dataset
from models.preprocessing import ID_KEY, IMAGE_KEY, LABEL_KEY, TEXT_KEY

DATASET_KEY = "dataset"
DATA_DIR_KEY = "data_dir"
SEED_KEY = "seed"
VAL_FRACTION_KEY = "val_fraction"
SPAN_PATTERN_KEY = "span_pattern"
SPAN_WINDOW_KEY = "span_window"
EVAL_SPAN_KEY = "eval_span"


class FeatureExampleGenSpec(standard_component_specs.QueryBasedExampleGenSpec):
    """QueryBasedExampleGen's parameters plus which dataset to read."""

    PARAMETERS = {
        **standard_component_specs.QueryBasedExampleGenSpec.PARAMETERS,
        DATASET_KEY: ExecutionParameter(type=str),
        DATA_DIR_KEY: ExecutionParameter(type=str, optional=True),
        SEED_KEY: ExecutionParameter(type=int),
        VAL_FRACTION_KEY: ExecutionParameter(type=float),
        SPAN_PATTERN_KEY: ExecutionParameter(type=str, optional=True),
        SPAN_WINDOW_KEY: ExecutionParameter(type=int, optional=True),
        EVAL_SPAN_KEY: ExecutionParameter(type=str, optional=True),
    }


def dataset_split_spec_fields() -> dict[str, Any]:
    """The ExampleGen spec fields the project's ExampleGens share: one input split per dataset
    split (train/val/test), written as gzipped tf.Example TFRecords."""
    return dict(
        input_config=example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name=s, pattern=s) for s in SPLITS]),
        output_config=example_gen_pb2.Output(),
        output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
        output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP)


def to_tf_example(split: Split, row: int) -> tf.train.Example:
    feature = {
        IMAGE_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=split.image[row])),
        TEXT_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=split.text[row])),
        LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(split.label[row])])),
        ID_KEY: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[str(split.ids[row]).encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


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


class Driver(example_gen_driver.QueryBasedDriver):
    """Adds the data folder's fingerprint to the exec properties, i.e. to the cache key."""

    def resolve_exec_properties(self, exec_properties, pipeline_info, component_info):
        exec_properties = super().resolve_exec_properties(exec_properties, pipeline_info,
                                                          component_info)
        data_dir = exec_properties.get(DATA_DIR_KEY)
        if exec_properties.get(SPAN_PATTERN_KEY):
            window, eval_span, folders = spans.resolve(
                data_dir, exec_properties[SPAN_PATTERN_KEY],
                int(exec_properties.get(SPAN_WINDOW_KEY) or 1),
                exec_properties.get(EVAL_SPAN_KEY) or "first")
            exec_properties[example_gen_utils.SPAN_PROPERTY_NAME] = max(window)
            exec_properties[example_gen_utils.FINGERPRINT_PROPERTY_NAME] = (
                f"spans:{spans.spans_json(window)},eval_span:{eval_span};"
                + spans.spans_fingerprint(folders, [*window, eval_span]))
        elif data_dir and tf.io.gfile.isdir(data_dir):
            exec_properties[example_gen_utils.FINGERPRINT_PROPERTY_NAME] = data_fingerprint(
                data_dir)
        return exec_properties


def load_from_exec_properties(exec_properties: dict[str, Any]) -> FeatureDataset:
    if exec_properties.get(SPAN_PATTERN_KEY):
        return load_spans_from_exec_properties(exec_properties)[0]
    return load_dataset(exec_properties[DATASET_KEY], exec_properties.get(DATA_DIR_KEY) or None,
                        seed=int(exec_properties[SEED_KEY]),
                        val_fraction=float(exec_properties[VAL_FRACTION_KEY]))


def load_spans_from_exec_properties(exec_properties: dict[str, Any]
                                    ) -> tuple[FeatureDataset, list[int], int]:
    """The span window ending at the span the driver resolved (exec property ``span``)."""
    latest = exec_properties.get(example_gen_utils.SPAN_PROPERTY_NAME)
    return spans.load_span_window(
        exec_properties[DATA_DIR_KEY], exec_properties[SPAN_PATTERN_KEY],
        int(exec_properties.get(SPAN_WINDOW_KEY) or 1),
        exec_properties.get(EVAL_SPAN_KEY) or "first",
        latest=int(latest) if latest else None)


class Executor(BaseExampleGenExecutor):
    """Loads the dataset once per execution; each input split pattern names a dataset split."""

    _dataset: FeatureDataset | None = None

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        dataset = self._dataset

        @beam.ptransform_fn
        @beam.typehints.with_input_types(beam.Pipeline)
        @beam.typehints.with_output_types(bytes)
        def SplitToExamples(pipeline, exec_properties, split_pattern):  # pylint: disable=C0103
            del exec_properties
            split = dataset.splits[split_pattern]
            return pipeline | "CreateExamples" >> beam.Create(
                [to_tf_example(split, row).SerializeToString() for row in range(len(split))],
                reshuffle=False)

        return SplitToExamples

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        window = None
        if exec_properties.get(SPAN_PATTERN_KEY):
            self._dataset, window, eval_span = load_spans_from_exec_properties(exec_properties)
        else:
            self._dataset = load_from_exec_properties(exec_properties)
        super().Do(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY])
        if window is not None:
            examples.span = int(max(window))
            examples.set_string_custom_property("spans", spans.spans_json(window))
            examples.set_int_custom_property("eval_span", int(eval_span))
        # Recorded for the schema curator: the label domain comes from the class list.
        examples.set_int_custom_property("num_classes", self._dataset.num_classes)
        examples.set_string_custom_property("class_names", json.dumps(self._dataset.class_names))
        examples.set_int_custom_property("image_dim", self._dataset.image_dim)
        examples.set_int_custom_property("text_dim", self._dataset.text_dim)


class FeatureExampleGen(base_beam_component.BaseBeamComponent):
    """ExampleGen for ``components.datasets`` feature datasets (splits train/val/test)."""

    SPEC_CLASS = FeatureExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
    DRIVER_CLASS = Driver

    def __init__(self, dataset: str, data_dir: Optional[str] = None, seed: int = 0,
                 val_fraction: float = 0.15, span_pattern: Optional[str] = None,
                 span_window: int = 1, eval_span: str = "first"):
        optional = {DATA_DIR_KEY: str(data_dir)} if data_dir else {}
        if span_pattern:  # only then, so the exec properties of span-less runs are unchanged
            if dataset != "features" or not data_dir:
                raise ValueError("spans need dataset 'features' and data_dir (the span root)")
            spans.check_pattern(span_pattern)
            spans.check_eval_span(eval_span)
            optional.update({SPAN_PATTERN_KEY: span_pattern, SPAN_WINDOW_KEY: int(span_window),
                             EVAL_SPAN_KEY: str(eval_span)})
        spec = FeatureExampleGenSpec(
            **dataset_split_spec_fields(),
            dataset=dataset, seed=int(seed), val_fraction=float(val_fraction),
            examples=types.Channel(type=standard_artifacts.Examples),
            **optional)
        super().__init__(spec=spec)
