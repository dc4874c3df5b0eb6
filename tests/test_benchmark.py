"""`cmgan benchmark`: repeated paired splits, the JSON document, its statistics, the feature cache."""
import json
import math
import os
import subprocess

import numpy as np
import pytest
from scipy import stats

from conftest import TINY_HPARAMS
from components.datasets import make_demo_dataset
from models.benchmark import paired_difference, resplit, run_benchmark
from models.data import FeatureDataset, Split
from models.hparams import CMGANHParams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMGAN = os.path.join(REPO, ".venv", "bin", "cmgan")
METHODS = {"cmgan", "no_gan", "cca", "classifier"}
KEYS = {"test_mean", "i2t", "t2i", "all_modal", "val_mean"}


def run_cmgan(*args, cwd):
    return subprocess.run([CMGAN, *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def _dataset(per_class=(20, 5, 5), classes=4):
    rng = np.random.default_rng(0)
    splits = {}
    for name, n in zip(("train", "val", "test"), per_class):
        label = np.repeat(np.arange(classes), n)
        ids = np.array([f"{name}-{i}" for i in range(len(label))])
        splits[name] = Split(rng.normal(size=(len(label), 3)).astype(np.float32),
                             rng.normal(size=(len(label), 2)).astype(np.float32), label, ids)
    return FeatureDataset("toy", splits, tuple(f"c{i}" for i in range(classes)))


def test_paired_difference_is_a_t_interval_over_the_per_split_differences():
    a, b = [0.70, 0.74, 0.69, 0.73, 0.71], [0.66, 0.70, 0.69, 0.68, 0.70]
    diffs = np.subtract(a, b)
    half = stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / math.sqrt(5)
    paired = paired_difference(a, b)
    assert paired["mean"] == pytest.approx(diffs.mean())
    assert paired["ci95"] == pytest.approx([diffs.mean() - half, diffs.mean() + half])
    assert paired["per_split"] == pytest.approx(diffs.tolist())
    assert paired_difference([0.5], [0.4])["ci95"] is None  # one split: no interval


def test_resplit_keeps_a_fixed_test_split_and_redraws_validation_by_seed():
    dataset = _dataset()
    first, again, other = (resplit(dataset, seed, fixed_test=True) for seed in (0, 0, 1))
    assert list(first.splits["test"].ids) == list(dataset.splits["test"].ids)
    assert list(first.splits["val"].ids) == list(again.splits["val"].ids)
    assert list(first.splits["val"].ids) != list(other.splits["val"].ids)
    pool = set(dataset.splits["train"].ids) | set(dataset.splits["val"].ids)
    assert set(first.splits["train"].ids) | set(first.splits["val"].ids) == pool
    assert not set(first.splits["train"].ids) & set(first.splits["val"].ids)
    # stratified: every class keeps round(15%) of its 25 train+val pairs in val
    assert np.bincount(first.splits["val"].label).tolist() == [4, 4, 4, 4]


def test_resplit_without_fixed_test_draws_all_three_splits_stratified():
    dataset = _dataset()
    drawn = resplit(dataset, 3, fixed_test=False)
    ids = [set(drawn.splits[s].ids) for s in ("train", "val", "test")]
    assert sum(map(len, ids)) == 120 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert np.bincount(drawn.splits["test"].label).tolist() == [5, 5, 5, 5]  # 15% of 30, rounded
    assert list(drawn.splits["test"].ids) != list(dataset.splits["test"].ids)


def test_benchmark_command_writes_paired_per_split_document(tmp_path):
    hparams = [f"--hparam={k}={v}" for k, v in TINY_HPARAMS.items() if k != "epochs"]
    output = tmp_path / "bench.json"
    out = run_cmgan("benchmark", "--dataset", "demo-features", "--splits", "2", "--epochs", "4",
                    "--hparam=jit_compile=false", *hparams, "--output", str(output),
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    progress = [line for line in out.stdout.splitlines() if line.startswith("split ")]
    assert [line.split(" (")[0] for line in progress] == ["split 1/2", "split 2/2"]
    assert "cmgan_minus_best_baseline" in out.stdout
    document = json.loads(output.read_text())
    assert document["dataset"] and document["splits"] == 2 and document["selection"] == "val"
    assert document["fixed_test"] is False and "stratified" in document["split_protocol"]
    assert set(document["methods"]) == METHODS
    for method, summary in document["methods"].items():
        assert set(summary) == KEYS, method
        for entry in summary.values():
            assert len(entry["per_split"]) == 2
            assert entry["mean"] == pytest.approx(np.mean(entry["per_split"]))
            assert entry["sd"] == pytest.approx(np.std(entry["per_split"], ddof=1))
        # above chance (8 balanced classes: MAP of a random ranking is about 1/8), no tighter
        assert summary["test_mean"]["mean"] > 0.15, method
    baselines = {m: document["methods"][m]["test_mean"] for m in ("cca", "classifier")}
    best = max(baselines, key=lambda m: baselines[m]["mean"])
    paired = document["paired"]["cmgan_minus_best_baseline"]
    assert paired["best_baseline"] == best
    diffs = np.subtract(document["methods"]["cmgan"]["test_mean"]["per_split"],
                        baselines[best]["per_split"])
    half = stats.t.ppf(0.975, 1) * diffs.std(ddof=1) / math.sqrt(2)
    assert paired["mean"] == pytest.approx(diffs.mean())
    assert paired["ci95"] == pytest.approx([diffs.mean() - half, diffs.mean() + half])
    assert [len(s["sizes"]) for s in document["per_split"]] == [3, 3]
    assert all(1 <= e <= 4 for s in document["per_split"] for e in s["best_epoch"].values())


def test_a_refit_benchmark_refits_every_method_and_keeps_the_selection_validation():
    dataset = make_demo_dataset(seed=0, num_classes=4, train_per_class=30, val_per_class=10,
                                test_per_class=10)
    hparams = CMGANHParams.from_dict(TINY_HPARAMS)
    runs = {refit: run_benchmark(dataset, hparams.replace(refit_on_validation=refit), splits=1,
                                 fixed_test=False, methods=("cmgan", "classifier"),
                                 progress=lambda line: None)
            for refit in (False, True)}
    assert "refit on train + validation" in runs[True]["split_protocol"]
    assert "refit" not in runs[False]["split_protocol"]
    for method in ("cmgan", "classifier"):
        plain, refit = runs[False]["methods"][method], runs[True]["methods"][method]
        assert refit["val_mean"] == plain["val_mean"], method  # the selection's, not refit's
        assert refit["test_mean"] != plain["test_mean"], method


def test_raw_features_are_encoded_once_and_read_from_the_cache(tiny_raw_demo_dir, tmp_path):
    args = ("benchmark", "--dataset", "raw", "--data-dir", str(tiny_raw_demo_dir),
            "--image-encoder", "torch:efficientnet-lite0", "--text-encoder", "torch:minilm",
            "--methods", "cca,classifier", "--splits", "2", "--cache-dir", str(tmp_path / "cache"))
    first = run_cmgan(*args, "--output", str(tmp_path / "a.json"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "features computed" in first.stdout
    second = run_cmgan(*args, "--output", str(tmp_path / "b.json"), cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "features read from cache" in second.stdout
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["features"]["computed"] is True and b["features"]["computed"] is False
    assert len(os.listdir(tmp_path / "cache")) == 1
    assert a["methods"] == b["methods"]  # the same vectors give the same figures
    assert a["fixed_test"] is True  # the demo's pairs.csv has a split column
    assert set(a["methods"]) == {"cca", "classifier"}
