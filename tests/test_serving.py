"""Serving end to end: a tiny pipeline run pushes the encoders and their search companion, a real
``cmgan serve`` process answers TF Serving's official stubs on 127.0.0.1.

One module-scoped pipeline run and one server process are shared by every test.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, predict_pb2,
                                     prediction_service_pb2_grpc, model_service_pb2_grpc)

from models.metrics import cosine_similarity
from models.signatures import SEARCH_SIGNATURES
from pipeline import cli
from pipeline.local_runner import run_pipeline
from serving import config_files
from serving.client import ServingClient

from conftest import serving_process

REPO = Path(__file__).resolve().parents[1]
FRESH_LOAD = REPO / "tests" / "scripts" / "serving_fresh_load.py"
MODEL = "cmgan"
SEARCH = config_files.search_model_name(MODEL)
MAX_MESSAGE_MB = 1
Code = grpc.StatusCode


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pushed(make_pipeline_config, tmp_path_factory):
    """(config, version): one tiny pipeline run, model and search companion pushed."""
    config = make_pipeline_config(tmp_path_factory.mktemp("serving"),
                                  pipeline_name="cmgan-serving")
    result = run_pipeline(config)
    assert result.pushed_model, result.reason
    return config, int(os.path.basename(result.pushed_model))


@pytest.fixture(scope="module")
def model_config(pushed, tmp_path_factory):
    """A ModelServerConfig file: every version, ``stable`` -> the pushed version and ``canary``
    -> the next one (pushed by the load test)."""
    config, version = pushed
    entries = config_files.default_entries(config.serving_root, MODEL,
                                           labels={"stable": version, "canary": version + 1})
    return config_files.write_model_config(
        str(tmp_path_factory.mktemp("config") / "models.config"), entries)


@pytest.fixture(scope="module")
def server(model_config):
    """``cmgan serve`` in its own process; yields host:port."""
    with serving_process("--model-config-file", model_config, "--poll-seconds", "0.5",
                         "--max-message-mb", str(MAX_MESSAGE_MB), "--workers", "16") as address:
        yield address


@pytest.fixture(scope="module")
def client(server):
    with ServingClient(server, timeout_s=30) as serving_client:
        serving_client.wait_until_ready(SEARCH, timeout_s=120)
        yield serving_client


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def local_model(pushed):
    config, version = pushed
    return tf.saved_model.load(os.path.join(config.push_directory, str(version)))


@pytest.fixture(scope="module")
def test_split(tiny_dataset):
    return tiny_dataset.splits["test"]


def _request(model=SEARCH, signature="search_text", **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


# --------------------------------------------------------------------------- layout
def test_pipeline_pushes_a_search_companion_with_the_same_version(pushed, test_split):
    config, version = pushed
    assert sorted(os.listdir(config.push_directory)) == [str(version)]
    assert sorted(os.listdir(config.search_directory)) == [str(version)]
    companion = Path(config.search_directory) / str(version)
    assert (companion / "saved_model.pb").is_file()
    assert (companion / "assets.extra" / "tf_serving_warmup_requests").is_file()


# --------------------------------------------------------------------------- answers
def test_encode_matches_the_saved_model_in_process(client, local_model, test_split):
    served = client.encode(MODEL, "image", test_split.image[:5])
    local = local_model.signatures["encode_image"](image=tf.constant(test_split.image[:5]))
    np.testing.assert_allclose(served, local["embedding"].numpy(), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("query_kind,target", [("text", "image"), ("image", "text"),
                                               ("embedding", "image")])
def test_search_matches_numpy_brute_force(client, local_model, test_split, query_kind, target):
    encode = lambda m, x: local_model.signatures[f"encode_{m}"](**{m: tf.constant(x)})[
        "embedding"].numpy()
    gallery = encode(target, getattr(test_split, target))
    if query_kind == "embedding":
        queries = encode("text", test_split.text[:6]) * 3.0  # any length: normalised in-graph
    else:
        queries = getattr(test_split, query_kind)[:6]
    result = client.search(MODEL, queries, query_kind=query_kind, target=target, k=5)

    query_emb = queries if query_kind == "embedding" else encode(query_kind, queries)
    scores = cosine_similarity(query_emb, gallery)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    np.testing.assert_allclose(result.scores, np.take_along_axis(scores, order, 1), atol=1e-5)
    assert (result.ids == test_split.ids[order]).all()
    assert (result.labels == test_split.label[order]).all()


def test_k_larger_than_the_gallery_returns_the_whole_gallery(client, test_split):
    result = client.search(MODEL, test_split.text[:1], query_kind="text", target="image",
                           k=10_000)
    assert result.ids.shape == (1, len(test_split))
    assert set(result.ids[0]) == set(test_split.ids)


def test_metadata_discovers_every_signature(client, tiny_dataset):
    signatures = client.signatures(SEARCH)
    assert set(signatures) == {"encode_image", "encode_text", "serving_default",
                               *SEARCH_SIGNATURES}
    search = signatures["search_image"]
    assert [d.size for d in search.inputs["image"].tensor_shape.dim] == [-1,
                                                                        tiny_dataset.image_dim]
    assert search.inputs["target"].dtype == tf.string.as_datatype_enum
    assert search.outputs["labels"].dtype == tf.int64.as_datatype_enum
    assert set(client.signatures(MODEL)) == {"encode_image", "encode_text", "serving_default"}


def test_status_reports_available_versions(client, pushed):
    _, version = pushed
    assert client.status(MODEL)[version] == "AVAILABLE"
    assert client.status(SEARCH) == {version: "AVAILABLE"}


def test_version_and_label_select_the_version(client, pushed, test_split):
    _, version = pushed
    _, answered = client.predict(MODEL, "encode_text", {"text": test_split.text[:1]},
                                 version_label="stable")
    assert answered == version
    _, answered = client.predict(MODEL, "encode_text", {"text": test_split.text[:1]},
                                 version=version)
    assert answered == version


def test_query_command_prints_ranked_results(server, pushed, test_split, tmp_path):
    np.save(tmp_path / "q.npy", test_split.text[0])
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["query", "--server", server, "--text-features",
                         str(tmp_path / "q.npy"), "--top-k", "3"])
    assert code == 0
    lines = stdout.getvalue().splitlines()
    assert lines[0].startswith("query 0 (model version")
    assert len(lines) == 5 and lines[2].split()[1] in set(test_split.ids)


# --------------------------------------------------------------------------- malformed
def _malformed_requests(d_img, d_txt, version):
    text = np.zeros([2, d_txt], np.float32)
    target, k = np.array(b"image"), np.int32(3)
    labelled = _request(MODEL, "encode_text", text=text)
    labelled.model_spec.version_label = "no-such-label"
    versioned = _request(MODEL, "encode_text", text=text)
    versioned.model_spec.version.value = version + 1000
    return {
        "wrong dtype": (_request(text=text.astype(np.float64), target=target, k=k),
                        Code.INVALID_ARGUMENT, "float64"),
        "wrong shape": (_request(text=np.zeros([2, d_txt + 1], np.float32), target=target, k=k),
                        Code.INVALID_ARGUMENT, "shape"),
        "wrong rank": (_request(text=np.zeros([d_txt], np.float32), target=target, k=k),
                       Code.INVALID_ARGUMENT, "shape"),
        "empty batch": (_request(text=np.zeros([0, d_txt], np.float32), target=target, k=k),
                        Code.INVALID_ARGUMENT, "empty batch"),
        "unknown input": (_request(txt=text, target=target, k=k), Code.INVALID_ARGUMENT,
                          "alias not found"),
        "missing input": (_request(text=text, target=target), Code.INVALID_ARGUMENT,
                          "missing inputs: k"),
        "unknown target": (_request(text=text, target=np.array(b"audio"), k=k),
                           Code.INVALID_ARGUMENT, "target must be"),
        "k of zero": (_request(text=text, target=target, k=np.int32(0)),
                      Code.INVALID_ARGUMENT, "k must be at least 1"),
        "unknown signature": (_request(MODEL, "search_text", text=text, target=target, k=k),
                              Code.FAILED_PRECONDITION, "signature key"),
        "unknown model": (_request("no-such-model", "encode_text", text=text),
                          Code.NOT_FOUND, "no-such-model"),
        "unknown version": (versioned, Code.NOT_FOUND, str(version + 1000)),
        "unknown label": (labelled, Code.INVALID_ARGUMENT, "no-such-label"),
        "oversized": (_request(MODEL, "encode_image", image=np.zeros(
            [(MAX_MESSAGE_MB << 20) // (4 * d_img) + 10, d_img], np.float32)),
                      Code.RESOURCE_EXHAUSTED, ""),
    }


def test_malformed_requests_get_tf_serving_codes_and_the_server_keeps_serving(
        stub, client, pushed, tiny_dataset, test_split):
    _, version = pushed
    outcomes = {}
    for name, (request, code, fragment) in _malformed_requests(
            tiny_dataset.image_dim, tiny_dataset.text_dim, version).items():
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
        outcomes[name] = (caught.value.code(), fragment in caught.value.details())
    assert outcomes == {name: (code, True) for name, (_, code, _) in _malformed_requests(
        tiny_dataset.image_dim, tiny_dataset.text_dim, version).items()}

    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = MODEL
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetModelMetadata(metadata, timeout=30)
    assert caught.value.code() == Code.INVALID_ARGUMENT
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "no-such-model"
    with pytest.raises(grpc.RpcError) as caught:
        model_service_pb2_grpc.ModelServiceStub(client.channel).GetModelStatus(status, timeout=30)
    assert caught.value.code() == Code.NOT_FOUND

    result = client.search(MODEL, test_split.text[:1], query_kind="text", target="image", k=2)
    assert result.ids.shape == (1, 2)


# --------------------------------------------------------------------------- load + new version
def _push_new_version(config, version: int) -> int:
    """What the Pusher does, atomically: a copy of the model under the next version number."""
    source = Path(config.push_directory) / str(version)
    staging = Path(config.push_directory) / ".staging"
    shutil.copytree(source, staging)
    staging.rename(Path(config.push_directory) / str(version + 1))
    return version + 1


def test_concurrent_load_with_a_version_pushed_midway_has_zero_errors(
        server, pushed, test_split):
    config, version = pushed
    clients, requests_each, time_limit_s = 8, 200, 90
    errors, answered_by, pushed_at = [], [], threading.Event()
    new_version = version + 1
    started = time.monotonic()

    def worker(index: int):
        versions = []
        with ServingClient(server, timeout_s=30) as load_client:
            n = 0
            while (n < requests_each or new_version not in versions) and (
                    time.monotonic() - started < time_limit_s):
                row = test_split.text[(index * requests_each + n) % len(test_split):][:1]
                try:
                    if n % 2:
                        _, answered = load_client.predict(MODEL, "encode_text", {"text": row})
                    else:
                        answered = load_client.search(MODEL, row, query_kind="text",
                                                      target="image", k=5).version
                    versions.append(answered)
                except grpc.RpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")
                n += 1
                if index == 0 and n == 50:
                    _push_new_version(config, version)
                    pushed_at.set()
        answered_by.append(versions)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started

    assert pushed_at.is_set()
    assert errors == []
    assert all(len(v) >= requests_each and new_version in v for v in answered_by)
    assert elapsed < time_limit_s
    # The encoder model switched to the new version under load; the search companion stays at
    # the version its gallery was built with (the pipeline pushes both together).
    with ServingClient(server, timeout_s=30) as after:
        _, answered = after.predict(MODEL, "encode_text", {"text": test_split.text[:1]})
        assert answered == new_version
        _, by_label = after.predict(MODEL, "encode_text", {"text": test_split.text[:1]},
                                    version_label="canary")
        assert by_label == new_version
        assert after.status(MODEL) == {version: "AVAILABLE", new_version: "AVAILABLE"}


# --------------------------------------------------------------------------- stock loader
def test_served_savedmodels_run_in_a_process_with_only_tensorflow_and_tf_text(
        pushed, tiny_dataset):
    config, version = pushed
    model_dirs = [os.path.join(config.push_directory, str(version)),
                  os.path.join(config.search_directory, str(version))]
    completed = subprocess.run([sys.executable, str(FRESH_LOAD), *model_dirs],
                               capture_output=True, text=True, timeout=300, cwd="/")
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.split("REPORT ", 1)[1])
    assert report["project_modules"] == []
    common = config.cmgan_hparams().common_dim
    encoders, search = (report["models"][d] for d in model_dirs)
    assert encoders["encode_image"] == {"embedding": ["float32", [2, common]]}
    assert set(search) == {*encoders, *SEARCH_SIGNATURES}
    for name in SEARCH_SIGNATURES:
        assert search[name] == {"ids": ["string", [2, 3]], "labels": ["int64", [2, 3]],
                                "scores": ["float32", [2, 3]]}


# --------------------------------------------------------------------------- config files
def test_model_config_round_trips_and_batching_file_is_text_format(tmp_path):
    entries = [config_files.ModelEntry("cmgan", "/models/cmgan", labels={"stable": 3}),
               config_files.ModelEntry("cmgan-search", "/models/cmgan-search", num_versions=2),
               config_files.ModelEntry("old", "/models/old", versions=(1, 2))]
    path = config_files.write_model_config(str(tmp_path / "models.config"), entries)
    assert config_files.read_model_config(path) == entries
    text = Path(path).read_text()
    assert 'version_labels {\n      key: "stable"\n      value: 3' in text
    batching = config_files.batching_parameters(max_batch_size=32, allowed_batch_sizes=(8, 32))
    assert "max_batch_size { value: 32 }" in batching and "allowed_batch_sizes: 8" in batching
