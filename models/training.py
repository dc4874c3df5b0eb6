"""Fit CM-GAN on in-memory standardised features, selecting the epoch on validation MAP.

Shared by the Trainer's `run_fn` and `cmgan train`. With a checkpoint directory, training
state (weights, six optimizers, epoch, best validation score) is saved every epoch, so a
process killed mid-training resumes where it stopped.

Under MultiWorkerMirroredStrategy every worker calls `train_cmgan` alike: each replica trains
on its slice of every global batch (`models.sampling`), validation runs on every worker with
its (identical) weights, and only the chief keeps checkpoints and TensorBoard logs; the other
workers save into a temporary folder that is deleted at the end. A worker resumes from the
chief's checkpoint folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from models.cmgan import CMGAN
from models.data import Split, pooled
from models.distribute import make_strategy, non_chief_scratch, worker_name
from models.ensemble import CMGANEnsemble, build_model, training_batches
from models.hparams import CMGANHParams
from models.metrics import SELECTION_METRIC
from models.progress import TrainingProgress
from models.sampling import steps_per_epoch

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    model: CMGAN | CMGANEnsemble
    history: list[dict[str, Any]]
    best_epoch: int
    best_val: dict[str, float]
    resumed_from_epoch: int
    strategy: tf.distribute.Strategy
    warm_started_from: str | None = None  # weights file loaded before training, if any
    # (image, text) embeddings of the first COMMON_SPACE_SAMPLE val pairs by the freshly
    # initialised model: the "before training" picture of the common space.
    initial_val_embeddings: tuple[np.ndarray, np.ndarray] | None = None
    # (image, text) embeddings of every val pair by the returned model (what best_val scores,
    # unless the model was refit).
    val_embeddings: tuple[np.ndarray, np.ndarray] | None = None
    # With hparams.refit_on_validation: the epochs the returned model trained on train + val
    # (best_epoch, best_val and history stay the selection run's). None: no refit.
    refit_epochs: int | None = None


COMMON_SPACE_SAMPLE = 1000
# Fewest training steps (epochs x steps per epoch) for which jit_compile=True uses XLA.
XLA_MIN_STEPS = 5000


def embed(model: CMGAN | CMGANEnsemble, image: np.ndarray, text: np.ndarray,
          batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Retrieval vectors (the common representations by default) in inference mode, in
    batches."""
    def run(encode, features):
        parts = [encode(tf.constant(features[i:i + batch_size]), training=False).numpy()
                 for i in range(0, len(features), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, model.embedding_dim),
                                                            np.float32)
    return run(model.encode_image, image), run(model.encode_text, text)


def weights_checksum(model: keras.Model) -> str:
    """sha256 of every weight's bytes: workers of one multi-worker run must agree."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def _copy_weights(model: keras.Model) -> list[np.ndarray]:
    """Owned copies: arrays from get_weights() can alias variable buffers that the
    optimizers later update in place, which silently turns "best" into "latest"."""
    return [np.array(w, copy=True) for w in model.get_weights()]


class _TrainingState(tf.Module):
    """What a resumed run needs beyond weights: the epoch and the best validation so far."""

    def __init__(self):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_score = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
        # Early stopping's count, so a resumed run stops where an uninterrupted one would.
        self.validations_without_gain = tf.Variable(0, dtype=tf.int64, trainable=False)
        # Set by early stopping, so a run resumed after it (e.g. killed during its refit or
        # export) does not train on; a run that reached its last epoch may be given more.
        self.stopped_early = tf.Variable(False, trainable=False)


class ValidationSelection(keras.callbacks.Callback):
    """Every `validate_every` epochs (and at the last), computes validation MAP, keeps the
    best weights, saves checkpoints, prints progress and stops early if configured."""

    def __init__(self, val, hparams: CMGANHParams, total_epochs: int, state: _TrainingState,
                 checkpoint_dir: str | None, verbose: int, resume_dir: str | None = None):
        """Checkpoints are saved in `checkpoint_dir` and resumed from `resume_dir` (default:
        the same; a non-chief worker saves to a temporary folder, resumes from the chief's)."""
        super().__init__()
        self.val, self.hparams, self.total_epochs = val, hparams, total_epochs
        self.state, self.verbose = state, verbose
        self.history: list[dict[str, Any]] = []
        self.best_weights = None
        self.progress = TrainingProgress(total_epochs)
        self.last_manager = self.best_manager = None
        self.checkpoint_dir = checkpoint_dir
        self.resume_dir = resume_dir or checkpoint_dir

    def attach_checkpoints(self, model: CMGAN):
        if not self.checkpoint_dir:
            return
        optimizers = {**{f"d_{k}": v for k, v in model.discriminator_optimizers.items()},
                      **{f"g_{k}": v for k, v in model.generator_optimizers.items()}}
        last = tf.train.Checkpoint(model=model, state=self.state, **optimizers)
        best = tf.train.Checkpoint(model=model)
        self.last_manager = tf.train.CheckpointManager(
            last, os.path.join(self.checkpoint_dir, "last"), max_to_keep=1)
        self.best_manager = tf.train.CheckpointManager(
            best, os.path.join(self.checkpoint_dir, "best"), max_to_keep=1)

    def restore(self, model: CMGAN) -> int:
        """Resumes from the checkpoint directory; returns the epoch training stopped at."""
        if not self.last_manager:
            return 0
        last = tf.train.latest_checkpoint(os.path.join(self.resume_dir, "last"))
        if not last:
            return 0
        best = tf.train.latest_checkpoint(os.path.join(self.resume_dir, "best"))
        if best:
            self.best_manager.checkpoint.restore(best).expect_partial()
            self.best_weights = _copy_weights(model)
        self.last_manager.checkpoint.restore(last).assert_existing_objects_matched()
        epoch = int(self.state.epoch.numpy())
        log.info("resumed CM-GAN training from %s at epoch %d", last, epoch)
        return epoch

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        record = {"epoch": done, **{k: float(v) for k, v in (logs or {}).items()}}
        if self.val is not None and (done % self.hparams.validate_every == 0
                                     or done == self.total_epochs):
            from models.metrics import retrieval_report

            averaged = bool(self.model.generator_averages)
            if averaged:  # validate, keep and checkpoint the averaged weights
                self.model.swap_generator_averages()
            image_emb, text_emb = embed(self.model, self.val.image, self.val.text)
            report = retrieval_report(image_emb, text_emb, self.val.label)
            record.update({f"val_{k}": v for k, v in report.items()})
            if logs is not None:
                logs.update({f"val_map_{k}": v for k, v in report.items()
                             if k in ("i2t", "t2i", "mean", "all_modal")})
            score = report[SELECTION_METRIC]
            if score > float(self.state.best_score.numpy()):
                self.state.best_score.assign(score)
                self.state.best_epoch.assign(done)
                self.best_weights = _copy_weights(self.model)
                self.state.validations_without_gain.assign(0)
                if self.best_manager:
                    self.best_manager.save(checkpoint_number=done)
            else:
                self.state.validations_without_gain.assign_add(1)
            if averaged:
                self.model.swap_generator_averages()
            patience = self.hparams.early_stopping_patience
            if patience and int(self.state.validations_without_gain) >= patience:
                self.model.stop_training = True
        if self.verbose:  # a live bar on a terminal, else one line per validation
            self.progress.update(done, record, (float(self.state.best_score),
                                                int(self.state.best_epoch)),
                                 final=bool(self.model.stop_training))
        self.history.append(record)
        self.state.epoch.assign(done)
        self.state.stopped_early.assign(bool(self.model.stop_training))
        if self.last_manager:
            self.last_manager.save(checkpoint_number=done)


def train_cmgan(train: Split, val: Split | None, num_classes: int,
                hparams: CMGANHParams = CMGANHParams(), *,
                strategy: str | tf.distribute.Strategy = "default", log_dir: str | None = None,
                checkpoint_dir: str | None = None, verbose: int = 1,
                initial_weights: str | None = None) -> TrainResult:
    """Trains on `train`, selects the epoch on `val`; with ``hparams.refit_on_validation``
    then trains the same seed from the same start on train + val for the chosen epochs and
    returns that model (its checkpoints and logs in a ``refit`` subfolder).

    ``initial_weights``: a ``save_weights`` file of a compatible CMGAN to start from (warm
    start) instead of a fresh initialisation; ignored, with a warning, when incompatible, and
    when a checkpoint is resumed."""
    selected = _train_and_select(train, val, num_classes, hparams, strategy=strategy,
                                 log_dir=log_dir, checkpoint_dir=checkpoint_dir, verbose=verbose,
                                 initial_weights=initial_weights)
    if not hparams.refit_on_validation or val is None:
        return selected
    epochs = selected.best_epoch
    if verbose:
        print(f"refitting on train + validation ({len(train) + len(val)} pairs) for the "
              f"{epochs} epochs validation chose", flush=True)
    # Measured before it was offered: benchmarks/refit_check.py (README).
    refit = _train_and_select(
        pooled([train, val]), None, num_classes,
        hparams.replace(epochs=epochs, early_stopping_patience=0), strategy=selected.strategy,
        log_dir=log_dir and os.path.join(log_dir, "refit"),
        checkpoint_dir=checkpoint_dir and os.path.join(checkpoint_dir, "refit"),
        verbose=verbose, initial_weights=selected.warm_started_from)
    return dataclasses.replace(selected, model=refit.model, refit_epochs=epochs,
                               val_embeddings=embed(refit.model, val.image, val.text))


def _train_and_select(train: Split, val: Split | None, num_classes: int,
                      hparams: CMGANHParams, *, strategy: str | tf.distribute.Strategy,
                      log_dir: str | None, checkpoint_dir: str | None, verbose: int,
                      initial_weights: str | None) -> TrainResult:
    """One training run, keeping the epoch with the best validation MAP (with no `val`: the
    last epoch)."""
    keras.utils.set_random_seed(hparams.seed)
    if isinstance(strategy, str):
        strategy = make_strategy(strategy)
    steps = steps_per_epoch(len(train.label), hparams.batch_size)
    # XLA compiles the whole distributed step for one device, which fails when replicas
    # hold their variables on other devices; so XLA only with a single replica.
    jit_compile = hparams.jit_compile and strategy.num_replicas_in_sync == 1
    if hparams.jit_compile and not jit_compile:
        log.warning("jit_compile ignored: XLA needs a single replica, strategy has %d",
                    strategy.num_replicas_in_sync)
    # Compiling the six-optimizer step takes minutes on CPU and saves ~0.1 s a step at best:
    # a short run is over before XLA pays its compile back.
    if jit_compile and steps * hparams.epochs < XLA_MIN_STEPS:
        jit_compile = False
        log.info("XLA off: %d training steps do not pay back its compile (needs %d)",
                 steps * hparams.epochs, XLA_MIN_STEPS)
    # A non-chief worker of a multi-worker run saves into a temporary folder, deleted at the end.
    scratch_folder = contextlib.ExitStack()
    scratch = (scratch_folder.enter_context(non_chief_scratch(strategy))
               if checkpoint_dir or log_dir else None)
    resume_dir = checkpoint_dir
    if scratch:
        checkpoint_dir = checkpoint_dir and os.path.join(scratch, "checkpoints")
        log_dir = log_dir and os.path.join(scratch, "logs")
    with strategy.scope():
        model = build_model(train.image.shape[1], train.text.shape[1], num_classes, hparams)
        model.compile(steps_per_epoch=steps, jit_compile=jit_compile)
    initial = None
    if val is not None:
        n = min(COMMON_SPACE_SAMPLE, len(val.label))
        initial = embed(model, val.image[:n], val.text[:n])
    state = _TrainingState()
    selection = ValidationSelection(val, hparams, hparams.epochs, state, checkpoint_dir,
                                    verbose, resume_dir=resume_dir)
    selection.attach_checkpoints(model)
    resumed = selection.restore(model)
    warm_started_from = None
    if initial_weights and not resumed:
        try:
            with strategy.scope():
                model.load_weights(initial_weights)
            warm_started_from = initial_weights
        except (ValueError, KeyError, OSError) as error:
            log.warning("warm start from %s skipped (incompatible): %s", initial_weights, error)
    if resumed and verbose:
        print(f"resumed from checkpoint at epoch {resumed}/{hparams.epochs}", flush=True)
    callbacks = [selection]
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir))
    try:
        if resumed < hparams.epochs and not bool(state.stopped_early):
            # Global batches; Keras' fit splits each over the replicas (models.sampling).
            batches = training_batches(train.image, train.text, train.label, hparams,
                                       start_batch=resumed * steps)
            model.fit(batches, epochs=hparams.epochs, initial_epoch=resumed,
                      steps_per_epoch=steps, callbacks=callbacks, verbose=0)
    finally:
        scratch_folder.close()
    best_val: dict[str, float] = {}
    val_embeddings = None
    if selection.best_weights is not None:
        model.set_weights(selection.best_weights)
    elif model.generator_averages:  # no validation: serve the averaged weights
        model.swap_generator_averages()
    if val is not None:
        from models.metrics import retrieval_report

        val_embeddings = embed(model, val.image, val.text)
        best_val = retrieval_report(*val_embeddings, val.label)
    if strategy.num_replicas_in_sync > 1:  # replicas and workers must end alike
        log.info("final CM-GAN weights sha256 %s (%s)", weights_checksum(model), worker_name())
    return TrainResult(model=model, history=selection.history,
                       best_epoch=int(state.best_epoch.numpy()) or hparams.epochs,
                       best_val=best_val, resumed_from_epoch=resumed, strategy=strategy,
                       warm_started_from=warm_started_from, initial_val_embeddings=initial,
                       val_embeddings=val_embeddings)
