"""Repeated, paired evaluation: CM-GAN, its no-GAN ablation and the baselines on the same splits.

One test split is a few hundred queries at most, so one MAP figure carries +-0.03 to +-0.05 of
noise; differences between methods are only meaningful paired (same split, same features) and
over several splits. Each split seed draws a stratified split (or, where the dataset fixes its
test split, keeps it and redraws validation from the rest); every method selects on validation
only (CM-GAN its epoch, the baselines their regulariser) and is then scored on test.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from models.baselines import baseline_reports
from models.data import FeatureDataset, pooled, stratified_holdout
from models.hparams import CMGANHParams
from models.metrics import retrieval_report

METHODS = ("cmgan", "no_gan", "cca", "classifier")
BASELINES = ("cca", "classifier")
REPORTED = {"test_mean": ("test", "mean"), "i2t": ("test", "i2t"), "t2i": ("test", "t2i"),
            "all_modal": ("test", "all_modal"), "val_mean": ("val", "mean")}
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15


def resplit(dataset: FeatureDataset, seed: int, *, fixed_test: bool,
            val_fraction: float = VAL_FRACTION,
            test_fraction: float = TEST_FRACTION) -> FeatureDataset:
    """The split of one seed: stratified per class; a fixed test split is kept as it is and
    validation is redrawn from train + val."""
    splits = dataset.splits
    if fixed_test:
        rest, test = pooled([splits["train"], splits["val"]]), splits["test"]
    else:
        everything = pooled([splits[s] for s in ("train", "val", "test")])
        in_test = stratified_holdout(everything.label, test_fraction, seed)
        rest, test = everything.subset(~in_test), everything.subset(in_test)
        val_fraction = val_fraction / (1.0 - test_fraction)  # of what test left
    in_val = stratified_holdout(rest.label, val_fraction, seed + 7919)
    return dataclasses.replace(dataset, splits={
        "train": rest.subset(~in_val), "val": rest.subset(in_val), "test": test})


def evaluate_split(dataset: FeatureDataset, hparams: CMGANHParams, seed: int,
                   methods: Sequence[str] = METHODS, verbose: int = 0) -> dict[str, Any]:
    """{method: {"val": report, "test": report}} plus CM-GAN's chosen epochs, for one split."""
    from models.experiment import standardise  # pylint: disable=import-outside-toplevel
    from models.training import embed, train_cmgan  # pylint: disable=import-outside-toplevel

    results: dict[str, Any] = {"methods": {}, "best_epoch": {}}
    scaled = standardise(dataset)
    train, val, test = (scaled.splits[s] for s in ("train", "val", "test"))
    variants = {"cmgan": hparams, "no_gan": hparams.replace(adversarial_weight=0.0)}
    for name, variant in variants.items():
        if name not in methods:
            continue
        trained = train_cmgan(train, val, dataset.num_classes, variant.replace(seed=seed),
                              verbose=verbose)
        results["methods"][name] = {
            "val": trained.best_val,
            "test": retrieval_report(*embed(trained.model, test.image, test.text), test.label)}
        results["best_epoch"][name] = trained.best_epoch
    if any(name in methods for name in BASELINES):
        baselines = baseline_reports(dataset, seed=seed, refit=hparams.refit_on_validation)
        results["methods"].update({name: reports for name, reports in baselines.items()
                                   if name in methods})
    return results


def summarise(values: Sequence[float]) -> dict[str, Any]:
    values = [float(v) for v in values]
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"mean": float(np.mean(values)), "sd": sd, "per_split": values}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean of the per-split differences a - b and its two-sided 95% t interval (None for
    fewer than two splits)."""
    from scipy import stats  # pylint: disable=import-outside-toplevel

    diffs = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return {"mean": mean, "ci95": None, "per_split": diffs.tolist()}
    half = float(stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs)))
    return {"mean": mean, "ci95": [mean - half, mean + half], "per_split": diffs.tolist()}


def benchmark_document(dataset_name: str, per_split: list[dict[str, Any]],
                       methods: Sequence[str]) -> dict[str, Any]:
    """The JSON document of `cmgan benchmark` from the per-split results."""
    summary = {
        method: {key: summarise([s["methods"][method][split][metric] for s in per_split])
                 for key, (split, metric) in REPORTED.items()}
        for method in methods}
    paired: dict[str, Any] = {}
    baselines = [m for m in BASELINES if m in methods]
    if "cmgan" in methods and baselines:
        best = max(baselines, key=lambda m: summary[m]["test_mean"]["mean"])
        paired["cmgan_minus_best_baseline"] = {
            **paired_difference(summary["cmgan"]["test_mean"]["per_split"],
                                summary[best]["test_mean"]["per_split"]),
            "best_baseline": best}
    if "cmgan" in methods and "no_gan" in methods:
        paired["cmgan_minus_no_gan"] = paired_difference(
            summary["cmgan"]["test_mean"]["per_split"],
            summary["no_gan"]["test_mean"]["per_split"])
    return {"dataset": dataset_name, "splits": len(per_split), "selection": "val",
            "methods": summary, "paired": paired}


def run_benchmark(dataset: FeatureDataset, hparams: CMGANHParams, *, splits: int,
                  fixed_test: bool, methods: Sequence[str] = METHODS, first_seed: int = 0,
                  progress: Callable[[str], None] = print, verbose: int = 0) -> dict[str, Any]:
    """Every method on `splits` seeded splits; the document of benchmark_document, with the
    split protocol and per-split sizes and epochs."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {METHODS}")
    per_split = []
    started = time.time()
    for index in range(splits):
        seed = first_seed + index
        split_data = resplit(dataset, seed, fixed_test=fixed_test)
        result = evaluate_split(split_data, hparams, seed, methods, verbose=verbose)
        result.update(seed=seed, sizes={s: len(d) for s, d in split_data.splits.items()})
        per_split.append(result)
        scores = "  ".join(f"{m} {result['methods'][m]['test']['mean']:.4f}" for m in methods)
        epochs = ", ".join(f"{m} epoch {e}" for m, e in result["best_epoch"].items())
        progress(f"split {index + 1}/{splits} (seed {seed}): test mean MAP  {scores}"
                 f"{'  (' + epochs + ')' if epochs else ''}  {time.time() - started:.0f}s")
    document = benchmark_document(dataset.name, per_split, methods)
    document["split_protocol"] = (
        "fixed test split kept; validation redrawn per seed, stratified, "
        f"{VAL_FRACTION:.0%} of train+val" if fixed_test else
        f"stratified per seed: test {TEST_FRACTION:.0%}, validation {VAL_FRACTION:.0%}, "
        "train the rest")
    if hparams.refit_on_validation:
        document["split_protocol"] += ("; every method refit on train + validation with what "
                                       "validation chose (epochs, regulariser), then tested")
    document["fixed_test"] = fixed_test
    document["per_split"] = [{"seed": s["seed"], "sizes": s["sizes"],
                              "best_epoch": s["best_epoch"]} for s in per_split]
    document["hparams"] = hparams.to_dict()
    document["wall_time_s"] = round(time.time() - started, 1)
    return document


def format_benchmark_table(document: dict[str, Any]) -> str:
    """Mean +- sd over splits of each method, then the paired differences."""
    lines = [f"{document['dataset']}: MAP@all over {document['splits']} splits "
             f"(mean +- sd; selection on val)",
             f"{'method':<12}{'val mean':>16}{'test I->T':>16}{'test T->I':>16}"
             f"{'test mean':>16}{'all-modal':>16}"]

    def cell(entry: dict[str, Any]) -> str:
        sd = entry["sd"]
        return f"{entry['mean']:.4f}" + (f" +-{sd:.4f}" if sd is not None else "")

    for method, summary in document["methods"].items():
        lines.append(f"{method:<12}" + "".join(
            f"{cell(summary[key]):>16}" for key in ("val_mean", "i2t", "t2i", "test_mean",
                                                    "all_modal")))
    for name, paired in document["paired"].items():
        interval = paired["ci95"]
        ci = f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "(one split)"
        against = f" ({paired['best_baseline']})" if "best_baseline" in paired else ""
        lines.append(f"{name}{against}: {paired['mean']:+.4f}, 95% CI {ci}")
    return "\n".join(lines)
