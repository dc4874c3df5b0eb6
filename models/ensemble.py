"""A seed ensemble of CM-GANs, served as one model (``hparams.ensemble_members`` > 1).

K CM-GANs that differ only in their seed (seed + 100 k: initialisation and batch stream) train
side by side in one ``fit``, each on its own class-balanced stream, each with its own six
optimizers; validation selects the epoch of the ensemble, the thing that is served. They
retrieve with the concatenation of their L2-normalised vectors scaled by 1/sqrt(K): a unit
vector whose dot product is the mean of the members' cosines, so the exported model, its
gallery and its ANN index work unchanged with a K-times longer embedding. Worth its K-fold
training where validation says so: the `wikipedia` preset (README, "Seed ensembles").
"""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from models.cmgan import CMGAN, BuiltInInit
from models.hparams import CMGANHParams
from models.sampling import class_balanced_batches

SEED_STRIDE = 100


def member_seeds(hparams: CMGANHParams) -> list[int]:
    """Member k's seed; member 0's is the model's own, so K=1 is the single CM-GAN."""
    return [hparams.seed + SEED_STRIDE * k for k in range(hparams.ensemble_members)]


def member_key(k: int) -> str:
    return f"member_{k}"


class CMGANEnsemble(BuiltInInit):
    def __init__(self, image_dim: int, text_dim: int, num_classes: int,
                 hparams: CMGANHParams, **kwargs):
        super().__init__(**kwargs)
        self.hparams = hparams
        self.members = []
        for k, seed in enumerate(member_seeds(hparams)):
            # Each member initialised as a single CM-GAN of its seed would be (the global
            # generators, as train_cmgan seeds them before it builds the model).
            keras.utils.set_random_seed(seed)
            self.members.append(CMGAN(image_dim, text_dim, num_classes,
                                      hparams.replace(seed=seed, ensemble_members=1),
                                      name=member_key(k)))
        self.built = True

    # --- what models.training, models.export and the trainer use, as CMGAN has it ---------
    @property
    def embedding_dim(self) -> int:
        return sum(member.embedding_dim for member in self.members)

    @property
    def generator_averages(self) -> list:
        return [a for member in self.members for a in member.generator_averages]

    def swap_generator_averages(self) -> None:
        for member in self.members:
            member.swap_generator_averages()

    @property
    def discriminator_optimizers(self) -> dict:
        return {f"{member.name}_{name}": optimizer for member in self.members
                for name, optimizer in member.discriminator_optimizers.items()}

    @property
    def generator_optimizers(self) -> dict:
        return {f"{member.name}_{name}": optimizer for member in self.members
                for name, optimizer in member.generator_optimizers.items()}

    def _joined(self, vectors):
        scale = 1.0 / math.sqrt(len(vectors))
        return tf.concat([tf.math.l2_normalize(v, axis=-1) * scale for v in vectors], axis=-1)

    def encode_image(self, image, training=False):
        return self._joined([m.encode_image(image, training=training) for m in self.members])

    def encode_text(self, text, training=False):
        return self._joined([m.encode_text(text, training=training) for m in self.members])

    def call(self, inputs, training=False):
        return {"image": self.encode_image(inputs["image"], training=training),
                "text": self.encode_text(inputs["text"], training=training)}

    # --- training --------------------------------------------------------------------------
    def compile(self, steps_per_epoch: int = 1, **kwargs):
        """Each member's six optimizers; call inside the strategy scope."""
        super().compile(jit_compile=kwargs.pop("jit_compile", self.hparams.jit_compile),
                        **kwargs)
        for member in self.members:
            member.compile(steps_per_epoch=steps_per_epoch)

    @property
    def metrics(self):
        return [metric for member in self.members for metric in member.metrics]

    def train_step(self, batch):
        """One CM-GAN step per member on its own batch; logs the members' mean losses."""
        results = [member.train_step(batch[member.name]) for member in self.members]
        return {name: tf.add_n([r[name] for r in results]) / len(results)
                for name in results[0]}


def build_model(image_dim: int, text_dim: int, num_classes: int,
                hparams: CMGANHParams) -> CMGAN | CMGANEnsemble:
    """One CM-GAN, or a seed ensemble of them (hparams.ensemble_members)."""
    if hparams.ensemble_members == 1:
        return CMGAN(image_dim, text_dim, num_classes, hparams)
    return CMGANEnsemble(image_dim, text_dim, num_classes, hparams)


def training_batches(image: np.ndarray, text: np.ndarray, label: np.ndarray,
                     hparams: CMGANHParams, start_batch: int = 0) -> tf.data.Dataset:
    """The model's class-balanced batches; an ensemble's are {member_k: a batch of member k's
    own stream}, which continues the same way on resume (``start_batch``)."""
    streams = [class_balanced_batches(image, text, label, hparams.batch_size, seed=seed,
                                      start_batch=start_batch)
               for seed in member_seeds(hparams)]
    if len(streams) == 1:
        return streams[0]
    zipped = tf.data.Dataset.zip({member_key(k): s for k, s in enumerate(streams)})
    return zipped.with_options(streams[0].options())
