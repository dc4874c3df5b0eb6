"""Checks every reader runs before data reaches the models.

Nothing is repaired silently: a value is only cast (features to float32, labels to int64) when the
cast keeps it, otherwise the first offending row is reported as a DatasetError.
"""
from __future__ import annotations

import collections
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np

from components.datasets.errors import DatasetError
from components.datasets.types import SPLITS, FeatureDataset, Split

PathLike = Union[str, os.PathLike]
# One path for the whole split, or one per field when the fields come from different files.
SplitPath = Union[PathLike, Mapping[str, PathLike]]

_FIELDS = ("image", "text", "label", "id")
_FLOAT32_EXACT_INT = 2 ** 24  # integers beyond this lose digits in float32


def default_ids(split_name: str, num_rows: int) -> np.ndarray:
    """Ids for files that carry none: ``<split>-<row>``, unique within the dataset."""
    return np.array([f"{split_name}-{i}" for i in range(num_rows)], dtype=str)


def validate_split(split_name: str, path: SplitPath, image, text, label, ids=None,
                   num_classes: int | None = None, image_dim: int | None = None,
                   text_dim: int | None = None) -> Split:
    """Check one split's arrays and return them as a float32/int64/str Split.

    ``path`` names the source in errors; a mapping gives one path per field (keys image, text,
    label, id; errors call the ids field 'id' as the file format does). ``ids=None`` gives
    default ids. ``num_classes``, ``image_dim`` and ``text_dim`` are checked when given, e.g. with
    the train split's values for val and test.
    """
    where = _locator(path)
    arrays = {"image": image, "text": text, "label": label, "id": ids}
    for field in ("image", "text", "label"):
        if arrays[field] is None:
            raise DatasetError(where(field), field, "missing array")
    arrays = {f: np.asarray(a) for f, a in arrays.items() if a is not None}
    for field, ndim in (("image", 2), ("text", 2), ("label", 1), ("id", 1)):
        if field in arrays and arrays[field].ndim != ndim:
            raise DatasetError(where(field), field,
                               f"expected a {ndim}-D array, got shape {arrays[field].shape}")
    num_rows = _check_row_counts(where, arrays)
    if "id" not in arrays:
        arrays["id"] = default_ids(split_name, num_rows)
    image = _as_float32(where("image"), "image", arrays["image"], image_dim)
    text = _as_float32(where("text"), "text", arrays["text"], text_dim)
    label = _as_labels(where("label"), arrays["label"], num_classes)
    ids = _as_ids(where("id"), arrays["id"])
    return Split(image=image, text=text, label=label, ids=ids)


def validate_dataset(name: str, splits: Mapping[str, Split], class_names: Sequence[str],
                     paths: Mapping[str, SplitPath] | None = None) -> FeatureDataset:
    """Check that all of SPLITS are present and share the train split's dims and the classes.

    ``paths`` maps split name to the source named in errors (default: the split name).
    """
    paths = dict(paths or {})
    class_names = tuple(class_names)
    if not class_names:
        raise DatasetError(name, None, "no class names")
    for split_name in SPLITS:
        if split_name not in splits:
            raise DatasetError(paths.get(split_name, split_name), None, "missing split")
    train = splits["train"]
    checked = {
        s: validate_split(s, paths.get(s, s), splits[s].image, splits[s].text, splits[s].label,
                          splits[s].ids, num_classes=len(class_names),
                          image_dim=train.image.shape[1], text_dim=train.text.shape[1])
        for s in SPLITS
    }
    return FeatureDataset(name=name, splits=checked, class_names=class_names)


def _locator(path: SplitPath) -> Callable[[str], PathLike]:
    if isinstance(path, Mapping):
        return lambda field: path[field]
    return lambda field: path


def _raise_at_first(path: PathLike, field: str, bad: np.ndarray,
                    describe: Callable[[tuple[int, ...]], str]) -> None:
    """Raise for the first row where ``bad`` holds; ``describe`` gets the bad element's index."""
    if not bad.any():
        return
    index = tuple(int(i) for i in np.argwhere(bad)[0])  # row-major: first bad row, then column
    raise DatasetError(path, field, describe(index), row=index[0])


def _check_row_counts(where, arrays: Mapping[str, np.ndarray]) -> int:
    """Blame the field whose row count differs from the majority (ties go to 'image')."""
    counts = {f: int(arrays[f].shape[0]) for f in _FIELDS if f in arrays}
    expected = collections.Counter(counts.values()).most_common(1)[0][0]
    reference = next(f for f in counts if counts[f] == expected)
    for field, count in counts.items():
        if count != expected:
            other = where(reference)
            source = "" if where(field) == other else f" in {Path(other).name}"
            raise DatasetError(where(field), field,
                               f"has {count} rows but '{reference}'{source} has {expected}",
                               row=min(count, expected))  # the first row without a partner
    if expected == 0:
        raise DatasetError(where("label"), "label", "split has no rows")
    return expected


def _as_float32(path: PathLike, field: str, a: np.ndarray, expected_dim: int | None) -> np.ndarray:
    """Features as float32; float64 rounds to float32 precision, but overflow is an error."""
    if a.dtype.kind not in "fiu":
        raise DatasetError(path, field, f"dtype {a.dtype} is not numeric")
    if a.shape[1] == 0:
        raise DatasetError(path, field, "has no feature columns", row=0)
    if expected_dim is not None and a.shape[1] != expected_dim:
        raise DatasetError(path, field, f"has {a.shape[1]} columns, expected {expected_dim}",
                           row=0)
    if a.dtype.kind in "iu":
        _raise_at_first(path, field, np.abs(a.astype(np.float64)) > _FLOAT32_EXACT_INT,
                        lambda i: f"integer value {a[i]} at column {i[1]} is not exact in float32")
        return a.astype(np.float32)
    _raise_at_first(path, field, ~np.isfinite(a),
                    lambda i: f"non-finite value {a[i]} at column {i[1]}")
    out = a.astype(np.float32)
    _raise_at_first(path, field, ~np.isfinite(out),
                    lambda i: f"value {a[i]} at column {i[1]} is outside the float32 range")
    return out


def _as_labels(path: PathLike, a: np.ndarray, num_classes: int | None) -> np.ndarray:
    """Integer class labels in [0, num_classes); integral floats (2.0) are accepted, 2.5 is not."""
    if a.dtype.kind not in "fiu":
        raise DatasetError(path, "label", f"dtype {a.dtype} is not an integer label type")
    values = a.astype(np.float64)
    upper = num_classes if num_classes is not None else float(np.iinfo(np.int64).max)

    def problem(v: float) -> str:
        if not (np.isfinite(v) and v == np.floor(v)):
            return "is not an integer"
        return "is negative" if v < 0 else f"is out of range [0, {upper:.0f})"

    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values != np.floor(values)) | (values < 0) | (values >= upper)
    _raise_at_first(path, "label", bad, lambda i: f"label {a[i]} {problem(values[i])}")
    return a.astype(np.int64)


def _as_ids(path: PathLike, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind not in "USOiu":
        raise DatasetError(path, "id", f"dtype {a.dtype} is not a string or integer id type")
    ids = a.astype(str)
    _, first = np.unique(ids, return_index=True)
    repeated = np.ones(len(ids), dtype=bool)
    repeated[first] = False

    def describe(i: tuple[int, ...]) -> str:
        return f"duplicate id '{ids[i]}' (first at row {int(np.argmax(ids == ids[i]))})"

    _raise_at_first(path, "id", repeated, describe)
    return ids
