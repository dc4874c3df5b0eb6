"""GallerySearch: after the Pusher, encode a gallery with the pushed model and push its search
companion (``<serving_root>/<model_name>-search/<same version>/``, see serving/search_model.py).

A companion servable rather than a rewrite of the pushed version: TF Serving may already be
loading ``<model_name>/<version>`` when this runs, and it never reloads a version it has loaded,
so the pushed folder is left exactly as the Pusher wrote it. The companion is written to a
staging folder and renamed into place, under the Pusher's version number.

Gallery: the ``gallery_splits`` of the pipeline's raw examples (default: test), or of a feature
folder (``gallery_dir``, as written by components.datasets.write_feature_folder) when given.
Nothing is written when the Pusher pushed nothing.

Large galleries: a modality of at least ``ann_min_items`` items also gets a faiss index in the
version (serving/search_model.py), which ``cmgan serve`` answers its searches from. Its recall@10
against the exact search is reported on the ``search_model`` artifact (custom properties
``<modality>_search``: approximate | exact, and ``<modality>_ann_recall_at_10``) and in
``<search_model uri>/gallery_search.json`` (per modality: items, search, index, nlist, nprobe,
recall_at_10, recall_queries).
"""
from __future__ import annotations

from typing import Optional, Sequence

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.gallery_search.executor import Executor
from serving.approximate_index import ANN_MIN_ITEMS, DEFAULT_NPROBE


class GallerySearchSpec(ComponentSpec):
    PARAMETERS = {
        "search_directory": ExecutionParameter(type=str),
        "gallery_splits": ExecutionParameter(type=str),  # comma-separated split names
        "gallery_dir": ExecutionParameter(type=str, optional=True),
        "ann_min_items": ExecutionParameter(type=int, optional=True),  # None: no index
        "ann_nlist": ExecutionParameter(type=int, optional=True),  # None: about 4 sqrt(N)
        "ann_nprobe": ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {
        "pushed_model": ChannelParameter(type=standard_artifacts.PushedModel),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {
        "search_model": ChannelParameter(type=standard_artifacts.PushedModel),
    }


class GallerySearch(base_component.BaseComponent):
    """Pushes ``<model>-search/<version>``: the encoders, the encoded gallery, top-k search."""

    SPEC_CLASS = GallerySearchSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, pushed_model: types.BaseChannel, examples: types.BaseChannel,
                 search_directory: str, gallery_splits: Sequence[str] = ("test",),
                 gallery_dir: Optional[str] = None,
                 ann_min_items: Optional[int] = ANN_MIN_ITEMS, ann_nlist: Optional[int] = None,
                 ann_nprobe: int = DEFAULT_NPROBE):
        spec = GallerySearchSpec(
            pushed_model=pushed_model, examples=examples, search_directory=search_directory,
            gallery_splits=",".join(gallery_splits), gallery_dir=gallery_dir,
            ann_min_items=ann_min_items, ann_nlist=ann_nlist, ann_nprobe=ann_nprobe,
            search_model=types.Channel(type=standard_artifacts.PushedModel))
        super().__init__(spec=spec)
