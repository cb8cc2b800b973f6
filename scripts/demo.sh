#!/usr/bin/env bash
# Set up .venv if needed, then run a real architecture search on the built-in 8x8 digits data:
# regularized evolution over NAS-Bench-201 cells, each candidate trained for 8 epochs, the best
# retrained for 30 epochs, tested, and exported (safetensors + ONNX) to runs/demo.
# About 2 minutes on 2 CPU cores. Rerunning resumes (or just reprints) the same run; extra
# arguments go to `nasforge search` (e.g. --out runs/other --seed 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/nasforge search --space nb201 --method evolution --data digits \
  --trials 30 --epochs 8 --final-epochs 30 --out runs/demo "$@"
echo
echo "next: scripts/nasforge show runs/demo   (or: source .venv/bin/activate; nasforge show runs/demo)"
