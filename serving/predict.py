"""PredictRequest -> checked inputs -> signature call -> PredictResponse, with TF Serving's codes.

Inputs are checked against the SignatureDef before anything runs, so a malformed request costs
no TensorFlow work and gets a message naming the input, what was expected and what came.
The declared shape of every input must match the values actually sent (a 100-byte request must
not declare a gigabyte tensor), batches are capped at ``Limits.max_rows`` rows, and a batch is run
in chunks so a request whose deadline passed (or whose client went away) stops between chunks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from models.image_decoding import (DEFAULT_MAX_IMAGE_PIXELS, IMAGE_TOO_LARGE, image_format,
                                   image_size_problem)
from models.signatures import SERVING_DEFAULT
from serving.ann_search import approximate_search
from serving.servable import Servable, ServingError

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
# Each typed value field of a TensorProto; exactly one is filled for a given dtype.
_VALUE_FIELDS = ("half_val", "float_val", "double_val", "int_val", "string_val", "int64_val",
                 "bool_val", "uint32_val", "uint64_val")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one PredictRequest may ask for (see ``serving.server.ServerOptions``)."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # a tensor may not declare more bytes
    max_rows: Optional[int] = None  # rows per request; None: sized to the message limit
    chunk_rows: int = 256  # rows per signature call; cancellation is checked between calls
    max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS  # JPEG/PNG string values

    def rows_cap(self) -> int:
        """Explicit cap, else one 1024-float (4 KB) row per 4 KB of the message limit."""
        return self.max_rows if self.max_rows else max(1, self.max_message_bytes // 4096)


class Stopped(ServingError):
    """The request's deadline passed or its client cancelled it while it was being computed."""


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def signature_def(servable: Servable, name: str):
    name = name or SERVING_DEFAULT
    if name not in servable.signature_defs:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"Serving signature key \"{name}\" not found. Signatures of "
                           f"{servable.name} version {servable.version}: "
                           f"{', '.join(sorted(servable.signature_defs))}")
    return name, servable.signature_defs[name]


def _check_declared_size(alias: str, tensor_proto, dtype: tf.DType, limits: Limits) -> None:
    """The declared shape must be backed by the values sent: ``tf.make_ndarray`` would
    zero-fill (or repeat) missing values, so 100 bytes could otherwise allocate gigabytes."""
    shape = tensor_proto.tensor_shape
    if shape.unknown_rank:
        raise _invalid(f"input {alias!r} has an unknown rank; send a fully defined shape")
    dims = [d.size for d in shape.dim]
    if any(d < 0 for d in dims):
        raise _invalid(f"input {alias!r} declares a negative dimension: {dims}")
    declared = math.prod(dims)  # Python ints: no overflow for [2**40, 1024]
    if dims and dims[0] > limits.rows_cap():
        raise _invalid(f"input {alias!r} has {dims[0]} rows; at most {limits.rows_cap()} rows "
                       f"per request are accepted (split the batch)")
    if tensor_proto.tensor_content:
        if dtype == tf.string or len(tensor_proto.tensor_content) != declared * dtype.size:
            raise _invalid(f"input {alias!r} declares shape {dims} ({declared} elements of "
                           f"{dtype.name}) but tensor_content holds "
                           f"{len(tensor_proto.tensor_content)} bytes")
        return
    sent = sum(len(getattr(tensor_proto, field)) for field in _VALUE_FIELDS)
    if sent == declared:
        return
    if sent == 1 and declared > 1:  # TF's shorthand: one value repeated to fill the shape
        item = (max(1, len(tensor_proto.string_val[0])) if dtype == tf.string else dtype.size)
        if declared * item <= limits.max_message_bytes:
            return
        raise _invalid(f"input {alias!r} declares shape {dims}: {declared} elements filled "
                       f"from one value would exceed the {limits.max_message_bytes} byte "
                       "message limit")
    raise _invalid(f"input {alias!r} declares shape {dims} ({declared} elements) but "
                   f"{sent} values were sent")


def _check_input(alias: str, tensor_proto, info, limits: Limits = Limits()) -> np.ndarray:
    expected = tf.dtypes.as_dtype(info.dtype)
    got = tf.dtypes.as_dtype(tensor_proto.dtype) if tensor_proto.dtype else None
    if got != expected:
        raise _invalid(f"Expects arg {alias!r} to be {expected.name} but "
                       f"{got.name if got else 'no dtype'} is provided")
    _check_declared_size(alias, tensor_proto, expected, limits)
    try:
        array = tf.make_ndarray(tensor_proto)
    except (ValueError, TypeError) as error:
        raise _invalid(f"tensor parsing error: {alias}: {error}") from error
    dims = [d.size for d in info.tensor_shape.dim]
    if not info.tensor_shape.unknown_rank:
        if array.ndim != len(dims) or any(e >= 0 and e != g for e, g in zip(dims, array.shape)):
            wanted = [None if d < 0 else d for d in dims]
            raise _invalid(f"input {alias!r} must have shape {wanted}, got "
                           f"{list(array.shape)}")
        if dims and dims[0] < 0 and array.shape[0] == 0:
            raise _invalid(f"input {alias!r} is an empty batch (0 rows); send at least one row")
    return array


def check_input_names(signature, given) -> None:
    """The inputs a request names must be exactly the signature's (gRPC and REST requests)."""
    expected, given = set(signature.inputs), set(given)
    if given != expected:
        unknown, missing = sorted(given - expected), sorted(expected - given)
        parts = ([f"input tensor alias not found in signature: {', '.join(unknown)}."]
                 if unknown else []) + ([f"missing inputs: {', '.join(missing)}."]
                                        if missing else [])
        raise _invalid(" ".join(parts) + f" Inputs expected to be in the set "
                                         f"{{{', '.join(sorted(expected))}}}.")


def prepare_inputs(signature, request, limits: Limits = Limits()) -> dict[str, np.ndarray]:
    check_input_names(signature, request.inputs)
    expected = set(signature.inputs)
    inputs = {a: _check_input(a, request.inputs[a], signature.inputs[a], limits)
              for a in expected}
    batched = {a: v.shape[0] for a, v in inputs.items()
               if v.ndim and signature.inputs[a].tensor_shape.dim[0].size < 0}
    if len(set(batched.values())) > 1:
        raise _invalid(f"batched inputs must have equal 0th-dimension size, got {batched}")
    return inputs


def _output_filter(signature, request) -> list[str]:
    unknown = sorted(set(request.output_filter) - set(signature.outputs))
    if unknown:
        raise _invalid(f"output tensor alias not found in signature: {', '.join(unknown)}. "
                       f"Outputs expected to be in the set "
                       f"{{{', '.join(sorted(signature.outputs))}}}.")
    return list(request.output_filter) or list(signature.outputs)


def _batched(signature) -> bool:
    """True when every input and output has a leading batch dimension of unknown size, so the
    rows can be computed in chunks and concatenated (scalar inputs are passed to every chunk)."""
    outputs = [info.tensor_shape for info in signature.outputs.values()]
    return bool(outputs) and all(not s.unknown_rank and s.dim and s.dim[0].size < 0
                                 for s in outputs)


def _check_images(inputs: dict[str, np.ndarray], limits: Limits) -> None:
    """JPEG/PNG values of string inputs: dimensions read from the header, before any decoding."""
    if not limits.max_image_pixels:
        return
    for alias, array in inputs.items():
        if array.dtype != object:
            continue
        for row, value in enumerate(array.reshape(-1)):
            if isinstance(value, bytes) and image_format(value):
                problem = image_size_problem(value, limits.max_image_pixels)
                if problem:
                    raise _invalid(f"input {alias!r} row {row}: {IMAGE_TOO_LARGE}: {problem}")


def run_predict(servable: Servable, request, limits: Limits = Limits(),
                should_stop: Optional[Callable[[], Optional[ServingError]]] = None,
                batcher=None) -> predict_pb2.PredictResponse:
    """Runs one Predict on a servable; TensorFlow errors keep their canonical code.

    ``should_stop`` is asked before each chunk of ``limits.chunk_rows`` rows; the error it
    returns (deadline passed, client gone) is raised as ``Stopped`` and no more rows run.
    ``batcher`` (serving/batching.py, ``--enable-batching``): a signature whose outputs all
    have a batch dimension runs as part of one call merged with concurrent requests."""
    name, signature = signature_def(servable, request.model_spec.signature_name)
    inputs = prepare_inputs(signature, request, limits)
    _check_images(inputs, limits)
    outputs = _output_filter(signature, request)
    with _canonical_codes():  # the query encoder's errors
        approximate = approximate_search(servable, name, inputs, outputs)
    if approximate is not None:  # the gallery's faiss index answers (serving/ann_search.py)
        return _response(servable, name, outputs, [approximate])
    batch_keys = [a for a, v in inputs.items()
                  if v.ndim and signature.inputs[a].tensor_shape.dim[0].size < 0]
    rows = inputs[batch_keys[0]].shape[0] if batch_keys else 0
    step = max(1, limits.chunk_rows)
    batchable = bool(rows and batch_keys and _batched(signature))
    if batcher is not None and batchable:  # one call merged with concurrent requests
        return _response(servable, name, outputs, [batcher.run(
            (servable.name, servable.version, name), inputs, batch_keys,
            lambda batch: _call(servable, name, batch, list(signature.outputs)),
            _stopped_while_queued(should_stop, rows), (servable.name, name))])
    parts = []
    for start in range(0, rows, step) if batchable else [None]:
        if should_stop is not None:
            stop = should_stop()
            if stop is not None:
                done = 0 if start is None else start
                raise Stopped(stop.code, f"{stop} (stopped after {done} of {rows} rows)")
        chunk = {k: (v[start:start + step] if start is not None and k in batch_keys else v)
                 for k, v in inputs.items()}
        parts.append(_call(servable, name, chunk, outputs))
    return _response(servable, name, outputs, parts)


def _response(servable: Servable, name: str, outputs: list[str],
              parts: list[dict[str, np.ndarray]]) -> predict_pb2.PredictResponse:
    """The PredictResponse of ``outputs``, concatenated over the rows of ``parts``."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = name
    for alias in outputs:
        value = (parts[0][alias] if len(parts) == 1 else
                 np.concatenate([part[alias] for part in parts]))
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return response


@contextlib.contextmanager
def _canonical_codes():
    """TensorFlow errors raised inside become ServingErrors with their canonical code."""
    try:
        yield
    except tf.errors.OpError as error:
        raise ServingError(_grpc_code(error.error_code), _readable(error.message)) from error


def _call(servable: Servable, name: str, inputs: dict[str, np.ndarray],
          outputs: list[str]) -> dict[str, np.ndarray]:
    """One signature call."""
    with _canonical_codes():
        results = servable.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
    return {alias: results[alias].numpy() for alias in outputs}


def _stopped_while_queued(should_stop, rows: int):
    """``should_stop`` for a request waiting for its batch: its error becomes ``Stopped``."""
    def check() -> Optional[Stopped]:
        stop = should_stop() if should_stop is not None else None
        return None if stop is None else Stopped(
            stop.code, f"{stop} (stopped before its {rows} rows were computed in a batch)")

    return check


_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[", "defined at")


def _readable(message: str) -> str:
    """The lines of a TensorFlow error that say what went wrong, without graph node dumps."""
    lines = [line.strip() for line in message.splitlines()]
    kept = [line for line in lines if line and not line.startswith(_NOISE)]
    return " ".join(kept) or message


def _grpc_code(tf_code: int) -> grpc.StatusCode:
    """TensorFlow's canonical error codes are gRPC's codes, number for number."""
    return next((c for c in grpc.StatusCode if c.value[0] == tf_code), grpc.StatusCode.INTERNAL)
