"""Compile the pipeline into a Kubeflow Pipelines V2 PipelineJob JSON (offline, no cluster).

Every component runs in one container image that has this project installed (``pip install .``),
so components are found by their dotted paths. Paths in the config (pipeline root, data dir,
serving root) must be valid INSIDE that container, e.g. gs:// URIs or mounted volumes.
From the command line: ``cmgan compile`` (or ``python -m pipeline compile``), e.g.
``cmgan compile --output cmgan-pipeline.json --image REGISTRY/cmgan:TAG``.

The config's ``kubeflow`` section (pipeline/config.py KubeflowConfig) sets the image and each
node's CPU/memory requests and limits and the Trainer's accelerator, as the node's
``platform_config`` (a ResourceSpec, which TFX copies into the node's container spec); local
runs never read it. The pipeline's Beam args reach every container's arguments (TFX appends
them), so the Beam components get them on Kubeflow as they do locally.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx
from tfx.dsl.components.base import base_component

from pipeline import k8s_quantities, node_ids
from pipeline.config import KubeflowConfig, PipelineConfig
from pipeline.pipeline import create_pipeline_from_config

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec


def resource_spec(config: KubeflowConfig, node_id: str) -> Optional[ResourceSpec]:
    """The node's ResourceSpec (None: nothing set): the Kubernetes quantities in the
    ``resource_*`` fields that KFP reads, and cores / GB in the older numeric fields (as the
    KFP SDK compiler writes both)."""
    values = config.resources(node_id)
    accelerator = config.trainer_accelerator if node_id == node_ids.TRAINER else ""
    if not values and not accelerator:
        return None
    spec = ResourceSpec()
    for key, quantity in values.items():
        setattr(spec, f"resource_{key}", quantity)
        setattr(spec, key, (k8s_quantities.cpu_cores if key.startswith("cpu")
                            else k8s_quantities.memory_gb)(quantity))
    if accelerator:
        count = config.trainer_accelerator_count
        spec.accelerator.CopyFrom(ResourceSpec.AcceleratorConfig(
            type=accelerator, count=count, resource_type=accelerator,
            resource_count=str(count)))
    return spec


def apply_resources(pipeline: tfx.dsl.Pipeline, config: KubeflowConfig) -> tfx.dsl.Pipeline:
    """Sets each container node's platform_config from ``config``; returns ``pipeline``."""
    for component in pipeline.components:
        if isinstance(component, base_component.BaseComponent):
            spec = resource_spec(config, component.id)
            if spec is not None:
                component.with_platform_config(spec)
    return pipeline


def _fill_dropped_resources(job: dict[str, Any], pipeline: tfx.dsl.Pipeline) -> None:
    """TFX 1.16 builds a FileBasedExampleGen's (ImportExampleGen's) container without its
    platform_config; put the resources there as for every other node."""
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    for component in pipeline.components:
        container = executors.get(f"{component.id}_executor", {}).get("container")
        if container is not None and getattr(component, "platform_config", None) is not None:
            container.setdefault("resources", json_format.MessageToDict(component.platform_config))


def compile_pipeline(config: PipelineConfig, output_file: str,
                     image: Optional[str] = None) -> str:
    """Writes the PipelineJob JSON (a .yaml ``output_file``: the bare PipelineSpec) to
    ``output_file`` and returns its path. ``image``: None uses ``config.kubeflow.image``."""
    # pylint: disable-next=import-outside-toplevel,protected-access
    from tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner import \
        _write_pipeline_spec_to_file
    from tfx import version  # pylint: disable=import-outside-toplevel

    output_file = os.path.abspath(output_file)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image or config.kubeflow.image),
        output_dir=os.path.dirname(output_file), output_filename=os.path.basename(output_file))
    # Kubeflow brings its own ML Metadata; no connection config is compiled in.
    pipeline = apply_resources(create_pipeline_from_config(config), config.kubeflow)
    job = runner.run(pipeline, write_out=False)
    _fill_dropped_resources(job, pipeline)
    os.makedirs(os.path.dirname(output_file), exist_ok=True)
    _write_pipeline_spec_to_file(
        job, f"This is converted from TFX pipeline from tfx-{version.__version__}.", output_file)
    return output_file
