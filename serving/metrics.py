"""Server metrics in Prometheus' text format, as ``tensorflow_model_server --monitoring_config_file``.

``cmgan serve --rest-api-port N --monitoring-config-file F`` serves this page on the REST port at
the ``path`` of F, a TF Serving ``MonitoringConfig`` text proto::

    prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }

No client library: a small thread-safe registry (``Registry``: counters, gauges, histograms with
labels) writes text format 0.0.4 by hand (``# HELP`` / ``# TYPE`` lines, histograms as
``_bucket{le=...}`` (cumulative, ending with ``+Inf``), ``_sum`` and ``_count``, label values
escaped). ``ServingMetrics`` holds the server's metrics; the names follow TF Serving's exporter,
which writes ``/tensorflow/serving/request_count`` as ``:tensorflow:serving:request_count``
(a colon may start a Prometheus metric name):

- ``:tensorflow:serving:request_count`` (counter): Predict requests, labels ``model_name``,
  ``version``, ``signature_name``, ``API`` (``Predict``), ``entrypoint`` (``GRPC`` | ``REST``)
  and ``status`` (the gRPC code name: ``OK``, ``INVALID_ARGUMENT``, ``NOT_FOUND``...). TF
  Serving's own labels are ``model_name`` and ``status``; the others are added here.
- ``:tensorflow:serving:request_latency`` (histogram): wall time of successful Predict requests
  in **microseconds**, TF Serving's buckets (10 * 1.8^i, i = 0..32, about 20 minutes at the top),
  labels ``model_name``, ``version``, ``signature_name``, ``API``, ``entrypoint``.
- ``:cmgan:serving:model_version_events`` (counter): model version loads and unloads, labels
  ``model_name``, ``version``, ``event`` (``load`` | ``unload``) and ``outcome`` (``success``;
  for loads also ``fail``: retried later, and ``end``: given up or refused, TF Serving's END).
- ``:cmgan:serving:available_versions`` (gauge): versions of each model now being served.
- ``:cmgan:serving:version_available`` (gauge): 1 per model version now being served.
- With ``--enable-batching`` (serving/batching.py), TF's batching metrics, labels ``model_name``
  and ``op_name`` (the signature): ``:tensorflow:serving:batching:batch_size`` (histogram of the
  rows per batch, TF's buckets 1.5^i) and ``:tensorflow:serving:batching:processed_batch_size_v2``
  (counter of batches per ``batch_size`` run, after padding to ``allowed_batch_sizes``).

Label values a client chooses are bounded: a request for a model the server does not know is
counted with ``model_name=""``, a signature the answering version lacks with
``signature_name=""``, and ``version`` is that of the version that answered (``""`` when none
did), so requests cannot grow the page without bound.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import re
import threading
from typing import Iterable, Mapping, Optional, Sequence

# ------------------------------------------------------------------------------ text format
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape_label_value(value: str) -> str:
    """Backslash, double quote and line feed, escaped as the text format requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Integers without a fraction, ``+Inf`` / ``-Inf`` / ``NaN`` as the text format spells them."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return str(int(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{name}="{escape_label_value(value)}"' for name, value in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family:
    """One metric name with its label names; a sample per distinct tuple of label values."""

    kind = ""

    def __init__(self, registry: "Registry", name: str, help_text: str,
                 label_names: Sequence[str]):
        if not METRIC_NAME.fullmatch(name):
            raise ValueError(f"not a Prometheus metric name: {name!r}")
        for label in label_names:
            if not LABEL_NAME.fullmatch(label) or label.startswith("__") or label == "le":
                raise ValueError(f"not a usable label name: {label!r}")
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"repeated label name in {list(label_names)}")
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self._lock = registry.lock
        self._values: dict = {}

    def _key(self, labels: Mapping[str, object]) -> tuple:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes the labels {list(self.label_names)}, "
                             f"not {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.label_names)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for key in sorted(self._values):
            lines.extend(self._sample_lines(key, self._values[key]))
        return lines

    def _sample_lines(self, key: tuple, value) -> list[str]:
        return [f"{self.name}{_labels(self.label_names, key)} {format_value(value)}"]


class Counter(_Family):
    kind = "counter"

    def inc(self, amount: float = 1, **labels) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0)


class Gauge(_Family):
    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value

    def replace(self, samples: Iterable[tuple[Mapping[str, object], float]]) -> None:
        """All samples at once: label sets not given disappear from the page."""
        values = {self._key(labels): value for labels, value in samples}
        with self._lock:
            self._values = values


@dataclasses.dataclass
class _HistogramCell:
    buckets: list  # per bucket, not cumulative; the last one is +Inf
    total: float = 0.0
    count: int = 0


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, registry: "Registry", name: str, help_text: str,
                 label_names: Sequence[str], bounds: Sequence[float]):
        super().__init__(registry, name, help_text, label_names)
        bounds = [float(b) for b in bounds]
        if not bounds or bounds != sorted(set(bounds)) or math.isinf(bounds[-1]):
            raise ValueError("bucket bounds must be finite, distinct and increasing")
        self.bounds = bounds

    def observe(self, value: float, **labels) -> None:
        key = self._key(labels)
        index = bisect.bisect_left(self.bounds, value)  # first bound >= value: le is inclusive
        with self._lock:
            cell = self._values.get(key)
            if cell is None:
                cell = self._values[key] = _HistogramCell([0] * (len(self.bounds) + 1))
            cell.buckets[index] += 1
            cell.total += value
            cell.count += 1

    def _sample_lines(self, key: tuple, cell: _HistogramCell) -> list[str]:
        lines, cumulative = [], 0
        for bound, count in zip(self.bounds + [math.inf], cell.buckets):
            cumulative += count
            le = f'le="{format_value(bound)}"'
            lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {cumulative}")
        labels = _labels(self.label_names, key)
        lines.append(f"{self.name}_sum{labels} {format_value(float(cell.total))}")
        lines.append(f"{self.name}_count{labels} {cell.count}")
        return lines


class Registry:
    """Metric families, rendered together under one lock (a consistent page)."""

    def __init__(self):
        self.lock = threading.RLock()
        self._families: dict[str, _Family] = {}

    def _add(self, family: _Family) -> _Family:
        with self.lock:
            if family.name in self._families:
                raise ValueError(f"metric {family.name} is already registered")
            self._families[family.name] = family
        return family

    def counter(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> Counter:
        return self._add(Counter(self, name, help_text, label_names))

    def gauge(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(self, name, help_text, label_names))

    def histogram(self, name: str, help_text: str, label_names: Sequence[str],
                  bounds: Sequence[float]) -> Histogram:
        return self._add(Histogram(self, name, help_text, label_names, bounds))

    def render(self) -> str:
        with self.lock:
            lines = []
            for name in sorted(self._families):
                lines.extend(self._families[name].render())
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ the server's
def exponential_buckets(scale: float, growth: float, count: int) -> list[float]:
    """TF's ``monitoring::Buckets::Exponential``: scale * growth^i for i < count (rounded to
    a thousandth, so the ``le`` labels read cleanly)."""
    return [round(scale * growth ** i, 3) for i in range(count)]


LATENCY_BUCKETS_US = exponential_buckets(10, 1.8, 33)  # TF Serving's request_latency buckets
REQUEST_LABELS = ("model_name", "version", "signature_name", "API", "entrypoint")
PREDICT_API = "Predict"
GRPC, REST = "GRPC", "REST"  # TF Serving's ``entrypoint`` label values
BATCH_LABELS = ("model_name", "op_name")  # TF's batching metrics; op_name: the signature here
BATCH_SIZE_BUCKETS = exponential_buckets(1, 1.5, 20)  # TF's batching/batch_size buckets
LOAD, UNLOAD = "load", "unload"
SUCCESS, FAIL, END = "success", "fail", "end"


class ServingMetrics:
    """The metrics of one ``cmgan serve`` process; the model manager and both APIs record here."""

    def __init__(self):
        self.registry = Registry()
        self.request_count = self.registry.counter(
            ":tensorflow:serving:request_count", "The total number of requests.",
            REQUEST_LABELS + ("status",))
        self.request_latency = self.registry.histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            REQUEST_LABELS, LATENCY_BUCKETS_US)
        self.version_events = self.registry.counter(
            ":cmgan:serving:model_version_events",
            "Model version loads and unloads (outcome: success; fail: retried; end: given up "
            "or refused).", ("model_name", "version", "event", "outcome"))
        self.available_versions = self.registry.gauge(
            ":cmgan:serving:available_versions", "The number of versions of the model being "
            "served now.", ("model_name",))
        self.version_available = self.registry.gauge(
            ":cmgan:serving:version_available", "1 for each model version being served now.",
            ("model_name", "version"))
        # --enable-batching (serving/batching.py): TF's batching metrics, op_name = signature.
        self.batch_size = self.registry.histogram(
            ":tensorflow:serving:batching:batch_size", "Tracks the batch size distribution on "
            "the batch result by model_name (if available).", BATCH_LABELS, BATCH_SIZE_BUCKETS)
        self.processed_batch_size = self.registry.counter(
            ":tensorflow:serving:batching:processed_batch_size_v2", "Tracks the batch size on "
            "processing by model_name and op name (if available).",
            BATCH_LABELS + ("batch_size",))

    def record_request(self, model_name: str, version: str, signature_name: str,
                       entrypoint: str, status: str, latency_us: Optional[float] = None,
                       api: str = PREDICT_API) -> None:
        """One answered request; its latency goes to the histogram when it succeeded (as in
        TF Serving, which records the latency of successful requests only)."""
        labels = dict(model_name=model_name, version=version, signature_name=signature_name,
                      API=api, entrypoint=entrypoint)
        self.request_count.inc(status=status, **labels)
        if status == "OK" and latency_us is not None:
            self.request_latency.observe(max(0.0, latency_us), **labels)

    def record_batch(self, model_name: str, op_name: str, size: int, padded_size: int) -> None:
        """One batch run by the batcher: its rows (``batch_size``), and the size it ran at after
        padding to ``allowed_batch_sizes`` (``processed_batch_size_v2``, counted per size)."""
        labels = dict(model_name=model_name, op_name=op_name)
        self.batch_size.observe(size, **labels)
        self.processed_batch_size.inc(batch_size=str(padded_size), **labels)

    def record_version_event(self, model_name: str, version: int, event: str,
                             outcome: str) -> None:
        self.version_events.inc(model_name=model_name, version=str(version), event=event,
                                outcome=outcome)

    def set_available(self, versions: Mapping[str, Iterable[int]]) -> None:
        """The versions being served now, per model (a model with none is reported as 0)."""
        versions = {name: sorted(loaded) for name, loaded in versions.items()}
        with self.registry.lock:  # both gauges change together: a scrape sees one state
            self.available_versions.replace(({"model_name": name}, len(loaded))
                                            for name, loaded in versions.items())
            self.version_available.replace(({"model_name": name, "version": str(v)}, 1)
                                           for name, loaded in versions.items()
                                           for v in loaded)

    def render(self) -> str:
        return self.registry.render()


# ------------------------------------------------------------------------------ config file
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's kPrometheusPath
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")


class MonitoringConfigError(ValueError):
    """A monitoring config file that cannot be used; the message names the file."""


@functools.lru_cache(maxsize=1)
def monitoring_config_class():
    """TF Serving's ``tensorflow.serving.MonitoringConfig`` message class. tensorflow-serving-api
    does not ship monitoring_config_pb2, so unless it does the message is built here from the
    same definition (tensorflow_serving/config/monitoring_config.proto), in a private pool::

        message PrometheusConfig { bool enable = 1; string path = 2; }
        message MonitoringConfig { PrometheusConfig prometheus_config = 1; }
    """
    try:
        from tensorflow_serving.config import monitoring_config_pb2  # pylint: disable=C0415

        return monitoring_config_pb2.MonitoringConfig
    except ImportError:
        pass
    from google.protobuf import (descriptor_pb2, descriptor_pool,  # pylint: disable=C0415
                                 message_factory)

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto",
        package="tensorflow.serving", syntax="proto3")
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=field.TYPE_BOOL,
                         label=field.LABEL_OPTIONAL, json_name="enable")
    prometheus.field.add(name="path", number=2, type=field.TYPE_STRING,
                         label=field.LABEL_OPTIONAL, json_name="path")
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=field.TYPE_MESSAGE,
                         type_name=".tensorflow.serving.PrometheusConfig",
                         label=field.LABEL_OPTIONAL, json_name="prometheusConfig")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


@dataclasses.dataclass(frozen=True)
class PrometheusSettings:
    enabled: bool = False
    path: str = DEFAULT_PROMETHEUS_PATH


def parse_monitoring_config(text: str, source: str = "monitoring config") -> PrometheusSettings:
    """``prometheus_config { enable: ..., path: ... }``; an empty path is TF Serving's default.
    The path must be an absolute URL path outside the REST API's ``/v1/``."""
    from google.protobuf import text_format  # pylint: disable=import-outside-toplevel

    try:
        config = text_format.Parse(text, monitoring_config_class()())
    except text_format.ParseError as error:
        raise MonitoringConfigError(f"{source}: not a MonitoringConfig text proto: "
                                    f"{error}") from None
    prometheus = config.prometheus_config
    path = prometheus.path or DEFAULT_PROMETHEUS_PATH
    if not _PATH.fullmatch(path):
        raise MonitoringConfigError(f"{source}: prometheus_config.path must be a URL path "
                                    f"starting with '/', without spaces, '?' or '#': {path!r}")
    if path.lower().startswith("/v1/") or path.lower() == "/v1":
        raise MonitoringConfigError(f"{source}: prometheus_config.path {path!r} is inside the "
                                    "REST API's /v1/; pick another path")
    return PrometheusSettings(enabled=prometheus.enable, path=path)


def read_monitoring_config(path: str) -> PrometheusSettings:
    from serving.servable import read_config_text  # pylint: disable=C0415

    return parse_monitoring_config(
        read_config_text(path, "monitoring config", MonitoringConfigError), path)


def monitoring_config_text(enable: bool = True, path: str = DEFAULT_PROMETHEUS_PATH) -> str:
    """The ``--monitoring_config_file`` text of TF Serving (and ``cmgan serve``)."""
    from google.protobuf import text_format  # pylint: disable=import-outside-toplevel

    config = monitoring_config_class()()
    config.prometheus_config.enable = enable
    config.prometheus_config.path = path
    return text_format.MessageToString(config)
