"""Kubeflow Pipelines recurring run of the compiled pipeline (the cluster-side ``cmgan schedule``).

Compile the spans pipeline to a bare PipelineSpec (``cmgan compile --output cmgan.yaml``, with
``data.span_pattern`` in the config), then create a recurring run with the kfp client::

    from pipeline.kubeflow_schedule import create_recurring_run
    import kfp
    create_recurring_run(kfp.Client(host="https://KFP_HOST"), "cmgan.yaml",
                         experiment_id="EXPERIMENT_ID", every="6h")

Each scheduled run executes the whole pipeline on the latest span window: FeatureExampleGen's
executor resolves the window at run time (Kubeflow V2 does not run the local driver, whose data
fingerprint keys the local cache), so the recurring run is created with KFP caching OFF by
default: otherwise a cached FeatureExampleGen would never see a new span. The evaluator and the
Pusher still push only a candidate that is not worse than the latest blessed model.
``max_concurrency=1`` is the cluster's counterpart of the local lock (runs never overlap) and
``no_catchup=True`` skips the runs missed while the schedule was paused.
"""
from __future__ import annotations

from typing import Any, Optional

from pipeline.retrain import parse_interval

DEFAULT_JOB_NAME = "cmgan-retrain"


def recurring_run_arguments(package_path: str, *, experiment_id: str,
                            every: Optional[str] = None, cron: Optional[str] = None,
                            job_name: str = DEFAULT_JOB_NAME,
                            pipeline_root: Optional[str] = None,
                            params: Optional[dict[str, Any]] = None,
                            enable_caching: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``kfp.Client.create_recurring_run``: ``every`` (30s, 10m, 6h) or a
    KFP ``cron`` expression (six fields, seconds first: ``0 0 */6 * * *``)."""
    if (every is None) == (cron is None):
        raise ValueError("give exactly one of every (e.g. 6h) and cron")
    arguments: dict[str, Any] = dict(
        experiment_id=experiment_id, job_name=job_name,
        description="CM-GAN retraining on the latest data spans (issue 6)",
        pipeline_package_path=package_path, params=dict(params or {}),
        max_concurrency=1, no_catchup=True, enabled=True, enable_caching=enable_caching)
    if every is not None:
        arguments["interval_second"] = int(parse_interval(every))
    else:
        if len(cron.split()) != 6:
            raise ValueError(f"KFP cron expressions have six fields (seconds first), got {cron!r}")
        arguments["cron_expression"] = cron
    if pipeline_root:
        arguments["pipeline_root"] = pipeline_root
    return arguments


def create_recurring_run(client, package_path: str, **kwargs):
    """Creates the recurring run through ``client`` (a ``kfp.Client``); returns KFP's answer."""
    return client.create_recurring_run(**recurring_run_arguments(package_path, **kwargs))
