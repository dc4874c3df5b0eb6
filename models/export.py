"""Export a trained CM-GAN as a TF Serving SavedModel that takes RAW features.

The Transform graph travels inside the model (``transform_features_layer``), so clients send the
same features ExampleGen wrote and never re-implement the z-scoring. Signatures:

- ``encode_image``: ``image`` float32 [None, d_img] -> ``embedding`` float32 [None, common_dim]
- ``encode_text``: ``text`` float32 [None, d_txt] -> ``embedding`` float32 [None, common_dim]
- ``serving_default``: ``examples`` serialized tf.Example strings [None] -> ``image_embedding``
  and ``text_embedding`` (a missing modality is read as zeros)

Embeddings are L2-normalised common representations, so a dot product is the cosine similarity
the retrieval metrics use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf

from models.preprocessing import ID_KEY, IMAGE_KEY, LABEL_KEY, TEXT_KEY

if TYPE_CHECKING:
    import tensorflow_transform as tft

SIGNATURES = ("encode_image", "encode_text", "serving_default")
EMBEDDING_KEY = "embedding"


def feature_dims(tf_transform_output: tft.TFTransformOutput) -> tuple[int, int]:
    """(d_img, d_txt) of the raw features, from the schema Transform analysed."""
    spec = tf_transform_output.raw_feature_spec()
    return int(spec[IMAGE_KEY].shape[-1]), int(spec[TEXT_KEY].shape[-1])


class CrossModalEncoder(tf.Module):
    """Raw features -> Transform -> CM-GAN encoders -> L2-normalised common representation."""

    def __init__(self, model, tf_transform_output: tft.TFTransformOutput):
        super().__init__()
        self.model = model
        self.transform_layer = tf_transform_output.transform_features_layer()
        self.image_dim, self.text_dim = feature_dims(tf_transform_output)
        self._parse_spec = {
            IMAGE_KEY: tf.io.FixedLenFeature([self.image_dim], tf.float32,
                                             default_value=[0.0] * self.image_dim),
            TEXT_KEY: tf.io.FixedLenFeature([self.text_dim], tf.float32,
                                            default_value=[0.0] * self.text_dim),
        }

    def _embed(self, image: tf.Tensor, text: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch = tf.shape(image)[0]
        # label and id are pass-through features of the transform graph; they do not affect
        # the embeddings, so placeholders keep the serving inputs to the two modalities.
        transformed = self.transform_layer({
            IMAGE_KEY: image, TEXT_KEY: text,
            LABEL_KEY: tf.zeros([batch], tf.int64), ID_KEY: tf.fill([batch], ""),
        })
        image_emb = self.model.encode_image(transformed[IMAGE_KEY], training=False)
        text_emb = self.model.encode_text(transformed[TEXT_KEY], training=False)
        return (tf.math.l2_normalize(tf.cast(image_emb, tf.float32), axis=1),
                tf.math.l2_normalize(tf.cast(text_emb, tf.float32), axis=1))

    @tf.function
    def encode_image(self, image):
        text = tf.zeros([tf.shape(image)[0], self.text_dim], tf.float32)
        return {EMBEDDING_KEY: self._embed(image, text)[0]}

    @tf.function
    def encode_text(self, text):
        image = tf.zeros([tf.shape(text)[0], self.image_dim], tf.float32)
        return {EMBEDDING_KEY: self._embed(image, text)[1]}

    @tf.function
    def serve_examples(self, examples):
        features = tf.io.parse_example(examples, self._parse_spec)
        image_emb, text_emb = self._embed(features[IMAGE_KEY], features[TEXT_KEY])
        return {"image_embedding": image_emb, "text_embedding": text_emb}

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        return {
            "encode_image": self.encode_image.get_concrete_function(
                tf.TensorSpec([None, self.image_dim], tf.float32, name=IMAGE_KEY)),
            "encode_text": self.encode_text.get_concrete_function(
                tf.TensorSpec([None, self.text_dim], tf.float32, name=TEXT_KEY)),
            "serving_default": self.serve_examples.get_concrete_function(
                tf.TensorSpec([None], tf.string, name="examples")),
        }


def export_serving_model(model, tf_transform_output: tft.TFTransformOutput,
                         export_dir: str) -> str:
    """Writes the SavedModel (loadable with plain ``tf.saved_model.load``) and returns its path."""
    encoder = CrossModalEncoder(model, tf_transform_output)
    tf.saved_model.save(encoder, export_dir, signatures=encoder.signatures())
    return export_dir
