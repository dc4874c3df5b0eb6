"""One modality's cross-modal autoencoder: the CM-GAN generator.

The image and the text generator hold the *same* encoder-2 layer object, which is what makes
their outputs one common space (CMGAN.md, "Weight sharing").
"""
from __future__ import annotations

import keras

from models.blocks import DenseBlock
from models.hparams import CMGANHParams


class ModalityGenerator(keras.Model):
    def __init__(self, feature_dim: int, num_classes: int, shared_encoder: DenseBlock,
                 hparams: CMGANHParams, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = feature_dim
        self.own_encoder = DenseBlock(hparams.hidden_dim, hparams.leaky_relu_slope,
                                      name="own_encoder")
        self.shared_encoder = shared_encoder
        self.decoder_hidden = DenseBlock(hparams.hidden_dim, hparams.leaky_relu_slope,
                                         name="decoder_hidden")
        self.decoder_output = keras.layers.Dense(feature_dim, name="decoder_output")
        self.semantic_classifier = keras.layers.Dense(num_classes, name="semantic_classifier")

    def build(self, input_shape):
        self.own_encoder.build(input_shape)
        hidden_shape = (input_shape[0], self.own_encoder.units)
        if not self.shared_encoder.built:
            self.shared_encoder.build(hidden_shape)
        common_shape = (input_shape[0], self.shared_encoder.units)
        self.decoder_hidden.build(common_shape)
        self.decoder_output.build((input_shape[0], self.decoder_hidden.units))
        self.semantic_classifier.build(common_shape)
        self.built = True

    def encode(self, features, training=False):
        """Common representation (the retrieval space), not normalised."""
        return self.shared_encoder(self.own_encoder(features, training=training),
                                   training=training)

    def decode(self, common, training=False):
        return self.decoder_output(self.decoder_hidden(common, training=training))

    def classify(self, common):
        """Semantic class logits of a common representation."""
        return self.semantic_classifier(common)

    def call(self, features, training=False):
        common = self.encode(features, training=training)
        return {"common": common, "reconstruction": self.decode(common, training=training),
                "class_logits": self.classify(common)}


def build_generators(image_dim: int, text_dim: int, num_classes: int,
                     hparams: CMGANHParams) -> tuple[ModalityGenerator, ModalityGenerator]:
    """Image and text generators; encoder 2 is one layer unless the ablation unties it."""
    shared = DenseBlock(hparams.common_dim, hparams.leaky_relu_slope, name="shared_encoder")
    text_shared = shared if hparams.shared_encoder else DenseBlock(
        hparams.common_dim, hparams.leaky_relu_slope, name="text_shared_encoder")
    image_generator = ModalityGenerator(image_dim, num_classes, shared, hparams,
                                        name="image_generator")
    text_generator = ModalityGenerator(text_dim, num_classes, text_shared, hparams,
                                       name="text_generator")
    image_generator.build((None, image_dim))
    text_generator.build((None, text_dim))
    if text_shared is not shared:
        # The authors' release trains two copies from one initialisation; mirror that.
        text_shared.set_weights(shared.get_weights())
    return image_generator, text_generator
