"""RunInference handler for ``keras:<Application>`` image encoders (RawExampleGen's Beam graph).

The encoders themselves are built by models/keras_image_encoders.py, so the Trainer's export and
direct calls build exactly the network Beam runs.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from models.keras_image_encoders import (WEIGHTS_NONE, KerasImageEncoder, build_keras_encoder,
                                         default_image_size, parse_keras_encoder)


class KerasImageEncoderHandler(ModelHandler[np.ndarray, np.ndarray, KerasImageEncoder]):
    """RunInference handler: uint8 images [s, s, 3] in, float32 feature vectors [d] out.

    Each worker builds its own encoder in ``load_model``; with weights 'none' the seed makes
    every worker's network identical.
    """

    def __init__(self, spec: str, weights: str = WEIGHTS_NONE,
                 image_size: Optional[int] = None, seed: int = 0, batch_size: int = 32):
        parse_keras_encoder(spec)  # fail at pipeline construction, not in a worker
        self._spec, self._weights, self._seed = spec, weights, int(seed)
        self._image_size = int(image_size or default_image_size(spec))
        self._batch_size = int(batch_size)

    def load_model(self) -> KerasImageEncoder:
        return build_keras_encoder(self._spec, self._weights, self._image_size, self._seed)

    def run_inference(self, batch: Sequence[np.ndarray], model: KerasImageEncoder,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[np.ndarray]:
        del inference_args
        features = model.encode(np.stack(batch), batch_size=max(len(batch), 1))
        return list(features)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        # fixed-size batches (BatchElements would start at 1 and grow); a bundle's end flushes
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def get_metrics_namespace(self) -> str:
        return "RawExampleGen-KerasImageEncoder"
