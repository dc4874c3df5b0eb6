"""The search servable: the pushed encoders plus an encoded gallery and in-graph top-k search.

It is a plain SavedModel (matmul + ``tf.math.top_k``, gallery held in variables), so the stock
TF Serving answers it as well as ``serving/server.py`` does. Signatures:

- ``encode_image``, ``encode_text``, ``serving_default``: the pushed model's, unchanged;
- ``search_image`` (``image``, as ``encode_image`` takes it), ``search_text`` (``text``, as
  ``encode_text`` takes it), ``search_embedding`` (``embedding`` [None, common_dim], any length:
  it is L2-normalised here), and for models trained on raw inputs ``search_image_bytes``
  (``image_bytes`` string [None], encoded JPEG/PNG) and ``search_text_string`` (``text`` string
  [None]); each with ``target`` string [] ("image" or "text": the gallery modality searched) and ``k``
  int32 [] -> ``ids`` string [None, k], ``labels`` int64 [None, k], ``scores`` float32 [None, k]
  (cosine, descending; ties keep gallery order, as models.metrics ranks). k above the gallery
  size returns the whole gallery.

The gallery is stored in the version's variables and, for people (web page, report), in
``assets.extra/gallery_items.jsonl``; serving/gallery.py writes and reads both. A gallery
modality of at least ``ann_min_items`` items also gets a faiss index in
``assets.extra/ann_index/<modality>/`` (serving/approximate_index.py). The in-graph search stays
in the SavedModel all the same: the stock tensorflow_model_server cannot run faiss and answers
every ``search_*`` signature exactly from it, while ``cmgan serve`` answers the indexed
modalities from the index (serving/ann_search.py).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from models.export import load_serving_model
from models.preprocessing import IMAGE_KEY, TEXT_KEY
from models.signatures import (EMBEDDING_KEY, ENCODE_IMAGE, ENCODE_IMAGE_BYTES, ENCODE_TEXT,
                               ENCODE_TEXT_STRING, IDS_KEY, K_KEY, LABELS_KEY,
                               RAW_SEARCH_SIGNATURES, SCORES_KEY, SEARCH_EMBEDDING, SEARCH_IMAGE,
                               SEARCH_IMAGE_BYTES, SEARCH_TEXT, TARGET_KEY, encode_signature)
from serving.approximate_index import ANN_MIN_ITEMS, DEFAULT_NPROBE, ApproximateIndex, index_dir
from serving.gallery import (MODALITIES, GalleryPart, gallery_variables, variable_tensors,
                             write_gallery_items)
from serving.servable import WARMUP_FILE

ENCODE_BATCH = 1024


def input_spec(loaded, signature: str) -> tf.TensorSpec:
    """The one data input of an ``encode_*`` signature."""
    (spec,) = loaded.signatures[signature].structured_input_signature[1].values()
    return spec


def encode(loaded, modality: str, features: np.ndarray, signature: str | None = None
           ) -> np.ndarray:
    """Embeddings from a loaded SavedModel's ``encode_<modality>`` signature (or ``signature``),
    in batches; features are float vectors or, for raw-input models, strings."""
    signature = signature or encode_signature(modality)
    fn = loaded.signatures[signature]
    spec = input_spec(loaded, signature)
    if spec.dtype == tf.string:
        features = np.asarray([f if isinstance(f, bytes) else str(f).encode() for f in
                               np.asarray(features, object).reshape(-1)], object)
    else:
        features = np.asarray(features, np.float32)
        expected = spec.shape[-1]
        if features.ndim != 2 or (expected is not None and expected != features.shape[1]):
            raise ValueError(f"{signature} expects {spec.name} of shape [N, {expected}], got "
                             f"{list(features.shape)}")
    dim = int(fn.structured_outputs[EMBEDDING_KEY].shape[-1])
    parts = [fn(**{spec.name: tf.constant(features[i:i + ENCODE_BATCH])})[EMBEDDING_KEY].numpy()
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


def _top_k(variables, queries: tf.Tensor, k: tf.Tensor) -> dict[str, tf.Tensor]:
    """The k best gallery items of one modality (``gallery_variables``) per query."""
    embeddings_t, ids, labels = variable_tensors(variables)
    scores = tf.matmul(queries, embeddings_t)
    k = tf.minimum(k, tf.shape(labels)[0])
    values, index = tf.math.top_k(scores, k=k, sorted=True)
    return {IDS_KEY: tf.gather(ids, index), LABELS_KEY: tf.gather(labels, index),
            SCORES_KEY: values}


class SearchModule(tf.Module):
    """Wraps a loaded encoder SavedModel and a gallery; see the module docstring."""

    def __init__(self, encoder, gallery: dict[str, GalleryPart]):
        super().__init__()
        self.encoder = encoder
        # The attribute's name is serving.gallery.VARIABLES_ROOT: the checkpoint keys' prefix.
        self.galleries = {m: gallery_variables(gallery[m]) for m in MODALITIES}
        self.input_specs = {name: input_spec(encoder, name)
                            for name in (ENCODE_IMAGE, ENCODE_TEXT,
                                         *RAW_SEARCH_SIGNATURES.values())
                            if name in encoder.signatures}
        self.common_dim = int(
            encoder.signatures[ENCODE_IMAGE].structured_outputs[EMBEDDING_KEY].shape[-1])

    def _search(self, queries, target, k):
        checks = [
            tf.debugging.assert_positive(k, message="k must be at least 1"),
            tf.debugging.Assert(tf.reduce_any(tf.equal(target, list(MODALITIES))),
                                ["target must be 'image' or 'text', got", target]),
        ]
        with tf.control_dependencies(checks):
            queries = tf.math.l2_normalize(tf.cast(queries, tf.float32), axis=1)
            return tf.cond(tf.equal(target, IMAGE_KEY),
                           lambda: _top_k(self.galleries[IMAGE_KEY], queries, k),
                           lambda: _top_k(self.galleries[TEXT_KEY], queries, k))

    @tf.function
    def search_image(self, image, target, k):
        embedded = self.encoder.signatures[ENCODE_IMAGE](image=image)[EMBEDDING_KEY]
        return self._search(embedded, target, k)

    @tf.function
    def search_text(self, text, target, k):
        embedded = self.encoder.signatures[ENCODE_TEXT](text=text)[EMBEDDING_KEY]
        return self._search(embedded, target, k)

    @tf.function
    def search_embedding(self, embedding, target, k):
        return self._search(embedding, target, k)

    @tf.function
    def search_image_bytes(self, image_bytes, target, k):
        embedded = self.encoder.signatures[ENCODE_IMAGE_BYTES](
            image_bytes=image_bytes)[EMBEDDING_KEY]
        return self._search(embedded, target, k)

    @tf.function
    def search_text_string(self, text, target, k):
        embedded = self.encoder.signatures[ENCODE_TEXT_STRING](text=text)[EMBEDDING_KEY]
        return self._search(embedded, target, k)

    def query_specs(self) -> dict[str, tf.TensorSpec]:
        """Search signature -> its query input (name, dtype, shape)."""
        specs = {SEARCH_IMAGE: self.input_specs[ENCODE_IMAGE],
                 SEARCH_TEXT: self.input_specs[ENCODE_TEXT],
                 SEARCH_EMBEDDING: tf.TensorSpec([None, self.common_dim], tf.float32,
                                                 name=EMBEDDING_KEY)}
        specs.update({search: self.input_specs[encode]
                      for search, encode in RAW_SEARCH_SIGNATURES.items()
                      if encode in self.input_specs})
        return specs

    def signatures(self) -> dict:
        target = tf.TensorSpec([], tf.string, name=TARGET_KEY)
        k = tf.TensorSpec([], tf.int32, name=K_KEY)
        search = {name: getattr(self, name).get_concrete_function(spec, target, k)
                  for name, spec in self.query_specs().items()}
        return {**self.encoder.signatures, **search}


def write_warmup_requests(export_dir: str, module: SearchModule) -> str:
    """TF Serving's warmup file (assets.extra/tf_serving_warmup_requests): one small search per
    signature and target, replayed by the server before a version takes traffic."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for name, spec in module.query_specs().items():
            if name == SEARCH_IMAGE_BYTES:
                query = np.array([_WARMUP_PNG], object)
            elif spec.dtype == tf.string:
                query = np.array([b"warm up"], object)
            else:
                query = np.ones([1, spec.shape[-1]], np.float32)
            for target in MODALITIES:
                request = predict_pb2.PredictRequest()
                request.model_spec.signature_name = name
                request.inputs[spec.name].CopyFrom(tf.make_tensor_proto(query))
                request.inputs[TARGET_KEY].CopyFrom(tf.make_tensor_proto(target))
                request.inputs[K_KEY].CopyFrom(tf.make_tensor_proto(np.int32(1)))
                writer.write(prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                ).SerializeToString())
    return path


_WARMUP_PNG = tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()


def export_search_model(encoder_dir: str, gallery: dict[str, GalleryPart], export_dir: str,
                        encoder=None, ann_min_items: int | None = ANN_MIN_ITEMS,
                        gallery_items=None, ann_nlist: int | None = None,
                        ann_nprobe: int = DEFAULT_NPROBE) -> str:
    """Writes the search SavedModel to ``export_dir`` atomically (a sibling temporary folder
    renamed into place), so a server polling the base path never sees half a version.

    A gallery modality of at least ``ann_min_items`` items (None: never) also gets an
    approximate index in ``assets.extra/ann_index/<modality>/`` of the same version
    (serving/approximate_index.py; ``ann_nlist`` lists, None: about 4 sqrt(N), searched with
    ``ann_nprobe``), which records its recall@10 against the exact search for queries of the
    other modality (the cross-modal queries it will answer). ``cmgan serve`` answers that
    modality's ``search_*`` signatures from it; TF Serving cannot run it and stays exact."""
    encoder = encoder if encoder is not None else load_serving_model(encoder_dir)
    module = SearchModule(encoder, gallery)
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=parent)  # not an integer: servers skip it
    try:
        tf.saved_model.save(module, staging, signatures=module.signatures())
        write_warmup_requests(staging, module)
        if gallery_items is not None:
            write_gallery_items(staging, gallery_items)
        for modality, part in gallery.items():
            if ann_min_items is not None and len(part) >= ann_min_items:
                index = ApproximateIndex.build(part.embeddings, part.ids, part.labels,
                                               nlist=ann_nlist, nprobe=ann_nprobe)
                others = [p for m, p in gallery.items() if m != modality and len(p)]
                index.record_recall(part.embeddings,
                                    others[0].embeddings if others else part.embeddings)
                index.save(index_dir(staging, modality))
        os.rename(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return export_dir
