#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite; extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit $?
# The optional PyTorch encoders are part of what the suite tests (tests/test_torch_encoders.py).
if ! .venv/bin/python -c "import torch, sentence_transformers, efficientnet_lite_pytorch" \
    >/dev/null 2>&1; then
  bash scripts/install_torch_extra.sh || exit $?
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1  # an empty suite is a failure, not a pass
fi
exit "$status"
