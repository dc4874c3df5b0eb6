"""The Dense -> BatchNorm -> LeakyReLU block every CM-GAN hidden layer is made of.

BatchNorm is synchronised across replicas: statistics come from the global batch (the
paper's 64), and the moving averages stay identical on every replica.
"""
from __future__ import annotations

import keras


class DenseBlock(keras.layers.Layer):
    def __init__(self, units: int, leaky_relu_slope: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.leaky_relu_slope = leaky_relu_slope
        self.dense = keras.layers.Dense(units)
        self.batch_norm = keras.layers.BatchNormalization(synchronized=True)
        self.activation = keras.layers.LeakyReLU(negative_slope=leaky_relu_slope)

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.batch_norm.build((*input_shape[:-1], self.units))
        self.built = True

    def call(self, inputs, training=False):
        return self.activation(self.batch_norm(self.dense(inputs), training=training))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "leaky_relu_slope": self.leaky_relu_slope}
