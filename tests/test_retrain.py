"""Scheduled retraining on data spans, end to end with the real LocalDagRunner (issue 6).

Scenario, one workspace: span 1 -> `cmgan retrain` pushes version 1; span 2 arrives -> `cmgan
retrain` pushes version 2 only if the candidate is not worse than version 1 by more than the
margin; a span with shuffled labels -> candidate not blessed, the highest pushed version stays;
`cmgan retrain` with no new span -> no-op. `cmgan history` then lists the runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from components.datasets import FeatureDataset, Split, make_demo_dataset, write_feature_folder
from pipeline import cli
from pipeline.history import run_history
from serving.client import ServingClient

from conftest import serving_process

REPO = Path(__file__).resolve().parents[1]

# Same generator as conftest's tiny dataset, with more training pairs to cut into spans.
SPAN_TRAIN_PER_CLASS = 40
SCENARIO_HPARAMS = dict(epochs=8)
SPAN_DATASET = dict(seed=0, num_classes=4, train_per_class=3 * SPAN_TRAIN_PER_CLASS,
                    val_per_class=12, test_per_class=12, image_dim=16, text_dim=8)


def _span(full: FeatureDataset, rows: slice, shuffle_labels: bool = False) -> FeatureDataset:
    train = full.splits["train"].subset(np.arange(len(full.splits["train"]))[rows])
    if shuffle_labels:
        label = np.random.default_rng(7).permutation(train.label)
        train = Split(train.image, train.text, label, train.ids)
    return FeatureDataset(full.name, {**full.splits, "train": train}, full.class_names)


@pytest.fixture(scope="module")
def full_dataset() -> FeatureDataset:
    return make_demo_dataset(**SPAN_DATASET)


@pytest.fixture(scope="module")
def workspace(make_pipeline_config, tmp_path_factory):
    base = tmp_path_factory.mktemp("retrain")
    root = base / "spans"
    root.mkdir()
    config = make_pipeline_config(base, data_dir=root, pipeline_name="cmgan-retrain",
                                 hparams=SCENARIO_HPARAMS)
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, span_pattern="span-{SPAN}", span_window=1, eval_span="first"))
    config_file = base / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    return config, root, config_file


def _cli(*args) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(list(args))
    return code, stdout.getvalue()


def _versions(config) -> list[int]:
    base = Path(config.push_directory)
    return sorted(int(p.name) for p in base.iterdir()) if base.exists() else []


@contextlib.contextmanager
def _server(config):
    """``cmgan serve`` on the pushed models, polling every 0.5 s; yields host:port."""
    with serving_process("--model-base-path", config.serving_root, "--model-name",
                         config.model_name, "--poll-seconds", "0.5") as address:
        yield address


def _served_version(client, config, text_dim) -> int:
    """Waits until the highest pushed version is AVAILABLE; the version a default request hits."""
    client.wait_until_ready(config.model_name, timeout_s=120, version=_versions(config)[-1])
    _, version = client.predict(config.model_name, "encode_text",
                                {"text": np.zeros((1, text_dim), np.float32)})
    return version


@pytest.fixture(scope="module")
def scenario(workspace, full_dataset):
    config, root, config_file = workspace
    n = SPAN_TRAIN_PER_CLASS * 4
    text_dim = SPAN_DATASET["text_dim"]
    steps = {}
    write_feature_folder(_span(full_dataset, slice(0, n)), root / "span-1")
    steps["span1"] = (*_cli("retrain", "--config", str(config_file)), _versions(config))
    with _server(config) as address, ServingClient(address, timeout_s=30) as client:
        served = {"span1": _served_version(client, config, text_dim)}
        write_feature_folder(_span(full_dataset, slice(n, 2 * n)), root / "span-2")
        steps["span2"] = (*_cli("retrain", "--config", str(config_file)), _versions(config))
        served["span2"] = _served_version(client, config, text_dim)
        write_feature_folder(_span(full_dataset, slice(2 * n, 3 * n), shuffle_labels=True),
                             root / "span-3")
        steps["span3"] = (*_cli("retrain", "--config", str(config_file)), _versions(config))
        time.sleep(1.5)  # three poll periods: a new version would have been seen
        served["span3"] = _served_version(client, config, text_dim)
        steps["noop"] = (*_cli("retrain", "--config", str(config_file)), _versions(config))
    steps["served"] = served
    steps["history"] = _cli("history", "--config", str(config_file))
    return steps


def test_span_1_is_trained_and_pushed_as_the_first_version(scenario, workspace):
    code, out, versions = scenario["span1"]
    assert code == 0, out
    assert "retrain: pushed: pushed version" in out
    assert len(versions) == 1
    assert scenario["served"]["span1"] == versions[0]


def test_span_2_is_pushed_only_if_not_worse_than_the_blessed_model(scenario, workspace):
    config = workspace[0]
    code, out, versions = scenario["span2"]
    assert code == 0, out
    records = run_history(config.metadata_path, config.pipeline_name)
    first, second = records[0], records[1]
    assert first.spans == [1] and second.spans == [2]
    assert first.eval_span == second.eval_span == 1
    margin = config.evaluation.map_margin
    if second.val_mean_map >= first.val_mean_map - margin:
        assert second.blessed and len(versions) == 2 and second.pushed_version is not None
        assert int(second.pushed_version) == versions[-1] > versions[0]
        assert scenario["served"]["span2"] == versions[-1]  # the server picked it up
    else:
        assert not second.blessed and len(versions) == 1 and "NOT blessed" in out
        assert scenario["served"]["span2"] == versions[0]


def test_shuffled_labels_are_not_blessed_and_the_served_version_stays(scenario, workspace):
    config = workspace[0]
    code, out, versions = scenario["span3"]
    assert code == 0, out
    assert "retrain: not_pushed: nothing pushed: NOT blessed" in out
    assert versions == scenario["span2"][2]
    assert scenario["served"]["span3"] == scenario["served"]["span2"] == versions[-1]
    third = run_history(config.metadata_path, config.pipeline_name)[2]
    assert third.spans == [3] and third.blessed is False and third.pushed_version is None


def test_retrain_without_a_new_span_is_a_no_op(scenario, workspace):
    config = workspace[0]
    code, out, versions = scenario["noop"]
    assert code == 0
    assert "retrain: noop: nothing to do: no new span: the newest span 3 was already evaluated" \
        in out
    assert versions == scenario["span3"][2]
    assert len(run_history(config.metadata_path, config.pipeline_name)) == 3  # no new run


def test_history_lists_every_run_with_spans_map_blessing_and_version(scenario, workspace):
    config = workspace[0]
    code, out = scenario["history"]
    print(out)
    assert code == 0
    records = run_history(config.metadata_path, config.pipeline_name)
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["run", "started", "(UTC)"]
    for number, record in enumerate(records, 1):
        row = next(line for line in lines if line.startswith(f"{number} "))
        assert f"{record.val_mean_map:.4f}" in row and f"{record.test_mean_map:.4f}" in row
        assert (record.pushed_version or "-") in row
        assert ("yes" if record.blessed else "no") in row.split()
    assert [r.spans for r in records] == [[1], [2], [3]]


def test_examples_artifact_records_the_span_window(scenario, workspace):
    from ml_metadata import metadata_store

    from pipeline.metadata import metadata_connection

    config = workspace[0]
    store = metadata_store.MetadataStore(metadata_connection(config.metadata_path))
    examples = [a for a in store.get_artifacts_by_type("Examples")
                if "spans" in a.custom_properties]
    assert sorted(json.loads(a.custom_properties["spans"].string_value) for a in examples) == [
        [1], [2], [3]]
    assert sorted(a.properties["span"].int_value for a in examples) == [1, 2, 3]


def test_schedule_command_runs_retrain_on_the_interval(scenario, workspace):
    """The real `cmgan schedule` on the finished scenario: every run is a logged no-op."""
    config, _, config_file = workspace
    started = time.monotonic()
    code, out = _cli("schedule", "--config", str(config_file), "--every", "1s",
                     "--max-runs", "2")
    assert code == 0, out
    runs = [line for line in out.splitlines() if " run " in line and ": noop" in line]
    assert len(runs) == 2, out
    assert "no new span: the newest span 3 was already evaluated" in runs[0]
    assert time.monotonic() - started >= 1.0  # the second run waited for the interval
    assert len(run_history(config.metadata_path, config.pipeline_name)) == 3
