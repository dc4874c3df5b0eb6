"""A loaded model version (``Servable``) and the error answered with a gRPC status code.

Shared by serving/model_manager.py, which loads servables, and serving/predict.py, which runs
requests on them; ``read_config_text`` by the readers of TF Serving's configuration files
(batching, monitoring).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping

import grpc

# TF Serving's warmup requests inside a version folder, replayed before the version is served.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


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
    # gallery modality -> ApproximateIndex of a search servable (serving/ann_search.py)
    approximate: Mapping[str, object] = dataclasses.field(default_factory=dict)


def read_config_text(path: str, what: str, error: type[Exception]) -> str:
    """The text of a configuration file, or ``error`` naming the file (``what`` it is) and
    why it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"cannot read the {what} {path}: "
                    f"{getattr(problem, 'strerror', None) or problem}") from None
