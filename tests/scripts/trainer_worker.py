"""One worker of a multi-worker TFX Trainer: the Trainer's own executor (GenericExecutor.Do, what
tfx.scripts.run_executor runs on every replica of a Vertex AI or Kubeflow training job), with the
inputs and properties of a finished pipeline run's Trainer execution, the strategy switched to
multi_worker, under this process's TF_CONFIG.

usage: trainer_worker.py METADATA_PATH PIPELINE_NAME OUTPUT_DIR [HPARAM=INT ...]
The model goes to OUTPUT_DIR/model, the run folder to OUTPUT_DIR/model_run, checkpoints to
OUTPUT_DIR/checkpoints (the finished run's folders are left as they are). Logs on stderr.
"""
import json
import logging
import os
import sys

from ml_metadata.proto import metadata_store_pb2
from tfx.components.trainer.executor import GenericExecutor
from tfx.types import artifact_utils, standard_artifacts

from pipeline.metadata import artifacts, latest_run_executions, open_store, properties


def main(metadata_path: str, pipeline_name: str, output_dir: str, *overrides: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    models_log = logging.getLogger("models")
    models_log.addHandler(handler)
    models_log.setLevel(logging.INFO)

    store = open_store(metadata_path)
    execution = latest_run_executions(metadata_path, pipeline_name)["Trainer"]
    inputs = artifacts(store, execution.id, kinds=(metadata_store_pb2.Event.INPUT,))
    input_dict = {key: [artifact_utils.deserialize_artifact(
        store.get_artifact_types_by_id([a.type_id])[0], a) for a in protos]
        for key, protos in inputs.items()}
    exec_properties = properties(execution)
    config = json.loads(exec_properties["custom_config"])
    config["hparams"].update({key: int(value) for key, value in
                              (override.split("=", 1) for override in overrides)})
    config.update(strategy="multi_worker", checkpoint_root=os.path.join(output_dir, "checkpoints"))
    exec_properties["custom_config"] = json.dumps(config)
    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri = os.path.join(output_dir, "model")
    model_run.uri = os.path.join(output_dir, "model_run")
    context = GenericExecutor.Context(tmp_dir=os.path.join(output_dir, "executor_tmp", ""),
                                      unique_id=os.environ.get("CMGAN_WORKER", "0"))
    GenericExecutor(context).Do(input_dict, {"model": [model], "model_run": [model_run]},
                                exec_properties)


if __name__ == "__main__":
    main(*sys.argv[1:])
