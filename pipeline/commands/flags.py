"""Flags the commands share, and the one place their values become a ``PipelineConfig``.

Values come from the defaults in pipeline/config.py, then ``--config FILE``, then flags
(``config_from_args``, through ``pipeline.config.load_config``).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Optional

from models.distribute import STRATEGIES
from models.hparams import PRESETS
from pipeline.config import DATASETS, PipelineConfig, check_beam_storage, load_config

PRESET_HELP = ("hyperparameter preset: paper (CMGAN.md), general (the default for datasets "
               "without their own), pretrained (strong pretrained features, a few hundred "
               "pairs), or a dataset's")

# Flags that set PipelineConfig.with_overrides keywords of the same name (--beam-arg sets
# beam_args, --hparam and --epochs hparams). A command has only some of them; the ones it lacks
# are None: "as configured".
_OVERRIDES = ("dataset", "data_dir", "pipeline_name", "pipeline_root", "serving_root",
              "model_name", "strategy", "preset", "map_threshold", "map_margin",
              "image_encoder", "text_encoder", "image_encoder_weights", "image_size",
              "max_quarantine_fraction", "max_image_pixels", "span_pattern", "span_window",
              "eval_span", "warm_start")


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
    """Flags shared by run and compile (and retrain, schedule, history, report); None means
    "as configured"."""
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
                        help=PRESET_HELP)
    parser.add_argument("--map-threshold", type=float,
                        help="validation mean MAP needed to push (default 0.0)")
    parser.add_argument("--map-margin", type=float,
                        help="allowed drop below the last blessed model (default 0.01)")
    parser.add_argument("--beam-arg", action="append", default=None, metavar="ARG",
                        help="Beam pipeline argument, repeatable, written with '=' "
                             "(--beam-arg=--direct_num_workers=2); replaces the configured ones "
                             "(default --direct_running_mode=in_memory --direct_num_workers=1)")


def add_span_flags(parser: argparse.ArgumentParser) -> None:
    """The pipeline flags plus data spans: retrain, schedule and history."""
    add_pipeline_flags(parser)
    parser.add_argument("--span-pattern",
                        help="span folder name under --data-dir with {SPAN} "
                             "(default: as configured, else span-{SPAN})")
    parser.add_argument("--span-window", type=int,
                        help="train on this many latest spans (default: as configured, 1)")
    parser.add_argument("--eval-span",
                        help="val/test come from this span: first (default) | latest | N")
    parser.add_argument("--warm-start", action="store_true", default=None,
                        help="start the Trainer from the latest blessed model's weights")


def node_resource(text: str) -> tuple[str, str, str]:
    """``NODE.KEY=VALUE`` (``Trainer.memory_limit=16Gi``) -> (node, key, value)."""
    target, value = key_value(text)
    node, dot, key = target.partition(".")
    if not dot or not node or not key:
        raise argparse.ArgumentTypeError(f"expected NODE.KEY=VALUE (Trainer.memory_limit=16Gi), "
                                         f"got {text!r}")
    return node, key, value


def add_kubeflow_flags(parser: argparse.ArgumentParser) -> None:
    """``cmgan compile``'s Kubeflow settings (the config's ``kubeflow`` section)."""
    parser.add_argument("--image", help="container image with this project installed "
                                        "(default: as configured, else cmgan-tfx:latest)")
    for key, example in (("cpu_request", "1 or 500m"), ("cpu_limit", "2"),
                         ("memory_request", "2Gi"), ("memory_limit", "8Gi")):
        parser.add_argument(f"--{key.replace('_', '-')}", metavar="QUANTITY",
                            help=f"every component's {key.replace('_', ' ')} ({example})")
    parser.add_argument("--node-resource", action="append", type=node_resource, default=None,
                        metavar="NODE.KEY=VALUE",
                        help="one node's resource over the defaults, repeatable "
                             "(Trainer.memory_limit=16Gi; keys cpu_request, cpu_limit, "
                             "memory_request, memory_limit)")
    parser.add_argument("--trainer-accelerator", metavar="TYPE",
                        help="the Trainer's accelerator: NVIDIA_TESLA_T4 (Vertex AI) or "
                             "nvidia.com/gpu (Kubeflow Pipelines on Kubernetes)")
    parser.add_argument("--trainer-accelerator-count", type=int, metavar="N",
                        help="how many (default 1)")


def _kubeflow_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(args, name, None) for name in (
        "image", "cpu_request", "cpu_limit", "memory_request", "memory_limit",
        "trainer_accelerator", "trainer_accelerator_count")}
    values = {k: v for k, v in values.items() if v is not None}
    nodes: dict[str, dict[str, str]] = {}
    for node, key, value in getattr(args, "node_resource", None) or []:
        nodes.setdefault(node, {})[key] = value
    if nodes:
        values["node_resources"] = nodes
    return values


def config_from_args(args: argparse.Namespace, *, dataset: Optional[str] = None,
                     adjust: Optional[Callable[[PipelineConfig], PipelineConfig]] = None
                     ) -> PipelineConfig:
    """A command's resolved configuration: defaults, then ``--config FILE``, then the flags it
    has. ``dataset``: the command's default when neither ``--dataset`` nor ``--config`` names
    one; ``adjust``: the command's own last change before resolving."""
    overrides: dict[str, Any] = {name: getattr(args, name, None) for name in _OVERRIDES}
    if overrides["dataset"] is None and dataset is not None and not args.config:
        overrides["dataset"] = dataset
    hparams = dict(getattr(args, "hparam", None) or [])
    if getattr(args, "epochs", None) is not None:
        hparams["epochs"] = args.epochs
    config = load_config(args.config, adjust=adjust, hparams=hparams,
                         beam_args=getattr(args, "beam_arg", None),
                         kubeflow=_kubeflow_overrides(args), **overrides)
    if hasattr(args, "beam_arg"):  # a pipeline command: refuse what Beam workers cannot see
        check_beam_storage(config)
    return config
