#!/usr/bin/env bash
# Set up .venv if needed, then lint, type-check and run the test suite (slow tests excluded;
# run them with: bash scripts/test.sh -m slow). Extra arguments go to pytest. A throw-away
# PostgreSQL server is started for the storage tests (scripts/postgres.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report's browser test (tests/test_report.py) drives Chromium with selenium. Install the
# browser and its driver with apt-get when they are missing, but only as root on a machine with
# apt-get (CI); elsewhere the test is skipped, and it fails under CI=true.
if ! command -v chromedriver >/dev/null 2>&1 \
   || ! { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing chromium and chromium-driver (apt-get) for the report's browser test"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null; then
      echo "[test] could not install chromium: the report's browser test will be skipped" >&2
    fi
  else
    echo "[test] no chromium/chromedriver: the report's browser test will be skipped" \
         "(Debian: apt-get install chromium chromium-driver)"
  fi
fi
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
