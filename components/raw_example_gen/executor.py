"""RawExampleGen's executor: raw pairs -> validated, decoded, encoded tf.Examples + quarantine.

One Beam pipeline (the runner from the component's beam_pipeline_args):

  records -> [missing id?] -> GroupByKey(id): first CSV row kept, later rows duplicate_id
          -> validate + decode (label, text, image; tagged output 'quarantine')
          -> [keras:* images: RunInference] -> tf.Example per split, in record order
  quarantine -> records.jsonl;  counts (combiners) -> summary.json

Every record ends up either as an example or as one quarantine line, and the summary checks
``records_in == accepted + quarantined``. The run fails after everything is written, only when
the quarantined fraction exceeds ``max_quarantine_fraction``; because TFX deletes a failed
execution's output folders, the quarantine files are then also copied to
``<component dir>/quarantine-rejected/<execution id>/`` and the error names that path.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tfx.components.example_gen import write_split
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs

from components.datasets import SPLITS
from components.datasets.raw_demo import write_raw_demo
from components.datasets.raw_pairs import RawPairs, RawRecord, image_path_problem, \
    read_raw_pairs, split_fractions_for
from components.datasets.registry import RAW_READERS
from components.datasets.wikipedia_raw import read_wikipedia_raw
from components.example_gen.utils import (DATA_DIR_KEY, DATASET_KEY, IMAGE_ENCODER_PROPERTY,
                                          IMAGE_ENCODER_WEIGHTS_PROPERTY, IMAGE_SIZE_PROPERTY,
                                          SEED_KEY, TEXT_ENCODER_PROPERTY, VAL_FRACTION_KEY,
                                          set_dataset_properties)
from models import encoder_kinds
from models.encoder_kinds import CNN, FEATURES, IMAGE, KIM_CNN, TEXT
from models.example_codec import make_example
from models.image_decoding import DEFAULT_MAX_IMAGE_PIXELS, check_image, decode_and_resize

EXAMPLES_KEY = standard_component_specs.EXAMPLES_KEY
QUARANTINE_KEY = "quarantine"
IMAGE_ENCODER_KEY = "image_encoder"
IMAGE_ENCODER_WEIGHTS_KEY = "image_encoder_weights"
IMAGE_SIZE_KEY = "image_size"
TEXT_ENCODER_KEY = "text_encoder"
MAX_QUARANTINE_FRACTION_KEY = "max_quarantine_fraction"
MAX_IMAGE_PIXELS_KEY = "max_image_pixels"

DEFAULT_CNN_IMAGE_SIZE = 32
RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
DEMO_DIR = "raw_demo"
REJECTED_DIR = "quarantine-rejected"
_QUARANTINE = "quarantine"
_METRICS_NAMESPACE = "RawExampleGen"


class QuarantineExceededError(RuntimeError):
    """Too many records were quarantined; the message has the counts and the quarantine path."""


def _torch(spec: str, modality: str) -> bool:
    """True for a torch:* encoder of ``modality``; raises if the optional extra is missing."""
    if not encoder_kinds.is_torch(spec):
        return False
    from components import torch_encoders  # pylint: disable=import-outside-toplevel

    if torch_encoders.modality(spec) != modality:
        raise ValueError(f"{spec!r} is a {torch_encoders.modality(spec)} encoder, not a "
                         f"{modality} encoder")
    torch_encoders.require(spec)
    return True


def check_encoders(dataset: str, image_encoder: str, text_encoder: str) -> None:
    """Combinations this ExampleGen writes; raised at component construction and in Do."""
    from models import keras_image_encoders  # pylint: disable=import-outside-toplevel

    if dataset not in RAW_READERS:
        raise ValueError(f"unknown raw dataset {dataset!r}; expected one of {RAW_READERS}")
    if dataset == "wikipedia_raw":
        if image_encoder != FEATURES:
            raise ValueError("dataset 'wikipedia_raw' has image features only (SIFT-128): "
                             f"image_encoder must be 'features', got {image_encoder!r}")
    elif image_encoder == CNN or _torch(image_encoder, IMAGE):
        pass
    elif encoder_kinds.is_keras(image_encoder):
        keras_image_encoders.parse_keras_encoder(image_encoder)
    else:
        raise ValueError(f"image_encoder {image_encoder!r} is not supported for dataset "
                         f"{dataset!r}; expected 'cnn', 'keras:<Application>' or "
                         "'torch:efficientnet-lite0'")
    if not _torch(text_encoder, TEXT) and encoder_kinds.find(text_encoder, TEXT) is None:
        raise ValueError(f"text_encoder {text_encoder!r} is not supported by RawExampleGen; "
                         f"expected one of {encoder_kinds.names(TEXT)}")
    if text_encoder == FEATURES and dataset != "wikipedia_raw":
        raise ValueError(f"text_encoder 'features' needs precomputed text features, which "
                         f"dataset {dataset!r} does not have; use 'kim_cnn'")


def resolve_image_size(image_encoder: str, image_size: Optional[int]) -> int:
    """Pixels per side: the given size, else 32 for cnn and the app's default for keras:*;
    torch:* image encoders have one fixed size."""
    from models import keras_image_encoders  # pylint: disable=import-outside-toplevel

    if encoder_kinds.is_torch(image_encoder):
        from components import torch_encoders  # pylint: disable=import-outside-toplevel

        fixed = torch_encoders.image_size(image_encoder)
        if image_size and int(image_size) != fixed:
            raise ValueError(f"{image_encoder} takes {fixed}x{fixed} images; image_size "
                             f"{image_size} cannot be used with it")
        return fixed
    if image_size:
        return int(image_size)
    if encoder_kinds.is_keras(image_encoder):
        return keras_image_encoders.default_image_size(image_encoder)
    return DEFAULT_CNN_IMAGE_SIZE if image_encoder == CNN else 0


def load_records(exec_properties: dict[str, Any], demo_dir: str) -> RawPairs:
    """The dataset's records (the demo is written to ``demo_dir`` first when data_dir is empty)."""
    dataset = exec_properties[DATASET_KEY]
    data_dir = exec_properties.get(DATA_DIR_KEY) or None
    seed = int(exec_properties.get(SEED_KEY) or 0)
    val_fraction = float(exec_properties.get(VAL_FRACTION_KEY) or 0.15)
    if dataset == "wikipedia_raw":
        if not data_dir:
            raise ValueError("dataset 'wikipedia_raw' needs data_dir (the Wikipedia folder)")
        return read_wikipedia_raw(data_dir, val_fraction=val_fraction, seed=seed)
    if dataset == "demo" and not data_dir:
        data_dir = str(write_raw_demo(demo_dir, seed=seed))
    if not data_dir:
        raise ValueError(f"dataset {dataset!r} needs data_dir (a folder with pairs.csv)")
    return read_raw_pairs(data_dir, seed=seed, split_fractions=split_fractions_for(val_fraction))


def quarantine_entry(index: int, record: RawRecord, reason: str, field: str, detail: str,
                     source: Optional[str] = None) -> dict[str, Any]:
    """One line of records.jsonl (``index`` orders the file and is dropped when written)."""
    beam.metrics.Metrics.counter(_METRICS_NAMESPACE, f"quarantined_{reason}").inc()
    return {"index": index, "id": record.id, "row": record.row,
            "source": source or record.source, "field": field, "reason": reason,
            "detail": detail, "split": record.split}


@beam.typehints.with_output_types(tuple[str, Any])
class _KeyById(beam.DoFn):
    """(index, record) -> (id, (index, record)); records without an id are quarantined."""

    def process(self, element):
        index, record = element
        if not record.id:
            yield beam.pvalue.TaggedOutput(_QUARANTINE, quarantine_entry(
                index, record, "missing_id", "id", "empty id cell"))
        else:
            yield record.id, (index, record)


@beam.typehints.with_output_types(Any)
class _FirstById(beam.DoFn):
    """Keeps the first CSV row of an id; the later rows are quarantined as duplicate_id."""

    def process(self, element):
        record_id, group = element
        group = sorted(group, key=lambda pair: pair[0])
        first = group[0][1]
        yield group[0]
        for index, record in group[1:]:
            yield beam.pvalue.TaggedOutput(_QUARANTINE, quarantine_entry(
                index, record, "duplicate_id", "id",
                f"id '{record_id}' first appears at row {first.row}"))


@beam.typehints.with_output_types(dict[str, Any])
class _ValidateAndDecode(beam.DoFn):
    """Label, text and image checks (cheap ones first) and decoding of what passes.

    Main output: a candidate dict with ``image`` as raw pixel bytes (cnn), a uint8 array to be
    encoded (keras:*, torch:*) or a feature vector (features), and ``text`` as stripped UTF-8
    bytes (kim_cnn), a stripped str to be encoded (torch:minilm) or a feature vector.
    """

    def __init__(self, class_names, image_encoder: str, image_size: int, text_encoder: str,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self._max_pixels = int(max_image_pixels)
        self._classes = {name: index for index, name in enumerate(class_names)}
        self._class_list = list(class_names)
        self._image_encoder = image_encoder
        self._image_size = int(image_size)
        self._text_encoder = text_encoder
        self._decode = None

    def setup(self):
        if self._image_encoder != FEATURES:
            size = self._image_size
            limit = self._max_pixels
            self._decode = tf.function(lambda data: decode_and_resize(data, size, limit),
                                       input_signature=[tf.TensorSpec([], tf.string)])

    def process(self, element):
        index, record = element
        problem = self._problem(record)
        if problem is None:
            image, problem = self._image(record)
        if problem is not None:
            reason, field, detail, source = problem
            yield beam.pvalue.TaggedOutput(_QUARANTINE, quarantine_entry(
                index, record, reason, field, detail, source))
            return
        if self._text_encoder == KIM_CNN:
            text = record.text.decode("utf-8").strip().encode("utf-8")
        elif self._text_encoder == FEATURES:
            text = np.asarray(record.text_features, dtype=np.float32)
        else:  # torch:minilm, encoded later by RunInference
            text = record.text.decode("utf-8").strip()
        yield {"index": index, "id": record.id, "split": record.split,
               "label": self._classes[record.label], "text": text, "image": image}

    def _problem(self, record: RawRecord):
        """(reason, field, detail, source) of the first label/text problem, or None."""
        if record.problem is not None:
            reason, field, detail = record.problem
            return reason, field, detail, record.text_source
        if not record.label:
            return "missing_label", "label", "empty label cell", None
        if record.label not in self._classes:
            shown = ", ".join(self._class_list[:10]) + (", ..." if len(self._class_list) > 10
                                                        else "")
            return ("unknown_label", "label", f"label '{record.label}' is not one of the "
                    f"{len(self._class_list)} classes ({shown})", None)
        try:
            text = record.text.decode("utf-8")
        except UnicodeDecodeError as err:
            return ("non_utf8_text", "text", f"not UTF-8: {err.reason} at byte {err.start} "
                    f"({record.text[err.start:err.start + 4]!r})", record.text_source)
        if not text.strip():
            return ("empty_text", "text", "empty" if not text else "whitespace only",
                    record.text_source)
        return None

    def _image(self, record: RawRecord):
        """(image value, None) or (None, problem)."""
        if self._image_encoder == FEATURES:
            return np.asarray(record.image_features, dtype=np.float32), None
        path = record.image_path
        if not path:
            return None, ("missing_image_file", "image", "empty image cell", None)
        folder = record.root or os.path.dirname(record.source)
        outside = image_path_problem(folder, record.image)
        if outside is not None:  # checked before anything is opened: no bytes are read
            return None, (*outside, path)
        if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
            return None, ("missing_image_file", "image",
                          f"no file '{record.image}' (in {os.path.dirname(record.source)})", path)
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
        bad = check_image(data, self._max_pixels)
        if bad is not None:
            return None, (bad[0], "image", bad[1], path)
        try:
            pixels = self._decode(tf.constant(data)).numpy()
        except tf.errors.OpError as err:  # the stricter Pillow check passed; TF still refused
            return None, ("unreadable_image", "image",
                          f"TensorFlow cannot decode it: {err.message}", path)
        return (pixels.tobytes() if self._image_encoder == CNN else pixels), None


def to_example(candidate: dict[str, Any]) -> bytes:
    """The serialized tf.Example (models/example_codec.py) of an accepted candidate."""
    return make_example(candidate["image"], candidate["text"], candidate["label"],
                        candidate["id"]).SerializeToString()


def _in_index_order(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: item["index"])


def _quarantine_line(entry: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in entry.items() if k != "index"}, sort_keys=False)


def _summary(_, records_in, split_counts, reason_counts, quarantined_splits, image_dims,
             dataset: str) -> str:
    accepted_by_split = {s: 0 for s in SPLITS}
    accepted_by_split.update(dict(split_counts))
    by_reason = dict(sorted(reason_counts))
    accepted = sum(accepted_by_split.values())
    quarantined = sum(by_reason.values())
    return json.dumps({
        "dataset": dataset, "records_in": int(records_in), "accepted": accepted,
        "quarantined": quarantined, "by_reason": by_reason,
        "accepted_by_split": accepted_by_split,
        "quarantined_by_split": dict(sorted(quarantined_splits)),
        "quarantined_fraction": quarantined / records_in if records_in else 0.0,
        "image_dim": sorted(image_dims)[0] if image_dims else 0,
    }, indent=1)


def _encoded(candidates: beam.PCollection, field: str, handler) -> beam.PCollection:
    """Replace ``field`` of every candidate by its encoding, batched by RunInference."""
    from apache_beam.ml.inference.base import (  # pylint: disable=import-outside-toplevel
        KeyedModelHandler, RunInference)

    name = field.capitalize()
    return (candidates
            | f"SplitOff{name}" >> beam.Map(
                lambda c: ({k: v for k, v in c.items() if k != field}, c[field]))
            | f"Encode{name}" >> RunInference(KeyedModelHandler(handler))
            | f"Join{name}" >> beam.MapTuple(
                lambda c, vector: {**c, field: np.asarray(vector, np.float32)}))


def build_pipeline(pipeline: beam.Pipeline, pairs: RawPairs, *, image_encoder: str,
                   image_size: int, text_encoder: str, weights: str, seed: int,
                   examples_uri: str, quarantine_uri: str,
                   max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Adds the whole RawExampleGen graph to ``pipeline`` (see the module docstring)."""
    records = pipeline | "Records" >> beam.Create(list(enumerate(pairs.records)), reshuffle=False)
    keyed = records | "KeyById" >> beam.ParDo(_KeyById()).with_outputs(_QUARANTINE, main="keyed")
    unique = (keyed.keyed
              | "GroupById" >> beam.GroupByKey()
              | "FirstById" >> beam.ParDo(_FirstById()).with_outputs(_QUARANTINE, main="unique"))
    checked = (unique.unique
               | "ValidateAndDecode" >> beam.ParDo(_ValidateAndDecode(
                   pairs.class_names, image_encoder, image_size, text_encoder,
                   max_image_pixels)).with_outputs(
                       _QUARANTINE, main="valid"))
    accepted = checked.valid
    if encoder_kinds.is_keras(image_encoder):
        from components.keras_encoders import \
            KerasImageEncoderHandler  # pylint: disable=import-outside-toplevel

        accepted = _encoded(accepted, "image", KerasImageEncoderHandler(
            image_encoder, weights, image_size, seed))
    elif encoder_kinds.is_torch(image_encoder):
        from components import torch_encoders  # pylint: disable=import-outside-toplevel

        accepted = _encoded(accepted, "image", torch_encoders.model_handler(image_encoder))
    if encoder_kinds.is_torch(text_encoder):
        from components import torch_encoders  # pylint: disable=import-outside-toplevel

        accepted = _encoded(accepted, "text", torch_encoders.model_handler(text_encoder))

    for split in SPLITS:
        (accepted
         | f"Only[{split}]" >> beam.Filter(lambda c, s=split: c["split"] == s)
         | f"Collect[{split}]" >> beam.combiners.ToList()
         | f"InRecordOrder[{split}]" >> beam.FlatMap(_in_index_order)
         | f"ToExample[{split}]" >> beam.Map(to_example)
         | f"Write[{split}]" >> beam.io.WriteToTFRecord(
             os.path.join(examples_uri, f"Split-{split}",
                          write_split.DEFAULT_FILE_NAME),
             file_name_suffix=".gz", num_shards=1))

    quarantined = ((keyed[_QUARANTINE], unique[_QUARANTINE], checked[_QUARANTINE])
                   | "AllQuarantined" >> beam.Flatten())
    (quarantined
     | "CollectQuarantine" >> beam.combiners.ToList()
     | "QuarantineInRecordOrder" >> beam.FlatMap(_in_index_order)
     | "ToJsonLine" >> beam.Map(_quarantine_line)
     | "WriteQuarantine" >> beam.io.WriteToText(
         os.path.join(quarantine_uri, RECORDS_FILE), shard_name_template="", num_shards=1))

    records_in = records | "CountIn" >> beam.combiners.Count.Globally()
    split_counts = (accepted | "AcceptedSplit" >> beam.Map(lambda c: c["split"])
                    | "CountBySplit" >> beam.combiners.Count.PerElement())
    reason_counts = (quarantined | "Reason" >> beam.Map(lambda q: q["reason"])
                     | "CountByReason" >> beam.combiners.Count.PerElement())
    quarantined_splits = (quarantined | "QuarantinedSplit" >> beam.Map(lambda q: q["split"])
                          | "CountQuarantinedBySplit" >> beam.combiners.Count.PerElement())
    image_dims = (accepted | "ImageDim" >> beam.Map(
        lambda c: len(c["image"]) if isinstance(c["image"], bytes) else int(np.size(c["image"])))
        | "DistinctDims" >> beam.Distinct())
    (pipeline
     | "SummaryTrigger" >> beam.Create([None])
     | "Summarise" >> beam.Map(
         _summary, records_in=beam.pvalue.AsSingleton(records_in),
         split_counts=beam.pvalue.AsList(split_counts),
         reason_counts=beam.pvalue.AsList(reason_counts),
         quarantined_splits=beam.pvalue.AsList(quarantined_splits),
         image_dims=beam.pvalue.AsList(image_dims), dataset=pairs.name)
     | "WriteSummary" >> beam.io.WriteToText(os.path.join(quarantine_uri, SUMMARY_FILE),
                                             shard_name_template="", num_shards=1))


class Executor(base_beam_executor.BaseBeamExecutor):
    """Reads the raw dataset, runs the Beam graph, records properties, enforces the threshold."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        quarantine = artifact_utils.get_single_instance(output_dict[QUARANTINE_KEY])
        dataset = exec_properties[DATASET_KEY]
        image_encoder = exec_properties[IMAGE_ENCODER_KEY]
        text_encoder = exec_properties[TEXT_ENCODER_KEY]
        check_encoders(dataset, image_encoder, text_encoder)
        image_size = resolve_image_size(image_encoder, exec_properties.get(IMAGE_SIZE_KEY))
        weights = exec_properties.get(IMAGE_ENCODER_WEIGHTS_KEY) or "none"
        seed = int(exec_properties.get(SEED_KEY) or 0)
        max_fraction = float(exec_properties.get(MAX_QUARANTINE_FRACTION_KEY, 0.05))
        max_pixels = int(exec_properties.get(MAX_IMAGE_PIXELS_KEY) or DEFAULT_MAX_IMAGE_PIXELS)

        pairs = load_records(exec_properties, os.path.join(examples.uri, DEMO_DIR))
        logging.info("RawExampleGen: %d records of %s, %d classes", len(pairs.records),
                     pairs.name, len(pairs.class_names))
        examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
        with self._make_beam_pipeline() as pipeline:
            build_pipeline(pipeline, pairs, image_encoder=image_encoder, image_size=image_size,
                           text_encoder=text_encoder, weights=weights, seed=seed,
                           examples_uri=examples.uri, quarantine_uri=quarantine.uri,
                           max_image_pixels=max_pixels)

        summary = json.loads(tf.io.gfile.GFile(
            os.path.join(quarantine.uri, SUMMARY_FILE)).read())
        records_path = os.path.join(quarantine.uri, RECORDS_FILE)
        self._set_properties(examples, quarantine, pairs, summary, image_encoder, weights,
                             image_size, text_encoder)
        records_in, accepted, quarantined = (summary["records_in"], summary["accepted"],
                                             summary["quarantined"])
        if records_in != accepted + quarantined:  # a bug here, never bad input
            raise RuntimeError(f"RawExampleGen lost records: {records_in} in, {accepted} "
                               f"accepted + {quarantined} quarantined; see {records_path}")
        if quarantined:
            logging.warning("RawExampleGen: %d of %d records quarantined (%s); details in %s",
                            quarantined, records_in,
                            ", ".join(f"{r}: {n}" for r, n in summary["by_reason"].items()),
                            records_path)
        for split, count in summary["accepted_by_split"].items():
            if count == 0:
                logging.warning("RawExampleGen: split '%s' has no accepted examples", split)
        if records_in and quarantined / records_in > max_fraction:
            kept = _keep_rejected(quarantine.uri)
            raise QuarantineExceededError(
                f"RawExampleGen: {quarantined} of {records_in} records quarantined "
                f"({quarantined / records_in:.1%}) > max_quarantine_fraction "
                f"{max_fraction:.1%}; by reason: {json.dumps(summary['by_reason'])}; "
                f"accepted {accepted}. Quarantined records: "
                f"{os.path.join(kept, RECORDS_FILE)} (summary: "
                f"{os.path.join(kept, SUMMARY_FILE)})")

    @staticmethod
    def _set_properties(examples, quarantine, pairs: RawPairs, summary: dict, image_encoder: str,
                        weights: str, image_size: int, text_encoder: str) -> None:
        """FeatureExampleGen's custom properties plus the encoders and the payload format."""
        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(
            examples, write_split.to_file_format_str(example_gen_pb2.FORMAT_TFRECORDS_GZIP))
        text_dim = 0
        if text_encoder == FEATURES:
            text_dim = int(np.size(pairs.records[0].text_features))
        elif encoder_kinds.is_torch(text_encoder):
            from components import torch_encoders  # pylint: disable=import-outside-toplevel

            text_dim = torch_encoders.output_dim(text_encoder)
        set_dataset_properties(examples, len(pairs.class_names), list(pairs.class_names),
                               int(summary["image_dim"]), text_dim)
        if image_size:
            examples.set_int_custom_property(IMAGE_SIZE_PROPERTY, int(image_size))
        examples.set_string_custom_property(IMAGE_ENCODER_PROPERTY, image_encoder)
        examples.set_string_custom_property(IMAGE_ENCODER_WEIGHTS_PROPERTY, weights)
        examples.set_string_custom_property(TEXT_ENCODER_PROPERTY, text_encoder)
        for key in ("records_in", "accepted", "quarantined"):
            quarantine.set_int_custom_property(key, int(summary[key]))
        quarantine.set_string_custom_property("by_reason", json.dumps(summary["by_reason"]))


def _keep_rejected(quarantine_uri: str) -> str:
    """Copy the quarantine files where TFX's clean-up of a failed execution does not reach."""
    execution_dir = quarantine_uri.rstrip("/")
    target = os.path.join(os.path.dirname(os.path.dirname(execution_dir)), REJECTED_DIR,
                          os.path.basename(execution_dir))
    tf.io.gfile.makedirs(target)
    for name in (RECORDS_FILE, SUMMARY_FILE):
        tf.io.gfile.copy(os.path.join(quarantine_uri, name), os.path.join(target, name),
                         overwrite=True)
    return target
