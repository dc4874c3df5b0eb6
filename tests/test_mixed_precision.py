"""Mixed precision (`precision` hparam) under MirroredStrategy on two logical CPU devices.

One subprocess (tests/scripts/mixed_precision_training.py) with TF_USE_LEGACY_KERAS=1, as in
the TFX Trainer's process (importing TFT sets it): the model code is Keras 3 either way.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.cmgan import LOSS_NAMES
from models.config_errors import ConfigError
from models.hparams import CMGANHParams

REPO = Path(__file__).resolve().parents[1]


def test_mixed_float16_on_two_replicas_trains_resumes_and_exports_float32(tmp_path):
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [
               os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, str(REPO / "tests" / "scripts"
                                              / "mixed_precision_training.py"), str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout)
    assert report["replicas"] == 2 and report["legacy_keras_env"] == "1"
    assert report["keras_version"].startswith("3.")
    # float16 compute, float32 variables; the global policy is restored after the build.
    assert report["layer_compute_dtype"] == "float16"
    assert report["layer_variable_dtype"] == "float32"
    assert report["variable_dtypes"] == ["float32"]
    assert report["global_policy_after"] == "float32"
    # Every optimizer scales its loss; replicas agree on every scale and every weight.
    assert report["optimizers"] == ["_ReplicaConsistentLossScaleOptimizer"]
    assert len(report["loss_scales"]) == 6
    for scales in report["loss_scales"].values():
        assert len(scales) == 2 and scales[0] == scales[1] > 0
    assert report["mismatched"] == []
    # Resumed from the first run's checkpoint (loss scales included), losses finite.
    assert report["resumed_from_epoch"] == 1
    assert [record["epoch"] for record in report["history"]] == [2]
    for record in report["history"]:
        for name in LOSS_NAMES:
            assert math.isfinite(record[name]), name
    assert 0.0 < report["val"]["mean"] <= 1.0
    # Outputs of the exported encoders are float32.
    assert report["exported_dtypes"] == {"encode_image": "float32", "encode_text": "float32"}
    assert report["exported_finite"]


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="precision"):
        CMGANHParams.from_dict({"precision": "float16"})
    assert CMGANHParams.from_dict({"precision": "mixed_bfloat16"}).precision == "mixed_bfloat16"
