"""The search servable: the pushed encoders plus an encoded gallery and in-graph top-k search.

It is a plain SavedModel (matmul + ``tf.math.top_k``, gallery held in variables), so the stock
TF Serving answers it as well as ``serving/server.py`` does. Signatures:

- ``encode_image``, ``encode_text``, ``serving_default``: the pushed model's, unchanged;
- ``search_image`` (``image`` [None, d_img]), ``search_text`` (``text`` [None, d_txt]) and
  ``search_embedding`` (``embedding`` [None, common_dim], any length: it is L2-normalised here),
  each with ``target`` string [] ("image" or "text": the gallery modality searched) and ``k``
  int32 [] -> ``ids`` string [None, k], ``labels`` int64 [None, k], ``scores`` float32 [None, k]
  (cosine, descending; ties keep gallery order, as models.metrics ranks). k above the gallery
  size returns the whole gallery.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from models.export import EMBEDDING_KEY
from models.preprocessing import IMAGE_KEY, TEXT_KEY
from serving.approximate_index import ANN_MIN_ITEMS, ApproximateIndex, index_dir

MODALITIES = (IMAGE_KEY, TEXT_KEY)
SEARCH_SIGNATURES = ("search_image", "search_text", "search_embedding")
SEARCH_OUTPUTS = ("ids", "labels", "scores")
ENCODE_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class GalleryPart:
    """The encoded items of one modality: L2-normalised embeddings, ids, class labels."""

    embeddings: np.ndarray  # float32 [G, common_dim]
    ids: np.ndarray  # str [G]
    labels: np.ndarray  # int64 [G]

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


def encode(loaded, modality: str, features: np.ndarray) -> np.ndarray:
    """Embeddings from a loaded SavedModel's ``encode_<modality>`` signature, in batches."""
    fn = loaded.signatures[f"encode_{modality}"]
    features = np.asarray(features, np.float32)
    dim = int(fn.structured_outputs[EMBEDDING_KEY].shape[-1])
    parts = [fn(**{modality: tf.constant(features[i:i + ENCODE_BATCH])})[EMBEDDING_KEY].numpy()
             for i in range(0, len(features), ENCODE_BATCH)]
    return np.concatenate(parts) if parts else np.zeros([0, dim], np.float32)


def encode_gallery(loaded, splits) -> dict[str, GalleryPart]:
    """Both modalities of the given ``components.datasets.Split`` objects, encoded."""
    splits = list(splits)
    ids = np.concatenate([s.ids for s in splits]).astype(str)
    labels = np.concatenate([s.label for s in splits]).astype(np.int64)
    return {m: GalleryPart(encode(loaded, m, np.concatenate([getattr(s, m) for s in splits])),
                           ids, labels)
            for m in MODALITIES}


class _GalleryVariables(tf.Module):
    def __init__(self, part: GalleryPart):
        super().__init__()
        # Stored transposed: [common_dim, G] makes the query matmul a plain row-major product.
        self.embeddings_t = tf.Variable(np.ascontiguousarray(part.embeddings.T, np.float32),
                                        trainable=False, name="embeddings_t")
        self.ids = tf.Variable(part.ids.astype(bytes), trainable=False, name="ids")
        self.labels = tf.Variable(part.labels.astype(np.int64), trainable=False, name="labels")

    def top_k(self, queries: tf.Tensor, k: tf.Tensor) -> dict[str, tf.Tensor]:
        scores = tf.matmul(queries, self.embeddings_t)
        k = tf.minimum(k, tf.shape(self.labels)[0])
        values, index = tf.math.top_k(scores, k=k, sorted=True)
        return {"ids": tf.gather(self.ids, index), "labels": tf.gather(self.labels, index),
                "scores": values}


class SearchModule(tf.Module):
    """Wraps a loaded encoder SavedModel and a gallery; see the module docstring."""

    def __init__(self, encoder, gallery: dict[str, GalleryPart]):
        super().__init__()
        self.encoder = encoder
        self.galleries = {m: _GalleryVariables(gallery[m]) for m in MODALITIES}
        self.image_dim = _input_dim(encoder, IMAGE_KEY)
        self.text_dim = _input_dim(encoder, TEXT_KEY)
        self.common_dim = int(
            encoder.signatures["encode_image"].structured_outputs[EMBEDDING_KEY].shape[-1])

    def _search(self, queries, target, k):
        checks = [
            tf.debugging.assert_positive(k, message="k must be at least 1"),
            tf.debugging.Assert(tf.reduce_any(tf.equal(target, list(MODALITIES))),
                                ["target must be 'image' or 'text', got", target]),
        ]
        with tf.control_dependencies(checks):
            queries = tf.math.l2_normalize(tf.cast(queries, tf.float32), axis=1)
            return tf.cond(tf.equal(target, IMAGE_KEY),
                           lambda: self.galleries[IMAGE_KEY].top_k(queries, k),
                           lambda: self.galleries[TEXT_KEY].top_k(queries, k))

    @tf.function
    def search_image(self, image, target, k):
        embedded = self.encoder.signatures["encode_image"](image=image)[EMBEDDING_KEY]
        return self._search(embedded, target, k)

    @tf.function
    def search_text(self, text, target, k):
        embedded = self.encoder.signatures["encode_text"](text=text)[EMBEDDING_KEY]
        return self._search(embedded, target, k)

    @tf.function
    def search_embedding(self, embedding, target, k):
        return self._search(embedding, target, k)

    def signatures(self) -> dict:
        target = tf.TensorSpec([], tf.string, name="target")
        k = tf.TensorSpec([], tf.int32, name="k")
        search = {
            "search_image": self.search_image.get_concrete_function(
                tf.TensorSpec([None, self.image_dim], tf.float32, name=IMAGE_KEY), target, k),
            "search_text": self.search_text.get_concrete_function(
                tf.TensorSpec([None, self.text_dim], tf.float32, name=TEXT_KEY), target, k),
            "search_embedding": self.search_embedding.get_concrete_function(
                tf.TensorSpec([None, self.common_dim], tf.float32, name=EMBEDDING_KEY),
                target, k),
        }
        return {**self.encoder.signatures, **search}


def _input_dim(encoder, modality: str) -> int:
    spec = encoder.signatures[f"encode_{modality}"].structured_input_signature[1][modality]
    return int(spec.shape[-1])


def write_warmup_requests(export_dir: str, module: SearchModule) -> str:
    """TF Serving's warmup file (assets.extra/tf_serving_warmup_requests): one small search per
    signature and target, replayed by the server before a version takes traffic."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    queries = {IMAGE_KEY: module.image_dim, TEXT_KEY: module.text_dim,
               EMBEDDING_KEY: module.common_dim}
    path = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for kind, dim in queries.items():
            for target in MODALITIES:
                request = predict_pb2.PredictRequest()
                request.model_spec.signature_name = f"search_{kind}"
                request.inputs[kind].CopyFrom(tf.make_tensor_proto(np.ones([1, dim], np.float32)))
                request.inputs["target"].CopyFrom(tf.make_tensor_proto(target))
                request.inputs["k"].CopyFrom(tf.make_tensor_proto(np.int32(1)))
                writer.write(prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                ).SerializeToString())
    return path


def export_search_model(encoder_dir: str, gallery: dict[str, GalleryPart], export_dir: str,
                        encoder=None, ann_min_items: int | None = ANN_MIN_ITEMS) -> str:
    """Writes the search SavedModel to ``export_dir`` atomically (a sibling temporary folder
    renamed into place), so a server polling the base path never sees half a version.

    A gallery modality of at least ``ann_min_items`` items (None: never) also gets an
    approximate index in ``assets.extra/ann_index/<modality>/`` of the same version
    (serving/approximate_index.py): TF Serving cannot run it, a client or sidecar searches it
    with the embeddings ``encode_*`` returns."""
    encoder = encoder if encoder is not None else tf.saved_model.load(encoder_dir)
    module = SearchModule(encoder, gallery)
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=parent)  # not an integer: servers skip it
    try:
        tf.saved_model.save(module, staging, signatures=module.signatures())
        write_warmup_requests(staging, module)
        for modality, part in gallery.items():
            if ann_min_items is not None and len(part) >= ann_min_items:
                ApproximateIndex.build(part.embeddings, part.ids, part.labels).save(
                    index_dir(staging, modality))
        os.rename(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return export_dir
