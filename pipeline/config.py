"""Typed pipeline configuration: defaults here, a plain JSON file on top, then command-line flags.

A config file mirrors the dataclasses (every key optional)::

    {"pipeline_name": "cmgan-wikipedia",
     "data": {"dataset": "wikipedia", "data_dir": "/data/wikipedia"},
     "training": {"hparams": {"epochs": 200}, "strategy": "mirrored"},
     "evaluation": {"map_threshold": 0.4, "map_margin": 0.01},
     "beam_args": ["--direct_running_mode=multi_processing", "--direct_num_workers=4"],
     "kubeflow": {"image": "REGISTRY/cmgan:TAG", "cpu_request": "1", "memory_limit": "8Gi",
                  "node_resources": {"Trainer": {"cpu_request": "4", "memory_limit": "16Gi"}},
                  "trainer_accelerator": "NVIDIA_TESLA_T4", "trainer_accelerator_count": 1}}
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Mapping, Optional, Sequence

from components.datasets.registry import PIPELINE_DATASETS, raw_dataset_names
from models import encoder_kinds
from models.config_errors import (ConfigError, as_bool, as_float, as_int, check_name,
                                  check_range)
from models.distribute import STRATEGIES
from models.hparams import PRESETS, CMGANHParams, hparams_for_dataset
from serving.approximate_index import ANN_MIN_ITEMS, DEFAULT_NPROBE

# Pipeline datasets (components/datasets/registry.py): RAW_DATASETS always go to RawExampleGen;
# "wikipedia" does too with a text encoder other than "features".
RAW_DATASETS = raw_dataset_names()
DATASETS = tuple(PIPELINE_DATASETS)
TEXT_ENCODERS = encoder_kinds.names(encoder_kinds.TEXT)  # models/encoder_kinds.py
DEFAULT_IMAGE = "cmgan-tfx:latest"  # Kubeflow: an image with this project installed
DEFAULT_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
# Beam runners whose workers run on other machines with their own disks (check_beam_storage),
# as beam_runner names them.
REMOTE_BEAM_RUNNERS = ("dataflow",)
PIPELINE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "demo"
    data_dir: Optional[str] = None
    seed: int = 0  # demo data, Wikipedia's validation split, and the baselines
    val_fraction: float = 0.15  # Wikipedia only: validation carved from train
    # Spans (components/example_gen/spans.py): data_dir is a root with one feature folder per
    # span, matched by span_pattern (e.g. "span-{SPAN}"); a run trains on the span_window latest
    # spans and evaluates on the val/test of eval_span ("first" | "latest" | a span number).
    # None: no spans.
    span_pattern: Optional[str] = None
    span_window: int = 1
    eval_span: str = "first"
    # Encoders per modality ("" = the dataset's default: cnn + kim_cnn for raw datasets,
    # features otherwise). image: features | cnn | keras:<Application> | torch:efficientnet-lite0;
    # text: features | kim_cnn | torch:minilm. keras:/torch: encoders run in Beam (RunInference).
    image_encoder: str = ""
    text_encoder: str = ""
    image_encoder_weights: str = "none"  # keras: encoders: imagenet | none | a weights file
    image_size: Optional[int] = None  # resize side; default 32 for cnn, the app's own for keras:
    # Raw datasets: the run fails when more than this fraction of records is quarantined.
    max_quarantine_fraction: float = 0.05
    # Raw datasets: images whose header declares more pixels are quarantined (image_too_large)
    # before decoding; None: models.image_decoding.DEFAULT_MAX_IMAGE_PIXELS (25 MP).
    max_image_pixels: Optional[int] = None

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ConfigError.says(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if PIPELINE_DATASETS[self.dataset].needs_data_dir and not self.data_dir:
            raise ConfigError.says(f"dataset {self.dataset!r} needs data_dir")
        image, text = self.encoders()
        if encoder_kinds.find(image, encoder_kinds.IMAGE) is None:
            raise ConfigError.says(f"image_encoder must be features, cnn, keras:<Application> or "
                             f"torch:<name>, got {image!r}")
        if text not in TEXT_ENCODERS:
            raise ConfigError.says(f"text_encoder must be one of {TEXT_ENCODERS}, got {text!r}")
        if self.dataset in RAW_DATASETS and (image == "features" or text == "features"):
            raise ConfigError.says(f"dataset {self.dataset!r} has raw images and texts: choose image "
                             "and text encoders other than 'features'")
        if self.dataset == "wikipedia" and image != "features":
            raise ConfigError.says("wikipedia's images are SIFT features: image_encoder must be "
                             "'features' (the text encoder may be raw: kim_cnn, torch:minilm)")
        if self.dataset not in (*RAW_DATASETS, "wikipedia") and (image, text) != ("features",
                                                                                  "features"):
            raise ConfigError.says(f"dataset {self.dataset!r} holds features: encoders must be "
                             "'features'")
        check_range("max_quarantine_fraction", as_float("max_quarantine_fraction",
                                                        self.max_quarantine_fraction), 0.0, 1.0)
        check_range("seed", as_int("seed", self.seed), 0)
        check_range("val_fraction", as_float("val_fraction", self.val_fraction), 0.0, 0.5,
                    low_open=True, high_open=True)
        if self.image_size is not None:
            check_range("image_size", as_int("image_size", self.image_size), 1, 4096)
        if self.max_image_pixels is not None:
            check_range("max_image_pixels", as_int("max_image_pixels", self.max_image_pixels), 1)
        object.__setattr__(self, "eval_span", str(self.eval_span))
        if self.span_pattern:
            from components.example_gen import spans  # pylint: disable=import-outside-toplevel

            if self.dataset != "features":
                raise ConfigError.says("spans (span_pattern) need dataset 'features'")
            spans.check_pattern(self.span_pattern)
            spans.check_eval_span(self.eval_span)
            if int(self.span_window) < 1:
                raise ConfigError.says(f"span_window must be >= 1, got {self.span_window}")

    def encoders(self) -> tuple[str, str]:
        """(image, text) encoders, dataset defaults filled in."""
        raw = self.dataset in RAW_DATASETS
        return (self.image_encoder or ("cnn" if raw else "features"),
                self.text_encoder or ("kim_cnn" if raw else "features"))

    @property
    def is_raw(self) -> bool:
        """Read by RawExampleGen (images and/or texts decoded and validated in Beam)."""
        return self.dataset in RAW_DATASETS or self.encoders()[1] != "features"

    def model_encoders(self) -> dict[str, Any]:
        """The model's view: keras:/torch: encoders ran in Beam, so their output is features."""
        image, text = self.encoders()
        values: dict[str, Any] = {
            "image_encoder": encoder_kinds.model_input(image, encoder_kinds.IMAGE),
            "text_encoder": encoder_kinds.model_input(text, encoder_kinds.TEXT)}
        if image == "cnn" and self.image_size:
            values["image_size"] = int(self.image_size)
        return values


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    # Overrides of the preset (models.hparams.hparams_for_dataset) for CMGANHParams.
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # A named preset of models.hparams.PRESETS ("paper", "general", "pretrained", a dataset's);
    # "" = the dataset's own, else "general".
    preset: str = ""
    strategy: str = "default"
    # Start the Trainer from the latest blessed model's weights (when compatible).
    warm_start: bool = False

    def __post_init__(self):
        if not isinstance(self.hparams, Mapping):
            raise ConfigError("hparams", f"must be a JSON object of hyperparameters, got "
                                         f"{self.hparams!r}")
        CMGANHParams.from_dict(dict(self.hparams))  # unknown or invalid values fail here, early
        if self.preset and self.preset not in PRESETS:
            raise ConfigError("preset", f"must be one of {', '.join(PRESETS)}, got "
                                        f"{self.preset!r}")
        object.__setattr__(self, "warm_start", as_bool("warm_start", self.warm_start))
        if self.strategy not in STRATEGIES:
            raise ConfigError.says(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    map_threshold: float = 0.0  # validation mean MAP the candidate must reach to be pushed
    map_margin: float = 0.01  # how far below the last blessed model it may fall

    def __post_init__(self):
        for name in ("map_threshold", "map_margin"):  # MAP is in [0, 1], and so are these
            check_range(name, as_float(name, getattr(self, name)), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class GalleryConfig:
    # After the Pusher, GallerySearch pushes <serving_root>/<model_name>-search/<version>:
    # the encoders plus these splits, encoded, and a top-k `search` (serving/search_model.py).
    enabled: bool = True
    splits: tuple[str, ...] = ("test",)
    data_dir: Optional[str] = None  # a feature folder to take the splits from instead
    # A gallery modality of at least ann_min_items items (null: never) also gets a faiss IVF
    # index in the search companion, and `cmgan serve` answers its searches from it
    # (serving/ann_search.py; TF Serving stays exact): ann_nlist lists (null: about 4 sqrt(N)),
    # ann_nprobe of them scanned per query. GallerySearch reports its recall@10 vs exact.
    ann_min_items: Optional[int] = ANN_MIN_ITEMS
    ann_nlist: Optional[int] = None
    ann_nprobe: int = DEFAULT_NPROBE

    def __post_init__(self):
        object.__setattr__(self, "enabled", as_bool("gallery.enabled", self.enabled))
        for key in ("ann_min_items", "ann_nlist", "ann_nprobe"):
            value = getattr(self, key)
            if value is None and key != "ann_nprobe":
                continue
            value = as_int(f"gallery.{key}", value)
            check_range(f"gallery.{key}", value, 1)
            object.__setattr__(self, key, value)
        if isinstance(self.splits, str):
            raise ConfigError("gallery.splits", f"must be a list of split names, got the "
                                                f"string {self.splits!r}")
        object.__setattr__(self, "splits", tuple(self.splits))
        if self.enabled and not self.splits:
            raise ConfigError.says("gallery splits must not be empty")


RESOURCE_KEYS = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")
_ACCELERATOR_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
    """Read only by ``cmgan compile`` (pipeline/kubeflow_runner.py); local runs ignore it."""
    image: str = DEFAULT_IMAGE  # every component runs in it (this project installed)
    # Every container node's CPU and memory: Kubernetes quantities (cpu "2" | "500m", memory
    # "4Gi" | "512M"); None: unset (the cluster's defaults).
    cpu_request: Optional[str] = None
    cpu_limit: Optional[str] = None
    memory_request: Optional[str] = None
    memory_limit: Optional[str] = None
    # Per node id (pipeline/node_ids.py CONTAINER_NODES), over the values above:
    # {"Trainer": {"cpu_request": "4", "memory_limit": "16Gi"}}.
    node_resources: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # The Trainer's accelerator: NVIDIA_TESLA_T4 (Vertex AI), nvidia.com/gpu (Kubeflow
    # Pipelines on Kubernetes: the resource name); "" none.
    trainer_accelerator: str = ""
    trainer_accelerator_count: int = 1

    def __post_init__(self):
        from pipeline import k8s_quantities, node_ids  # pylint: disable=import-outside-toplevel

        if not isinstance(self.image, str) or not re.fullmatch(r"\S+", self.image):
            raise ConfigError("kubeflow.image", f"must be a container image name, got "
                                                f"{self.image!r}")
        for key in RESOURCE_KEYS:
            object.__setattr__(self, key, _quantity(f"kubeflow.{key}", getattr(self, key)))
        if not isinstance(self.node_resources, Mapping):
            raise ConfigError("kubeflow.node_resources", "must be a JSON object of node id -> "
                                                         f"resources, got {self.node_resources!r}")
        nodes = {}
        for node, values in self.node_resources.items():
            where = f"kubeflow.node_resources.{node}"
            if node not in node_ids.CONTAINER_NODES:
                raise ConfigError("kubeflow.node_resources", f"has an unknown node {node!r}; "
                                  f"nodes: {', '.join(node_ids.CONTAINER_NODES)}")
            if not isinstance(values, Mapping) or set(values) - set(RESOURCE_KEYS):
                raise ConfigError(where, f"must be a JSON object with keys among "
                                         f"{', '.join(RESOURCE_KEYS)}, got {values!r}")
            nodes[node] = {k: _quantity(f"{where}.{k}", v) for k, v in values.items()
                           if v is not None}
        object.__setattr__(self, "node_resources", nodes)
        for node in ("", *nodes):  # a request above its limit: Kubernetes refuses the pod
            values = self.resources(node)
            where = f"kubeflow.node_resources.{node}." if node else "kubeflow."
            for kind, size in (("cpu", k8s_quantities.cpu_cores),
                               ("memory", k8s_quantities.memory_bytes)):
                request, limit = values.get(f"{kind}_request"), values.get(f"{kind}_limit")
                if request and limit and size(request) > size(limit):
                    raise ConfigError(f"{where}{kind}_request", f"must not exceed "
                                      f"{kind}_limit {limit}, got {request}")
        if not isinstance(self.trainer_accelerator, str) or (
                self.trainer_accelerator
                and not _ACCELERATOR_PATTERN.fullmatch(self.trainer_accelerator)):
            raise ConfigError("kubeflow.trainer_accelerator", "must be an accelerator type such "
                              "as NVIDIA_TESLA_T4 or nvidia.com/gpu, got "
                              f"{self.trainer_accelerator!r}")
        count = as_int("kubeflow.trainer_accelerator_count", self.trainer_accelerator_count)
        check_range("kubeflow.trainer_accelerator_count", count, 1)
        if count != 1 and not self.trainer_accelerator:
            raise ConfigError("kubeflow.trainer_accelerator_count", f"needs "
                              f"kubeflow.trainer_accelerator (the type), got {count}")
        object.__setattr__(self, "trainer_accelerator_count", count)

    def resources(self, node_id: str) -> dict[str, str]:
        """The node's quantities that are set: the defaults, then its own."""
        values = {k: getattr(self, k) for k in RESOURCE_KEYS if getattr(self, k) is not None}
        return {**values, **self.node_resources.get(node_id, {})}


def _quantity(key: str, value: Any) -> Optional[str]:
    from pipeline import k8s_quantities  # pylint: disable=import-outside-toplevel

    if value is None:
        return None
    parse = k8s_quantities.cpu if key.rpartition(".")[2].startswith("cpu") else (
        k8s_quantities.memory)
    return parse(key, value)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    # Empty values are derived by resolved(): pipeline_name cmgan-<dataset>, pipeline_root
    # ./runs/<pipeline_name>, metadata_path <pipeline_root>/metadata.sqlite.
    pipeline_name: str = ""
    pipeline_root: str = ""
    serving_root: str = "serving_models"
    model_name: str = "cmgan"
    metadata_path: str = ""
    beam_args: tuple[str, ...] = DEFAULT_BEAM_ARGS
    enable_cache: bool = True
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    gallery: GalleryConfig = dataclasses.field(default_factory=GalleryConfig)
    kubeflow: KubeflowConfig = dataclasses.field(default_factory=KubeflowConfig)

    def __post_init__(self):
        if self.pipeline_name and not PIPELINE_NAME_PATTERN.fullmatch(self.pipeline_name):
            raise ConfigError.says(f"pipeline name {self.pipeline_name!r} must match "
                             "[a-z0-9][a-z0-9-]{0,127}")
        check_name("model_name", self.model_name)
        object.__setattr__(self, "enable_cache", as_bool("enable_cache", self.enable_cache))
        beam_args = self.beam_args
        if isinstance(beam_args, str):  # one string: shell words, never its characters
            import shlex  # pylint: disable=import-outside-toplevel

            beam_args = shlex.split(beam_args)
        if not all(isinstance(a, str) for a in beam_args):
            raise ConfigError("beam_args", f"must be a list of strings, got {self.beam_args!r}")
        object.__setattr__(self, "beam_args", tuple(beam_args))

    def resolved(self) -> "PipelineConfig":
        """A copy with derived defaults filled in and local paths made absolute."""
        name = self.pipeline_name or f"cmgan-{self.data.dataset}"
        root = _absolute(self.pipeline_root or os.path.join("runs", name))
        data_dir = _absolute(self.data.data_dir) if self.data.data_dir else None
        gallery_dir = _absolute(self.gallery.data_dir) if self.gallery.data_dir else None
        return dataclasses.replace(
            self, pipeline_name=name, pipeline_root=root,
            serving_root=_absolute(self.serving_root),
            metadata_path=_absolute(self.metadata_path or os.path.join(root, "metadata.sqlite")),
            data=dataclasses.replace(self.data, data_dir=data_dir),
            gallery=dataclasses.replace(self.gallery, data_dir=gallery_dir))

    def cmgan_hparams(self) -> CMGANHParams:
        """Paper defaults, then the dataset's preset, then the configured overrides."""
        return hparams_for_dataset(self.data.dataset,
                                   {**self.data.model_encoders(), **self.training.hparams},
                                   preset=(self.training.preset
                                           or PIPELINE_DATASETS[self.data.dataset].preset))

    @property
    def checkpoint_root(self) -> str:
        return os.path.join(self.pipeline_root, "checkpoints")

    @property
    def push_directory(self) -> str:
        """TF Serving's model base path: versions are written below it."""
        return os.path.join(self.serving_root, self.model_name)

    @property
    def search_directory(self) -> str:
        """Base path of the search companion servable (same versions as push_directory)."""
        return os.path.join(self.serving_root, f"{self.model_name}-search")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["beam_args"] = list(self.beam_args)
        values["training"]["hparams"] = dict(self.training.hparams)
        values["gallery"]["splits"] = list(self.gallery.splits)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PipelineConfig":
        """Unknown keys are errors, so a typo in a config file never goes unnoticed."""
        values = dict(values)
        _reject_unknown(cls, values, "config")
        sections = {"data": DataConfig, "training": TrainingConfig,
                    "evaluation": EvaluationConfig, "gallery": GalleryConfig,
                    "kubeflow": KubeflowConfig}
        for key, section in sections.items():
            if key in values:
                _reject_unknown(section, values[key], f"config section '{key}'")
                values[key] = section(**values[key])
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str) -> "PipelineConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def with_overrides(self, *, dataset: Optional[str] = None, data_dir: Optional[str] = None,
                       hparams: Optional[Mapping[str, Any]] = None,
                       beam_args: Optional[Sequence[str]] = None,
                       kubeflow: Optional[Mapping[str, Any]] = None, **fields: Any
                       ) -> "PipelineConfig":
        """A copy with flag values applied; ``None`` leaves a value as configured.

        ``hparams`` are merged into the configured ones, and so are ``kubeflow``'s
        KubeflowConfig fields (``node_resources`` node by node); the DATA_FLAGS, ``strategy``,
        ``preset``, ``warm_start``, ``map_threshold`` and ``map_margin`` go to their sections;
        the rest are PipelineConfig fields. Derived paths
        (pipeline_root, metadata_path) follow a changed pipeline name unless configured, as
        they are only filled in by ``resolved()``.
        """
        fields = {k: v for k, v in fields.items() if v is not None}
        data = dataclasses.replace(self.data, **{k: v for k, v in
                                                 (("dataset", dataset), ("data_dir", data_dir))
                                                 if v is not None},
                                   **{k: fields.pop(k) for k in DATA_FLAGS if k in fields})
        training = dataclasses.replace(
            self.training, hparams={**self.training.hparams, **(hparams or {})},
            **{k: fields.pop(k) for k in ("strategy", "preset", "warm_start") if k in fields})
        evaluation = dataclasses.replace(
            self.evaluation, **{k: fields.pop(k) for k in ("map_threshold", "map_margin")
                                if k in fields})
        if beam_args is not None:
            fields["beam_args"] = tuple(beam_args)
        if kubeflow:
            kubeflow = dict(kubeflow)
            nodes = {node: dict(values) for node, values in self.kubeflow.node_resources.items()}
            for node, values in kubeflow.pop("node_resources", {}).items():
                nodes[node] = {**nodes.get(node, {}), **values}
            fields["kubeflow"] = dataclasses.replace(self.kubeflow, node_resources=nodes,
                                                     **kubeflow)
        return dataclasses.replace(self, data=data, training=training, evaluation=evaluation,
                                   **fields)


DATA_FLAGS = ("image_encoder", "text_encoder", "image_encoder_weights", "image_size",
              "max_quarantine_fraction", "max_image_pixels", "span_pattern", "span_window",
              "eval_span")


def load_config(config_file: Optional[str] = None, *,
                adjust: Optional[Callable[[PipelineConfig], PipelineConfig]] = None,
                **overrides: Any) -> PipelineConfig:
    """The one way a configuration is built: the defaults here, then the JSON ``config_file``,
    then ``PipelineConfig.with_overrides(**overrides)`` (flag values; None: as configured),
    then ``adjust`` (a command's own last change), resolved once at the end."""
    config = PipelineConfig.from_json_file(config_file) if config_file else PipelineConfig()
    config = config.with_overrides(**overrides)
    return (adjust(config) if adjust is not None else config).resolved()


def int_in(low: int, high: int):
    """An argparse ``type``: an int in [low, high] (``--top-k 3000000000`` would wrap int32)."""
    import argparse  # pylint: disable=import-outside-toplevel

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    return parse


def _absolute(path: str) -> str:
    """Local paths become absolute (components may run elsewhere); URIs stay as they are."""
    return path if "://" in path else os.path.abspath(path)


def beam_runner(beam_args: Sequence[str]) -> str:
    """The runner ``beam_args`` name (``--runner=X`` or ``--runner X``) as Beam resolves it
    (case, a module path and the ``Runner`` suffix dropped): "dataflow", "portable", ...;
    "" for Beam's default, the DirectRunner."""
    import argparse  # pylint: disable=import-outside-toplevel

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--runner", default="")
    name = parser.parse_known_args(list(beam_args))[0].runner.rsplit(".", 1)[-1].lower()
    return name[:-len("runner")] if name.endswith("runner") else name


def check_beam_storage(config: PipelineConfig) -> None:
    """Refuse what the workers of a REMOTE_BEAM_RUNNERS runner cannot see (a resolved config):
    a local pipeline root (every Beam stage writes its artifacts there), and the raw image
    datasets, whose pairs.csv (and the raw demo) the driver reads and writes with local file
    APIs while the workers open the images by the same paths."""
    runner = beam_runner(config.beam_args)
    if runner not in REMOTE_BEAM_RUNNERS:
        return
    runner = f"{runner.capitalize()}Runner"
    if "://" not in config.pipeline_root:
        raise ConfigError("pipeline_root", f"must be on storage the {runner} workers share "
                          f"(gs://BUCKET/...), got the local path {config.pipeline_root!r}")
    if config.data.dataset in RAW_DATASETS:
        raise ConfigError("dataset", f"{config.data.dataset!r} cannot run on {runner}: its "
                          "images are read through local paths its workers do not see; run "
                          "it with a runner whose workers share this filesystem (Flink or "
                          "Spark through PortableRunner), or precompute its features "
                          "(dataset 'features')")


def _reject_unknown(cls, values: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError.says(f"unknown {where} keys: {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known))}")
