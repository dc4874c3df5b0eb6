"""A Trainer killed with SIGKILL mid-training resumes from its checkpoint on the pipeline re-run."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.local_runner import run_pipeline
from pipeline.metadata import latest_run_executions, output_artifacts

EPOCHS = 40  # after the first (slow, tracing) epoch, each takes a fraction of a second
REPO = Path(__file__).resolve().parents[1]


def _wait_for(pattern: str, process: subprocess.Popen, log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = glob.glob(pattern)
        if found:
            return found[0]
        if process.poll() is not None:
            raise AssertionError(f"pipeline exited ({process.returncode}) before a checkpoint:\n"
                                 + log.read_text()[-3000:])
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint after {timeout}s:\n" + log.read_text()[-3000:])


def test_sigkilled_trainer_resumes_from_its_checkpoint(make_pipeline_config, tmp_path):
    config = make_pipeline_config(tmp_path, pipeline_name="cmgan-resume",
                                  hparams={"epochs": EPOCHS, "validate_every": 10})
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    log = tmp_path / "killed_run.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--config", str(config_file)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        checkpoint = _wait_for(os.path.join(config.checkpoint_root, "*", "last", "checkpoint"),
                               process, log, timeout=420)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    checkpoint_dir = os.path.dirname(os.path.dirname(checkpoint))
    killed = latest_run_executions(config.metadata_path, config.pipeline_name)
    assert "RetrievalEvaluator" not in killed  # it really died inside the Trainer

    result = run_pipeline(PipelineConfig.from_json_file(str(config_file)))

    executions = latest_run_executions(config.metadata_path, config.pipeline_name)
    model_run = output_artifacts(config.metadata_path, executions["Trainer"].id)["model_run"][0]
    report = json.loads((Path(model_run.uri) / "training_report.json").read_text())
    assert report["checkpoint_dir"] == checkpoint_dir
    assert 1 <= report["resumed_from_epoch"] < EPOCHS
    assert report["history"][0]["epoch"] == report["resumed_from_epoch"] + 1
    assert report["history"][-1]["epoch"] == EPOCHS
    assert result.pushed_model is not None
