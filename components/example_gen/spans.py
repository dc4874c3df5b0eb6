"""Data spans: one feature folder per span under a data root, matched by a pattern with ``{SPAN}``.

``<root>/span-1/{train,val,test}.npz``, ``<root>/span-2/...`` (pattern ``span-{SPAN}``; one path
component, ``{SPAN}`` a non-negative integer; each folder in the generic feature-file format).

A run trains on a rolling WINDOW of the latest ``window`` spans (their train splits
concatenated, ids prefixed ``<folder>/``) and evaluates on the val/test splits of ONE evaluation
span, so evaluation stays comparable across runs:

- ``eval_span="first"`` (default): the oldest span on disk, a fixed held-out benchmark; every
  run's MAP is measured on the same pairs (its train split is only trained on while it is in the
  window; its val/test never are).
- ``eval_span="<N>"``: span N, fixed likewise.
- ``eval_span="latest"``: the newest span of the window (tracks drift; MAPs of different runs are
  then on different pairs, though the candidate and the baseline model of one run are always
  scored on the same split).
"""
from __future__ import annotations

import json
import os
import re
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from components.datasets import FeatureDataset, Split, read_feature_folder, validate_dataset
from components.datasets.errors import DatasetError
from components.example_gen.utils import data_fingerprint

SPAN_TOKEN = "{SPAN}"
EVAL_SPAN_CHOICES = ("first", "latest")


def check_pattern(pattern: str) -> None:
    if pattern.count(SPAN_TOKEN) != 1 or "/" in pattern or os.sep in pattern:
        raise ValueError(f"span pattern {pattern!r} must be one folder name containing "
                         f"{SPAN_TOKEN} exactly once, e.g. 'span-{SPAN_TOKEN}'")


def check_eval_span(eval_span: str) -> None:
    if str(eval_span) not in EVAL_SPAN_CHOICES and not str(eval_span).isdigit():
        raise ValueError(f"eval_span must be 'first', 'latest' or a span number, "
                         f"got {eval_span!r}")


def list_spans(root: str, pattern: str) -> dict[int, str]:
    """Span number -> folder, for every folder under ``root`` matching ``pattern``."""
    check_pattern(pattern)
    before, after = pattern.split(SPAN_TOKEN)
    regex = re.compile(re.escape(before) + r"(\d+)" + re.escape(after))
    if not tf.io.gfile.isdir(root):
        raise DatasetError(root, None, "span data root is not a folder")
    spans = {}
    for name in tf.io.gfile.listdir(root):
        name = name.rstrip("/")
        match = regex.fullmatch(name)
        path = os.path.join(root, name)
        if match and tf.io.gfile.isdir(path):
            span = int(match.group(1))
            if span in spans:
                raise DatasetError(path, None, f"span {span} matched twice ({spans[span]})")
            spans[span] = path
    return spans


def latest_span(root: str, pattern: str) -> Optional[int]:
    spans = list_spans(root, pattern)
    return max(spans) if spans else None


def select_window(spans: Sequence[int], window: int, latest: Optional[int] = None) -> list[int]:
    """The ``window`` newest spans at or below ``latest`` (default: the newest), oldest first."""
    if window < 1:
        raise ValueError(f"span window must be >= 1, got {window}")
    eligible = sorted(s for s in spans if latest is None or s <= latest)
    if not eligible:
        raise ValueError(f"no span at or below {latest}" if latest is not None else "no spans")
    return eligible[-window:]


def resolve_eval_span(spans: Sequence[int], window_spans: Sequence[int], eval_span: str) -> int:
    check_eval_span(eval_span)
    if str(eval_span) == "first":
        return min(spans)
    if str(eval_span) == "latest":
        return max(window_spans)
    span = int(eval_span)
    if span not in spans:
        raise ValueError(f"evaluation span {span} not found (spans: {sorted(spans)})")
    return span


def resolve(root: str, pattern: str, window: int, eval_span: str,
            latest: Optional[int] = None) -> tuple[list[int], int, dict[int, str]]:
    """(window spans, evaluation span, span -> folder)."""
    folders = list_spans(root, pattern)
    if not folders:
        raise DatasetError(root, None, f"no span folder matching '{pattern}'")
    window_spans = select_window(list(folders), window, latest)
    return window_spans, resolve_eval_span(list(folders), window_spans, eval_span), folders


def spans_fingerprint(folders: dict[int, str], used: Sequence[int]) -> str:
    """Path, size and mtime of every file of the spans used: a new span or an edit changes it."""
    return ";".join(f"span:{s}," + data_fingerprint(folders[s]) for s in sorted(set(used)))


def _prefixed(split: Split, prefix: str) -> Split:
    ids = np.array([f"{prefix}/{i}" for i in split.ids], dtype=str)
    return Split(split.image, split.text, split.label, ids)


def load_span_window(root: str, pattern: str, window: int, eval_span: str = "first",
                     latest: Optional[int] = None) -> tuple[FeatureDataset, list[int], int]:
    """The window's train splits concatenated + the evaluation span's val/test.

    Returns (dataset, window spans, evaluation span). All spans must share the class list and
    the feature dimensions (checked; errors name the span's file).
    """
    window_spans, eval_span_number, folders = resolve(root, pattern, window, eval_span, latest)
    datasets = {s: read_feature_folder(folders[s])
                for s in sorted({*window_spans, eval_span_number})}
    reference = datasets[eval_span_number]
    for span, dataset in datasets.items():
        if dataset.class_names != reference.class_names:
            raise DatasetError(folders[span], "classes", (
                f"span {span} has classes {list(dataset.class_names)}, span "
                f"{eval_span_number} has {list(reference.class_names)}"))
    trains = [_prefixed(datasets[s].splits["train"], os.path.basename(folders[s]))
              for s in window_spans]
    train = Split(np.concatenate([t.image for t in trains]),
                  np.concatenate([t.text for t in trains]),
                  np.concatenate([t.label for t in trains]),
                  np.concatenate([t.ids for t in trains]))
    prefix = os.path.basename(folders[eval_span_number])
    splits = {"train": train,
              "val": _prefixed(reference.splits["val"], prefix),
              "test": _prefixed(reference.splits["test"], prefix)}
    paths = {"train": ",".join(folders[s] for s in window_spans),
             "val": os.path.join(folders[eval_span_number], "val.npz"),
             "test": os.path.join(folders[eval_span_number], "test.npz")}
    name = f"spans {window_spans} (eval span {eval_span_number})"
    return validate_dataset(name, splits, reference.class_names, paths), window_spans, \
        eval_span_number


def spans_json(spans: Sequence[int]) -> str:
    return json.dumps([int(s) for s in spans])
