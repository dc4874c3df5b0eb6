"""``keras:<Application>`` image encoders: the frozen networks Beam runs (through the RunInference
handler in components/keras_encoders.py), the Trainer rebuilds for its export, and direct calls use.

An encoder is a frozen keras.applications model with ``include_top=False, pooling="avg"`` and
the application's own ``preprocess_input`` in front, taking uint8 RGB images [N, s, s, 3] and
returning float32 features [N, d]. Weights: ``imagenet`` (downloads; for users online), ``none``
(random init, made deterministic by ``keras.utils.set_random_seed(seed)`` right before building,
so Beam workers and the Trainer's export build the same network) or a path to a local weights
file. Keras 3 (``import keras``) is used, never ``tf.keras``, whose meaning TFT's import changes.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Optional

import numpy as np

from models.encoder_kinds import KERAS_PREFIX, is_keras

WEIGHTS_NONE = "none"
WEIGHTS_IMAGENET = "imagenet"
DEFAULT_IMAGE_SIZE = 224
# Default input sides of the applications that do not use 224.
_DEFAULT_SIZES = {
    "InceptionV3": 299, "InceptionResNetV2": 299, "Xception": 299, "NASNetLarge": 331,
    "EfficientNetB1": 240, "EfficientNetB2": 260, "EfficientNetB3": 300, "EfficientNetB4": 380,
    "EfficientNetB5": 456, "EfficientNetB6": 528, "EfficientNetB7": 600,
    "EfficientNetV2B1": 240, "EfficientNetV2B2": 260, "EfficientNetV2B3": 300,
    "EfficientNetV2S": 384, "EfficientNetV2M": 480, "EfficientNetV2L": 480,
}


def parse_keras_encoder(spec: str) -> str:
    """'keras:VGG19' -> 'VGG19', checked against keras.applications (no model is built)."""
    import keras  # pylint: disable=import-outside-toplevel

    if not is_keras(spec):
        raise ValueError(f"not a keras image encoder spec: {spec!r} (expected 'keras:<App>')")
    name = spec[len(KERAS_PREFIX):]
    if not name or not callable(getattr(keras.applications, name, None)) or name[0].islower():
        raise ValueError(f"unknown keras application {name!r} in image encoder {spec!r}; "
                         "expected a keras.applications model such as VGG19 or MobileNetV3Small")
    return name


def default_image_size(spec: str) -> int:
    """The application's default input side (e.g. 224 for VGG19, 299 for InceptionV3)."""
    return _DEFAULT_SIZES.get(parse_keras_encoder(spec), DEFAULT_IMAGE_SIZE)


def preprocess_function(spec: str):
    """The application's own ``preprocess_input`` (from the module that defines the model)."""
    import keras  # pylint: disable=import-outside-toplevel

    constructor = getattr(keras.applications, parse_keras_encoder(spec))
    return importlib.import_module(constructor.__module__).preprocess_input


@dataclasses.dataclass
class KerasImageEncoder:
    """A built encoder: ``model`` maps uint8-valued float32 RGB [N, s, s, 3] -> features [N, d].

    ``model`` includes ``preprocess_input``, so it is the whole encoder (also for an export).
    """

    spec: str
    image_size: int
    model: Any  # keras.Model

    @property
    def dim(self) -> int:
        return int(self.model.output_shape[-1])

    def encode(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """uint8 [N, s, s, 3] -> float32 [N, d], in batches of ``batch_size``."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"{self.spec} expects images [N, {self.image_size}, "
                             f"{self.image_size}, 3], got {images.shape}")
        out = [np.asarray(self.model(images[i:i + batch_size].astype(np.float32),
                                     training=False), dtype=np.float32)
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def build_keras_encoder(spec: str, weights: str = WEIGHTS_NONE, image_size: Optional[int] = None,
                        seed: int = 0) -> KerasImageEncoder:
    """The frozen application (include_top=False, pooling='avg') behind its preprocess_input."""
    import keras  # pylint: disable=import-outside-toplevel

    name = parse_keras_encoder(spec)
    size = int(image_size or default_image_size(spec))
    preprocess = preprocess_function(spec)
    if weights in (None, "", WEIGHTS_NONE):
        keras_weights = None
    elif weights == WEIGHTS_IMAGENET:
        keras_weights = WEIGHTS_IMAGENET
    else:
        import os  # pylint: disable=import-outside-toplevel

        if not os.path.isfile(weights):
            raise FileNotFoundError(f"image_encoder_weights {weights!r}: no such file "
                                    "(expected 'imagenet', 'none' or a local weights file)")
        keras_weights = weights
    if keras_weights is None:
        keras.utils.set_random_seed(int(seed))  # right before building: deterministic init
    app = getattr(keras.applications, name)(include_top=False, pooling="avg",
                                            weights=keras_weights, input_shape=(size, size, 3))
    app.trainable = False
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    features = app(keras.layers.Lambda(preprocess, name="preprocess_input")(inputs),
                   training=False)
    model = keras.Model(inputs, features, name=f"{name}_encoder")
    return KerasImageEncoder(spec=spec, image_size=size, model=model)


def encode_images_directly(spec: str, weights: str, images: np.ndarray, *,
                           image_size: Optional[int] = None, seed: int = 0,
                           batch_size: int = 32) -> np.ndarray:
    """The Beam path's encoder called in a plain batched loop (benchmark and equality tests)."""
    images = np.asarray(images)
    size = image_size or (images.shape[1] if images.ndim == 4 else None)
    encoder = build_keras_encoder(spec, weights, size, seed)
    return encoder.encode(images, batch_size=batch_size)

