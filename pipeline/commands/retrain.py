"""``cmgan retrain`` (one idempotent run on the latest spans), ``cmgan schedule --every 6h``
(retrain on an interval, in the foreground) and ``cmgan history`` (the runs in ML Metadata).

``pipeline/cli.py`` calls ``register(subparsers)``. Settings come as for ``cmgan run``
(defaults, ``--config FILE``, flags) plus the span flags (pipeline/commands/flags.py); the
dataset is ``features`` and ``--data-dir`` the span root
(``<root>/span-<N>/{train,val,test}.npz``).
"""
from __future__ import annotations

import argparse
import json
import sys

from pipeline import console
from pipeline.commands.flags import add_span_flags, config_from_args
from pipeline.config import PipelineConfig


def span_config(args: argparse.Namespace) -> PipelineConfig:
    """The config of retrain, schedule and history: as for ``cmgan run`` (default dataset
    ``features``) plus the span flags, with the default span pattern when none is configured."""
    from pipeline.retrain import with_span_defaults  # pylint: disable=import-outside-toplevel

    def adjust(config: PipelineConfig) -> PipelineConfig:
        # Retraining works on spans of a feature dataset; history also reads other pipelines.
        if args.func is history and config.data.dataset != "features":
            return config
        return with_span_defaults(config)

    return config_from_args(args, dataset="features", adjust=adjust)


def retrain(args: argparse.Namespace) -> int:
    """One retraining run on the latest spans; a no-op when no new span arrived."""
    from pipeline.retrain import retrain_once  # pylint: disable=import-outside-toplevel

    config = span_config(args)
    console.log_to(config.pipeline_root, "retrain")
    outcome = retrain_once(config, force=args.force, log=lambda s: print(s, flush=True))
    if outcome.result is not None:
        print(outcome.result.map_table(), flush=True)
    print(f"retrain: {outcome.status}: {outcome.message}", flush=True,
          file=sys.stderr if outcome.status == "failed" else sys.stdout)
    return outcome.exit_code


def schedule(args: argparse.Namespace) -> int:
    """Retrain every --every (30s, 10m, 6h, 1d) until SIGTERM/Ctrl-C."""
    from pipeline.retrain import parse_interval, retrain_once, schedule_loop

    try:
        interval = parse_interval(args.every)
    except ValueError as error:
        print(f"cmgan schedule: error: {error}", file=sys.stderr)
        return 2
    config = span_config(args)
    console.log_to(config.pipeline_root, "schedule")
    return schedule_loop(lambda: retrain_once(config, force=False, log=lambda s: None),
                         interval, max_runs=args.max_runs)


def history(args: argparse.Namespace) -> int:
    """The pipeline's runs from ML Metadata: spans, model, MAP, blessed, pushed version."""
    from pipeline.history import format_history, run_history

    config = span_config(args)
    records = run_history(config.metadata_path, config.pipeline_name)
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
    else:
        print(f"pipeline {config.pipeline_name} ({config.metadata_path})")
        print(format_history(records))
    return 0


def register(subparsers) -> None:
    """Adds ``retrain``, ``schedule`` and ``history``; each sets ``func``."""
    retrain_parser = subparsers.add_parser(
        "retrain", help="one idempotent retraining run on the latest data spans",
        description=retrain.__doc__)
    add_span_flags(retrain_parser)
    retrain_parser.add_argument("--force", action="store_true",
                                help="run even if the newest span was already evaluated")
    retrain_parser.set_defaults(func=retrain)

    schedule_parser = subparsers.add_parser(
        "schedule", help="retrain on an interval in the foreground (SIGTERM/Ctrl-C stops)",
        description=schedule.__doc__)
    add_span_flags(schedule_parser)
    schedule_parser.add_argument("--every", required=True, metavar="INTERVAL",
                                 help="e.g. 30s, 10m, 6h, 1d")
    schedule_parser.add_argument("--max-runs", type=int, default=None,
                                 help="stop after this many runs (default: never)")
    schedule_parser.set_defaults(func=schedule)

    history_parser = subparsers.add_parser(
        "history", help="runs recorded in ML Metadata: spans, model, MAP, blessing, push",
        description=history.__doc__)
    add_span_flags(history_parser)
    history_parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    history_parser.set_defaults(func=history)

