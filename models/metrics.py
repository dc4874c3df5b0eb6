"""Exact cross-modal retrieval metrics (numpy only, so evaluation never pulls in TensorFlow).

Conventions (CMGAN.md, "Evaluation"): cosine similarity, relevance = same class label, MAP over
the whole ranked list (MAP@all) plus MAP@k. Rankings sort by descending score and break ties by
ascending gallery index, so every figure is reproducible bit for bit. Queries are processed in
row chunks and scores are computed chunk by chunk, so a 10k x 100k evaluation never holds more
than a few hundred MB.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

# Elements of one [chunk, G] working array; several int64/float64 arrays of this size coexist.
_CHUNK_ELEMENTS = 1 << 23
_MAX_CHUNK_ROWS = 1024
TASKS = ("i2t", "t2i", "all_modal")
# Model selection, by the Trainer (best epoch) and the RetrievalEvaluator (blessing): the
# validation split's mean of image->text and text->image MAP@all (never test).
SELECTION_SPLIT, SELECTION_METRIC = "val", "mean"

ScoreRows = Callable[[slice], np.ndarray]


# --------------------------------------------------------------------------- similarity
def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Unit-length rows; zero rows stay zero so they score 0 against everything (no NaN)."""
    x = np.asarray(x)
    x = x.astype(np.result_type(x.dtype, np.float32), copy=False)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def cosine_similarity(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """[Q, d] x [G, d] -> [Q, G] cosine similarities (0 wherever either row is all zeros)."""
    return l2_normalise(queries) @ l2_normalise(gallery).T


# --------------------------------------------------------------------------- ranking core
def _query_chunks(num_queries: int, gallery_size: int) -> Iterator[slice]:
    """Row slices small enough that the per-chunk [rows, G] arrays stay bounded."""
    rows = max(1, min(_MAX_CHUNK_ROWS, _CHUNK_ELEMENTS // max(gallery_size, 1)))
    for start in range(0, num_queries, rows):
        yield slice(start, min(start + rows, num_queries))


def _check_exclude(exclude: np.ndarray | None, num_queries: int, gallery_size: int) -> np.ndarray:
    """Normalise `exclude` to an int array of length Q, -1 meaning "exclude nothing"."""
    if exclude is None:
        return np.full(num_queries, -1, dtype=np.int64)
    exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
    if exclude.shape[0] != num_queries:
        raise ValueError(f"exclude has {exclude.shape[0]} entries for {num_queries} queries")
    if np.any(exclude >= gallery_size) or np.any(exclude < -1):
        raise ValueError("exclude entries must be -1 or a gallery index")
    return exclude


def _ranked_relevance(scores: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                      exclude: np.ndarray) -> np.ndarray:
    """[q, G] bool: relevance of each query's ranking, excluded item removed, padded with False.

    Column j is rank j+1 of the ranking that no longer contains the excluded item; rows that
    exclude an item are one shorter, and their last column is the False padding.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    relevant = gallery_labels[order] == query_labels[:, None]
    has_exclusion = exclude >= 0
    if not has_exclusion.any():
        return relevant
    # Position of the excluded item in each ranking (G where nothing is excluded).
    excluded_at = np.where(has_exclusion, np.argmax(order == exclude[:, None], axis=1),
                           scores.shape[1])
    shifted = np.zeros_like(relevant)
    shifted[:, :-1] = relevant[:, 1:]
    positions = np.arange(scores.shape[1])
    return np.where(positions[None, :] < excluded_at[:, None], relevant, shifted)


def _relevance_chunks(score_rows: ScoreRows, num_queries: int, gallery_size: int,
                      query_labels: np.ndarray, gallery_labels: np.ndarray,
                      exclude: np.ndarray | None) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (query rows, ranked relevance) chunk by chunk; `score_rows(rows)` gives [q, G]."""
    query_labels = np.asarray(query_labels).reshape(-1)
    gallery_labels = np.asarray(gallery_labels).reshape(-1)
    if query_labels.shape[0] != num_queries or gallery_labels.shape[0] != gallery_size:
        raise ValueError("label arrays must match the score matrix shape")
    exclude = _check_exclude(exclude, num_queries, gallery_size)
    for rows in _query_chunks(num_queries, gallery_size):
        scores = np.asarray(score_rows(rows))
        yield rows, _ranked_relevance(scores, query_labels[rows], gallery_labels, exclude[rows])


def _ap_from_relevance(relevant: np.ndarray, k_values: Sequence[int | None]) -> np.ndarray:
    """[len(k_values), q] AP@k: mean precision over the relevant items retrieved in the top k.

    Normalising by the relevant items *retrieved* (not all relevant items) is the cross-modal
    literature's MAP@k (e.g. DSCMR's fx_calc_map_label); for k=None it is plain AP.
    """
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision_at_hits = np.where(relevant, hits / ranks, 0.0)
    out = np.empty((len(k_values), relevant.shape[0]))
    for i, k in enumerate(k_values):
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1 or None, got {k}")
        top = slice(None) if k is None else slice(0, k)
        retrieved = relevant[:, top].sum(axis=1)
        out[i] = np.divide(precision_at_hits[:, top].sum(axis=1), retrieved,
                           out=np.zeros(relevant.shape[0]), where=retrieved > 0)
    return out


def _average_precisions(score_rows: ScoreRows, num_queries: int, gallery_size: int,
                        query_labels, gallery_labels, k_values: Sequence[int | None],
                        exclude=None) -> np.ndarray:
    """[len(k_values), Q] AP for several cut-offs from a single sort of each query's scores."""
    out = np.empty((len(k_values), num_queries))
    for rows, relevant in _relevance_chunks(score_rows, num_queries, gallery_size,
                                            query_labels, gallery_labels, exclude):
        out[:, rows] = _ap_from_relevance(relevant, k_values)
    return out


def _scores_of(scores: np.ndarray) -> tuple[ScoreRows, int, int]:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [Q, G], got shape {scores.shape}")
    return (lambda rows: scores[rows]), scores.shape[0], scores.shape[1]


def _cosine_of(queries: np.ndarray, gallery: np.ndarray) -> tuple[ScoreRows, int, int]:
    """Cosine scores computed per query chunk, so the full [Q, G] matrix never exists."""
    queries, gallery = l2_normalise(queries), l2_normalise(gallery)
    return (lambda rows: queries[rows] @ gallery.T), queries.shape[0], gallery.shape[0]


# --------------------------------------------------------------------------- public metrics
def average_precision(scores: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                      k: int | None = None, exclude: np.ndarray | None = None) -> np.ndarray:
    """[Q] AP (k=None) or AP@k per query; `exclude[q]` drops one gallery index (-1 = none)."""
    score_rows, num_queries, gallery_size = _scores_of(scores)
    return _average_precisions(score_rows, num_queries, gallery_size, query_labels,
                               gallery_labels, [k], exclude)[0]


def mean_average_precision(scores: np.ndarray, query_labels: np.ndarray,
                           gallery_labels: np.ndarray, k: int | None = None,
                           exclude: np.ndarray | None = None) -> float:
    """MAP (or MAP@k) over all queries; queries without relevant items count as AP 0."""
    return float(np.mean(average_precision(scores, query_labels, gallery_labels, k, exclude)))


def curve_ranks(list_length: int, num_points: int = 100) -> np.ndarray:
    """About `num_points` distinct ranks evenly spread over 1..list_length, both ends included."""
    return np.unique(np.round(np.linspace(1, list_length, max(num_points, 2))).astype(np.int64))


def _precision_recall(score_rows: ScoreRows, num_queries: int, gallery_size: int, query_labels,
                      gallery_labels, exclude=None, num_points: int = 100) -> dict:
    exclude = _check_exclude(exclude, num_queries, gallery_size)
    list_length = gallery_size - int(np.any(exclude >= 0))
    if list_length < 1:
        raise ValueError("nothing left to rank")
    ranks = curve_ranks(list_length, num_points)
    precision_sum = np.zeros(ranks.shape[0])
    recall_sum = np.zeros(ranks.shape[0])
    counted = 0
    for _, relevant in _relevance_chunks(score_rows, num_queries, gallery_size, query_labels,
                                         gallery_labels, exclude):
        num_relevant = relevant.sum(axis=1)
        hits = np.cumsum(relevant, axis=1)[:, ranks - 1][num_relevant > 0]
        precision_sum += (hits / ranks).sum(axis=0)
        recall_sum += (hits / num_relevant[num_relevant > 0, None]).sum(axis=0)
        counted += int(np.count_nonzero(num_relevant))
    counted = max(counted, 1)
    return {"recall": (recall_sum / counted).tolist(),
            "precision": (precision_sum / counted).tolist(),
            "ranks": ranks.tolist()}


def precision_recall_curve(scores: np.ndarray, query_labels: np.ndarray,
                           gallery_labels: np.ndarray, exclude: np.ndarray | None = None,
                           num_points: int = 100) -> dict:
    """Mean precision@r and recall@r at ~num_points ranks r (1 and the list length included).

    Averaged over queries that have at least one relevant item (recall is undefined otherwise).
    With `exclude`, the lists are one shorter, so the last rank is G-1.
    """
    score_rows, num_queries, gallery_size = _scores_of(scores)
    return _precision_recall(score_rows, num_queries, gallery_size, query_labels,
                             gallery_labels, exclude, num_points)


# --------------------------------------------------------------------------- retrieval tasks
def _task_inputs(task: str, image_emb: np.ndarray, text_emb: np.ndarray, labels: np.ndarray):
    """(queries, gallery, query labels, gallery labels, exclude) of one retrieval task."""
    labels = np.asarray(labels).reshape(-1)
    if task == "i2t":
        return image_emb, text_emb, labels, labels, None
    if task == "t2i":
        return text_emb, image_emb, labels, labels, None
    if task == "all_modal":
        # Both modalities query the union of both; the query itself is not a retrieval result.
        both = np.concatenate([np.asarray(image_emb), np.asarray(text_emb)], axis=0)
        both_labels = np.concatenate([labels, labels])
        return both, both, both_labels, both_labels, np.arange(both.shape[0])
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def _task_maps(task: str, image_emb, text_emb, labels,
               k_values: Sequence[int | None]) -> list[float]:
    queries, gallery, query_labels, gallery_labels, exclude = _task_inputs(
        task, image_emb, text_emb, labels)
    aps = _average_precisions(*_cosine_of(queries, gallery), query_labels, gallery_labels,
                              k_values, exclude)
    return [float(v) for v in aps.mean(axis=1)]


def cross_modal_map(image_emb: np.ndarray, text_emb: np.ndarray, labels: np.ndarray,
                    k: int | None = None) -> dict[str, float]:
    """i2t, t2i and their mean MAP (or MAP@k): the cheap figure used for model selection."""
    i2t = _task_maps("i2t", image_emb, text_emb, labels, [k])[0]
    t2i = _task_maps("t2i", image_emb, text_emb, labels, [k])[0]
    return {"i2t": i2t, "t2i": t2i, "mean": (i2t + t2i) / 2}


def retrieval_report(image_emb: np.ndarray, text_emb: np.ndarray, labels: np.ndarray,
                     k_values: Sequence[int] = (50,)) -> dict[str, float]:
    """MAP@all and MAP@k of i2t, t2i, their mean and all-modal retrieval, as Python floats.

    Keys: i2t, t2i, mean, all_modal, and i2t@k, t2i@k, mean@k, all_modal@k for each k.
    """
    cutoffs = [None, *k_values]
    per_task = {task: _task_maps(task, image_emb, text_emb, labels, cutoffs) for task in TASKS}
    report = {}
    for i, k in enumerate(cutoffs):
        suffix = "" if k is None else f"@{k}"
        i2t, t2i = per_task["i2t"][i], per_task["t2i"][i]
        report[f"i2t{suffix}"] = i2t
        report[f"t2i{suffix}"] = t2i
        report[f"mean{suffix}"] = (i2t + t2i) / 2
        report[f"all_modal{suffix}"] = per_task["all_modal"][i]
    return report


def pr_curves(image_emb: np.ndarray, text_emb: np.ndarray, labels: np.ndarray,
              num_points: int = 100) -> dict[str, dict]:
    """Precision-recall curve (see precision_recall_curve) for i2t, t2i and all_modal."""
    curves = {}
    for task in TASKS:
        queries, gallery, query_labels, gallery_labels, exclude = _task_inputs(
            task, image_emb, text_emb, labels)
        curves[task] = _precision_recall(*_cosine_of(queries, gallery), query_labels,
                                         gallery_labels, exclude, num_points)
    return curves



MAP_COLUMNS = ("i2t", "t2i", "mean", "all_modal")
METHOD_LABELS = {"cmgan": "CM-GAN (candidate)", "baseline_model": "last blessed model",
                 "cca": "CCA", "classifier": "classifier"}
COMPARED_METHODS = ("cmgan", "cca", "classifier")


def metrics_document(dataset: str, methods: dict[str, dict[str, dict[str, float]]],
                     split: str = "test", **extra) -> dict:
    """The metrics JSON of `cmgan train` and `cmgan run`: MAP@all of CM-GAN and the
    baselines on one split. `methods` maps method -> split -> retrieval_report."""
    return {"dataset": dataset, "split": split,
            "methods": {name: {k: float(methods[name][split][k]) for k in MAP_COLUMNS}
                        for name in COMPARED_METHODS if name in methods}, **extra}


def format_map_table(methods: dict[str, dict[str, dict[str, float]]]) -> str:
    """MAP@all per method (rows: method x split); known methods first, val before test."""
    order = [m for m in METHOD_LABELS if m in methods] + sorted(set(methods) - set(METHOD_LABELS))
    lines = [f"{'method':<20} {'split':<5} " + " ".join(f"{m:>9}" for m in MAP_COLUMNS)]
    for method in order:
        for split in sorted(methods[method], key=lambda s: (s != "val", s != "test", s)):
            values = " ".join(f"{methods[method][split][m]:>9.4f}" for m in MAP_COLUMNS)
            lines.append(f"{METHOD_LABELS.get(method, method):<20} {split:<5} {values}")
    return "\n".join(lines)
