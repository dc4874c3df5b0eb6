"""A gRPC server speaking TF Serving's protocol over ``tf.saved_model.load``.

The C++ ``tensorflow_model_server`` cannot be installed here, so this implements the part of its
API the project uses, with tensorflow-serving-api's own protos and service definitions:
PredictionService.Predict and GetModelMetadata, ModelService.GetModelStatus. Any TF Serving
client (and ``serving/client.py``) talks to either server unchanged.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent import futures
from typing import Optional

import grpc
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, prediction_service_pb2_grpc)

from models.image_decoding import DEFAULT_MAX_IMAGE_PIXELS
from models.signatures import SERVING_DEFAULT
from serving.batching import Batcher
from serving.metrics import GRPC, ServingMetrics
from serving.model_manager import ModelManager
from serving.predict import Limits, Stopped, run_predict
from serving.servable import Servable, ServingError

SIGNATURE_DEF_FIELD = "signature_def"
log = logging.getLogger(__name__)
ModelVersionStatus = get_model_status_pb2.ModelVersionStatus


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8500  # 0 picks a free port
    max_message_bytes: int = 64 << 20  # larger requests get RESOURCE_EXHAUSTED from gRPC
    request_timeout_s: float = 30.0  # server-side cap on top of the client's deadline
    max_workers: int = 16
    max_rows: Optional[int] = None  # rows per Predict; None: sized to max_message_bytes
    chunk_rows: int = 256  # rows per signature call; deadlines are checked between calls
    max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS  # JPEG/PNG inputs, from headers

    def limits(self) -> Limits:
        return Limits(max_message_bytes=self.max_message_bytes, max_rows=self.max_rows,
                      chunk_rows=self.chunk_rows, max_image_pixels=self.max_image_pixels)


class RequestStats:
    """Counters a server keeps for its operator (logged, and read by tests)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.cancelled = 0  # stopped mid-work: deadline passed or client went away
        self.last_cancelled = ""  # the message of the most recent one

    def record_cancelled(self, message: str) -> None:
        with self._lock:
            self.cancelled += 1
            self.last_cancelled = message


def _answer(context, method):
    """Runs ``method()``; a ServingError becomes its status code and message. Anything else is
    logged here with its traceback and answered INTERNAL with one line: no traceback leaves."""
    try:
        return method()
    except ServingError as error:
        context.abort(error.code, str(error))
    except Exception as error:  # pylint: disable=broad-except
        log.error("request failed", exc_info=True)
        context.abort(grpc.StatusCode.INTERNAL,
                      f"internal error ({type(error).__name__}); see the server log")


def _deadline_exceeded(budget_s: float) -> ServingError:
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"request did not complete within its {budget_s:.3f} s deadline")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, request_timeout_s: float,
                 limits: Limits = Limits(), stats: Optional[RequestStats] = None,
                 batcher: Optional[Batcher] = None):
        """``batcher``: server-side batching (serving/batching.py), shared by gRPC and REST."""
        self.manager = manager
        self.request_timeout_s = request_timeout_s
        self.limits = limits
        self.stats = stats if stats is not None else RequestStats()
        self.metrics = getattr(manager, "metrics", None) or ServingMetrics()
        self.batcher = batcher

    def Predict(self, request, context):
        return _answer(context, lambda: self.predict(request, context))

    def predict(self, request, context, servable: Optional[Servable] = None,
                entrypoint: str = GRPC, started: Optional[float] = None):
        """Predict with this server's deadline, limits and cancel count; a ServingError is
        raised, not answered. The REST API (serving/rest_api.py) passes the ``servable`` it
        resolved to read the signature's dtypes, so the JSON is run on that very version.
        Counted in the metrics under ``entrypoint``; the latency runs from ``started``
        (``time.perf_counter()``, default: now)."""
        started = time.perf_counter() if started is None else started
        try:
            servable = servable or self.manager.resolve(request.model_spec)
            response = self._predict(request, context, servable)
        except Exception as error:
            self.record(request, servable, entrypoint, error)
            raise
        self.record(request, servable, entrypoint,
                    latency_us=(time.perf_counter() - started) * 1e6)
        return response

    def record(self, request, servable: Optional[Servable], entrypoint: str,
               error: Optional[BaseException] = None, latency_us: Optional[float] = None):
        """Counts one Predict request (serving/metrics.py). Label values are bounded: a model
        this server does not serve is ``""``, as is a signature the answering version lacks,
        and the version is the answering one's (``""`` when none answered)."""
        spec = request.model_spec
        signature = spec.signature_name or SERVING_DEFAULT
        if servable is None or signature not in servable.signature_defs:
            signature = ""
        status = ("OK" if error is None else error.code.name
                  if isinstance(error, ServingError) else "INTERNAL")
        self.metrics.record_request(
            spec.name if spec.name in self.manager.model_names() else "",
            str(servable.version) if servable is not None else "", signature, entrypoint,
            status, latency_us)

    def _predict(self, request, context, servable: Servable):
        remaining = context.time_remaining()  # None without a client deadline
        budget = min(self.request_timeout_s, remaining if remaining is not None else
                     self.request_timeout_s)
        if budget <= 0:
            raise _deadline_exceeded(budget)
        deadline = time.monotonic() + budget

        def should_stop() -> Optional[ServingError]:
            if time.monotonic() > deadline:
                return _deadline_exceeded(budget)
            if not context.is_active():
                return ServingError(grpc.StatusCode.CANCELLED, "the client cancelled")
            return None

        try:
            response = run_predict(servable, request, self.limits, should_stop, self.batcher)
        except Stopped as stopped:
            self.stats.record_cancelled(str(stopped))
            log.info("Predict %s/%s stopped: %s (%d cancelled so far)",
                     request.model_spec.name, request.model_spec.signature_name, stopped,
                     self.stats.cancelled)
            raise
        if time.monotonic() > deadline:
            raise _deadline_exceeded(budget)
        return response

    def GetModelMetadata(self, request, context):
        def metadata():
            fields = list(request.metadata_field)
            if not fields:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "GetModelMetadataRequest must specify at least one "
                                   "metadata_field")
            unsupported = [f for f in fields if f != SIGNATURE_DEF_FIELD]
            if unsupported:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Metadata field {', '.join(unsupported)} is not supported")
            servable = self.manager.resolve(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature in servable.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(signature)
            response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
            return response

        return _answer(context, metadata)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        def status():
            spec = request.model_spec
            choice = spec.WhichOneof("version_choice")
            response = get_model_status_pb2.GetModelStatusResponse()
            if choice is None:
                failed = self.manager.failed_versions(spec.name)
                ended = self.manager.given_up(spec.name)
                try:
                    loaded = self.manager.versions(spec.name)
                except ServingError:
                    if not failed:
                        raise
                    loaded = {}
                for version in sorted(set(loaded) | set(failed)):
                    entry = response.model_version_status.add(version=version)
                    if version in loaded:
                        entry.state = ModelVersionStatus.AVAILABLE
                    elif version in ended:  # retries exhausted or refused: END, as TF Serving
                        entry.state = ModelVersionStatus.END
                        entry.status.error_code = ended[version].value[0]
                        entry.status.error_message = failed[version]
                    else:  # on disk but not loadable (yet): retried with back-off
                        entry.state = ModelVersionStatus.LOADING
                        entry.status.error_code = grpc.StatusCode.UNAVAILABLE.value[0]
                        entry.status.error_message = failed[version]
                return response
            version = (spec.version.value if choice == "version" else
                       self.manager.label_version(spec.name, spec.version_label))
            if version not in self.manager.versions(spec.name):
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model {spec.name}")
            response.model_version_status.add(version=version,
                                              state=ModelVersionStatus.AVAILABLE)
            return response

        return _answer(context, status)


def start_server(manager: ModelManager, options: ServerOptions = ServerOptions(),
                 stats: Optional[RequestStats] = None,
                 batcher: Optional[Batcher] = None) -> tuple[grpc.Server, int]:
    """Starts serving ``manager``'s models; returns the server and the port it bound.
    ``stats`` (optional) receives the counters, e.g. of cancelled requests; ``batcher``
    merges concurrent Predict requests (``--enable-batching``)."""
    message_options = [("grpc.max_receive_message_length", options.max_message_bytes),
                       ("grpc.max_send_message_length", options.max_message_bytes)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=options.max_workers),
                         options=message_options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, options.request_timeout_s, options.limits(), stats,
                          batcher), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    port = server.add_insecure_port(f"{options.host}:{options.port}")
    if port == 0:
        raise OSError(f"could not bind {options.host}:{options.port}")
    server.start()
    log.info("serving on %s:%d", options.host, port)
    return server, port


def serve_forever(manager: ModelManager, options: ServerOptions,
                  on_ready: Optional[callable] = None,
                  batcher: Optional[Batcher] = None) -> None:
    """Loads, serves until SIGINT/SIGTERM, then drains in-flight requests (and batches)."""
    import signal  # pylint: disable=import-outside-toplevel
    import threading  # pylint: disable=import-outside-toplevel

    manager.start()
    server, port = start_server(manager, options, batcher=batcher)
    if on_ready:
        on_ready(port)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=5).wait()
    if batcher is not None:
        batcher.stop()
    manager.stop()
