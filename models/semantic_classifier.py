"""Semantic softmax heads on the common representation."""
from __future__ import annotations

import keras
from keras import ops


class CosineClassifier(keras.layers.Layer):
    """logits = scale * cos(w_c, z): classes separate by angle, as cosine retrieval ranks."""

    def __init__(self, num_classes: int, scale: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.scale = num_classes, scale

    def build(self, input_shape):
        self.class_weights = self.add_weight(
            name="class_weights", shape=(input_shape[-1], self.num_classes),
            initializer="glorot_uniform")
        self.built = True

    def call(self, inputs):
        z = inputs / (ops.norm(inputs, axis=-1, keepdims=True) + 1e-12)
        w = self.class_weights / (ops.norm(self.class_weights, axis=0, keepdims=True) + 1e-12)
        return self.scale * ops.matmul(z, w)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "scale": self.scale}


def make_semantic_classifier(kind: str, num_classes: int, scale: float) -> keras.layers.Layer:
    if kind == "cosine":
        return CosineClassifier(num_classes, scale, name="semantic_classifier")
    return keras.layers.Dense(num_classes, name="semantic_classifier")
