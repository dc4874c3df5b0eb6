"""A seeded synthetic image/text feature-pair dataset, made here, for tests and quick demos.

It is meant to be hard but learnable, so retrieval metrics stay clearly below 1.0: each pair has a
latent point (its class prototype plus per-item noise) in a small shared space; classes come in
groups whose prototypes lie close together, so they overlap. Each modality sees the latent point
through its own private noise and its own random two-layer tanh network, plus output noise; the text
side is made non-negative and skewed (softplus) like bag-of-words or topic features.
"""
from __future__ import annotations

import numpy as np

from components.datasets.types import SPLITS, FeatureDataset, default_class_names
from components.datasets.validation import validate_dataset, validate_split

LATENT_DIM = 8
HIDDEN_DIM = 32
CLASSES_PER_GROUP = 2  # classes sharing a parent prototype: the confusable pairs
PARENT_SPREAD = 2.0  # distance scale between class groups
CHILD_SPREAD = 0.6  # distance scale between classes within a group
ITEM_NOISE = 0.4  # spread of a pair's latent point around its class prototype
PRIVATE_NOISE = 0.3  # latent noise one modality sees and the other does not
OUTPUT_NOISE = 0.25  # feature noise after the nonlinear map


def make_demo_dataset(seed: int = 0, num_classes: int = 8, train_per_class: int = 120,
                      val_per_class: int = 30, test_per_class: int = 40, image_dim: int = 64,
                      text_dim: int = 32) -> FeatureDataset:
    """Balanced synthetic dataset; the same seed always gives the same arrays."""
    rng = np.random.default_rng(seed)
    prototypes = _class_prototypes(rng, num_classes)
    image_map = _random_tanh_net(rng, image_dim)
    text_map = _random_tanh_net(rng, text_dim)
    splits = {}
    for name, per_class in zip(SPLITS, (train_per_class, val_per_class, test_per_class)):
        label = rng.permutation(np.repeat(np.arange(num_classes), per_class))
        latent = prototypes[label] + ITEM_NOISE * rng.standard_normal((len(label), LATENT_DIM))
        image = _observe(rng, image_map, latent)
        text = np.logaddexp(0.0, 2.0 * _observe(rng, text_map, latent))  # softplus: >= 0, skewed
        ids = np.array([f"demo-{name}-{i}" for i in range(len(label))])
        splits[name] = validate_split(name, f"demo:{name}", image, text, label, ids)
    return validate_dataset("demo", splits, default_class_names(num_classes))


def _class_prototypes(rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """Prototypes in groups of CLASSES_PER_GROUP around shared parents, so some classes overlap."""
    num_groups = -(-num_classes // CLASSES_PER_GROUP)
    parents = PARENT_SPREAD * rng.standard_normal((num_groups, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    children = CHILD_SPREAD * rng.standard_normal((num_classes, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    return parents[np.arange(num_classes) // CLASSES_PER_GROUP] + children


def _random_tanh_net(rng: np.random.Generator, out_dim: int):
    """A fixed random LATENT_DIM -> HIDDEN_DIM -> out_dim tanh network (one per modality)."""
    w1 = rng.standard_normal((LATENT_DIM, HIDDEN_DIM)) * 1.5 / np.sqrt(LATENT_DIM)
    b1 = 0.5 * rng.standard_normal(HIDDEN_DIM)
    w2 = rng.standard_normal((HIDDEN_DIM, out_dim)) / np.sqrt(HIDDEN_DIM)
    return lambda x: np.tanh(np.tanh(x @ w1 + b1) @ w2)


def _observe(rng: np.random.Generator, net, latent: np.ndarray) -> np.ndarray:
    """One modality's view: private latent noise, the modality's network, then output noise."""
    private = latent + PRIVATE_NOISE * rng.standard_normal(latent.shape)
    out = net(private)
    return out + OUTPUT_NOISE * rng.standard_normal(out.shape)
