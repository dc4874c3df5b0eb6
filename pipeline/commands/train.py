"""`cmgan train`: CM-GAN and baselines on a feature dataset in-process (no TFX)."""
from __future__ import annotations

import argparse
import json
import os
import tempfile

from pipeline import console
from models.hparams import PRESETS
from pipeline.commands.flags import PRESET_HELP, key_value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train and evaluate CM-GAN with the baselines, without the pipeline",
        description="Trains CM-GAN on the train split, picks the epoch by validation MAP, and "
                    "prints test MAP@all beside the CCA and classifier baselines.")
    # Feature datasets only (raw images/texts need the pipeline's Beam preprocessing); the names
    # are the pipeline's: "demo-features" is the synthetic feature demo.
    parser.add_argument("--dataset", default="demo-features",
                        choices=("demo-features", "wikipedia", "features"))
    parser.add_argument("--data-dir", help="dataset folder (wikipedia layout or npz features)")
    parser.add_argument("--output-dir", default=None,
                        help="where metrics.json, weights and TensorBoard logs go "
                             "(default ./outputs/<dataset>)")
    parser.add_argument("--epochs", type=int, help="shorthand for --hparam epochs=N")
    parser.add_argument("--hparam", action="append", default=[], type=key_value,
                        metavar="KEY=VALUE",
                        help="any CMGANHParams field; repeatable")
    parser.add_argument("--preset", default=None, choices=PRESETS,
                        help=PRESET_HELP)
    parser.add_argument("--strategy", default="default",
                        choices=("default", "mirrored", "multi_worker"),
                        help="tf.distribute strategy; multi_worker: run once per worker with "
                             "TF_CONFIG (README), only the chief writes --output-dir")
    backup = parser.add_mutually_exclusive_group()
    backup.add_argument("--backup-dir", default=None,
                        help="training state saved every epoch, so a killed run started again "
                             "with the same flags resumes; deleted when training finishes "
                             "(default <output-dir>/backup; multi_worker: a folder every worker "
                             "reads, the chief writes it)")
    backup.add_argument("--no-backup", action="store_true",
                        help="save no training state (a killed run starts from epoch 0)")
    parser.add_argument("--seed", type=int, default=0, help="dataset split seed")
    parser.set_defaults(func=train)


def train(args: argparse.Namespace) -> int:
    from components.datasets import load_dataset
    from components.datasets.registry import PIPELINE_DATASETS
    from models.experiment import backup_folder, print_tables, train_and_evaluate
    from models.hparams import hparams_for_dataset

    reader = PIPELINE_DATASETS[args.dataset].feature_reader
    overrides = dict(args.hparam)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    hparams = hparams_for_dataset(args.dataset, overrides, preset=args.preset)
    output_dir = args.output_dir or os.path.join("outputs", args.dataset)
    chief = True
    if args.strategy == "multi_worker":
        from models.distribute import worker_name, writes_outputs

        chief = writes_outputs(args.strategy)
    if chief:
        console.log_to(output_dir, "train")
    else:  # only the chief writes to output_dir; this worker's log goes to a temporary folder
        console.log_to(tempfile.mkdtemp(prefix=f"cmgan-train-{worker_name()}-"), "train")
    with console.stage(f"load {args.dataset}", 1, 2):
        dataset = load_dataset(reader, args.data_dir, seed=args.seed)
    print(dataset.summary(), flush=True)
    backup_root = args.backup_dir or os.path.join(output_dir, "backup")
    backup_dir = None if args.no_backup else backup_folder(
        backup_root, dataset, hparams, data_key=json.dumps([args.dataset, args.data_dir,
                                                            args.seed]))
    with console.stage("train CM-GAN and baselines", 2, 2) as counts:
        document = train_and_evaluate(dataset, hparams, strategy=args.strategy,
                                      output_dir=output_dir, backup_dir=backup_dir)
        counts["best epoch"] = f"{document['best_epoch']}/{hparams.epochs}"
    if chief and backup_dir and not args.backup_dir:
        _remove_if_empty(backup_root)
    print_tables(document)
    written = "" if chief else " (written by the chief)"
    print(f"\nmetrics: {os.path.abspath(os.path.join(output_dir, 'metrics.json'))}{written}")
    return 0


def _remove_if_empty(folder: str) -> None:
    """The default <output-dir>/backup once its last run's backup is deleted."""
    import tensorflow as tf

    if tf.io.gfile.isdir(folder) and not tf.io.gfile.listdir(folder):
        tf.io.gfile.rmtree(folder)
