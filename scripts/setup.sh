#!/usr/bin/env bash
# Create .venv and install nasforge into it (editable, with the test tools).
# torch is installed first and explicitly: an unpinned `torch` would pull a multi-GB CUDA build.
# Override the torch requirement with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.5.1").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.nasforge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    echo "[setup] installing ${TORCH_SPEC:-torch==2.13.0} (CPU build)"
    .venv/bin/pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
  fi
  echo "[setup] installing nasforge and its dependencies"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
  touch "$stamp"
fi
# The report's browser test (tests/test_report.py) drives Chromium with selenium. Install the
# browser and its driver with apt-get when they are missing, but only as root on a machine with
# apt-get (CI); elsewhere the test is skipped, and it fails under CI=true.
if ! command -v chromedriver >/dev/null 2>&1 \
   || ! { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing chromium and chromium-driver (apt-get) for the report's browser test"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null; then
      echo "[setup] could not install chromium: the report's browser test will be skipped" >&2
    fi
  else
    echo "[setup] no chromium/chromedriver: the report's browser test will be skipped" \
         "(Debian: apt-get install chromium chromium-driver)"
  fi
fi
