"""The ``search_*`` signatures of a search servable answered from its approximate index.

A search servable version whose gallery modality reached ``ann_min_items`` at export carries a
faiss index of it (``assets.extra/ann_index/<modality>/``, serving/approximate_index.py). When
such a version is loaded, ``cmgan serve`` loads the index with it and answers every ``search_*``
request whose ``target`` is that modality from the index: the query is encoded with the same
SavedModel's ``encode_*`` signature (``search_embedding`` takes the embedding as sent), the
index is searched at the ``nprobe`` it was built with, and the answer has the exact search's
outputs, dtypes and shapes (``ids`` string, ``labels`` int64, ``scores`` float32, each
[queries, min(k, gallery size)]). Other targets, and every other signature, run in-graph.

Why behind the same signatures rather than a companion servable: clients (serving/client.py,
``cmgan query``, the web page, the REST API) send the same request whatever the gallery size;
the index is loaded, version-switched, labelled and unloaded with the very gallery it was built
from (one servable, one version policy), so it can never answer for another gallery; and the
stock tensorflow_model_server, which cannot run faiss, answers the same request exactly from
the in-graph search that stays in the SavedModel. Which path answers is decided once, at export,
by gallery size (the pipeline's ``gallery.ann_min_items``), so every replica of a version
answers alike.
"""
from __future__ import annotations

import logging
from typing import Mapping, Optional

import grpc
import numpy as np
import tensorflow as tf

from models.signatures import (EMBEDDING_KEY, ENCODE_IMAGE, ENCODE_TEXT, IDS_KEY, K_KEY,
                               LABELS_KEY, RAW_SEARCH_SIGNATURES, SCORES_KEY, SEARCH_EMBEDDING,
                               SEARCH_IMAGE, SEARCH_PARAMETERS, SEARCH_TEXT, TARGET_KEY)
from serving.approximate_index import RECALL_K, ApproximateIndex, load_for_servable
from serving.gallery import MODALITIES
from serving.servable import Servable, ServingError

log = logging.getLogger(__name__)

# search signature -> the encoder signature that embeds its query (None: it is the embedding)
QUERY_ENCODERS = {SEARCH_IMAGE: ENCODE_IMAGE, SEARCH_TEXT: ENCODE_TEXT, SEARCH_EMBEDDING: None,
                  **RAW_SEARCH_SIGNATURES}


def load_indexes(path: str, signature_defs: Mapping) -> dict[str, ApproximateIndex]:
    """Gallery modality -> the index a search servable version at ``path`` carries (none for
    an encoder servable or a small gallery). An index whose dimension is not the servable's
    embedding size is refused (ValueError), so that version does not load."""
    indexes = {m: index for m in MODALITIES
               if (index := load_for_servable(path, m)) is not None}
    if indexes and SEARCH_EMBEDDING in signature_defs:
        dims = signature_defs[SEARCH_EMBEDDING].inputs[EMBEDDING_KEY].tensor_shape.dim
        for modality, index in indexes.items():
            if index.dim != dims[-1].size:
                raise ValueError(f"the {modality} approximate index holds {index.dim}-d "
                                 f"embeddings but the servable's are {dims[-1].size}-d")
    for modality, index in indexes.items():
        log.info("%s: %s gallery searched with its approximate index (%s, %d items, nprobe %d, "
                 "recall@%d %s at export)", path, modality, index.meta.get("kind"), len(index),
                 index.nprobe, RECALL_K, index.meta.get(f"recall_at_{RECALL_K}", "not measured"))
    return indexes


def approximate_search(servable: Servable, signature: str, inputs: Mapping[str, np.ndarray],
                       outputs: list[str]) -> Optional[dict[str, np.ndarray]]:
    """The requested ``outputs`` of a search request answered from the servable's index of its
    ``target``; None when the signature runs in-graph instead (not a search signature, or no
    index for that target: an unknown target then gets the in-graph search's error).
    ``inputs`` are checked against the signature already (serving/predict.py)."""
    if not servable.approximate or signature not in QUERY_ENCODERS:
        return None
    target = inputs[TARGET_KEY].item()
    index = servable.approximate.get(target.decode("utf-8", "replace")
                                     if isinstance(target, bytes) else str(target))
    if index is None:
        return None
    k = int(inputs[K_KEY])
    if k < 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "k must be at least 1")
    (alias,) = [a for a in inputs if a not in SEARCH_PARAMETERS]
    encoder = QUERY_ENCODERS[signature]
    queries = (inputs[alias] if encoder is None else servable.signatures[encoder](
        **{alias: tf.constant(inputs[alias])})[EMBEDDING_KEY].numpy())
    ids, labels, scores = index.search(queries, k)
    values = {IDS_KEY: np.char.encode(ids, "utf-8"), LABELS_KEY: labels, SCORES_KEY: scores}
    return {alias: values[alias] for alias in outputs}
