"""Trains CM-GAN with precision=mixed_float16 under MirroredStrategy on two logical CPU
devices, resumes it from its checkpoint, saves a SavedModel of its encoders; prints JSON.

Run in its own process: logical devices must be configured before TensorFlow starts.
Argument: a scratch folder for the checkpoints and the SavedModel.
"""
import json
import os
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from components.datasets import make_demo_dataset  # noqa: E402
from models.experiment import standardise  # noqa: E402
from models.hparams import CMGANHParams  # noqa: E402
from models.training import train_cmgan  # noqa: E402

scratch = sys.argv[1]
dataset = standardise(make_demo_dataset(seed=0, num_classes=4, train_per_class=24,
                                        val_per_class=8, test_per_class=4, image_dim=16,
                                        text_dim=8))
train, val = dataset.splits["train"], dataset.splits["val"]
# Every loss term on: pair loss and the cosine classifier compute norms in float16.
hparams = CMGANHParams(epochs=1, hidden_dim=32, common_dim=32, inter_disc_hidden=16,
                       batch_size=16, validate_every=1, generator_steps=1,
                       semantic_classifier="cosine", shared_classifier=True,
                       pair_loss_weight=1.0, ema_decay=0.9, precision="mixed_float16")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
checkpoints = os.path.join(scratch, "checkpoints")
train_cmgan(train, val, dataset.num_classes, hparams, strategy=strategy,
            checkpoint_dir=checkpoints, verbose=0)
result = train_cmgan(train, val, dataset.num_classes, hparams.replace(epochs=2),
                     strategy=strategy, checkpoint_dir=checkpoints, verbose=0)
model = result.model

mismatched = []
for variable in model.variables:
    replicas = getattr(variable.value, "values", None) or (variable.value,)
    values = [r.numpy() for r in replicas]
    if not all(np.array_equal(values[0], v) for v in values[1:]):
        mismatched.append(variable.path)
optimizers = {**model.discriminator_optimizers, **model.generator_optimizers}
loss_scales = {name: [float(r.numpy()) for r in getattr(
    opt.dynamic_scale.value, "values", (opt.dynamic_scale.value,))]
    for name, opt in optimizers.items()}


class Encoders(tf.Module):
    def __init__(self, cmgan):
        super().__init__()
        self.cmgan = cmgan

    @tf.function(input_signature=[tf.TensorSpec([None, train.image.shape[1]], tf.float32)])
    def encode_image(self, image):
        return {"embedding": self.cmgan.encode_image(image)}

    @tf.function(input_signature=[tf.TensorSpec([None, train.text.shape[1]], tf.float32)])
    def encode_text(self, text):
        return {"embedding": self.cmgan.encode_text(text)}


export_dir = os.path.join(scratch, "saved_model")
encoders = Encoders(model)
tf.saved_model.save(encoders, export_dir, signatures={
    "encode_image": encoders.encode_image, "encode_text": encoders.encode_text})
loaded = tf.saved_model.load(export_dir)
exported = {name: loaded.signatures[name](**{key: tf.constant(value[:4])})["embedding"]
            for name, key, value in (("encode_image", "image", val.image),
                                     ("encode_text", "text", val.text))}
json.dump({
    "replicas": strategy.num_replicas_in_sync,
    "legacy_keras_env": os.environ.get("TF_USE_LEGACY_KERAS"),
    "keras_version": keras.__version__,
    "resumed_from_epoch": result.resumed_from_epoch,
    "history": result.history,
    "val": result.best_val,
    "variable_dtypes": sorted({v.dtype for v in model.variables}),
    "layer_compute_dtype": model.image_generator.own_encoder.dense.compute_dtype,
    "layer_variable_dtype": model.image_generator.own_encoder.dense.variable_dtype,
    "global_policy_after": keras.config.dtype_policy().name,
    "optimizers": sorted({type(opt).__name__ for opt in optimizers.values()}),
    "loss_scales": loss_scales,
    "mismatched": mismatched,
    "exported_dtypes": {name: value.dtype.name for name, value in exported.items()},
    "exported_finite": all(bool(np.isfinite(value.numpy()).all())
                           for value in exported.values()),
}, sys.stdout)
