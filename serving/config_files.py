"""TF Serving's own configuration files, written for the stock model server and read by ours.

- ``ModelServerConfig`` text format (``--model_config_file``): models, base paths, version
  policies and ``version_labels`` such as ``stable`` / ``canary``;
- the batching parameters file (``--enable_batching --batching_parameters_file``), the text
  format of TF Serving's ``BatchingParameters`` (that proto is not in tensorflow-serving-api, so
  it is written as text here);
- the ``MonitoringConfig`` text format (``--monitoring_config_file``): Prometheus metrics on the
  REST port (serving/metrics.py).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional, Sequence

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

SEARCH_SUFFIX = "-search"  # the companion servable of <model_name>: <model_name>-search


def search_model_name(model_name: str) -> str:
    return model_name + SEARCH_SUFFIX


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One served model. ``num_versions`` 0 serves every version on disk (policy ``all``)."""

    name: str
    base_path: str
    num_versions: int = 0
    versions: tuple[int, ...] = ()  # non-empty: policy ``specific``
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)


def model_server_config(entries: Sequence[ModelEntry]) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    for entry in entries:
        model = config.model_config_list.config.add(
            name=entry.name, base_path=entry.base_path, model_platform="tensorflow")
        policy = model.model_version_policy
        if entry.versions:
            policy.specific.versions.extend(entry.versions)
        elif entry.num_versions:
            policy.latest.num_versions = entry.num_versions
        else:
            policy.all.SetInParent()
        for label, version in entry.labels.items():
            model.version_labels[label] = int(version)
    return config


def write_model_config(path: str, entries: Sequence[ModelEntry]) -> str:
    with open(path, "w") as f:
        f.write(text_format.MessageToString(model_server_config(entries)))
    return path


def read_model_config(path: str) -> list[ModelEntry]:
    """Entries of a ModelServerConfig text file; a missing policy means ``latest 1``, as in
    TF Serving."""
    with open(path) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    entries = []
    for model in config.model_config_list.config:
        policy = model.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        entries.append(ModelEntry(
            name=model.name, base_path=model.base_path,
            num_versions=0 if kind in ("all", "specific") else (
                policy.latest.num_versions if kind == "latest" else 1) or 1,
            versions=tuple(policy.specific.versions) if kind == "specific" else (),
            labels=dict(model.version_labels)))
    return entries


def default_entries(serving_root: str, model_name: str, num_versions: int = 0,
                    labels: Optional[Mapping[str, int]] = None) -> list[ModelEntry]:
    """The encoders and their search companion, as the pipeline pushes them."""
    return [ModelEntry(name, os.path.join(serving_root, name), num_versions,
                       labels=dict(labels or {}))
            for name in (model_name, search_model_name(model_name))]


def batching_parameters(max_batch_size: int = 64, batch_timeout_micros: int = 1000,
                        num_batch_threads: int = 2, max_enqueued_batches: int = 100,
                        allowed_batch_sizes: Sequence[int] = ()) -> str:
    """``BatchingParameters`` text. Server-side batching needs every input of a signature to be
    batched, so serve the ``-search`` model (scalar ``target`` and ``k``) without it."""
    lines = [f"max_batch_size {{ value: {max_batch_size} }}",
             f"batch_timeout_micros {{ value: {batch_timeout_micros} }}",
             f"num_batch_threads {{ value: {num_batch_threads} }}",
             f"max_enqueued_batches {{ value: {max_enqueued_batches} }}"]
    lines += [f"allowed_batch_sizes: {size}" for size in allowed_batch_sizes]
    return "\n".join(lines) + "\n"


def write_batching_parameters(path: str, **parameters) -> str:
    with open(path, "w") as f:
        f.write(batching_parameters(**parameters))
    return path


def write_monitoring_config(path: str, enable: bool = True,
                            metrics_path: Optional[str] = None) -> str:
    """TF Serving's ``--monitoring_config_file`` (also ``cmgan serve``'s): Prometheus metrics at
    ``metrics_path`` (default ``/monitoring/prometheus/metrics``) on the REST port."""
    from serving import metrics  # pylint: disable=import-outside-toplevel

    with open(path, "w") as f:
        f.write(metrics.monitoring_config_text(enable, metrics_path
                                               or metrics.DEFAULT_PROMETHEUS_PATH))
    return path
