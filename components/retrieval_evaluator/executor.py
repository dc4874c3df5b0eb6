"""Executor of RetrievalEvaluator (see component.py for the contract).

Models are scored through their exported serving signatures on RAW examples, exactly as TF
Serving would run them, so the candidate and an older baseline model (with its own Transform
graph inside) are compared fairly. CCA and the classifier baseline are fitted on the
transformed train split, tuned on val, and scored on the same transformed splits.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils, path_utils

from components.datasets import SPLITS, FeatureDataset, Split
from components.datasets.types import default_class_names
from components.example_gen.utils import pixel_image_size
from components.retrieval_evaluator.constants import (EVAL_SPLITS, EVALUATION_FILE,
                                                      MAP_MARGIN_KEY, MAP_THRESHOLD_KEY,
                                                      MEAN_MAP_PROPERTY, SEED_KEY)
from models.baselines import baseline_features, baseline_reports
from models.example_codec import read_split, split_files
from models.export import load_serving_model
from models.metrics import SELECTION_METRIC, SELECTION_SPLIT, retrieval_report
from models.preprocessing import IMAGE_KEY, TEXT_KEY, num_classes_from_schema
from models.trainer import read_selection_record
from serving.search_model import encode


def blessing_decision(candidate: float, baseline: float | None, threshold: float,
                      margin: float) -> tuple[bool, str]:
    """(blessed, reason) from validation mean MAPs of the candidate and the baseline model."""
    if candidate < threshold:
        return False, (f"NOT blessed: validation mean MAP {candidate:.4f} is below the threshold "
                       f"{threshold:.4f}")
    if baseline is not None and candidate < baseline - margin:
        return False, (f"NOT blessed: validation mean MAP {candidate:.4f} is worse than the "
                       f"baseline model's {baseline:.4f} by more than the margin {margin:.4f}")
    versus = ("no blessed baseline model yet" if baseline is None else
              f"baseline model {baseline:.4f}, margin {margin:.4f}")
    return True, (f"blessed: validation mean MAP {candidate:.4f} >= threshold {threshold:.4f}; "
                  f"{versus}")


def embed_with_saved_model(model_dir: str, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings from the exported ``encode_image``/``encode_text`` signatures."""
    loaded = load_serving_model(model_dir)
    try:
        return encode(loaded, IMAGE_KEY, split.image), encode(loaded, TEXT_KEY, split.text)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as error:
        raise ValueError(f"model {model_dir} does not take these examples: {error}") from error


def evaluate_saved_model(model_dir: str, splits: dict[str, Split]) -> dict[str, dict]:
    return {name: retrieval_report(*embed_with_saved_model(model_dir, split), split.label)
            for name, split in splits.items()}


def evaluate_feature_baselines(transformed: dict[str, Split], num_classes: int,
                               seed: int, refit: bool = False) -> dict[str, dict[str, dict]]:
    """CCA and classifier reports on the eval splits, fitted on train and tuned on val (then
    refit on train + val if `refit`, as the candidate was). Token ids and pixels are first
    turned into baseline features (models.baselines)."""
    transformed = baseline_features(transformed, seed)
    dataset = FeatureDataset("transformed", transformed, default_class_names(num_classes))
    return baseline_reports(dataset, EVAL_SPLITS, seed=seed, refit=refit)


def refit_record(model) -> dict[str, Any] | None:
    """The Trainer's selection record of a model refit on train + val, else None: such a model
    has seen the validation pairs, so its validation figures are its selection run's."""
    record = read_selection_record(model.uri)
    return record if record and record.get("refit_epochs") else None


class Executor(base_executor.BaseExecutor):
    """Writes the MAP table (ModelEvaluation) and the blessing (ModelBlessing)."""

    def Do(self, input_dict: dict[str, list], output_dict: dict[str, list],
           exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        get = artifact_utils.get_single_instance
        examples, transformed_examples = get(input_dict["examples"]), get(
            input_dict["transformed_examples"])
        model = get(input_dict["model"])
        tf_transform_output = tft.TFTransformOutput(get(input_dict["transform_graph"]).uri)
        image_size = pixel_image_size(examples)
        raw = {s: read_split(split_files(examples.uri, s), tf_transform_output.raw_feature_spec(),
                             image_size=image_size or None)
               for s in EVAL_SPLITS}
        transformed = {s: read_split(split_files(transformed_examples.uri, s),
                                     tf_transform_output.transformed_feature_spec())
                       for s in SPLITS}

        methods = {"cmgan": evaluate_saved_model(_serving_dir(model), raw)}
        baseline_model = (input_dict.get("baseline_model") or [None])[0]
        baseline_note = None
        if baseline_model is not None:
            try:
                methods["baseline_model"] = evaluate_saved_model(_serving_dir(baseline_model), raw)
            except (ValueError, KeyError) as error:  # e.g. trained on features of another size
                baseline_note = f"baseline model {baseline_model.uri} not compared: {error}"
                logging.warning(baseline_note)
        refits = {name: refit_record(artifact) for name, artifact in
                  (("cmgan", model), ("baseline_model", baseline_model)) if name in methods}
        refits = {name: record for name, record in refits.items() if record}
        for name, record in refits.items():
            methods[name][SELECTION_SPLIT] = record["best_val"]
        methods.update(evaluate_feature_baselines(
            transformed, num_classes_from_schema(tf_transform_output.raw_metadata.schema),
            int(exec_properties.get(SEED_KEY, 0)), refit="cmgan" in refits))

        baseline_score = methods.get("baseline_model", {}).get(SELECTION_SPLIT, {}).get(
            SELECTION_METRIC)
        blessed, reason = blessing_decision(
            methods["cmgan"][SELECTION_SPLIT][SELECTION_METRIC], baseline_score,
            float(exec_properties[MAP_THRESHOLD_KEY]), float(exec_properties[MAP_MARGIN_KEY]))
        if refits:
            epochs = ", ".join(f"{'candidate' if name == 'cmgan' else 'baseline model'} "
                               f"{record['refit_epochs']}" for name, record in refits.items())
            reason += (" (validation figures of the selection run; refit on train + val for "
                       f"the chosen epochs: {epochs})")
        if baseline_note:
            reason += f" ({baseline_note})"
        logging.info("RetrievalEvaluator: %s", reason)

        evaluation = get(output_dict["evaluation"])
        result = {
            "blessed": blessed, "reason": reason,
            "map_threshold": float(exec_properties[MAP_THRESHOLD_KEY]),
            "map_margin": float(exec_properties[MAP_MARGIN_KEY]),
            "selection": f"{SELECTION_SPLIT} {SELECTION_METRIC} MAP@all",
            "candidate_model": model.uri,
            "baseline_model": baseline_model.uri if baseline_model is not None else None,
            "methods": methods,
        }
        io_utils.write_string_file(os.path.join(evaluation.uri, EVALUATION_FILE),
                                   json.dumps(result, indent=2, sort_keys=True))
        for split in EVAL_SPLITS:
            evaluation.set_float_custom_property(MEAN_MAP_PROPERTY.format(split=split),
                                                 methods["cmgan"][split]["mean"])
        self._write_blessing(get(output_dict["blessing"]), blessed, reason, model, baseline_model)

    @staticmethod
    def _write_blessing(blessing, blessed: bool, reason: str, model, baseline_model) -> None:
        """As TFX's Evaluator does, so Pusher and LatestBlessedModelStrategy understand it."""
        c = evaluator_constants
        blessing.set_string_custom_property(c.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
        blessing.set_int_custom_property(c.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
        if baseline_model is not None:
            blessing.set_string_custom_property(c.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY,
                                                baseline_model.uri)
            blessing.set_int_custom_property(c.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY,
                                             baseline_model.id)
        blessing.set_string_custom_property(c.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY, reason)
        marker = c.BLESSED_FILE_NAME if blessed else c.NOT_BLESSED_FILE_NAME
        io_utils.write_string_file(os.path.join(blessing.uri, marker), "")
        blessing.set_int_custom_property(c.ARTIFACT_PROPERTY_BLESSED_KEY,
                                         c.BLESSED_VALUE if blessed else c.NOT_BLESSED_VALUE)


def _serving_dir(model) -> str:
    return path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
