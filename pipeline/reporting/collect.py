"""Everything ``cmgan report`` shows about one pipeline run, read from ML Metadata and the
run's artifacts: the evaluator's MAP table and blessing, the Trainer's training report and
common-space sample, the pushed versions, the data, and embeddings of the val/test examples.

Embeddings come from the Trainer's exported SavedModel (``serving_default`` on the serialized
examples of the ExampleGen's artifact), i.e. exactly what TF Serving would compute.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Optional

import numpy as np

from components.example_gen import utils as u
from components.retrieval_evaluator.constants import EVALUATION_FILE
from models.encoder_kinds import CNN
from pipeline import history, node_ids
from pipeline.history import RunArtifacts
from pipeline.metadata import properties

TRAINING_REPORT = "training_report.json"
COMMON_SPACE_FILE = "common_space.npz"
COMMON_SPACE_MAX_ITEMS = 1000
ENCODE_BATCH = 512
SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class Examples:
    """One split of the Examples artifact, as the report needs it."""

    ids: np.ndarray  # str [N]
    labels: np.ndarray  # int64 [N]
    serialized: list[bytes]
    image_values: list[Any]  # bytes (raw pixels or an encoded image) or None (features)
    text_values: list[Optional[str]]  # the UTF-8 text, or None (features)

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass
class Embeddings:
    """L2-normalised common-space vectors of one split, per modality."""

    image: np.ndarray
    text: np.ndarray


@dataclasses.dataclass
class ReportData:
    pipeline_name: str
    metadata_path: str
    run: RunArtifacts
    evaluation: dict[str, Any]
    training: Optional[dict[str, Any]]
    model_uri: str
    model_dir: str  # the exported SavedModel
    model_run_dir: Optional[str]  # TensorBoard logs, training_report.json
    pushed: dict[str, Any]
    search: dict[str, Any]
    data: dict[str, Any]  # dataset, data_dir, class_names, dims, image_size, split sizes
    examples: dict[str, Examples]  # val, test
    embeddings: dict[str, dict[str, Embeddings]]  # method -> split -> embeddings
    common_space: dict[str, np.ndarray]  # common_space.npz, or "after" computed here
    common_space_source: str

    def class_name(self, label: int) -> str:
        names = self.data.get("class_names") or []
        return names[label] if 0 <= label < len(names) else f"class {label}"


def serving_dir(model_uri: str) -> str:
    """The SavedModel folder of a TFX Model artifact (``Format-Serving`` in the TFX layout)."""
    candidate = os.path.join(model_uri, "Format-Serving")
    return candidate if os.path.isdir(candidate) else model_uri


def read_examples(examples_uri: str, split: str, limit: Optional[int] = None) -> Examples:
    """Records of one split, parsed generically: the image/text features may be float
    vectors (feature datasets) or bytes (raw pixels / encoded image, UTF-8 text)."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    if not files:
        raise FileNotFoundError(f"no files for split '{split}' under {examples_uri}")
    ids, labels, serialized, images, texts = [], [], [], [], []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        if limit is not None and len(ids) >= limit:
            break
        example = tf.train.Example.FromString(record)
        feature = example.features.feature
        ids.append(feature["id"].bytes_list.value[0].decode() if "id" in feature
                   else f"{split}-{len(ids)}")
        labels.append(int(feature["label"].int64_list.value[0]))
        serialized.append(record)
        image = feature["image"] if "image" in feature else None
        images.append(image.bytes_list.value[0] if image is not None
                      and image.WhichOneof("kind") == "bytes_list" and image.bytes_list.value
                      else None)
        text = feature["text"] if "text" in feature else None
        texts.append(text.bytes_list.value[0].decode("utf-8", "replace") if text is not None
                     and text.WhichOneof("kind") == "bytes_list" and text.bytes_list.value
                     else None)
    return Examples(ids=np.array(ids, dtype=str), labels=np.array(labels, np.int64),
                    serialized=serialized, image_values=images, text_values=texts)


def count_records(examples_uri: str, split: str) -> Optional[int]:
    import tensorflow as tf

    files = tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
    if not files:
        return None
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def embed_examples(model_dir: str, examples: Examples) -> Embeddings:
    """``serving_default`` of an exported model on serialized tf.Examples, in batches."""
    import tensorflow as tf

    from models import signatures as names
    from models.export import load_serving_model

    signature = load_serving_model(model_dir).signatures[names.SERVING_DEFAULT]
    image, text = [], []
    for start in range(0, len(examples), ENCODE_BATCH):
        batch = tf.constant(examples.serialized[start:start + ENCODE_BATCH])
        out = signature(**{names.EXAMPLES_KEY: batch})
        image.append(out[names.IMAGE_EMBEDDING_KEY].numpy())
        text.append(out[names.TEXT_EMBEDDING_KEY].numpy())
    return Embeddings(np.concatenate(image), np.concatenate(text))


def _read_json(path: str) -> Optional[dict]:
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _read_npz(path: str) -> Optional[dict[str, np.ndarray]]:
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        with np.load(io.BytesIO(f.read()), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}


def collect(metadata_path: str, pipeline_name: str, run: str = "LATEST") -> ReportData:
    """Reads one run (see ``history.find_run``) and computes the embeddings the plots need."""
    found = history.find_run(metadata_path, pipeline_name, run)
    evaluation_artifact = found.artifact(node_ids.EVALUATOR, "evaluation")
    if evaluation_artifact is None or not found.completed(node_ids.EVALUATOR):
        raise LookupError(f"run {found.number} ({found.run_id}) has no completed "
                          f"{node_ids.EVALUATOR}: nothing to report")
    evaluation = _read_json(os.path.join(evaluation_artifact.uri, EVALUATION_FILE))
    if evaluation is None:
        raise FileNotFoundError(f"{EVALUATION_FILE} missing in {evaluation_artifact.uri}")

    model = found.artifact(node_ids.TRAINER, "model")
    model_uri = model.uri if model is not None else evaluation["candidate_model"]
    model_run = found.artifact(node_ids.TRAINER, "model_run")
    model_run_dir = model_run.uri if model_run is not None else None
    training = _read_json(os.path.join(model_run_dir, TRAINING_REPORT)) if model_run_dir else None

    pushed_artifact = found.artifact(node_ids.PUSHER, "pushed_model")
    pushed = properties(pushed_artifact) if pushed_artifact is not None else {}
    search_artifact = found.artifact(node_ids.GALLERY_SEARCH, "search_model")
    search = properties(search_artifact) if search_artifact is not None else {}

    examples_artifact = found.artifact(node_ids.FEATURE_EXAMPLE_GEN, "examples")
    if examples_artifact is None:  # ImportExampleGen (dataset "examples") has another id
        examples_artifact = next((a for node, outputs in found.outputs.items()
                                  if node_ids.is_example_gen(node)
                                  for a in outputs.get("examples", [])), None)
    if examples_artifact is None:
        raise LookupError(f"run {found.number} has no Examples artifact")
    data = properties(examples_artifact)
    gen_node = next((n for n in found.executions if node_ids.is_example_gen(n)), None)
    gen_props = properties(found.executions[gen_node]) if gen_node else {}
    class_names = (json.loads(data[u.CLASS_NAMES_PROPERTY])
                   if data.get(u.CLASS_NAMES_PROPERTY) else [])
    image_encoder = data.get(u.IMAGE_ENCODER_PROPERTY)
    data = {
        "dataset": gen_props.get(u.DATASET_KEY, "examples"),
        "data_dir": gen_props.get(u.DATA_DIR_KEY) or gen_props.get("input_base"),
        "class_names": class_names, "num_classes": data.get(u.NUM_CLASSES_PROPERTY),
        "image_dim": data.get(u.IMAGE_DIM_PROPERTY), "text_dim": data.get(u.TEXT_DIM_PROPERTY),
        # Raw pixels only with the cnn encoder (keras:/torch: examples hold feature vectors).
        "image_size": data.get(u.IMAGE_SIZE_PROPERTY) if image_encoder == CNN else None,
        "image_encoder": image_encoder, "text_encoder": data.get(u.TEXT_ENCODER_PROPERTY),
        "spans": json.loads(data[u.SPANS_PROPERTY]) if data.get(u.SPANS_PROPERTY) else None,
        "eval_span": data.get(u.EVAL_SPAN_PROPERTY), "uri": examples_artifact.uri,
        "split_sizes": {s: count_records(examples_artifact.uri, s) for s in SPLITS},
    }

    examples = {s: read_examples(examples_artifact.uri, s) for s in ("val", "test")}
    model_dir = serving_dir(model_uri)
    embeddings = {"cmgan": {s: embed_examples(model_dir, e) for s, e in examples.items()}}
    if "baseline_model" in evaluation.get("methods", {}) and evaluation.get("baseline_model"):
        try:
            embeddings["baseline_model"] = {
                "test": embed_examples(serving_dir(evaluation["baseline_model"]),
                                       examples["test"])}
        except (OSError, ValueError, KeyError):  # e.g. removed, or other feature sizes
            pass
    if not data["num_classes"]:
        data["num_classes"] = int(max(examples["test"].labels.max(),
                                      examples["val"].labels.max()) + 1)

    common_space = _read_npz(os.path.join(model_run_dir, COMMON_SPACE_FILE)) \
        if model_run_dir else None
    source = f"{COMMON_SPACE_FILE} written by the Trainer"
    if common_space is None or "image_after" not in common_space:
        val, n = embeddings["cmgan"]["val"], min(COMMON_SPACE_MAX_ITEMS, len(examples["val"]))
        common_space = {"ids": examples["val"].ids[:n], "labels": examples["val"].labels[:n],
                        "image_after": val.image[:n], "text_after": val.text[:n]}
        source = "validation examples encoded with the exported model (no 'before' sample)"
    return ReportData(
        pipeline_name=pipeline_name, metadata_path=metadata_path, run=found,
        evaluation=evaluation, training=training, model_uri=model_uri, model_dir=model_dir,
        model_run_dir=model_run_dir, pushed=pushed, search=search, data=data,
        examples=examples, embeddings=embeddings, common_space=common_space,
        common_space_source=source)
