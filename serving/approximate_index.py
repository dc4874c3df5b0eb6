"""Approximate nearest-neighbour search for large galleries (faiss IVF, inner product = cosine).

Why: the search servable (serving/search_model.py) scores every gallery item in-graph (matmul +
``tf.math.top_k``). That is exact and runs in the stock TF Serving, but its cost grows with the
gallery: about 4 GiB of variables and a full scan per query at 1M items of 1024-d. TF Serving
cannot run faiss in-graph, so a gallery modality of at least ``ann_min_items`` items (a pipeline
setting, default ``ANN_MIN_ITEMS``) also gets this index inside the search servable's version,
and the project's server (``cmgan serve``, serving/ann_search.py) answers that modality's
``search_*`` signatures from it; the stock server keeps answering the same signatures exactly.
The index records its recall@10 against ``exact_search`` at build time (``record_recall``),
which GallerySearch reports; ``benchmarks/ann_recall.py`` sweeps ``nprobe``.

The index is an inverted file (``IndexIVFFlat``, or ``IndexIVFScalarQuantizer`` with 8-bit codes
for a quarter of the memory) over the L2-normalised embeddings: spherical k-means puts the
gallery into ``nlist`` (default about 4 sqrt(N)) lists, and a query scans the ``nprobe`` lists
whose centroids are nearest. ``nprobe`` trades recall for latency and can change per call.

Output contract, as the exact ``search_*`` signatures: ``ids`` str [Q, k], ``labels`` int64
[Q, k], ``scores`` float32 [Q, k] (cosine, descending); queries of any length are L2-normalised
here; k above the gallery size returns the whole gallery. Unlike the exact search, the order of
equal scores is not defined.

numpy and faiss only (no TensorFlow), so a client process can use it without TF.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import numpy as np

from models.metrics import l2_normalise

ANN_MIN_ITEMS = 1_000_000  # galleries at least this large get an index beside the servable
ANN_DIR = os.path.join("assets.extra", "ann_index")  # inside the search servable's version
ENCODINGS = ("flat", "sq8")
DEFAULT_NPROBE = 32
RECALL_K = 10  # recall@10 against exact search is what an index records about itself
RECALL_QUERIES = 1000  # queries sampled for it: enough for +-0.01, seconds at 1M items
_FILES = {"index": "index.faiss", "ids": "ids.npy", "labels": "labels.npy", "meta": "index.json"}
_EXACT_CHUNK_ELEMENTS = 1 << 25  # [queries, G] float32 scores per chunk of exact_search


def _faiss():
    import faiss  # imported lazily: exporting a small gallery never needs it

    return faiss


def _unit_rows(x) -> np.ndarray:
    """float32 C-contiguous L2-normalised rows; no copy of an already normalised float32 gallery
    (at 1M x 1024 a copy is another 4 GiB)."""
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim == 2 and np.allclose(np.einsum("ij,ij->i", x, x), 1.0, atol=1e-4):
        return x
    return np.ascontiguousarray(l2_normalise(x), np.float32)


def default_nlist(num_items: int) -> int:
    """About 4 sqrt(N) lists (faiss's rule of thumb), at least 1 and at most N."""
    return max(1, min(num_items, int(round(4 * math.sqrt(num_items)))))


def index_dir(search_export_dir: str, modality: str) -> str:
    """Where the search servable at ``search_export_dir`` keeps the index of one modality:
    ``<serving_root>/<model>-search/<version>/assets.extra/ann_index/<modality>/``, so the index
    is versioned, pushed and removed with the gallery it was built from (TF Serving does not
    read assets.extra beyond its warmup file)."""
    return os.path.join(search_export_dir, ANN_DIR, modality)


class ApproximateIndex:
    """An IVF index over one gallery modality plus its ids and labels; see the module docstring.

    Build with ``ApproximateIndex.build``, persist with ``save`` / ``ApproximateIndex.load``.
    """

    def __init__(self, index, ids: np.ndarray, labels: np.ndarray, meta: dict):
        self.index = index
        self.ids = np.asarray(ids).astype(str)
        self.labels = np.asarray(labels, np.int64)
        self.meta = dict(meta)
        self.nprobe = int(meta.get("nprobe", DEFAULT_NPROBE))
        if not (len(self.ids) == len(self.labels) == index.ntotal):
            raise ValueError(f"the index holds {index.ntotal} vectors but there are "
                             f"{len(self.ids)} ids and {len(self.labels)} labels")

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, embeddings: np.ndarray, ids, labels, *, nlist: int | None = None,
              nprobe: int = DEFAULT_NPROBE, encoding: str = "flat",
              train_points_per_list: int = 40, kmeans_iterations: int = 10,
              seed: int = 0) -> "ApproximateIndex":
        """Trains the coarse quantizer (spherical k-means on at most
        ``train_points_per_list * nlist`` sampled items: enough for stable centroids, and it
        keeps a 1M x 1024-d build within minutes on two cores) and adds every item.
        Embeddings are L2-normalised here (the encoders' output already is)."""
        faiss = _faiss()
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        vectors = _unit_rows(embeddings)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"need a non-empty [N, d] gallery, got shape {vectors.shape}")
        num_items, dim = vectors.shape
        nlist = default_nlist(num_items) if nlist is None else max(1, min(int(nlist), num_items))
        quantizer = faiss.IndexFlatIP(dim)
        if encoding == "flat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist,
                                                  faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
        index.cp.spherical = True  # centroids on the unit sphere, as the data
        index.cp.niter = kmeans_iterations
        index.cp.seed = seed
        index.cp.max_points_per_centroid = train_points_per_list
        index.cp.min_points_per_centroid = 5  # a small gallery trains on all it has; no warning
        train_size = min(num_items, train_points_per_list * nlist)
        sample = np.random.default_rng(seed).choice(num_items, train_size, replace=False)
        index.train(vectors[np.sort(sample)])
        index.add(vectors)
        index.nprobe = min(nprobe, nlist)
        meta = {"kind": f"IVF{nlist},{'Flat' if encoding == 'flat' else 'SQ8'}",
                "metric": "inner_product", "encoding": encoding, "nlist": nlist,
                "nprobe": int(min(nprobe, nlist)), "dim": dim, "count": num_items,
                "train_size": int(train_size), "faiss_version": faiss.__version__}
        built = cls(index, ids, labels, meta)
        built._quantizer = quantizer  # the IVF index refers to it; keep it alive
        return built

    # ------------------------------------------------------------------ search
    def search_indices(self, queries: np.ndarray, k: int,
                       nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Gallery row indices int64 [Q, k'] and cosine scores float32 [Q, k'], k' = min(k, N).

        A query whose probed lists hold fewer than k' items is searched again over every list,
        so each row always has k' real items."""
        faiss = _faiss()
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = min(int(k), len(self))
        queries = np.ascontiguousarray(
            l2_normalise(np.atleast_2d(np.asarray(queries, np.float32))), np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"the index holds {self.dim}-d embeddings, the queries are "
                             f"{queries.shape[1]}-d")
        nprobe = min(self.nprobe if nprobe is None else int(nprobe), self.nlist)
        scores, index = self.index.search(queries, k,
                                          params=faiss.SearchParametersIVF(nprobe=nprobe))
        short = np.flatnonzero((index < 0).any(axis=1))
        if len(short) and nprobe < self.nlist:
            scores[short], index[short] = self.index.search(
                queries[short], k, params=faiss.SearchParametersIVF(nprobe=self.nlist))
        return index.astype(np.int64), scores.astype(np.float32)

    def search(self, queries: np.ndarray, k: int = 10,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, labels, scores)``: the exact ``search_*`` signatures' contract (see above)."""
        index, scores = self.search_indices(queries, k, nprobe)
        return self.ids[index], self.labels[index], scores

    def record_recall(self, embeddings: np.ndarray, queries: np.ndarray, k: int = RECALL_K,
                      max_queries: int = RECALL_QUERIES, seed: int = 0) -> float:
        """recall@k of this index (at its own ``nprobe``) against ``exact_search`` over
        ``embeddings`` (the gallery it was built from), on at most
        ``max_queries`` rows sampled from ``queries``; kept in ``meta`` (and so saved) as
        ``recall_at_<k>`` with ``recall_queries``."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if len(queries) == 0:
            raise ValueError("need at least one query to measure recall")
        if len(queries) > max_queries:
            rows = np.random.default_rng(seed).choice(len(queries), max_queries, replace=False)
            queries = queries[np.sort(rows)]
        exact, _ = exact_search(_unit_rows(embeddings), queries, k)
        approx, _ = self.search_indices(queries, k)
        recall = recall_at_k(approx, exact, k)
        self.meta.update({f"recall_at_{k}": round(recall, 4), "recall_queries": len(queries)})
        return recall

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str) -> str:
        """Writes the index, ids, labels and a JSON description to ``directory`` (local
        filesystem) atomically: a sibling temporary folder renamed into place."""
        faiss = _faiss()
        directory = os.path.abspath(directory)
        parent = os.path.dirname(directory)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".tmp-ann-", dir=parent)
        try:
            faiss.write_index(self.index, os.path.join(staging, _FILES["index"]))
            np.save(os.path.join(staging, _FILES["ids"]), self.ids, allow_pickle=False)
            np.save(os.path.join(staging, _FILES["labels"]), self.labels, allow_pickle=False)
            with open(os.path.join(staging, _FILES["meta"]), "w") as f:
                json.dump({**self.meta, "nprobe": self.nprobe}, f, indent=1)
            if os.path.exists(directory):
                shutil.rmtree(directory)
            os.rename(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: str, mmap: bool = False) -> "ApproximateIndex":
        """The index ``save`` wrote. ``mmap`` maps the inverted lists from disk instead of
        reading them into memory (slower first queries, near-zero start-up)."""
        faiss = _faiss()
        with open(os.path.join(directory, _FILES["meta"])) as f:
            meta = json.load(f)
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(os.path.join(directory, _FILES["index"]), flags)
        ids = np.load(os.path.join(directory, _FILES["ids"]), allow_pickle=False)
        labels = np.load(os.path.join(directory, _FILES["labels"]), allow_pickle=False)
        return cls(index, ids, labels, meta)


def read_meta(search_export_dir: str, modality: str) -> dict | None:
    """The JSON description (kind, nlist, nprobe, count, recall_at_10, ...) of the index beside
    a search servable version, without loading it; None if that gallery had none."""
    path = os.path.join(index_dir(search_export_dir, modality), _FILES["meta"])
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_for_servable(search_export_dir: str, modality: str) -> ApproximateIndex | None:
    """The index written beside a search servable version, or None if that gallery had none."""
    directory = index_dir(search_export_dir, modality)
    if not os.path.exists(os.path.join(directory, _FILES["meta"])):
        return None
    return ApproximateIndex.load(directory)


# --------------------------------------------------------------------------- reference
def exact_search(embeddings: np.ndarray, queries: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine, as the in-graph search ranks: row indices int64 [Q, k'] and
    scores float32 [Q, k'] (k' = min(k, N)), descending, equal scores in gallery order.
    ``embeddings`` must be L2-normalised already (the encoders' output and ``GalleryPart``s
    are; normalising a large gallery per call would cost more than the search); queries are
    normalised here. Queries go in chunks so a [Q, N] score matrix is never held whole."""
    gallery = np.ascontiguousarray(embeddings, np.float32)
    queries = l2_normalise(np.atleast_2d(np.asarray(queries, np.float32))).astype(np.float32)
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    num_items = len(gallery)
    k = min(int(k), num_items)
    rows = max(1, _EXACT_CHUNK_ELEMENTS // max(num_items, 1))
    out_index = np.empty((len(queries), k), np.int64)
    out_scores = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), rows):
        scores = queries[start:start + rows] @ gallery.T
        if k < num_items:
            candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            threshold = np.take_along_axis(scores, candidates, axis=1).min(axis=1)
            # a tie at the k-th score: take the tied items in gallery order, as top_k does
            tied = np.flatnonzero((scores >= threshold[:, None]).sum(axis=1) > k)
            for row in tied:
                above = np.flatnonzero(scores[row] > threshold[row])
                at = np.flatnonzero(scores[row] == threshold[row])[:k - len(above)]
                candidates[row] = np.concatenate([above, at])
        else:
            candidates = np.broadcast_to(np.arange(num_items), scores.shape)
        values = np.take_along_axis(scores, candidates, axis=1)
        order = np.lexsort((candidates, -values), axis=-1)
        out_index[start:start + rows] = np.take_along_axis(candidates, order, axis=1)
        out_scores[start:start + rows] = np.take_along_axis(values, order, axis=1)
    return out_index, out_scores


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |approximate top-k intersected with exact top-k| / k (k capped at the
    number of columns); ids may be row indices or string ids."""
    approx_ids, exact_ids = np.atleast_2d(approx_ids), np.atleast_2d(exact_ids)
    if approx_ids.shape[0] != exact_ids.shape[0]:
        raise ValueError("approx_ids and exact_ids need one row per query each")
    k = min(int(k), exact_ids.shape[1])
    if k < 1 or len(exact_ids) == 0:
        raise ValueError("need at least one query and k >= 1")
    hits = [len(np.intersect1d(a[:k], e[:k])) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / k)
