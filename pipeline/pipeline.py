"""The CM-GAN retrieval pipeline definition: one pure function from arguments to a TFX Pipeline.

ExampleGen -> StatisticsGen -> SchemaGen (train only) -> SchemaCurator -> ExampleValidator ->
AnomaliesGate -> Transform (z-scores) -> Trainer (CM-GAN) -> RetrievalEvaluator (vs. the latest
blessed model, CCA and classifier) -> Pusher (TF Serving layout) -> GallerySearch (the search
companion servable ``<model_name>-search/<same version>``).

Components are referenced by dotted paths into the installed package (no module_file), so the
same definition runs under LocalDagRunner and compiles for Kubeflow Pipelines V2.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from components.anomalies_gate import AnomaliesGate
from components.datasets import SPLITS
from components.feature_example_gen import FeatureExampleGen
from components.gallery_search import GallerySearch
from components.retrieval_evaluator import RetrievalEvaluator
from components.schema_curator import SchemaCurator

PREPROCESSING_FN = "models.preprocessing.preprocessing_fn"
RUN_FN = "models.trainer.run_fn"
TRAIN_SPLIT, EVAL_SPLIT = "train", "val"


def _example_gen(dataset: str, data_dir: Optional[str], seed: int, val_fraction: float,
                 span_pattern: Optional[str] = None, span_window: int = 1,
                 eval_span: str = "first"):
    if dataset == "examples":
        # Pre-built tf.Example TFRecords in <data_dir>/{train,val,test}/.
        return tfx.components.ImportExampleGen(
            input_base=data_dir,
            input_config=tfx.proto.Input(splits=[
                tfx.proto.Input.Split(name=s, pattern=f"{s}/*") for s in SPLITS]))
    spans = ({"span_pattern": span_pattern, "span_window": span_window,
              "eval_span": eval_span} if span_pattern else {})
    return FeatureExampleGen(dataset=dataset, data_dir=data_dir, seed=seed,
                             val_fraction=val_fraction, **spans)


def create_pipeline(
        *,
        pipeline_name: str,
        pipeline_root: str,
        dataset: str,
        data_dir: Optional[str],
        push_directory: str,
        hparams: Mapping[str, Any],
        checkpoint_root: str,
        strategy: str = "default",
        map_threshold: float = 0.0,
        map_margin: float = 0.01,
        seed: int = 0,
        val_fraction: float = 0.15,
        beam_pipeline_args: Sequence[str] = (),
        metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
        enable_cache: bool = True,
        search_directory: Optional[str] = None,
        gallery_splits: Sequence[str] = ("test",),
        gallery_dir: Optional[str] = None,
        span_pattern: Optional[str] = None,
        span_window: int = 1,
        eval_span: str = "first",
        warm_start: bool = False,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline; does no I/O. ``push_directory`` is ``<serving_root>/<model_name>``;
    ``search_directory`` (None: no GallerySearch) the search companion's base path."""
    example_gen = _example_gen(dataset, data_dir, seed, val_fraction, span_pattern, span_window,
                               eval_span)
    examples = example_gen.outputs["examples"]

    statistics_gen = tfx.components.StatisticsGen(examples=examples)
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True,
        exclude_splits=[s for s in SPLITS if s != TRAIN_SPLIT])
    schema_curator = SchemaCurator(
        schema=schema_gen.outputs["schema"], statistics=statistics_gen.outputs["statistics"],
        examples=examples)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_curator.outputs["curated_schema"])
    anomalies_gate = AnomaliesGate(
        anomalies=example_validator.outputs["anomalies"],
        schema=schema_curator.outputs["curated_schema"])

    transform = tfx.components.Transform(
        examples=examples,
        schema=anomalies_gate.outputs["validated_schema"],
        preprocessing_fn=PREPROCESSING_FN,
        splits_config=tfx.proto.SplitsConfig(analyze=[TRAIN_SPLIT], transform=list(SPLITS)))

    latest_blessed_model = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")

    # Warm start: the Trainer also gets the latest blessed model (its Keras weights); only then,
    # so span-less, cold-start runs keep their Trainer inputs and cache keys.
    warm = ({"base_model": latest_blessed_model.outputs["model"]} if warm_start else {})
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        train_args=tfx.proto.TrainArgs(splits=[TRAIN_SPLIT]),
        eval_args=tfx.proto.EvalArgs(splits=[EVAL_SPLIT]),
        custom_config={"hparams": dict(hparams), "strategy": strategy,
                       "checkpoint_root": checkpoint_root,
                       **({"warm_start": True} if warm_start else {})},
        **warm)

    evaluator = RetrievalEvaluator(
        examples=examples,
        transformed_examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        model=trainer.outputs["model"],
        baseline_model=latest_blessed_model.outputs["model"],
        map_threshold=map_threshold, map_margin=map_margin, seed=seed)

    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=push_directory)))

    components = [example_gen, statistics_gen, schema_gen, schema_curator, example_validator,
                  anomalies_gate, transform, trainer, latest_blessed_model, evaluator, pusher]
    if search_directory:
        components.append(GallerySearch(
            pushed_model=pusher.outputs["pushed_model"], examples=examples,
            search_directory=search_directory, gallery_splits=gallery_splits,
            gallery_dir=gallery_dir))

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args))


def create_pipeline_from_config(config, metadata_connection_config=None) -> tfx.dsl.Pipeline:
    """create_pipeline with every argument taken from a (resolved) PipelineConfig."""
    config = config.resolved()
    return create_pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        dataset=config.data.dataset,
        data_dir=config.data.data_dir,
        push_directory=config.push_directory,
        hparams=config.cmgan_hparams().to_dict(),
        checkpoint_root=config.checkpoint_root,
        strategy=config.training.strategy,
        map_threshold=config.evaluation.map_threshold,
        map_margin=config.evaluation.map_margin,
        seed=config.data.seed,
        val_fraction=config.data.val_fraction,
        beam_pipeline_args=config.beam_args,
        metadata_connection_config=metadata_connection_config,
        enable_cache=config.enable_cache,
        search_directory=config.search_directory if config.gallery.enabled else None,
        gallery_splits=config.gallery.splits,
        gallery_dir=config.gallery.data_dir,
        span_pattern=config.data.span_pattern,
        span_window=config.data.span_window,
        eval_span=config.data.eval_span,
        warm_start=config.training.warm_start)

