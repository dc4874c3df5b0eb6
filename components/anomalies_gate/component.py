"""AnomaliesGate: stops the run when ExampleValidator found anomalies in any split.

ExampleValidator only records anomalies. The gate reads them and either fails with one line per
(split, feature) problem or passes the schema on; Transform consumes the gate's schema, so no
model is ever trained on data that broke the contract.
"""

import os

from tensorflow_data_validation.utils import anomalies_util
from tfx.components.example_validator.executor import DEFAULT_FILE_NAME as ANOMALIES_FILE
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils


class DataValidationError(ValueError):
    """The examples do not match the curated schema."""


def describe_anomalies(anomalies: standard_artifacts.ExampleAnomalies) -> list[str]:
    """``split 'val': feature 'text': <short description> (<description>)`` per anomaly."""
    problems = []
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies], split), ANOMALIES_FILE)
        found = anomalies_util.load_anomalies_binary(path)
        for feature, info in sorted(found.anomaly_info.items()):
            problems.append(f"split '{split}': feature '{feature}': {info.short_description} "
                            f"({info.description})")
        if found.HasField("dataset_anomaly_info"):
            info = found.dataset_anomaly_info
            problems.append(f"split '{split}': dataset: {info.short_description} "
                            f"({info.description})")
    return problems


@component
def AnomaliesGate(  # pylint: disable=invalid-name
        anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
        schema: InputArtifact[standard_artifacts.Schema],
        validated_schema: OutputArtifact[standard_artifacts.Schema]):
    """Raises DataValidationError on any anomaly; otherwise outputs the schema unchanged."""
    problems = describe_anomalies(anomalies)
    if problems:
        raise DataValidationError(
            "data validation failed, the run stops before Transform; ExampleValidator found:\n  "
            + "\n  ".join(problems))
    io_utils.copy_dir(schema.uri, validated_schema.uri)
