"""FeatureExampleGen: a TFX ExampleGen for the image/text feature datasets of components.datasets.

It reads through ``components.datasets.load_dataset`` (demo | wikipedia | features) and writes
gzipped tf.Example TFRecords with splits train/val/test, each example holding ``image`` (float
list, d_img), ``text`` (float list, d_txt), ``label`` (int64) and ``id`` (bytes). Being an
ExampleGen (BaseExampleGenExecutor, standard Examples artifact with split_names), StatisticsGen,
Transform and the rest consume it like any other.

Its driver (components/example_gen/driver.py) fingerprints the files under ``data_dir`` before
the cache lookup, so an unchanged folder reuses the cached examples and an edited one is read
again.

Spans (``span_pattern`` set, dataset ``features``): ``data_dir`` is a root with one feature folder
per span (``components/example_gen/spans.py``). The driver resolves the latest span and the
rolling window of ``span_window`` spans before the cache lookup (the fingerprint covers only the
spans used); the executor trains on the window's train splits and takes val/test from the
evaluation span (``eval_span``). The Examples artifact records TFX's ``span`` (the latest span
of the window) and the custom properties ``spans`` (JSON list of the window) and ``eval_span``.
"""
from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter

from components.example_gen import spans
from components.example_gen.driver import Driver
from components.example_gen.utils import (DATA_DIR_KEY, DATASET_KEY, EVAL_SPAN_KEY, SEED_KEY,
                                          SPAN_PATTERN_KEY, SPAN_WINDOW_KEY, VAL_FRACTION_KEY,
                                          dataset_split_spec_fields)
from components.feature_example_gen.executor import Executor


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
