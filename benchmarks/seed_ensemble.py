"""Seed ensembles of CM-GAN, measured before anything ships them: on each split of `cmgan
benchmark`'s protocol, K CM-GANs that differ only in their seed (s, s+100, ...), each with its
epoch chosen on validation, then val and test MAP@all (mean of I->T and T->I) of member 1, of
the members on average, and of the ensemble. The ensemble retrieves with the concatenation of
the members' L2-normalised vectors, whose cosine is the mean of the members' cosines, so one
served model could answer with it. Prints one JSON line; progress goes to stderr.

    .venv/bin/python benchmarks/seed_ensemble.py --dataset wikipedia \
        --data-dir ../shared/data/wikipedia --text-encoder torch:minilm [--members 3] [--splits 5]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.split_study import (add_dataset_arguments, encoded_features,  # noqa: E402
                                    study_hparams)
from models.benchmark import paired_difference, resplit, summarise  # noqa: E402
from models.ensemble import member_seeds  # noqa: E402
from models.experiment import standardise  # noqa: E402
from models.metrics import cross_modal_map, l2_normalise  # noqa: E402
from models.training import embed, train_cmgan  # noqa: E402


def _mean_map(vectors: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray) -> float:
    image = np.concatenate([l2_normalise(v[0]) for v in vectors], axis=1)
    text = np.concatenate([l2_normalise(v[1]) for v in vectors], axis=1)
    return cross_modal_map(image, text, labels)["mean"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser)
    parser.add_argument("--members", type=int, default=3)
    args = parser.parse_args(argv)

    encoded = encoded_features(args)
    dataset = encoded.dataset
    hparams = study_hparams(args)
    scores = {split: {"member_1": [], "members_mean": [], "ensemble": []}
              for split in ("val", "test")}
    started = time.time()
    for seed in range(args.splits):
        data = standardise(resplit(dataset, seed, fixed_test=encoded.fixed_test))
        vectors = {"val": [], "test": []}
        # Trained apart, each with its own epoch: the seeds of models.ensemble's members.
        for member_seed in member_seeds(hparams.replace(seed=seed,
                                                        ensemble_members=args.members)):
            trained = train_cmgan(data.splits["train"], data.splits["val"], dataset.num_classes,
                                  hparams.replace(seed=member_seed, ensemble_members=1),
                                  verbose=0)
            for split in vectors:
                part = data.splits[split]
                vectors[split].append(embed(trained.model, part.image, part.text))
        for split, members in vectors.items():
            labels = data.splits[split].label
            singles = [_mean_map([m], labels) for m in members]
            scores[split]["member_1"].append(singles[0])
            scores[split]["members_mean"].append(float(np.mean(singles)))
            scores[split]["ensemble"].append(_mean_map(members, labels))
        print(f"split {seed + 1}/{args.splits}: test ensemble "
              f"{scores['test']['ensemble'][-1]:.4f}, members "
              f"{scores['test']['members_mean'][-1]:.4f}  {time.time() - started:.0f}s",
              file=sys.stderr, flush=True)
    print(json.dumps({
        "benchmark": "seed_ensemble", "dataset": dataset.name, "members": args.members,
        "splits": args.splits, "image_encoder": args.image_encoder,
        "text_encoder": args.text_encoder, "preset": args.preset, "hparams": hparams.to_dict(),
        **{split: {name: summarise(values) for name, values in by_name.items()}
           for split, by_name in scores.items()},
        "ensemble_minus_members_mean": {
            split: paired_difference(by_name["ensemble"], by_name["members_mean"])
            for split, by_name in scores.items()},
        "wall_time_s": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
