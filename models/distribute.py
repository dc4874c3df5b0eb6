"""tf.distribute strategy chosen by name in the configuration, and who writes outputs.

Under MultiWorkerMirroredStrategy every worker runs the same program; only the chief writes
the real checkpoints, TensorBoard logs, exports and metrics. The other workers still do every
save (a save may read distributed variables with collective ops, which must run on all
workers) but into temporary folders that they delete, as the TF multi-worker guide does.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile

import tensorflow as tf
# Private TF modules: the coordination service's heartbeat timeout has no public setting.
from tensorflow.python.distribute import multi_worker_util
from tensorflow.python.distribute.cluster_resolver import TFConfigClusterResolver
from tensorflow.python.eager import context
from tensorflow.tsl.protobuf import coordination_config_pb2

log = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multi_worker")
# How long the coordination service waits for a worker's heartbeat before it fails the whole
# cluster. TF's default, 10 s, was missed once on 2 loaded CPU cores (a clean-clone test run,
# 2026-12-06) and killed a healthy run; a dead worker's peers still fail within this time.
HEARTBEAT_TIMEOUT_S = 60


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """`mirrored` uses every local GPU (or the CPU); `multi_worker` reads TF_CONFIG."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        _configure_coordination_service(HEARTBEAT_TIMEOUT_S)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        coordination = context.context().config.experimental.coordination_config
        log.info("coordination service heartbeat timeout %g s",
                 coordination.heartbeat_timeout_in_ms / 1000)
        return strategy
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def _configure_coordination_service(heartbeat_timeout_s: float) -> None:
    """What MultiWorkerMirroredStrategy configures for itself (it keeps a service already
    configured), with a longer heartbeat timeout."""
    cluster_spec = TFConfigClusterResolver().cluster_spec()
    task_type, _ = task()
    if (context.context().coordination_service is not None or not cluster_spec.jobs
            or task_type not in ("chief", "worker")):
        return
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster_spec),
        heartbeat_timeout_in_ms=int(heartbeat_timeout_s * 1000),
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(
            name=job, num_tasks=cluster_spec.num_tasks(job))
            for job in ("chief", "worker") if job in cluster_spec.jobs])


def task() -> tuple[str | None, int]:
    """(type, index) of this process in TF_CONFIG; (None, 0) without one."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task_config = config.get("task") or {}
    return task_config.get("type"), int(task_config.get("index", 0))


def is_chief() -> bool:
    """The chief of TF_CONFIG's cluster: the "chief" task, else worker 0; True without one."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task_type, index = task()
    if task_type is None or task_type == "chief":
        return True
    return (task_type == "worker" and index == 0
            and "chief" not in (config.get("cluster") or {}))


def writes_outputs(strategy: str | tf.distribute.Strategy) -> bool:
    """Whether this process writes the real outputs: always, except a non-chief worker of a
    MultiWorkerMirroredStrategy."""
    multi_worker = (strategy == "multi_worker" if isinstance(strategy, str) else isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy))
    return not multi_worker or is_chief()


def worker_name() -> str:
    """"worker1" etc., for a non-chief's temporary folders."""
    task_type, index = task()
    return f"{task_type or 'task'}{index}"


@contextlib.contextmanager
def non_chief_scratch(strategy: str | tf.distribute.Strategy, label: str = "cmgan"):
    """None where this process writes the real outputs (``writes_outputs``); for another worker
    a temporary folder ``<label>-<worker>-*`` for the same writes, deleted at the end."""
    if writes_outputs(strategy):
        yield None
        return
    folder = tempfile.mkdtemp(prefix=f"{label}-{worker_name()}-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def barrier(strategy: str | tf.distribute.Strategy) -> None:
    """Returns on every worker only once all workers have reached it (an all-reduce): the
    writes the chief did before it are then done. A no-op for a single process (or a strategy
    given by name)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)),
                    axis=None)
