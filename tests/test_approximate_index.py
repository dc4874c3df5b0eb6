"""serving/approximate_index.py with real faiss: recall against exact search, the output contract
of the exact search signatures, save/load, and edge cases."""
from __future__ import annotations

import os

import numpy as np
import pytest

from models.metrics import l2_normalise
from serving.approximate_index import (ANN_DIR, ApproximateIndex, default_nlist, exact_search,
                                       index_dir, load_for_servable, recall_at_k)

N, DIM, K = 20_000, 64, 10


def clustered(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised [num, DIM]: 20 class centres, an 8-d latent spread each, a little noise."""
    structure = np.random.default_rng(7)
    centres = l2_normalise(structure.standard_normal((20, DIM)).astype(np.float32))
    latent_map = structure.standard_normal((8, DIM)).astype(np.float32) / np.sqrt(8 * DIM)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 20, num)
    x = (centres[labels] + rng.standard_normal((num, 8)).astype(np.float32) @ latent_map
         + 0.1 / np.sqrt(DIM) * rng.standard_normal((num, DIM)).astype(np.float32))
    return l2_normalise(x).astype(np.float32), labels.astype(np.int64)


@pytest.fixture(scope="module")
def gallery():
    embeddings, labels = clustered(N, seed=0)
    ids = np.array([f"item-{i}" for i in range(N)])
    return embeddings, ids, labels


@pytest.fixture(scope="module")
def queries():
    return clustered(200, seed=1)[0]


@pytest.fixture(scope="module")
def index(gallery):
    return ApproximateIndex.build(*gallery, nprobe=8)


def test_recall_at_10_against_exact(index, gallery, queries):
    exact, _ = exact_search(gallery[0], queries, K)
    approx, _ = index.search_indices(queries, K)
    assert index.nlist == default_nlist(N) == 566
    assert recall_at_k(approx, exact, K) >= 0.9
    everything, _ = index.search_indices(queries, K, nprobe=index.nlist)
    assert recall_at_k(everything, exact, K) == pytest.approx(1.0)


def test_output_contract(index, gallery, queries):
    embeddings, ids, labels = gallery
    found_ids, found_labels, scores = index.search(queries * 3.0, K)  # any length: normalised
    assert found_ids.shape == found_labels.shape == scores.shape == (len(queries), K)
    assert found_ids.dtype.kind == "U" and found_labels.dtype == np.int64
    assert scores.dtype == np.float32
    rows = np.array([[int(i.split("-")[1]) for i in row] for row in found_ids])
    np.testing.assert_array_equal(ids[rows], found_ids)
    np.testing.assert_array_equal(labels[rows], found_labels)
    np.testing.assert_allclose(np.einsum("qd,qkd->qk", queries, embeddings[rows]), scores,
                               atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert all(len(set(row)) == K for row in found_ids)


def test_exact_search_matches_sorting_with_gallery_order_ties():
    gallery = l2_normalise(np.array([[1, 0], [0, 1], [1, 0], [1, 1], [1, 0]], np.float32))
    index, scores = exact_search(gallery, np.array([[2.0, 0.0]]), 4)
    np.testing.assert_array_equal(index, [[0, 2, 4, 3]])  # ties at 1.0 in gallery order
    np.testing.assert_allclose(scores, [[1, 1, 1, np.sqrt(0.5)]], rtol=1e-6)
    index, _ = exact_search(gallery, np.array([[2.0, 0.0]]), 2)  # tie across the k-th place
    np.testing.assert_array_equal(index, [[0, 2]])
    rng = np.random.default_rng(3)
    g, q = l2_normalise(rng.normal(size=(500, 8))), l2_normalise(rng.normal(size=(7, 8)))
    index, scores = exact_search(g, q, 10)
    np.testing.assert_array_equal(index, np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :10])


def test_save_load_round_trip(tmp_path, index, queries):
    directory = index.save(str(tmp_path / "ann"))
    assert sorted(os.listdir(directory)) == ["ids.npy", "index.faiss", "index.json", "labels.npy"]
    loaded = ApproximateIndex.load(directory)
    assert (len(loaded), loaded.nlist, loaded.nprobe, loaded.meta) == (
        len(index), index.nlist, index.nprobe, index.meta)
    for a, b in zip(index.search(queries, K), loaded.search(queries, K)):
        np.testing.assert_array_equal(a, b)
    mapped = ApproximateIndex.load(directory, mmap=True)
    np.testing.assert_array_equal(mapped.search(queries, K)[0], index.search(queries, K)[0])
    index.save(directory)  # overwrites in place
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []


def test_load_for_servable(tmp_path, index):
    export_dir = str(tmp_path / "cmgan-search" / "3")
    assert load_for_servable(export_dir, "image") is None
    index.save(index_dir(export_dir, "image"))
    assert index_dir(export_dir, "image") == os.path.join(export_dir, ANN_DIR, "image")
    assert len(load_for_servable(export_dir, "image")) == N
    assert load_for_servable(export_dir, "text") is None


def test_k_larger_than_gallery_and_short_lists():
    embeddings, labels = clustered(300, seed=5)
    ids = np.array([f"x{i}" for i in range(300)])
    small = ApproximateIndex.build(embeddings, ids, labels, nlist=30, nprobe=1)
    found_ids, found_labels, scores = small.search(embeddings[:3], 1000)
    assert found_ids.shape == (3, 300)  # the whole gallery, though one list holds far fewer
    assert all(len(set(row)) == 300 for row in found_ids)
    assert np.all(np.diff(scores, axis=1) <= 0)
    exact, exact_scores = exact_search(embeddings, embeddings[:3], 1000)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    found_ids, _, _ = small.search(embeddings[:3], 50)  # more than nprobe=1's list holds
    assert found_ids.shape == (3, 50) and all(len(set(row)) == 50 for row in found_ids)
    assert recall_at_k(found_ids, ids[exact[:, :50]], 50) == pytest.approx(1.0)


def test_record_recall_samples_queries_and_keeps_the_figure(tmp_path, index, gallery, queries):
    recall = index.record_recall(gallery[0], queries, max_queries=50)
    rows = np.sort(np.random.default_rng(0).choice(len(queries), 50, replace=False))
    exact, _ = exact_search(gallery[0], queries[rows], K)
    assert recall == recall_at_k(index.search_indices(queries[rows], K)[0], exact, K)
    assert (index.meta["recall_at_10"], index.meta["recall_queries"]) == (round(recall, 4), 50)
    assert ApproximateIndex.load(index.save(str(tmp_path / "ann"))).meta["recall_at_10"] == (
        round(recall, 4))
    with pytest.raises(ValueError, match="at least one query"):
        index.record_recall(gallery[0], np.zeros((0, DIM)))


def test_bad_input(index):
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(np.ones((1, DIM)), 0)
    with pytest.raises(ValueError, match="64-d embeddings"):
        index.search(np.ones((1, DIM + 1)), 5)
    with pytest.raises(ValueError, match="non-empty"):
        ApproximateIndex.build(np.zeros((0, DIM)), [], [])
    with pytest.raises(ValueError, match="encoding"):
        ApproximateIndex.build(np.ones((10, DIM)), np.arange(10), np.arange(10), encoding="pq")


def test_sq8_encoding(gallery, queries):
    sq8 = ApproximateIndex.build(*gallery, encoding="sq8", nprobe=8)
    assert sq8.meta["kind"] == "IVF566,SQ8"
    exact, _ = exact_search(gallery[0], queries, K)
    assert recall_at_k(sq8.search_indices(queries, K)[0], exact, K) >= 0.9


def test_search_export_writes_the_index_beside_a_large_gallery(tmp_path):
    """export_search_model: a gallery of at least ann_min_items gets an index in the version
    folder, and searching it over every list gives what the in-graph search_embedding gives."""
    import tensorflow as tf

    from serving.gallery import GalleryPart
    from serving.search_model import export_search_model

    class Encoder(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.random.default_rng(0).normal(size=(4, DIM)), dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="image")])
        def encode_image(self, image):
            return {"embedding": tf.math.l2_normalize(image @ self.w, axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="text")])
        def encode_text(self, text):
            return {"embedding": tf.math.l2_normalize(text @ self.w, axis=1)}

    encoder_dir = str(tmp_path / "encoder")
    module = Encoder()
    tf.saved_model.save(module, encoder_dir, signatures={
        "encode_image": module.encode_image, "encode_text": module.encode_text})
    embeddings, labels = clustered(400, seed=9)
    part = lambda n: GalleryPart(embeddings[:n], np.array([f"g{i}" for i in range(n)]),
                                 labels[:n])
    export_dir = str(tmp_path / "enc-search" / "1")
    export_search_model(encoder_dir, {"image": part(400), "text": part(20)}, export_dir,
                        ann_min_items=100)
    assert load_for_servable(export_dir, "text") is None
    ann = load_for_servable(export_dir, "image")
    # recall@10 vs exact, recorded at export for queries of the other modality (all 20)
    assert ann.meta["recall_queries"] == 20 and 0.0 < ann.meta["recall_at_10"] <= 1.0
    queries = clustered(5, seed=10)[0]
    served = tf.saved_model.load(export_dir).signatures["search_embedding"](
        embedding=tf.constant(queries), target=tf.constant("image"), k=tf.constant(K))
    ids, found_labels, scores = ann.search(queries, K, nprobe=ann.nlist)
    np.testing.assert_array_equal(ids, served["ids"].numpy().astype(str))
    np.testing.assert_array_equal(found_labels, served["labels"].numpy())
    np.testing.assert_allclose(scores, served["scores"].numpy(), atol=1e-5)
