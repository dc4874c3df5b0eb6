"""Regression tests for issue 15 (configuration): bad hyperparameters and pipeline settings fail
early with one line naming the key and the allowed values, and ``cmgan`` exits 2 without a
traceback (``-v`` shows it)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.config_errors import ConfigError
from models.hparams import CMGANHParams
from pipeline.config import DataConfig, EvaluationConfig, PipelineConfig, int_in

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("key,value,allowed", [
    ("learning_rate", "nan", "finite"), ("learning_rate", -1, "(0.0, inf)"),
    ("dropout", 5, "[0.0, 1.0)"), ("beta_1", 7, "[0.0, 1.0)"),
    ("semantic_weight", "inf", "finite"), ("shared_encoder", "maybe", "true or false"),
    ("epochs", "3.5", "integer"), ("batch_size", 0, "positive"),
    ("kim_dropout", -0.1, "[0.0, 1.0)"), ("weight_decay", -1, "[0.0, inf)"),
])
def test_bad_hyperparameters_name_the_key_and_the_allowed_values(key, value, allowed):
    with pytest.raises(ConfigError) as caught:
        CMGANHParams.from_dict({key: value})
    assert caught.value.key == key
    assert str(caught.value).startswith(key) and allowed in str(caught.value)
    assert "\n" not in str(caught.value)


def test_booleans_take_the_usual_words_only():
    for word, expected in (("true", True), ("No", False), ("1", True), ("off", False)):
        assert CMGANHParams.from_dict({"shared_encoder": word}).shared_encoder is expected


@pytest.mark.parametrize("make,key", [
    (lambda: PipelineConfig(model_name="../../etc"), "model_name"),
    (lambda: PipelineConfig(model_name="a/b"), "model_name"),
    (lambda: PipelineConfig(enable_cache="maybe"), "enable_cache"),
    (lambda: EvaluationConfig(map_margin=-5), "map_margin"),
    (lambda: EvaluationConfig(map_threshold=float("nan")), "map_threshold"),
    (lambda: DataConfig(image_size=0), "image_size"),
    (lambda: DataConfig(max_image_pixels=0), "max_image_pixels"),
    (lambda: PipelineConfig.from_dict({"training": {"hparams": {"dropout": 5}}}), "dropout"),
])
def test_bad_pipeline_settings_name_the_key(make, key):
    with pytest.raises(ConfigError) as caught:
        make()
    assert caught.value.key == key and key in str(caught.value)


def test_beam_args_given_as_one_string_are_not_split_into_characters():
    config = PipelineConfig.from_dict({"beam_args": "--runner=Foo --direct_num_workers=2"})
    assert config.beam_args == ("--runner=Foo", "--direct_num_workers=2")
    with pytest.raises(ConfigError, match="beam_args"):
        PipelineConfig(beam_args=[1, 2])


def test_bounded_int_flags():
    import argparse

    parse = int_in(1, 100)
    assert parse("7") == 7
    with pytest.raises(argparse.ArgumentTypeError, match=r"\[1, 100\]"):
        parse("3000000000")


def cmgan(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def test_cli_prints_one_line_and_exits_2_for_a_bad_hyperparameter(tmp_path):
    result = cmgan("run", "--dataset", "demo", "--pipeline-root", str(tmp_path / "root"),
                   "--hparam", "learning_rate=nan", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert _error_lines(result.stderr) == [
        "cmgan: error: learning_rate must be a finite number, got 'nan'"]


def test_cli_refuses_a_model_name_that_is_a_path(tmp_path):
    result = cmgan("run", "--dataset", "demo", "--pipeline-root", str(tmp_path / "root"),
                   "--model-name", "../../etc", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model_name must be" in result.stderr and "'../../etc'" in result.stderr
    assert not (tmp_path / "etc").exists()


def test_cli_bounds_top_k_and_serve_model_name(tmp_path):
    result = cmgan("query", "--text", "hi", "--top-k", "3000000000", cwd=tmp_path)
    assert result.returncode == 2 and "must be in [1, 100000]" in result.stderr
    result = cmgan("serve", "--model-name", "../x", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2 and "--model-name" in result.stderr


def test_verbose_shows_the_traceback(tmp_path):
    result = cmgan("-v", "run", "--dataset", "demo", "--pipeline-root", str(tmp_path / "root"),
                   "--hparam", "dropout=5", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stdout + result.stderr
