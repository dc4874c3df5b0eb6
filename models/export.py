"""Export a trained CM-GAN as a TF Serving SavedModel that takes RAW inputs.

The Transform graph travels inside the model (``transform_features_layer``), so clients send what
ExampleGen wrote and never re-implement the preprocessing (z-scores, tokenization and vocabulary).
Signatures, by the encoders the model was trained with:

- ``encode_image``: ``image`` -> ``embedding`` float32 [None, common_dim]; ``image`` is float32
  [None, d_img] features, or for the ``cnn`` encoder the uint8-valued pixels [None, size*size*3]
  ExampleGen wrote.
- ``encode_image_bytes`` (``cnn`` and ``keras:`` encoders): ``image_bytes`` string [None], encoded
  JPEG or PNG; decoded, converted to RGB and resized in-graph exactly as ExampleGen did.
- ``encode_text``: ``text`` -> ``embedding``; float32 [None, d_txt] features, or for ``kim_cnn`` a
  UTF-8 string [None]; then ``encode_text_string`` is the same function under its own name.
- ``serving_default``: ``examples`` serialized tf.Example strings [None] -> ``image_embedding``
  and ``text_embedding`` (a missing modality is read as zeros / empty).

Embeddings are L2-normalised common representations, so a dot product is the cosine similarity
the retrieval metrics use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import tensorflow as tf

from models.image_decoding import decode_and_resize
from models.preprocessing import (ID_KEY, IMAGE_KEY, LABEL_KEY, TEXT_KEY, pixels_from_bytes,
                                  scale_pixels)
from models.signatures import (EMBEDDING_KEY, ENCODE_IMAGE, ENCODE_IMAGE_BYTES, ENCODE_TEXT,
                               ENCODE_TEXT_STRING, EXAMPLES_KEY, IMAGE_BYTES_KEY,
                               IMAGE_EMBEDDING_KEY, SERVING_DEFAULT, TEXT_EMBEDDING_KEY)

if TYPE_CHECKING:
    import tensorflow_transform as tft


def _raw_spec(tf_transform_output: tft.TFTransformOutput, key: str) -> tf.io.FixedLenFeature:
    return tf_transform_output.raw_feature_spec()[key]


def _is_string(spec) -> bool:
    return spec.dtype == tf.string


def feature_dims(tf_transform_output: tft.TFTransformOutput) -> tuple[int, int]:
    """(d_img, d_txt) of float feature inputs, from the schema Transform analysed; 0 where the
    modality is raw (strings)."""
    dims = []
    for key in (IMAGE_KEY, TEXT_KEY):
        spec = _raw_spec(tf_transform_output, key)
        dims.append(0 if _is_string(spec) else int(spec.shape[-1]))
    return dims[0], dims[1]


class CrossModalEncoder(tf.Module):
    """Raw inputs -> Transform -> CM-GAN encoders -> L2-normalised common representation.

    ``image_feature_extractor`` (keras: encoders): a Keras model, uint8-valued float32 images
    [B, s, s, 3] -> the features
    Beam computed, with ``feature_image_size`` = s; it gives the model ``encode_image_bytes``."""

    def __init__(self, model, tf_transform_output: tft.TFTransformOutput,
                 image_feature_extractor: Optional[Callable] = None,
                 feature_image_size: Optional[int] = None):
        super().__init__()
        self.model = model
        self.transform_layer = tf_transform_output.transform_features_layer()
        hparams = model.hparams
        self.pixel_image = hparams.image_encoder == "cnn"
        self.token_text = hparams.text_encoder == "kim_cnn"
        self.image_size = hparams.image_size
        self.image_spec = _raw_spec(tf_transform_output, IMAGE_KEY)
        self.text_spec = _raw_spec(tf_transform_output, TEXT_KEY)
        self.image_dim, self.text_dim = feature_dims(tf_transform_output)
        self.image_feature_extractor = image_feature_extractor
        self.feature_image_size = feature_image_size
        self._parse_spec = {IMAGE_KEY: self._with_default(self.image_spec),
                            TEXT_KEY: self._with_default(self.text_spec)}

    @staticmethod
    def _with_default(spec) -> tf.io.FixedLenFeature:
        shape = list(spec.shape)
        size = max(1, int(tf.TensorShape(shape).num_elements() or 1))
        default = [""] * size if _is_string(spec) else [0.0] * size
        return tf.io.FixedLenFeature(shape, spec.dtype, default_value=default)

    @staticmethod
    def _batch_shape(spec, batch) -> tf.Tensor:
        return tf.concat([[batch], tf.constant(list(spec.shape), tf.int32)], 0)

    def _placeholder(self, spec, batch) -> tf.Tensor:
        """A stand-in for the modality a signature does not take (its outputs are ignored)."""
        value = tf.constant("", tf.string) if _is_string(spec) else tf.constant(0.0, spec.dtype)
        return tf.fill(self._batch_shape(spec, batch), value)

    def _transform(self, image: tf.Tensor, text: tf.Tensor) -> dict:
        batch = tf.shape(image)[0]
        # label and id are pass-through features of the transform graph; they do not affect
        # the embeddings, so placeholders keep the serving inputs to the two modalities.
        return self.transform_layer({
            IMAGE_KEY: tf.reshape(image, self._batch_shape(self.image_spec, batch)),
            TEXT_KEY: tf.reshape(text, self._batch_shape(self.text_spec, batch)),
            LABEL_KEY: tf.zeros([batch], tf.int64), ID_KEY: tf.fill([batch], ""),
        })

    @staticmethod
    def _normalise(embedding):
        return tf.math.l2_normalize(tf.cast(embedding, tf.float32), axis=1)

    def _image_embedding(self, image):
        if self.pixel_image:
            model_input = scale_pixels(image)
        else:
            text = self._placeholder(self.text_spec, tf.shape(image)[0])
            model_input = self._transform(image, text)[IMAGE_KEY]
        return self._normalise(self.model.encode_image(model_input, training=False))

    def _text_embedding(self, text):
        image = self._placeholder(self.image_spec, tf.shape(text)[0])
        model_input = self._transform(image, text)[TEXT_KEY]
        return self._normalise(self.model.encode_text(model_input, training=False))

    @tf.function
    def encode_image(self, image):
        return {EMBEDDING_KEY: self._image_embedding(image)}

    @tf.function
    def encode_text(self, text):
        return {EMBEDDING_KEY: self._text_embedding(text)}

    @tf.function
    def encode_image_bytes(self, image_bytes):
        size = self.image_size if self.pixel_image else self.feature_image_size
        images = tf.map_fn(lambda data: decode_and_resize(data, size), image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        if self.pixel_image:
            return {EMBEDDING_KEY: self._image_embedding(
                tf.cast(tf.reshape(images, [-1, size * size * 3]), tf.float32))}
        features = tf.cast(self.image_feature_extractor(tf.cast(images, tf.float32),
                                                        training=False), tf.float32)
        return {EMBEDDING_KEY: self._image_embedding(features)}

    @tf.function
    def serve_examples(self, examples):
        features = tf.io.parse_example(examples, self._parse_spec)
        image = features[IMAGE_KEY]
        if self.pixel_image:
            image = tf.cast(pixels_from_bytes(image, self.image_size), tf.float32)
        return {IMAGE_EMBEDDING_KEY: self._image_embedding(image),
                TEXT_EMBEDDING_KEY: self._text_embedding(features[TEXT_KEY])}

    def input_specs(self) -> dict[str, tf.TensorSpec]:
        """The ``image`` and ``text`` inputs of encode_image / encode_text."""
        image = (tf.TensorSpec([None, self.image_size * self.image_size * 3], tf.float32,
                               name=IMAGE_KEY) if self.pixel_image else
                 tf.TensorSpec([None, self.image_dim], tf.float32, name=IMAGE_KEY))
        text = (tf.TensorSpec([None], tf.string, name=TEXT_KEY) if self.token_text else
                tf.TensorSpec([None, self.text_dim], tf.float32, name=TEXT_KEY))
        return {IMAGE_KEY: image, TEXT_KEY: text}

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        specs = self.input_specs()
        signatures = {
            ENCODE_IMAGE: self.encode_image.get_concrete_function(specs[IMAGE_KEY]),
            ENCODE_TEXT: self.encode_text.get_concrete_function(specs[TEXT_KEY]),
            SERVING_DEFAULT: self.serve_examples.get_concrete_function(
                tf.TensorSpec([None], tf.string, name=EXAMPLES_KEY)),
        }
        if self.pixel_image or self.image_feature_extractor is not None:
            signatures[ENCODE_IMAGE_BYTES] = self.encode_image_bytes.get_concrete_function(
                tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_KEY))
        if self.token_text:
            signatures[ENCODE_TEXT_STRING] = signatures[ENCODE_TEXT]
        return signatures


def load_serving_model(path: str):
    """``tf.saved_model.load`` after registering tensorflow-text's ops, which the Transform graph
    of raw-text models uses (TF Serving builds need them linked in too)."""
    import tensorflow_text  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

    return tf.saved_model.load(path)


def export_serving_model(model, tf_transform_output: tft.TFTransformOutput, export_dir: str,
                         image_feature_extractor: Optional[Callable] = None,
                         feature_image_size: Optional[int] = None) -> str:
    """Writes the SavedModel (loadable with plain ``tf.saved_model.load``) and returns its path."""
    encoder = CrossModalEncoder(model, tf_transform_output, image_feature_extractor,
                                feature_image_size)
    tf.saved_model.save(encoder, export_dir, signatures=encoder.signatures())
    return export_dir
