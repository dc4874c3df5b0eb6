"""Regression tests for issue 15 (raw reader): pairs.csv is untrusted. Image paths must stay in
the data folder and name regular files, no file bytes reach the quarantine, huge images are
refused from their header, and file-level CSV problems name the file and row.

The RawExampleGen executor runs with real Beam (DirectRunner, in memory) on tiny folders.
"""
from __future__ import annotations

import collections
import errno
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.datasets import DatasetError
from components.datasets import raw_pairs
from components.datasets.raw_pairs import read_raw_pairs

from test_hardening_serving import png_header_only
from test_raw_example_gen import read_quarantine, run_executor

SECRET = b"root:x:0:0:SECRET-LINE-FROM-OUTSIDE\n"


def png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class FifoUnblocker:
    """Opens the FIFO's write end as soon as anyone reads it, so a regression (the reader
    opening the FIFO) ends in a wrong answer instead of a test that never finishes."""

    def __init__(self, path: Path):
        self.path, self.stop = path, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.05):
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as error:
                if error.errno != errno.ENXIO:  # ENXIO: nobody is reading; keep waiting
                    return

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    outside = base / "outside"
    outside.mkdir()
    (outside / "outside.png").write_bytes(png(12, 12, 1))
    (outside / "passwd").write_bytes(SECRET)
    folder = base / "data"
    (folder / "img").mkdir(parents=True)
    for index, split in enumerate(("train", "val", "test")):
        (folder / "img" / f"good{index}.png").write_bytes(png(16, 16, index))
    (folder / "img" / "secret.jpg").write_bytes(SECRET)
    (folder / "img" / "huge.png").write_bytes(png_header_only(20000, 20000))
    (folder / "img" / "big.png").write_bytes(png(30, 30, 7))  # 900 px > the 500 px limit
    os.symlink(outside / "outside.png", folder / "img" / "link.png")
    os.symlink("/dev/zero", folder / "img" / "zero.png")
    os.mkfifo(folder / "img" / "fifo.png")
    rows = [
        ("g0", "img/good0.png", "train", None), ("g1", "img/good1.png", "val", None),
        ("g2", "img/good2.png", "test", None),
        ("dotdot", "../outside/outside.png", "train", "image_outside_folder"),
        ("dotdot-inner", "img/../../outside/outside.png", "train", "image_outside_folder"),
        ("absolute", str(outside / "outside.png"), "train", "image_outside_folder"),
        ("etc-passwd", str(outside / "passwd"), "train", "image_outside_folder"),
        ("symlink-out", "img/link.png", "train", "image_outside_folder"),
        ("dev-zero-abs", "/dev/zero", "train", "image_outside_folder"),
        ("dev-zero-link", "img/zero.png", "train", "image_outside_folder"),
        ("fifo", "img/fifo.png", "train", "not_a_regular_file"),
        ("secret", "img/secret.jpg", "train", "not_an_image"),
        ("huge", "img/huge.png", "train", "image_too_large"),
        ("big", "img/big.png", "train", "image_too_large"),
    ]
    lines = ["id,image,text,label,split"] + [f"{i},{p},a caption,red,{s}" for i, p, s, _ in rows]
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    (folder / "classes.txt").write_text("red\nblue\n")
    unblocker = FifoUnblocker(folder / "img" / "fifo.png")
    try:
        _, quarantine = run_executor(base / "run", data_dir=str(folder), max_image_pixels=500)
    finally:
        unblocker.close()
    return rows, read_quarantine(quarantine.uri)


def test_image_paths_leaving_the_folder_or_special_files_are_quarantined(hostile_run):
    rows, (records, summary) = hostile_run
    expected = {i: reason for i, _, _, reason in rows if reason}
    assert {r["id"]: r["reason"] for r in records} == expected
    assert summary["accepted"] == 3
    assert summary["by_reason"] == dict(collections.Counter(expected.values()))
    assert summary["records_in"] == summary["accepted"] + summary["quarantined"]


def test_no_file_bytes_reach_the_quarantine(hostile_run):
    _, (records, _) = hostile_run
    text = repr(records)
    assert "SECRET" not in text and SECRET[:8].hex() not in text
    secret = next(r for r in records if r["id"] == "secret")
    assert "bytes, no JPEG/PNG signature" in secret["detail"]


def test_huge_images_are_refused_from_their_header_with_the_limit_named(hostile_run):
    _, (records, _) = hostile_run
    big = next(r for r in records if r["id"] == "big")
    assert "30x30 = 900 pixels; the limit is 500" in big["detail"]
    huge = next(r for r in records if r["id"] == "huge")
    assert huge["reason"] == "image_too_large"


# --------------------------------------------------------------------------- CSV / classes
def _folder(tmp_path: Path, header: str, rows: list[str]) -> Path:
    (tmp_path / "pairs.csv").write_text("\n".join([header, *rows]) + "\n")
    return tmp_path


def test_a_long_document_cell_is_read(tmp_path):
    document = "word " * (2 << 20)  # 10 MiB: csv's default limit is 128 KiB
    pairs = read_raw_pairs(_folder(tmp_path, "id,image,text,label", [
        f'a,x.png,"{document}",red']))
    assert len(pairs.records[0].text) == len(document)


def test_a_cell_over_the_field_limit_names_the_file_and_row(tmp_path, monkeypatch):
    monkeypatch.setattr(raw_pairs, "MAX_FIELD_BYTES", 1000)
    folder = _folder(tmp_path, "id,image,text,label", [
        "a,x.png,short,red", f'b,y.png,"{"z" * 5000}",red'])
    with pytest.raises(DatasetError) as caught:
        read_raw_pairs(folder)
    assert caught.value.path == str(folder / "pairs.csv") and caught.value.row == 1
    assert "at most 1000 characters" in str(caught.value)


def test_duplicate_header_columns_are_a_dataset_error(tmp_path):
    folder = _folder(tmp_path, "id,image,text,label,text", ["a,x.png,one,red,two"])
    with pytest.raises(DatasetError) as caught:
        read_raw_pairs(folder)
    assert caught.value.path == str(folder / "pairs.csv") and caught.value.field == "text"
    assert "appears 2 times" in str(caught.value)


def test_a_non_utf8_classes_file_is_a_dataset_error_naming_it(tmp_path):
    folder = _folder(tmp_path, "id,image,text,label", ["a,x.png,one,red"])
    (folder / "classes.txt").write_bytes(b"red\ncaf\xe9\n")
    with pytest.raises(DatasetError) as caught:
        read_raw_pairs(folder)
    assert caught.value.path == str(folder / "classes.txt") and caught.value.row == 1
    assert "not UTF-8" in str(caught.value)
