#!/usr/bin/env bash
# Scratch virtual environments for the peer side of benchmarks/oneshot_speed.py (runs/ is git-ignored):
#   runs/peers/nni      NNI 3.0 + pytorch-lightning + torchmetrics, on torch 2.13.0 (CPU)
#   runs/peers/xautodl  xautodl 1.0.0 (--no-deps) + numpy + pyyaml, on torch 2.13.0 (CPU)
#   runs/peers/SinglePathOneShot  the SPOS reference code (megvii-model/SinglePathOneShot, not on
#                       PyPI; pure PyTorch, run by spos_differential.py with the project's .venv):
#                       cloned from GitHub, or exported from a local git copy: SPOS_GIT=/path/to/a/clone
#
#   bash benchmarks/peers/setup_peers.sh          # idempotent: a venv with its .setup-ok marker is skipped
#   FORCE=1 bash benchmarks/peers/setup_peers.sh  # rebuild both
#
# torch==2.13.0 is installed FIRST and pinned again in every later pip command: on this machine pip
# resolves that exact version to a local CPU wheel, while an unpinned torch (or one pulled in as a
# dependency) would download a multi-GB CUDA build. torchvision is NOT installed: PyPI's build does
# not load beside the local torch, and neither worker needs it (nni_worker.py / xautodl_worker.py
# say how they avoid it). xautodl is installed without its dependencies because its pinned numpy
# does not build on Python 3.11; its NB201 search models only need torch, numpy and pyyaml.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEERS="$ROOT/runs/peers"
PY="${PYTHON:-python3.11}"
TORCH="torch==2.13.0"
mkdir -p "$PEERS"

make_venv() {  # make_venv NAME PIP-ARGS... (each further argument group separated by ';;')
    local name="$1"; shift
    local venv="$PEERS/$name"
    if [[ -f "$venv/.setup-ok" && -z "${FORCE:-}" ]]; then
        echo "== $name: $venv already set up (FORCE=1 to rebuild)"
        return
    fi
    echo "== $name: creating $venv"
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    "$venv/bin/pip" install --quiet "$TORCH"
    local group=()
    for arg in "$@" ';;'; do
        if [[ "$arg" == ';;' ]]; then
            if ((${#group[@]})); then
                echo "   pip install ${group[*]}"
                "$venv/bin/pip" install --quiet "${group[@]}"
            fi
            group=()
        else
            group+=("$arg")
        fi
    done
    "$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
assert torch.__version__.startswith("2.13.0") and "+cpu" in torch.__version__, torch.__version__
print("   torch", torch.__version__, "| torchvision installed:", any(d.metadata["Name"] == "torchvision"
      for d in md.distributions()))
EOF
    touch "$venv/.setup-ok"
}

make_venv nni nni==3.0 pytorch-lightning torchmetrics "$TORCH"
make_venv xautodl --no-deps xautodl ';;' numpy pyyaml "$TORCH"

SPOS="$PEERS/SinglePathOneShot"
SPOS_COMMIT=36eed6c  # the reference's only commit ("initial commit")
if [[ -f "$SPOS/src/Supernet/network.py" && -z "${FORCE:-}" ]]; then
    echo "== SinglePathOneShot: $SPOS already there"
else
    rm -rf "$SPOS" && mkdir -p "$SPOS"
    if [[ -n "${SPOS_GIT:-}" ]]; then
        echo "== SinglePathOneShot: exporting $SPOS_COMMIT from $SPOS_GIT"
        git -C "$SPOS_GIT" archive "$SPOS_COMMIT" | tar -x -C "$SPOS"
    else
        echo "== SinglePathOneShot: cloning github.com/megvii-model/SinglePathOneShot"
        git clone --quiet https://github.com/megvii-model/SinglePathOneShot "$SPOS"
        git -C "$SPOS" checkout --quiet "$SPOS_COMMIT"
    fi
fi

echo "== import check"
"$PEERS/nni/bin/python" -W ignore -c "import nni, pytorch_lightning as pl; \
from nni.nas.hub.pytorch import NasBench201; from nni.nas.strategy import DARTS, GumbelDARTS, RandomOneShot; \
print('   nni', nni.__version__, '| lightning', pl.__version__)"
"$PEERS/xautodl/bin/python" -c "import xautodl; from xautodl.models import get_cell_based_tiny_net; \
print('   xautodl', xautodl.version())"
