"""Issue 14 (item 1): server-side batching, ``cmgan serve --enable-batching``.

The scheduler (serving/batching.py) is tested with real threads and a compute function that
waits for the test to let it go, so which requests share a batch is decided by the test, not by
timing. The server is one real ``cmgan serve`` process on 127.0.0.1 serving a small SavedModel
whose signatures sleep in-graph (tf.data's sleep: no CPU burnt), so that concurrent requests
arrive while a batch is being computed; its Prometheus page shows the batches. No test asserts
a duration.
"""
from __future__ import annotations

import http.client
import json
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing as data_testing
from tensorflow_serving.apis import predict_pb2

from serving import batching, config_files
from serving.servable import ServingError
from conftest import cmgan_addresses, free_port, prediction_stub
from test_metrics_endpoint import http_get, parse_prometheus, value

MODEL = "sleepy"
METRICS_PATH = "/monitoring/prometheus/metrics"
MAX_BATCH = 8
ALLOWED = (4, 8)
MAX_ENQUEUED = 2
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
BATCH_SIZE = ":tensorflow:serving:batching:batch_size"
PROCESSED = ":tensorflow:serving:batching:processed_batch_size_v2"


# --------------------------------------------------------------------------- the scheduler
class Gate:
    """A compute function that blocks until ``release``; records the merged inputs it got."""

    def __init__(self):
        self.calls: list[dict] = []
        self.entered = threading.Semaphore(0)
        self.open = threading.Event()

    def __call__(self, inputs: dict) -> dict:
        self.calls.append(inputs)
        self.entered.release()
        assert self.open.wait(30)
        x = inputs["x"]
        return {"y": x * 10 + inputs.get("offset", 0), "rows": np.full(len(x), len(x))}


def params(**fields) -> batching.BatchingParameters:
    fields = {"max_batch_size": 4, "num_batch_threads": 1, "max_enqueued_batches": 4, **fields}
    return batching.BatchingParameters(**fields)


def submit(batcher, gate, x, offset=None, results=None, key="model"):
    """``batcher.run`` on a thread; its outputs or error land in ``results[id]``."""
    results = results if results is not None else {}
    inputs = {"x": x} if offset is None else {"x": x, "offset": np.float32(offset)}

    def call():
        try:
            results[id(x)] = batcher.run(key, inputs, ["x"], gate)
        except ServingError as error:
            results[id(x)] = error

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def rows(start: int, count: int) -> np.ndarray:
    return np.arange(start, start + count, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)


def wait_queued(batcher, batches: int, tasks: int) -> None:
    """Until the queues hold ``batches`` batches of ``tasks`` tasks in all (bounded)."""
    for _ in range(600):
        queued = batcher.queued()
        if len(queued) == batches and sum(queued) == tasks:
            return
        threading.Event().wait(0.05)
    pytest.fail(f"the batcher did not queue {batches} batches of {tasks} tasks")


def test_concurrent_tasks_merge_and_each_gets_its_rows():
    gate, results = Gate(), {}
    batcher = batching.Batcher(params(max_batch_size=8))
    try:
        blocker = rows(100, 1)
        threads = [submit(batcher, gate, blocker, results=results)]
        assert gate.entered.acquire(timeout=30)  # the one batch thread is busy now
        inputs = [rows(0, 1), rows(10, 3), rows(20, 2)]
        threads += [submit(batcher, gate, x, results=results) for x in inputs]
        wait_queued(batcher, 1, 3)
        gate.open.set()
        for thread in threads:
            thread.join(30)
    finally:
        batcher.stop()
    assert [len(call["x"]) for call in gate.calls] == [1, 6]  # the three queued ones: one call
    for x in [blocker] + inputs:
        np.testing.assert_array_equal(results[id(x)]["y"], x * 10)
    assert results[id(inputs[1])]["rows"].tolist() == [6, 6, 6]


def test_unequal_scalars_and_shapes_are_not_merged():
    gate, results = Gate(), {}
    batcher = batching.Batcher(params(max_batch_size=8))
    try:
        threads = [submit(batcher, gate, rows(100, 1), offset=0, results=results)]
        assert gate.entered.acquire(timeout=30)
        inputs = [(rows(0, 1), 1), (rows(10, 2), 1), (rows(20, 1), 2),
                  (np.ones((1, 3), np.float32), 1)]  # another inner shape
        threads += [submit(batcher, gate, x, offset, results) for x, offset in inputs]
        wait_queued(batcher, 3, 4)
        gate.open.set()
        for thread in threads:
            thread.join(30)
    finally:
        batcher.stop()
    assert sorted(len(call["x"]) for call in gate.calls) == [1, 1, 1, 3]
    for x, offset in inputs:
        np.testing.assert_array_equal(results[id(x)]["y"], x * 10 + offset)


def test_batches_are_padded_to_an_allowed_size_and_the_padding_is_dropped():
    gate, results = Gate(), {}
    gate.open.set()
    batcher = batching.Batcher(params(max_batch_size=8, allowed_batch_sizes=(4, 8)))
    try:
        for x in (rows(0, 3), rows(10, 5)):
            submit(batcher, gate, x, results=results).join(30)
            np.testing.assert_array_equal(results[id(x)]["y"], x * 10)
    finally:
        batcher.stop()
    assert [len(call["x"]) for call in gate.calls] == [4, 8]
    assert gate.calls[0]["x"][3].tolist() == gate.calls[0]["x"][0].tolist()  # the first row


def test_a_full_queue_answers_unavailable_and_work_continues():
    gate, results = Gate(), {}
    batcher = batching.Batcher(params(max_batch_size=2, max_enqueued_batches=1))
    try:
        running, queued, refused = rows(0, 2), rows(10, 2), rows(20, 1)
        threads = [submit(batcher, gate, running, results=results)]
        assert gate.entered.acquire(timeout=30)
        threads.append(submit(batcher, gate, queued, results=results))
        wait_queued(batcher, 1, 1)
        submit(batcher, gate, refused, results=results).join(30)  # answered at once
        error = results[id(refused)]
        assert isinstance(error, ServingError) and error.code == grpc.StatusCode.UNAVAILABLE
        assert "queue" in str(error) and "full" in str(error)
        gate.open.set()
        for thread in threads:
            thread.join(30)
        after = rows(30, 1)
        submit(batcher, gate, after, results=results).join(30)
    finally:
        batcher.stop()
    for x in (running, queued, after):
        np.testing.assert_array_equal(results[id(x)]["y"], x * 10)


def test_a_task_larger_than_max_batch_size_is_refused():
    batcher = batching.Batcher(params(max_batch_size=4))
    try:
        with pytest.raises(ServingError) as caught:
            batcher.run("model", {"x": rows(0, 5)}, ["x"], Gate())
    finally:
        batcher.stop()
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Task size 5 is larger than maximum input batch size 4" in str(caught.value)


def test_a_failing_batch_fails_each_of_its_callers():
    def broken(inputs):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "bad rows")

    batcher = batching.Batcher(params())
    try:
        with pytest.raises(ServingError, match="bad rows"):
            batcher.run("model", {"x": rows(0, 1)}, ["x"], broken)
    finally:
        batcher.stop()


# --------------------------------------------------------------------------- the file
def test_the_written_file_is_read_back(tmp_path):
    path = config_files.write_batching_parameters(
        str(tmp_path / "batching_parameters.txt"), max_batch_size=32,
        batch_timeout_micros=500, num_batch_threads=3, max_enqueued_batches=7,
        allowed_batch_sizes=(8, 32))
    assert batching.read_batching_parameters(path) == batching.BatchingParameters(
        max_batch_size=32, batch_timeout_micros=500, num_batch_threads=3,
        max_enqueued_batches=7, allowed_batch_sizes=(8, 32))
    defaults = batching.parse_batching_parameters("max_batch_size { value: 16 }")
    assert (defaults.max_batch_size, defaults.max_enqueued_batches,
            defaults.batch_timeout_micros) == (16, 10, 0)  # TF's scheduler defaults


@pytest.mark.parametrize("text, field", [
    ("max_batch { value: 3 }", 'no field named "max_batch"'),
    ("max_batch_size { value: 0 }", "max_batch_size must be at least 1"),
    ("num_batch_threads { value: 0 }", "num_batch_threads must be at least 1"),
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: 4", "allowed_batch_sizes (4) must "
                                                            "equal max_batch_size (8)"),
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 4",
     "allowed_batch_sizes must be positive and increasing"),
    ("max_batch_size: 8", "max_batch_size"),
])
def test_bad_files_name_the_file_and_field(tmp_path, text, field):
    path = tmp_path / "batching.txt"
    path.write_text(text)
    with pytest.raises(batching.BatchingConfigError) as caught:
        batching.read_batching_parameters(str(path))
    assert str(caught.value).startswith(str(path)) and field in str(caught.value)


def test_serve_refuses_a_bad_file_with_one_line(tmp_path, capsys):
    from pipeline import cli

    bad = tmp_path / "batching.txt"
    bad.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    for flags, message in (
            (["--enable-batching", "--batching-parameters-file", str(bad)],
             f"cmgan serve: {bad}: the last of allowed_batch_sizes (4) must equal "
             "max_batch_size (8)"),
            (["--enable-batching", "--batching-parameters-file", str(tmp_path / "missing")],
             f"cannot read the batching parameters file {tmp_path / 'missing'}"),
            (["--batching-parameters-file", str(bad)],
             "--batching-parameters-file needs --enable-batching")):
        args = cli.build_parser().parse_args(["serve", "--port", "0", "--model-base-path",
                                              str(tmp_path), *flags])
        assert args.func(args) == 2  # before anything is loaded or bound
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, error


# --------------------------------------------------------------------------- the server
def _sleep(micros: int) -> tf.Tensor:
    """0, after sleeping ``micros`` in-graph (a SavedModel op, unlike time.sleep)."""
    slept = tf.data.Dataset.range(1).apply(data_testing.sleep(micros))
    return tf.cast(slept.reduce(tf.constant(0, tf.int64), lambda a, b: a + b), tf.float32)


class Sleepy(tf.Module):
    def __init__(self):
        super().__init__()
        self.weights = tf.Variable(WEIGHTS)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                  tf.TensorSpec([], tf.float32, name="factor")])
    def scaled(self, x, factor):
        """Each row's own product; ``rows``: how many rows the call that computed it had."""
        y = (x @ self.weights) * factor + _sleep(300_000)
        return {"y": y, "rows": tf.fill([tf.shape(x)[0]], tf.shape(x)[0])}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def slow(self, x):
        return {"y": x + _sleep(1_500_000)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching_root")
    module = Sleepy()
    tf.saved_model.save(module, str(root / MODEL / "1"),
                        signatures={"scaled": module.scaled, "slow": module.slow})
    config = config_files.write_model_config(
        str(root / "models.config"), [config_files.ModelEntry(MODEL, str(root / MODEL))])
    parameters = config_files.write_batching_parameters(
        str(root / "batching_parameters.txt"), max_batch_size=MAX_BATCH,
        batch_timeout_micros=0, num_batch_threads=1, max_enqueued_batches=MAX_ENQUEUED,
        allowed_batch_sizes=ALLOWED)
    monitoring = config_files.write_monitoring_config(str(root / "monitoring.config"))
    with cmgan_addresses("serve", "serving ", "--model-config-file", config, "--port", "0",
                         "--rest-api-port", str(free_port()), "--poll-seconds", "60",
                         "--monitoring-config-file", monitoring, "--enable-batching",
                         "--batching-parameters-file", parameters) as addresses:
        yield addresses


@pytest.fixture(scope="module")
def stub(server):
    with prediction_stub(server["grpc"]) as service:
        yield service


def request(signature: str, x: np.ndarray, factor=None) -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = MODEL
    message.model_spec.signature_name = signature
    message.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    if factor is not None:
        message.inputs["factor"].CopyFrom(tf.make_tensor_proto(np.float32(factor)))
    return message


def concurrently(stub, requests: list) -> list:
    """All requests at once (one thread each, released together): outputs or the RpcError."""
    answers = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def send(i):
        start.wait(60)
        try:
            response = stub.Predict(requests[i], timeout=120)
            answers[i] = {a: tf.make_ndarray(p) for a, p in response.outputs.items()}
        except grpc.RpcError as error:
            answers[i] = error

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return answers


def scrape(server) -> dict:
    status, _, body = http_get(server["rest"], METRICS_PATH)
    assert status == 200, body
    return parse_prometheus(body.decode("utf-8"))


def batches(families, signature: str) -> tuple[float, float]:
    """(batches run, rows in them) of ``signature``, from the batch size histogram."""
    labels = dict(model_name=MODEL, op_name=signature)
    return (value(families, BATCH_SIZE + "_count", BATCH_SIZE, **labels),
            value(families, BATCH_SIZE + "_sum", BATCH_SIZE, **labels))


def test_concurrent_requests_are_merged_and_answered_with_their_own_rows(server, stub):
    generator = np.random.default_rng(0)
    sent = [(generator.normal(size=(1 + i % 3, 4)).astype(np.float32), 1.0 + i % 2)
            for i in range(8)]
    before = batches(scrape(server), "scaled")
    answers = concurrently(stub, [request("scaled", x, factor) for x, factor in sent])
    for (x, factor), answer in zip(sent, answers):
        assert isinstance(answer, dict), answer
        np.testing.assert_allclose(answer["y"], (x @ WEIGHTS) * factor, rtol=1e-5, atol=1e-6)
        assert len(answer["rows"]) == len(x)
        assert set(answer["rows"].tolist()) <= set(ALLOWED)  # padded to an allowed size
    count, total = batches(scrape(server), "scaled")
    assert total - before[1] == sum(len(x) for x, _ in sent)  # every row, no padding
    assert count - before[0] < len(sent)  # fewer calls than requests: some were merged
    families = scrape(server)
    processed = {labels["batch_size"] for _, labels, v in families[PROCESSED]["samples"]
                 if labels["op_name"] == "scaled"}
    assert processed <= {str(size) for size in ALLOWED}


def test_rest_predict_goes_through_the_batcher(server):
    x = np.ones((2, 4), np.float32)
    before = batches(scrape(server), "scaled")
    host, port = server["rest"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        connection.request("POST", f"/v1/models/{MODEL}:predict", body=json.dumps(
            {"signature_name": "scaled", "inputs": {"x": x.tolist(), "factor": 2.0}}))
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200, answer
    np.testing.assert_allclose(answer["outputs"]["y"], (x @ WEIGHTS) * 2, rtol=1e-5, atol=1e-6)
    assert batches(scrape(server), "scaled")[1] - before[1] == 2


def test_a_request_larger_than_max_batch_size_is_refused(server, stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request("scaled", np.ones((MAX_BATCH + 1, 4), np.float32), 1.0),
                     timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than maximum input batch size" in caught.value.details()


def test_a_full_queue_answers_unavailable_and_serving_continues(server, stub):
    full = np.ones((MAX_BATCH, 4), np.float32)  # each request is a whole batch
    answers = concurrently(stub, [request("slow", full) for _ in range(MAX_ENQUEUED + 4)])
    refused = [a for a in answers if isinstance(a, grpc.RpcError)]
    assert refused and all(a.code() == grpc.StatusCode.UNAVAILABLE for a in refused)
    assert "queue" in refused[0].details() and "full" in refused[0].details()
    served = [a for a in answers if isinstance(a, dict)]
    assert served and all(np.array_equal(a["y"], full) for a in served)
    x = np.ones((1, 4), np.float32)  # afterwards: answered again
    response = stub.Predict(request("scaled", x, 3.0), timeout=120)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), (x @ WEIGHTS) * 3,
                               rtol=1e-5, atol=1e-6)


def test_write_config_gives_a_batching_server_the_encoders_only(tmp_path, capsys):
    from pipeline import cli

    args = cli.build_parser().parse_args(["serve", "--write-config", str(tmp_path),
                                          "--model-name", "cmgan"])
    assert args.func(args) == 0
    assert "encoders.config" in capsys.readouterr().out
    assert [e.name for e in config_files.read_model_config(str(tmp_path / "models.config"))] \
        == ["cmgan", "cmgan-search"]
    assert [e.name for e in config_files.read_model_config(
        str(tmp_path / "encoders.config"))] == ["cmgan"]
    assert batching.read_batching_parameters(str(tmp_path / "batching_parameters.txt")) \
        .max_batch_size == 64
