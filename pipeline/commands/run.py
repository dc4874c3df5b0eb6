"""``cmgan run`` (run the pipeline locally) and ``cmgan compile`` (write the Kubeflow V2 spec).

``pipeline/cli.py`` calls ``register(subparsers)``. Values come from the defaults in
pipeline/config.py, then ``--config FILE``, then flags (pipeline/commands/flags.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys

from pipeline.commands.flags import add_kubeflow_flags, add_pipeline_flags, config_from_args
from pipeline.config import PipelineConfig


def run(args: argparse.Namespace) -> int:
    """Runs the pipeline, prints the MAP table and the push outcome, writes --metrics-out."""
    from pipeline import console
    from pipeline.local_runner import run_pipeline

    config = config_from_args(args)
    print(f"running pipeline {config.pipeline_name} (root {config.pipeline_root})", flush=True)
    log_path = console.log_to(config.pipeline_root, "run")
    try:
        result = run_pipeline(config)
    except Exception as error:  # pylint: disable=broad-except
        logging.getLogger(__name__).debug("pipeline failed", exc_info=True)
        print(f"cmgan run: pipeline {config.pipeline_name} failed: "
              f"{type(error).__name__}: {error}" + (f" (full log: {log_path})" if log_path
                                                    else ""), file=sys.stderr, flush=True)
        return 1
    print(f"\n{result.summary()}", flush=True)
    if result.pushed_model:
        print(f"\nnext:\n{next_commands(config)}", flush=True)
    if args.metrics_out:
        with open(args.metrics_out, "w") as f:
            json.dump(result.metrics(), f, indent=2)
        print(f"metrics written to {args.metrics_out}")
    return 0


def _shown(path: str) -> str:
    """A path as short as it can be typed from here."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def next_commands(config: PipelineConfig) -> str:
    """What to try with the pushed model, with this run's paths and model name."""
    prog = _shown(sys.argv[0]) if os.path.basename(sys.argv[0]) == "cmgan" else "cmgan"
    serving, name = shlex.quote(_shown(config.serving_root)), shlex.quote(config.model_name)
    lines = [f"  {prog} serve --model-base-path {serving} --model-name {name}"
             "        # gRPC on 127.0.0.1:8500; then, in another shell:"]
    if config.data.encoders()[1] != "features":  # the served model takes raw text
        lines.append(f"  {prog} query --server 127.0.0.1:8500 --model-name {name} "
                     "--text 'a red circle'")
    lines.append(f"  {prog} web --server 127.0.0.1:8500 --model {name} "
                 f"--model-base-path {serving}   # search page on http://127.0.0.1:8080")
    lines.append(f"  {prog} report --pipeline-name {shlex.quote(config.pipeline_name)} "
                 f"--pipeline-root {shlex.quote(_shown(config.pipeline_root))} "
                 "--output report.html")
    return "\n".join(lines)


def compile_spec(args: argparse.Namespace) -> int:
    """Writes the Kubeflow Pipelines V2 PipelineJob JSON."""
    from pipeline.kubeflow_runner import compile_pipeline

    path = compile_pipeline(config_from_args(args), args.output)
    print(f"Kubeflow V2 pipeline spec written to {path}")
    return 0


def register(subparsers) -> None:
    """Adds ``run`` and ``compile`` to an argparse subparsers object; each sets ``func``."""
    run_parser = subparsers.add_parser(
        "run", help="run the TFX pipeline locally (LocalDagRunner + Beam DirectRunner)",
        description=run.__doc__)
    add_pipeline_flags(run_parser)
    run_parser.add_argument("--metrics-out", metavar="FILE",
                            help="write the test-split MAP of CM-GAN, CCA and classifier as JSON")
    run_parser.set_defaults(func=run)

    compile_parser = subparsers.add_parser(
        "compile", help="compile the pipeline to a Kubeflow Pipelines V2 spec",
        description=compile_spec.__doc__)
    add_pipeline_flags(compile_parser)
    compile_parser.add_argument("--output", default="cmgan-pipeline.json", metavar="FILE",
                                help="PipelineJob JSON to write (default: %(default)s)")
    add_kubeflow_flags(compile_parser)
    compile_parser.set_defaults(func=compile_spec)

