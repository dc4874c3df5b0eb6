"""What the search page (serving/web.py) asks the model server, and what it keeps of it.

Queries go over gRPC (``serving.client.ServingClient``) to the search companion
``<model>-search``; which query kinds are offered follows its signatures (GetModelMetadata):

- a sentence: ``search_text_string`` (or ``search_text`` when it takes strings);
- an uploaded image: ``search_image_bytes`` (JPEG/PNG), or ``encode_image_bytes`` then
  ``search_embedding`` when the companion has both;
- a gallery item: ``search_embedding`` with the item's stored embedding, read from the served
  version's variables under ``model_base_path`` (serving/gallery.py; works for every model,
  features-only too).

Each query gets the top-k items of the other modality and of both modalities (the two
galleries' top-k merged by cosine).
"""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Optional

import numpy as np

from models.signatures import (EMBEDDING_KEY, ENCODE_IMAGE_BYTES, ENCODE_PREFIX, IDS_KEY,
                               IMAGE_BYTES_KEY, K_KEY, LABELS_KEY, SCORES_KEY,
                               SEARCH_EMBEDDING, SEARCH_IMAGE_BYTES, SEARCH_PARAMETERS,
                               SEARCH_PREFIX, SEARCH_TEXT, SEARCH_TEXT_STRING, TARGET_KEY)
from serving.gallery import MODALITIES, Gallery, load_gallery

DEFAULT_MAX_IMAGE_PIXELS = 25_000_000  # models.image_decoding's (the page does not import TF)


class QueryError(Exception):
    """A problem the user can fix; shown on the page with ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class WebOptions:
    server: str = "127.0.0.1:8500"
    model: str = "cmgan"
    model_base_path: str = "serving_models"  # for the gallery listing and item embeddings
    host: str = "127.0.0.1"
    port: int = 8080
    top_k: int = 10
    max_upload_bytes: int = 5 << 20
    timeout_s: float = 10.0
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # uploads, from the header, before decoding
    connection_timeout_s: float = 30.0  # a client silent this long (half-open, slow) is dropped


@dataclasses.dataclass
class ServedModel:
    """What the search companion's current version offers."""

    version: int
    signatures: dict[str, tuple[str, int]]  # search signature -> (query input key, dtype enum)
    gallery: Gallery
    encoders: tuple[str, ...] = ()  # encode_* signatures the search companion also has

    def signature_for(self, kind: str) -> Optional[str]:
        """The signature answering a query kind (text | image | item), or None."""
        import tensorflow as tf

        string = tf.string.as_datatype_enum
        if kind == "text":
            for name in (SEARCH_TEXT_STRING, SEARCH_TEXT):
                if name in self.signatures and self.signatures[name][1] == string:
                    return name
            return None
        if kind == "image":
            return SEARCH_IMAGE_BYTES if SEARCH_IMAGE_BYTES in self.signatures else None
        if kind == "item":
            return (SEARCH_EMBEDDING if SEARCH_EMBEDDING in self.signatures
                    and self.gallery.embeddings else None)
        return None


@dataclasses.dataclass
class Hit:
    id: str
    label: int
    score: float
    modality: str


@dataclasses.dataclass
class Outcome:
    query_modality: str
    query_html: str  # already escaped
    query_label: Optional[int]
    other: list[Hit]
    both: list[Hit]
    version: int


class SearchBackend:
    """gRPC calls and the per-version state (signatures, gallery) behind the page."""

    def __init__(self, options: WebOptions):
        # Imported here: the client imports TensorFlow, which importing the page does not.
        from serving.client import ServingClient
        from serving.config_files import search_model_name

        self.options = options
        self.search_model = search_model_name(options.model)
        self.client = ServingClient(options.server, timeout_s=options.timeout_s)
        self._lock = threading.Lock()
        self._served: Optional[ServedModel] = None

    def served(self) -> ServedModel:
        """The highest AVAILABLE version's signatures and gallery (re-read when it changes)."""
        available = [v for v, s in self.client.status(self.search_model).items()
                     if s == "AVAILABLE"]
        if not available:
            raise QueryError(f"{self.search_model} has no available version on "
                             f"{self.options.server} yet", 503)
        version = max(available)
        with self._lock:
            if self._served is None or self._served.version != version:
                metadata = self.client.signatures(self.search_model, version)
                signatures = {}
                for name, signature in metadata.items():
                    if name.startswith(SEARCH_PREFIX):
                        keys = [k for k in signature.inputs if k not in SEARCH_PARAMETERS]
                        if len(keys) == 1:
                            signatures[name] = (keys[0], signature.inputs[keys[0]].dtype)
                gallery = load_gallery(os.path.join(self.options.model_base_path,
                                                    self.search_model, str(version)))
                encoders = tuple(sorted(n for n in metadata if n.startswith(ENCODE_PREFIX)))
                self._served = ServedModel(version, signatures, gallery, encoders)
            return self._served

    def _search(self, served: ServedModel, signature: str, query, target: str,
                k: int) -> list[Hit]:
        key, _ = served.signatures[signature]
        outputs, _ = self.client.predict(
            self.search_model, signature,
            {key: query, TARGET_KEY: np.array(target.encode()), K_KEY: np.int32(k)},
            version=served.version)
        return [Hit(i.decode() if isinstance(i, bytes) else str(i), int(label), float(score),
                    target)
                for i, label, score in zip(outputs[IDS_KEY][0], outputs[LABELS_KEY][0],
                                           outputs[SCORES_KEY][0])]

    def query(self, kind: str, value, query_modality: str, query_html: str,
              query_label: Optional[int] = None,
              exclude: Optional[tuple[str, str]] = None) -> Outcome:
        """Top-k of the other modality and of both; ``exclude`` (modality, id) drops the query
        item itself from the merged list."""
        served = self.served()
        signature = served.signature_for(kind)
        if signature is None:
            raise QueryError(unsupported_message(kind, served))
        k = self.options.top_k
        other = {"image": "text", "text": "image"}[query_modality]
        if (kind == "image" and ENCODE_IMAGE_BYTES in served.encoders
                and SEARCH_EMBEDDING in served.signatures):
            # Decode (and encode) the upload once, then search both galleries with the vector.
            value, signature = self._encode_image_bytes(served, value), SEARCH_EMBEDDING
        per_target = {t: self._search(served, signature, value, t, k + (exclude is not None))
                      for t in MODALITIES}
        both = sorted((h for t in MODALITIES for h in per_target[t]
                       if (h.modality, h.id) != exclude), key=lambda h: -h.score)[:k]
        return Outcome(query_modality, query_html, query_label,
                       [h for h in per_target[other] if (h.modality, h.id) != exclude][:k],
                       both, served.version)

    def _encode_image_bytes(self, served: ServedModel, images: list) -> np.ndarray:
        outputs, _ = self.client.predict(
            self.search_model, ENCODE_IMAGE_BYTES,
            {IMAGE_BYTES_KEY: np.array(images, dtype=object)}, version=served.version)
        return np.asarray(outputs[EMBEDDING_KEY], np.float32)

    def close(self) -> None:
        self.client.close()


def unsupported_message(kind: str, served: ServedModel) -> str:
    if kind == "item":
        return ("Gallery item queries are not available: "
                + (served.gallery.problem or f"the model has no {SEARCH_EMBEDDING} signature"))
    what = {"text": "Sentence", "image": "Image"}[kind]
    return (f"{what} queries are not supported by this model: it was trained on feature "
            f"vectors, not raw {'text' if kind == 'text' else 'images'}. Pick a gallery "
            "item instead, or serve a model trained on raw inputs.")

