"""TFX Trainer entry point (GenericExecutor): ``run_fn='models.trainer.run_fn'``.

Reads the transformed train/val splits into memory, trains CM-GAN with ``models.training``,
and exports the serving model (``models.export``). Checkpoints live in a STABLE folder,
``<checkpoint_root>/<fingerprint>``, keyed by the input artifacts and the hyperparameters, so a
Trainer killed mid-training resumes from its last epoch when the pipeline is run again (the
re-run's cached upstream components hand it the same input artifacts).

custom_config keys: ``hparams`` (dict for CMGANHParams.from_dict), ``strategy``
(default | mirrored | multi_worker), ``checkpoint_root`` (folder; no checkpoints when empty),
``warm_start`` (bool: start from the weights of the Trainer's ``base_model``, the latest blessed
model, when it has compatible ones), ``image_feature_encoder`` (a ``keras:<Application>`` spec
whose features ExampleGen computed in Beam, with ``image_feature_encoder_weights``,
``image_feature_size`` and ``seed``: the same network is built again for ``encode_image_bytes``).

Besides the SavedModel, the Keras weights are written to ``<model artifact>/warm_start/`` so a
later run can warm start from this model.

Under ``multi_worker`` every worker runs ``run_fn`` alike (each replica of a Vertex AI or
Kubeflow training job runs the Trainer's executor); only the chief writes the export, the
reports and the checkpoints, the others write into temporary folders (``output_dirs``) and
return once the chief's writes are done, so the executor's check for the model passes on them.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from models.distribute import (barrier, make_strategy, non_chief_scratch, worker_name,
                               writes_outputs)
from models.encoder_kinds import is_keras
from models.example_codec import read_split
from models.export import export_serving_model
from models.hparams import CMGANHParams
from models.metrics import l2_normalise
from models.preprocessing import num_classes_from_schema
from models.training import train_cmgan

TRAINING_REPORT = "training_report.json"
REFERENCE_EMBEDDINGS = "reference_embeddings.npz"
COMMON_SPACE = "common_space.npz"  # val embeddings before and after training, for the report
NUM_REFERENCE_EXAMPLES = 32
WARM_START_DIR, WARM_START_WEIGHTS = "warm_start", "cmgan.weights.h5"
# Beside Format-Serving in the Model artifact: how the exported model was selected.
SELECTION_RECORD = "selection.json"


def warm_start_weights_path(serving_model_dir: str) -> str:
    """Where the weights of the model exported to ``serving_model_dir`` are kept."""
    return os.path.join(os.path.dirname(serving_model_dir.rstrip("/")), WARM_START_DIR,
                        WARM_START_WEIGHTS)


def selection_record_path(model_uri: str) -> str:
    """The Trainer's record of a Model artifact's selection: epoch, validation report of the
    selection run and, if the model was then refit on train + validation, its epochs (its own
    validation figures are then on pairs it trained on, so the Evaluator blesses on these)."""
    return os.path.join(model_uri, SELECTION_RECORD)


def read_selection_record(model_uri: str) -> dict[str, Any] | None:
    """The record of selection_record_path, or None for a model without one."""
    path = selection_record_path(model_uri)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def checkpoint_fingerprint(fn_args, hparams: CMGANHParams, strategy: str) -> str:
    """Same inputs + same hyperparameters -> same folder; anything else starts fresh."""
    key = json.dumps({
        "train_files": sorted(fn_args.train_files),
        "eval_files": sorted(fn_args.eval_files),
        "transform_output": fn_args.transform_output,
        "hparams": hparams.to_dict(),
        "strategy": strategy,
    }, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def run_fn(fn_args) -> None:
    """Trains, exports to fn_args.serving_model_dir, writes a report to fn_args.model_run_dir."""
    config: dict[str, Any] = dict(fn_args.custom_config or {})
    hparams = CMGANHParams.from_dict(config.get("hparams"))
    strategy_name = config.get("strategy", "default")
    # Before any TensorFlow op: MultiWorkerMirroredStrategy configures the collective ops, which
    # TensorFlow allows only at program start (reading the Transform output below runs ops).
    strategy = make_strategy(strategy_name)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    feature_spec = tf_transform_output.transformed_feature_spec()
    train = read_split(fn_args.train_files, feature_spec)
    val = read_split(fn_args.eval_files, feature_spec)
    num_classes = num_classes_from_schema(tf_transform_output.raw_metadata.schema)

    checkpoint_dir = None
    if config.get("checkpoint_root"):
        fingerprint = checkpoint_fingerprint(fn_args, hparams, strategy_name)
        if config.get("warm_start"):  # a warm start from another model is another training
            fingerprint = hashlib.sha256(
                f"{fingerprint}:warm:{getattr(fn_args, 'base_model', None)}".encode()
            ).hexdigest()[:16]
        checkpoint_dir = os.path.join(config["checkpoint_root"], fingerprint)
    with contextlib.ExitStack() as stack:
        local = stack.enter_context(tempfile.TemporaryDirectory(prefix="cmgan-trainer-"))
        initial_weights = None
        if config.get("warm_start") and getattr(fn_args, "base_model", None):
            source = warm_start_weights_path(fn_args.base_model)
            if tf.io.gfile.exists(source):
                initial_weights = os.path.join(local, "initial", WARM_START_WEIGHTS)
                os.makedirs(os.path.dirname(initial_weights))
                tf.io.gfile.copy(source, initial_weights, overwrite=True)
        scratch = stack.enter_context(non_chief_scratch(strategy, "cmgan-trainer"))
        serving_model_dir, run_dir = output_dirs(fn_args, scratch)
        # A non-chief worker resumes from the chief's checkpoint_dir, saves to its scratch.
        result = train_cmgan(train, val, num_classes, hparams, strategy=strategy,
                             log_dir=run_dir, checkpoint_dir=checkpoint_dir,
                             initial_weights=initial_weights)
        extractor, extractor_size = _image_feature_extractor(config)
        export_serving_model(result.model, tf_transform_output, serving_model_dir, extractor,
                             extractor_size)
        _write_weights(result.model, warm_start_weights_path(serving_model_dir), local)
        warm = fn_args.base_model if result.warm_started_from else None
        _write_report(run_dir, result, hparams, strategy_name, checkpoint_dir, num_classes, warm)
        _write_json(selection_record_path(os.path.dirname(serving_model_dir.rstrip("/"))),
                    {"best_epoch": result.best_epoch, "best_val": result.best_val,
                     "refit_epochs": result.refit_epochs})
        _write_reference_embeddings(run_dir, result, val)
        _write_common_space(run_dir, result, val)
    wait_for_the_chiefs_model(strategy, fn_args.serving_model_dir)


def wait_for_the_chiefs_model(strategy, serving_model_dir: str) -> None:
    """TFX's Trainer executor fails on any worker whose ``serving_model_dir`` does not exist
    when run_fn returns: another worker waits until the chief has written everything, then
    says plainly if it cannot see the chief's model (a pipeline root that is not shared)."""
    barrier(strategy)
    if not writes_outputs(strategy) and not tf.io.gfile.exists(serving_model_dir):
        raise RuntimeError(
            f"{worker_name()}: the chief's model {serving_model_dir} is not visible here; a "
            "multi-worker Trainer needs a pipeline root on storage every worker shares "
            "(gs://, s3://, a shared volume)")


def output_dirs(fn_args, scratch: str | None) -> tuple[str, str]:
    """(serving model dir, model run dir) of this process.

    The chief (or a single process; ``scratch`` None) writes fn_args' folders. Another worker
    of a multi-worker run does every write too (a save may read distributed variables with
    collective ops that all workers must join) but into its ``non_chief_scratch`` folder,
    deleted after, as the TF multi-worker guide prescribes."""
    if scratch is None:
        return fn_args.serving_model_dir, fn_args.model_run_dir
    return os.path.join(scratch, "serving_model"), os.path.join(scratch, "model_run")


def _image_feature_extractor(config: dict[str, Any]):
    """The keras: image encoder Beam ran, rebuilt identically, for ``encode_image_bytes``."""
    spec = config.get("image_feature_encoder") or ""
    if not is_keras(spec):
        return None, None
    from models import keras_image_encoders  # pylint: disable=import-outside-toplevel

    encoder = keras_image_encoders.build_keras_encoder(
        spec, weights=config.get("image_feature_encoder_weights") or "none",
        image_size=config.get("image_feature_size") or None, seed=int(config.get("seed", 0)))
    return encoder.model, encoder.image_size


def _write_common_space(run_dir: str, result, val) -> None:
    """Val embeddings of the untrained and the trained model (L2-normalised), same pairs."""
    if result.initial_val_embeddings is None:
        return
    image_before, text_before = result.initial_val_embeddings
    n = len(image_before)
    image_after, text_after = (e[:n] for e in result.val_embeddings)
    _write_npz(os.path.join(run_dir, COMMON_SPACE), ids=val.ids[:n], labels=val.label[:n],
               image_before=l2_normalise(image_before), text_before=l2_normalise(text_before),
               image_after=l2_normalise(image_after), text_after=l2_normalise(text_after))


def _write_npz(path: str, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()  # np.savez needs a seekable file; GFile (e.g. gs://) is not
    np.savez(buffer, **arrays)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue())


def _write_weights(model, path: str, local_dir: str) -> None:
    """Keras weights for warm starts (save_weights needs a local file, made in ``local_dir``;
    copied for gs:// etc.)."""
    local = os.path.join(local_dir, WARM_START_WEIGHTS)
    model.save_weights(local)
    tf.io.gfile.makedirs(os.path.dirname(path))
    tf.io.gfile.copy(local, path, overwrite=True)


def _write_report(run_dir: str, result, hparams: CMGANHParams, strategy: str,
                  checkpoint_dir: str | None, num_classes: int,
                  warm_started_from: str | None = None) -> None:
    report = {
        "warm_started_from": warm_started_from,
        "resumed_from_epoch": result.resumed_from_epoch,
        "best_epoch": result.best_epoch,
        "best_val": result.best_val,
        "refit_epochs": result.refit_epochs,
        "epochs": hparams.epochs,
        "num_classes": num_classes,
        "strategy": strategy,
        "checkpoint_dir": checkpoint_dir,
        "hparams": hparams.to_dict(),
        "history": result.history,
    }
    _write_json(os.path.join(run_dir, TRAINING_REPORT), report)


def _write_json(path: str, document: dict[str, Any]) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(document, f, indent=2, default=float)


def _write_reference_embeddings(run_dir: str, result, val) -> None:
    """A few val embeddings straight from the Keras model, to check the exported graph against."""
    n = min(NUM_REFERENCE_EXAMPLES, len(val))
    image_emb, text_emb = (e[:n] for e in result.val_embeddings)
    _write_npz(os.path.join(run_dir, REFERENCE_EMBEDDINGS), ids=val.ids[:n],
               image_embedding=l2_normalise(image_emb), text_embedding=l2_normalise(text_emb))
