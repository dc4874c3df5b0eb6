"""What the repeated-split studies (seed_ensemble.py, refit_check.py) share: the dataset and
encoder flags of `cmgan benchmark`, the features they name (encoded once and cached), and the
preset's hyperparameters."""
from __future__ import annotations

import argparse

from components.datasets.encoded import EncodedDataset, encode_dataset
from models.hparams import CMGANHParams, hparams_for_dataset


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="demo-features")
    parser.add_argument("--data-dir")
    parser.add_argument("--image-encoder", default="features")
    parser.add_argument("--text-encoder", default="features")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--cache-dir", default="outputs/feature_cache")


def encoded_features(args: argparse.Namespace) -> EncodedDataset:
    return encode_dataset(args.dataset, args.data_dir, image_encoder=args.image_encoder,
                          text_encoder=args.text_encoder, cache_dir=args.cache_dir)


def study_hparams(args: argparse.Namespace) -> CMGANHParams:
    """The preset's hyperparameters without its refit: both studies score models on the
    validation split, which a model refit on train + validation has trained on."""
    return hparams_for_dataset(args.dataset, preset=args.preset).replace(
        refit_on_validation=False)
