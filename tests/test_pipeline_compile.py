"""Kubeflow V2 compilation, the pure pipeline definition, and configuration handling (fast)."""
from __future__ import annotations

import argparse
import json

import pytest

from pipeline import cli
from pipeline.commands import flags
from pipeline.commands import run as run_command
from models.config_errors import ConfigError
from pipeline.config import DEFAULT_BEAM_ARGS, PipelineConfig
from pipeline.pipeline import create_pipeline_from_config

COMPONENTS = ("FeatureExampleGen", "StatisticsGen", "SchemaGen", "SchemaCurator",
              "ExampleValidator", "AnomaliesGate", "Transform", "Trainer", "RetrievalEvaluator",
              "Pusher", "GallerySearch")
PROJECT_EXECUTORS = {
    "FeatureExampleGen": "components.feature_example_gen.executor.Executor",
    "SchemaCurator": "components.schema_curator.component.SchemaCurator_Executor",
    "AnomaliesGate": "components.anomalies_gate.component.AnomaliesGate_Executor",
    "RetrievalEvaluator": "components.retrieval_evaluator.executor.Executor",
    "GallerySearch": "components.gallery_search.executor.Executor",
}


def test_compile_writes_a_kubeflow_v2_spec_with_every_component(tiny_feature_dir, tmp_path):
    output = tmp_path / "spec" / "pipeline.json"
    output.parent.mkdir()
    code = cli.main([
        "compile", "--dataset", "features", "--data-dir", str(tiny_feature_dir),
        "--pipeline-root", str(tmp_path / "root"), "--output", str(output),
        "--image", "registry.example/cmgan:1.0", "--epochs", "7"])
    assert code == 0
    job = json.loads(output.read_text())
    spec = job["pipelineSpec"]
    assert spec["pipelineInfo"]["name"] == "cmgan-features"
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    for component in COMPONENTS:
        assert component in tasks
        container = executors[f"{component}_executor"]["container"]
        assert container["image"] == "registry.example/cmgan:1.0"
        assert "resources" not in container  # no kubeflow resources configured: none compiled
        assert container["args"][-len(DEFAULT_BEAM_ARGS):] == list(DEFAULT_BEAM_ARGS)
    assert job["runtimeConfig"]["gcsOutputDirectory"] == str(tmp_path / "root")
    assert any(t.startswith("latest_blessed_model_resolver") for t in tasks)
    for component, executor_class in PROJECT_EXECUTORS.items():
        args = executors[f"{component}_executor"]["container"]["args"]
        assert args[args.index("--executor_class_path") + 1] == executor_class
    trainer_config = json.dumps(tasks["Trainer"])
    assert "models.trainer.run_fn" in trainer_config and '\\"epochs\\": 7' in trainer_config
    assert "models.preprocessing.preprocessing_fn" in json.dumps(tasks["Transform"])


def test_create_pipeline_is_pure_and_ordered(make_pipeline_config, tmp_path):
    config = make_pipeline_config(tmp_path)
    pipeline = create_pipeline_from_config(config)
    ids = [c.id for c in pipeline.components]
    assert [i for i in ids if i != "latest_blessed_model_resolver"] == list(COMPONENTS)
    assert pipeline.beam_pipeline_args == list(DEFAULT_BEAM_ARGS)
    assert not (tmp_path / "root").exists()  # building the pipeline touches no file


def test_config_file_then_flags(tmp_path):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({
        "data": {"dataset": "features", "data_dir": "data"},
        "training": {"hparams": {"epochs": 5, "hidden_dim": 64}, "strategy": "mirrored"},
        "evaluation": {"map_threshold": 0.3},
        "beam_args": ["--direct_num_workers=2"]}))
    parser = argparse.ArgumentParser()
    run_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", "--config", str(config_file), "--epochs", "9",
                              "--hparam", "common_dim=48", "--map-margin", "0.05",
                              "--beam-arg=--direct_running_mode=in_memory"])
    assert args.func is run_command.run
    config = flags.config_from_args(args)
    assert config.pipeline_name == "cmgan-features"
    assert config.pipeline_root.endswith("runs/cmgan-features")
    assert config.metadata_path == f"{config.pipeline_root}/metadata.sqlite"
    assert config.data.data_dir.endswith("/data") and config.data.data_dir.startswith("/")
    hparams = config.cmgan_hparams()
    assert (hparams.epochs, hparams.hidden_dim, hparams.common_dim) == (9, 64, 48)
    assert config.training.strategy == "mirrored"
    assert (config.evaluation.map_threshold, config.evaluation.map_margin) == (0.3, 0.05)
    assert config.beam_args == ("--direct_running_mode=in_memory",)
    assert config.push_directory.endswith("serving_models/cmgan")


@pytest.mark.parametrize("values, message", [
    ({"trainig": {}}, "unknown config keys: trainig"),
    ({"training": {"hparams": {"epoch": 3}}}, "unknown CM-GAN hyperparameters: epoch"),
    ({"training": {"strategy": "tpu"}}, "strategy must be one of"),
    ({"data": {"dataset": "features"}}, "needs data_dir"),
    ({"pipeline_name": "CM_GAN"}, "must match"),
])
def test_bad_configuration_fails_early(values, message):
    with pytest.raises(ValueError, match=message):
        PipelineConfig.from_dict(values)


def test_compile_of_the_raw_demo_runs_raw_example_gen_and_hands_encoders_on(tmp_path):
    output = tmp_path / "pipeline.json"
    assert cli.main(["compile", "--pipeline-root", str(tmp_path / "root"),
                     "--output", str(output), "--image-size", "24"]) == 0
    spec = json.loads(output.read_text())["pipelineSpec"]
    tasks, executors = spec["root"]["dag"]["tasks"], spec["deploymentSpec"]["executors"]
    assert "RawExampleGen" in tasks and "FeatureExampleGen" not in tasks
    args = executors["RawExampleGen_executor"]["container"]["args"]
    assert args[args.index("--executor_class_path") + 1] == (
        "components.raw_example_gen.executor.Executor")
    example_gen = json.dumps(tasks["RawExampleGen"])
    assert '"cnn"' in example_gen and '"kim_cnn"' in example_gen
    transform, trainer = json.dumps(tasks["Transform"]), json.dumps(tasks["Trainer"])
    for stage in (transform, trainer):  # Transform and the model agree on sizes
        assert '\\"image_size\\": 24' in stage and '\\"text_encoder\\": \\"kim_cnn\\"' in stage


def _containers(output) -> dict:
    executors = json.loads(output.read_text())["pipelineSpec"]["deploymentSpec"]["executors"]
    return {name[: -len("_executor")]: spec["container"] for name, spec in executors.items()
            if "container" in spec}


def test_compile_writes_kubeflow_resources_image_and_beam_args(tiny_feature_dir, tmp_path):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({
        "data": {"dataset": "features", "data_dir": str(tiny_feature_dir)},
        "beam_args": ["--direct_num_workers=3"],
        "kubeflow": {"image": "registry.example/cmgan:2.0", "cpu_request": "500m",
                     "memory_limit": "4Gi",
                     "node_resources": {"Trainer": {"cpu_request": 4, "memory_limit": "16Gi"}},
                     "trainer_accelerator": "NVIDIA_TESLA_T4", "trainer_accelerator_count": 2}}))
    output = tmp_path / "pipeline.json"
    assert cli.main(["compile", "--config", str(config_file), "--output", str(output),
                     "--pipeline-root", "gs://bucket/cmgan",
                     "--node-resource", "Transform.memory_request=2G"]) == 0
    job = json.loads(output.read_text())
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/cmgan"
    containers = _containers(output)
    assert set(COMPONENTS) <= set(containers)
    default = {"resourceCpuRequest": "500m", "cpuRequest": 0.5,
               "resourceMemoryLimit": "4Gi", "memoryLimit": pytest.approx(4 * 2 ** 30 / 1e9)}
    for component, container in containers.items():
        assert container["image"] == "registry.example/cmgan:2.0"
        # The Beam args reach every container (TFX appends the pipeline's to each one's args).
        assert container["args"][-1] == "--direct_num_workers=3"
        if component not in ("Trainer", "Transform"):
            assert container["resources"] == default, component
    assert containers["Transform"]["resources"] == {
        **default, "resourceMemoryRequest": "2G", "memoryRequest": 2.0}
    assert containers["Trainer"]["resources"] == {
        "resourceCpuRequest": "4", "cpuRequest": 4.0,
        "resourceMemoryLimit": "16Gi", "memoryLimit": pytest.approx(16 * 2 ** 30 / 1e9),
        "accelerator": {"type": "NVIDIA_TESLA_T4", "count": "2",
                        "resourceType": "NVIDIA_TESLA_T4", "resourceCount": "2"}}


def test_compile_flags_set_resources_even_on_import_example_gen(tmp_path):
    # TFX builds a FileBasedExampleGen's container without its platform_config; ours adds it.
    output = tmp_path / "pipeline.json"
    assert cli.main(["compile", "--dataset", "examples", "--data-dir", str(tmp_path / "data"),
                     "--pipeline-root", str(tmp_path / "root"), "--output", str(output),
                     "--cpu-limit", "2", "--memory-request", "1Gi",
                     "--trainer-accelerator", "nvidia.com/gpu"]) == 0
    containers = _containers(output)
    expected = {"resourceCpuLimit": "2", "cpuLimit": 2.0, "resourceMemoryRequest": "1Gi",
                "memoryRequest": pytest.approx(2 ** 30 / 1e9)}
    assert containers["ImportExampleGen"]["resources"] == expected
    assert containers["Trainer"]["resources"] == {
        **expected, "accelerator": {"type": "nvidia.com/gpu", "count": "1",
                                    "resourceType": "nvidia.com/gpu", "resourceCount": "1"}}
    assert containers["Pusher"]["image"] == "cmgan-tfx:latest"


@pytest.mark.parametrize("kubeflow, key, message", [
    ({"cpu_limit": "two"}, "kubeflow.cpu_limit", "CPU quantity such as 2, 0.5 or 500m"),
    ({"cpu_request": "0.0001"}, "kubeflow.cpu_request", "whole number of millicores"),
    ({"memory_limit": "4GB"}, "kubeflow.memory_limit", "memory quantity such as 4Gi"),
    ({"memory_limit": 4}, "kubeflow.memory_limit", "at least 1Mi"),
    ({"cpu_request": "3", "cpu_limit": "2"}, "kubeflow.cpu_request", "must not exceed"),
    ({"memory_limit": "8Gi", "node_resources": {"Trainer": {"memory_request": "9Gi"}}},
     "kubeflow.node_resources.Trainer.memory_request", "must not exceed memory_limit 8Gi"),
    ({"node_resources": {"Trainr": {"cpu_limit": "1"}}}, "kubeflow.node_resources",
     "unknown node 'Trainr'"),
    ({"node_resources": {"Trainer": {"gpu": 1}}}, "kubeflow.node_resources.Trainer",
     "keys among cpu_request"),
    ({"node_resources": {"Pusher": {"cpu_limit": "-1"}}},
     "kubeflow.node_resources.Pusher.cpu_limit", "CPU quantity"),
    ({"trainer_accelerator": "a gpu"}, "kubeflow.trainer_accelerator", "accelerator type"),
    ({"trainer_accelerator": "NVIDIA_TESLA_T4", "trainer_accelerator_count": 0},
     "kubeflow.trainer_accelerator_count", "[1, inf)"),
    ({"trainer_accelerator_count": 2}, "kubeflow.trainer_accelerator_count",
     "needs kubeflow.trainer_accelerator"),
    ({"image": ""}, "kubeflow.image", "container image"),
])
def test_bad_kubeflow_settings_name_the_field(kubeflow, key, message):
    with pytest.raises(ConfigError) as caught:
        PipelineConfig.from_dict({"kubeflow": kubeflow})
    assert caught.value.key == key and message in str(caught.value)


def test_compile_refuses_a_bad_quantity_flag(tmp_path, capsys):
    output = tmp_path / "pipeline.json"
    assert cli.main(["compile", "--pipeline-root", str(tmp_path / "root"),
                     "--output", str(output), "--memory-limit", "lots"]) == 2
    assert "kubeflow.memory_limit must be a memory quantity" in capsys.readouterr().err
    assert not output.exists()
