"""The pipeline's datasets: each name ``--dataset`` takes, which ExampleGen reads it, with which
reader, and which hyperparameter preset it trains with.

Reader names are the ``dataset`` parameter of the ExampleGen that reads them, and the two
ExampleGens have their own: FeatureExampleGen's readers are ``components.datasets.load_dataset``'s
(``demo`` there is the synthetic FEATURE demo), RawExampleGen's are its executor's (``demo`` there
is the embedded raw image/caption demo, components/datasets/raw_demo.py). Only this table maps
the pipeline's names onto them.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

# ExampleGen kinds.
FEATURE = "feature"  # FeatureExampleGen: feature vectors, read in the executor
RAW = "raw"  # RawExampleGen: Beam decodes, validates, quarantines and runs keras:/torch: encoders
IMPORT = "import"  # ImportExampleGen: tf.Example TFRecords in <data_dir>/{train,val,test}/

FEATURE_READERS = ("demo", "wikipedia", "features")  # FeatureExampleGen / load_dataset
RAW_READERS = ("raw", "demo", "wikipedia_raw")  # RawExampleGen


@dataclasses.dataclass(frozen=True)
class PipelineDataset:
    name: str  # as --dataset and the configuration's data.dataset take it
    example_gen: str  # FEATURE | RAW | IMPORT: the ExampleGen that reads it by default
    feature_reader: Optional[str] = None  # FeatureExampleGen's dataset parameter for it
    # RawExampleGen's dataset parameter for it: always used for RAW datasets, and for a FEATURE
    # dataset when its texts are encoded from raw (a text encoder other than 'features').
    raw_reader: Optional[str] = None
    preset: Optional[str] = None  # models.hparams preset; None: "general"
    needs_data_dir: bool = True


PIPELINE_DATASETS = {d.name: d for d in (
    # The embedded, seeded image/caption demo, made by the pipeline itself.
    PipelineDataset("demo", RAW, raw_reader="demo", preset="demo", needs_data_dir=False),
    PipelineDataset("raw", RAW, raw_reader="raw"),  # a pairs.csv folder
    # The released SIFT/LDA features; raw article texts instead of LDA with a raw text encoder.
    PipelineDataset("wikipedia", FEATURE, feature_reader="wikipedia", raw_reader="wikipedia_raw",
                    preset="wikipedia"),
    PipelineDataset("features", FEATURE, feature_reader="features"),  # an npz feature folder
    # The synthetic feature demo.
    PipelineDataset("demo-features", FEATURE, feature_reader="demo", preset="demo-features",
                    needs_data_dir=False),
    PipelineDataset("examples", IMPORT),
)}


def raw_dataset_names() -> tuple[str, ...]:
    """The datasets RawExampleGen always reads (raw images and texts)."""
    return tuple(name for name, d in PIPELINE_DATASETS.items() if d.example_gen == RAW)
