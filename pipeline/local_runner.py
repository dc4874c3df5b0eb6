"""Run the pipeline on this machine: LocalDagRunner, Beam DirectRunner (or whatever runner the
Beam arguments name), ML Metadata in SQLite under the pipeline root.

After a run the outcome is read back from ML Metadata: the evaluator's MAP table and the pushed
model path, or the reason nothing was pushed. From the command line: ``cmgan run`` (or
``python -m pipeline run``), e.g. ``cmgan run --dataset demo --epochs 50``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

from tfx import v1 as tfx

from components.retrieval_evaluator.constants import EVALUATION_FILE
from models.metrics import format_map_table, metrics_document
from pipeline import node_ids
from pipeline.config import PipelineConfig
from pipeline.metadata import latest_run_executions, metadata_connection, output_artifacts
from pipeline.pipeline import create_pipeline_from_config


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What one pipeline run produced, as recorded in ML Metadata."""

    config: PipelineConfig
    evaluation: dict[str, Any]  # retrieval_metrics.json of the RetrievalEvaluator
    pushed_model: Optional[str]  # <serving_root>/<model_name>/<version>, None if not pushed

    @property
    def blessed(self) -> bool:
        return bool(self.evaluation.get("blessed"))

    @property
    def reason(self) -> str:
        return self.evaluation.get("reason", "")

    def map_table(self) -> str:
        return format_map_table(self.evaluation["methods"])

    def summary(self) -> str:
        pushed = (f"pushed model: {self.pushed_model}" if self.pushed_model else
                  f"nothing pushed: {self.reason}")
        if self.pushed_model:
            search = os.path.join(self.config.search_directory,
                                  os.path.basename(self.pushed_model))
            if os.path.isdir(search):
                pushed += f"\nsearch servable: {search}"
        return f"{self.map_table()}\n{self.reason}\n{pushed}"

    def metrics(self, split: str = "test") -> dict[str, Any]:
        """The metrics JSON of ``cmgan run --metrics-out``: one split, the comparable methods."""
        return metrics_document(self.config.data.dataset, self.evaluation["methods"], split,
                                blessed=self.blessed, reason=self.reason,
                                pushed_model=self.pushed_model)


def read_run_result(config: PipelineConfig) -> RunResult:
    """The evaluator's table and the Pusher's outcome of the latest run."""
    config = config.resolved()
    executions = latest_run_executions(config.metadata_path, config.pipeline_name)
    if node_ids.EVALUATOR not in executions or node_ids.PUSHER not in executions:
        raise RuntimeError(f"the latest run of {config.pipeline_name} did not reach the "
                           f"evaluator and the pusher (ran: {', '.join(sorted(executions))})")
    evaluation_uri = output_artifacts(config.metadata_path,
                                      executions[node_ids.EVALUATOR].id)["evaluation"][0].uri
    with open(os.path.join(evaluation_uri, EVALUATION_FILE)) as f:
        evaluation = json.load(f)
    pushed = output_artifacts(config.metadata_path,
                              executions[node_ids.PUSHER].id)["pushed_model"][0]
    pushed_model = None
    if pushed.custom_properties["pushed"].int_value == 1:
        pushed_model = pushed.custom_properties["pushed_destination"].string_value
    return RunResult(config=config, evaluation=evaluation, pushed_model=pushed_model)


def _split_counts(uri: str, read: Any) -> str:
    """"train 960, val 240, test 320" from per-split files ``Split-<name>/...``."""
    counts = {}
    for entry in sorted(os.listdir(uri)):
        if entry.startswith("Split-"):
            counts[entry[len("Split-"):]] = read(os.path.join(uri, entry))
    order = {"train": 0, "val": 1, "eval": 1, "test": 2}
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(),
                                                    key=lambda kv: (order.get(kv[0], 3), kv[0])))


def _num_examples(split_dir: str) -> int:
    from tensorflow_metadata.proto.v0 import statistics_pb2  # pylint: disable=C0415

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    with open(os.path.join(split_dir, "FeatureStats.pb"), "rb") as f:
        stats.ParseFromString(f.read())
    return sum(int(d.num_examples) for d in stats.datasets)


def stage_counts(config: PipelineConfig, node_id: str) -> dict[str, Any]:
    """The key counts of one component of the latest run, for its stage line: records
    accepted/quarantined, examples per split, vocabulary size, best epoch, blessing, version."""
    execution = latest_run_executions(config.metadata_path, config.pipeline_name).get(node_id)
    if execution is None:
        return {}
    outputs = output_artifacts(config.metadata_path, execution.id)
    uri = {key: artifacts[0].uri for key, artifacts in outputs.items() if artifacts}
    counts: dict[str, Any] = {}
    if "quarantine" in uri:
        with open(os.path.join(uri["quarantine"], "summary.json")) as f:
            summary = json.load(f)
        counts["accepted"] = summary["accepted"]
        counts["quarantined"] = summary["quarantined"]
    if "statistics" in uri:
        counts["examples"] = _split_counts(uri["statistics"], _num_examples)
    if "transform_graph" in uri:
        assets = os.path.join(uri["transform_graph"], "transform_fn", "assets")
        for name in sorted(os.listdir(assets)) if os.path.isdir(assets) else ():
            with open(os.path.join(assets, name), "rb") as f:
                counts[f"vocabulary {name}"] = f"{sum(1 for _ in f)} words"
    if "model_run" in uri:
        with open(os.path.join(uri["model_run"], "training_report.json")) as f:
            report = json.load(f)
        trained = max([h["epoch"] for h in report.get("history") or []] or [report["epochs"]])
        counts["best epoch"] = (f"{report['best_epoch']}/{trained}" if trained >= report["epochs"]
                                else f"{report['best_epoch']}/{trained} (stopped early, max "
                                     f"{report['epochs']})")
        if report.get("best_val"):
            counts["val MAP"] = f"{report['best_val']['mean']:.4f}"
        if report.get("refit_epochs"):
            epochs = report["refit_epochs"]
            counts["refit on train + val"] = f"{epochs} epoch{'s' if epochs != 1 else ''}"
    if "evaluation" in uri:
        with open(os.path.join(uri["evaluation"], EVALUATION_FILE)) as f:
            evaluation = json.load(f)
        counts["blessed" if evaluation.get("blessed") else "not blessed"] = None
    for key in ("pushed_model", "search_model"):
        if key in outputs:
            pushed = outputs[key][0].custom_properties
            counts["pushed version" if pushed["pushed"].int_value == 1 else "not pushed"] = (
                pushed["pushed_version"].string_value if pushed["pushed"].int_value == 1
                else None)
    return counts


def run_pipeline(config: PipelineConfig) -> RunResult:
    """Runs the whole pipeline in this process and returns its outcome."""
    from pipeline import console  # pylint: disable=import-outside-toplevel

    config = config.resolved()
    os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
    pipeline = create_pipeline_from_config(config, metadata_connection(config.metadata_path))
    nodes = [component.id for component in pipeline.components]
    with console.pipeline_stages(nodes, lambda node: stage_counts(config, node)):
        tfx.orchestration.LocalDagRunner().run(pipeline)
    return read_run_result(config)

