"""The ids of the pipeline's nodes: pipeline/pipeline.py gives them (``.with_id``), and every
reader of ML Metadata (local_runner, history, reporting, ``cmgan check-data``) looks them up.

They are the TFX defaults (the component class names), so runs recorded before the ids were
set explicitly are read the same way.
"""
from __future__ import annotations

RAW_EXAMPLE_GEN = "RawExampleGen"  # raw images/texts (demo, raw, wikipedia with raw texts)
FEATURE_EXAMPLE_GEN = "FeatureExampleGen"  # feature datasets, spans
IMPORT_EXAMPLE_GEN = "ImportExampleGen"  # dataset "examples"
EXAMPLE_GEN_SUFFIX = "ExampleGen"  # every ExampleGen id ends with it
STATISTICS_GEN = "StatisticsGen"
SCHEMA_GEN = "SchemaGen"
SCHEMA_CURATOR = "SchemaCurator"
EXAMPLE_VALIDATOR = "ExampleValidator"
ANOMALIES_GATE = "AnomaliesGate"
TRANSFORM = "Transform"
TRAINER = "Trainer"
LATEST_BLESSED_MODEL_RESOLVER = "latest_blessed_model_resolver"
EVALUATOR = "RetrievalEvaluator"
PUSHER = "Pusher"
GALLERY_SEARCH = "GallerySearch"

# The nodes that run a container on Kubeflow (all but the resolver): the keys of the Kubeflow
# config's per-node resources (pipeline/config.py KubeflowConfig.node_resources).
CONTAINER_NODES = (RAW_EXAMPLE_GEN, FEATURE_EXAMPLE_GEN, IMPORT_EXAMPLE_GEN, STATISTICS_GEN,
                   SCHEMA_GEN, SCHEMA_CURATOR, EXAMPLE_VALIDATOR, ANOMALIES_GATE, TRANSFORM,
                   TRAINER, EVALUATOR, PUSHER, GALLERY_SEARCH)


def is_example_gen(node_id: str) -> bool:
    return node_id.endswith(EXAMPLE_GEN_SUFFIX)
