"""One modality's cross-modal autoencoder: the CM-GAN generator.

The image and the text generator hold the *same* encoder-2 layer object, which is what makes
their outputs one common space (CMGAN.md, "Weight sharing"). A generator may start with an input
encoder (pixels -> CNN, token ids -> Kim CNN) trained with it; its output is then the modality
"feature" the autoencoder reconstructs and the discriminators see.
"""
from __future__ import annotations

import keras

from models.blocks import DenseBlock
from models.hparams import CMGANHParams
from models.image_encoder import PixelCNNEncoder
from models.semantic_classifier import make_semantic_classifier
from models.text_encoder import KimCNNTextEncoder


class ModalityGenerator(keras.Model):
    def __init__(self, feature_dim: int, shared_encoder: DenseBlock,
                 semantic_classifier: keras.layers.Layer, hparams: CMGANHParams,
                 input_encoder: keras.layers.Layer | None = None, **kwargs):
        super().__init__(**kwargs)
        self.input_encoder = input_encoder
        # The autoencoder works on the input encoder's output when there is one.
        self.feature_dim = input_encoder.output_dim if input_encoder is not None else feature_dim
        self.own_encoder = DenseBlock(hparams.hidden_dim, hparams.leaky_relu_slope,
                                      name="own_encoder")
        self.shared_encoder = shared_encoder
        self.decoder_hidden = DenseBlock(hparams.hidden_dim, hparams.leaky_relu_slope,
                                         name="decoder_hidden")
        self.decoder_output = keras.layers.Dense(self.feature_dim, name="decoder_output")
        self.semantic_classifier = semantic_classifier
        self.input_dropout = keras.layers.Dropout(hparams.input_dropout, name="input_dropout")
        self.hidden_dropout = keras.layers.Dropout(hparams.dropout, name="hidden_dropout")

    def build(self, input_shape):
        if self.input_encoder is not None:
            self.input_encoder.build(input_shape)
            input_shape = (input_shape[0], self.feature_dim)
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

    def featurize(self, inputs, training=False):
        """The modality feature: the input encoder's output, or the input itself."""
        if self.input_encoder is None:
            return inputs
        return self.input_encoder(inputs, training=training)

    def encode(self, inputs, training=False):
        """Common representation (the retrieval space) of raw inputs, not normalised."""
        return self.encode_features(self.featurize(inputs, training=training), training=training)

    def encode_features(self, features, training=False):
        """Common representation of modality features (after the input encoder)."""
        hidden = self.own_encoder(self.input_dropout(features, training=training),
                                  training=training)
        return self.shared_encoder(self.hidden_dropout(hidden, training=training),
                                   training=training)

    def decode(self, common, training=False):
        return self.decoder_output(self.decoder_hidden(common, training=training))

    def classify(self, common, training=False):
        """Semantic class logits of a common representation."""
        return self.semantic_classifier(self.hidden_dropout(common, training=training))

    def call(self, inputs, training=False):
        common = self.encode(inputs, training=training)
        return {"common": common, "reconstruction": self.decode(common, training=training),
                "class_logits": self.classify(common, training=training)}


def make_input_encoders(hparams: CMGANHParams):
    """(image, text) input encoders the hyperparameters ask for; None where inputs are features."""
    image = text = None
    if hparams.image_encoder == "cnn":
        image = PixelCNNEncoder(hparams.image_size, hparams.cnn_channels,
                                output_dim=hparams.cnn_feature_dim, name="image_cnn")
    if hparams.text_encoder == "kim_cnn":
        text = KimCNNTextEncoder(hparams.text_vocab_size, hparams.word_embedding_dim,
                                 hparams.kim_filters, hparams.kim_dropout, name="text_kim_cnn")
    return image, text


def build_generators(image_dim: int, text_dim: int, num_classes: int,
                     hparams: CMGANHParams) -> tuple[ModalityGenerator, ModalityGenerator]:
    """Image and text generators; encoder 2 is one layer unless the ablation unties it.
    ``image_dim``/``text_dim`` are the input sizes (pixels, tokens or feature dimensions)."""
    shared = DenseBlock(hparams.common_dim, hparams.leaky_relu_slope, name="shared_encoder")
    text_shared = shared if hparams.shared_encoder else DenseBlock(
        hparams.common_dim, hparams.leaky_relu_slope, name="text_shared_encoder")
    def classifier():
        return make_semantic_classifier(hparams.semantic_classifier, num_classes,
                                        hparams.cosine_scale)

    image_classifier = classifier()
    text_classifier = image_classifier if hparams.shared_classifier else classifier()
    image_input, text_input = make_input_encoders(hparams)
    image_generator = ModalityGenerator(image_dim, shared, image_classifier, hparams,
                                        input_encoder=image_input, name="image_generator")
    text_generator = ModalityGenerator(text_dim, text_shared, text_classifier, hparams,
                                       input_encoder=text_input, name="text_generator")
    image_generator.build((None, image_dim))
    text_generator.build((None, text_dim))
    if text_shared is not shared:
        # The authors' release trains two copies from one initialisation; mirror that.
        text_shared.set_weights(shared.get_weights())
    return image_generator, text_generator
