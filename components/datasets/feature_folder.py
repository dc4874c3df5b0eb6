"""The generic feature-file format, so any precomputed features can be trained on.

A folder holds ``train.npz``, ``val.npz`` and ``test.npz``, each with ``image`` [N, d_img] float32,
``text`` [N, d_txt] float32, ``label`` [N] int64 and optionally ``id`` [N] str (default
``<split>-<row>``), plus an optional ``classes.txt`` with one class name per line (default:
``class_<i>`` for i < 1 + the largest label over all splits).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from components.datasets.errors import DatasetError, require_path
from components.datasets.types import SPLITS, FeatureDataset, Split, default_class_names
from components.datasets.validation import validate_dataset, validate_split

CLASSES_FILE = "classes.txt"


def read_feature_folder(path: str | os.PathLike) -> FeatureDataset:
    """Read and validate a feature folder (see the module docstring for the layout)."""
    folder = require_path(path, directory=True)
    class_file = folder / CLASSES_FILE
    class_names = read_class_names(class_file) if class_file.exists() else None
    num_classes = len(class_names) if class_names is not None else None
    paths = {s: folder / f"{s}.npz" for s in SPLITS}
    splits = {s: _read_split(s, paths[s], num_classes) for s in SPLITS}
    if class_names is None:
        class_names = default_class_names(1 + max(int(sp.label.max()) for sp in splits.values()))
    return validate_dataset(folder.name, splits, class_names, paths)


def write_feature_folder(dataset: FeatureDataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` so that read_feature_folder gives it back unchanged."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in dataset.splits.items():
        np.savez(folder / f"{name}.npz", image=split.image.astype(np.float32),
                 text=split.text.astype(np.float32), label=split.label.astype(np.int64),
                 id=np.asarray(split.ids, dtype=str))
    (folder / CLASSES_FILE).write_text("".join(f"{c}\n" for c in dataset.class_names))
    return folder


def read_class_names(path: str | os.PathLike) -> tuple[str, ...]:
    """One class name per line, in label order; blank or repeated names are errors."""
    data = require_path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        row = data[:error.start].count(b"\n")
        raise DatasetError(path, "class name", f"not UTF-8 ({error.reason} at byte "
                           f"{error.start}); save the file as UTF-8", row=row) from None
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    names = tuple(line.strip() for line in lines)
    for row, name in enumerate(names):
        if not name:
            raise DatasetError(path, "class name", "blank class name", row=row)
        if name in names[:row]:
            raise DatasetError(path, "class name", f"repeated class name '{name}'", row=row)
    return names


def _read_split(split_name: str, path: Path, num_classes: int | None) -> Split:
    with _open_npz(path) as npz:
        arrays = {key: _read_array(path, npz, key) for key in ("image", "text", "label", "id")}
    return validate_split(split_name, path, arrays["image"], arrays["text"], arrays["label"],
                          arrays["id"], num_classes=num_classes)


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    require_path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DatasetError(path, None, f"not a readable .npz file ({err})") from err
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError(path, None, "not an .npz archive (a single .npy array?)")
    return npz


def _read_array(path: Path, npz, key: str) -> np.ndarray | None:
    if key not in npz.files:
        return None
    try:
        return npz[key]
    except ValueError as err:  # e.g. an object array, which would need pickle
        raise DatasetError(path, key, f"unreadable array ({err})") from err
