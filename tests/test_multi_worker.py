"""Multi-worker training across real processes: `cmgan train --strategy multi_worker` and the
TFX Trainer component's executor.

Two worker processes on 127.0.0.1 form a MultiWorkerMirroredStrategy cluster (TF_CONFIG) with
real collective ops over gRPC. Both must finish, end with identical weights, and only the
chief (worker 0) may write to the output folder. A worker killed mid-training, and the cluster
started again (what a TFJob does), resumes from the chief's backup, not from epoch 0. The
Trainer's executor on two workers finishes on both, the chief's model the only one written.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest

from models.export import load_serving_model
from pipeline.metadata import latest_run_executions, output_artifacts

from conftest import TINY_HPARAMS

REPO = Path(__file__).resolve().parents[1]
TRAINER_WORKER = REPO / "tests" / "scripts" / "trainer_worker.py"
# Same global batches, summed in another order: val MAP moved by 6e-5 when this was written.
MAP_NOISE = 0.01
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


def start_worker(args: list[str], workdir: Path, ports: list[int], index: int,
                 attempt: int = 0) -> dict:
    """Worker `index` of the cluster on `ports`: ``python ARGS``; its output in
    <workdir>/worker<i>[.<attempt>]."""
    name = f"worker{index}" + (f".{attempt}" if attempt else "")
    tmp = workdir / f"tmp{index}" / str(attempt)  # its own TMPDIR: what it leaves is visible
    tmp.mkdir(parents=True)
    env = {**os.environ, "TF_CONFIG": tf_config(ports, index), "TMPDIR": str(tmp),
           "PYTHONPATH": os.pathsep.join(
               [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "CUDA_VISIBLE_DEVICES": ""}
    stdout, stderr = open(workdir / f"{name}.out", "w"), open(workdir / f"{name}.err", "w")
    process = subprocess.Popen([sys.executable, *args], cwd=workdir,
                               env=env, stdout=stdout, stderr=stderr, text=True)
    return {"index": index, "process": process, "tmp": tmp, "files": (stdout, stderr),
            "out": workdir / f"{name}.out", "err": workdir / f"{name}.err"}


def finish(worker: dict, timeout_s: float = 30) -> dict:
    """Waits (bounded) for a worker, kills it if still running, reads its output."""
    try:
        worker["rc"] = worker["process"].wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        worker["rc"] = None
        worker["process"].kill()
        worker["process"].wait(timeout=30)
    for f in worker["files"]:
        f.close()
    worker["stdout"], worker["stderr"] = worker["out"].read_text(), worker["err"].read_text()
    return worker


def run_workers(args: list[str], workdir: Path, count: int = 2, ports: list[int] | None = None,
                attempt: int = 0) -> list[dict]:
    """Starts `count` workers of one cluster, waits (bounded) for all, kills any left."""
    ports = ports or free_ports(count)
    workers = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for index in range(count):
            workers.append(start_worker(args, workdir, ports, index, attempt))
    finally:
        for worker in workers:
            finish(worker, max(1.0, deadline - time.monotonic()))
    return workers


def assert_finished(workers: list[dict]) -> None:
    for worker in workers:
        assert worker["rc"] == 0, (f"worker {worker['index']} rc={worker['rc']}\n"
                                   + worker["stdout"][-2000:] + worker["stderr"][-4000:])


def last_checkpoint_epoch(backup_root: Path) -> int:
    """Epoch of the newest "last" checkpoint the chief has written under --backup-dir."""
    epochs = [0]
    for state in backup_root.glob("*/last/checkpoint"):
        match = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', state.read_text(), re.M)
        if match:
            epochs.append(int(match.group(1)))
    return max(epochs)


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
    workers = run_workers(["-m", "pipeline", "train", "--dataset", "features", "--data-dir",
                           str(tiny_feature_dir), "--epochs", "2", "--strategy",
                           "multi_worker", "--output-dir", str(out), *hparams], tmp_path)
    assert_finished(workers)

    chief, other = workers
    # Identical weights on both workers (each logs a checksum), so identical results.
    checksums = {}
    for worker in workers:
        found = CHECKSUM.findall(log_file(worker["stdout"]).read_text())
        assert found, f"no checksum in worker {worker['index']}'s log"
        checksums[found[-1][1]] = found[-1][0]
    assert set(checksums) == {"worker0", "worker1"}
    assert checksums["worker0"] == checksums["worker1"]
    for worker in workers:  # the longer heartbeat timeout reached the coordination service
        assert "coordination service heartbeat timeout 60 s" in log_file(
            worker["stdout"]).read_text()
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


KILL_AFTER_EPOCH = 2  # kill once the chief has backed up this many epochs (of RESUME_EPOCHS)
RESUME_EPOCHS = 5
RESUMED = re.compile(r"^resumed from checkpoint at epoch (\d+)/(\d+)$", re.M)
LOST_PEER_WAIT_S = 120  # how long the surviving worker may take to notice its peer is gone


def test_a_killed_worker_restarted_with_the_cluster_resumes_from_the_backup(tiny_feature_dir,
                                                                             tmp_path):
    out, backup = tmp_path / "out", tmp_path / "backup"
    hparams = [f"--hparam={k}={v}" for k, v in TINY_HPARAMS.items() if k != "epochs"]
    args = ["-m", "pipeline", "train", "--dataset", "features", "--data-dir",
            str(tiny_feature_dir), "--epochs",
            str(RESUME_EPOCHS), "--strategy", "multi_worker", "--output-dir", str(out),
            "--backup-dir", str(backup), "--hparam=early_stopping_patience=0",
            # The selection run is the one killed and resumed here; the refit phase resumes from
            # its own folder alike (tests/test_models.py).
            "--hparam=refit_on_validation=false", *hparams]
    ports = free_ports(2)  # the cluster's addresses stay (as a TFJob's services do)
    workers = [start_worker(args, tmp_path, ports, index) for index in range(2)]
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while (last_checkpoint_epoch(backup) < KILL_AFTER_EPOCH and time.monotonic() < deadline
               and all(w["process"].poll() is None for w in workers)):
            time.sleep(0.1)
        killed_at = last_checkpoint_epoch(backup)
        running = all(w["process"].poll() is None for w in workers)
        if running:
            workers[1]["process"].send_signal(signal.SIGKILL)
    finally:
        # The chief's collective ops lose their peer: it fails (TF's health check) or hangs.
        finish(workers[0], LOST_PEER_WAIT_S)
        finish(workers[1])
    assert running and KILL_AFTER_EPOCH <= killed_at < RESUME_EPOCHS, (
        f"not killed mid-training (backed up epoch {killed_at})\n"
        + "\n".join(w["stdout"][-1000:] + w["stderr"][-3000:] for w in workers))
    assert workers[1]["rc"] == -signal.SIGKILL
    assert workers[0]["rc"] != 0  # it did not finish without its peer
    assert not (out / "metrics.json").exists()

    # Start the cluster again, as a TFJob restarts failed replicas: both resume.
    restarted = run_workers(args, tmp_path, ports=ports, attempt=1)
    assert_finished(restarted)
    resumed = {RESUMED.search(w["stdout"]).groups() for w in restarted
               if RESUMED.search(w["stdout"])}
    assert len(resumed) == 1, [w["stdout"][-1500:] for w in restarted]
    epoch, total = map(int, resumed.pop())
    assert total == RESUME_EPOCHS and killed_at <= epoch < RESUME_EPOCHS
    for worker in restarted:  # only the epochs after the backup were trained again
        trained = [int(n) for n in re.findall(r"epoch (\d+)/\d+ ", worker["stdout"])]
        assert trained and min(trained) == epoch + 1 and max(trained) == RESUME_EPOCHS, trained
    checksums = {CHECKSUM.findall(log_file(w["stdout"]).read_text())[-1] for w in restarted}
    assert len({c for c, _ in checksums}) == 1  # identical weights again
    document = json.loads((out / "metrics.json").read_text())
    assert document["resumed_from_epoch"] == epoch
    assert 1 <= document["best_epoch"] <= RESUME_EPOCHS
    # Training finished: the backup is deleted.
    assert list(backup.iterdir()) == []


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


def test_the_trainer_component_on_two_workers(tiny_pipeline_run, tmp_path):
    """The TFX Trainer's own executor (GenericExecutor, as each replica of a Vertex AI or
    Kubeflow training job runs it) in two worker processes, with the inputs of a finished
    pipeline run's Trainer (tests/scripts/trainer_worker.py): both finish (the executor's check
    for the model passes on the other worker too), with identical weights and the validation
    MAP of the pipeline's single-process Trainer; only the chief's model and run folder exist,
    and no worker leaves a temporary file behind."""
    config, _ = tiny_pipeline_run("features")
    out = tmp_path / "out"
    workers = run_workers([str(TRAINER_WORKER), config.metadata_path, config.pipeline_name,
                           str(out)], tmp_path)
    assert_finished(workers)
    checksums = {name: checksum for worker in workers
                 for checksum, name in CHECKSUM.findall(worker["stderr"])}
    assert set(checksums) == {"worker0", "worker1"}
    assert checksums["worker0"] == checksums["worker1"]
    for worker in workers:  # the longer heartbeat timeout reached the coordination service
        assert "coordination service heartbeat timeout 60 s" in worker["stderr"]

    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "model", "model_run"]
    model = load_serving_model(str(out / "model" / "Format-Serving"))
    assert {"encode_image", "encode_text"} <= set(model.signatures)
    assert (out / "model" / "warm_start" / "cmgan.weights.h5").is_file()
    report = json.loads((out / "model_run" / "training_report.json").read_text())
    # The same global batches as the pipeline's single-process Trainer, split over 2 workers.
    single = json.loads(Path(output_artifacts(config.metadata_path, latest_run_executions(
        config.metadata_path, config.pipeline_name)["Trainer"].id)["model_run"][0].uri,
        "training_report.json").read_text())
    assert (report["strategy"], single["strategy"]) == ("multi_worker", "default")
    assert abs(report["best_val"]["mean"] - single["best_val"]["mean"]) <= MAP_NOISE
    for worker in workers:  # scratch folders deleted, local copies of the weights too
        assert list(worker["tmp"].iterdir()) == [], worker["index"]


def test_a_worker_that_cannot_see_the_chiefs_model_says_why(monkeypatch, tmp_path):
    """A pipeline root each worker has its own copy of (a local folder on a cluster): the other
    worker's Trainer fails naming the folder, not with TFX's "run_fn failed to generate
    model"."""
    from models.trainer import wait_for_the_chiefs_model

    missing = str(tmp_path / "model" / "Format-Serving")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    with pytest.raises(RuntimeError, match=r"^worker1: the chief's model .*Format-Serving is "
                                           r"not visible here; a multi-worker Trainer needs a "
                                           r"pipeline root on storage every worker shares"):
        wait_for_the_chiefs_model("multi_worker", missing)
    wait_for_the_chiefs_model("default", missing)  # a single process: TFX's own check follows
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    wait_for_the_chiefs_model("multi_worker", missing)  # the chief wrote it or TFX says so


def test_trainer_outputs_of_a_non_chief_go_to_a_scratch_folder(monkeypatch, tmp_path):
    """The Trainer's run_fn writes where models.trainer.output_dirs says: fn_args' folders for
    the chief, its non_chief_scratch folder (deleted at the end) for another worker."""
    from models.distribute import non_chief_scratch
    from models.trainer import output_dirs

    def dirs(strategy):
        with non_chief_scratch(strategy, "cmgan-trainer") as scratch:
            serving, run = output_dirs(fn_args, scratch)
        assert scratch is None or not Path(scratch).exists()  # deleted after run_fn's writes
        return serving, run, scratch

    fn_args = types.SimpleNamespace(serving_model_dir=str(tmp_path / "model" / "Format-Serving"),
                                    model_run_dir=str(tmp_path / "model_run"))
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    for index, chief in ((0, True), (1, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                    "task": {"type": "worker", "index": index}}))
        serving, run, scratch = dirs("multi_worker")
        if chief:
            assert (serving, run, scratch) == (fn_args.serving_model_dir,
                                               fn_args.model_run_dir, None)
            continue
        assert Path(scratch).parent == tmp_path / "tmp"
        assert Path(scratch).name.startswith("cmgan-trainer-worker1-")
        assert Path(serving).parent == Path(scratch) == Path(run).parent
        assert serving != run
    monkeypatch.delenv("TF_CONFIG")
    assert dirs("multi_worker")[2] is None  # no cluster: a single process
    assert dirs("mirrored")[:2] == (fn_args.serving_model_dir, fn_args.model_run_dir)
