"""RetrievalEvaluator: cross-modal retrieval MAP and the blessing decision (TFMA has no MAP@all).

It scores the candidate model, the latest blessed model (``baseline_model``, resolved with
``LatestBlessedModelStrategy``), and the CCA and classifier baselines of ``models.baselines`` on
val and test, and writes standard artifacts:

- ``evaluation`` (ModelEvaluation): ``retrieval_metrics.json`` with the MAP table, the decision
  and its reason;
- ``blessing`` (ModelBlessing): custom properties ``blessed`` (1/0), ``current_model(_id)``,
  ``baseline_model(_id)``, ``blessing_message`` and a BLESSED or NOT_BLESSED file, as TFX's
  Evaluator writes them, so the stock Pusher and the resolver accept it.

The candidate is blessed only if its validation mean MAP (mean of image->text and text->image
MAP@all) reaches ``map_threshold`` and is not below the baseline model's by more than
``map_margin``.
"""
from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.retrieval_evaluator.constants import MAP_MARGIN_KEY, MAP_THRESHOLD_KEY, SEED_KEY
from components.retrieval_evaluator.executor import Executor


class RetrievalEvaluatorSpec(ComponentSpec):
    PARAMETERS = {
        MAP_THRESHOLD_KEY: ExecutionParameter(type=float),
        MAP_MARGIN_KEY: ExecutionParameter(type=float),
        SEED_KEY: ExecutionParameter(type=int),
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "transformed_examples": ChannelParameter(type=standard_artifacts.Examples),
        "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph),
        "model": ChannelParameter(type=standard_artifacts.Model),
        "baseline_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


class RetrievalEvaluator(base_component.BaseComponent):
    """Evaluates retrieval MAP on raw val/test examples and blesses (or not) the candidate."""

    SPEC_CLASS = RetrievalEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples: types.BaseChannel, transformed_examples: types.BaseChannel,
                 transform_graph: types.BaseChannel, model: types.BaseChannel,
                 baseline_model: Optional[types.BaseChannel] = None, map_threshold: float = 0.0,
                 map_margin: float = 0.01, seed: int = 0):
        spec = RetrievalEvaluatorSpec(
            examples=examples, transformed_examples=transformed_examples,
            transform_graph=transform_graph, model=model, baseline_model=baseline_model,
            map_threshold=float(map_threshold), map_margin=float(map_margin), seed=int(seed),
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing))
        super().__init__(spec=spec)
