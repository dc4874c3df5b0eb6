"""Issue 14 (item 3): Prometheus metrics, as ``tensorflow_model_server --monitoring_config_file``.

One real ``cmgan serve`` process on 127.0.0.1 with ``--rest-api-port`` and
``--monitoring-config-file`` (a non-default ``path``) is sent gRPC and REST predictions, some
failing; its metrics page is parsed as Prometheus text by a small strict parser written here
(and cross-checked with prometheus_client's parser when that is installed) and the counts are
compared with what was sent. Loads, unloads and failed loads are checked on the same process and
on an in-process ModelManager. Every wait is bounded; the process is stopped at the end.
"""
from __future__ import annotations

import http.client
import json
import math
import re
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
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import config_files, metrics
from conftest import START_TIMEOUT_S, cmgan_addresses, free_port

REPO = Path(__file__).resolve().parents[1]
MODEL = "probe"
METRICS_PATH = "/monitoring/custom/metrics"  # not the default: the config's path is honoured
REQUESTS = ":tensorflow:serving:request_count"
LATENCY = ":tensorflow:serving:request_latency"
EVENTS = ":cmgan:serving:model_version_events"
AVAILABLE = ":cmgan:serving:available_versions"
VERSION_AVAILABLE = ":cmgan:serving:version_available"


class Probe(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def scale(self, x):
        return {"doubled": x * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def norm(self, x):
        return {"y": tf.math.l2_normalize(x, axis=1)}


def save_probe(path: Path) -> None:
    probe = Probe()
    tf.saved_model.save(probe, str(path), signatures={"serving_default": probe.scale,
                                                      "norm": probe.norm})


# --------------------------------------------------------------------------- a strict parser
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_VALUE = re.compile(r"[+-]?(?:Inf|NaN|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def _float(text: str) -> float:
    return float(text.replace("Inf", "inf").replace("NaN", "nan"))


def parse_prometheus(page: str) -> dict:
    """{family: {"type", "help", "samples": [(name, labels, value)]}}; any departure from the
    text format (0.0.4) that this server could make fails the test."""
    assert page.endswith("\n"), "the page must end with a line feed"
    families: dict = {}
    closed, current, seen = set(), None, set()

    def family_of(name: str) -> str:
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[:-len(suffix)]
            if name.endswith(suffix) and families.get(base, {}).get("type") == "histogram":
                return base
        return name

    def enter(name: str) -> dict:
        nonlocal current
        if name != current:
            assert name not in closed, f"the lines of {name} are not contiguous"
            if current is not None:
                closed.add(current)
            current = name
        return families.setdefault(name, {"type": "untyped", "help": None, "samples": []})

    for number, line in enumerate(page[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        assert line, f"{where}: empty line"
        if line.startswith("#"):
            match = re.fullmatch(rf"# (HELP|TYPE) ({_NAME}) (.*)", line)
            if not match:
                assert not re.match(r"# (HELP|TYPE) ", line), where
                continue  # a comment
            kind, name, text = match.groups()
            family = enter(name)
            if kind == "HELP":
                assert family["help"] is None, f"{where}: second HELP"
                assert re.fullmatch(r"(?:[^\\]|\\[\\n])*", text), f"{where}: bad escape"
                family["help"] = _unescape(text)
            else:
                assert text in _TYPES, where
                assert not family["samples"] and family.get("typed") is None, \
                    f"{where}: TYPE after samples or twice"
                family["type"], family["typed"] = text, True
            continue
        match = re.match(_NAME, line)
        assert match, f"{where}: no metric name"
        name, rest = match.group(), line[match.end():]
        labels = {}
        if rest.startswith("{"):
            position = 1
            while rest[position] != "}":
                label = _LABEL.match(rest, position)
                assert label, f"{where}: bad label at {position}"
                assert label.group(1) not in labels, f"{where}: repeated label"
                labels[label.group(1)] = _unescape(label.group(2))
                position = label.end()
                if rest[position] == ",":
                    position += 1
                else:
                    assert rest[position] == "}", f"{where}: expected , or }}"
            rest = rest[position + 1:]
        value = re.fullmatch(r" (\S+)(?: -?\d+)?", rest)
        assert value and _VALUE.fullmatch(value.group(1)), f"{where}: bad value"
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen, f"{where}: repeated sample"
        seen.add(key)
        enter(family_of(name))["samples"].append((name, labels, _float(value.group(1))))
    for name, family in families.items():
        if family["type"] == "histogram":
            check_histogram(name, family["samples"])
    return families


def check_histogram(name: str, samples: list) -> None:
    """Per label set: le ascending, ending at +Inf, cumulative counts, _count = +Inf bucket."""
    groups: dict = {}
    for sample, labels, value in samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        group = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if sample == name + "_bucket":
            group["buckets"].append((_float(labels["le"]), value))
        elif sample == name + "_sum":
            assert "le" not in labels
            group["sum"] = value
        elif sample == name + "_count":
            assert "le" not in labels
            group["count"] = value
        else:
            pytest.fail(f"{sample} in histogram {name}")
    for rest, group in groups.items():
        bounds = [b for b, _ in group["buckets"]]
        counts = [c for _, c in group["buckets"]]
        assert bounds and bounds == sorted(bounds) and len(set(bounds)) == len(bounds), rest
        assert math.isinf(bounds[-1]), f"{name}{rest}: no +Inf bucket"
        assert counts == sorted(counts), f"{name}{rest}: buckets not cumulative"
        assert group["count"] == counts[-1], f"{name}{rest}: _count != +Inf bucket"
        assert group["sum"] is not None and group["sum"] >= 0


def value(families: dict, sample: str, family: str = None, **labels) -> float:
    """The value of the sample with exactly these labels; 0 when the page lacks it."""
    samples = families.get(family or sample, {}).get("samples", [])
    found = [v for name, got, v in samples if name == sample and got == labels]
    assert len(found) <= 1
    return found[0] if found else 0.0


# --------------------------------------------------------------------------- the server
def serve_process(*args: str):
    """``cmgan serve <args>``; yields the announced addresses once it printed "serving"."""
    return cmgan_addresses("serve", "serving ", *args)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics_root")
    save_probe(root / MODEL / "1")
    return root


@pytest.fixture(scope="module")
def server(root):
    config = config_files.write_model_config(  # latest 1: a new version replaces the old
        str(root / "models.config"), [config_files.ModelEntry(MODEL, str(root / MODEL), 1)])
    monitoring = root / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    with serve_process("--model-config-file", config, "--port", "0",
                       "--rest-api-port", str(free_port()), "--poll-seconds", "1",
                       "--monitoring-config-file", str(monitoring)) as addresses:
        yield addresses


def http_get(address: str, path: str, method: str = "GET"):
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def scrape(server) -> dict:
    status, content_type, body = http_get(server["rest"], METRICS_PATH)
    assert status == 200, body
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    page = body.decode("utf-8")
    families = parse_prometheus(page)
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        return families
    theirs = {f.name: len(f.samples) for f in text_string_to_metric_families(page)}
    assert theirs == {name: len(f["samples"]) for name, f in families.items()}
    return families


def rest_predict(server, body: dict, path=f"/v1/models/{MODEL}:predict") -> int:
    host, port = server["rest"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", path, body=json.dumps(body).encode())
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def grpc_request(signature: str, x: np.ndarray, model: str = MODEL):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    return request


def requests_of(families, entrypoint, status, signature="serving_default", version="1",
                model=MODEL) -> float:
    return value(families, REQUESTS, model_name=model, version=version,
                 signature_name=signature, API="Predict", entrypoint=entrypoint, status=status)


def latency_count(families, entrypoint, signature="serving_default", version="1") -> float:
    return value(families, LATENCY + "_count", LATENCY, model_name=MODEL, version=version,
                 signature_name=signature, API="Predict", entrypoint=entrypoint)


# --------------------------------------------------------------------------- tests
def test_requests_of_both_apis_are_counted(server):
    before = scrape(server)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    grpc_calls, rest_calls = 4, 3
    with grpc.insecure_channel(server["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(grpc_calls):
            stub.Predict(grpc_request("serving_default", x), timeout=60)
        with pytest.raises(grpc.RpcError) as caught:  # an unknown signature
            stub.Predict(grpc_request("nope", x), timeout=60)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for _ in range(rest_calls):
        assert rest_predict(server, {"instances": x.tolist()}) == 200
    assert rest_predict(server, {"signature_name": "norm", "inputs": x.tolist()}) == 200
    assert rest_predict(server, {"inputs": {"wrong": x.tolist()}}) == 400
    assert rest_predict(server, {"instances": x.tolist()}, "/v1/models/nothere:predict") == 404
    after = scrape(server)

    def sent(*args, **kwargs):
        return requests_of(after, *args, **kwargs) - requests_of(before, *args, **kwargs)

    assert sent("GRPC", "OK") == grpc_calls
    assert sent("REST", "OK") == rest_calls
    assert sent("REST", "OK", signature="norm") == 1
    assert sent("GRPC", "FAILED_PRECONDITION", signature="", version="1") == 1
    assert sent("REST", "INVALID_ARGUMENT") == 1
    # An unknown model is counted with model_name="": clients cannot grow the page at will.
    assert sent("REST", "NOT_FOUND", signature="", version="", model="") == 1
    assert not any(labels["model_name"] == "nothere"
                   for _, labels, _ in after[REQUESTS]["samples"])
    total = sum(v for _, _, v in after[REQUESTS]["samples"])
    assert total - sum(v for _, _, v in before.get(REQUESTS, {"samples": []})["samples"]) == \
        grpc_calls + 1 + rest_calls + 3

    # Latency: successful requests only (as TF Serving), one observation each.
    for entrypoint, signature, count in (("GRPC", "serving_default", grpc_calls),
                                         ("REST", "serving_default", rest_calls),
                                         ("REST", "norm", 1)):
        assert (latency_count(after, entrypoint, signature)
                - latency_count(before, entrypoint, signature)) == count
        assert latency_count(after, entrypoint, signature) == \
            requests_of(after, entrypoint, "OK", signature)
    assert after[REQUESTS]["type"] == "counter" and after[LATENCY]["type"] == "histogram"
    assert "microseconds" in after[LATENCY]["help"]
    bounds = sorted({labels["le"] for name, labels, _ in after[LATENCY]["samples"]
                     if name.endswith("_bucket")}, key=_float)
    assert [_float(b) for b in bounds[:3]] == [10, 18, 32.4] and bounds[-1] == "+Inf"
    assert value(after, LATENCY + "_sum", LATENCY, model_name=MODEL, version="1",
                 signature_name="serving_default", API="Predict", entrypoint="GRPC") > 0


def test_the_load_is_reported(server):
    families = scrape(server)
    assert value(families, EVENTS, model_name=MODEL, version="1", event="load",
                 outcome="success") == 1
    assert value(families, AVAILABLE, model_name=MODEL) == 1
    assert value(families, VERSION_AVAILABLE, model_name=MODEL, version="1") == 1
    assert families[AVAILABLE]["type"] == families[VERSION_AVAILABLE]["type"] == "gauge"
    assert families[EVENTS]["type"] == "counter"


def test_only_the_configured_path_serves_metrics(server):
    status, _, _ = http_get(server["rest"], metrics.DEFAULT_PROMETHEUS_PATH)
    assert status == 404
    status, _, body = http_get(server["rest"], METRICS_PATH, "POST")
    assert status == 405, body
    assert server["metrics"] == f"http://{server['rest']}{METRICS_PATH}"
    status, _, _ = http_get(server["rest"], METRICS_PATH + "?x=1")  # a query is ignored
    assert status == 200


def test_a_new_version_loads_and_the_old_one_unloads(server, root):
    staging = root / MODEL / "staging-2"
    shutil.copytree(root / MODEL / "1", staging)
    staging.rename(root / MODEL / "2")
    deadline = time.monotonic() + 120
    while True:
        families = scrape(server)
        if value(families, VERSION_AVAILABLE, model_name=MODEL, version="2"):
            break
        assert time.monotonic() < deadline, "version 2 was not served within 120 s"
        time.sleep(0.5)
    assert value(families, EVENTS, model_name=MODEL, version="2", event="load",
                 outcome="success") == 1
    assert value(families, EVENTS, model_name=MODEL, version="1", event="unload",
                 outcome="success") == 1
    assert value(families, VERSION_AVAILABLE, model_name=MODEL, version="1") == 0  # gone
    assert value(families, AVAILABLE, model_name=MODEL) == 1
    assert rest_predict(server, {"instances": [[1.0, 2.0, 3.0, 4.0]]}) == 200
    assert requests_of(scrape(server), "REST", "OK", version="2") == 1


# --------------------------------------------------------------------------- in process
def test_failed_loads_and_the_disabled_page(root, tmp_path):
    from serving.model_manager import ModelManager
    from serving.rest_api import RestOptions, make_server

    base = tmp_path / MODEL
    shutil.copytree(root / MODEL / "1", base / "1")
    (base / "3").mkdir()
    (base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
    manager = ModelManager([config_files.ModelEntry(MODEL, str(base))], poll_seconds=60,
                           max_load_retries=1, retry_base_seconds=0)
    manager.poll_once()
    manager.poll_once()  # the retry fails too: given up (END)
    families = parse_prometheus(manager.metrics.render())
    events = {(labels["version"], labels["event"], labels["outcome"]): v
              for _, labels, v in families[EVENTS]["samples"]}
    assert events == {("1", "load", "success"): 1, ("3", "load", "fail"): 1,
                      ("3", "load", "end"): 1}
    assert value(families, AVAILABLE, model_name=MODEL) == 1

    # Without a monitoring config the path is an ordinary unknown path: 404.
    rest = make_server(manager, RestOptions(port=0))
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    try:
        address = "127.0.0.1:%d" % rest.server_address[1]
        status, content_type, _ = http_get(address, metrics.DEFAULT_PROMETHEUS_PATH)
        assert status == 404 and content_type == "application/json"
    finally:
        rest.shutdown()
        rest.server_close()


# --------------------------------------------------------------------------- the format
def test_text_format_escapes_and_histograms():
    registry = metrics.Registry()
    counter = registry.counter("a:b_c", "help with \\ and\nnewline", ("model_name",))
    counter.inc(model_name='we"ird\\na\nme')
    counter.inc(2, model_name="plain")
    histogram = registry.histogram("h", "latency", ("m",), [1, 2.5, 10])
    for observed in (0.5, 1, 2, 11):  # le is inclusive: 1 falls in le="1"
        histogram.observe(observed, m="x")
    page = registry.render()
    families = parse_prometheus(page)
    assert families["a:b_c"]["help"] == "help with \\ and\nnewline"
    assert value(families, "a:b_c", model_name='we"ird\\na\nme') == 1
    assert value(families, "a:b_c", model_name="plain") == 2
    buckets = [(labels["le"], v) for name, labels, v in families["h"]["samples"]
               if name == "h_bucket"]
    assert buckets == [("1", 2), ("2.5", 3), ("10", 3), ("+Inf", 4)]
    assert value(families, "h_sum", "h", m="x") == 14.5
    assert value(families, "h_count", "h", m="x") == 4
    with pytest.raises(ValueError):
        registry.counter("1bad", "x")
    with pytest.raises(ValueError):
        registry.counter("ok", "x", ("le",))
    with pytest.raises(ValueError):
        counter.inc(model_name="x", extra="y")


def test_monitoring_config_files(tmp_path):
    text = metrics.monitoring_config_text()
    assert metrics.parse_monitoring_config(text) == metrics.PrometheusSettings(
        True, "/monitoring/prometheus/metrics")
    assert metrics.parse_monitoring_config("prometheus_config { enable: true }").path == \
        metrics.DEFAULT_PROMETHEUS_PATH  # TF Serving's default path
    assert not metrics.parse_monitoring_config("").enabled
    for bad in ("prometheus_config { enabled: true }", 'prometheus_config { path: "x y" }',
                'prometheus_config { enable: true, path: "/v1/models/m" }'):
        with pytest.raises(metrics.MonitoringConfigError):
            metrics.parse_monitoring_config(bad)
    written = config_files.write_monitoring_config(str(tmp_path / "monitoring.config"))
    assert metrics.read_monitoring_config(written).enabled


@pytest.mark.parametrize("content, message", [
    ('prometheus_config { enable: true }', "--monitoring-config-file needs --rest-api-port"),
    ("prometheus_config { bogus: 1 }", "not a MonitoringConfig text proto")])
def test_unusable_monitoring_flags_fail_with_one_line(tmp_path, content, message):
    config = tmp_path / "monitoring.config"
    config.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "serve", "--model-base-path", str(tmp_path),
         "--port", "0", "--monitoring-config-file", str(config)]
        + (["--rest-api-port", str(free_port())] if "bogus" in content else []),
        cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
