"""Spans, the retraining lock and the schedule loop, without running the pipeline (fast)."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from components.example_gen import spans
from components.datasets import DatasetError, FeatureDataset, write_feature_folder
from pipeline.config import DataConfig, PipelineConfig
from pipeline.retrain import LockHeld, parse_interval, retrain_lock

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("10m", 600), ("6h", 21600),
                                           ("1d", 86400), ("90", 90), ("1.5h", 5400)])
def test_parse_interval(text, seconds):
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-1m", "6 hours", "h"])
def test_parse_interval_rejects_nonsense(text):
    with pytest.raises(ValueError, match="interval"):
        parse_interval(text)


@pytest.fixture(scope="module")
def span_root(tiny_dataset, tmp_path_factory):
    """span-1, span-2, span-10 (numeric order, not lexical) and a folder that does not match."""
    root = tmp_path_factory.mktemp("spans")
    for span in (1, 2, 10):
        splits = {name: split.subset(np.arange(len(split)) < len(split) - span)
                  for name, split in tiny_dataset.splits.items()}
        write_feature_folder(FeatureDataset("tiny", splits, tiny_dataset.class_names),
                             root / f"span-{span}")
    (root / "notes").mkdir()
    return root


def test_spans_are_listed_numerically_and_the_window_is_the_latest(span_root):
    assert sorted(spans.list_spans(str(span_root), "span-{SPAN}")) == [1, 2, 10]
    assert spans.latest_span(str(span_root), "span-{SPAN}") == 10
    assert spans.select_window([1, 2, 10], 2) == [2, 10]
    assert spans.select_window([1, 2, 10], 5) == [1, 2, 10]
    assert spans.select_window([1, 2, 10], 2, latest=2) == [1, 2]


def test_window_concatenates_train_and_evaluates_on_a_fixed_span(span_root, tiny_dataset):
    n = len(tiny_dataset.splits["train"])
    dataset, window, eval_span = spans.load_span_window(str(span_root), "span-{SPAN}", 2)
    assert window == [2, 10] and eval_span == 1
    assert len(dataset.splits["train"]) == (n - 2) + (n - 10)
    assert dataset.splits["train"].ids[0].startswith("span-2/")
    assert dataset.splits["train"].ids[-1].startswith("span-10/")
    assert len(dataset.splits["val"]) == len(tiny_dataset.splits["val"]) - 1  # span 1's val
    assert dataset.splits["val"].ids[0].startswith("span-1/")

    latest, _, latest_eval = spans.load_span_window(str(span_root), "span-{SPAN}", 1,
                                                    eval_span="latest")
    assert latest_eval == 10 and len(latest.splits["test"]) == (
        len(tiny_dataset.splits["test"]) - 10)
    assert spans.load_span_window(str(span_root), "span-{SPAN}", 1, eval_span="2")[2] == 2


def test_spans_with_different_classes_are_rejected(span_root, tiny_dataset, tmp_path):
    root = tmp_path / "root"
    write_feature_folder(tiny_dataset, root / "span-1")
    renamed = FeatureDataset("x", tiny_dataset.splits,
                             tuple(f"other_{c}" for c in tiny_dataset.class_names))
    write_feature_folder(renamed, root / "span-2")
    with pytest.raises(DatasetError, match="classes"):
        spans.load_span_window(str(root), "span-{SPAN}", 2)


def test_span_config_is_validated_and_round_trips(tmp_path):
    data = DataConfig(dataset="features", data_dir=str(tmp_path), span_pattern="day-{SPAN}",
                      span_window=3, eval_span="latest")
    config = PipelineConfig(data=data)
    assert PipelineConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert PipelineConfig().data.span_pattern is None  # no spans unless configured
    for bad in (dict(span_pattern="span"), dict(span_pattern="a/{SPAN}"),
                dict(span_pattern="s-{SPAN}", span_window=0),
                dict(span_pattern="s-{SPAN}", eval_span="newest")):
        with pytest.raises(ValueError):
            DataConfig(dataset="features", data_dir=str(tmp_path), **bad)


def test_the_lock_admits_one_holder_at_a_time(tmp_path):
    path = str(tmp_path / "root" / ".retrain.lock")
    with retrain_lock(path):
        with pytest.raises(LockHeld, match="another retraining run holds"):
            with retrain_lock(path):
                pass
    with retrain_lock(path):  # released
        pass


# Two schedule loops on ONE lock; each "run" takes the lock, records its start and end, and
# takes longer than the interval, so the loops contend for the lock all the time.
_LOOP = r"""
import os, sys, time
from pipeline.retrain import LockHeld, RetrainOutcome, retrain_lock, schedule_loop

lock, record = sys.argv[1], sys.argv[2]

def run():
    try:
        with retrain_lock(lock):
            start = time.time()
            with open(record, "a") as f:
                f.write(f"start {os.getpid()} {start}\n")
            time.sleep(0.5)
            with open(record, "a") as f:
                f.write(f"end {os.getpid()} {time.time()}\n")
            return RetrainOutcome("pushed", "fake run")
    except LockHeld as error:
        return RetrainOutcome("locked", f"skipped: {error}")

sys.exit(schedule_loop(run, 0.3))
"""


def test_schedule_loops_never_overlap_and_stop_cleanly_on_sigterm(tmp_path):
    lock, record = tmp_path / ".retrain.lock", tmp_path / "runs.txt"
    record.touch()
    loops = [subprocess.Popen([sys.executable, "-c", _LOOP, str(lock), str(record)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    deadline = time.monotonic() + 120
    while record.read_text().count("start") < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    # Signal mid-run: the started run must still finish (its "end" is recorded).
    while record.read_text().splitlines()[-1].startswith("end") and time.monotonic() < deadline:
        time.sleep(0.02)
    for loop in loops:
        loop.send_signal(signal.SIGTERM)
    outputs = [loop.communicate(timeout=60)[0] for loop in loops]
    assert [loop.returncode for loop in loops] == [0, 0], outputs

    events = [line.split() for line in record.read_text().splitlines()]
    intervals = []
    for kind, pid, stamp in events:
        if kind == "start":
            intervals.append([pid, float(stamp), None])
        else:
            open_run = next(i for i in intervals if i[0] == pid and i[2] is None)
            open_run[2] = float(stamp)
    assert len(intervals) >= 4 and all(end is not None for _, _, end in intervals), events
    for (_, _, end), (_, next_start, _) in zip(intervals, intervals[1:]):
        assert end <= next_start, "two runs overlapped"
    assert len({pid for pid, _, _ in intervals}) >= 1
    for output in outputs:
        assert "schedule: stopped by SIGTERM" in output, output
        run_lines = [line for line in output.splitlines() if re.search(r" run \d+: ", line)]
        assert run_lines and all(("pushed" in line) or ("locked" in line) for line in run_lines)
