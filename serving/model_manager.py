"""Which SavedModel versions are loaded, and which one answers a ``ModelSpec``.

Mirrors TF Serving's file-system source: every integer folder under a model's base path is a
version; the version policy picks which stay loaded; the highest loaded version answers unless a
request names a version or a label. A new version is loaded (and warmed up) completely before it
is published, and versions are swapped by replacing an immutable snapshot, so a request in flight
keeps the servable it started with and no request fails during a switch.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Callable, Mapping, Optional

import grpc
import tensorflow as tf
from tensorflow.python.saved_model import loader_impl
from tensorflow_serving.apis import prediction_log_pb2

from models.export import load_serving_model
from serving.config_files import ModelEntry, read_model_config

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
log = logging.getLogger(__name__)


class ServingError(Exception):
    """An error answered with a gRPC status code, as TF Serving answers it."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class Servable:
    name: str
    version: int
    path: str
    signatures: Mapping[str, Callable]  # signature name -> concrete function
    signature_defs: Mapping  # signature name -> SignatureDef proto (from saved_model.pb)
    loaded: object  # keeps the restored object (and its variables) alive


def list_versions(base_path: str) -> list[int]:
    """Integer subfolders holding a saved_model.pb; anything else (staging folders) is ignored."""
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit()
                  and os.path.isfile(os.path.join(base_path, n, "saved_model.pb")))


def load_servable(name: str, version: int, path: str) -> Servable:
    saved_model = loader_impl.parse_saved_model(path)
    loaded = load_serving_model(path)
    # The meta graph also lists "__saved_model_init_op", which is not a callable signature.
    signature_defs = {name: signature for name, signature
                      in saved_model.meta_graphs[0].signature_def.items()
                      if name in loaded.signatures}
    servable = Servable(name, version, path, dict(loaded.signatures), signature_defs, loaded)
    warm_up(servable)
    return servable


def warm_up(servable: Servable) -> None:
    """Runs the SavedModel's TF Serving warmup requests (assets.extra), else one zero row per
    signature whose inputs are all batched, so the first real request is not the slow one."""
    # serving.predict imports this module (Servable, ServingError), hence the late import.
    from serving.predict import run_predict  # pylint: disable=import-outside-toplevel

    warmup_file = os.path.join(servable.path, WARMUP_FILE)
    if os.path.exists(warmup_file):
        for record in tf.data.TFRecordDataset(warmup_file).as_numpy_iterator():
            run_predict(servable, prediction_log_pb2.PredictionLog.FromString(
                record).predict_log.request)
        return
    for name, signature_def in servable.signature_defs.items():
        inputs = {}
        for key, info in signature_def.inputs.items():
            dims = [d.size for d in info.tensor_shape.dim]
            if not dims or any(d < 0 for d in dims[1:]):
                break
            dtype = tf.dtypes.as_dtype(info.dtype)
            inputs[key] = tf.zeros([1, *dims[1:]], dtype) if dtype != tf.string else (
                tf.fill([1, *dims[1:]], ""))
        else:
            try:
                servable.signatures[name](**inputs)
            except tf.errors.OpError:  # a signature that rejects zeros is simply not warmed
                pass


def _wanted(entry: ModelEntry, on_disk: list[int]) -> list[int]:
    if entry.versions:
        return [v for v in on_disk if v in entry.versions]
    return on_disk[-entry.num_versions:] if entry.num_versions else on_disk


class ModelManager:
    """Loads versions per model entry, and polls for new ones (and a changed config file)."""

    def __init__(self, entries: list[ModelEntry], config_file: Optional[str] = None,
                 poll_seconds: float = 2.0):
        self._entries = {e.name: e for e in entries}
        self._config_file = config_file
        self._config_mtime = None
        self._poll_seconds = poll_seconds
        self._snapshot: dict[str, dict[int, Servable]] = {}  # replaced, never mutated
        self._failed: dict[tuple[str, int], str] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._reload_config()

    # ------------------------------------------------------------------ loading
    def _reload_config(self) -> None:
        if not self._config_file:
            return
        mtime = os.path.getmtime(self._config_file)
        if mtime != self._config_mtime:
            self._entries = {e.name: e for e in read_model_config(self._config_file)}
            self._config_mtime = mtime

    def poll_once(self) -> None:
        """Loads wanted versions not yet loaded, then publishes the new snapshot."""
        try:
            self._reload_config()
        except (OSError, ValueError) as error:  # keep serving with the last good config
            log.error("model config %s not reloaded: %s", self._config_file, error)
        snapshot = {}
        for name, entry in self._entries.items():
            current = self._snapshot.get(name, {})
            versions = {}
            for version in _wanted(entry, list_versions(entry.base_path)):
                if version in current:
                    versions[version] = current[version]
                    continue
                path = os.path.join(entry.base_path, str(version))
                try:
                    versions[version] = load_servable(name, version, path)
                    self._failed.pop((name, version), None)
                    log.info("loaded %s version %d from %s", name, version, path)
                except Exception as error:  # pylint: disable=broad-except
                    # e.g. still being copied by the Pusher: retried at the next poll
                    self._failed[(name, version)] = f"{type(error).__name__}: {error}"
                    log.warning("could not load %s version %d yet: %s", name, version, error)
            snapshot[name] = versions
        self._snapshot = snapshot

    def start(self) -> "ModelManager":
        self.poll_once()
        self._thread = threading.Thread(target=self._poll_loop, name="version-poller",
                                        daemon=True)
        self._thread.start()
        return self

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------ lookups
    def model_names(self) -> list[str]:
        return sorted(self._entries)

    def versions(self, name: str) -> dict[int, Servable]:
        snapshot = self._snapshot
        if name not in snapshot or not snapshot[name]:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {name}")
        return snapshot[name]

    def failed_versions(self, name: str) -> dict[int, str]:
        return {v: message for (n, v), message in self._failed.items() if n == name}

    def label_version(self, name: str, label: str) -> int:
        entry = self._entries.get(name)
        if entry is None or label not in entry.labels:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Unrecognized servable version label: {label}")
        return entry.labels[label]

    def resolve(self, model_spec) -> Servable:
        """The servable a ModelSpec asks for: its version, its label's, or the highest."""
        if not model_spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec name")
        choice = model_spec.WhichOneof("version_choice")
        snapshot = self._snapshot.get(model_spec.name) or {}
        if choice is None:
            if not snapshot:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Latest({model_spec.name})")
            return snapshot[max(snapshot)]
        version = (model_spec.version.value if choice == "version" else
                   self.label_version(model_spec.name, model_spec.version_label))
        if version not in snapshot:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: "
                                                          f"Specific({model_spec.name}, {version})")
        return snapshot[version]
