"""PredictRequest -> checked inputs -> signature call -> PredictResponse, with TF Serving's codes.

Inputs are checked against the SignatureDef before anything runs, so a malformed request costs
no TensorFlow work and gets a message naming the input, what was expected and what came.
"""
from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from serving.model_manager import Servable, ServingError

DEFAULT_SIGNATURE = "serving_default"


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def signature_def(servable: Servable, name: str):
    name = name or DEFAULT_SIGNATURE
    if name not in servable.signature_defs:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"Serving signature key \"{name}\" not found. Signatures of "
                           f"{servable.name} version {servable.version}: "
                           f"{', '.join(sorted(servable.signature_defs))}")
    return name, servable.signature_defs[name]


def _check_input(alias: str, tensor_proto, info) -> np.ndarray:
    expected = tf.dtypes.as_dtype(info.dtype)
    got = tf.dtypes.as_dtype(tensor_proto.dtype) if tensor_proto.dtype else None
    if got != expected:
        raise _invalid(f"Expects arg {alias!r} to be {expected.name} but "
                       f"{got.name if got else 'no dtype'} is provided")
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


def prepare_inputs(signature, request) -> dict[str, np.ndarray]:
    expected, given = set(signature.inputs), set(request.inputs)
    if given != expected:
        unknown, missing = sorted(given - expected), sorted(expected - given)
        parts = ([f"input tensor alias not found in signature: {', '.join(unknown)}."]
                 if unknown else []) + ([f"missing inputs: {', '.join(missing)}."]
                                        if missing else [])
        raise _invalid(" ".join(parts) + f" Inputs expected to be in the set "
                                         f"{{{', '.join(sorted(expected))}}}.")
    inputs = {a: _check_input(a, request.inputs[a], signature.inputs[a]) for a in expected}
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


def run_predict(servable: Servable, request) -> predict_pb2.PredictResponse:
    """Runs one Predict on a servable; TensorFlow errors keep their canonical code."""
    name, signature = signature_def(servable, request.model_spec.signature_name)
    inputs = prepare_inputs(signature, request)
    outputs = _output_filter(signature, request)
    try:
        results = servable.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
    except tf.errors.OpError as error:
        raise ServingError(_grpc_code(error.error_code),
                           _readable(error.message)) from error
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = name
    for alias in outputs:
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(results[alias].numpy()))
    return response


_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[", "defined at")


def _readable(message: str) -> str:
    """The lines of a TensorFlow error that say what went wrong, without graph node dumps."""
    lines = [line.strip() for line in message.splitlines()]
    kept = [line for line in lines if line and not line.startswith(_NOISE)]
    return " ".join(kept) or message


def _grpc_code(tf_code: int) -> grpc.StatusCode:
    """TensorFlow's canonical error codes are gRPC's codes, number for number."""
    return next((c for c in grpc.StatusCode if c.value[0] == tf_code), grpc.StatusCode.INTERNAL)
