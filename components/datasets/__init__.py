"""Feature dataset readers: Wikipedia benchmark, generic npz folders, the seeded demo."""
from __future__ import annotations

import os

from components.datasets.demo import make_demo_dataset
from components.datasets.errors import DatasetError
from components.datasets.feature_folder import read_feature_folder, write_feature_folder
from components.datasets.registry import FEATURE_READERS
from components.datasets.types import SPLITS, FeatureDataset, Split
from components.datasets.validation import validate_dataset, validate_split
from components.datasets.wikipedia import read_wikipedia

__all__ = ["SPLITS", "DatasetError", "FeatureDataset", "Split", "load_dataset",
           "make_demo_dataset", "read_feature_folder", "read_wikipedia", "validate_dataset",
           "validate_split", "write_feature_folder"]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, seed: int = 0,
                 val_fraction: float = 0.15) -> FeatureDataset:
    """One entry point for the pipeline: ``demo``, ``wikipedia`` or ``features`` (a feature folder).

    ``data_dir`` is ignored for ``demo`` and required otherwise (no default location is guessed);
    ``seed`` drives the demo data and Wikipedia's validation split, ``val_fraction`` the latter.
    """
    if name == "demo":
        return make_demo_dataset(seed=seed)
    if name not in FEATURE_READERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {FEATURE_READERS}")
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs data_dir (the folder holding its files)")
    if name == "wikipedia":
        return read_wikipedia(data_dir, val_fraction=val_fraction, seed=seed)
    return read_feature_folder(data_dir)
