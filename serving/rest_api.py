"""TF Serving's REST API (``cmgan serve --rest-api-port``) over the models the gRPC server serves.

The routes of ``tensorflow_model_server --rest_api_port``:

- ``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict`` with the row format
  (``{"signature_name": ..., "instances": [...]}``) or the columnar one (``{"inputs": ...}``);
  string (DT_STRING) values are JSON strings or ``{"b64": "..."}``;
- ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]``: the model version status;
- ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata``: the signature_def map.

The JSON is turned into a PredictRequest with the dtypes of the signature of the version that
answers, and run by the gRPC services' own code (serving/server.py: ``PredictionService.predict``,
``GetModelMetadata``, ``GetModelStatus``), so the checks, limits (rows, declared sizes, image
pixels), deadline, chunking and messages are those of gRPC. Errors are ``{"error": message}``
with the HTTP status TF Serving gives the gRPC code (400 INVALID_ARGUMENT, 404 NOT_FOUND,
503 UNAVAILABLE...); a body larger than ``RestOptions.max_body_bytes`` is 413, checked from
its Content-Length before anything is read.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import http.server
import json
import logging
import re
import select
import socket
import threading
import time
import urllib.parse
from typing import Optional

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     predict_pb2)

from serving import metrics
from serving.model_manager import ModelManager
from serving.predict import check_input_names, signature_def
from serving.servable import ServingError
from serving.server import (SIGNATURE_DEF_FIELD, ModelService, PredictionService,
                            RequestStats, ServerOptions)
from serving.web import discard_refused_body

log = logging.getLogger(__name__)
Code = grpc.StatusCode

# TF Serving's http_server.cc (ToHTTPStatusCode): the HTTP status of each gRPC code.
HTTP_STATUS = {
    Code.OK: 200, Code.CANCELLED: 499, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504, Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403, Code.RESOURCE_EXHAUSTED: 429, Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409, Code.OUT_OF_RANGE: 400, Code.UNIMPLEMENTED: 501, Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503, Code.DATA_LOSS: 500, Code.UNAUTHENTICATED: 401}
LISTEN_BACKLOG = 128
_VERSION = r"(?:/versions/([^/:]+)|/labels/([^/:]+))?"
PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)" + _VERSION + r":(predict|classify|regress)",
                          re.IGNORECASE)
MODEL_PATH = re.compile(r"/v1/models(?:/([^/:]+))?" + _VERSION + r"(/metadata)?",
                        re.IGNORECASE)
_FLOAT_KINDS = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
_INT_KINDS = (tf.int8, tf.int16, tf.int32, tf.int64, tf.uint8, tf.uint16, tf.uint32, tf.uint64)


@dataclasses.dataclass(frozen=True)
class RestOptions:
    host: str = "127.0.0.1"  # loopback unless told otherwise (``cmgan serve --host``)
    port: int = 8501  # TF Serving's usual REST port; 0 picks a free one here
    max_body_bytes: int = 64 << 20  # larger request bodies get 413 (default: the gRPC limit)
    connection_timeout_s: float = 30.0  # a client silent this long is dropped


class HttpError(Exception):
    """An answer decided by the HTTP layer (411, 413, unknown path), not by a gRPC code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _invalid(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


# --------------------------------------------------------------------------- JSON -> tensors
def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _shape_of(alias: str, value, leaves: list) -> tuple:
    """Appends the scalars of nested lists to ``leaves``; returns their shape (ragged: error)."""
    if not isinstance(value, list):
        leaves.append(value)
        return ()
    inner = None
    for item in value:
        shape = _shape_of(alias, item, leaves)
        if inner is None:
            inner = shape
        elif shape != inner:
            raise _invalid(f"input {alias!r} is ragged: lists at one depth must all have the "
                           f"same length (found shapes {list(inner)} and {list(shape)} "
                           f"side by side)")
    return (len(value),) + (inner or ())


def _leaf(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _strings(alias: str, leaves: list) -> list:
    values = []
    for leaf in leaves:
        if isinstance(leaf, str):
            values.append(leaf.encode("utf-8"))
        elif _is_b64(leaf) and isinstance(leaf["b64"], str):
            try:
                values.append(base64.b64decode(leaf["b64"], validate=True))
            except (binascii.Error, ValueError):
                raise _invalid(f"input {alias!r}: the \"b64\" value is not valid base64 "
                               f"({_leaf(leaf['b64'])})") from None
        else:
            raise _invalid(f"input {alias!r} is a string input (DT_STRING): send strings or "
                           f"{{\"b64\": \"...\"}} objects, not {_leaf(leaf)}")
    return values


def json_tensor(alias: str, value, info):
    """A TensorProto of the signature input's dtype from a JSON value (nested lists)."""
    dtype = tf.dtypes.as_dtype(info.dtype)
    leaves: list = []
    try:
        shape = _shape_of(alias, value, leaves)
    except RecursionError:
        raise _invalid(f"input {alias!r} is nested too deeply") from None
    if dtype == tf.string:
        array = np.empty(len(leaves), dtype=object)
        array[:] = _strings(alias, leaves)
        return tf.make_tensor_proto(array.reshape(shape), dtype=dtype)
    if dtype == tf.bool:
        wrong = next((v for v in leaves if not isinstance(v, bool)), None)
        kind = "true/false"
    elif dtype in _INT_KINDS:
        wrong = next((v for v in leaves if type(v) is not int), None)  # bool is no number
        kind = "integers"
    elif dtype in _FLOAT_KINDS:
        wrong = next((v for v in leaves if type(v) not in (int, float)), None)
        kind = "numbers"
    else:
        raise _invalid(f"input {alias!r} has dtype {dtype.name}, which the REST API does not "
                       "accept; use gRPC")
    if wrong is not None:
        raise _invalid(f"input {alias!r} expects {dtype.name} values ({kind}), got "
                       f"{_leaf(wrong)}")
    if dtype in _INT_KINDS and leaves:
        low, high = min(leaves), max(leaves)
        info_range = np.iinfo(dtype.as_numpy_dtype)
        if low < info_range.min or high > info_range.max:
            bad = low if low < info_range.min else high
            raise _invalid(f"input {alias!r}: {bad} is out of the range of {dtype.name}")
    try:
        array = np.array(leaves, dtype=dtype.as_numpy_dtype).reshape(shape)
    except (OverflowError, ValueError) as error:
        raise _invalid(f"input {alias!r} expects {dtype.name} values: {error}") from None
    return tf.make_tensor_proto(array, dtype=dtype)


def _named(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def predict_request(body: dict, servable, request: predict_pb2.PredictRequest) -> str:
    """Fills ``request``'s signature name and inputs from a JSON body; returns the format,
    ``"row"`` (``instances``) or ``"columnar"`` (``inputs``)."""
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise _invalid("'signature_name' must be a string")
    name, signature = signature_def(servable, name)
    request.model_spec.signature_name = name
    if ("instances" in body) == ("inputs" in body):
        raise _invalid("the request must have exactly one of 'instances' (row format) and "
                       "'inputs' (columnar format)")
    inputs = list(signature.inputs)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise _invalid("'instances' must be a non-empty list, one item per row")
        named = [_named(item) for item in instances]
        if any(named) != all(named):
            raise _invalid("'instances' mixes objects (named inputs) and plain values")
        if all(named):
            keys = set(instances[0])
            for row, item in enumerate(instances):
                if set(item) != keys:
                    raise _invalid(f"instance {row} names the inputs {sorted(item)} but "
                                   f"instance 0 names {sorted(keys)}: every instance must "
                                   "name the same inputs")
            check_input_names(signature, keys)
            columns = {alias: [item[alias] for item in instances] for alias in keys}
        else:
            _single_input(signature, "instance")
            columns = {inputs[0]: instances}
    else:
        value = body["inputs"]
        if _named(value):
            check_input_names(signature, value)
            columns = dict(value)
        else:
            _single_input(signature, "'inputs' value")
            columns = {inputs[0]: value}
    for alias, value in columns.items():
        request.inputs[alias].CopyFrom(json_tensor(alias, value, signature.inputs[alias]))
    return "row" if "instances" in body else "columnar"


def _single_input(signature, what: str) -> None:
    if len(signature.inputs) != 1:
        raise _invalid(f"the signature has {len(signature.inputs)} inputs "
                       f"({', '.join(sorted(signature.inputs))}): each {what} must be an "
                       "object naming them")


# --------------------------------------------------------------------------- tensors -> JSON
def _json_value(alias: str, array: np.ndarray):
    """Nested lists; strings as UTF-8 text, or {"b64": ...} when the output alias ends in
    ``_bytes`` (TF Serving's rule) or the bytes are not UTF-8."""
    if array.dtype == object:
        encode_all = alias.endswith("_bytes")

        def convert(item):
            if isinstance(item, list):
                return [convert(i) for i in item]
            if not encode_all:
                try:
                    return item.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(item).decode("ascii")}

        return convert(array.tolist())
    if array.dtype.kind == "V" or array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    return array.tolist()


def predict_json(response: predict_pb2.PredictResponse, form: str) -> dict:
    """TF Serving's answer: ``predictions`` (one item per row: the value itself with a single
    output, else an object of outputs) for the row format, ``outputs`` for the columnar one."""
    arrays = {alias: tf.make_ndarray(response.outputs[alias])
              for alias in sorted(response.outputs)}
    if form == "columnar":
        if len(arrays) == 1:
            alias, array = next(iter(arrays.items()))
            return {"outputs": _json_value(alias, array)}
        return {"outputs": {alias: _json_value(alias, a) for alias, a in arrays.items()}}
    rows = None
    for alias, array in arrays.items():
        if array.ndim == 0:
            raise _invalid(f"output {alias!r} is a scalar, which the row format ('instances') "
                           "cannot answer; use the columnar format ('inputs')")
        if rows is not None and array.shape[0] != rows:
            raise _invalid(f"output {alias!r} has {array.shape[0]} rows, other outputs "
                           f"{rows}: the row format ('instances') needs one batch size; use "
                           "the columnar format ('inputs')")
        rows = array.shape[0]
    values = {alias: _json_value(alias, array) for alias, array in arrays.items()}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{alias: values[alias][row] for alias in values}
                            for row in range(rows or 0)]}


def _proto_json(message) -> dict:
    """As TF Serving prints protos: field names as in the .proto, default values included."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     including_default_value_fields=True)


# --------------------------------------------------------------------------- requests
class _Context:
    """The part of grpc.ServicerContext the services use: no client deadline (the server's
    --request-timeout-s applies), active while the client's connection is open, and abort
    raises the ServingError that the handler turns into an HTTP answer."""

    def __init__(self, connection: Optional[socket.socket] = None):
        self.connection = connection

    def time_remaining(self):
        return None

    def is_active(self) -> bool:
        """False once the client closed its connection (a readable socket with nothing to
        read); a pipelined next request still reads as active."""
        if self.connection is None or not hasattr(select, "poll"):
            return True
        try:
            poller = select.poll()  # not select.select: it fails on descriptors >= 1024
            poller.register(self.connection, select.POLLIN)
            if not poller.poll(0):
                return True
            return self.connection.recv(1, socket.MSG_PEEK) != b""
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False

    def abort(self, code, details):
        raise ServingError(code, details)


def _model_spec(spec, name: str, version: Optional[str], label: Optional[str]) -> None:
    spec.name = urllib.parse.unquote(name)
    if version is not None:
        if not version.isdigit() or int(version) >= 2**63:
            raise _invalid(f"Failed to convert version: {version} to numeric.")
        spec.version.value = int(version)
    elif label is not None:
        spec.version_label = urllib.parse.unquote(label)


class RestApi:
    """The answers of the REST API, as (HTTP status, JSON object); no HTTP here."""

    def __init__(self, manager: ModelManager, options: ServerOptions = ServerOptions(),
                 stats: Optional[RequestStats] = None, batcher=None):
        self.manager = manager
        self.prediction = PredictionService(manager, options.request_timeout_s,
                                            options.limits(), stats, batcher)
        self.models = ModelService(manager)
        # At most --workers predictions at once, as the gRPC server's thread pool.
        self.slots = threading.BoundedSemaphore(max(1, options.max_workers))
        self.slot_wait_s = options.request_timeout_s

    def predict(self, name: str, version: Optional[str], label: Optional[str], body: bytes,
                context: _Context) -> dict:
        started, servable = time.perf_counter(), None
        request = predict_pb2.PredictRequest()
        try:  # failures before the prediction are counted too (serving/metrics.py)
            _model_spec(request.model_spec, name, version, label)
            if not self.slots.acquire(timeout=self.slot_wait_s):
                raise ServingError(Code.UNAVAILABLE, f"the server is busy: no prediction slot "
                                                     f"freed within {self.slot_wait_s:.0f} s")
        except ServingError as error:
            self.prediction.record(request, None, metrics.REST, error)
            raise
        try:
            try:
                parsed = parse_json(body)
                if isinstance(parsed.get("signature_name"), str):  # the label if it fails
                    request.model_spec.signature_name = parsed["signature_name"]
                servable = self.manager.resolve(request.model_spec)
                form = predict_request(parsed, servable, request)
            except Exception as error:
                self.prediction.record(request, servable, metrics.REST, error)
                raise
            return predict_json(self.prediction.predict(request, context, servable,
                                                        metrics.REST, started), form)
        finally:
            self.slots.release()

    def status(self, name: str, version: Optional[str], label: Optional[str]) -> dict:
        request = get_model_status_pb2.GetModelStatusRequest()
        _model_spec(request.model_spec, name, version, label)
        answer = _proto_json(self.models.GetModelStatus(request, _Context()))
        for entry in answer.get("model_version_status", []):  # TF Serving always says OK
            entry.setdefault("status", {"error_code": "OK", "error_message": ""})
        return answer

    def metadata(self, name: str, version: Optional[str], label: Optional[str]) -> dict:
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        _model_spec(request.model_spec, name, version, label)
        request.metadata_field.append(SIGNATURE_DEF_FIELD)
        response = self.prediction.GetModelMetadata(request, _Context())
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
        return {"model_spec": _proto_json(response.model_spec),
                "metadata": {SIGNATURE_DEF_FIELD: _proto_json(signature_map)}}


def parse_json(body: bytes) -> dict:
    try:
        parsed = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise _invalid(f"JSON Parse error: the body is not UTF-8 ({error.reason} at offset "
                       f"{error.start})") from None
    except json.JSONDecodeError as error:
        raise _invalid(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    except RecursionError:
        raise _invalid("JSON Parse error: nested too deeply") from None
    if not isinstance(parsed, dict):
        raise _invalid("JSON Value is not an object: send {\"instances\": [...]} or "
                       "{\"inputs\": ...}")
    return parsed


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "cmgan-rest"
    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
    api: RestApi  # set on the subclass made by make_server
    options: RestOptions
    metrics_path: Optional[str] = None  # the Prometheus page (--monitoring-config-file)

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        log.debug("%s %s", self.address_string(), format % args)

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, socket.timeout) as error:
            log.info("%s dropped: %s", self.client_address[0], type(error).__name__)
            self.close_connection = True

    def _send(self, status: int, answer: dict) -> None:
        body = json.dumps(answer, indent=None).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes:
        """The request body, at most ``max_body_bytes``; 411/400/413 checked from the headers
        before anything is read (a refused body up to 64 MB is drained, so the client reads
        the answer; a larger one closes the connection)."""
        declared = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HttpError(411, "chunked bodies are not accepted: send a Content-Length")
        if declared is None:
            return b""
        if not declared.strip().isdigit():
            self.close_connection = True
            raise HttpError(400, "the Content-Length is not a length")
        length = int(declared)
        limit = self.options.max_body_bytes
        if length > limit:
            discard_refused_body(self, length)
            raise HttpError(413, f"the request body is {length} bytes; at most {limit} bytes "
                                 "are accepted (--rest-api-max-body-mb)")
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise HttpError(400, f"the body ended after {len(body)} of {length} bytes")
        return body

    def _metrics_page(self, method: str) -> None:
        """The Prometheus text page (serving/metrics.py), GET only."""
        try:
            self._read_body()
            if method != "GET":
                raise HttpError(405, f"{method} is not allowed on {self.metrics_path}: use GET")
        except HttpError as error:
            self._send(error.status, {"error": str(error)})
            return
        body = self.api.prediction.metrics.render().encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", metrics.CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, method: str) -> None:
        if (self.metrics_path is not None
                and urllib.parse.urlsplit(self.path).path == self.metrics_path):
            self._metrics_page(method)
            return
        try:
            status, answer = 200, self._route(method)
        except HttpError as error:
            status, answer = error.status, {"error": str(error)}
        except ServingError as error:
            status, answer = HTTP_STATUS.get(error.code, 500), {"error": str(error)}
        except Exception as error:  # pylint: disable=broad-except
            log.error("REST %s %s failed", method, self.path, exc_info=True)
            status = 500
            answer = {"error": f"internal error ({type(error).__name__}); see the server log"}
        if status >= 500:
            log.warning("REST %s %s: %d %s", method, self.path, status, answer["error"])
        self._send(status, answer)

    def _route(self, method: str) -> dict:
        body = self._read_body()
        path = urllib.parse.urlsplit(self.path).path
        if not path.lower().startswith("/v1/"):
            raise HttpError(404, f"Not found: {path} (the REST API is under /v1/models/)")
        predict = PREDICT_PATH.fullmatch(path)
        if method == "POST" and predict:
            name, version, label, verb = predict.groups()
            if verb.lower() != "predict":
                raise ServingError(Code.UNIMPLEMENTED, f"{verb} is not implemented by this "
                                                       "server; use :predict")
            return self.api.predict(name, version, label, body,
                                    _Context(self.connection))
        model = MODEL_PATH.fullmatch(path)
        if method == "GET" and model:
            name, version, label, metadata = model.groups()
            if not name:
                raise _invalid("Missing model name in request.")
            if metadata:
                return self.api.metadata(name, version, label)
            return self.api.status(name, version, label)
        raise _invalid(f"Malformed request: {method} {path}")

    def do_GET(self):  # noqa: N802
        self._answer("GET")

    def do_POST(self):  # noqa: N802
        self._answer("POST")

    def do_PUT(self):  # noqa: N802
        self._answer("PUT")

    def do_DELETE(self):  # noqa: N802
        self._answer("DELETE")


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def handle_error(self, request, client_address):
        import sys  # pylint: disable=import-outside-toplevel

        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, socket.timeout)):
            log.info("%s dropped: %s", client_address[0], type(error).__name__)
            return
        log.error("REST request from %s failed", client_address[0], exc_info=True)


def make_server(manager: ModelManager, options: RestOptions,
                server_options: ServerOptions = ServerOptions(),
                stats: Optional[RequestStats] = None,
                monitoring: Optional[metrics.PrometheusSettings] = None,
                batcher=None) -> http.server.ThreadingHTTPServer:
    """The REST server, bound but not yet serving: run ``serve_forever`` (e.g. on a thread).
    ``monitoring`` (enabled): the Prometheus page at its path, as TF Serving's
    ``--monitoring_config_file``; otherwise that path is 404 like any unknown one.
    ``batcher``: the gRPC server's (serving/batching.py), so REST predictions join its batches."""
    handler = type("BoundRestHandler", (Handler,), {
        "api": RestApi(manager, server_options, stats, batcher), "options": options,
        "timeout": options.connection_timeout_s,
        "metrics_path": monitoring.path if monitoring and monitoring.enabled else None})
    try:
        return _Server((options.host, options.port), handler)
    except OSError as error:
        raise OSError(f"could not bind the REST API to {options.host}:{options.port}: "
                      f"{error.strerror or error}") from error

