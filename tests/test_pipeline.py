"""End to end: real LocalDagRunner + Beam DirectRunner on the tiny dataset, sharing one workspace.

Runs, in order: a first run (everything executes, the model is pushed), a re-run with unchanged
inputs (everything up to the Trainer is CACHED), and a run through the CLI whose threshold no
model can reach (nothing is pushed, and the output says why).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ml_metadata.proto import metadata_store_pb2

from components.retrieval_evaluator.constants import EVALUATION_FILE
from pipeline import cli
from pipeline.local_runner import run_pipeline
from pipeline.metadata import latest_run_executions, output_artifacts

UPSTREAM_OF_EVALUATION = ("FeatureExampleGen", "StatisticsGen", "SchemaGen", "SchemaCurator",
                          "ExampleValidator", "AnomaliesGate", "Transform", "Trainer")
ALL_COMPONENTS = (*UPSTREAM_OF_EVALUATION, "RetrievalEvaluator", "Pusher")
State = metadata_store_pb2.Execution.State


def _states(config) -> dict[str, str]:
    return {node: State.Name(e.last_known_state)
            for node, e in latest_run_executions(config.metadata_path,
                                                 config.pipeline_name).items()}


def _outputs(config, node: str) -> dict:
    execution = latest_run_executions(config.metadata_path, config.pipeline_name)[node]
    return output_artifacts(config.metadata_path, execution.id)


def _versions(config) -> list[str]:
    base = Path(config.push_directory)
    return sorted(p.name for p in base.iterdir()) if base.exists() else []


@pytest.fixture(scope="module")
def config(make_pipeline_config, tmp_path_factory):
    return make_pipeline_config(tmp_path_factory.mktemp("e2e"))


@pytest.fixture(scope="module")
def first_run(config):
    result = run_pipeline(config)
    return result, _states(config), _versions(config), _outputs(config, "Trainer")


@pytest.fixture(scope="module")
def cached_run(first_run, config):
    result = run_pipeline(config)
    return result, _states(config)


@pytest.fixture(scope="module")
def strict_run(cached_run, config, tmp_path_factory):
    """The CLI path: a threshold above any possible MAP, so nothing may be pushed; trained
    with a refit on train + val (so the Trainer runs again)."""
    metrics_file = tmp_path_factory.mktemp("strict") / "metrics.json"
    versions_before = _versions(config)
    args = ["run", "--dataset", "features", "--data-dir", config.data.data_dir,
            "--pipeline-name", config.pipeline_name, "--pipeline-root", config.pipeline_root,
            "--serving-root", config.serving_root, "--map-threshold", "1.0",
            "--preset", "paper",
            "--metrics-out", str(metrics_file)]
    args += [f"--hparam={k}={v}" for k, v in config.training.hparams.items()]
    args += ["--hparam=refit_on_validation=true"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exit_code = cli.main(args)
    return exit_code, stdout.getvalue(), json.loads(metrics_file.read_text()), versions_before


def test_all_components_run_and_the_model_is_pushed_in_tf_serving_layout(first_run, config):
    result, states, versions, _ = first_run
    assert {node: states.get(node) for node in ALL_COMPONENTS} == {
        node: "COMPLETE" for node in ALL_COMPONENTS}
    assert result.blessed, result.reason
    assert len(versions) == 1 and versions[0].isdigit()
    pushed = Path(config.push_directory) / versions[0]
    assert result.pushed_model == str(pushed)
    assert (pushed / "saved_model.pb").is_file()
    assert (pushed / "variables").is_dir()


def test_evaluation_and_blessing_artifacts_hold_the_numbers(first_run, config):
    result, _, _, trainer_outputs = first_run
    outputs = _outputs(config, "RetrievalEvaluator")
    evaluation = json.loads(
        (Path(outputs["evaluation"][0].uri) / EVALUATION_FILE).read_text())
    assert evaluation == result.evaluation
    assert set(evaluation["methods"]) == {"cmgan", "cca", "classifier"}  # no baseline model yet
    for reports in evaluation["methods"].values():
        for split in ("val", "test"):
            for metric in ("i2t", "t2i", "mean", "all_modal"):
                assert 0.0 < reports[split][metric] <= 1.0
    assert evaluation["blessed"] is True and evaluation["baseline_model"] is None
    assert "refit" not in evaluation["reason"]

    blessing = outputs["blessing"][0]
    model = trainer_outputs["model"][0]
    assert blessing.custom_properties["blessed"].int_value == 1
    assert blessing.custom_properties["current_model_id"].int_value == model.id
    assert "blessed" in blessing.custom_properties["blessing_message"].string_value
    assert os.path.exists(os.path.join(blessing.uri, "BLESSED"))
    # ML Metadata's SQLite store keeps about 6 significant digits; the JSON keeps them all.
    assert outputs["evaluation"][0].custom_properties["val_mean_map"].double_value == (
        pytest.approx(evaluation["methods"]["cmgan"]["val"]["mean"], abs=1e-5))
    assert "CM-GAN (candidate)" in result.map_table() and "CCA" in result.map_table()


def test_rerun_with_unchanged_inputs_reuses_cached_executions(cached_run, first_run, config):
    result, states = cached_run
    assert {node: states[node] for node in UPSTREAM_OF_EVALUATION} == {
        node: "CACHED" for node in UPSTREAM_OF_EVALUATION}
    # The evaluator re-runs because its baseline changed: the first run's blessed model.
    assert states["RetrievalEvaluator"] == "COMPLETE"
    first_model = first_run[0].evaluation["candidate_model"]
    assert result.evaluation["candidate_model"] == first_model
    assert result.evaluation["baseline_model"] == first_model
    assert result.evaluation["methods"]["baseline_model"] == result.evaluation["methods"]["cmgan"]


def test_threshold_out_of_reach_pushes_nothing_and_says_why(strict_run, config):
    exit_code, stdout, metrics, versions_before = strict_run
    assert exit_code == 0
    assert _versions(config) == versions_before
    assert "nothing pushed: NOT blessed: validation mean MAP" in stdout
    assert "below the threshold 1.0000" in stdout
    assert "CM-GAN (candidate)" in stdout and "classifier" in stdout

    pushed = _outputs(config, "Pusher")["pushed_model"][0]
    assert pushed.custom_properties["pushed"].int_value == 0
    blessing = _outputs(config, "RetrievalEvaluator")["blessing"][0]
    assert blessing.custom_properties["blessed"].int_value == 0
    assert "below the threshold" in blessing.custom_properties["blessing_message"].string_value
    assert os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED"))

    # The refit model has seen the validation pairs: the blessing uses the selection run's
    # validation figure, which the Trainer records beside the export.
    model = _outputs(config, "Trainer")["model"][0]
    selection = json.loads((Path(model.uri) / "selection.json").read_text())
    assert selection["refit_epochs"] == selection["best_epoch"] >= 1
    evaluation = _outputs(config, "RetrievalEvaluator")["evaluation"][0]
    evaluation = json.loads((Path(evaluation.uri) / EVALUATION_FILE).read_text())
    assert evaluation["candidate_model"] == model.uri
    assert (f"validation mean MAP {selection['best_val']['mean']:.4f} is below the threshold"
            in evaluation["reason"])
    assert ("validation figures of the selection run; refit on train + val for the chosen "
            f"epochs: candidate {selection['refit_epochs']})") in evaluation["reason"]
    assert evaluation["methods"]["cmgan"]["val"] == selection["best_val"]

    assert metrics["dataset"] == "features" and metrics["split"] == "test"
    assert set(metrics["methods"]) == {"cmgan", "cca", "classifier"}
    assert set(metrics["methods"]["cmgan"]) == {"i2t", "t2i", "mean", "all_modal"}
    assert metrics["pushed_model"] is None


# Runs in a fresh interpreter with nothing but numpy and TensorFlow: the SavedModel must stand
# alone (Transform graph included) the way TF Serving loads it.
_LOAD_IN_FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf

model_dir, reference_file, val_file = sys.argv[1:4]
model = tf.saved_model.load(model_dir)
reference, val = np.load(reference_file), np.load(val_file)
row_of = {i: n for n, i in enumerate(val["id"].astype(str))}
rows = [row_of[i] for i in reference["ids"].astype(str)]
image, text = val["image"][rows], val["text"][rows]

report = {"signatures": {}}
for name, fn in model.signatures.items():
    spec = lambda s: [s.dtype.name, s.shape.as_list()]
    report["signatures"][name] = {
        "inputs": {k: spec(s) for k, s in fn.structured_input_signature[1].items()},
        "outputs": {k: spec(s) for k, s in fn.structured_outputs.items()}}
image_emb = model.signatures["encode_image"](image=tf.constant(image))["embedding"].numpy()
text_emb = model.signatures["encode_text"](text=tf.constant(text))["embedding"].numpy()
examples = [tf.train.Example(features=tf.train.Features(feature={
    "image": tf.train.Feature(float_list=tf.train.FloatList(value=i)),
    "text": tf.train.Feature(float_list=tf.train.FloatList(value=t))})).SerializeToString()
    for i, t in zip(image, text)]
both = model.signatures["serving_default"](examples=tf.constant(examples))
report.update(
    num_rows=len(rows),
    norms=np.linalg.norm(np.concatenate([image_emb, text_emb]), axis=1).tolist(),
    image_vs_trainer=float(np.abs(image_emb - reference["image_embedding"]).max()),
    text_vs_trainer=float(np.abs(text_emb - reference["text_embedding"]).max()),
    serving_default_vs_encoders=float(max(
        np.abs(both["image_embedding"].numpy() - image_emb).max(),
        np.abs(both["text_embedding"].numpy() - text_emb).max())),
    project_modules=sorted(m for m in sys.modules
                           if m.split(".")[0] in ("models", "components", "pipeline")))
print("REPORT " + json.dumps(report))
"""


def test_pushed_savedmodel_reloads_in_a_fresh_process_and_matches_the_trainer(
        first_run, config, tiny_feature_dir, tiny_dataset):
    result, _, _, trainer_outputs = first_run  # a later test trains another model
    model_run = trainer_outputs["model_run"][0].uri
    completed = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, result.pushed_model,
         os.path.join(model_run, "reference_embeddings.npz"), str(tiny_feature_dir / "val.npz")],
        capture_output=True, text=True, timeout=300, cwd=tiny_feature_dir)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.split("REPORT ", 1)[1])

    d_img, d_txt = tiny_dataset.image_dim, tiny_dataset.text_dim
    common = config.cmgan_hparams().common_dim
    assert report["signatures"] == {
        "encode_image": {"inputs": {"image": ["float32", [None, d_img]]},
                         "outputs": {"embedding": ["float32", [None, common]]}},
        "encode_text": {"inputs": {"text": ["float32", [None, d_txt]]},
                        "outputs": {"embedding": ["float32", [None, common]]}},
        "serving_default": {"inputs": {"examples": ["string", [None]]},
                            "outputs": {"image_embedding": ["float32", [None, common]],
                                        "text_embedding": ["float32", [None, common]]}},
    }
    assert report["num_rows"] > 0
    assert report["norms"] == pytest.approx([1.0] * len(report["norms"]), abs=1e-5)
    assert report["image_vs_trainer"] < 1e-4
    assert report["text_vs_trainer"] < 1e-4
    assert report["serving_default_vs_encoders"] < 1e-5
    assert report["project_modules"] == []
