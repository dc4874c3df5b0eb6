"""Every run of a pipeline as recorded in ML Metadata: spans used, model, MAP, blessing, push.

``run_history(metadata_path, pipeline_name)`` returns one ``RunRecord`` per pipeline run (oldest
first); ``format_history`` prints them as the table of ``cmgan history``.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any, Optional

from ml_metadata.proto import metadata_store_pb2

from components.example_gen.utils import EVAL_SPAN_PROPERTY, SPANS_PROPERTY

from pipeline import metadata, node_ids


@dataclasses.dataclass(frozen=True)
class RunRecord:
    run_id: str
    started: float  # seconds since the epoch
    spans: Optional[list[int]]  # the window of spans trained on; None: not a span dataset
    eval_span: Optional[int]
    examples_id: Optional[int]
    model_id: Optional[int]
    model_uri: Optional[str]
    val_mean_map: Optional[float]
    test_mean_map: Optional[float]
    evaluated: bool  # the RetrievalEvaluator completed in this run
    blessed: Optional[bool]
    reason: str
    pushed_version: Optional[str]
    states: dict[str, str]

    @property
    def latest_span(self) -> Optional[int]:
        return max(self.spans) if self.spans else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _first(artifacts: dict, key: str):
    return (artifacts.get(key) or [None])[0]


def _custom(artifact, key: str, kind: str = "string_value"):
    if artifact is None or key not in artifact.custom_properties:
        return None
    return getattr(artifact.custom_properties[key], kind)


def run_history(metadata_path: str, pipeline_name: str) -> list[RunRecord]:
    if not os.path.exists(metadata_path):
        return []
    store = metadata.open_store(metadata_path)
    records = []
    State = metadata_store_pb2.Execution.State  # pylint: disable=invalid-name
    for run, nodes in metadata.runs_by_node(store, pipeline_name):
        def outputs(node):
            return metadata.artifacts(store, nodes[node].id) if node in nodes else {}

        examples = _first(outputs(node_ids.FEATURE_EXAMPLE_GEN), "examples")
        spans, eval_span = None, None
        if examples is not None and _custom(examples, SPANS_PROPERTY):
            spans = json.loads(_custom(examples, SPANS_PROPERTY))
            eval_span = _custom(examples, EVAL_SPAN_PROPERTY, "int_value")
        model = _first(outputs(node_ids.TRAINER), "model")
        evaluator = outputs(node_ids.EVALUATOR)
        evaluation, blessing = _first(evaluator, "evaluation"), _first(evaluator, "blessing")
        evaluated = metadata.is_done(nodes.get(node_ids.EVALUATOR)) and blessing is not None
        pushed = _first(outputs(node_ids.PUSHER), "pushed_model")
        pushed_version = None
        if pushed is not None and _custom(pushed, "pushed", "int_value") == 1:
            pushed_version = _custom(pushed, "pushed_version")
        records.append(RunRecord(
            run_id=run.name, started=run.create_time_since_epoch / 1000.0,
            spans=spans, eval_span=eval_span,
            examples_id=examples.id if examples is not None else None,
            model_id=model.id if model is not None else None,
            model_uri=model.uri if model is not None else None,
            val_mean_map=_custom(evaluation, "val_mean_map", "double_value"),
            test_mean_map=_custom(evaluation, "test_mean_map", "double_value"),
            evaluated=evaluated,
            blessed=(_custom(blessing, "blessed", "int_value") == 1) if evaluated else None,
            reason=_custom(blessing, "blessing_message") or "",
            pushed_version=pushed_version,
            states={n: State.Name(e.last_known_state) for n, e in nodes.items()}))
    return records


def last_blessed(records: list[RunRecord]) -> Optional[RunRecord]:
    blessed = [r for r in records if r.blessed]
    return blessed[-1] if blessed else None


def last_evaluated(records: list[RunRecord]) -> Optional[RunRecord]:
    evaluated = [r for r in records if r.evaluated]
    return evaluated[-1] if evaluated else None


def _short_reason(record: RunRecord) -> str:
    if not record.evaluated:
        failed = [n for n, s in record.states.items() if s == "FAILED"]
        return f"not evaluated (failed: {', '.join(failed)})" if failed else "not evaluated"
    reason = record.reason
    if reason.startswith("NOT blessed: "):
        reason = reason[len("NOT blessed: "):]
    elif reason.startswith("blessed: "):
        reason = reason[len("blessed: "):]
    return reason


def format_history(records: list[RunRecord]) -> str:
    """One line per run: time, spans, model id, val/test mean MAP, blessed, pushed version."""
    if not records:
        return "no runs recorded"
    header = ("run", "started (UTC)", "spans", "eval", "model", "val MAP", "test MAP",
              "blessed", "pushed", "reason")
    rows = []
    for number, r in enumerate(records, 1):
        started = datetime.datetime.fromtimestamp(r.started, datetime.timezone.utc)
        rows.append((
            str(number), started.strftime("%Y-%m-%d %H:%M:%S"),
            ",".join(map(str, r.spans)) if r.spans else "-",
            str(r.eval_span) if r.eval_span is not None else "-",
            str(r.model_id) if r.model_id is not None else "-",
            f"{r.val_mean_map:.4f}" if r.val_mean_map is not None else "-",
            f"{r.test_mean_map:.4f}" if r.test_mean_map is not None else "-",
            {True: "yes", False: "no", None: "-"}[r.blessed],
            r.pushed_version or "-",
            _short_reason(r)))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]

    def line(row):
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1]

    ids = "\n".join(f"  run {n}: {r.run_id}" for n, r in enumerate(records, 1))
    return "\n".join([line(header), *map(line, rows)]) + "\nrun ids:\n" + ids


@dataclasses.dataclass(frozen=True)
class RunArtifacts:
    """One pipeline run's executions and their output artifacts (for ``cmgan report``)."""

    run_id: str
    number: int  # 1-based, as ``cmgan history`` numbers runs
    started: float  # seconds since the epoch
    executions: dict[str, metadata_store_pb2.Execution]
    outputs: dict[str, dict[str, list[metadata_store_pb2.Artifact]]]

    def artifact(self, node: str, key: str) -> Optional[metadata_store_pb2.Artifact]:
        return _first(self.outputs.get(node, {}), key)

    def completed(self, node: str) -> bool:
        return metadata.is_done(self.executions.get(node))


def find_run(metadata_path: str, pipeline_name: str, run: str = "LATEST") -> RunArtifacts:
    """``LATEST`` (the newest run whose RetrievalEvaluator completed), a run number as listed
    by ``cmgan history``, or a run id. Raises LookupError naming what exists."""
    if not os.path.exists(metadata_path):
        raise LookupError(f"no ML Metadata store at {metadata_path}")
    store = metadata.open_store(metadata_path)
    runs = metadata.runs_by_node(store, pipeline_name)
    if not runs:
        known = ", ".join(metadata.pipeline_names(metadata_path)) or "none"
        raise LookupError(f"no runs of pipeline {pipeline_name!r} in {metadata_path} "
                          f"(pipelines recorded: {known})")
    numbered = list(enumerate(runs, 1))
    if run.upper() == "LATEST":
        chosen = [(n, r) for n, r in numbered
                  if metadata.is_done(r[1].get(node_ids.EVALUATOR))]
        if not chosen:
            raise LookupError(f"no run of {pipeline_name} reached the {node_ids.EVALUATOR}")
        number, (context, nodes) = chosen[-1]
    else:
        matches = [(n, r) for n, r in numbered
                   if r[0].name == run or (run.isdigit() and int(run) == n)]
        if not matches:
            ids = "; ".join(f"{n}: {r[0].name}" for n, r in numbered)
            raise LookupError(f"no run {run!r} of {pipeline_name}; runs: {ids}")
        number, (context, nodes) = matches[0]
    outputs = {node: metadata.artifacts(store, execution.id)
               for node, execution in nodes.items()}
    return RunArtifacts(run_id=context.name, number=number,
                        started=context.create_time_since_epoch / 1000.0,
                        executions=dict(nodes), outputs=outputs)
