"""Issue 14 (item 2): TF Serving's REST API, ``cmgan serve --rest-api-port``.

A small SavedModel is written here (no pipeline run) and served by one real ``cmgan serve``
process on 127.0.0.1 with both APIs; REST answers are compared with gRPC Predict on the same
inputs. Every wait is bounded and the process is stopped at the end of the module.
"""
from __future__ import annotations

import base64
import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from pipeline import cli
from serving import config_files
from conftest import START_TIMEOUT_S, cmgan_addresses, free_port, prediction_stub

REPO = Path(__file__).resolve().parents[1]
MODEL = "probe"
MAX_BODY_MB = 1
MAX_ROWS = 64
SIGNATURES = {"serving_default", "norm", "strings", "top"}


class Probe(tf.Module):
    """Float features in (two outputs, one output, a scalar input too) and strings in and out."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def scale(self, x):
        return {"doubled": x * 2.0, "total": tf.reduce_sum(x, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def norm(self, x):
        return {"y": tf.math.l2_normalize(x, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"),
                                  tf.TensorSpec([None], tf.string, name="text")])
    def strings(self, image_bytes, text):
        return {"size": tf.strings.length(image_bytes), "echo_bytes": image_bytes,
                "upper": tf.strings.upper(text)}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def top(self, x, k):
        values, indices = tf.math.top_k(x, k)
        return {"values": values, "indices": indices}


# --------------------------------------------------------------------------- fixtures
def serve_process(*args: str):
    """``cmgan serve <args>``; yields the announced addresses once it printed "serving"."""
    return cmgan_addresses("serve", "serving ", *args)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("rest_root")
    probe = Probe()
    tf.saved_model.save(probe, str(root / MODEL / "1"), signatures={
        "serving_default": probe.scale, "norm": probe.norm, "strings": probe.strings,
        "top": probe.top})
    config = config_files.write_model_config(
        str(root / "models.config"),
        [config_files.ModelEntry(MODEL, str(root / MODEL), labels={"stable": 1})])
    with serve_process("--model-config-file", config, "--port", "0",
                       "--rest-api-port", str(free_port()),
                       "--rest-api-max-body-mb", str(MAX_BODY_MB),
                       "--max-rows", str(MAX_ROWS), "--poll-seconds", "60") as addresses:
        assert addresses["rest"].startswith("127.0.0.1:")  # --host's loopback default
        yield addresses


@pytest.fixture(scope="module")
def stub(server):
    with prediction_stub(server["grpc"]) as service:
        yield service


def rest(server, method: str, path: str, body=None, headers=None):
    """(HTTP status, JSON answer) of one request; a dict body is sent as JSON."""
    host, port = server["rest"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def predict(server, body, path=f"/v1/models/{MODEL}:predict"):
    return rest(server, "POST", path, body)


def grpc_predict(stub, signature: str, **inputs) -> dict[str, np.ndarray]:
    request = grpc_request(signature, **inputs)
    response = stub.Predict(request, timeout=60)
    return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}


def grpc_request(signature: str, **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request


def grpc_error(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=60)
    return caught.value


@pytest.fixture(scope="module")
def features():
    return np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)


# --------------------------------------------------------------------------- predict
def test_row_format_equals_grpc_predict(server, stub, features):
    expected = grpc_predict(stub, "serving_default", x=features)
    status, answer = predict(server, {"instances": [{"x": row} for row in features.tolist()]})
    assert status == 200, answer
    assert len(answer["predictions"]) == len(features)
    for row, prediction in enumerate(answer["predictions"]):  # one object per row
        assert set(prediction) == {"doubled", "total"}
        np.testing.assert_array_equal(np.float32(prediction["doubled"]),
                                      expected["doubled"][row])
        assert np.float32(prediction["total"]) == expected["total"][row]

    # A single output: the predictions are its rows; a single input: plain values per row.
    status, answer = predict(server, {"signature_name": "norm",
                                      "instances": features.tolist()})
    assert status == 200, answer
    np.testing.assert_array_equal(np.float32(answer["predictions"]),
                                  grpc_predict(stub, "norm", x=features)["y"])


def test_columnar_format_equals_grpc_predict(server, stub, features):
    expected = grpc_predict(stub, "serving_default", x=features)
    status, answer = predict(server, {"signature_name": "serving_default",
                                      "inputs": {"x": features.tolist()}})
    assert status == 200, answer
    assert set(answer["outputs"]) == {"doubled", "total"}
    for alias, value in expected.items():
        np.testing.assert_array_equal(np.float32(answer["outputs"][alias]), value)

    status, answer = predict(server, {"signature_name": "norm", "inputs": features.tolist()})
    assert status == 200, answer  # one output: "outputs" is its value
    np.testing.assert_array_equal(np.float32(answer["outputs"]),
                                  grpc_predict(stub, "norm", x=features)["y"])

    # A scalar input (as the search signatures' k) fits the columnar format.
    expected = grpc_predict(stub, "top", x=features, k=np.int32(2))
    status, answer = predict(server, {"signature_name": "top",
                                      "inputs": {"x": features.tolist(), "k": 2}})
    assert status == 200, answer
    np.testing.assert_array_equal(np.float32(answer["outputs"]["values"]), expected["values"])
    assert answer["outputs"]["indices"] == expected["indices"].tolist()


def test_b64_bytes_and_strings_equal_grpc_predict(server, stub):
    blobs = [tf.io.encode_png(tf.zeros([3, 5, 3], tf.uint8)).numpy(), b"\x00\xff\xfe"]
    texts = ["héllo wörld", "abc"]
    expected = grpc_predict(stub, "strings", image_bytes=np.array(blobs, dtype=object),
                            text=np.array([t.encode() for t in texts], dtype=object))
    status, answer = predict(server, {"signature_name": "strings", "instances": [
        {"image_bytes": {"b64": base64.b64encode(blob).decode()}, "text": text}
        for blob, text in zip(blobs, texts)]})
    assert status == 200, answer
    for row, prediction in enumerate(answer["predictions"]):
        assert prediction["size"] == expected["size"][row] == len(blobs[row])
        # An output alias ending in _bytes comes back base64 encoded, as TF Serving does it.
        assert base64.b64decode(prediction["echo_bytes"]["b64"]) == blobs[row]
        assert prediction["upper"] == expected["upper"][row].decode("utf-8")

    status, answer = predict(server, {"signature_name": "strings", "inputs": {
        "image_bytes": [{"b64": base64.b64encode(blob).decode()} for blob in blobs],
        "text": texts}})
    assert status == 200, answer
    assert answer["outputs"]["size"] == expected["size"].tolist()


def test_versions_and_labels_pick_the_servable(server, features):
    body = {"signature_name": "norm", "instances": features[:2].tolist()}
    latest = predict(server, body)
    assert latest[0] == 200
    assert predict(server, body, f"/v1/models/{MODEL}/versions/1:predict") == latest
    assert predict(server, body, f"/v1/models/{MODEL}/labels/stable:predict") == latest

    status, answer = predict(server, body, f"/v1/models/{MODEL}/versions/9:predict")
    assert status == 404 and "Specific(probe, 9)" in answer["error"]
    status, answer = predict(server, body, f"/v1/models/{MODEL}/labels/nope:predict")
    assert status == 400 and "Unrecognized servable version label: nope" in answer["error"]


# --------------------------------------------------------------------------- status, metadata
def test_model_status_is_tf_servings_json(server):
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    assert rest(server, "GET", f"/v1/models/{MODEL}") == (200, expected)
    assert rest(server, "GET", f"/v1/models/{MODEL}/versions/1") == (200, expected)
    assert rest(server, "GET", f"/v1/models/{MODEL}/labels/stable") == (200, expected)
    status, answer = rest(server, "GET", f"/v1/models/{MODEL}/versions/9")
    assert status == 404 and "version 9" in answer["error"]
    status, answer = rest(server, "GET", "/v1/models/nobody")
    assert status == 404 and "nobody" in answer["error"]


def test_metadata_is_the_signature_def_map_of_grpc(server):
    status, answer = rest(server, "GET", f"/v1/models/{MODEL}/metadata")
    assert status == 200, answer
    assert answer["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    signatures = answer["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == SIGNATURES
    x = signatures["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "4"]
    assert signatures["strings"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert set(signatures["serving_default"]["outputs"]) == {"doubled", "total"}
    assert signatures["norm"]["method_name"] == "tensorflow/serving/predict"

    # The same SignatureDefs gRPC's GetModelMetadata answers.
    channel = grpc.insecure_channel(server["grpc"])
    try:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = MODEL
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
            request, timeout=60)
    finally:
        channel.close()
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    assert json_format.ParseDict(answer["metadata"]["signature_def"],
                                 get_model_metadata_pb2.SignatureDefMap()) == signature_map
    assert rest(server, "GET", f"/v1/models/{MODEL}/versions/1/metadata") == (200, answer)


# --------------------------------------------------------------------------- errors
def test_unknown_model_is_404(server, features):
    status, answer = predict(server, {"instances": features.tolist()},
                             "/v1/models/nobody:predict")
    assert status == 404
    assert answer == {"error": "Servable not found for request: Latest(nobody)"}


def test_bad_json_is_400(server):
    status, answer = predict(server, b'{"instances": [1, 2')
    assert status == 400 and answer["error"].startswith("JSON Parse error")
    status, answer = predict(server, b"[1, 2]")
    assert status == 400 and "not an object" in answer["error"]
    status, answer = predict(server, b"\xff\xfe")
    assert status == 400 and "not UTF-8" in answer["error"]


def test_wrong_input_name_is_400_with_grpcs_message(server, stub, features):
    error = grpc_error(stub, grpc_request("serving_default", y=features))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    for body in ({"instances": [{"y": row} for row in features.tolist()]},
                 {"inputs": {"y": features.tolist()}}):
        status, answer = predict(server, body)
        assert status == 400
        assert answer["error"] == error.details()
        assert "input tensor alias not found in signature: y" in answer["error"]


def test_rest_and_grpc_share_the_checks_and_limits(server, stub):
    """The same messages for an unknown signature, too many rows and a wrong shape."""
    rows = np.ones((MAX_ROWS + 1, 4), np.float32)
    cases = [("nope", {"x": np.ones((1, 4), np.float32)}, "Serving signature key \"nope\""),
             ("norm", {"x": rows}, f"at most {MAX_ROWS} rows"),  # --max-rows
             ("norm", {"x": np.ones((2, 3), np.float32)}, "must have shape [None, 4]")]
    for signature, inputs, message in cases:
        error = grpc_error(stub, grpc_request(signature, **inputs))
        assert message in error.details()
        status, answer = predict(server, {"signature_name": signature, "inputs": {
            alias: value.tolist() for alias, value in inputs.items()}})
        assert (status, answer) == (400, {"error": error.details()}), signature


@pytest.mark.parametrize("body,message", [
    ({"instances": [{"x": ["a", "b", "c", "d"]}]}, "expects float32 values (numbers)"),
    ({"instances": [{"x": [1, 2, 3, 4]}, {"x": [1, 2]}]}, "is ragged"),
    ({"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]}, "exactly one of"),
    ({"signature_name": "strings", "instances": [{"image_bytes": {"b64": "%%"}, "text": "a"}]},
     "not valid base64"),
    ({"signature_name": "strings", "instances": [{"image_bytes": 3, "text": "a"}]},
     "string input (DT_STRING)"),
    ({"signature_name": "top", "inputs": {"x": [[1, 2, 3, 4]], "k": 2.5}},
     "expects int32 values (integers)"),
    ({"signature_name": "top", "inputs": {"x": [[1, 2, 3, 4]], "k": 2**40}},
     "out of the range of int32"),
    ({"signature_name": "strings", "instances": ["a", "b"]}, "has 2 inputs"),
])
def test_malformed_inputs_are_400(server, body, message):
    status, answer = predict(server, body)
    assert status == 400 and message in answer["error"], answer


def test_paths_and_methods(server):
    status, answer = rest(server, "GET", f"/v1/models/{MODEL}:predict")
    assert status == 400 and answer["error"] == f"Malformed request: GET /v1/models/{MODEL}:predict"
    status, answer = rest(server, "POST", f"/v1/models/{MODEL}:classify", {"examples": []})
    assert status == 501
    status, answer = rest(server, "GET", "/metrics")
    assert status == 404
    status, answer = rest(server, "GET", f"/v1/models/{MODEL}/versions/x1")
    assert status == 400 and "Failed to convert version" in answer["error"]


def test_an_oversized_body_is_413(server):
    limit = MAX_BODY_MB << 20
    host, port = server["rest"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", f"/v1/models/{MODEL}:predict", body=b" " * (limit + 1))
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 413
        assert str(limit) in answer["error"] and "--rest-api-max-body-mb" in answer["error"]
        # The refused body was read: the same connection answers the next request.
        connection.request("GET", f"/v1/models/{MODEL}")
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["model_version_status"]
    finally:
        connection.close()

    # A huge declared length is refused from the header alone, before any body is sent.
    with socket.create_connection((host, int(port)), timeout=60) as raw:
        raw.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Length: {10 ** 12}\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = raw.recv(65536)
            if not chunk:
                break
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_the_rest_api_is_off_by_default():
    args = cli.build_parser().parse_args(["serve"])
    assert args.rest_api_port == 0 and args.rest_api_max_body_mb is None


def test_a_client_that_closed_its_connection_reads_as_gone():
    """What stops a REST prediction between chunks, as a cancelled gRPC call."""
    from serving.rest_api import _Context

    client, served = socket.socketpair()
    with client, served:
        assert _Context(served).is_active()
        client.sendall(b"GET /v1/models/x HTTP/1.1\r\n")  # a pipelined request: still there
        assert _Context(served).is_active()
    client, served = socket.socketpair()
    with served:
        client.close()
        assert not _Context(served).is_active()


def test_a_taken_rest_port_fails_at_start_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "serve", "--model-base-path", str(tmp_path),
             "--port", "0", "--rest-api-port", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"could not bind the REST API to 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
