"""Which SavedModel versions are loaded, and which one answers a ``ModelSpec``.

Mirrors TF Serving's file-system source: every integer folder under a model's base path is a
version; the version policy picks which stay loaded; the highest loaded version answers unless a
request names a version or a label. A new version is loaded (and warmed up) completely before it
is published, and versions are swapped by replacing an immutable snapshot, so a request in flight
keeps the servable it started with and no request fails during a switch.

The serving root is trusted (whatever is loaded runs its warm-up), but two mistakes are contained
as TF Serving contains them: a version that fails to load is retried a bounded number of times
with back-off and then reported END with its error; and a new version whose signatures (names,
dtypes, shapes) differ from those of the version being served is refused before it is loaded,
unless ``allow_signature_change`` is set.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Mapping, Optional

import grpc
import tensorflow as tf
from tensorflow.python.saved_model import loader_impl
from tensorflow_serving.apis import prediction_log_pb2

from models.export import load_serving_model
from serving.ann_search import load_indexes
from serving.config_files import ModelEntry, read_model_config
from serving.metrics import END, FAIL, LOAD, SUCCESS, UNLOAD, ServingMetrics
from serving.predict import run_predict
from serving.servable import WARMUP_FILE, Servable, ServingError

log = logging.getLogger(__name__)


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
    servable = Servable(name, version, path, dict(loaded.signatures), signature_defs, loaded,
                        approximate=load_indexes(path, signature_defs))
    warm_up(servable)
    return servable


def warm_up(servable: Servable) -> None:
    """Runs the SavedModel's TF Serving warmup requests (assets.extra), else one zero row per
    signature whose inputs are all batched, so the first real request is not the slow one."""
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


def signature_summary(signature_defs: Mapping) -> dict:
    """signature -> {"inputs"/"outputs": {alias: (dtype enum, dims or None)}}: what a client
    relies on."""
    def tensors(infos):
        return {alias: (info.dtype, None if info.tensor_shape.unknown_rank else
                        tuple(d.size for d in info.tensor_shape.dim))
                for alias, info in infos.items()}

    return {name: {"inputs": tensors(sig.inputs), "outputs": tensors(sig.outputs)}
            for name, sig in signature_defs.items() if not name.startswith("__")}


def signature_difference(serving: Mapping, candidate: Mapping) -> Optional[str]:
    """The first way ``candidate``'s signature_defs differ from ``serving``'s, or None."""
    old, new = signature_summary(serving), signature_summary(candidate)
    if set(old) != set(new):
        missing, added = sorted(set(old) - set(new)), sorted(set(new) - set(old))
        return (f"signatures differ (missing: {', '.join(missing) or 'none'}; new: "
                f"{', '.join(added) or 'none'})")
    for name in sorted(old):
        for side in ("inputs", "outputs"):
            if old[name][side] != new[name][side]:
                return (f"signature {name!r} {side} differ: serving {old[name][side]}, "
                        f"new {new[name][side]} (alias: (dtype enum, shape))")
    return None


class IncompatibleVersion(Exception):
    """A version whose signatures would break the clients of the version being served."""


@dataclasses.dataclass
class LoadAttempts:
    """Failed loads of one version: retried with doubling delays, then given up (END)."""

    failures: int = 0
    next_try: float = 0.0
    stamp: Optional[float] = None  # saved_model.pb's mtime: a rewritten version starts afresh
    gave_up: bool = False
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE


def _stamp(path: str) -> Optional[float]:
    try:
        return os.path.getmtime(os.path.join(path, "saved_model.pb"))
    except OSError:
        return None


def _wanted(entry: ModelEntry, on_disk: list[int]) -> list[int]:
    if entry.versions:
        return [v for v in on_disk if v in entry.versions]
    return on_disk[-entry.num_versions:] if entry.num_versions else on_disk


class ModelManager:
    """Loads versions per model entry, and polls for new ones (and a changed config file)."""

    def __init__(self, entries: list[ModelEntry], config_file: Optional[str] = None,
                 poll_seconds: float = 2.0, max_load_retries: int = 5,
                 retry_base_seconds: float = 2.0, retry_max_seconds: float = 60.0,
                 allow_signature_change: bool = False,
                 metrics: Optional[ServingMetrics] = None):
        """``max_load_retries`` after the first failure (TF Serving's default is 5), waiting
        ``retry_base_seconds`` doubled per failure, at most ``retry_max_seconds``. Loads,
        unloads and the served versions are recorded in ``metrics`` (``self.metrics``), which
        both APIs share for their request counts (serving/metrics.py)."""
        self.metrics = metrics if metrics is not None else ServingMetrics()
        self._max_load_retries = max_load_retries
        self._retry_base_seconds = retry_base_seconds
        self._retry_max_seconds = retry_max_seconds
        self._allow_signature_change = allow_signature_change
        self._attempts: dict[tuple[str, int], LoadAttempts] = {}
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
        previous, snapshot = self._snapshot, {}
        for name, entry in self._entries.items():
            current = self._snapshot.get(name, {})
            versions = {}
            for version in _wanted(entry, list_versions(entry.base_path)):
                if version in current:
                    versions[version] = current[version]
                    continue
                path = os.path.join(entry.base_path, str(version))
                key = (name, version)
                if not self._due(key, path):
                    continue
                try:
                    self._check_signatures(name, version, path, {**current, **versions})
                    versions[version] = load_servable(name, version, path)
                    self._failed.pop(key, None)
                    self._attempts.pop(key, None)
                    log.info("loaded %s version %d from %s", name, version, path)
                    self.metrics.record_version_event(name, version, LOAD, SUCCESS)
                except IncompatibleVersion as error:
                    self._give_up(key, path, str(error), grpc.StatusCode.FAILED_PRECONDITION)
                except Exception as error:  # pylint: disable=broad-except
                    # e.g. still being copied by the Pusher: retried with back-off
                    self._record_failure(key, path, f"{type(error).__name__}: {error}")
            snapshot[name] = versions
        self._snapshot = snapshot
        for name, versions in previous.items():
            for version in sorted(set(versions) - set(snapshot.get(name, {}))):
                log.info("unloaded %s version %d", name, version)
                self.metrics.record_version_event(name, version, UNLOAD, SUCCESS)
        self.metrics.set_available(snapshot)

    def _due(self, key: tuple[str, int], path: str) -> bool:
        """Whether a version that failed before may be tried now (a rewritten one always)."""
        attempts = self._attempts.get(key)
        if attempts is None:
            return True
        if attempts.stamp != _stamp(path):
            self._attempts.pop(key)
            self._failed.pop(key, None)
            return True
        return not attempts.gave_up and time.monotonic() >= attempts.next_try

    def _record_failure(self, key: tuple[str, int], path: str, message: str) -> None:
        attempts = self._attempts.setdefault(key, LoadAttempts(stamp=_stamp(path)))
        attempts.failures += 1
        if attempts.failures > self._max_load_retries:
            self._give_up(key, path, f"gave up after {attempts.failures} attempts: {message}",
                          grpc.StatusCode.UNKNOWN)
            return
        delay = min(self._retry_base_seconds * 2 ** (attempts.failures - 1),
                    self._retry_max_seconds)
        attempts.next_try = time.monotonic() + delay
        self._failed[key] = message
        self.metrics.record_version_event(key[0], key[1], LOAD, FAIL)
        log.warning("could not load %s version %d (attempt %d of %d, next in %.0f s): %s",
                    key[0], key[1], attempts.failures, self._max_load_retries + 1, delay,
                    message)

    def _give_up(self, key: tuple[str, int], path: str, message: str,
                 code: grpc.StatusCode) -> None:
        attempts = self._attempts.setdefault(key, LoadAttempts(stamp=_stamp(path)))
        attempts.gave_up, attempts.code = True, code
        self._failed[key] = message
        self.metrics.record_version_event(key[0], key[1], LOAD, END)
        log.error("not serving %s version %d from %s: %s", key[0], key[1], path, message)

    def _check_signatures(self, name: str, version: int, path: str,
                          loaded: Mapping[int, Servable]) -> None:
        """Refuses, before anything of it runs, a version whose signatures differ from those
        of the highest version already loaded (the one answering unversioned requests)."""
        if self._allow_signature_change or not loaded:
            return
        serving = loaded[max(loaded)]
        candidate = loader_impl.parse_saved_model(path).meta_graphs[0].signature_def
        difference = signature_difference(serving.signature_defs, candidate)
        if difference:
            raise IncompatibleVersion(
                f"its signatures are incompatible with version {serving.version}, which is "
                f"being served: {difference} (serve with --allow-signature-change to accept)")

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
        """Version -> error message of versions on disk that are not loaded."""
        return {v: message for (n, v), message in self._failed.items() if n == name}

    def given_up(self, name: str) -> dict[int, grpc.StatusCode]:
        """Version -> error code of versions no longer retried (TF Serving's END state)."""
        return {v: a.code for (n, v), a in self._attempts.items() if n == name and a.gave_up}

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
