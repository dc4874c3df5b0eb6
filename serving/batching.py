"""Server-side batching as ``tensorflow_model_server --enable_batching`` does it.

``cmgan serve --enable-batching --batching-parameters-file F`` reads F, TF Serving's
``BatchingParameters`` text proto (the ``batching_parameters.txt`` that ``--write-config``
writes)::

    max_batch_size { value: 64 }         # rows per batch; larger requests are refused
    batch_timeout_micros { value: 1000 } # how long a batch that is not full waits for more rows
    num_batch_threads { value: 2 }       # batches computed at once
    max_enqueued_batches { value: 100 }  # batches waiting per queue; more: UNAVAILABLE
    allowed_batch_sizes: 32              # optional: batches are padded up to one of these
    allowed_batch_sizes: 64              #   (increasing, the last equal to max_batch_size)

Omitted fields take the defaults of TF's SharedBatchScheduler / BasicBatchScheduler (1000 rows,
no timeout, 10 enqueued batches, one thread per CPU).

The scheduler follows TF's ``SharedBatchScheduler``: one queue per servable version, signature
and *group* (the inner shapes and dtypes of the batched inputs, and the values of the inputs
without a batch dimension, such as ``k`` and ``target`` of the search signatures: only requests
that agree on them can be one call), shared batch threads. A request (a task of N rows) joins
the open batch of its queue when the rows fit, else closes it and opens a new one; a queue
holding ``max_enqueued_batches`` batches refuses the task with UNAVAILABLE, and a task larger
than ``max_batch_size`` is refused with INVALID_ARGUMENT (TF Serving's scheduler without large
batch splitting). A free batch thread takes the oldest batch that is closed, full or has waited
``batch_timeout_micros``; the rows of its tasks are concatenated, padded (by repeating the first
row) up to the next allowed batch size, run as one signature call, and split back, so each
caller gets exactly its rows. Batch sizes are recorded in serving/metrics.py.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from typing import Callable, Hashable, Mapping, Optional, Sequence

import grpc
import numpy as np

from serving.servable import ServingError, read_config_text

log = logging.getLogger(__name__)
_WAIT_SLICE_S = 0.05  # how often a waiting caller asks whether its deadline passed
Outputs = Mapping[str, np.ndarray]


class BatchingConfigError(ValueError):
    """A batching parameters file that cannot be used; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """The fields of TF Serving's ``BatchingParameters`` this server uses, with TF's defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    max_enqueued_batches: int = 10
    allowed_batch_sizes: tuple[int, ...] = ()

    def padded_size(self, rows: int) -> int:
        """The smallest allowed batch size holding ``rows`` (``rows`` without a list)."""
        return next((size for size in self.allowed_batch_sizes if size >= rows), rows)


@functools.lru_cache(maxsize=1)
def batching_parameters_class():
    """TF Serving's ``tensorflow.serving.BatchingParameters`` message class. tensorflow-serving-api
    does not ship session_bundle_config_pb2, so unless it does the message is built here, in a
    private pool, from tensorflow_serving/servables/tensorflow/session_bundle_config.proto::

        message BatchingParameters {
          google.protobuf.Int64Value max_batch_size = 1;
          google.protobuf.Int64Value batch_timeout_micros = 2;
          google.protobuf.Int64Value max_enqueued_batches = 3;
          google.protobuf.Int64Value num_batch_threads = 4;
          google.protobuf.StringValue thread_pool_name = 5;
          repeated int64 allowed_batch_sizes = 6;
          bool pad_variable_length_inputs = 7;
        }
    """
    try:
        from tensorflow_serving.servables.tensorflow import (  # pylint: disable=C0415
            session_bundle_config_pb2)

        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass
    from google.protobuf import (descriptor_pb2, descriptor_pool,  # pylint: disable=C0415
                                 message_factory, wrappers_pb2)

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving", syntax="proto3",
        dependency=[wrappers_pb2.DESCRIPTOR.name])
    message = proto.message_type.add(name="BatchingParameters")
    for name, number, wrapper in (("max_batch_size", 1, "Int64Value"),
                                  ("batch_timeout_micros", 2, "Int64Value"),
                                  ("max_enqueued_batches", 3, "Int64Value"),
                                  ("num_batch_threads", 4, "Int64Value"),
                                  ("thread_pool_name", 5, "StringValue")):
        message.field.add(name=name, number=number, type=field.TYPE_MESSAGE,
                          type_name=f".google.protobuf.{wrapper}", label=field.LABEL_OPTIONAL)
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64,
                      label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL,
                      label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def parse_batching_parameters(text: str, source: str = "batching parameters"
                              ) -> BatchingParameters:
    """A ``BatchingParameters`` text proto, checked as TF Serving checks it."""
    from google.protobuf import text_format  # pylint: disable=import-outside-toplevel

    try:
        config = text_format.Parse(text, batching_parameters_class()())
    except text_format.ParseError as error:
        raise BatchingConfigError(f"{source}: not a BatchingParameters text proto: "
                                  f"{error}") from None
    defaults = BatchingParameters()
    values = {name: (getattr(config, name).value if config.HasField(name)
                     else getattr(defaults, name))
              for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                           "max_enqueued_batches")}
    for name, least in (("max_batch_size", 1), ("batch_timeout_micros", 0),
                        ("num_batch_threads", 1), ("max_enqueued_batches", 1)):
        if values[name] < least:
            raise BatchingConfigError(f"{source}: {name} must be at least {least}, got "
                                      f"{values[name]}")
    sizes = tuple(int(size) for size in config.allowed_batch_sizes)
    if sizes:
        if sizes[0] < 1 or any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise BatchingConfigError(f"{source}: allowed_batch_sizes must be positive and "
                                      f"increasing, got {list(sizes)}")
        if sizes[-1] != values["max_batch_size"]:
            raise BatchingConfigError(
                f"{source}: the last of allowed_batch_sizes ({sizes[-1]}) must equal "
                f"max_batch_size ({values['max_batch_size']})")
    return BatchingParameters(allowed_batch_sizes=sizes, **values)


def read_batching_parameters(path: str) -> BatchingParameters:
    return parse_batching_parameters(
        read_config_text(path, "batching parameters file", BatchingConfigError), path)


# ------------------------------------------------------------------------------ scheduler
class _Task:
    """One request's rows, waiting for its part of a batch's outputs."""

    def __init__(self, inputs: Mapping[str, np.ndarray], batched: Sequence[str], rows: int,
                 compute: Callable[[dict], Outputs]):
        self.inputs, self.batched, self.rows, self.compute = inputs, batched, rows, compute
        self.done = threading.Event()
        self.cancelled = False  # its caller stopped waiting: not computed if still queued
        self.outputs: Optional[dict] = None
        self.error: Optional[BaseException] = None


@dataclasses.dataclass
class _Batch:
    created: float  # time.monotonic() of its first task
    labels: tuple[str, str]
    tasks: list = dataclasses.field(default_factory=list)
    rows: int = 0


class Batcher:
    """TF's SharedBatchScheduler over numpy inputs: ``run`` blocks until the caller's rows are
    computed as part of a batch. Thread-safe; ``stop`` ends the batch threads."""

    def __init__(self, parameters: BatchingParameters, metrics=None):
        self.parameters = parameters
        self.metrics = metrics  # serving.metrics.ServingMetrics: batch sizes are recorded there
        self._cond = threading.Condition()
        self._queues: dict[Hashable, list[_Batch]] = {}  # insertion order: fair among queues
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, daemon=True,
                                          name=f"batch-thread-{i}")
                         for i in range(parameters.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, queue: Hashable, inputs: Mapping[str, np.ndarray], batched: Sequence[str],
            compute: Callable[[dict], Outputs],
            should_stop: Optional[Callable[[], Optional[BaseException]]] = None,
            labels: tuple[str, str] = ("", "")) -> dict[str, np.ndarray]:
        """The outputs of ``compute`` for this caller's rows. ``queue`` names the servable
        version and signature; ``batched``: the inputs with a batch dimension (equal row
        counts), the others must be equal for requests to merge. ``compute`` takes the merged
        inputs and returns arrays whose first dimension is the batch. ``should_stop`` is asked
        while waiting; the error it returns is raised. ``labels``: (model, signature) of the
        batch size metrics."""
        rows = int(inputs[batched[0]].shape[0])
        if rows > self.parameters.max_batch_size:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Task size {rows} is larger than maximum input batch size "
                               f"{self.parameters.max_batch_size} (--batching-parameters-file "
                               "max_batch_size); split the request")
        task = _Task(inputs, batched, rows, compute)
        self._schedule((queue, group_key(inputs, batched)), task, labels)
        while not task.done.wait(_WAIT_SLICE_S):
            stop = should_stop() if should_stop is not None else None
            if stop is not None:
                with self._cond:
                    task.cancelled = True
                raise stop
        if isinstance(task.error, ServingError):  # one error object per caller
            raise ServingError(task.error.code, str(task.error)) from task.error
        if task.error is not None:
            raise ServingError(grpc.StatusCode.INTERNAL,
                               f"internal error ({type(task.error).__name__}) in a batch; see "
                               "the server log") from task.error
        return task.outputs

    def _schedule(self, key: Hashable, task: _Task, labels: tuple[str, str]) -> None:
        limit = self.parameters.max_batch_size
        with self._cond:
            if self._stopping:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            batches = self._queues.setdefault(key, [])
            if not batches or batches[-1].rows + task.rows > limit:
                if len(batches) >= self.parameters.max_enqueued_batches:
                    raise ServingError(
                        grpc.StatusCode.UNAVAILABLE,
                        "The batch scheduling queue to which this task was submitted is full "
                        f"({self.parameters.max_enqueued_batches} batches waiting; "
                        "max_enqueued_batches)")
                batches.append(_Batch(time.monotonic(), labels))
            batches[-1].tasks.append(task)
            batches[-1].rows += task.rows
            self._cond.notify()

    def _next_batch(self) -> Optional[_Batch]:
        """Waits for a batch that is closed (another follows it), full, or past its timeout;
        the oldest such one is taken off its queue. None once stopped and drained."""
        timeout_s = self.parameters.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                now, ready, wake = time.monotonic(), None, None
                for key, batches in self._queues.items():
                    first = batches[0]
                    due = first.created + timeout_s
                    if (len(batches) > 1 or first.rows >= self.parameters.max_batch_size
                            or due <= now or self._stopping):
                        if ready is None or first.created < ready[1].created:
                            ready = (key, first)
                    else:
                        wake = due if wake is None else min(wake, due)
                if ready is not None:
                    key, batch = ready
                    self._queues[key].pop(0)
                    if not self._queues[key]:
                        del self._queues[key]
                    return batch
                if self._stopping:
                    return None
                self._cond.wait(None if wake is None else max(0.0, wake - now))

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._process(batch)

    def _process(self, batch: _Batch) -> None:
        with self._cond:
            tasks = [task for task in batch.tasks if not task.cancelled]
        if not tasks:
            return
        first = tasks[0]
        rows = sum(task.rows for task in tasks)
        padded = self.parameters.padded_size(rows)
        try:
            merged = dict(first.inputs)
            for alias in first.batched:
                parts = [task.inputs[alias] for task in tasks]
                if padded > rows:
                    parts.append(np.repeat(parts[0][:1], padded - rows, axis=0))
                merged[alias] = parts[0] if len(parts) == 1 else np.concatenate(parts)
            outputs = first.compute(merged)
            for alias, value in outputs.items():
                if np.ndim(value) == 0 or len(value) != padded:
                    raise ServingError(grpc.StatusCode.INTERNAL,
                                       f"output {alias!r} has shape {list(np.shape(value))}, "
                                       f"not a row per input row ({padded}): the signature "
                                       "cannot be batched")
            start = 0
            for task in tasks:
                task.outputs = {alias: value[start:start + task.rows]
                                for alias, value in outputs.items()}
                start += task.rows
        except Exception as error:  # pylint: disable=broad-except
            if not isinstance(error, ServingError):
                log.error("batch of %d rows failed", rows, exc_info=True)
            for task in tasks:
                task.error = error
        finally:
            for task in tasks:
                task.done.set()
        if self.metrics is not None:
            self.metrics.record_batch(*batch.labels, rows, padded)

    def queued(self) -> list[int]:
        """The tasks of each batch waiting for a thread (for logs and tests)."""
        with self._cond:
            return [len(batch.tasks) for batches in self._queues.values() for batch in batches]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Computes the batches already queued, refuses new tasks, ends the batch threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)


def group_key(inputs: Mapping[str, np.ndarray], batched: Sequence[str]) -> tuple:
    """What requests of one signature must share to be one call: the dtype and inner shape of
    each batched input, and the value of every other input (``k``, ``target``)."""
    key = []
    for alias in sorted(inputs):
        value = inputs[alias]
        if alias in batched:
            key.append((alias, value.dtype.str, value.shape[1:]))
        elif value.dtype == object:
            key.append((alias, "O", value.shape, tuple(value.reshape(-1).tolist())))
        else:
            key.append((alias, value.dtype.str, value.shape, value.tobytes()))
    return tuple(key)
