"""Loads SavedModels the way the stock model server does (TensorFlow + TF.Text ops, nothing of
this project) and runs every signature on synthetic inputs; prints one REPORT JSON line.

    python serving_fresh_load.py MODEL_DIR [MODEL_DIR ...]
"""
import json
import sys

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF.Text ops, as TF Serving links them)

SCALARS = {"target": tf.constant("image"), "k": tf.constant(3)}


def synthetic_inputs(fn):
    inputs = {}
    for name, spec in fn.structured_input_signature[1].items():
        if spec.shape.rank == 0:
            inputs[name] = SCALARS[name]
        elif spec.dtype == tf.string:
            inputs[name] = tf.constant([b"", b""])  # empty tf.Examples: features default to 0
        else:
            inputs[name] = tf.constant(np.random.default_rng(0).normal(
                size=[2, *spec.shape[1:]]).astype(spec.dtype.as_numpy_dtype))
    return inputs


report = {}
for model_dir in sys.argv[1:]:
    model = tf.saved_model.load(model_dir)
    report[model_dir] = {
        name: {key: [value.dtype.name, list(value.shape)]
               for key, value in fn(**synthetic_inputs(fn)).items()}
        for name, fn in model.signatures.items()}
project = sorted(m for m in sys.modules
                 if m.split(".")[0] in ("models", "components", "pipeline", "serving"))
print("REPORT " + json.dumps({"models": report, "project_modules": project}))
