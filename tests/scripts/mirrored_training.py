"""Trains CM-GAN steps under MirroredStrategy on two logical CPU devices; prints JSON.

Run in its own process: logical devices must be configured before TensorFlow starts. An optional
argument is the number of seed-ensemble members (default 1).
"""
import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

from components.datasets import make_demo_dataset  # noqa: E402
from models.experiment import standardise  # noqa: E402
from models.hparams import CMGANHParams  # noqa: E402
from models.training import train_cmgan  # noqa: E402

dataset = standardise(make_demo_dataset(seed=0, num_classes=4, train_per_class=40,
                                        val_per_class=10, test_per_class=10))
hparams = CMGANHParams(epochs=2, hidden_dim=32, common_dim=32, inter_disc_hidden=16,
                       batch_size=16, validate_every=1, semantic_classifier="cosine",
                       shared_classifier=True, jit_compile=True,  # XLA falls back to off
                       ema_decay=0.9,
                       ensemble_members=int(sys.argv[1]) if len(sys.argv) > 1 else 1)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result = train_cmgan(dataset.splits["train"], dataset.splits["val"], dataset.num_classes,
                     hparams, strategy=strategy, verbose=0)
mismatched, mirrored = [], 0
for variable in result.model.variables:
    replicas = getattr(variable.value, "values", None)
    if replicas is None:
        continue
    mirrored += 1
    values = [r.numpy() for r in replicas]
    if len(values) != 2 or not all(np.array_equal(values[0], v) for v in values[1:]):
        mismatched.append(variable.path)
optimizer_replicas = [len(getattr(v.value, "values", ())) for opt in
                      result.model.generator_optimizers.values() for v in opt.variables[:3]]
json.dump({"replicas": strategy.num_replicas_in_sync, "history": result.history,
           "mirrored_variables": mirrored, "total_variables": len(result.model.variables),
           "mismatched": mismatched, "optimizer_variable_replicas": optimizer_replicas,
           "val": result.best_val, "embedding_dim": result.model.embedding_dim}, sys.stdout)
