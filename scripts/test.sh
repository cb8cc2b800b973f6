#!/usr/bin/env bash
# Set up .venv if needed, then lint, type-check and run the test suite (slow tests excluded;
# run them with: bash scripts/test.sh -m slow). Extra arguments go to pytest. A throw-away
# PostgreSQL server is started for the storage tests (scripts/postgres.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] ruff"
.venv/bin/ruff check src tests benchmarks
echo "[test] mypy"
.venv/bin/mypy
echo "[test] pytest"
if [ -z "${NASFORGE_TEST_POSTGRES:-}" ]; then
  # shellcheck source=scripts/postgres.sh
  source scripts/postgres.sh
  nasforge_pg_start
fi
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
.venv/bin/python -m pytest "$@"
