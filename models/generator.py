"""One modality's cross-modal autoencoder: the CM-GAN generator.

The image and the text generator hold the *same* encoder-2 layer object, which is what makes
their outputs one common space (CMGAN.md, "Weight sharing").
"""
from __future__ import annotations

import keras

from models.blocks import DenseBlock
from models.hparams import CMGANHParams
from models.semantic_classifier import make_semantic_classifier


class ModalityGenerator(keras.Model):
    def __init__(self, feature_dim: int, shared_encoder: DenseBlock,
                 semantic_classifier: keras.layers.Layer, hparams: CMGANHParams, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = feature_dim
        self.own_encoder = DenseBlock(hparams.hidden_dim, hparams.leaky_relu_slope,
                                      name="own_encoder")
        self.shared_encoder = shared_encoder
        self.decoder_hidden = DenseBlock(hparams.hidden_dim, hparams.leaky_relu_slope,
                                         name="decoder_hidden")
        self.decoder_output = keras.layers.Dense(feature_dim, name="decoder_output")
        self.semantic_classifier = semantic_classifier
        self.input_dropout = keras.layers.Dropout(hparams.input_dropout, name="input_dropout")
        self.hidden_dropout = keras.layers.Dropout(hparams.dropout, name="hidden_dropout")

    def build(self, input_shape):
        self.own_encoder.build(input_shape)
        hidden_shape = (input_shape[0], self.own_encoder.units)
        if not self.shared_encoder.built:
            self.shared_encoder.build(hidden_shape)
        common_shape = (input_shape[0], self.shared_encoder.units)
        self.decoder_hidden.build(common_shape)
        self.decoder_output.build((input_shape[0], self.decoder_hidden.units))
        if not self.semantic_classifier.built:
            self.semantic_classifier.build(common_shape)
        self.built = True

    def encode(self, features, training=False):
        """Common representation (the retrieval space), not normalised."""
        hidden = self.own_encoder(self.input_dropout(features, training=training),
                                  training=training)
        return self.shared_encoder(self.hidden_dropout(hidden, training=training),
                                   training=training)

    def decode(self, common, training=False):
        return self.decoder_output(self.decoder_hidden(common, training=training))

    def classify(self, common, training=False):
        """Semantic class logits of a common representation."""
        return self.semantic_classifier(self.hidden_dropout(common, training=training))

    def call(self, features, training=False):
        common = self.encode(features, training=training)
        return {"common": common, "reconstruction": self.decode(common, training=training),
                "class_logits": self.classify(common, training=training)}


def build_generators(image_dim: int, text_dim: int, num_classes: int,
                     hparams: CMGANHParams) -> tuple[ModalityGenerator, ModalityGenerator]:
    """Image and text generators; encoder 2 is one layer unless the ablation unties it."""
    shared = DenseBlock(hparams.common_dim, hparams.leaky_relu_slope, name="shared_encoder")
    text_shared = shared if hparams.shared_encoder else DenseBlock(
        hparams.common_dim, hparams.leaky_relu_slope, name="text_shared_encoder")
    def classifier():
        return make_semantic_classifier(hparams.semantic_classifier, num_classes,
                                        hparams.cosine_scale)

    image_classifier = classifier()
    text_classifier = image_classifier if hparams.shared_classifier else classifier()
    image_generator = ModalityGenerator(image_dim, shared, image_classifier, hparams,
                                        name="image_generator")
    text_generator = ModalityGenerator(text_dim, text_shared, text_classifier, hparams,
                                       name="text_generator")
    image_generator.build((None, image_dim))
    text_generator.build((None, text_dim))
    if text_shared is not shared:
        # The authors' release trains two copies from one initialisation; mirror that.
        text_shared.set_weights(shared.get_weights())
    return image_generator, text_generator
