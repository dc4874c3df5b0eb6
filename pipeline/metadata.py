"""Reading a pipeline's ML Metadata store (SQLite under the pipeline root): runs, the executions
of their nodes, and the artifacts those executions produced.

The one place that knows MLMD's layout: a ``pipeline`` context per pipeline, a ``pipeline_run``
context per run, a ``node`` context named ``<pipeline name>.<node id>`` per node (node ids:
pipeline/node_ids.py), OUTPUT events from executions to artifacts keyed by output name.
"""
from __future__ import annotations

import os
from typing import Any

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
DONE = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)

Artifacts = dict[str, list[metadata_store_pb2.Artifact]]  # output key -> artifacts


def metadata_connection(metadata_path: str) -> metadata_store_pb2.ConnectionConfig:
    from tfx import v1 as tfx  # pylint: disable=import-outside-toplevel

    return tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    return metadata_store.MetadataStore(metadata_connection(metadata_path))


def is_done(execution) -> bool:
    """Completed in its run, or reused from the cache."""
    return execution is not None and execution.last_known_state in DONE


def _run_executions(store, pipeline_context, run) -> list[metadata_store_pb2.Execution]:
    return store.get_executions(list_options=metadata_store.ListOptions(
        filter_query=f"contexts_a.id = {pipeline_context.id} AND contexts_b.id = {run.id}"))


def _by_node(store, executions, pipeline_name: str) -> dict[str, metadata_store_pb2.Execution]:
    node_type_id, prefix = store.get_context_type("node").id, f"{pipeline_name}."
    by_node = {}
    for execution in executions:
        for context in store.get_contexts_by_execution(execution.id):
            if context.type_id == node_type_id and context.name.startswith(prefix):
                by_node[context.name[len(prefix):]] = execution
    return by_node


def runs_by_node(store, pipeline_name: str
                 ) -> list[tuple[metadata_store_pb2.Context, dict[str, Any]]]:
    """(pipeline_run context, node id -> execution) for every run, oldest first."""
    pipeline_context = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline_context is None:
        return []
    runs = []
    for run in sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.id):
        executions = _run_executions(store, pipeline_context, run)
        if executions:
            runs.append((run, _by_node(store, executions, pipeline_name)))
    return runs


def latest_run_executions(metadata_path: str,
                          pipeline_name: str) -> dict[str, metadata_store_pb2.Execution]:
    """Node id -> its execution in the pipeline's most recent run (cached ones included)."""
    store = open_store(metadata_path)
    pipeline_context = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline_context is None:
        return {}
    for run in sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: -c.id):
        executions = _run_executions(store, pipeline_context, run)
        if executions:
            return _by_node(store, executions, pipeline_name)
    return {}


def artifacts(store, execution_id: int, kinds=OUTPUT_EVENTS) -> Artifacts:
    """Event key -> artifacts of one execution, for the events of ``kinds`` (its outputs)."""
    events = [e for e in store.get_events_by_execution_ids([execution_id]) if e.type in kinds]
    by_id = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    result: Artifacts = {}
    for event in events:
        result.setdefault(event.path.steps[0].key, []).append(by_id[event.artifact_id])
    return result


def output_artifacts(metadata_path: str, execution_id: int) -> Artifacts:
    """Output key -> artifacts of one execution."""
    return artifacts(open_store(metadata_path), execution_id)


def pipeline_names(metadata_path: str) -> list[str]:
    """Pipelines recorded in a metadata store (to say which exist when a name is wrong)."""
    if not os.path.exists(metadata_path):
        return []
    return sorted(c.name for c in open_store(metadata_path).get_contexts_by_type("pipeline"))


def properties(message) -> dict[str, Any]:
    """An MLMD artifact's or execution's (custom) properties as plain Python values."""
    values = {}
    for props in (message.properties, message.custom_properties):
        for key, value in props.items():
            kind = value.WhichOneof("value")
            values[key] = getattr(value, kind) if kind else None
    return values
