"""Large galleries through the server: a search servable whose image gallery reached
``ann_min_items`` carries a faiss index, and a real ``cmgan serve`` process on 127.0.0.1 answers
that gallery's ``search_*`` signatures from it (same outputs, dtypes and shapes as the exact
in-graph search) while a gallery below the threshold is searched exactly; GallerySearch reports
the index's recall@10 against exact search; the pipeline setting reaches the component.
"""
from __future__ import annotations

import json
import os
import shutil

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from components.gallery_search.executor import REPORT_FILE, Executor
from models.config_errors import ConfigError
from models.metrics import l2_normalise
from pipeline import node_ids
from pipeline.config import GalleryConfig, PipelineConfig
from serving.approximate_index import (ApproximateIndex, exact_search, index_dir,
                                       load_for_servable, read_meta, recall_at_k)
from serving.client import ServingClient
from serving.gallery import GalleryPart
from serving.search_model import export_search_model

from conftest import TINY_DATASET, serving_process

IMAGE_DIM, TEXT_DIM, DIM, K = TINY_DATASET["image_dim"], TINY_DATASET["text_dim"], 32, 10
MODEL = "toy"
LARGE, SMALL, THRESHOLD, NPROBE = 600, 40, 100, 2  # image gallery indexed, text not


class ToyEncoder(tf.Module):
    """A real encoder SavedModel with the tiny dataset's input sizes: linear, L2-normalised."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.image_w = tf.Variable(rng.normal(size=(IMAGE_DIM, DIM)), dtype=tf.float32)
        self.text_w = tf.Variable(rng.normal(size=(TEXT_DIM, DIM)), dtype=tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_DIM], tf.float32, name="image")])
    def encode_image(self, image):
        return {"embedding": tf.math.l2_normalize(image @ self.image_w, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None, TEXT_DIM], tf.float32, name="text")])
    def encode_text(self, text):
        return {"embedding": tf.math.l2_normalize(text @ self.text_w, axis=1)}


def save_encoder(export_dir: str) -> str:
    module = ToyEncoder()
    tf.saved_model.save(module, export_dir, signatures={
        "encode_image": module.encode_image, "encode_text": module.encode_text})
    return export_dir


def clustered(num: int, seed: int) -> np.ndarray:
    """L2-normalised [num, DIM] around 12 shared centres."""
    centres = np.random.default_rng(99).normal(size=(12, DIM))
    rng = np.random.default_rng(seed)
    return l2_normalise(centres[rng.integers(0, 12, num)] + 0.6 * rng.normal(size=(num, DIM))
                        ).astype(np.float32)


def gallery_part(num: int, seed: int) -> GalleryPart:
    return GalleryPart(clustered(num, seed), np.array([f"g{seed}-{i}" for i in range(num)]),
                       np.arange(num, dtype=np.int64) % 7)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def serving_root(tmp_path_factory):
    """<root>/toy/1 (the encoders) and <root>/toy-search/1 (image gallery indexed)."""
    root = tmp_path_factory.mktemp("ann_serving")
    encoder_dir = save_encoder(str(root / MODEL / "1"))
    export_search_model(encoder_dir, {"image": gallery_part(LARGE, 1),
                                      "text": gallery_part(SMALL, 2)},
                        str(root / f"{MODEL}-search" / "1"), ann_min_items=THRESHOLD,
                        ann_nprobe=NPROBE)
    return root


@pytest.fixture(scope="module")
def search_dir(serving_root):
    return str(serving_root / f"{MODEL}-search" / "1")


@pytest.fixture(scope="module")
def local_search(search_dir):
    """The search servable in this process: its in-graph (exact) signatures."""
    return tf.saved_model.load(search_dir).signatures


@pytest.fixture(scope="module")
def client(serving_root):
    with serving_process("--model-base-path", str(serving_root), "--model-name", MODEL,
                         "--poll-seconds", "60") as address:
        with ServingClient(address, timeout_s=60) as serving_client:
            serving_client.wait_until_ready(f"{MODEL}-search", timeout_s=120)
            yield serving_client


def served(client, signature: str, query, target: str, k: int = K) -> dict[str, np.ndarray]:
    key = "embedding" if signature == "search_embedding" else signature.split("_")[1]
    outputs, _ = client.predict(f"{MODEL}-search", signature, {
        key: query, "target": np.array(target.encode()), "k": np.int32(k)})
    return outputs


def exact(local_search, query_embeddings, target: str, k: int = K) -> dict[str, np.ndarray]:
    result = local_search["search_embedding"](embedding=tf.constant(query_embeddings),
                                              target=tf.constant(target), k=tf.constant(k))
    return {name: value.numpy() for name, value in result.items()}


# --------------------------------------------------------------------------- the server
def test_export_indexes_only_the_gallery_at_the_threshold(search_dir):
    assert load_for_servable(search_dir, "text") is None  # 40 items < 100
    meta = read_meta(search_dir, "image")
    assert (meta["count"], meta["nprobe"], meta["recall_queries"]) == (LARGE, NPROBE, SMALL)
    assert 0.0 < meta["recall_at_10"] <= 1.0


def test_indexed_gallery_is_searched_with_the_index(client, local_search, search_dir):
    queries = clustered(30, seed=3)
    answer = served(client, "search_embedding", queries * 2.0, "image")  # any length
    reference = exact(local_search, queries, "image")
    index = ApproximateIndex.load(index_dir(search_dir, "image"))
    ids, labels, scores = index.search(queries, K)
    np.testing.assert_array_equal(answer["ids"].astype(str), ids)
    np.testing.assert_array_equal(answer["labels"], labels)
    np.testing.assert_allclose(answer["scores"], scores, atol=1e-5)
    # the exact search's contract: names, dtypes, shapes, descending cosine scores
    assert set(answer) == set(reference) == {"ids", "labels", "scores"}
    for name in reference:
        assert answer[name].dtype == reference[name].dtype, name
        assert answer[name].shape == reference[name].shape == (30, K), name
    assert np.all(np.diff(answer["scores"], axis=1) <= 0)
    # nprobe 2 of about 98 lists: approximate, so some exact neighbours are missed
    recall = recall_at_k(answer["ids"], reference["ids"], K)
    assert 0.3 < recall < 1.0


def test_raw_queries_are_encoded_by_the_servable_then_searched_with_the_index(
        client, local_search, search_dir):
    texts = np.random.default_rng(4).normal(size=(5, TEXT_DIM)).astype(np.float32)
    answer = served(client, "search_text", texts, "image")
    embedded = local_search["encode_text"](text=tf.constant(texts))["embedding"].numpy()
    ids, labels, _ = ApproximateIndex.load(index_dir(search_dir, "image")).search(embedded, K)
    np.testing.assert_array_equal(answer["ids"].astype(str), ids)
    np.testing.assert_array_equal(answer["labels"], labels)


def test_k_above_the_gallery_size_returns_the_whole_gallery(client, local_search):
    queries = clustered(2, seed=5)
    answer = served(client, "search_embedding", queries, "image", k=1000)
    reference = exact(local_search, queries, "image", k=1000)
    assert answer["ids"].shape == reference["ids"].shape == (2, LARGE)
    for got, want in zip(answer["ids"], reference["ids"]):
        assert set(got) == set(want)
    np.testing.assert_allclose(answer["scores"], reference["scores"], atol=1e-5)


def test_gallery_below_the_threshold_is_searched_exactly(client, local_search):
    queries = clustered(20, seed=6)
    answer = served(client, "search_embedding", queries, "text")
    reference = exact(local_search, queries, "text")
    np.testing.assert_array_equal(answer["ids"], reference["ids"])
    np.testing.assert_array_equal(answer["labels"], reference["labels"])
    np.testing.assert_allclose(answer["scores"], reference["scores"], atol=1e-6)


def test_bad_searches_get_invalid_argument_on_either_path(client):
    for target, k, message in (("image", 0, "k must be at least 1"),
                               ("text", 0, "k must be at least 1"),
                               ("sound", 3, "sound")):  # the in-graph check names it
        with pytest.raises(grpc.RpcError) as error:
            served(client, "search_embedding", clustered(1, seed=7), target, k=k)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (target, k)
        assert message in error.value.details()
    assert served(client, "search_embedding", clustered(1, seed=7), "image")["ids"].shape == (
        1, K)  # and the server keeps serving


def test_an_index_of_another_dimension_is_refused_at_load(tmp_path, search_dir):
    from serving.model_manager import load_servable

    copy = str(tmp_path / "1")
    shutil.copytree(search_dir, copy)
    vectors = clustered(200, seed=8)[:, :16].copy()
    ApproximateIndex.build(vectors, np.arange(200), np.arange(200)).save(index_dir(copy, "image"))
    with pytest.raises(ValueError, match="16-d embeddings but the servable's are 32-d"):
        load_servable(f"{MODEL}-search", 1, copy)


# --------------------------------------------------------------------------- GallerySearch
def run_gallery_search(tmp_path, encoder_dir: str, feature_dir, **ann) -> tuple:
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    pushed.set_int_custom_property("pushed", 1)
    pushed.set_string_custom_property("pushed_destination", encoder_dir)
    pushed.set_string_custom_property("pushed_version", "1")
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    search_model = standard_artifacts.PushedModel()
    search_model.uri = str(tmp_path / "search_model")
    Executor().Do({"pushed_model": [pushed], "examples": [examples]},
                  {"search_model": [search_model]},
                  {"search_directory": str(tmp_path / "serving" / "toy-search"),
                   "gallery_splits": "test", "gallery_dir": str(feature_dir), **ann})
    report = json.loads((tmp_path / "search_model" / REPORT_FILE).read_text())
    return search_model, report


def test_gallery_search_reports_the_recall_of_the_index(tmp_path, tiny_feature_dir,
                                                        tiny_dataset):
    encoder_dir = save_encoder(str(tmp_path / "toy" / "1"))
    search_model, report = run_gallery_search(tmp_path, encoder_dir, tiny_feature_dir,
                                              ann_min_items=20, ann_nlist=6, ann_nprobe=1)
    export_dir = search_model.get_string_custom_property("pushed_destination")
    test = tiny_dataset.splits["test"]  # 48 pairs: both modalities reach 20
    assert report["ann_min_items"] == 20 and set(report["modalities"]) == {"image", "text"}
    encoder = tf.saved_model.load(encoder_dir).signatures
    embed = {m: encoder[f"encode_{m}"](**{m: tf.constant(getattr(test, m))})["embedding"].numpy()
             for m in ("image", "text")}
    for target, queries in (("image", "text"), ("text", "image")):
        entry = report["modalities"][target]
        assert search_model.get_string_custom_property(f"{target}_search") == "approximate"
        assert (entry["search"], entry["items"], entry["nlist"], entry["nprobe"],
                entry["recall_queries"]) == ("approximate", len(test.ids), 6, 1, len(test.ids))
        # the reported recall is the index's, against exact search, for the other modality's
        # queries
        index = load_for_servable(export_dir, target)
        exact_rows, _ = exact_search(embed[target], embed[queries], K)
        recall = recall_at_k(index.search_indices(embed[queries], K)[0], exact_rows, K)
        assert entry["recall_at_10"] == pytest.approx(recall, abs=1e-4)
        assert search_model.get_float_custom_property(f"{target}_ann_recall_at_10") == (
            pytest.approx(recall, abs=1e-4))


def test_gallery_search_below_the_threshold_reports_exact_search(tmp_path, tiny_feature_dir):
    encoder_dir = save_encoder(str(tmp_path / "toy" / "1"))
    search_model, report = run_gallery_search(tmp_path, encoder_dir, tiny_feature_dir,
                                              ann_min_items=1000)
    assert report["modalities"] == {"image": {"search": "exact"}, "text": {"search": "exact"}}
    assert search_model.get_string_custom_property("image_search") == "exact"
    assert not search_model.has_custom_property("image_ann_recall_at_10")
    export_dir = search_model.get_string_custom_property("pushed_destination")
    assert not os.path.exists(os.path.join(export_dir, "assets.extra", "ann_index"))


# --------------------------------------------------------------------------- the setting
def test_pipeline_passes_the_ann_settings_to_gallery_search(make_pipeline_config, tmp_path):
    from pipeline.pipeline import create_pipeline_from_config

    config = make_pipeline_config(tmp_path, gallery=GalleryConfig(
        ann_min_items=5000, ann_nlist=64, ann_nprobe=8))
    (node,) = [c for c in create_pipeline_from_config(config).components
               if c.id == node_ids.GALLERY_SEARCH]
    assert {k: node.exec_properties[k] for k in ("ann_min_items", "ann_nlist", "ann_nprobe")} == {
        "ann_min_items": 5000, "ann_nlist": 64, "ann_nprobe": 8}


@pytest.mark.parametrize("values,message", [
    ({"ann_min_items": 0}, "gallery.ann_min_items must be in [1, inf)"),
    ({"ann_nprobe": "many"}, "gallery.ann_nprobe must be an integer"),
    ({"ann_nlist": -3}, "gallery.ann_nlist must be in [1, inf)"),
])
def test_bad_ann_settings_are_config_errors(values, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        PipelineConfig.from_dict({"gallery": values})
    assert PipelineConfig.from_dict({"gallery": {"ann_min_items": None}}).gallery.ann_min_items \
        is None
