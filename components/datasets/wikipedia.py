"""Reader for the Wikipedia benchmark (Rasiwasia et al. 2010) as released with its own features.

Layout (see /work/shared/data/wikipedia/PROVENANCE.md): ``raw_features.mat`` holds ``I_tr``/``I_te``
(128-d SIFT bag-of-words histograms) and ``T_tr``/``T_te`` (10-topic LDA proportions);
``trainset_txt_img_cat.list`` / ``testset_txt_img_cat.list`` hold ``<text id>\t<image id>\t<class
1..10>`` with line i matching row i; ``categories.list`` names the classes in label order.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from components.datasets.errors import DatasetError, require_path
from components.datasets.feature_folder import read_class_names
from components.datasets.types import FeatureDataset, Split
from models.data import stratified_holdout
from components.datasets.validation import validate_dataset, validate_split

MAT_FILE = "raw_features.mat"
CATEGORIES_FILE = "categories.list"
LIST_FILES = {"train": "trainset_txt_img_cat.list", "test": "testset_txt_img_cat.list"}
MAT_KEYS = {"train": ("I_tr", "T_tr"), "test": ("I_te", "T_te")}


def read_wikipedia(data_dir: str | os.PathLike, val_fraction: float = 0.15,
                   seed: int = 0) -> FeatureDataset:
    """The standard 2173/693 train/test benchmark, with a validation split carved from train.

    The validation split takes, from every class separately, a seeded random
    ``round(val_fraction * n_class)`` of its train pairs (at least one pair stays in train), so val
    keeps train's class proportions and model selection does not touch the standard 693-pair test
    split. Pairs keep their file order within each split. Features are the raw float32
    histograms / topic proportions, unnormalised; ids are the text ids.
    """
    folder = require_path(data_dir, directory=True)
    class_names = read_class_names(folder / CATEGORIES_FILE)
    mat = _load_mat(require_path(folder / MAT_FILE))
    paths = {s: _field_paths(folder, s) for s in LIST_FILES}
    full = {s: _read_split(s, mat, paths[s], len(class_names)) for s in LIST_FILES}
    in_val = stratified_holdout(full["train"].label, val_fraction, seed)
    splits = {"train": full["train"].subset(~in_val), "val": full["train"].subset(in_val),
              "test": full["test"]}
    paths["val"] = paths["train"]
    return validate_dataset("wikipedia", splits, class_names, paths)


def _field_paths(folder: Path, split: str) -> dict[str, Path]:
    """Features come from the .mat file, labels and ids from the split's .list file."""
    list_path = folder / LIST_FILES[split]
    return {"image": folder / MAT_FILE, "text": folder / MAT_FILE, "label": list_path,
            "id": list_path}


def _read_split(split: str, mat: dict, paths: dict[str, Path], num_classes: int) -> Split:
    image_key, text_key = MAT_KEYS[split]
    ids, classes = _read_list(require_path(paths["label"]))
    return validate_split(split, paths, _mat_array(mat, paths["image"], image_key, "image"),
                          _mat_array(mat, paths["text"], text_key, "text"), classes - 1, ids,
                          num_classes=num_classes)


def _load_mat(path: Path) -> dict:
    try:
        return scipy.io.loadmat(path)
    except (OSError, ValueError, MatReadError) as err:
        raise DatasetError(path, None, f"not a readable MATLAB file ({err})") from err


def _mat_array(mat: dict, path: Path, key: str, field: str) -> np.ndarray:
    if key not in mat:
        raise DatasetError(path, field, f"missing variable '{key}'")
    return mat[key]


def _read_list(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Text ids and 1-based classes of ``<text id>\t<image id>\t<class>`` lines."""
    ids, classes = [], []
    for row, line in enumerate(path.read_text().splitlines()):
        fields = line.split("\t")
        if len(fields) != 3:
            raise DatasetError(path, None, "expected 3 tab-separated fields (text id, image id, "
                               f"class), got {len(fields)}", row=row)
        try:
            classes.append(int(fields[2]))
        except ValueError:
            raise DatasetError(path, "label", f"class '{fields[2]}' is not an integer",
                               row=row) from None
        ids.append(fields[0])
    return np.array(ids, dtype=str), np.array(classes, dtype=np.int64)
