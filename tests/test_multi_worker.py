"""Multi-worker training across real processes: `cmgan train --strategy multi_worker`.

Two worker processes on 127.0.0.1 form a MultiWorkerMirroredStrategy cluster (TF_CONFIG) with
real collective ops over gRPC. Both must finish, end with identical weights, and only the
chief (worker 0) may write to the output folder.
"""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_HPARAMS

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # per run; a healthy run of the tiny data takes well under a minute
CHECKSUM = re.compile(r"final CM-GAN weights sha256 ([0-9a-f]{64}) \((worker\d)\)")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def run_workers(args: list[str], workdir: Path, count: int = 2) -> list[dict]:
    """Starts `count` workers of one cluster, waits (bounded) for all, kills any left."""
    ports = free_ports(count)
    workers = []
    try:
        for index in range(count):
            tmp = workdir / f"tmp{index}"  # the worker's own TMPDIR: what it leaves is visible
            tmp.mkdir()
            env = {**os.environ, "TF_CONFIG": tf_config(ports, index), "TMPDIR": str(tmp),
                   "PYTHONPATH": os.pathsep.join(
                       [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
                   "CUDA_VISIBLE_DEVICES": ""}
            stdout = open(workdir / f"worker{index}.out", "w")
            stderr = open(workdir / f"worker{index}.err", "w")
            process = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=workdir,
                                       env=env, stdout=stdout, stderr=stderr, text=True)
            workers.append({"index": index, "process": process, "tmp": tmp,
                            "files": (stdout, stderr)})
        for worker in workers:
            try:
                worker["rc"] = worker["process"].wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                worker["rc"] = None
    finally:
        for worker in workers:
            if worker["process"].poll() is None:
                worker["process"].kill()
                worker["process"].wait(timeout=30)
            for f in worker["files"]:
                f.close()
    for worker in workers:
        worker["stdout"] = (workdir / f"worker{worker['index']}.out").read_text()
        worker["stderr"] = (workdir / f"worker{worker['index']}.err").read_text()
    return workers


def log_file(stdout: str) -> Path:
    """The log path a cmgan command prints first ("log: <path>")."""
    match = re.search(r"^log: (.+)$", stdout, re.MULTILINE)
    assert match, stdout
    return Path(match.group(1).strip())


def cmgan_rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("CM-GAN (candidate)")]


def epoch_lines(stdout: str) -> list[str]:
    """Progress lines without their times: losses, val MAP, best epoch."""
    return re.findall(r"epoch \d+/\d+ .*?best \S+", stdout)


def test_two_workers_train_alike_and_only_the_chief_writes(tiny_feature_dir, tmp_path):
    out = tmp_path / "out"
    hparams = [f"--hparam={k}={v}" for k, v in TINY_HPARAMS.items() if k != "epochs"]
    workers = run_workers(["train", "--dataset", "features", "--data-dir",
                           str(tiny_feature_dir), "--epochs", "2", "--strategy",
                           "multi_worker", "--output-dir", str(out), *hparams], tmp_path)
    for worker in workers:
        assert worker["rc"] == 0, (f"worker {worker['index']} rc={worker['rc']}\n"
                                   + worker["stdout"][-2000:] + worker["stderr"][-4000:])

    chief, other = workers
    # Identical weights on both workers (each logs a checksum), so identical results.
    checksums = {}
    for worker in workers:
        found = CHECKSUM.findall(log_file(worker["stdout"]).read_text())
        assert found, f"no checksum in worker {worker['index']}'s log"
        checksums[found[-1][1]] = found[-1][0]
    assert set(checksums) == {"worker0", "worker1"}
    assert checksums["worker0"] == checksums["worker1"]
    assert cmgan_rows(chief["stdout"]) == cmgan_rows(other["stdout"])
    assert len(cmgan_rows(chief["stdout"])) == 2
    # Logged losses are the global batch's (summed over the replicas), the same on both.
    assert epoch_lines(chief["stdout"]) == epoch_lines(other["stdout"])
    assert len(epoch_lines(chief["stdout"])) == 2

    # Only the chief's outputs in the output folder: one log, metrics, weights, TensorBoard.
    assert sorted(p.name for p in out.iterdir()) == ["cmgan.weights.h5", "logs", "metrics.json"]
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert [n for n in logs if n.endswith(".log")] == [log_file(chief["stdout"]).name]
    assert {"train", "validation"} <= set(logs)  # TensorBoard, the chief's only
    assert log_file(chief["stdout"]).parent == out / "logs"
    metrics_line = f"metrics: {out / 'metrics.json'}"
    assert chief["stdout"].strip().splitlines()[-1] == metrics_line
    assert other["stdout"].strip().splitlines()[-1] == metrics_line + " (written by the chief)"
    document = json.loads((out / "metrics.json").read_text())
    assert document["hparams"]["epochs"] == 2 and 1 <= document["best_epoch"] <= 2

    # The other worker's scratch outputs (checkpoints, TensorBoard, metrics) are deleted; only
    # its log folder is left in its TMPDIR.
    left = sorted(p.name for p in other["tmp"].iterdir())
    assert len(left) == 1 and left[0].startswith("cmgan-train-worker1-"), left
    assert log_file(other["stdout"]).is_relative_to(other["tmp"])


@pytest.mark.parametrize("config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}},
     False),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
     True),
])
def test_is_chief(monkeypatch, config, chief):
    from models.distribute import is_chief, writes_outputs

    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert is_chief() is chief
    assert writes_outputs("multi_worker") is chief
    assert writes_outputs("default") is True  # a single process always writes
