"""Shared fixtures: a tiny feature dataset (on disk too) and tiny CM-GAN hyperparameters."""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from components.datasets import FeatureDataset, make_demo_dataset, write_feature_folder

# Small enough that a whole TFX pipeline run takes well under a minute on 2 CPU cores.
TINY_DATASET = dict(seed=0, num_classes=4, train_per_class=40, val_per_class=12,
                    test_per_class=12, image_dim=16, text_dim=8)
TINY_HPARAMS = dict(hidden_dim=32, common_dim=32, inter_disc_hidden=32, epochs=3,
                    validate_every=1, generator_steps=2, batch_size=32)


@pytest.fixture(scope="session")
def tiny_dataset() -> FeatureDataset:
    """Demo-style synthetic pairs: 4 classes, 160/48/48 pairs, 16-d images, 8-d texts."""
    return make_demo_dataset(**TINY_DATASET)


@pytest.fixture(scope="session")
def tiny_feature_dir(tiny_dataset, tmp_path_factory):
    """tiny_dataset as a feature folder (train/val/test.npz + classes.txt); treat as read-only."""
    return write_feature_folder(tiny_dataset, tmp_path_factory.mktemp("tiny_features"))


@pytest.fixture
def tiny_hparams() -> dict:
    return dict(TINY_HPARAMS)


@pytest.fixture(scope="session")
def make_pipeline_config(tiny_feature_dir):
    """Factory: a PipelineConfig for the tiny dataset with everything written under ``base``."""
    from pipeline.config import DataConfig, EvaluationConfig, PipelineConfig, TrainingConfig

    def make(base, *, data_dir=None, dataset="features", hparams=None, map_threshold=0.0,
             **fields) -> PipelineConfig:
        return PipelineConfig(
            pipeline_name=fields.pop("pipeline_name", "cmgan-test"),
            pipeline_root=str(base / "root"), serving_root=str(base / "serving"),
            data=DataConfig(dataset=dataset, data_dir=str(data_dir or tiny_feature_dir)),
            training=TrainingConfig(hparams={**TINY_HPARAMS, **(hparams or {})}),
            evaluation=EvaluationConfig(map_threshold=map_threshold),
            **fields).resolved()

    return make


@contextlib.contextmanager
def serving_process(*serve_args: str):
    """``cmgan serve <serve_args> --port 0`` in its own process; yields its host:port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.serve_command", "serve", "--port", "0", *serve_args],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("serving "):
            break
    else:
        pytest.fail("server did not start:\n" + "".join(output[-40:]))
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    try:
        yield line.rsplit(" on ", 1)[1].strip()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
