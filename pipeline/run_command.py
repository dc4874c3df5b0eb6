"""``cmgan run`` (run the pipeline locally) and ``cmgan compile`` (write the Kubeflow V2 spec).

``pipeline/cli.py`` calls ``register(subparsers)``; ``main(argv)`` serves ``python -m``.
Values come from the defaults in pipeline/config.py, then ``--config FILE``, then flags.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from typing import Optional, Sequence

from models.distribute import STRATEGIES
from models.hparams import PRESETS
from pipeline.config import DATASETS, DEFAULT_IMAGE, PipelineConfig


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """What data and how to read it: shared by run, compile and check-data."""
    parser.add_argument("--config", metavar="FILE", help="JSON config file (pipeline/config.py)")
    parser.add_argument("--dataset", choices=DATASETS,
                        help="demo (default: the embedded raw image/caption demo), raw (a "
                             "pairs.csv folder), wikipedia, features, demo-features, examples")
    parser.add_argument("--data-dir", help="dataset folder (all datasets but the demos)")
    parser.add_argument("--image-encoder", metavar="ENCODER",
                        help="features | cnn | keras:<Application> | torch:efficientnet-lite0 "
                             "(default: cnn for raw datasets, else features)")
    parser.add_argument("--image-encoder-weights", metavar="WEIGHTS",
                        help="keras: encoders: imagenet | none | a local weights file")
    parser.add_argument("--image-size", type=int, help="resize side in pixels")
    parser.add_argument("--text-encoder", metavar="ENCODER",
                        help="features | kim_cnn | torch:minilm (default: kim_cnn for raw "
                             "datasets, else features; wikipedia + kim_cnn reads raw texts)")
    parser.add_argument("--max-quarantine-fraction", type=float,
                        help="raw datasets: fail when more records are quarantined "
                             "(default 0.05)")


def add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by run and compile; None means "as configured"."""
    add_data_flags(parser)
    parser.add_argument("--pipeline-name", help="default: cmgan-<dataset>")
    parser.add_argument("--pipeline-root", help="default: ./runs/<pipeline-name>")
    parser.add_argument("--serving-root", help="default: ./serving_models")
    parser.add_argument("--model-name",
                        help="default: cmgan; pushed to <serving-root>/<name>/<version>")
    parser.add_argument("--epochs", type=int,
                        help="CM-GAN training epochs (default: the dataset's preset)")
    parser.add_argument("--hparam", action="append", type=key_value, default=[],
                        metavar="KEY=VALUE", help="any CMGANHParams field; repeatable")
    parser.add_argument("--strategy", choices=STRATEGIES, help="tf.distribute strategy")
    parser.add_argument("--preset", choices=PRESETS,
                        help="hyperparameter preset: paper (CMGAN.md), general (the default "
                             "for datasets without their own), or a dataset's")
    parser.add_argument("--map-threshold", type=float,
                        help="validation mean MAP needed to push (default 0.0)")
    parser.add_argument("--map-margin", type=float,
                        help="allowed drop below the last blessed model (default 0.01)")
    parser.add_argument("--beam-arg", action="append", default=None, metavar="ARG",
                        help="Beam pipeline argument, repeatable, written with '=' "
                             "(--beam-arg=--direct_num_workers=2); replaces the configured ones "
                             "(default --direct_running_mode=in_memory --direct_num_workers=1)")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    config = PipelineConfig.from_json_file(args.config) if args.config else PipelineConfig()
    hparams = dict(args.hparam)
    if args.epochs is not None:
        hparams["epochs"] = args.epochs
    return config.with_overrides(
        dataset=args.dataset, data_dir=args.data_dir, hparams=hparams, beam_args=args.beam_arg,
        pipeline_name=args.pipeline_name, pipeline_root=args.pipeline_root,
        serving_root=args.serving_root, model_name=args.model_name, strategy=args.strategy,
        preset=args.preset,
        map_threshold=args.map_threshold, map_margin=args.map_margin,
        image_encoder=args.image_encoder, text_encoder=args.text_encoder,
        image_encoder_weights=args.image_encoder_weights, image_size=args.image_size,
        max_quarantine_fraction=args.max_quarantine_fraction).resolved()


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

    path = compile_pipeline(config_from_args(args), args.output, args.image)
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
    compile_parser.add_argument("--image", default=DEFAULT_IMAGE,
                                help="container image with this project installed "
                                     "(default: %(default)s)")
    compile_parser.set_defaults(func=compile_spec)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m pipeline.run_command ...``: the ``cmgan`` command line."""
    from pipeline.cli import main as cmgan_main

    return cmgan_main(argv)


if __name__ == "__main__":
    sys.exit(main())
