"""The driver of the project's ExampleGens (FeatureExampleGen and RawExampleGen).

It adds the data's fingerprint to the exec properties before the cache lookup, so an unchanged
``data_dir`` reuses the cached examples and an edited one is read again. With spans
(``span_pattern`` set) it resolves the latest span and the rolling window of ``span_window``
spans (spans.py) and fingerprints only the spans used.
"""
from __future__ import annotations

import tensorflow as tf
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils

from components.example_gen import spans
from components.example_gen.utils import (DATA_DIR_KEY, EVAL_SPAN_KEY, SPAN_PATTERN_KEY,
                                          SPAN_WINDOW_KEY, data_fingerprint)


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
