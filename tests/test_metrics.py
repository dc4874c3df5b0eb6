"""models.metrics against a plain per-query loop, hand-computed cases and edge cases."""
import subprocess
import sys

import numpy as np
import pytest

from models import metrics


# --------------------------------------------------------------------------- loop reference
def reference_ranking(score_row, excluded=-1):
    """Descending score, ties by ascending gallery index, the excluded index removed."""
    ranking = sorted(range(len(score_row)), key=lambda g: (-score_row[g], g))
    return [g for g in ranking if g != excluded]


def reference_ap(score_row, query_label, gallery_labels, k=None, excluded=-1):
    ranking = reference_ranking(score_row, excluded)
    if k is not None:
        ranking = ranking[:k]
    hits, precision_sum = 0, 0.0
    for rank, g in enumerate(ranking, start=1):
        if gallery_labels[g] == query_label:
            hits += 1
            precision_sum += hits / rank
    return precision_sum / hits if hits else 0.0


def reference_aps(scores, query_labels, gallery_labels, k=None, exclude=None):
    exclude = [-1] * len(query_labels) if exclude is None else exclude
    return np.array([reference_ap(scores[q], query_labels[q], gallery_labels, k, exclude[q])
                     for q in range(len(query_labels))])


def tied_problem(seed, num_queries=40, gallery_size=60, num_classes=3, distinct_scores=4):
    """Integer scores with few distinct values, so ties are everywhere."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, distinct_scores, size=(num_queries, gallery_size)).astype(float)
    return (scores, rng.integers(0, num_classes, num_queries),
            rng.integers(0, num_classes, gallery_size))


# --------------------------------------------------------------------------- AP vs loop
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [None, 1, 5, 50, 1000])
def test_average_precision_matches_loop_with_ties(seed, k):
    scores, query_labels, gallery_labels = tied_problem(seed)
    got = metrics.average_precision(scores, query_labels, gallery_labels, k=k)
    np.testing.assert_allclose(got, reference_aps(scores, query_labels, gallery_labels, k),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [None, 1, 5, 50, 1000])
def test_average_precision_with_exclude_matches_loop(seed, k):
    scores, query_labels, gallery_labels = tied_problem(seed)
    rng = np.random.default_rng(100 + seed)
    exclude = rng.integers(-1, scores.shape[1], scores.shape[0])  # includes some -1 (none)
    exclude[:3] = [-1, 0, scores.shape[1] - 1]
    got = metrics.average_precision(scores, query_labels, gallery_labels, k=k, exclude=exclude)
    want = reference_aps(scores, query_labels, gallery_labels, k, exclude)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_chunking_does_not_change_results(monkeypatch):
    scores, query_labels, gallery_labels = tied_problem(3, num_queries=25)
    whole = metrics.average_precision(scores, query_labels, gallery_labels, k=7)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 3 * scores.shape[1])  # 3 rows per chunk
    chunked = metrics.average_precision(scores, query_labels, gallery_labels, k=7)
    np.testing.assert_array_equal(whole, chunked)


def test_mean_average_precision_is_mean_of_aps():
    scores, query_labels, gallery_labels = tied_problem(4)
    assert metrics.mean_average_precision(scores, query_labels, gallery_labels, k=5) == \
        pytest.approx(reference_aps(scores, query_labels, gallery_labels, 5).mean())


# --------------------------------------------------------------------------- hand-computed
def test_hand_computed_ap_rel_non_rel():
    scores = np.array([[3.0, 2.0, 1.0]])
    ap = metrics.average_precision(scores, np.array([0]), np.array([0, 1, 0]))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)


def test_hand_computed_ap_at_k_divides_by_retrieved_relevant():
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    labels = np.array([1, 0, 1, 1])  # ranking: non, rel, non, rel
    ap2 = metrics.average_precision(scores, np.array([0]), labels, k=2)
    assert ap2[0] == pytest.approx(1 / 2)  # one relevant in the top 2, precision 1/2 there
    assert metrics.average_precision(scores, np.array([0]), labels, k=1)[0] == 0.0
    assert metrics.average_precision(scores, np.array([0]), labels)[0] == pytest.approx(
        (1 / 2 + 2 / 4) / 2)


def test_ties_break_by_ascending_gallery_index():
    scores = np.array([[1.0, 1.0, 1.0]])
    # Ranking is 0, 1, 2 -> [non, rel, rel]
    ap = metrics.average_precision(scores, np.array([0]), np.array([1, 0, 0]))
    assert ap[0] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_exclude_removes_item_and_shifts_ranks():
    scores = np.array([[3.0, 2.0, 1.0]])
    # Without exclusion [rel, non, rel]; excluding index 1 leaves [rel, rel].
    ap = metrics.average_precision(scores, np.array([0]), np.array([0, 1, 0]),
                                   exclude=np.array([1]))
    assert ap[0] == pytest.approx(1.0)


def test_no_relevant_item_gives_zero_ap():
    ap = metrics.average_precision(np.ones((1, 3)), np.array([5]), np.array([0, 1, 2]))
    assert ap[0] == 0.0


def test_invalid_k_and_exclude_rejected():
    with pytest.raises(ValueError):
        metrics.average_precision(np.ones((1, 3)), np.array([0]), np.array([0, 1, 2]), k=0)
    with pytest.raises(ValueError):
        metrics.average_precision(np.ones((1, 3)), np.array([0]), np.array([0, 1, 2]),
                                  exclude=np.array([3]))


# --------------------------------------------------------------------------- cosine
def test_cosine_similarity_values_and_zero_vectors():
    queries = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    gallery = np.array([[2.0, 0.0], [0.0, 0.0], [-4.0, 3.0]])
    sim = metrics.cosine_similarity(queries, gallery)
    assert not np.isnan(sim).any()
    np.testing.assert_allclose(sim, [[1.0, 0.0, -0.8], [0.0, 0.0, 0.0], [0.6, 0.0, 0.0]],
                               atol=1e-12)


def test_cosine_similarity_is_scale_invariant():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    np.testing.assert_allclose(metrics.cosine_similarity(q, g),
                               metrics.cosine_similarity(3 * q, 0.5 * g), atol=1e-12)


# --------------------------------------------------------------------------- report
def noisy_embeddings(seed, n=30, dim=6, num_classes=3, noise=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    centres = rng.normal(size=(num_classes, dim))
    image = centres[labels] + noise * rng.normal(size=(n, dim))
    text = centres[labels] + noise * rng.normal(size=(n, dim))
    return image, text, labels


def test_retrieval_report_matches_loop_and_all_modal_excludes_query():
    image, text, labels = noisy_embeddings(0)
    report = metrics.retrieval_report(image, text, labels, k_values=(5, 50))
    n = labels.shape[0]
    both = np.concatenate([image, text])
    both_labels = np.concatenate([labels, labels])
    all_scores = metrics.cosine_similarity(both, both)
    i2t_scores = metrics.cosine_similarity(image, text)
    t2i_scores = metrics.cosine_similarity(text, image)
    for k in (None, 5, 50):
        suffix = "" if k is None else f"@{k}"
        i2t = reference_aps(i2t_scores, labels, labels, k).mean()
        t2i = reference_aps(t2i_scores, labels, labels, k).mean()
        all_modal = reference_aps(all_scores, both_labels, both_labels, k,
                                  exclude=list(range(2 * n))).mean()
        assert report[f"i2t{suffix}"] == pytest.approx(i2t, abs=1e-12)
        assert report[f"t2i{suffix}"] == pytest.approx(t2i, abs=1e-12)
        assert report[f"mean{suffix}"] == pytest.approx((i2t + t2i) / 2, abs=1e-12)
        assert report[f"all_modal{suffix}"] == pytest.approx(all_modal, abs=1e-12)
    # Keeping the query in its own ranking would put it at rank 1 and inflate the figure.
    with_self = reference_aps(all_scores, both_labels, both_labels).mean()
    assert with_self > report["all_modal"]
    assert all(type(v) is float for v in report.values())
    assert set(report) == {f"{t}{s}" for t in ("i2t", "t2i", "mean", "all_modal")
                           for s in ("", "@5", "@50")}


def test_perfect_embeddings_give_map_one():
    labels = np.repeat(np.arange(4), 5)
    one_hot = np.eye(4)[labels]
    report = metrics.retrieval_report(one_hot, 2 * one_hot, labels)
    assert all(v == pytest.approx(1.0) for v in report.values())


# --------------------------------------------------------------------------- PR curve
def test_precision_recall_curve_shape_and_monotone_recall():
    scores, query_labels, gallery_labels = tied_problem(5, gallery_size=300)
    curve = metrics.precision_recall_curve(scores, query_labels, gallery_labels, num_points=50)
    ranks, recall = np.array(curve["ranks"]), np.array(curve["recall"])
    assert ranks[0] == 1 and ranks[-1] == scores.shape[1]
    assert 40 <= len(ranks) <= 50 and len(curve["precision"]) == len(ranks)
    assert np.all(np.diff(recall) >= 0) and recall[-1] == pytest.approx(1.0)
    # At the last rank everything is retrieved: precision = mean relevant fraction.
    has_relevant = [(gallery_labels == c).any() for c in query_labels]
    fraction = np.mean([(gallery_labels == c).mean() for c in query_labels[has_relevant]])
    assert curve["precision"][-1] == pytest.approx(fraction)


def test_precision_recall_curve_matches_loop_at_each_rank():
    scores, query_labels, gallery_labels = tied_problem(6)
    exclude = np.arange(scores.shape[0])
    curve = metrics.precision_recall_curve(scores, query_labels, gallery_labels,
                                           exclude=exclude, num_points=10)
    assert curve["ranks"][-1] == scores.shape[1] - 1
    for i, r in enumerate(curve["ranks"]):
        precisions, recalls = [], []
        for q in range(scores.shape[0]):
            ranking = reference_ranking(scores[q], exclude[q])
            relevant = [gallery_labels[g] == query_labels[q] for g in ranking]
            if sum(relevant):
                precisions.append(sum(relevant[:r]) / r)
                recalls.append(sum(relevant[:r]) / sum(relevant))
        assert curve["precision"][i] == pytest.approx(np.mean(precisions), abs=1e-12)
        assert curve["recall"][i] == pytest.approx(np.mean(recalls), abs=1e-12)


def test_pr_curves_cover_the_three_tasks():
    image, text, labels = noisy_embeddings(1)
    curves = metrics.pr_curves(image, text, labels, num_points=20)
    assert set(curves) == {"i2t", "t2i", "all_modal"}
    assert curves["i2t"]["ranks"][-1] == labels.shape[0]
    assert curves["all_modal"]["ranks"][-1] == 2 * labels.shape[0] - 1
    for curve in curves.values():
        assert curve["recall"][-1] == pytest.approx(1.0)


def test_metrics_module_does_not_import_tensorflow():
    code = "import sys, models.metrics; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
