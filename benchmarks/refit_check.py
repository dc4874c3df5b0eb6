"""Would refitting on train + validation help? Judged on the validation split, never on test.

The published Wikipedia figures train on all 2,173 training pairs; `cmgan benchmark` and the
Trainer hold 15% of them out to choose the epoch. On each split of `cmgan benchmark`'s protocol:
  A: one CM-GAN trained on train minus an inner holdout (as large as the validation split), its
     epoch chosen on that inner holdout, scored on the validation split;
  B: the same seed trained on the whole train split for A's number of epochs (no selection),
     scored on the validation split.
B - A is what refitting on the held-out pairs would add. Prints one JSON line; progress goes to
stderr.

    .venv/bin/python benchmarks/refit_check.py --dataset wikipedia \
        --data-dir ../shared/data/wikipedia [--text-encoder torch:minilm] [--splits 5]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.split_study import (add_dataset_arguments, encoded_features,  # noqa: E402
                                    study_hparams)
from models.benchmark import paired_difference, resplit, summarise  # noqa: E402
from models.data import stratified_holdout  # noqa: E402
from models.experiment import standardise  # noqa: E402
from models.metrics import cross_modal_map  # noqa: E402
from models.training import embed, train_cmgan  # noqa: E402

INNER_SEED_OFFSET = 104729  # the inner holdout's seed, apart from resplit's validation seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser)
    parser.add_argument("--first-seed", type=int, default=0)
    args = parser.parse_args(argv)

    encoded = encoded_features(args)
    dataset = encoded.dataset
    # One CM-GAN: the question is the data, not the ensemble. B below is what
    # refit_on_validation does, written out.
    hparams = study_hparams(args).replace(ensemble_members=1)
    per_split, started = [], time.time()
    for seed in range(args.first_seed, args.first_seed + args.splits):
        outer = resplit(dataset, seed, fixed_test=encoded.fixed_test)
        train, val = outer.splits["train"], outer.splits["val"]
        in_holdout = stratified_holdout(train.label, len(val.label) / len(train.label),
                                        seed + INNER_SEED_OFFSET)
        inner = standardise(dataclasses.replace(outer, splits={
            "train": train.subset(~in_holdout), "val": train.subset(in_holdout), "test": val}))
        selected = train_cmgan(inner.splits["train"], inner.splits["val"], dataset.num_classes,
                               hparams.replace(seed=seed), verbose=0)
        scored = inner.splits["test"]
        a = cross_modal_map(*embed(selected.model, scored.image, scored.text),
                            scored.label)["mean"]
        epochs = selected.best_epoch
        full = standardise(outer)
        # Validates only after the last epoch, so the refit model is that epoch's: no selection.
        refit = train_cmgan(full.splits["train"], full.splits["val"], dataset.num_classes,
                            hparams.replace(seed=seed, epochs=epochs, validate_every=epochs,
                                            early_stopping_patience=0), verbose=0)
        per_split.append({"seed": seed, "epochs": epochs, "a_selected": a,
                          "b_refit": refit.best_val["mean"]})
        print(f"split seed {seed}: epochs {epochs}, validation A {a:.4f}, "
              f"B {per_split[-1]['b_refit']:.4f}  {time.time() - started:.0f}s",
              file=sys.stderr, flush=True)
    a_scores = [s["a_selected"] for s in per_split]
    b_scores = [s["b_refit"] for s in per_split]
    print(json.dumps({
        "benchmark": "refit_check", "dataset": dataset.name, "splits": args.splits,
        "first_seed": args.first_seed, "image_encoder": args.image_encoder,
        "text_encoder": args.text_encoder, "preset": args.preset, "hparams": hparams.to_dict(),
        "a_selected": summarise(a_scores), "b_refit": summarise(b_scores),
        "b_minus_a": paired_difference(b_scores, a_scores), "per_split": per_split,
        "wall_time_s": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
