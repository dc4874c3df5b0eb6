"""Convolutional image encoder on pixels, trained end to end as the image generator's first stage.

This is the paper's "cross-modal convolutional autoencoder" input stage at a size a CPU can train:
its pooled output is the image feature the rest of CM-GAN (encoders, decoder, discriminators) sees.
Inputs are flattened RGB pixels scaled to [0, 1] (``models.preprocessing.scale_pixels``), so the
same tensors flow from Transform, from ``read_split`` and from the serving graph.
"""
from __future__ import annotations

import keras


class PixelCNNEncoder(keras.layers.Layer):
    """[B, size*size*3] pixels -> conv blocks (stride-2, BatchNorm, ReLU) -> global average pool."""

    def __init__(self, image_size: int, channels: int = 32, num_blocks: int = 3,
                 output_dim: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.image_size, self.channels = image_size, channels
        self.num_blocks, self.output_dim = num_blocks, output_dim
        self.convolutions = []
        for block in range(num_blocks):
            width = channels * 2 ** block
            self.convolutions.append([
                keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                    name=f"conv{block}_a"),
                keras.layers.BatchNormalization(synchronized=True, name=f"bn{block}_a"),
                keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False,
                                    name=f"conv{block}_b"),
                keras.layers.BatchNormalization(synchronized=True, name=f"bn{block}_b"),
            ])
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.projection = keras.layers.Dense(output_dim, activation="relu", name="projection")

    def build(self, input_shape):
        shape = (input_shape[0], self.image_size, self.image_size, 3)
        for conv_a, bn_a, conv_b, bn_b in self.convolutions:
            conv_a.build(shape)
            shape = conv_a.compute_output_shape(shape)
            bn_a.build(shape)
            conv_b.build(shape)
            shape = conv_b.compute_output_shape(shape)
            bn_b.build(shape)
        self.projection.build((input_shape[0], shape[-1]))
        self.built = True

    def call(self, pixels, training=False):
        x = keras.ops.reshape(pixels, (-1, self.image_size, self.image_size, 3))
        x = (x - 0.5) * 2.0
        for conv_a, bn_a, conv_b, bn_b in self.convolutions:
            x = keras.ops.relu(bn_a(conv_a(x), training=training))
            x = keras.ops.relu(bn_b(conv_b(x), training=training))
        return self.projection(self.pool(x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)
