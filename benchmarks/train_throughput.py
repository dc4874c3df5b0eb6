"""CM-GAN training throughput at the paper's dimensions on synthetic data; one JSON line.

4096-d image, 300-d text, 1024-d common space, batch 64, the full schedule (one step per
discriminator, then 5 x (G_I, G_T)) per iteration, with XLA jit_compile off and on.
FLOPs per iteration are counted from the traced train-step graph (TF's graph profiler,
float operations of every op that registers them, MatMul dominating).

    .venv/bin/python benchmarks/train_throughput.py [--iterations 30] [--strategy default]
        [--precision float32|mixed_float16|mixed_bfloat16] [--xla both|off|on]
        [--batch-size 64]

``--strategy mirrored`` spreads each global batch over every visible GPU (XLA needs a single
replica: use ``--xla off`` with more than one); benchmarks/gpu_check.sh runs the GPU set.
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
from models.distribute import STRATEGIES, make_strategy  # noqa: E402
from models.hparams import PRECISIONS, CMGANHParams  # noqa: E402
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


def measure(jit_compile: bool, iterations: int, warmup: int, strategy_name: str,
            precision: str = "float32", batch_size: int = 64) -> dict:
    hparams = CMGANHParams(jit_compile=jit_compile, precision=precision, batch_size=batch_size)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, EXAMPLES)
    image = rng.standard_normal((EXAMPLES, IMAGE_DIM), dtype=np.float32)
    text = rng.standard_normal((EXAMPLES, TEXT_DIM), dtype=np.float32)
    strategy = make_strategy(strategy_name)
    if jit_compile and strategy.num_replicas_in_sync > 1:
        raise SystemExit(f"XLA needs a single replica, {strategy_name} has "
                         f"{strategy.num_replicas_in_sync}: use --xla off")
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
    return {"jit_compile": jit_compile, "replicas": strategy.num_replicas_in_sync,
            "iterations_per_s": iterations / seconds,
            "examples_per_s": iterations * hparams.batch_size / seconds,
            "seconds_per_iteration": seconds / iterations, "flops_per_iteration": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--strategy", default="default", choices=STRATEGIES)
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument("--xla", default="both", choices=("both", "off", "on"),
                        help="measure with XLA jit_compile off, on, or both")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    args = parser.parse_args()
    modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.xla]
    runs = {jit: measure(jit, args.iterations, args.warmup, args.strategy, args.precision,
                         args.batch_size) for jit in modes}
    flops = next(iter(runs.values()))["flops_per_iteration"]
    for run in runs.values():
        run["flops_per_iteration"] = flops
        run["est_flop_per_s"] = flops * run["iterations_per_s"] if flops else None
    print(json.dumps({
        "benchmark": "train_throughput", "image_dim": IMAGE_DIM, "text_dim": TEXT_DIM,
        "common_dim": 1024, "batch_size": args.batch_size,
        "schedule": "1 D : 5 x (G_I, G_T)", "precision": args.precision,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "gpus": [d.name for d in tf.config.list_logical_devices("GPU")],
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "strategy": args.strategy,
        "xla_off": runs.get(False), "xla_on": runs.get(True)}))


if __name__ == "__main__":
    main()
