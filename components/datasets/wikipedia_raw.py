"""The Wikipedia benchmark as a mixed dataset: raw article texts + the released SIFT-128 features.

Pairs, labels, ids, the standard 2173/693 split and the seeded stratified validation split come
from ``read_wikipedia`` (so both Wikipedia datasets share their splits exactly); the text of pair
``<text id>`` is the ``<text>...</text>`` element of ``raw_texts/<text id>.xml``. About 888 of the
2,866 files are not well-formed XML as released (undefined entities such as ``&nbsp;``, stray
``&``), so the element is cut out with a regular expression, never an XML parser, and HTML
entities are then unescaped. A missing or element-less file is not an error here: the record
carries the problem and the RawExampleGen quarantines it.
"""
from __future__ import annotations

import html
import os
import re
from pathlib import Path

from components.datasets.errors import require_path
from components.datasets.raw_pairs import RawPairs, RawRecord
from components.datasets.types import SPLITS
from components.datasets.wikipedia import LIST_FILES, read_wikipedia

RAW_TEXTS_DIR = "raw_texts"
TEXT_ELEMENT = re.compile(rb"<text>(.*)</text>", re.S)
MISSING_TEXT_FILE = "missing_text_file"


def read_wikipedia_raw(data_dir: str | os.PathLike, val_fraction: float = 0.15,
                       seed: int = 0) -> RawPairs:
    """All 2,866 pairs (train, val, test in that order, file order within each).

    A record's ``row`` is its line (from 0) in its split's .list file (val rows are lines of the
    train list), its ``source`` that file, its ``text_source`` the article's XML file.
    """
    folder = require_path(data_dir, directory=True)
    texts_dir = require_path(folder / RAW_TEXTS_DIR, directory=True)
    features = read_wikipedia(folder, val_fraction=val_fraction, seed=seed)
    list_files = {"train": folder / LIST_FILES["train"], "val": folder / LIST_FILES["train"],
                  "test": folder / LIST_FILES["test"]}
    list_rows = {s: _list_rows(list_files[s]) for s in ("train", "test")}
    list_rows["val"] = list_rows["train"]
    records = []
    for split in SPLITS:
        data = features.splits[split]
        for index in range(len(data)):
            text_id = str(data.ids[index])
            xml_path = texts_dir / f"{text_id}.xml"
            text, problem = read_article_text(xml_path)
            records.append(RawRecord(
                row=list_rows[split][text_id], id=text_id,
                label=features.class_names[int(data.label[index])], split=split, text=text, source=str(list_files[split]),
                text_source=str(xml_path), image_features=data.image[index],
                text_features=data.text[index], problem=problem))
    return RawPairs(name="wikipedia_raw", records=tuple(records),
                    class_names=features.class_names)


def _list_rows(path: Path) -> dict[str, int]:
    """Text id -> its row (from 0) in a .list file, so quarantine records point at the line."""
    return {line.split("\t", 1)[0]: row
            for row, line in enumerate(path.read_text().splitlines())}


def read_article_text(path: Path) -> tuple[bytes, tuple[str, str, str] | None]:
    """(text bytes, problem) of one article file; entities unescaped when the text is UTF-8.

    Non-UTF-8 bytes are returned unchanged so the ExampleGen quarantines them as non_utf8_text.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b"", (MISSING_TEXT_FILE, "text", f"no file {path.name}")
    match = TEXT_ELEMENT.search(data)
    if match is None:
        return b"", ("empty_text", "text", "no <text>...</text> element")
    raw = match.group(1)
    try:
        return html.unescape(raw.decode("utf-8")).encode("utf-8"), None
    except UnicodeDecodeError:
        return raw, None
