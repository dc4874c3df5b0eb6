"""`cmgan benchmark`: CM-GAN, the no-GAN ablation and the baselines over repeated, paired splits."""
from __future__ import annotations

import argparse
import json
import os

from pipeline import console
from pipeline.commands.flags import key_value

DATASETS = ("demo-features", "wikipedia", "features", "raw")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="repeated-split, paired comparison of CM-GAN with its baselines",
        description="For each split seed: a seeded stratified split (a dataset's fixed test split "
                    "is kept and validation redrawn), CM-GAN with its epoch chosen on validation, "
                    "the no-GAN ablation (same generators, no adversarial losses), CCA and the "
                    "classifier baseline on the same features. Prints a table and writes one "
                    "JSON file with per-split figures and the paired 95%% interval of CM-GAN "
                    "minus the best baseline. Pretrained encoders run once; their features are "
                    "cached.")
    parser.add_argument("--dataset", default="demo-features", choices=DATASETS)
    parser.add_argument("--data-dir", help="the dataset folder (not for demo-features)")
    parser.add_argument("--image-encoder", default="features", metavar="ENCODER",
                        help="features (what the dataset ships), torch:efficientnet-lite0 or "
                             "keras:APP (ImageNet weights; needs them on disk)")
    parser.add_argument("--text-encoder", default="features", metavar="ENCODER",
                        help="features or torch:minilm")
    parser.add_argument("--splits", type=int, default=5, help="number of split seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(_methods()),
                        help="comma-separated subset of cmgan,no_gan,cca,classifier")
    parser.add_argument("--preset", default=None, choices=_presets(),
                        help="hyperparameter preset: paper (CMGAN.md), general, or a dataset's "
                             "(default: the dataset's own, else general)")
    parser.add_argument("--epochs", type=int, help="shorthand for --hparam epochs=N")
    parser.add_argument("--hparam", action="append", default=[], type=key_value,
                        metavar="KEY=VALUE", help="any CMGANHParams field; repeatable")
    parser.add_argument("--cache-dir", default=os.path.join("outputs", "feature_cache"),
                        help="where encoded features are kept between runs")
    parser.add_argument("--output", default=None,
                        help="JSON file (default outputs/benchmark-<dataset>.json)")
    parser.set_defaults(func=benchmark)


def _presets():
    from models.hparams import PRESETS  # pylint: disable=import-outside-toplevel

    return tuple(PRESETS)


def _methods():
    from models.benchmark import METHODS  # pylint: disable=import-outside-toplevel

    return METHODS


def benchmark(args: argparse.Namespace) -> int:
    from components.datasets.encoded import encode_dataset  # pylint: disable=C0415
    from models.benchmark import format_benchmark_table, run_benchmark  # pylint: disable=C0415
    from models.hparams import hparams_for_dataset  # pylint: disable=import-outside-toplevel

    if args.splits < 1:
        raise SystemExit("cmgan benchmark: error: --splits must be at least 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    output = args.output or os.path.join("outputs", f"benchmark-{args.dataset}.json")
    console.log_to(os.path.dirname(os.path.abspath(output)), "benchmark")
    with console.stage(f"features of {args.dataset}", 1, 2) as counts:
        encoded = encode_dataset(args.dataset, args.data_dir, image_encoder=args.image_encoder,
                                 text_encoder=args.text_encoder, cache_dir=args.cache_dir)
        counts["pairs"] = sum(len(s) for s in encoded.dataset.splits.values())
        counts["set aside"] = sum(encoded.set_aside.values())
    dataset = encoded.dataset
    overrides = dict(args.hparam)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    hparams = hparams_for_dataset(args.dataset, overrides, preset=args.preset)
    source = ("computed" if encoded.computed else "read from cache") + (
        f" ({encoded.cache_file})" if encoded.cache_file else "")
    print(f"{dataset.summary()}; features {source}", flush=True)
    if encoded.set_aside:
        print(f"set aside (not encodable): {encoded.set_aside}", flush=True)
    with console.stage(f"{args.splits} splits x {', '.join(methods)}", 2, 2):
        document = run_benchmark(dataset, hparams, splits=args.splits,
                                 fixed_test=encoded.fixed_test, methods=methods,
                                 first_seed=args.first_seed,
                                 progress=lambda line: print(line, flush=True))
    document["features"] = {"image_encoder": args.image_encoder,
                            "text_encoder": args.text_encoder, "set_aside": encoded.set_aside,
                            "cache_file": encoded.cache_file, "computed": encoded.computed}
    document["preset"] = args.preset or "(the dataset's)"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
    print()
    print(format_benchmark_table(document))
    print(f"\nbenchmark: {os.path.abspath(output)}")
    return 0
