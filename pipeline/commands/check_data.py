"""`cmgan check-data`: run only the pipeline's data stages on a folder and say whether it is usable.

The stages are the pipeline's own (pipeline/pipeline.py: the ExampleGen with its quarantine,
StatisticsGen, SchemaGen + SchemaCurator, ExampleValidator and the AnomaliesGate), run by TFX's
LocalDagRunner into ``--pipeline-root`` (default: a new temporary folder, kept so the files it
names can be read). The pipeline name is ``<pipeline name>-check-data``, so these runs never
mix with full runs in ML Metadata even when they share a pipeline root.

Prints the accounting (records read, accepted per split, quarantined by reason and the
quarantine file) and the anomalies found. Exit status: 0 the data is usable (``cmgan run`` would
get past the data stages), 1 it is not (too many records quarantined, anomalies, an unreadable
pairs.csv), 2 a usage or configuration error (main() prints it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Any, Optional

from pipeline import node_ids
from pipeline.commands.flags import add_data_flags, config_from_args
from pipeline.config import PipelineConfig

SUFFIX = "-check-data"
_log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check-data", help="vet a dataset folder: run only the data stages (quarantine, "
                           "statistics, schema, validation)",
        description="Runs the pipeline's data stages (ExampleGen with its quarantine, "
                    "StatisticsGen, SchemaGen, ExampleValidator, AnomaliesGate) and prints "
                    "records read, accepted per split, quarantined by reason and the anomalies. "
                    "Exit 0: usable; 1: not usable; 2: usage or configuration error.")
    add_data_flags(parser)
    parser.add_argument("--max-image-pixels", type=int, metavar="N",
                        help="raw datasets: images whose header declares more pixels are "
                             "quarantined as image_too_large (default 25000000)")
    parser.add_argument("--pipeline-name", help="default: cmgan-<dataset> (+ '-check-data')")
    parser.add_argument("--pipeline-root",
                        help="where the stages write (default: a new temporary folder)")
    parser.add_argument("--beam-arg", action="append", default=None, metavar="ARG",
                        help="Beam pipeline argument, repeatable, written with '=' "
                             "(--beam-arg=--direct_num_workers=2)")
    parser.set_defaults(func=check_data)


def check_config(args: argparse.Namespace, pipeline_root: str) -> PipelineConfig:
    """The run's config (file, then flags) with this check's name, root and ML Metadata."""
    from models.config_errors import ConfigError  # pylint: disable=import-outside-toplevel

    def adjust(config: PipelineConfig) -> PipelineConfig:
        data_dir = config.data.data_dir
        if data_dir and "://" not in data_dir and not os.path.isdir(data_dir):
            raise ConfigError("data_dir", f"must be an existing folder, got {data_dir!r}")
        name = config.resolved().pipeline_name
        return dataclasses.replace(config, pipeline_name=name + SUFFIX,
                                   pipeline_root=pipeline_root, metadata_path="")

    return config_from_args(args, adjust=adjust)


def check_data(args: argparse.Namespace) -> int:
    """Runs the data stages and prints the accounting; 0 usable, 1 not."""
    from components.anomalies_gate.component import DataValidationError
    from components.datasets import DatasetError
    from components.raw_example_gen.executor import QuarantineExceededError
    from models.config_errors import ConfigError
    from pipeline import console
    from pipeline.local_runner import stage_counts
    from pipeline.metadata import metadata_connection
    from pipeline.pipeline import create_data_pipeline_from_config
    from tfx import v1 as tfx

    root = args.pipeline_root or tempfile.mkdtemp(prefix="cmgan-check-data-")
    try:
        config = check_config(args, root)  # ConfigError: exit 2 (main)
        pipeline = create_data_pipeline_from_config(
            config, metadata_connection(config.metadata_path),
            pipeline_name=config.pipeline_name)
    except (ValueError, ImportError) as error:  # encoders RawExampleGen cannot run
        if not args.pipeline_root:
            shutil.rmtree(root, ignore_errors=True)  # still empty: nothing ran
        if isinstance(error, (ConfigError, DatasetError)):
            raise
        _log.debug("bad data settings", exc_info=True)
        print(f"cmgan check-data: error: {error}", file=sys.stderr)
        return 2
    data = config.data
    print(f"checking {data.dataset}" + (f" {data.data_dir}" if data.data_dir else "")
          + f" (pipeline root {config.pipeline_root})", flush=True)
    os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
    log_path = console.log_to(config.pipeline_root, "check-data")
    nodes = [component.id for component in pipeline.components]
    failure: Optional[str] = None
    try:
        with console.pipeline_stages(nodes, lambda node: stage_counts(config, node)):
            tfx.orchestration.LocalDagRunner().run(pipeline)
    except QuarantineExceededError as error:
        failure = str(error).split(";", 1)[0]  # the counts; the report below has the rest
    except DataValidationError:
        failure = "ExampleValidator found anomalies (listed above)"
    except DatasetError as error:  # the folder's files (pairs.csv, classes.txt) are unusable
        failure = str(error)
    except Exception as error:  # pylint: disable=broad-except
        _log.debug("check-data failed", exc_info=True)
        failure = f"{type(error).__name__}: {error}" + (f" (full log: {log_path})"
                                                        if log_path else "")
    print("", flush=True)
    report = DataReport.read(config, nodes)
    print(report.text(data.max_quarantine_fraction), flush=True)
    if failure is None and not report.complete:
        failure = "the data stages did not all finish (ran: " + ", ".join(report.ran) + ")"
    if failure is None:
        print("data usable: yes", flush=True)
        return 0
    print(f"data usable: no: {failure}", flush=True)
    return 1


@dataclasses.dataclass
class DataReport:
    """What the data stages of a check-data run recorded (ML Metadata + the quarantine files)."""

    ran: list[str]  # nodes that completed (or were cached)
    complete: bool  # every data stage completed
    summary: Optional[dict[str, Any]]  # the quarantine's summary.json (raw datasets)
    records_path: Optional[str]  # the quarantine's records.jsonl
    examples_by_split: dict[str, int]  # from StatisticsGen (when it ran)
    anomalies: Optional[list[str]]  # None: ExampleValidator did not run

    @classmethod
    def read(cls, config: PipelineConfig, nodes: list[str]) -> "DataReport":
        from components.anomalies_gate.component import (  # pylint: disable=C0415
            describe_anomalies)
        from components.raw_example_gen.executor import (  # pylint: disable=C0415
            QUARANTINE_KEY, RECORDS_FILE, REJECTED_DIR, SUMMARY_FILE)
        from pipeline.metadata import (  # pylint: disable=C0415
            is_done, latest_run_executions, output_artifacts)
        from tfx.types import standard_artifacts  # pylint: disable=C0415

        executions = latest_run_executions(config.metadata_path, config.pipeline_name)
        ran = [n for n in nodes if is_done(executions.get(n))]
        outputs = {n: output_artifacts(config.metadata_path, executions[n].id) for n in ran}
        summary = records_path = None
        example_gen = nodes[0]
        quarantine_dir = None
        if QUARANTINE_KEY in outputs.get(example_gen, {}):
            quarantine_dir = outputs[example_gen][QUARANTINE_KEY][0].uri
        elif example_gen in executions:  # failed over the limit: the executor kept a copy
            quarantine_dir = os.path.join(config.pipeline_root, example_gen, REJECTED_DIR,
                                          str(executions[example_gen].id))
        if quarantine_dir and os.path.isfile(os.path.join(quarantine_dir, SUMMARY_FILE)):
            with open(os.path.join(quarantine_dir, SUMMARY_FILE)) as f:
                summary = json.load(f)
            records_path = os.path.join(quarantine_dir, RECORDS_FILE)
        examples_by_split: dict[str, int] = {}
        if node_ids.STATISTICS_GEN in outputs:
            examples_by_split = _examples_by_split(
                outputs[node_ids.STATISTICS_GEN]["statistics"][0].uri)
        anomalies = None
        if node_ids.EXAMPLE_VALIDATOR in outputs:
            artifact = standard_artifacts.ExampleAnomalies()
            artifact.set_mlmd_artifact(outputs[node_ids.EXAMPLE_VALIDATOR]["anomalies"][0])
            anomalies = describe_anomalies(artifact)
        return cls(ran=ran, complete=len(ran) == len(nodes), summary=summary,
                   records_path=records_path, examples_by_split=examples_by_split,
                   anomalies=anomalies)

    def text(self, max_quarantine_fraction: float) -> str:
        lines = []
        if self.summary is not None:
            s = self.summary
            lines.append(f"records read: {s['records_in']}")
            lines.append(f"accepted: {s['accepted']} ({_by_split(s['accepted_by_split'])})")
            lines.append(f"quarantined: {s['quarantined']} ({s['quarantined_fraction']:.1%}; "
                         f"max_quarantine_fraction {max_quarantine_fraction:.1%})")
            for reason, count in s["by_reason"].items():
                lines.append(f"  {reason}: {count}")
            lines.append(f"quarantine file: {self.records_path}")
        elif self.examples_by_split:
            total = sum(self.examples_by_split.values())
            lines.append(f"records read: {total}")
            lines.append(f"accepted: {total} ({_by_split(self.examples_by_split)})")
            lines.append("quarantined: 0 (this dataset's ExampleGen has no quarantine)")
        else:
            lines.append("records read: unknown (the ExampleGen did not finish)")
        if self.examples_by_split:
            lines.append(f"examples (StatisticsGen): {_by_split(self.examples_by_split)}")
        if self.anomalies is None:
            lines.append("anomalies: not checked (ExampleValidator did not run)")
        elif not self.anomalies:
            lines.append("anomalies: none")
        else:
            lines.append(f"anomalies: {len(self.anomalies)}")
            lines.extend(f"  {problem}" for problem in self.anomalies)
        return "\n".join(lines)


def _by_split(counts: dict[str, int]) -> str:
    order = {"train": 0, "val": 1, "eval": 1, "test": 2}
    return ", ".join(f"{split} {count}" for split, count in
                     sorted(counts.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))


def _examples_by_split(statistics_uri: str) -> dict[str, int]:
    from tensorflow_metadata.proto.v0 import statistics_pb2  # pylint: disable=C0415

    counts = {}
    for entry in sorted(os.listdir(statistics_uri)):
        path = os.path.join(statistics_uri, entry, "FeatureStats.pb")
        if entry.startswith("Split-") and os.path.isfile(path):
            stats = statistics_pb2.DatasetFeatureStatisticsList()
            with open(path, "rb") as f:
                stats.ParseFromString(f.read())
            counts[entry[len("Split-"):]] = sum(int(d.num_examples) for d in stats.datasets)
    return counts
