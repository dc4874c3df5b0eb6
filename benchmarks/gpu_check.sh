#!/usr/bin/env bash
# GPU check, one prepared run on a machine with NVIDIA GPUs; prints one JSON line.
#
#   bash benchmarks/gpu_check.sh            # ITERATIONS=30 PIPELINE_EPOCHS=10 by default
#
# 1. benchmarks/train_throughput.py (paper dimensions, global batch 64) on ONE GPU
#    (CUDA_VISIBLE_DEVICES=<first>), XLA off and on, float32 and mixed_float16;
# 2. the same on ALL visible GPUs with --strategy mirrored (XLA off: it needs one replica),
#    float32 and mixed_float16;
# 3. the demo pipeline, `cmgan run --strategy mirrored` (all GPUs), its wall time and MAP.
# Without a GPU visible to TensorFlow it says so on stderr and exits 2, running nothing. A step
# that fails is reported under "errors" (the others still run) and the script exits 1.
# Not yet run on a GPU (README, "GPUs and mixed precision").
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
ITERATIONS=${ITERATIONS:-30}
PIPELINE_EPOCHS=${PIPELINE_EPOCHS:-10}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TF_CPP_MIN_LOG_LEVEL=2

gpu_count=$("$PYTHON" -c 'import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))' 2>/dev/null | tail -1 || echo 0)
if ! [ "${gpu_count:-0}" -ge 1 ] 2>/dev/null; then
  smi=$(nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found or no driver")
  echo "gpu_check: no GPU visible to TensorFlow ($smi; CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset})." >&2
  echo "gpu_check: run it on a machine with an NVIDIA GPU, its driver, and TensorFlow's CUDA build (pip install 'tensorflow[and-cuda]'); nothing was run." >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
first_gpu=$(echo "${CUDA_VISIBLE_DEVICES:-0}" | cut -d, -f1)

failed=0
throughput() {  # name, CUDA_VISIBLE_DEVICES, then train_throughput.py flags
  local name=$1 devices=$2
  shift 2
  echo "gpu_check: $name ..." >&2
  if CUDA_VISIBLE_DEVICES=$devices "$PYTHON" benchmarks/train_throughput.py \
      --iterations "$ITERATIONS" "$@" > "$work/$name.out" 2> "$work/$name.err"; then
    tail -1 "$work/$name.out" > "$work/$name.json"
  else  # record it and go on: the other figures are still worth having
    echo "gpu_check: $name failed:" >&2; tail -20 "$work/$name.err" >&2
    tail -5 "$work/$name.err" > "$work/$name.error"; failed=1
  fi
}

all_gpus=${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((gpu_count - 1)))}
throughput one_gpu_float32 "$first_gpu" --strategy default --xla both
throughput one_gpu_mixed_float16 "$first_gpu" --strategy default --xla both \
  --precision mixed_float16
throughput all_gpus_float32 "$all_gpus" --strategy mirrored --xla off
throughput all_gpus_mixed_float16 "$all_gpus" --strategy mirrored --xla off \
  --precision mixed_float16

echo "gpu_check: cmgan run --strategy mirrored (demo, $PIPELINE_EPOCHS epochs) ..." >&2
start=$(date +%s)
if ! CUDA_VISIBLE_DEVICES=$all_gpus "$PYTHON" -m pipeline run --dataset demo \
    --strategy mirrored --epochs "$PIPELINE_EPOCHS" --pipeline-root "$work/root" \
    --serving-root "$work/serving" --metrics-out "$work/pipeline_metrics.json" \
    > "$work/pipeline.out" 2>&1; then
  echo "gpu_check: cmgan run failed:" >&2; tail -30 "$work/pipeline.out" >&2
  tail -5 "$work/pipeline.out" > "$work/pipeline.error"; failed=1
fi
echo $(( $(date +%s) - start )) > "$work/pipeline_seconds"

"$PYTHON" - "$work" "$gpu_count" <<'EOF'
import json
import pathlib
import shutil
import subprocess
import sys

work, gpu_count = pathlib.Path(sys.argv[1]), int(sys.argv[2])
names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                       capture_output=True, text=True).stdout.split("\n") if shutil.which(
                           "nvidia-smi") else []
runs = {path.stem: json.loads(path.read_text()) for path in sorted(work.glob("*.json"))
        if path.stem != "pipeline_metrics"}
errors = {path.stem: path.read_text() for path in sorted(work.glob("*.error"))}
metrics = work / "pipeline_metrics.json"


def examples_per_s(run, xla):
    result = runs[run].get(f"xla_{xla}")
    return round(result["examples_per_s"], 1) if result else None


print(json.dumps({
    "benchmark": "gpu_check", "gpu_count": gpu_count, "gpus": [n for n in names if n],
    "examples_per_s": {run: {"xla_off": examples_per_s(run, "off"),
                             "xla_on": examples_per_s(run, "on")} for run in runs},
    "train_throughput": runs,
    "pipeline": {"command": "cmgan run --dataset demo --strategy mirrored",
                 "wall_s": int((work / "pipeline_seconds").read_text()),
                 "metrics": json.loads(metrics.read_text()) if metrics.exists() else None},
    "errors": errors,
}))
EOF
exit $failed
