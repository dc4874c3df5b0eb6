"""The Kubeflow recurring run: compiled spans pipeline + the kfp client's request (no cluster)."""
from __future__ import annotations

import json

import pytest

from pipeline import cli
from pipeline.commands import retrain as retrain_command
from pipeline.kubeflow_schedule import create_recurring_run, recurring_run_arguments


def test_recurring_run_request_for_the_compiled_spans_pipeline(tiny_feature_dir, tmp_path):
    import kfp

    output, config_file = tmp_path / "cmgan.yaml", tmp_path / "config.json"
    config_file.write_text(json.dumps({"data": {
        "dataset": "features", "data_dir": "/data/spans", "span_pattern": "span-{SPAN}",
        "span_window": 2, "eval_span": "first"}, "training": {"warm_start": True}}))
    code = cli.main([
        "compile", "--config", str(config_file), "--pipeline-root", "gs://bucket/cmgan",
        "--output", str(output), "--epochs", "2"])
    assert code == 0 and output.is_file()

    # kfp.Client's own request building, minus its connection (its __init__ calls healthz).
    client = kfp.Client.__new__(kfp.Client)
    sent = {}

    class RecurringRunApi:
        def recurring_run_service_create_recurring_run(self, body):
            sent["body"] = body
            return body

    client._recurring_run_api = RecurringRunApi()  # pylint: disable=protected-access
    create_recurring_run(client, str(output), experiment_id="exp-1", every="6h")
    body = sent["body"]
    assert body.trigger.periodic_schedule.interval_second == 6 * 3600
    assert body.max_concurrency == 1 and body.no_catchup is True
    assert body.experiment_id == "exp-1" and body.display_name == "cmgan-retrain"
    assert body.pipeline_spec["pipelineInfo"]["name"] == "cmgan-features"
    tasks = body.pipeline_spec["root"]["dag"]["tasks"]
    assert "FeatureExampleGen" in tasks
    assert "span-{SPAN}" in json.dumps(tasks["FeatureExampleGen"])
    assert "base_model" in json.dumps(tasks["Trainer"])  # warm start from the blessed model
    # KFP caching off: a cached FeatureExampleGen would never see a new span.
    # (proto3 JSON leaves out a false field: absent means False)
    assert not any(task.get("cachingOptions", {}).get("enableCache", False)
                   for task in tasks.values())

    cron = recurring_run_arguments(str(output), experiment_id="e", cron="0 0 */6 * * *")
    assert cron["cron_expression"] == "0 0 */6 * * *" and "interval_second" not in cron
    with pytest.raises(ValueError):
        recurring_run_arguments(str(output), experiment_id="e")
    with pytest.raises(ValueError):
        recurring_run_arguments(str(output), experiment_id="e", cron="0 */6 * * *")


def test_span_flags_reach_the_config(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    retrain_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["retrain", "--data-dir", str(tmp_path), "--span-window", "3",
                              "--eval-span", "latest", "--span-pattern", "day-{SPAN}",
                              "--warm-start"])
    config = retrain_command.span_config(args)
    assert config.data.dataset == "features"
    assert (config.data.span_pattern, config.data.span_window, config.data.eval_span) == (
        "day-{SPAN}", 3, "latest")
    assert config.training.warm_start is True
    default = retrain_command.span_config(parser.parse_args(
        ["history", "--data-dir", str(tmp_path)]))
    assert default.data.span_pattern == "span-{SPAN}" and default.training.warm_start is False
