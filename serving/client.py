"""A TF Serving gRPC client for the CM-GAN servables (works with the stock server and ours).

Signatures are discovered with GetModelMetadata, so inputs are cast to the dtypes the model
declares and a query of the wrong dimension fails here with a clear message; GetModelStatus
tells when a model is ready.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Mapping, Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from models.signatures import (EMBEDDING_KEY, IDS_KEY, K_KEY, LABELS_KEY,
                               RAW_SEARCH_SIGNATURES, SCORES_KEY, SEARCH_PARAMETERS,
                               SEARCH_SIGNATURES, TARGET_KEY, encode_signature,
                               query_kind_of, search_signature)
from serving.config_files import search_model_name
from serving.gallery import MODALITIES

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
# image, text, embedding, image_bytes, text_string: search_<kind>
QUERY_KINDS = tuple(query_kind_of(name)
                    for name in (*SEARCH_SIGNATURES, *RAW_SEARCH_SIGNATURES))


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Top-k per query: ids (str), labels (int64) and cosine scores, each [queries, k]."""

    ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    version: int


class ServingClient:
    """One channel to a model server; every call has a deadline (``timeout_s``)."""

    def __init__(self, target: str, *, timeout_s: float = 10.0,
                 max_message_bytes: int = 64 << 20,
                 channel_options: Sequence[tuple[str, object]] = ()):
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes), *channel_options]
        self.channel = grpc.insecure_channel(target, options=options)
        self.timeout_s = timeout_s
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self._signatures: dict[tuple[str, Optional[int]], dict] = {}

    def __enter__(self) -> "ServingClient":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    # ------------------------------------------------------------------ discovery
    def status(self, model: str) -> dict[int, str]:
        """Version -> state name (AVAILABLE, LOADING, ...)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = self.models.GetModelStatus(request, timeout=self.timeout_s)
        return {s.version: get_model_status_pb2.ModelVersionStatus.State.Name(s.state)
                for s in response.model_version_status}

    def wait_until_ready(self, model: str, timeout_s: float = 60.0,
                         version: Optional[int] = None) -> int:
        """Blocks until the model (or that version) is AVAILABLE; returns the version."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                grpc.channel_ready_future(self.channel).result(
                    timeout=max(deadline - time.monotonic(), 0.01))
                available = [v for v, s in self.status(model).items() if s == "AVAILABLE"]
                if available and (version is None or version in available):
                    return version if version is not None else max(available)
            except (grpc.RpcError, grpc.FutureTimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {model} (version {version or 'any'}) not available "
                                   f"within {timeout_s:.0f} s")
            time.sleep(0.1)

    def signatures(self, model: str, version: Optional[int] = None) -> dict:
        """Signature name -> SignatureDef, from GetModelMetadata (cached per version asked)."""
        key = (model, version)
        if key not in self._signatures:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                metadata_field=["signature_def"])
            request.model_spec.name = model
            if version is not None:
                request.model_spec.version.value = version
            response = self.predictions.GetModelMetadata(request, timeout=self.timeout_s)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signature_map)
            self._signatures[key] = dict(signature_map.signature_def)
        return self._signatures[key]

    # ------------------------------------------------------------------ calls
    def predict(self, model: str, signature: str, inputs: Mapping[str, object], *,
                version: Optional[int] = None, version_label: Optional[str] = None,
                cast: bool = True) -> tuple[dict[str, np.ndarray], int]:
        """Outputs of one Predict and the version that answered. With ``cast``, inputs take
        the dtype the signature declares."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        elif version_label:
            request.model_spec.version_label = version_label
        declared = self.signatures(model).get(signature) if cast else None
        for key, value in inputs.items():
            dtype = (tf.dtypes.as_dtype(declared.inputs[key].dtype).as_numpy_dtype
                     if declared is not None and key in declared.inputs else None)
            request.inputs[key].CopyFrom(tf.make_tensor_proto(
                np.asarray(value, dtype=dtype) if dtype is not None and dtype is not object
                else value))
        response = self.predictions.Predict(request, timeout=self.timeout_s)
        return ({k: tf.make_ndarray(v) for k, v in response.outputs.items()},
                response.model_spec.version.value)

    def encode(self, model: str, modality: str, features) -> np.ndarray:
        """L2-normalised common embeddings of raw features of one modality."""
        outputs, _ = self.predict(model, encode_signature(modality),
                                  {modality: np.atleast_2d(features)})
        return outputs[EMBEDDING_KEY]

    def search(self, model: str, query, *, query_kind: str, target: str,
               k: int = 10) -> SearchResult:
        """Top-k gallery items of ``target`` modality. ``query_kind``: ``image`` / ``text``
        (what encode_image / encode_text take: features, or strings for raw-text models),
        ``embedding`` (common embeddings), ``image_bytes`` (encoded JPEG/PNG bytes) or
        ``text_string`` (UTF-8 texts); the last two only for models trained on raw inputs.
        ``model`` is the encoder model's name; its search companion ``<model>-search`` answers."""
        if query_kind not in QUERY_KINDS:
            raise ValueError(f"query_kind must be one of {QUERY_KINDS}, got {query_kind!r}")
        if target not in MODALITIES:
            raise ValueError(f"target must be one of {MODALITIES}, got {target!r}")
        search_model = search_model_name(model)
        name = search_signature(query_kind)
        signatures = self.signatures(search_model)
        if name not in signatures:
            raise ValueError(f"the served model has no {name} signature (it has "
                             f"{', '.join(sorted(signatures))}); raw image/text queries need a "
                             "model trained with the cnn / keras: / kim_cnn encoders")
        (key, declared), = [(k_, v) for k_, v in signatures[name].inputs.items()
                            if k_ not in SEARCH_PARAMETERS]
        if declared.dtype == tf.string.as_datatype_enum:
            items = [query] if isinstance(query, (str, bytes)) else list(query)
            query = np.array([q.encode() if isinstance(q, str) else bytes(q) for q in items],
                             object)
        else:
            query = np.atleast_2d(np.asarray(query, np.float32))
            dim = declared.tensor_shape.dim[-1].size
            if query.shape[-1] != dim:
                raise ValueError(f"the served model expects {key} vectors of dimension "
                                 f"{dim}, the query has {query.shape[-1]}")
        outputs, version = self.predict(search_model, name, {
            key: query, TARGET_KEY: np.array(target.encode()), K_KEY: np.int32(k)})
        return SearchResult(ids=outputs[IDS_KEY].astype(str), labels=outputs[LABELS_KEY],
                            scores=outputs[SCORES_KEY], version=version)


def format_results(result: SearchResult) -> str:
    """A ranked table per query: rank, id, label, score."""
    lines = []
    for q in range(result.ids.shape[0]):
        lines.append(f"query {q} (model version {result.version})")
        lines.append(f"{'rank':>4}  {'id':<24} {'label':>5} {'score':>8}")
        for rank, (item, label, score) in enumerate(
                zip(result.ids[q], result.labels[q], result.scores[q]), start=1):
            lines.append(f"{rank:>4}  {item:<24} {int(label):>5} {float(score):>8.4f}")
    return "\n".join(lines)
