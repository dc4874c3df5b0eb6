#!/usr/bin/env bash
# Make .venv from requirements.lock and install this project into it (editable).
# Idempotent: a stamp holding the hash of the lock and setup.py makes a repeat run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${CMGAN_PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && \
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "setup: Python 3.11 not found (set CMGAN_PYTHON)" >&2; exit 1; }

# Headless Chromium + its WebDriver (Debian packages) for the search page's browser test
# (tests/test_web.py). Nothing happens when both are present.
install_browser() {
  local apt=(apt-get)
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "setup: chromium/chromedriver missing and not root (no sudo): install the Debian" \
           "packages chromium and chromium-driver for tests/test_web.py" >&2; return 0; }
    apt=(sudo -n apt-get)
  fi
  echo "setup: installing chromium and chromium-driver (apt-get)" >&2
  local install=("${apt[@]}" install -y -q --no-install-recommends chromium chromium-driver)
  DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -q >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null || \
      echo "setup: warning: could not install chromium/chromium-driver" >&2; }
}
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || install_browser

want=$(cat requirements.lock setup.py | sha256sum | cut -d' ' -f1)
stamp=.venv/.cmgan-setup-stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/cmgan ]; then
  exit 0
fi

echo "setup: creating .venv with $("$PYTHON" --version) from requirements.lock" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# pip stays in the venv: TFX shells out to it. uv resolves nothing here, it installs the lock.
.venv/bin/python -m pip install -q --disable-pip-version-check uv==0.13.9
.venv/bin/python -m uv pip install -q -p .venv/bin/python -r requirements.lock
.venv/bin/python -m uv pip install -q -p .venv/bin/python --no-deps -e .
echo "$want" > "$stamp"
echo "setup: done (.venv/bin/cmgan)" >&2
