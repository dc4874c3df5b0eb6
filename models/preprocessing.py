"""Feature names and the Transform preprocessing_fn (models/example_codec.py writes and reads the
tf.Examples).

The pipeline's tf.Examples hold one pair each: ``image``, ``text``, ``label`` (int64) and ``id``
(bytes). Each modality is either a float feature vector (precomputed, or computed in Beam by a
keras:/torch: encoder), which Transform z-scores per dimension with training statistics, or raw:

- image for the ``cnn`` encoder: one bytes value of raw uint8 RGB pixels (size*size*3, HWC), which
  Transform turns into floats in [0, 1] (``scale_pixels``);
- text for the ``kim_cnn`` encoder: one UTF-8 string, which Transform normalises (NFKC, case
  folding, punctuation to spaces), tokenizes with tensorflow-text and maps to ids with a
  vocabulary computed on the training split: 0 padding, 1..V words, V+1 out of vocabulary, cut
  or padded to ``text_max_tokens``.

The same functions run inside the serving graph (models/export.py), so served raw inputs are
processed exactly as in training.
"""
from __future__ import annotations

from typing import Mapping

import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2

IMAGE_KEY = "image"
TEXT_KEY = "text"
LABEL_KEY = "label"
ID_KEY = "id"
FEATURE_KEYS = (IMAGE_KEY, TEXT_KEY)
TEXT_VOCABULARY = "text_tokens"  # Transform's vocabulary file name for kim_cnn
# Keys of Transform's custom_config; the values come from the model's hyperparameters, so the
# Transform graph and the model agree on sizes.
TRANSFORM_CONFIG_KEYS = ("image_encoder", "image_size", "text_encoder", "text_vocab_size",
                         "text_max_tokens")


def transform_config(hparams: Mapping) -> dict:
    """The part of the CM-GAN hyperparameters that shapes Transform's outputs."""
    return {key: hparams[key] for key in TRANSFORM_CONFIG_KEYS if key in hparams}


def scale_pixels(pixels: tf.Tensor) -> tf.Tensor:
    """uint8-valued pixels (any numeric dtype) -> float32 in [0, 1]."""
    return tf.cast(pixels, tf.float32) / 255.0


def pixels_from_bytes(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Raw pixel strings [B] or [B, 1] -> uint8 [B, size*size*3] (short strings zero-padded)."""
    length = image_size * image_size * 3
    return tf.io.decode_raw(tf.reshape(image, [-1]), tf.uint8, fixed_length=length)


def normalise_text(text: tf.Tensor) -> tf.Tensor:
    """NFKC, case folding, anything but letters and digits to spaces (tensorflow-text + RE2)."""
    import tensorflow_text as tf_text  # pylint: disable=import-outside-toplevel

    text = tf_text.case_fold_utf8(tf_text.normalize_utf8(tf.reshape(text, [-1]), "NFKC"))
    return tf.strings.regex_replace(text, r"[^\p{L}\p{N}]+", " ")


def tokenize(text: tf.Tensor) -> tf.RaggedTensor:
    """Normalised words of each text, ragged [B, (words)]."""
    import tensorflow_text as tf_text  # pylint: disable=import-outside-toplevel

    return tf_text.WhitespaceTokenizer().tokenize(normalise_text(text))


def token_ids_to_dense(ids: tf.RaggedTensor, max_tokens: int) -> tf.Tensor:
    """Vocabulary ids (0-based, OOV = V) -> model ids (0 padding, 1..V+1), [B, max_tokens]."""
    shifted = tf.ragged.map_flat_values(lambda v: tf.cast(v, tf.int64) + 1, ids)
    return shifted[:, :max_tokens].to_tensor(default_value=0, shape=[None, max_tokens])


def preprocessing_fn(inputs: Mapping[str, tf.Tensor],
                     custom_config: Mapping | None = None) -> dict[str, tf.Tensor]:
    """Features: per-dimension z-scores (training statistics). Raw pixels: floats in [0, 1].
    Raw text: token ids with a training-split vocabulary. Label and id as is."""
    # Imported here: importing TFT sets TF_USE_LEGACY_KERAS=1, which readers of the feature
    # names above (e.g. serving code) should not inherit.
    import tensorflow_transform as tft  # pylint: disable=import-outside-toplevel

    config = dict(custom_config or {})
    outputs = {}
    if config.get("image_encoder") == "cnn":
        outputs[IMAGE_KEY] = scale_pixels(pixels_from_bytes(inputs[IMAGE_KEY],
                                                            int(config["image_size"])))
    else:
        outputs[IMAGE_KEY] = tft.scale_to_z_score(inputs[IMAGE_KEY], elementwise=True)
    if config.get("text_encoder") == "kim_cnn":
        vocab_size = int(config.get("text_vocab_size", 20000))
        ids = tft.compute_and_apply_vocabulary(
            tokenize(inputs[TEXT_KEY]), top_k=vocab_size, num_oov_buckets=1,
            vocab_filename=TEXT_VOCABULARY)
        outputs[TEXT_KEY] = token_ids_to_dense(ids, int(config.get("text_max_tokens", 256)))
    else:
        outputs[TEXT_KEY] = tft.scale_to_z_score(inputs[TEXT_KEY], elementwise=True)
    outputs[LABEL_KEY] = tf.identity(inputs[LABEL_KEY])
    outputs[ID_KEY] = tf.identity(inputs[ID_KEY])
    return outputs


def num_classes_from_schema(schema: schema_pb2.Schema) -> int:
    """Class count from the label's int domain, which the schema curator sets deliberately."""
    for feature in schema.feature:
        if feature.name == LABEL_KEY:
            if feature.HasField("int_domain") and feature.int_domain.HasField("max"):
                return int(feature.int_domain.max) + 1
            break
    raise ValueError(f"schema has no int_domain with a max for feature '{LABEL_KEY}'")
