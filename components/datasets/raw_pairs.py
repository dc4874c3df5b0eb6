"""Reader of a raw pair folder: ``pairs.csv`` (+ optional ``classes.txt``) and the image files.

``pairs.csv`` has a header with the columns ``id``, ``image`` (path relative to the folder),
``text`` (the caption, any length), ``label`` (a class NAME) and optionally ``split``
(``train``/``val``/``test``). ``classes.txt`` (one class name per line) fixes the class list and
its order; without it the classes are the sorted distinct non-empty labels.

Rows without a split (no column, or an empty value) get a seeded stratified split: within each
label, a seeded permutation of its rows in file order, cut at the train/val/test fractions.

Only file-level problems raise DatasetError (missing pairs.csv, missing required column, a row
with the wrong number of fields, an unknown split value). Row-level problems (missing image,
empty or non-UTF-8 text, missing or unknown label, duplicate or missing id) are left for the
RawExampleGen to quarantine, so the text is kept as raw bytes here.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import stat
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from components.datasets.errors import DatasetError, require_path
from components.datasets.feature_folder import read_class_names
from components.datasets.types import SPLITS

PAIRS_FILE = "pairs.csv"
CLASSES_FILE = "classes.txt"
REQUIRED_COLUMNS = ("id", "image", "text", "label")
SPLIT_COLUMN = "split"
DEFAULT_SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
# csv's default field limit (128 KiB) is too small for a long article; bigger cells than this are
# refused with the file and row named (the whole file is in memory anyway).
MAX_FIELD_BYTES = 64 << 20
IMAGE_OUTSIDE_FOLDER = "image_outside_folder"
NOT_A_REGULAR_FILE = "not_a_regular_file"


@dataclasses.dataclass(frozen=True)
class RawRecord:
    """One pair as read, before any validation (Beam validates and quarantines).

    ``row`` counts data rows of ``source`` from 0 (the header is not a row). Exactly one of
    ``image_path`` (file to decode) and ``image_features`` (a precomputed vector) is set, unless
    the CSV's image cell is empty (both None: a missing image file). ``text_features`` is set
    for mixed datasets that also ship text vectors.
    """

    row: int
    id: str
    label: str
    split: str
    text: bytes
    source: str  # the file the record came from (pairs.csv, or a benchmark's list file)
    text_source: str  # the file holding the text (pairs.csv, or an article's XML file)
    image: str = ""  # as written in pairs.csv (relative path)
    image_path: str | None = None
    image_features: np.ndarray | None = None
    text_features: np.ndarray | None = None
    problem: tuple[str, str, str] | None = None  # (reason, field, detail) found while reading
    root: str | None = None  # the data folder image paths must stay in (default: source's)


@dataclasses.dataclass(frozen=True)
class RawPairs:
    """All records of a raw dataset (file order) and its class list (label index order)."""

    name: str
    records: tuple[RawRecord, ...]
    class_names: tuple[str, ...]

    def split_sizes(self) -> dict[str, int]:
        return {s: sum(r.split == s for r in self.records) for s in SPLITS}


def split_fractions_for(val_fraction: float) -> dict[str, float]:
    """Component parameter -> fractions: val and test each take ``val_fraction``."""
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5) for a raw split, got {val_fraction}")
    return {"train": 1.0 - 2 * val_fraction, "val": val_fraction, "test": val_fraction}


def read_raw_pairs(folder: str | os.PathLike, *, seed: int = 0,
                   split_fractions: Mapping[str, float] | None = None) -> RawPairs:
    """Read ``folder/pairs.csv`` (see the module docstring); images are not opened here."""
    folder = require_path(folder, directory=True)
    path = require_path(folder / PAIRS_FILE)
    fractions = _check_fractions(split_fractions or DEFAULT_SPLIT_FRACTIONS)
    header, rows = _read_csv(path)
    records = []
    for row, fields in enumerate(rows):
        cell = dict(zip(header, fields))
        split = _text(cell.get(SPLIT_COLUMN, b"")).strip().lower()
        if split and split not in SPLITS:
            raise DatasetError(path, SPLIT_COLUMN, f"unknown split '{split}' (expected one of "
                               f"{', '.join(SPLITS)}, or empty for a seeded split)", row=row)
        image = _text(cell["image"]).strip()
        records.append(RawRecord(
            row=row, id=_text(cell["id"]).strip(), label=_text(cell["label"]).strip(),
            split=split, text=cell["text"], source=str(path), text_source=str(path),
            image=image, image_path=str(folder / image) if image else None, root=str(folder)))
    if not records:
        raise DatasetError(path, None, "no data rows after the header")
    class_file = folder / CLASSES_FILE
    if class_file.exists():
        class_names = read_class_names(class_file)
    else:
        class_names = tuple(sorted({r.label for r in records if r.label}))
        if not class_names:
            raise DatasetError(path, "label", "no row has a label, and there is no classes.txt")
    records = assign_splits(records, seed, fractions)
    return RawPairs(name=folder.name, records=tuple(records), class_names=class_names)


def image_path_problem(folder: str, cell: str) -> tuple[str, str, str] | None:
    """(reason, field, detail) when pairs.csv's image cell leaves the data folder or names
    something that is not a regular file, else None (a missing file is the caller's to report).

    pairs.csv is untrusted: an absolute path, ``..`` or a symlink pointing out of the folder
    could make the pipeline read (and show on the search page) any file the user can read, and a
    FIFO or device would block or never end. Nothing is opened here, only stat'ed."""
    if not cell:
        return None
    where = f"'{cell}' (data folder {folder})"
    parts = cell.replace("\\", "/").split("/")
    if os.path.isabs(cell) or cell.startswith(("/", "\\")) or "://" in cell or (
            len(cell) > 1 and cell[1] == ":") or ".." in parts:
        return IMAGE_OUTSIDE_FOLDER, "image", f"{where}: image paths must be relative to the " \
                                              "data folder, without '..'"
    if "://" in folder:  # remote storage (gs://...): no symlinks or special files there
        return None
    root = os.path.realpath(folder)
    resolved = os.path.realpath(os.path.join(folder, cell))
    if os.path.commonpath([root, resolved]) != root:
        return IMAGE_OUTSIDE_FOLDER, "image", f"{where}: a symbolic link leads out of the " \
                                              "data folder"
    try:
        mode = os.stat(resolved).st_mode
    except OSError:
        return None  # missing: reported as missing_image_file
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "special")
        return NOT_A_REGULAR_FILE, "image", f"{where} is {kind}, not a regular file"
    return None


def assign_splits(records: Sequence[RawRecord], seed: int,
                  fractions: Mapping[str, float]) -> list[RawRecord]:
    """Give rows without a split a seeded stratified one (per label, in sorted label order)."""
    rng = np.random.default_rng(seed)
    unsplit: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        if not record.split:
            unsplit.setdefault(record.label, []).append(index)
    assigned = list(records)
    for label in sorted(unsplit):
        rows = unsplit[label]
        order = rng.permutation(len(rows))
        for position, split in zip(order, _split_sequence(len(rows), fractions)):
            assigned[rows[position]] = dataclasses.replace(records[rows[position]], split=split)
    return assigned


def _split_sequence(n: int, fractions: Mapping[str, float]) -> list[str]:
    """n split names: round(fraction * n) each for val and test, the rest (at least 1) train."""
    n_val = int(fractions["val"] * n + 0.5)
    n_test = int(fractions["test"] * n + 0.5)
    while n > 0 and n - n_val - n_test < 1:  # keep one pair in train
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test


def _check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    fractions = {s: float(fractions.get(s, 0.0)) for s in SPLITS}
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    return fractions


def _read_csv(path: Path) -> tuple[list[str], list[list[bytes]]]:
    """Header names and the rows' cells as the original bytes (non-UTF-8 text survives).

    The file is decoded with surrogateescape, so invalid bytes pass through the csv module and
    are restored exactly when the cells are encoded back.
    """
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # UTF-8 byte order mark (Excel)
    reader = csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))
    csv.field_size_limit(MAX_FIELD_BYTES)
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        raise DatasetError(path, None, "empty file (no header)") from None
    except csv.Error as error:
        raise DatasetError(path, None, f"the header cannot be read: {error}") from None
    for column in REQUIRED_COLUMNS:
        if column not in header:
            raise DatasetError(path, column, f"missing required column (header: {header})")
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise DatasetError(path, repeated[0], f"column appears {header.count(repeated[0])} "
                           f"times in the header {header}; each column must appear once")
    rows = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # e.g. a cell over the field limit
            raise DatasetError(path, None, f"{error} near line {reader.line_num} (a cell may "
                               f"hold at most {MAX_FIELD_BYTES} characters)",
                               row=len(rows)) from None
        if not fields or fields == [""]:
            continue  # blank line
        if len(fields) != len(header):
            raise DatasetError(path, None, f"has {len(fields)} fields, the header has "
                               f"{len(header)} (unquoted comma in a caption?)", row=len(rows))
        rows.append([f.encode("utf-8", "surrogateescape") for f in fields])
    return header, rows


def _text(cell: bytes) -> str:
    """A non-text cell (id, image, label, split) as str; invalid bytes shown as \\x.. escapes."""
    return cell.decode("utf-8", "backslashreplace")
