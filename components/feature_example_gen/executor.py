"""FeatureExampleGen's executor: the dataset (or span window) -> tf.Examples per split.

The dataset is loaded once per execution through ``components.datasets.load_dataset`` (demo |
wikipedia | features), or, with spans, as the window the driver resolved: the window's train
splits plus the evaluation span's val/test (components/example_gen/spans.py). Each input split
pattern names a dataset split; examples are encoded by models/example_codec.py.
"""
from __future__ import annotations

from typing import Any

import apache_beam as beam
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.types import artifact_utils, standard_component_specs

from components.datasets import FeatureDataset, load_dataset
from components.example_gen import spans
from components.example_gen.utils import (DATA_DIR_KEY, DATASET_KEY, EVAL_SPAN_KEY,
                                          EVAL_SPAN_PROPERTY, SEED_KEY, SPAN_PATTERN_KEY,
                                          SPAN_WINDOW_KEY, SPANS_PROPERTY, VAL_FRACTION_KEY,
                                          set_dataset_properties)
from models.example_codec import split_example


def load_from_exec_properties(exec_properties: dict[str, Any]) -> FeatureDataset:
    """The dataset of a span-less run."""
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
                [split_example(split, row).SerializeToString() for row in range(len(split))],
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
            examples.set_string_custom_property(SPANS_PROPERTY, spans.spans_json(window))
            examples.set_int_custom_property(EVAL_SPAN_PROPERTY, int(eval_span))
        # Recorded for the schema curator: the label domain comes from the class list.
        set_dataset_properties(examples, self._dataset.num_classes, self._dataset.class_names,
                               self._dataset.image_dim, self._dataset.text_dim)
