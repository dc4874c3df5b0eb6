"""The CM-GAN retrieval pipeline definition: one pure function from arguments to a TFX Pipeline.

ExampleGen (RawExampleGen for raw images/texts: Beam decodes, validates, quarantines, and runs
keras:/torch: encoders; FeatureExampleGen for feature datasets) -> StatisticsGen -> SchemaGen
(train only) -> SchemaCurator -> ExampleValidator -> AnomaliesGate -> Transform (z-scores; pixels
to [0, 1]; tokenization and vocabulary) -> Trainer (CM-GAN) -> RetrievalEvaluator (vs. the latest
blessed model, CCA and classifier) -> Pusher (TF Serving layout) -> GallerySearch (the search
companion servable ``<model_name>-search/<same version>``).

Components are referenced by dotted paths into the installed package (no module_file), so the
same definition runs under LocalDagRunner and compiles for Kubeflow Pipelines V2.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from components.anomalies_gate.component import AnomaliesGate
from components.datasets import SPLITS
from components.datasets.registry import IMPORT, PIPELINE_DATASETS
from components.feature_example_gen.component import FeatureExampleGen
from components.gallery_search.component import GallerySearch
from components.raw_example_gen.component import RawExampleGen
from components.retrieval_evaluator.component import RetrievalEvaluator
from components.schema_curator.component import SchemaCurator
from models.encoder_kinds import is_keras
from models.preprocessing import transform_config
from pipeline import node_ids
from pipeline.config import check_beam_storage
from serving.approximate_index import ANN_MIN_ITEMS, DEFAULT_NPROBE

PREPROCESSING_FN = "models.preprocessing.preprocessing_fn"
RUN_FN = "models.trainer.run_fn"
TRAIN_SPLIT, EVAL_SPLIT = "train", "val"


def _example_gen(dataset: str, data_dir: Optional[str], seed: int, val_fraction: float,
                 span_pattern: Optional[str] = None, span_window: int = 1,
                 eval_span: str = "first", raw: Optional[Mapping[str, Any]] = None):
    if raw is not None:
        return RawExampleGen(dataset=PIPELINE_DATASETS[dataset].raw_reader, data_dir=data_dir,
                             seed=seed, val_fraction=val_fraction, **raw
                             ).with_id(node_ids.RAW_EXAMPLE_GEN)
    if PIPELINE_DATASETS[dataset].example_gen == IMPORT:
        # Pre-built tf.Example TFRecords in <data_dir>/{train,val,test}/.
        return tfx.components.ImportExampleGen(
            input_base=data_dir,
            input_config=tfx.proto.Input(splits=[
                tfx.proto.Input.Split(name=s, pattern=f"{s}/*") for s in SPLITS])
        ).with_id(node_ids.IMPORT_EXAMPLE_GEN)
    spans = ({"span_pattern": span_pattern, "span_window": span_window,
              "eval_span": eval_span} if span_pattern else {})
    reader = PIPELINE_DATASETS[dataset].feature_reader
    if reader is None:
        raise ValueError(f"dataset {dataset!r} is read by RawExampleGen: pass raw_inputs")
    return FeatureExampleGen(dataset=reader, data_dir=data_dir, seed=seed,
                             val_fraction=val_fraction, **spans
                             ).with_id(node_ids.FEATURE_EXAMPLE_GEN)


def data_stages(examples) -> list:
    """The data checks on an ExampleGen's ``examples``, in order: StatisticsGen -> SchemaGen
    (train only) -> SchemaCurator -> ExampleValidator -> AnomaliesGate (Transform's schema)."""
    statistics_gen = tfx.components.StatisticsGen(examples=examples).with_id(
        node_ids.STATISTICS_GEN)
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True,
        exclude_splits=[s for s in SPLITS if s != TRAIN_SPLIT]).with_id(node_ids.SCHEMA_GEN)
    schema_curator = SchemaCurator(
        schema=schema_gen.outputs["schema"], statistics=statistics_gen.outputs["statistics"],
        examples=examples).with_id(node_ids.SCHEMA_CURATOR)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_curator.outputs["curated_schema"]).with_id(node_ids.EXAMPLE_VALIDATOR)
    anomalies_gate = AnomaliesGate(
        anomalies=example_validator.outputs["anomalies"],
        schema=schema_curator.outputs["curated_schema"]).with_id(node_ids.ANOMALIES_GATE)
    return [statistics_gen, schema_gen, schema_curator, example_validator, anomalies_gate]


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
        ann_min_items: Optional[int] = ANN_MIN_ITEMS,
        ann_nlist: Optional[int] = None,
        ann_nprobe: int = DEFAULT_NPROBE,
        span_pattern: Optional[str] = None,
        span_window: int = 1,
        eval_span: str = "first",
        warm_start: bool = False,
        raw_inputs: Optional[Mapping[str, Any]] = None,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline; does no I/O. ``push_directory`` is ``<serving_root>/<model_name>``;
    ``search_directory`` (None: no GallerySearch) the search companion's base path;
    ``ann_*``: its approximate index (pipeline.config.GalleryConfig)
    ``raw_inputs`` (None: a feature dataset): RawExampleGen's encoder settings, keys
    image_encoder, image_encoder_weights, image_size, text_encoder, max_quarantine_fraction."""
    example_gen = _example_gen(dataset, data_dir, seed, val_fraction, span_pattern, span_window,
                               eval_span, raw_inputs)
    examples = example_gen.outputs["examples"]

    statistics_gen, schema_gen, schema_curator, example_validator, anomalies_gate = (
        data_stages(examples))

    transform = tfx.components.Transform(
        examples=examples,
        schema=anomalies_gate.outputs["validated_schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config=transform_config(hparams),
        splits_config=tfx.proto.SplitsConfig(analyze=[TRAIN_SPLIT], transform=list(SPLITS))
    ).with_id(node_ids.TRANSFORM)

    latest_blessed_model = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(node_ids.LATEST_BLESSED_MODEL_RESOLVER)

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
                       **({"warm_start": True} if warm_start else {}),
                       **_image_feature_encoder(raw_inputs, seed)},
        **warm).with_id(node_ids.TRAINER)

    evaluator = RetrievalEvaluator(
        examples=examples,
        transformed_examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        model=trainer.outputs["model"],
        baseline_model=latest_blessed_model.outputs["model"],
        map_threshold=map_threshold, map_margin=map_margin, seed=seed
    ).with_id(node_ids.EVALUATOR)

    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=push_directory))
    ).with_id(node_ids.PUSHER)

    components = [example_gen, statistics_gen, schema_gen, schema_curator, example_validator,
                  anomalies_gate, transform, trainer, latest_blessed_model, evaluator, pusher]
    if search_directory:
        components.append(GallerySearch(
            pushed_model=pusher.outputs["pushed_model"], examples=examples,
            search_directory=search_directory, gallery_splits=gallery_splits,
            gallery_dir=gallery_dir, ann_min_items=ann_min_items, ann_nlist=ann_nlist,
            ann_nprobe=ann_nprobe).with_id(node_ids.GALLERY_SEARCH))

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args))


def _image_feature_encoder(raw_inputs: Optional[Mapping[str, Any]], seed: int) -> dict:
    """What the Trainer needs to rebuild a keras: image encoder Beam ran (encode_image_bytes)."""
    spec = (raw_inputs or {}).get("image_encoder", "")
    if not is_keras(spec):
        return {}
    return {"image_feature_encoder": spec,
            "image_feature_encoder_weights": raw_inputs.get("image_encoder_weights", "none"),
            "image_feature_size": raw_inputs.get("image_size"), "seed": seed}


def create_pipeline_from_config(config, metadata_connection_config=None) -> tfx.dsl.Pipeline:
    """create_pipeline with every argument taken from a (resolved) PipelineConfig."""
    config = config.resolved()
    check_beam_storage(config)
    hparams = config.cmgan_hparams()
    return create_pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        dataset=config.data.dataset,
        data_dir=config.data.data_dir,
        push_directory=config.push_directory,
        hparams=hparams.to_dict(),
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
        ann_min_items=config.gallery.ann_min_items,
        ann_nlist=config.gallery.ann_nlist,
        ann_nprobe=config.gallery.ann_nprobe,
        span_pattern=config.data.span_pattern,
        span_window=config.data.span_window,
        eval_span=config.data.eval_span,
        warm_start=config.training.warm_start,
        raw_inputs=_raw_inputs(config.data, hparams))


def create_data_pipeline_from_config(config, metadata_connection_config=None, *,
                                     pipeline_name: Optional[str] = None) -> tfx.dsl.Pipeline:
    """Only the data stages of create_pipeline_from_config's pipeline (``cmgan check-data``):
    the same ExampleGen (with its quarantine) and data_stages, nothing after the AnomaliesGate.
    ``pipeline_name`` (default: the config's) keeps such runs apart from full runs in MLMD."""
    config = config.resolved()
    check_beam_storage(config)
    data = config.data
    example_gen = _example_gen(data.dataset, data.data_dir, data.seed, data.val_fraction,
                               data.span_pattern, data.span_window, data.eval_span,
                               _raw_inputs(data, config.cmgan_hparams()))
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name or config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=[example_gen, *data_stages(example_gen.outputs["examples"])],
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.beam_args))


def _raw_inputs(data, hparams) -> Optional[dict[str, Any]]:
    """RawExampleGen's settings. For cnn the pixel size is the model's ``image_size`` (so
    ``--hparam image_size=N`` resizes in Beam too); keras:/torch: encoders keep their own."""
    if not data.is_raw:
        return None
    image, text = data.encoders()
    return {"image_encoder": image, "text_encoder": text,
            "image_encoder_weights": data.image_encoder_weights,
            "image_size": hparams.image_size if image == "cnn" else (data.image_size or 0),
            "max_quarantine_fraction": data.max_quarantine_fraction,
            "max_image_pixels": data.max_image_pixels}

