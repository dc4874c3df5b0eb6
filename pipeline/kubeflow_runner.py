"""Compile the pipeline into a Kubeflow Pipelines V2 PipelineJob JSON (offline, no cluster).

Every component runs in one container image that has this project installed (``pip install .``),
so components are found by their dotted paths. Paths in the config (pipeline root, data dir,
serving root) must be valid INSIDE that container, e.g. gs:// URIs or mounted volumes.
From the command line: ``cmgan compile`` (or ``python -m pipeline compile``), e.g.
``cmgan compile --output cmgan-pipeline.json --image REGISTRY/cmgan:TAG``.
"""
from __future__ import annotations

import os

from tfx import v1 as tfx

from pipeline.config import DEFAULT_IMAGE, PipelineConfig
from pipeline.pipeline import create_pipeline_from_config


def compile_pipeline(config: PipelineConfig, output_file: str,
                     image: str = DEFAULT_IMAGE) -> str:
    """Writes the PipelineJob JSON to ``output_file`` and returns its path."""
    output_file = os.path.abspath(output_file)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(output_file), output_filename=os.path.basename(output_file))
    # Kubeflow brings its own ML Metadata; no connection config is compiled in.
    runner.run(create_pipeline_from_config(config), write_out=True)
    return output_file

