"""Warm start of the Trainer from the latest blessed model (issue 6)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from conftest import TINY_HPARAMS

from components.datasets import write_feature_folder
from models.hparams import CMGANHParams
from models.training import train_cmgan
from pipeline.metadata import latest_run_executions, output_artifacts
from pipeline.retrain import retrain_once


def test_train_cmgan_starts_from_compatible_weights_and_skips_incompatible_ones(
        tiny_dataset, tmp_path):
    hparams = CMGANHParams.from_dict({**TINY_HPARAMS, "epochs": 1})
    train, val = tiny_dataset.splits["train"], tiny_dataset.splits["val"]
    first = train_cmgan(train, val, tiny_dataset.num_classes, hparams, verbose=0)
    weights = str(tmp_path / "cmgan.weights.h5")
    first.model.save_weights(weights)

    warm = train_cmgan(train, val, tiny_dataset.num_classes, hparams, verbose=0,
                       initial_weights=weights)
    assert warm.warm_started_from == weights and first.warm_started_from is None

    wider = CMGANHParams.from_dict({**TINY_HPARAMS, "epochs": 1, "common_dim": 48})
    cold = train_cmgan(train, val, tiny_dataset.num_classes, wider, verbose=0,
                       initial_weights=weights)
    assert cold.warm_started_from is None


def test_retrain_with_warm_start_trains_from_the_blessed_model(
        make_pipeline_config, tiny_dataset, tmp_path):
    root = tmp_path / "spans"
    write_feature_folder(tiny_dataset, root / "span-1")
    config = make_pipeline_config(tmp_path, data_dir=root, pipeline_name="cmgan-warm")
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, span_pattern="span-{SPAN}"),
        training=dataclasses.replace(config.training, warm_start=True))

    def report():
        trainer = latest_run_executions(config.metadata_path, config.pipeline_name)["Trainer"]
        outputs = output_artifacts(config.metadata_path, trainer.id)
        run_dir = outputs["model_run"][0].uri
        return json.loads((Path(run_dir) / "training_report.json").read_text()), outputs

    first = retrain_once(config)
    assert first.status == "pushed", first.message
    first_report, first_outputs = report()
    assert first_report["warm_started_from"] is None  # nothing blessed yet
    model_uri = first_outputs["model"][0].uri
    assert os.path.isfile(os.path.join(model_uri, "warm_start", "cmgan.weights.h5"))

    write_feature_folder(tiny_dataset, root / "span-2")
    second = retrain_once(config)
    assert second.status in ("pushed", "not_pushed"), second.message
    second_report, _ = report()
    assert second_report["warm_started_from"].startswith(model_uri)
