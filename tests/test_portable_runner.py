"""Beam through the portability API: the path Flink, Spark and Dataflow take.

The test starts Beam's own job service (local_job_service_main) and a pool of EXTERNAL SDK
workers (worker_pool_main, one worker process per job), points ``--beam-arg`` at them, and checks
that the Beam stages still produce what the DirectRunner produces: a whole ``cmgan run`` on
demo-features (FeatureExampleGen, StatisticsGen, Transform in the workers; the model is pushed),
and a whole ``cmgan run`` on a raw folder with every kind of bad record, its images encoded by
RunInference (keras:MobileNetV3Small) and its texts tokenised by Transform, so the quarantine,
the encoder and the vocabulary run in the workers too. Every DoFn, coder and side input crosses
a process boundary as it would on a cluster.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import START_TIMEOUT_S, TINY_HPARAMS, free_port, stop_process
from test_raw_example_gen import read_quarantine, write_bad_folder

REPO = Path(__file__).resolve().parents[1]
DIRECT_BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
JOB_SERVICE = "apache_beam.runners.portability.local_job_service_main"
WORKER_POOL = "apache_beam.runners.worker.worker_pool_main"
RUN_TIMEOUT_S = 1200


def _wait_for_port(process: subprocess.Popen, port: int, log: Path) -> None:
    """Until ``localhost:port`` accepts connections; fails if ``process`` exits or it takes
    longer than START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args[2]} exited ({process.returncode}):\n"
                        + log.read_text()[-3000:])
        with contextlib.suppress(OSError), socket.create_connection(("localhost", port), 1):
            return
        time.sleep(0.5)
    pytest.fail(f"{process.args[2]} did not listen on localhost:{port} within "
                f"{START_TIMEOUT_S} s:\n" + log.read_text()[-3000:])


@contextlib.contextmanager
def _beam_service(module: str, port_flag: str, log: Path):
    """``python -m module port_flag=PORT`` in its own process group until the end of the block;
    yields PORT. Stopped with SIGINT (the worker pool then stops its SDK workers), then the
    whole group is killed, so no worker it started outlives the test. Neither service stops
    promptly on a signal (each waits on its gRPC server): a few seconds, then the group goes."""
    port = free_port()
    # The worker pool starts each SDK worker as `python -c ...`: this interpreter, with the
    # project installed, must come first on PATH.
    env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(sys.executable),
                                                 os.environ.get("PATH", "")]))
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", module, f"{port_flag}={port}"],
                                   cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        _wait_for_port(process, port, log)
        yield port
    finally:
        stop_process(process, signal.SIGINT, timeout_s=5)
        with contextlib.suppress(ProcessLookupError):  # SDK workers left in its group
            os.killpg(process.pid, signal.SIGKILL)


@dataclasses.dataclass(frozen=True)
class PortableBeam:
    beam_args: list[str]  # the --beam-arg values that point a pipeline at these services
    job_service_log: Path

    def jobs_done(self) -> int:
        """Jobs the job service has finished in state DONE so far."""
        return len(re.findall(r"Completed job in .* with state DONE",
                              self.job_service_log.read_text()))


@pytest.fixture(scope="module")
def portable_beam(tmp_path_factory):
    """A PortableRunner on a local job service with EXTERNAL SDK workers."""
    logs = tmp_path_factory.mktemp("beam_services")
    with _beam_service(JOB_SERVICE, "--port", logs / "job_service.log") as job_port, \
            _beam_service(WORKER_POOL, "--service_port", logs / "worker_pool.log") as pool_port:
        yield PortableBeam(
            ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
             "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"],
            logs / "job_service.log")


def run_component(component, base: Path, beam_args: list[str]) -> dict:
    """A one-component TFX pipeline on LocalDagRunner under ``beam_args``; its output artifacts."""
    from tfx.orchestration import metadata, pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from pipeline.metadata import latest_run_executions, output_artifacts

    metadata_path = str(base / "metadata.sqlite")
    LocalDagRunner().run(pipeline.Pipeline(
        pipeline_name="portable-test", pipeline_root=str(base / "root"), components=[component],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(metadata_path),
        beam_pipeline_args=beam_args, enable_cache=False))
    (execution,) = latest_run_executions(metadata_path, "portable-test").values()
    return output_artifacts(metadata_path, execution.id)


def examples_by_split(uri: str) -> dict[str, dict[str, dict[str, list]]]:
    """{split: {example id: {feature: values}}} of every Split-* folder of an Examples uri."""
    splits = {}
    for folder in sorted(tf.io.gfile.glob(os.path.join(uri, "Split-*"))):
        records = {}
        files = tf.io.gfile.glob(os.path.join(folder, "*.gz"))
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            values = {key: list(getattr(value, value.WhichOneof("kind")).value)
                      for key, value in example.features.feature.items()}
            (record_id,) = values["id"]
            assert record_id not in records, f"{record_id} written twice"
            records[record_id] = values
        splits[os.path.basename(folder)] = records
    return splits


def assert_same_examples(ours: str, direct: str) -> None:
    """Same splits, same ids per split, same features: floats to float32 rounding (the encoders
    may batch differently), everything else exactly."""
    ours_splits, direct_splits = examples_by_split(ours), examples_by_split(direct)
    assert ours_splits.keys() == direct_splits.keys() == {"Split-train", "Split-val",
                                                          "Split-test"}
    for split, direct_records in direct_splits.items():
        assert direct_records, split
        assert ours_splits[split].keys() == direct_records.keys(), split
        for record_id, expected in direct_records.items():
            got = ours_splits[split][record_id]
            assert got.keys() == expected.keys()
            for key, values in expected.items():
                if values and isinstance(values[0], float):
                    np.testing.assert_allclose(got[key], values, rtol=1e-5, atol=1e-6,
                                               err_msg=f"{split} {record_id} {key}")
                else:
                    assert got[key] == values, (split, record_id, key)


@pytest.fixture(scope="module")
def bad_raw_folder(tmp_path_factory):
    return write_bad_folder(tmp_path_factory.mktemp("portable_raw") / "data")


def cmgan_run(base: Path, beam_args: list[str], *flags: str) -> None:
    """``cmgan run FLAGS`` with the tiny hyperparameters under ``base``, its Beam stages on
    ``beam_args``; it must succeed and push a model."""
    hparams = {**TINY_HPARAMS, "epochs": 1}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", *flags, "--preset", "paper",
         "--pipeline-root", str(base / "root"), "--serving-root", str(base / "serving"),
         *[f"--hparam={k}={v}" for k, v in hparams.items()],
         *[f"--beam-arg={arg}" for arg in beam_args]],
        cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert "pushed model:" in done.stdout and "nothing pushed" not in done.stdout


def only_output(base: Path, component: str, key: str) -> str:
    """The one artifact folder a pipeline run under ``base`` wrote for component/key."""
    (folder,) = (base / "root" / component / key).iterdir()
    return str(folder)


RAW_FLAGS = ("--image-encoder", "keras:MobileNetV3Small", "--image-size", "32",
             "--max-quarantine-fraction", "0.9")


def test_whole_cmgan_run_on_a_raw_folder_with_bad_records_equals_the_direct_runner(
        portable_beam, bad_raw_folder, tmp_path):
    """RawExampleGen with its images encoded by RunInference (keras:MobileNetV3Small) and every
    kind of bad record quarantined, then the rest of the pipeline (statistics, the text
    vocabulary in Transform, training, evaluation, push) on the job service's workers."""
    from components.raw_example_gen.component import RawExampleGen

    base = tmp_path / "run"
    jobs_before = portable_beam.jobs_done()
    cmgan_run(base, portable_beam.beam_args, "--dataset", "raw", "--data-dir",
              str(bad_raw_folder), *RAW_FLAGS, "--hparam=text_vocab_size=300",
              "--hparam=text_max_tokens=16", "--hparam=kim_filters=8",
              "--hparam=word_embedding_dim=8")
    # RawExampleGen, StatisticsGen and Transform (analyze and transform) on the job service.
    assert portable_beam.jobs_done() - jobs_before >= 3, portable_beam.job_service_log

    direct = run_component(
        RawExampleGen(dataset="raw", data_dir=str(bad_raw_folder),
                      image_encoder="keras:MobileNetV3Small", image_size=32,
                      max_quarantine_fraction=0.9), tmp_path / "direct", DIRECT_BEAM_ARGS)
    portable_examples = only_output(base, "RawExampleGen", "examples")
    assert_same_examples(portable_examples, direct["examples"][0].uri)
    ours, ours_summary = read_quarantine(only_output(base, "RawExampleGen", "quarantine"))
    theirs, their_summary = read_quarantine(direct["quarantine"][0].uri)
    assert len(theirs) == 13  # one record of every kind of problem (test_raw_example_gen.py)
    key = lambda entry: json.dumps(entry, sort_keys=True)  # noqa: E731
    assert sorted(ours, key=key) == sorted(theirs, key=key)
    assert ours_summary == their_summary
    assert (ours_summary["accepted"], ours_summary["quarantined"]) == (7, 13)
    image_dim = direct["examples"][0].custom_properties["image_dim"].int_value
    assert image_dim == 576  # MobileNetV3Small's pooled features: RunInference ran
    (image,) = {len(r["image"]) for split in examples_by_split(portable_examples).values()
                for r in split.values()}
    assert image == image_dim


def test_whole_cmgan_run_on_demo_features_equals_the_direct_runner(portable_beam, tmp_path):
    from components.feature_example_gen.component import FeatureExampleGen

    base = tmp_path / "run"
    jobs_before = portable_beam.jobs_done()
    cmgan_run(base, portable_beam.beam_args, "--dataset", "demo-features")
    # FeatureExampleGen, StatisticsGen and Transform (analyze and transform) ran on the job
    # service, none of them on a DirectRunner in the driver.
    assert portable_beam.jobs_done() - jobs_before >= 3, portable_beam.job_service_log

    direct = run_component(FeatureExampleGen(dataset="demo"), tmp_path / "direct",
                           DIRECT_BEAM_ARGS)
    portable_examples = only_output(base, "FeatureExampleGen", "examples")
    assert_same_examples(portable_examples, direct["examples"][0].uri)
    counts = collections.Counter({split: len(records) for split, records in
                                  examples_by_split(portable_examples).items()})
    assert counts == {"Split-train": 8 * 120, "Split-val": 8 * 30, "Split-test": 8 * 40}


def test_dataflow_with_a_local_pipeline_root_is_refused_before_anything_runs(tmp_path,
                                                                              capsys):
    """DataflowRunner workers have their own disks: artifacts they wrote to a local pipeline
    root would be lost on them."""
    from pipeline import cli

    code = cli.main(["run", "--dataset", "demo-features", "--pipeline-root",
                     str(tmp_path / "root"), "--beam-arg=--runner=DataflowRunner",
                     "--beam-arg=--project=p", "--beam-arg=--region=europe-west1",
                     "--beam-arg=--temp_location=gs://bucket/tmp"])
    assert code == 2
    assert ("cmgan: error: pipeline_root must be on storage the DataflowRunner workers share "
            "(gs://" in capsys.readouterr().err)
    assert not (tmp_path / "root").exists()


def test_which_runners_may_see_which_paths(make_pipeline_config, tmp_path):
    """Raw image datasets are read by local path, so not on Dataflow; runners whose workers
    share this disk (as in the tests above) keep local paths."""
    from models.config_errors import ConfigError
    from pipeline.config import beam_runner, check_beam_storage

    dataflow = ("--runner=DataflowRunner", "--project=p")
    on_gcs = lambda **fields: dataclasses.replace(  # noqa: E731
        make_pipeline_config(tmp_path, beam_args=dataflow, **fields), pipeline_root="gs://b/r")
    check_beam_storage(on_gcs())
    with pytest.raises(ConfigError, match="dataset 'raw' cannot run on DataflowRunner"):
        check_beam_storage(on_gcs(dataset="raw", data_dir=str(tmp_path)))
    for args in (["--runner=PortableRunner"], ["--runner", "FlinkRunner"], DIRECT_BEAM_ARGS):
        check_beam_storage(make_pipeline_config(tmp_path, dataset="raw", data_dir=str(tmp_path),
                                                beam_args=tuple(args)))
    assert [beam_runner(a) for a in (["--runner", "DataflowRunner"], ["--runner=dataflow"],
                                     ["--runner=apache_beam.runners.DataflowRunner"],
                                     ["--direct_num_workers=2"])] == ["dataflow"] * 3 + [""]
