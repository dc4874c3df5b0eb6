"""Regression tests for issue 15 (serving): requests that declare more than they send, row caps,
decompression bombs, deadlines honoured inside the work, and no tracebacks in answers.

A small SavedModel is written here (no pipeline run) and served by the real gRPC server
(serving/server.py) on 127.0.0.1; every test stops what it starts.
"""
from __future__ import annotations

import logging
import re
import struct
import time
import zlib

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tensorflow.core.framework.tensor_pb2 import TensorProto

from models.image_decoding import decode_and_resize
from serving.config_files import ModelEntry
from serving.model_manager import ModelManager
from serving.server import RequestStats, ServerOptions, start_server

MODEL = "probe"
SLOW_ROWS = 100
Code = grpc.StatusCode


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but whose data is a few bytes: what an
    attacker sends (the real 20000x20000 PNG of zeros is 1.2 MB and decodes to 1.2 GB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def small_png(width: int = 12, height: int = 10) -> bytes:
    return tf.io.encode_png(tf.zeros([height, width, 3], tf.uint8)).numpy()


class Probe(tf.Module):
    """Three signatures: a cheap batched one, an image decoder (the serving graph's own
    decode_and_resize) and a deliberately slow one (a long loop per row)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def double(self, x):
        return {"y": x * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def decode(self, image_bytes):
        pixels = tf.map_fn(lambda data: decode_and_resize(data, 8), image_bytes,
                           fn_output_signature=tf.TensorSpec([8, 8, 3], tf.uint8))
        return {"pixels": pixels}

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def slow(self, x):
        def body(i, value):
            return i + 1, tf.tanh(tf.matmul(value, tf.eye(8)) + 0.001)

        _, out = tf.while_loop(lambda i, _: i < 40000 * tf.shape(x)[0], body,
                               (tf.constant(0), x))
        return {"y": out}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("serving_root") / MODEL
    probe = Probe()
    tf.saved_model.save(probe, str(base / "1"), signatures={
        "double": probe.double, "decode": probe.decode, "slow": probe.slow})
    return str(base)


@pytest.fixture
def serve(model_dir):
    """Factory: a real gRPC server on 127.0.0.1 with the given ServerOptions fields; yields
    (stub, stats). Everything started is stopped at the end of the test."""
    started = []

    def make(**fields):
        manager = ModelManager([ModelEntry(MODEL, model_dir)], poll_seconds=60).start()
        stats = RequestStats()
        server, port = start_server(manager, ServerOptions(port=0, **fields), stats)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((manager, server, channel))
        return prediction_service_pb2_grpc.PredictionServiceStub(channel), stats

    yield make
    for manager, server, channel in started:
        channel.close()
        server.stop(grace=None).wait(timeout=30)
        manager.stop()


def request(signature: str, **inputs) -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = MODEL
    message.model_spec.signature_name = signature
    for key, value in inputs.items():
        message.inputs[key].CopyFrom(value if isinstance(value, TensorProto)
                                     else tf.make_tensor_proto(value))
    return message


def declared(dtype, shape, **values) -> TensorProto:
    """A TensorProto with a declared shape and only the given values (possibly none)."""
    proto = TensorProto(dtype=dtype.as_datatype_enum)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    for field, value in values.items():
        if field == "tensor_content":
            proto.tensor_content = value
        else:
            getattr(proto, field).extend(value)
    return proto


def rpc_error(stub, message, timeout=60) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(message, timeout=timeout)
    return caught.value


# --------------------------------------------------------------------------- item 1
def test_a_declared_shape_without_values_is_invalid_argument(serve):
    stub, _ = serve()
    error = rpc_error(stub, request("double", x=declared(tf.float32, [10000, 4])))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "declares shape [10000, 4]" in error.details()
    assert "0 values were sent" in error.details()


def test_a_declared_shape_beyond_int64_gets_a_clear_error_not_a_traceback(serve):
    stub, _ = serve(max_rows=1 << 62)  # past the row cap: the element count check answers
    error = rpc_error(stub, request("double", x=declared(tf.float32, [2**40, 1024])))
    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert "Traceback" not in error.details() and "Exception" not in error.details()


def test_tensor_content_shorter_than_the_shape_is_invalid_argument(serve):
    stub, _ = serve()
    content = np.ones([2, 4], np.float32).tobytes()
    error = rpc_error(stub, request("double", x=declared(tf.float32, [1000, 4],
                                                         tensor_content=content)))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "tensor_content holds 32 bytes" in error.details()


def test_one_value_filling_a_huge_string_batch_is_refused(serve):
    stub, _ = serve()
    error = rpc_error(stub, request("decode", image_bytes=declared(
        tf.string, [1_000_000], string_val=[b"x"])))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "rows per request" in error.details()


def test_rows_per_request_are_capped_and_smaller_requests_still_work(serve):
    stub, _ = serve(max_rows=10)
    error = rpc_error(stub, request("double", x=np.ones([11, 4], np.float32)))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "11 rows; at most 10 rows" in error.details()
    answer = stub.Predict(request("double", x=np.ones([10, 4], np.float32)), timeout=60)
    assert np.array_equal(tf.make_ndarray(answer.outputs["y"]), np.full([10, 4], 2.0))


def test_the_default_row_cap_follows_the_message_limit(serve):
    stub, _ = serve(max_message_bytes=1 << 20)  # 1 MiB: 256 rows of 4 KB
    error = rpc_error(stub, request("double", x=declared(tf.float32, [257, 4],
                                                         float_val=[1.0])))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "at most 256 rows" in error.details()


def test_tf_shorthand_of_one_repeated_value_is_still_accepted(serve):
    stub, _ = serve()
    answer = stub.Predict(request("double", x=tf.make_tensor_proto(1.5, shape=[3, 4])),
                          timeout=60)
    assert np.array_equal(tf.make_ndarray(answer.outputs["y"]), np.full([3, 4], 3.0))


def test_chunked_rows_give_the_same_answer_as_one_call(serve):
    stub, _ = serve(chunk_rows=3)
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    answer = stub.Predict(request("double", x=x), timeout=60)
    assert np.array_equal(tf.make_ndarray(answer.outputs["y"]), x * 2)


# --------------------------------------------------------------------------- item 2
def test_a_huge_image_header_is_refused_before_decoding(serve):
    stub, _ = serve()
    bomb = png_header_only(20000, 20000)
    error = rpc_error(stub, request("decode", image_bytes=np.array([bomb], object)))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "image_too_large" in error.details()
    assert "row 0" in error.details()
    answer = stub.Predict(request("decode", image_bytes=np.array([small_png()], object)),
                          timeout=60)
    assert tf.make_ndarray(answer.outputs["pixels"]).shape == (1, 8, 8, 3)


def test_the_serving_graph_itself_refuses_a_huge_image(serve):
    """With the server's own check off, decode_and_resize's header check answers."""
    stub, _ = serve(max_image_pixels=None)
    bomb = png_header_only(6000, 5000)  # 30 MP > 25 MP
    error = rpc_error(stub, request("decode", image_bytes=np.array([bomb], object)))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "image_too_large" in error.details()


def test_the_pixel_limit_is_configurable(serve):
    stub, _ = serve(max_image_pixels=100)
    error = rpc_error(stub, request("decode", image_bytes=np.array([small_png(12, 10)],
                                                                   object)))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "12x10 = 120 pixels; the limit is 100" in error.details()


# --------------------------------------------------------------------------- item 6
def test_work_stops_between_chunks_when_the_deadline_passes_and_is_counted(serve):
    stub, stats = serve(chunk_rows=1)
    x = np.ones([SLOW_ROWS, 8], np.float32)
    error = rpc_error(stub, request("slow", x=x), timeout=1.0)
    assert error.code() == Code.DEADLINE_EXCEEDED
    give_up = time.monotonic() + 60  # the server notices at its next chunk boundary
    while stats.cancelled == 0 and time.monotonic() < give_up:
        time.sleep(0.05)
    assert stats.cancelled == 1, "the server never stopped the request"
    done = int(re.search(r"stopped after (\d+) of (\d+) rows", stats.last_cancelled).group(1))
    assert done < SLOW_ROWS
    answer = stub.Predict(request("double", x=np.ones([1, 4], np.float32)), timeout=60)
    assert answer.outputs["y"].tensor_shape.dim[0].size == 1  # and it keeps serving


# --------------------------------------------------------------------------- items 7, 8
class OtherShape(tf.Module):
    """Same signature names as Probe's ``double``, another input width: breaks its clients."""

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32, name="x")])
    def double(self, x):
        return {"y": x * 2.0}


@pytest.fixture
def root_with_good_version(model_dir, tmp_path):
    """<tmp>/probe/1: a copy of the probe model."""
    import shutil

    base = tmp_path / MODEL
    shutil.copytree(f"{model_dir}/1", base / "1")
    return base


def status_of(manager: ModelManager) -> dict[int, tuple[str, int]]:
    """GetModelStatus through the real server: version -> (state name, error code)."""
    from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc)

    server, port = start_server(manager, ServerOptions(port=0))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = MODEL
            response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                request, timeout=60)
    finally:
        server.stop(grace=None).wait(timeout=30)
    state = get_model_status_pb2.ModelVersionStatus.State.Name
    return {s.version: (state(s.state), s.status.error_code)
            for s in response.model_version_status}


def test_a_broken_version_is_retried_a_bounded_number_of_times_then_ends(
        root_with_good_version, caplog):
    (root_with_good_version / "2").mkdir()
    (root_with_good_version / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
    manager = ModelManager([ModelEntry(MODEL, str(root_with_good_version))],
                           max_load_retries=2, retry_base_seconds=0.0)
    with caplog.at_level(logging.WARNING, logger="serving.model_manager"):
        for _ in range(10):
            manager.poll_once()
    tries = [r for r in caplog.records if "could not load probe version 2" in r.getMessage()]
    assert len(tries) == 2  # then the third failure gives up
    assert manager.given_up(MODEL) == {2: Code.UNKNOWN}
    assert "gave up after 3 attempts" in manager.failed_versions(MODEL)[2]
    assert sorted(manager.versions(MODEL)) == [1]
    assert status_of(manager) == {1: ("AVAILABLE", 0), 2: ("END", Code.UNKNOWN.value[0])}


def test_retries_back_off_instead_of_loading_at_every_poll(root_with_good_version):
    (root_with_good_version / "2").mkdir()
    (root_with_good_version / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
    manager = ModelManager([ModelEntry(MODEL, str(root_with_good_version))],
                           retry_base_seconds=3600.0)
    for _ in range(5):
        manager.poll_once()
    assert manager._attempts[(MODEL, 2)].failures == 1  # pylint: disable=protected-access
    assert status_of(manager)[2] == ("LOADING", Code.UNAVAILABLE.value[0])


def test_a_version_with_other_signatures_does_not_displace_the_served_one(
        root_with_good_version, caplog):
    other = OtherShape()
    tf.saved_model.save(other, str(root_with_good_version / "2"),
                        signatures={"double": other.double})
    manager = ModelManager([ModelEntry(MODEL, str(root_with_good_version))])
    with caplog.at_level(logging.ERROR, logger="serving.model_manager"):
        manager.poll_once()
    assert sorted(manager.versions(MODEL)) == [1]
    reason = manager.failed_versions(MODEL)[2]
    assert "incompatible with version 1" in reason and "missing: decode, slow" in reason
    assert any("not serving probe version 2" in r.getMessage() for r in caplog.records)
    assert status_of(manager)[2] == ("END", Code.FAILED_PRECONDITION.value[0])

    allowing = ModelManager([ModelEntry(MODEL, str(root_with_good_version))],
                            allow_signature_change=True)
    allowing.poll_once()
    assert sorted(allowing.versions(MODEL)) == [1, 2]


def test_a_changed_input_shape_is_named_in_the_refusal(root_with_good_version):
    probe, other = Probe(), OtherShape()
    tf.saved_model.save(other, str(root_with_good_version / "2"), signatures={
        "double": other.double, "decode": probe.decode, "slow": probe.slow})
    manager = ModelManager([ModelEntry(MODEL, str(root_with_good_version))])
    manager.poll_once()
    reason = manager.failed_versions(MODEL)[2]
    assert "signature 'double' inputs differ" in reason and "(-1, 5)" in reason
