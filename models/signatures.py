"""Names of the served signatures and of their inputs and outputs: the servables' wire protocol.

Defined once here and imported by everything that writes a servable (models/export.py,
serving/search_model.py) or calls one (serving/client.py, the web page). No TensorFlow: the web
page imports this module without loading it.

The encoder servable (models/export.py):

- ``encode_image`` / ``encode_text``: ``image`` / ``text`` -> ``embedding``;
- ``encode_image_bytes``: ``image_bytes`` -> ``embedding`` (models trained on raw images);
- ``encode_text_string``: ``text`` strings -> ``embedding`` (models trained on raw text);
- ``serving_default``: ``examples`` -> ``image_embedding``, ``text_embedding``.

The search companion (serving/search_model.py) adds ``search_<query kind>``: the query input,
``target`` and ``k`` -> ``ids``, ``labels``, ``scores``.
"""
from __future__ import annotations

ENCODE_PREFIX = "encode_"
SEARCH_PREFIX = "search_"

# ---------------------------------------------------------------- encoder signatures
ENCODE_IMAGE = "encode_image"
ENCODE_TEXT = "encode_text"
ENCODE_IMAGE_BYTES = "encode_image_bytes"
ENCODE_TEXT_STRING = "encode_text_string"
SERVING_DEFAULT = "serving_default"

EMBEDDING_KEY = "embedding"  # output of every encode_* signature, input of search_embedding
IMAGE_BYTES_KEY = "image_bytes"  # input of encode_image_bytes and search_image_bytes
EXAMPLES_KEY = "examples"  # input of serving_default: serialized tf.Example strings
IMAGE_EMBEDDING_KEY = "image_embedding"  # outputs of serving_default
TEXT_EMBEDDING_KEY = "text_embedding"

# ---------------------------------------------------------------- search signatures
SEARCH_IMAGE = "search_image"
SEARCH_TEXT = "search_text"
SEARCH_EMBEDDING = "search_embedding"
SEARCH_IMAGE_BYTES = "search_image_bytes"
SEARCH_TEXT_STRING = "search_text_string"

SEARCH_SIGNATURES = (SEARCH_IMAGE, SEARCH_TEXT, SEARCH_EMBEDDING)  # every search servable's
# Search signatures of models trained on raw inputs -> the encoder signature each one wraps.
RAW_SEARCH_SIGNATURES = {SEARCH_IMAGE_BYTES: ENCODE_IMAGE_BYTES,
                         SEARCH_TEXT_STRING: ENCODE_TEXT_STRING}

TARGET_KEY = "target"  # string []: the gallery modality searched, "image" or "text"
K_KEY = "k"  # int32 []: how many results per query
SEARCH_PARAMETERS = (TARGET_KEY, K_KEY)  # the inputs of a search signature besides the query
IDS_KEY = "ids"  # outputs of a search signature, each [queries, k]
LABELS_KEY = "labels"
SCORES_KEY = "scores"


def encode_signature(modality: str) -> str:
    """``encode_image`` / ``encode_text``: the encoder signature of one modality."""
    return ENCODE_PREFIX + modality


def search_signature(query_kind: str) -> str:
    """``search_<query_kind>``, e.g. ``search_text_string`` for the kind ``text_string``."""
    return SEARCH_PREFIX + query_kind


def query_kind_of(search_signature_name: str) -> str:
    """The query kind a search signature answers (``search_embedding`` -> ``embedding``)."""
    return search_signature_name[len(SEARCH_PREFIX):]
