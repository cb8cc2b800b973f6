#!/usr/bin/env bash
# Set up .venv if needed, then lint, type-check and run the test suite (slow tests excluded;
# run them with: bash scripts/test.sh -m slow). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] ruff"
.venv/bin/ruff check src tests benchmarks
echo "[test] mypy"
.venv/bin/mypy
echo "[test] pytest"
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec .venv/bin/python -m pytest "$@"
