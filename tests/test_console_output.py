"""What ``cmgan`` shows on the terminal: the project's lines only by default (stage lines, a
training progress line, the MAP table, next commands), the full log (TensorFlow C++, absl/TFX,
known third-party warnings) in a file under the pipeline root, all of it on the terminal with -v.
Runs the real CLI on a tiny raw demo folder."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RAW_DEMO_PER_CLASS, TINY_HPARAMS, TINY_RAW_HPARAMS
from models.progress import TrainingProgress

REPO = Path(__file__).resolve().parents[1]
TINY_RAW = [f"--hparam={k}={v}" for k, v in {**TINY_HPARAMS, **TINY_RAW_HPARAMS}.items()]
TF_CPP_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\]", re.M)
ABSL_LINE = re.compile(r"\babsl\b|^[IWEF]\d{4} \d\d:\d\d", re.M)
KNOWN_NOISE = ("FutureWarning", "cuFFT", "cuDNN", "cuBLAS", "TensorRT", "local_rendezvous",
               "Ignoring Assert", "oneDNN")


def _env() -> dict:
    """The user's environment, without settings that would hide what is under test."""
    env = dict(os.environ)
    for key in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY", "PYTHONWARNINGS"):
        env.pop(key, None)
    return env


def cmgan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def runs(tiny_raw_demo_dir, tmp_path_factory):
    """A first run (quiet), then the same run again with -v (cached up to the Pusher)."""
    base = tmp_path_factory.mktemp("console")
    flags = ["run", "--dataset", "raw", "--data-dir", str(tiny_raw_demo_dir),
             "--pipeline-root", str(base / "root"), "--serving-root", str(base / "serving"),
             *TINY_RAW]
    quiet = cmgan(*flags)
    assert quiet.returncode == 0, quiet.stdout[-3000:] + quiet.stderr[-3000:]
    verbose = cmgan("-v", *flags)
    assert verbose.returncode == 0, verbose.stdout[-3000:] + verbose.stderr[-3000:]
    return base, quiet, verbose


def _log_file(stdout: str) -> Path:
    paths = re.findall(r"^log: (\S+)$", stdout, re.M)
    assert len(paths) == 1, stdout
    return Path(paths[0])


def test_default_terminal_has_no_library_noise(runs):
    _, quiet, _ = runs
    terminal = quiet.stdout + quiet.stderr
    assert not TF_CPP_LINE.search(terminal), terminal
    assert not ABSL_LINE.search(terminal), terminal
    for noise in KNOWN_NOISE:
        assert noise not in terminal, (noise, terminal)
    assert quiet.stderr.strip() == "", quiet.stderr


def test_stage_lines_progress_and_next_commands(runs):
    base, quiet, _ = runs
    out = quiet.stdout
    accepted = 8 * sum(RAW_DEMO_PER_CLASS.values())
    assert re.search(r"^\[1/\d+\] RawExampleGen \.\.\.$", out, re.M), out
    assert re.search(rf"^\[1/\d+\] RawExampleGen done in \S+: accepted {accepted}, "
                     r"quarantined 0$", out, re.M), out
    per_split = ", ".join(f"{s} {8 * n}" for s, n in RAW_DEMO_PER_CLASS.items())
    assert re.search(rf"StatisticsGen done in \S+: examples {per_split}$", out, re.M), out
    assert re.search(r"Transform done in \S+: vocabulary \S+ \d+ words$", out, re.M), out
    # The `general` preset refits on train + val for the chosen epoch count.
    assert re.search(r"Trainer done in \S+: best epoch 1/1, val MAP 0\.\d{4}, refit on train "
                     r"\+ val 1 epoch$", out, re.M), out
    assert re.search(r"Pusher done in \S+: pushed version \d+$", out, re.M), out
    # stdout is a pipe: one plain progress line per validation, no carriage returns
    assert re.search(r"^  epoch 1/1  d [\d.]+/[\d.]+  g [\d.]+/[\d.]+  val MAP 0\.\d{4}", out,
                     re.M), out
    assert "\r" not in out
    assert "CM-GAN (candidate)" in out and "pushed model:" in out
    # next commands, with this run's paths (absolute: they are outside the working directory)
    serving = base / "serving"
    assert f"serve --model-base-path {serving} --model-name cmgan" in out, out
    assert "query --server 127.0.0.1:8500 --model-name cmgan --text 'a red circle'" in out
    assert f"web --server 127.0.0.1:8500 --model cmgan --model-base-path {serving}" in out
    assert f"report --pipeline-name cmgan-raw --pipeline-root {base / 'root'}" in out


def test_log_file_under_the_pipeline_root_holds_the_library_log(runs):
    base, quiet, _ = runs
    log = _log_file(quiet.stdout)
    assert log.parent == base / "root" / "logs" and log.name.startswith("run-")
    text = log.read_text()
    assert TF_CPP_LINE.search(text), text[:2000]  # TensorFlow's C++ log, from fd 2
    assert "Component Trainer is running." in text  # TFX through absl
    assert "FutureWarning" in text  # known third-party warnings: kept, but only here


def test_verbose_shows_the_library_log_too(runs):
    _, quiet, verbose = runs
    terminal = verbose.stdout + verbose.stderr
    assert TF_CPP_LINE.search(terminal), terminal[-3000:]
    assert "Component Trainer is running." in terminal
    log = _log_file(verbose.stdout)
    assert log != _log_file(quiet.stdout)
    text = log.read_text()
    assert TF_CPP_LINE.search(text) and "Component Pusher is finished." in text


def test_real_warnings_reach_the_terminal_and_known_noise_does_not(tmp_path):
    script = (
        "import warnings\n"
        "from pipeline import console\n"
        "console.start([])\n"
        "console.log_to(%r, 'check')\n"
        "warnings.warn_explicit('Python 3.11 support ends', FutureWarning,\n"
        "                       '/x/site-packages/google/api_core/_python_version_support.py', 1)\n"
        "warnings.warn('a real problem', UserWarning)\n"
        "import logging\n"
        "logging.getLogger('absl').warning('library chatter')\n"
        "logging.getLogger('models.training').warning('project warning')\n"
        "console.stop()\n" % str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "a real problem" in done.stderr and "project warning" in done.stderr
    assert "Python 3.11 support ends" not in done.stderr
    assert "library chatter" not in done.stderr
    text = _log_file(done.stdout).read_text()
    for line in ("Python 3.11 support ends", "a real problem", "library chatter"):
        assert line in text


def test_progress_is_a_live_bar_on_a_terminal_and_lines_otherwise():
    logs = {"d_inter_image_loss": 0.5, "d_inter_text_loss": 0.6, "g_image_loss": 1.0,
            "g_text_loss": 1.1}
    plain = io.StringIO()
    progress = TrainingProgress(4, stream=plain, live=False)
    progress.update(1, logs)  # no validation: nothing printed
    progress.update(2, {**logs, "val_mean": 0.41}, best=(0.41, 2))
    progress.update(4, {**logs, "val_mean": 0.43}, best=(0.43, 4))
    lines = plain.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("  epoch 2/4  d 0.500/0.600  g 1.000/1.100  val MAP 0.4100")
    assert "ETA" in lines[0] and "ETA" not in lines[1] and "best 0.4300@4" in lines[1]

    live = io.StringIO()
    progress = TrainingProgress(4, stream=live, live=True)
    for epoch in range(1, 5):
        progress.update(epoch, {**logs, **({"val_mean": 0.4} if epoch % 2 == 0 else {})})
    text = live.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "[#####...............] epoch 1/4" in text and "val MAP 0.4000" in text


def test_train_command_follows_the_same_conventions(tiny_feature_dir, tmp_path):
    hparams = [f"--hparam={k}={v}" for k, v in TINY_HPARAMS.items() if k != "epochs"]
    done = cmgan("train", "--dataset", "features", "--data-dir", str(tiny_feature_dir),
                 "--epochs", "2", "--output-dir", str(tmp_path / "out"), *hparams)
    assert done.returncode == 0, done.stderr[-3000:]
    terminal = done.stdout + done.stderr
    assert not TF_CPP_LINE.search(terminal) and not ABSL_LINE.search(terminal), terminal
    assert re.search(r"^\[1/2\] load features done in \S+$", done.stdout, re.M), done.stdout
    assert re.search(r"^\[2/2\] train CM-GAN and baselines done in \S+: best epoch \d/2$",
                     done.stdout, re.M), done.stdout
    assert re.search(r"^  epoch 2/2  .* val MAP 0\.\d{4}", done.stdout, re.M), done.stdout
    log = _log_file(done.stdout)
    assert log.parent == tmp_path / "out" / "logs" and TF_CPP_LINE.search(log.read_text())
