"""Train CM-GAN and score it beside the baselines on one feature dataset, without TFX.

`cmgan train` and the benchmarks use this; the pipeline does the same through its
components. Features are z-scored with training statistics (as the pipeline's Transform does).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import numpy as np

from models.data import FeatureDataset, Split
from models.baselines import Standardiser, baseline_reports
from models.hparams import CMGANHParams
from models.metrics import format_map_table, metrics_document, retrieval_report


def standardise(dataset: FeatureDataset) -> FeatureDataset:
    """Per-dimension z-scores of both modalities with training statistics."""
    train = dataset.splits["train"]
    image_scaler, text_scaler = Standardiser.fit(train.image), Standardiser.fit(train.text)
    splits = {name: dataclasses.replace(
        split, image=image_scaler(split.image).astype(np.float32),
        text=text_scaler(split.text).astype(np.float32))
        for name, split in dataset.splits.items()}
    return dataclasses.replace(dataset, splits=splits)


def backup_folder(backup_dir: str, dataset: FeatureDataset, hparams: CMGANHParams,
                  data_key: str = "") -> str:
    """``<backup_dir>/<key>``: the same data and hyperparameters resume; anything else starts
    afresh beside it rather than restoring state of another training."""
    key = json.dumps({"dataset": dataset.name, "data": data_key, "hparams": hparams.to_dict(),
                      "sizes": {name: len(split.label) for name, split in
                                sorted(dataset.splits.items())}}, sort_keys=True)
    return os.path.join(backup_dir, hashlib.sha256(key.encode()).hexdigest()[:16])


def train_and_evaluate(dataset: FeatureDataset, hparams: CMGANHParams, *,
                       strategy: str = "default", output_dir: str | None = None,
                       verbose: int = 1, backup_dir: str | None = None) -> dict[str, Any]:
    """Fits CM-GAN (epoch chosen on val) and the baselines; returns the metrics document
    for the test split, with the validation figures beside it.

    Under ``multi_worker`` only the chief writes to ``output_dir``; another worker does the
    same writes into a temporary folder that it then deletes.

    ``backup_dir`` (from ``backup_folder``; BackupAndRestore-style): training state saved
    every epoch, so a killed run started again resumes there; deleted once the outputs are
    written. A multi-worker run's chief writes it and every worker resumes from it, so it must
    be a folder all workers read (e.g. gs://)."""
    from models.distribute import non_chief_scratch  # TensorFlow only when training

    with non_chief_scratch(strategy) as scratch:
        document = _train_and_evaluate(dataset, hparams, strategy,
                                       scratch if output_dir and scratch else output_dir,
                                       verbose, backup_dir)
    if backup_dir and scratch is None:  # the chief
        import tensorflow as tf

        if tf.io.gfile.exists(backup_dir):
            tf.io.gfile.rmtree(backup_dir)
    return document


def _train_and_evaluate(dataset: FeatureDataset, hparams: CMGANHParams, strategy: str,
                        output_dir: str | None, verbose: int,
                        backup_dir: str | None = None) -> dict[str, Any]:
    from models.training import embed, train_cmgan

    started = time.time()
    scaled = standardise(dataset)
    train, val, test = (scaled.splits[s] for s in ("train", "val", "test"))
    result = train_cmgan(train, val, dataset.num_classes, hparams, strategy=strategy,
                         log_dir=os.path.join(output_dir, "logs") if output_dir else None,
                         checkpoint_dir=backup_dir, verbose=verbose)

    def cmgan_report(split: Split) -> dict[str, float]:
        return retrieval_report(*embed(result.model, split.image, split.text), split.label)

    methods = {"cmgan": {"val": result.best_val, "test": cmgan_report(test)}}
    # Fitted once, scored on val and test; refit on train + val as CM-GAN was, if it was.
    methods.update(baseline_reports(dataset, refit=hparams.refit_on_validation))
    document = metrics_document(
        dataset.name, methods, "test", validation=metrics_document(
            dataset.name, methods, "val")["methods"],
        best_epoch=result.best_epoch, refit_epochs=result.refit_epochs, hparams=hparams.to_dict(),
        resumed_from_epoch=result.resumed_from_epoch, wall_time_s=round(time.time() - started, 1))
    document["tables"] = methods
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "metrics.json"), "w") as f:
            json.dump({k: v for k, v in document.items() if k != "tables"}, f, indent=2)
        result.model.save_weights(os.path.join(output_dir, "cmgan.weights.h5"))
    return document


def print_tables(document: dict[str, Any]) -> None:
    refit = ("; then every method refit on train + val (val rows: before the refit)"
             if document.get("refit_epochs") else "")
    print(f"\n{document['dataset']}: MAP@all, CM-GAN epoch chosen on val "
          f"({document['best_epoch']}){refit}")
    print(format_map_table(document["tables"]))
