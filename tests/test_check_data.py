"""`cmgan check-data` end to end (issue 15): the pipeline's own data stages on real TFX
LocalDagRunner + Beam DirectRunner, the accounting it prints and its exit status (0 usable,
1 not, 2 usage/configuration error)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import RAW_DEMO_PER_CLASS
from pipeline import cli

SIZE = "16"  # image side: the data path is under test, not the pixels
RAW_RECORDS = 8 * sum(RAW_DEMO_PER_CLASS.values())  # tiny_raw_demo_dir: 160
ACCEPTED_SPLITS = ", ".join(f"{s} {8 * n}" for s, n in RAW_DEMO_PER_CLASS.items())
BAD_REASONS = {"image_outside_folder": 3, "missing_image_file": 1, "unknown_label": 1}


def check_data(capfd, root: Path, *args: str) -> tuple[int, str]:
    """``cmgan check-data <args> --pipeline-root <root>`` in this process: (exit, output), the
    output being stdout, a ``--- stderr`` line, then what reached the terminal's stderr."""
    code = cli.main(["check-data", *args, "--pipeline-root", str(root)])
    out, err = capfd.readouterr()
    return code, out + "--- stderr\n" + err


def _lines(output: str) -> list[str]:
    """stdout's lines."""
    return output.split("--- stderr\n", 1)[0].splitlines()


@pytest.fixture(scope="module")
def bad_raw_dir(tiny_raw_demo_dir, tmp_path_factory) -> Path:
    """tiny_raw_demo_dir plus 5 bad rows: a missing image, an unknown label, and three image
    paths leaving the folder (``..``, absolute, a symlink to a PNG outside)."""
    base = tmp_path_factory.mktemp("bad_raw")
    folder = Path(shutil.copytree(tiny_raw_demo_dir, base / "data"))
    image = sorted((folder / "images").iterdir())[0]
    outside = base / "outside.png"
    shutil.copyfile(image, outside)  # a valid image: only its place is wrong
    os.symlink(outside, folder / "images" / "link.png")
    label = (folder / "classes.txt").read_text().split()[0]
    rows = [f"bad-missing,images/nope.png,a caption,{label},train",
            f"bad-label,images/{image.name},a caption,purple,train",
            f"bad-dotdot,../outside.png,a caption,{label},train",
            f"bad-absolute,{outside},a caption,{label},train",
            f"bad-symlink,images/link.png,a caption,{label},train"]
    with open(folder / "pairs.csv", "a", encoding="utf-8") as f:
        f.write("".join(row + "\n" for row in rows))
    return folder


def test_a_clean_folder_is_usable_and_accounted_for(capfd, tiny_raw_demo_dir, tmp_path):
    code, output = check_data(capfd, tmp_path, "--dataset", "raw", "--data-dir",
                              str(tiny_raw_demo_dir), "--image-size", SIZE)
    lines = _lines(output)
    assert code == 0, output
    assert f"records read: {RAW_RECORDS}" in lines
    assert f"accepted: {RAW_RECORDS} ({ACCEPTED_SPLITS})" in lines
    assert "quarantined: 0 (0.0%; max_quarantine_fraction 5.0%)" in lines
    assert f"examples (StatisticsGen): {ACCEPTED_SPLITS}" in lines
    assert "anomalies: none" in lines and lines[-1] == "data usable: yes"
    records = Path(next(line for line in lines if line.startswith("quarantine file: "))
                   .split(": ", 1)[1])
    assert records.is_file() and records.read_text() == ""
    assert str(tmp_path) in str(records)  # written under the given pipeline root
    for node in ("RawExampleGen", "StatisticsGen", "SchemaGen", "SchemaCurator",
                 "ExampleValidator", "AnomaliesGate"):
        assert any(line.startswith("[") and f"] {node} done" in line for line in lines), node
    assert not any("Transform" in line or "Trainer" in line for line in lines)


def test_bad_rows_are_named_by_reason_with_the_quarantine_file(capfd, bad_raw_dir, tmp_path):
    code, output = check_data(capfd, tmp_path, "--dataset", "raw", "--data-dir",
                              str(bad_raw_dir), "--image-size", SIZE)
    lines = _lines(output)
    total = RAW_RECORDS + sum(BAD_REASONS.values())
    assert code == 0, output  # 5 of 165 is within the default 5%
    assert f"records read: {total}" in lines
    assert f"accepted: {RAW_RECORDS} ({ACCEPTED_SPLITS})" in lines
    assert (f"quarantined: 5 ({5 / total:.1%}; max_quarantine_fraction 5.0%)") in lines
    for reason, count in BAD_REASONS.items():
        assert f"  {reason}: {count}" in lines
    records = Path(next(line for line in lines if line.startswith("quarantine file: "))
                   .split(": ", 1)[1])
    quarantined = {r["id"]: r["reason"] for r in map(json.loads, records.read_text().splitlines())}
    assert quarantined == {"bad-missing": "missing_image_file", "bad-label": "unknown_label",
                           "bad-dotdot": "image_outside_folder",
                           "bad-absolute": "image_outside_folder",
                           "bad-symlink": "image_outside_folder"}
    assert lines[-1] == "data usable: yes"


def test_a_quarantine_over_the_limit_exits_1_and_keeps_the_records(capfd, bad_raw_dir,
                                                                    tmp_path):
    code, output = check_data(capfd, tmp_path, "--dataset", "raw", "--data-dir",
                              str(bad_raw_dir), "--image-size", SIZE,
                              "--max-quarantine-fraction", "0.01")
    lines = _lines(output)
    total = RAW_RECORDS + sum(BAD_REASONS.values())
    assert code == 1, output
    assert f"records read: {total}" in lines
    assert f"quarantined: 5 ({5 / total:.1%}; max_quarantine_fraction 1.0%)" in lines
    for reason, count in BAD_REASONS.items():
        assert f"  {reason}: {count}" in lines
    records = Path(next(line for line in lines if line.startswith("quarantine file: "))
                   .split(": ", 1)[1])
    assert "quarantine-rejected" in str(records)  # TFX removed the failed execution's output
    assert len(records.read_text().splitlines()) == 5
    assert "anomalies: not checked (ExampleValidator did not run)" in lines
    assert lines[-1] == (f"data usable: no: RawExampleGen: 5 of {total} records quarantined "
                         f"({5 / total:.1%}) > max_quarantine_fraction 1.0%")
    assert not any("StatisticsGen done" in line for line in lines)


def test_anomalies_make_the_data_unusable(capfd, tiny_dataset, tmp_path):
    """tf.Examples from elsewhere (dataset ``examples``): val texts one wider than train's."""
    from test_pipeline_validation import _with_wider_text, _write_example_folder

    splits = dict(tiny_dataset.splits, val=_with_wider_text(tiny_dataset.splits["val"]))
    _write_example_folder(splits, tmp_path / "examples")
    code, output = check_data(capfd, tmp_path / "root", "--dataset", "examples", "--data-dir",
                              str(tmp_path / "examples"))
    lines = _lines(output)
    assert code == 1, output
    assert "quarantined: 0 (this dataset's ExampleGen has no quarantine)" in lines
    assert "anomalies: 1" in lines
    assert any(line.startswith("  split 'val': feature 'text': ") for line in lines)
    assert lines[-1] == "data usable: no: ExampleValidator found anomalies (listed above)"


@pytest.mark.parametrize("args,key", [
    (["--dataset", "raw", "--data-dir", "/nonexistent/cmgan-data"], "data_dir"),
    (["--dataset", "raw", "--data-dir", ".", "--max-quarantine-fraction", "2"],
     "max_quarantine_fraction"),
    (["--dataset", "raw", "--data-dir", ".", "--image-encoder", "keras:NoSuchNet"],
     "keras"),
])
def test_usage_errors_exit_2_with_one_line(capfd, tmp_path, args, key):
    code, output = check_data(capfd, tmp_path, *args)
    assert code == 2, output
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1 and key in errors[0], output
    assert "Traceback" not in output
    assert not (tmp_path / "metadata.sqlite").exists()  # nothing ran
