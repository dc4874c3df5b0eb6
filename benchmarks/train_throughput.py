"""CM-GAN training throughput at the paper's dimensions on synthetic data; one JSON line.

4096-d image, 300-d text, 1024-d common space, batch 64, the full schedule (one step per
discriminator, then 5 x (G_I, G_T)) per iteration, with XLA jit_compile off and on.
FLOPs per iteration are counted from the traced train-step graph (TF's graph profiler,
float operations of every op that registers them, MatMul dominating).

    .venv/bin/python benchmarks/train_throughput.py [--iterations 30] [--strategy default]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models.cmgan import CMGAN  # noqa: E402
from models.distribute import make_strategy  # noqa: E402
from models.hparams import CMGANHParams  # noqa: E402
from models.sampling import class_balanced_batches  # noqa: E402

IMAGE_DIM, TEXT_DIM, NUM_CLASSES, EXAMPLES = 4096, 300, 10, 2048


def count_flops(model: CMGAN, batch) -> float | None:
    """Float operations of one train step, from the traced graph."""
    from tensorflow.python.profiler import model_analyzer, option_builder

    function = tf.function(model.train_step).get_concrete_function(batch)
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = model_analyzer.profile(function.graph, options=options)
    return float(profile.total_float_ops) if profile else None


def measure(jit_compile: bool, iterations: int, warmup: int, strategy_name: str) -> dict:
    hparams = CMGANHParams(jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, EXAMPLES)
    image = rng.standard_normal((EXAMPLES, IMAGE_DIM), dtype=np.float32)
    text = rng.standard_normal((EXAMPLES, TEXT_DIM), dtype=np.float32)
    strategy = make_strategy(strategy_name)
    with strategy.scope():
        model = CMGAN(IMAGE_DIM, TEXT_DIM, NUM_CLASSES, hparams)
        model.compile(steps_per_epoch=iterations)
    batches = class_balanced_batches(image, text, labels, hparams.batch_size)
    flops = count_flops(model, next(iter(batches))) if not jit_compile else None
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    # Epoch 1 traces/compiles and warms up; epoch 2 is timed.
    model.fit(batches, epochs=1, steps_per_epoch=warmup, verbose=0)
    model.fit(batches, epochs=1, steps_per_epoch=iterations, verbose=0, callbacks=[Timer()])
    seconds = times[-1]
    return {"jit_compile": jit_compile, "iterations_per_s": iterations / seconds,
            "examples_per_s": iterations * hparams.batch_size / seconds,
            "seconds_per_iteration": seconds / iterations, "flops_per_iteration": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--strategy", default="default")
    args = parser.parse_args()
    runs = [measure(jit, args.iterations, args.warmup, args.strategy) for jit in (False, True)]
    flops = runs[0]["flops_per_iteration"]
    for run in runs:
        run["flops_per_iteration"] = flops
        run["est_flop_per_s"] = flops * run["iterations_per_s"] if flops else None
    print(json.dumps({
        "benchmark": "train_throughput", "image_dim": IMAGE_DIM, "text_dim": TEXT_DIM,
        "common_dim": 1024, "batch_size": 64, "schedule": "1 D : 5 x (G_I, G_T)",
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "strategy": args.strategy,
        "xla_off": runs[0], "xla_on": runs[1]}))


if __name__ == "__main__":
    main()
