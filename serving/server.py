"""A gRPC server speaking TF Serving's protocol over ``tf.saved_model.load``.

The C++ ``tensorflow_model_server`` cannot be installed here, so this implements the part of its
API the project uses, with tensorflow-serving-api's own protos and service definitions:
PredictionService.Predict and GetModelMetadata, ModelService.GetModelStatus. Any TF Serving
client (and ``serving/client.py``) talks to either server unchanged.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from concurrent import futures
from typing import Optional

import grpc
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, prediction_service_pb2_grpc)

from serving.model_manager import ModelManager, ServingError
from serving.predict import run_predict

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


def _answer(context, method):
    """Runs ``method()``; a ServingError becomes its status code and message."""
    try:
        return method()
    except ServingError as error:
        context.abort(error.code, str(error))


def _deadline_exceeded(budget_s: float) -> ServingError:
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"request did not complete within its {budget_s:.3f} s deadline")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, request_timeout_s: float):
        self.manager = manager
        self.request_timeout_s = request_timeout_s

    def Predict(self, request, context):
        def predict():
            remaining = context.time_remaining()  # None without a client deadline
            budget = min(self.request_timeout_s, remaining if remaining is not None else
                         self.request_timeout_s)
            if budget <= 0:
                raise _deadline_exceeded(budget)
            started = time.monotonic()
            response = run_predict(self.manager.resolve(request.model_spec), request)
            if time.monotonic() - started > budget:
                raise _deadline_exceeded(budget)
            return response

        return _answer(context, predict)

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
                    else:  # on disk but not loadable (yet): TF Serving retries, so do we
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


def start_server(manager: ModelManager, options: ServerOptions = ServerOptions()
                 ) -> tuple[grpc.Server, int]:
    """Starts serving ``manager``'s models; returns the server and the port it bound."""
    message_options = [("grpc.max_receive_message_length", options.max_message_bytes),
                       ("grpc.max_send_message_length", options.max_message_bytes)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=options.max_workers),
                         options=message_options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, options.request_timeout_s), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    port = server.add_insecure_port(f"{options.host}:{options.port}")
    if port == 0:
        raise OSError(f"could not bind {options.host}:{options.port}")
    server.start()
    log.info("serving on %s:%d", options.host, port)
    return server, port


def serve_forever(manager: ModelManager, options: ServerOptions,
                  on_ready: Optional[callable] = None) -> None:
    """Loads, serves until SIGINT/SIGTERM, then drains in-flight requests."""
    import signal  # pylint: disable=import-outside-toplevel
    import threading  # pylint: disable=import-outside-toplevel

    manager.start()
    server, port = start_server(manager, options)
    if on_ready:
        on_ready(port)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=5).wait()
    manager.stop()
