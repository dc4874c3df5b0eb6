"""The four CM-GAN discriminators; each returns logits (sigmoid is folded into the loss)."""
from __future__ import annotations

import keras

from models.blocks import DenseBlock
from models.hparams import CMGANHParams


class IntraModalDiscriminator(keras.Model):
    """Logistic regression telling a modality's original feature from its reconstruction."""

    def __init__(self, feature_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = feature_dim
        self.logit = keras.layers.Dense(1, name="logit")

    def build(self, input_shape):
        self.logit.build(input_shape)
        self.built = True

    def call(self, features, training=False):
        return self.logit(features)


class InterModalDiscriminator(keras.Model):
    """Tells which modality produced a common representation, conditioned on one modality's
    own feature (GAN-CLS style): real = (own common rep, own feature)."""

    def __init__(self, common_dim: int, condition_dim: int, hparams: CMGANHParams, **kwargs):
        super().__init__(**kwargs)
        self.common_dim = common_dim
        self.condition_dim = condition_dim
        self.hidden = DenseBlock(hparams.inter_disc_hidden, hparams.leaky_relu_slope,
                                 name="hidden")
        self.logit = keras.layers.Dense(1, name="logit")

    def build(self, input_shape=None):
        self.hidden.build((None, self.common_dim + self.condition_dim))
        self.logit.build((None, self.hidden.units))
        self.built = True

    def call(self, common, condition, training=False):
        joint = keras.ops.concatenate([common, condition], axis=-1)
        return self.logit(self.hidden(joint, training=training))
