"""`cmgan train` end to end: the console script, the printed table and the metrics JSON."""
import json
import os
import subprocess

from conftest import TINY_HPARAMS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMGAN = os.path.join(REPO, ".venv", "bin", "cmgan")


def run_cmgan(*args, cwd):
    return subprocess.run([CMGAN, *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_help_lists_subcommands(tmp_path):
    out = run_cmgan("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in ("run", "compile", "train"):
        assert command in out.stdout


def test_train_prints_table_and_writes_metrics(tiny_feature_dir, tmp_path):
    hparams = [f"--hparam={k}={v}" for k, v in TINY_HPARAMS.items() if k != "epochs"]
    out = run_cmgan("train", "--dataset", "features", "--data-dir", str(tiny_feature_dir),
                    "--epochs", "2", "--output-dir", str(tmp_path / "out"), *hparams,
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics_path = str(tmp_path / "out" / "metrics.json")
    assert out.stdout.strip().splitlines()[-1] == f"metrics: {metrics_path}"
    for row in ("CM-GAN (candidate)   val", "CM-GAN (candidate)   test", "CCA", "classifier"):
        assert row in out.stdout
    document = json.load(open(metrics_path))
    assert document["split"] == "test" and document["dataset"]
    assert set(document["methods"]) == {"cmgan", "cca", "classifier"}
    for report in document["methods"].values():
        assert set(report) == {"i2t", "t2i", "mean", "all_modal"}
        assert 0.0 < report["mean"] <= 1.0
        assert abs(report["mean"] - (report["i2t"] + report["t2i"]) / 2) < 1e-9
    assert document["hparams"]["epochs"] == 2
    assert 1 <= document["best_epoch"] <= 2
    assert os.path.exists(tmp_path / "out" / "cmgan.weights.h5")
    assert os.listdir(tmp_path / "out" / "logs")  # TensorBoard event files


def test_train_reports_bad_dataset(tmp_path):
    out = run_cmgan("train", "--dataset", "features", "--data-dir", str(tmp_path / "missing"),
                    cwd=tmp_path)
    assert out.returncode != 0
    assert "missing" in out.stderr and "Traceback" not in out.stderr
