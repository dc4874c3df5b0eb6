"""Shared fixtures: a tiny feature dataset (on disk too) and tiny CM-GAN hyperparameters."""
from __future__ import annotations

import contextlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from components.datasets import FeatureDataset, make_demo_dataset, write_feature_folder

# Small enough that a whole TFX pipeline run takes well under a minute on 2 CPU cores.
TINY_DATASET = dict(seed=0, num_classes=4, train_per_class=40, val_per_class=12,
                    test_per_class=12, image_dim=16, text_dim=8)
# The paper's common vectors (the `general` preset's default appends the class posteriors; the
# raw tiny run below keeps that, so both retrieval spaces run through export and serving).
TINY_HPARAMS = dict(hidden_dim=32, common_dim=32, inter_disc_hidden=32, epochs=3,
                    validate_every=1, generator_steps=2, batch_size=32, retrieval_space="common")
# On top of TINY_HPARAMS for raw data: tiny cnn + kim_cnn encoders, one epoch (the data path is
# under test, not the model).
TINY_RAW_HPARAMS = dict(epochs=1, generator_steps=1, cnn_channels=4, cnn_feature_dim=16,
                        kim_filters=8, word_embedding_dim=8, text_vocab_size=300,
                        text_max_tokens=16, jit_compile=False)
RAW_DEMO_PER_CLASS = {"train": 12, "val": 4, "test": 4}  # x 8 classes


@pytest.fixture(scope="session")
def tiny_dataset() -> FeatureDataset:
    """Demo-style synthetic pairs: 4 classes, 160/48/48 pairs, 16-d images, 8-d texts."""
    return make_demo_dataset(**TINY_DATASET)


@pytest.fixture(scope="session")
def tiny_feature_dir(tiny_dataset, tmp_path_factory):
    """tiny_dataset as a feature folder (train/val/test.npz + classes.txt); treat as read-only."""
    return write_feature_folder(tiny_dataset, tmp_path_factory.mktemp("tiny_features"))


@pytest.fixture(scope="session")
def tiny_raw_demo_dir(tmp_path_factory):
    """A small raw demo folder (pairs.csv + PNGs, 8 classes x RAW_DEMO_PER_CLASS); read-only."""
    from components.datasets.raw_demo import write_raw_demo

    return write_raw_demo(tmp_path_factory.mktemp("tiny_raw_demo"), seed=0,
                          **{f"{s}_per_class": n for s, n in RAW_DEMO_PER_CLASS.items()})


TINY_RUN_PIPELINES = {"features": "cmgan-tiny", "raw": "cmgan-tiny-raw"}
TINY_RUN_KINDS = tuple(TINY_RUN_PIPELINES)
# The raw run retrieves with the class posteriors beside the common vector, so the export, the
# search servable, the server and the page are tested with vectors longer than common_dim.
TINY_RUN_RAW_HPARAMS = {**TINY_RAW_HPARAMS, "retrieval_space": "common_and_label"}


@pytest.fixture(scope="session")
def tiny_pipeline_run(make_pipeline_config, tiny_raw_demo_dir, tmp_path_factory):
    """Factory: kind -> (config, result) of one tiny pipeline run, made once per session and
    shared by the test files that only read it (report, web); treat its folders as read-only.
    "features": the tiny feature folder; "raw": the raw demo as pixels and text."""
    from pipeline.local_runner import run_pipeline

    runs = {}

    def run(kind: str):
        if kind not in runs:
            base = tmp_path_factory.mktemp(f"tiny-run-{kind}")
            config = (make_pipeline_config(base, dataset="raw", data_dir=tiny_raw_demo_dir,
                                           pipeline_name=TINY_RUN_PIPELINES[kind],
                                           hparams=TINY_RUN_RAW_HPARAMS)
                      if kind == "raw" else
                      make_pipeline_config(base, pipeline_name=TINY_RUN_PIPELINES[kind]))
            result = run_pipeline(config)
            assert result.pushed_model, result.reason
            runs[kind] = config, result
        return runs[kind]

    return run


@pytest.fixture
def tiny_hparams() -> dict:
    return dict(TINY_HPARAMS)


@pytest.fixture(scope="session")
def make_pipeline_config(tiny_feature_dir):
    """Factory: a PipelineConfig for the tiny dataset with everything written under ``base``."""
    from pipeline.config import DataConfig, EvaluationConfig, PipelineConfig, TrainingConfig

    def make(base, *, data_dir=None, dataset="features", hparams=None, map_threshold=0.0,
             data=None, **fields) -> PipelineConfig:
        """``data``: more DataConfig fields (encoders, image_size, ...)."""
        return PipelineConfig(
            pipeline_name=fields.pop("pipeline_name", "cmgan-test"),
            pipeline_root=str(base / "root"), serving_root=str(base / "serving"),
            data=DataConfig(dataset=dataset, data_dir=str(data_dir or tiny_feature_dir),
                            **(data or {})),
            # The paper preset: these runs of 1-3 epochs test the pipeline, and are too short
            # for the generator weight average of the "general" preset to move off its start.
            training=TrainingConfig(hparams={**TINY_HPARAMS, **(hparams or {})},
                                    preset=fields.pop("preset", "paper")),
            evaluation=EvaluationConfig(map_threshold=map_threshold),
            **fields).resolved()

    return make


# Announced addresses: "<prefix>... on host:port" lines a server prints before it serves.
ADDRESS_LINES = {"REST API on ": "rest", "Prometheus metrics on ": "metrics",
                 "serving ": "grpc", "search page on ": "web"}
START_TIMEOUT_S = 300  # TensorFlow's import and the model load, on 2 busy cores


def free_port() -> int:
    """A port on 127.0.0.1 free now (for flags where 0 means "off", not "any")."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout_s: float = 60) -> None:
    """Asks a process to stop with ``sig``, kills it after ``timeout_s``; every wait bounded."""
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@contextlib.contextmanager
def prediction_stub(address: str):
    """A TF Serving PredictionService stub on ``address``; its channel closed at the end."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@contextlib.contextmanager
def cmgan_addresses(command: str, ready_prefix: str, *args: str,
                    timeout_s: float = START_TIMEOUT_S):
    """``cmgan <command> <args>`` (via ``python -m pipeline``) in its own process, until it
    prints a line starting with ``ready_prefix`` (within ``timeout_s``); yields the addresses it
    announced so far, {"grpc"|"rest"|"metrics"|"web": host:port or URL}; SIGTERM at the end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", command, *args],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout]
                     + [lines.put(None)], daemon=True).start()
    seen, addresses = [], {}
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(0.1, left))
            except queue.Empty:
                line = ""
            if line is None or left <= 0:
                pytest.fail(f"cmgan {command} did not start "
                            + ("(it exited)" if line is None else f"within {timeout_s} s")
                            + ":\n" + "".join(seen[-40:]))
            seen.append(line)
            for prefix, name in ADDRESS_LINES.items():
                if line.startswith(prefix) and " on " in line:
                    addresses[name] = line.rsplit(" on ", 1)[1].strip()
            if line.startswith(ready_prefix):
                break
        yield addresses
    finally:
        stop_process(process, signal.SIGTERM)


@contextlib.contextmanager
def cmgan_process(command: str, ready_prefix: str, *args: str):
    """As cmgan_addresses; yields the address on the ``ready_prefix`` line."""
    with cmgan_addresses(command, ready_prefix, *args) as addresses:
        yield addresses[ADDRESS_LINES[ready_prefix]]


@contextlib.contextmanager
def serving_process(*serve_args: str):
    """``cmgan serve <serve_args> --port 0`` in its own process; yields its host:port."""
    with cmgan_process("serve", "serving ", "--port", "0", *serve_args) as address:
        yield address
