"""The xautodl side of ``nb201_differential.py``: a whole NB201 search with xautodl's models.

    runs/peers/xautodl/bin/python benchmarks/peers/xautodl_search.py --method gdas --data D.pt --init I.pt \
        --seed 0 --epochs 10 --out run.json

``--method gdas`` builds xautodl's ``TinyNetworkGDAS`` ("GDAS"), ``darts`` its ``TinyNetworkDarts``
("DARTS-V1"), ``rsps`` its ``TinyNetworkRANDOM`` ("RANDOM"), and runs the loop of
``exps/NAS-Bench-201-algos/GDAS.py`` / ``DARTS-V1.py`` / ``RANDOM-NAS.py``
(re-typed, as the scripts are not in the pip package; model, Gumbel sampling, optimizer and LR
scheduler are xautodl's own objects): per epoch ``w_scheduler.update(epoch, 0.0)`` and, for GDAS,
``set_tau(tau_max - (tau_max - tau_min) * epoch / (epochs - 1))``; per step
``scheduler.update(None, step / len(loader))``, a weight step (``zero_grad``, forward, CE, backward,
``clip_grad_norm_(network.parameters(), 5)``, SGD) on the training batch and an architecture step
(``zero_grad``, forward, CE, backward, Adam) on the validation batch. RSPS draws a uniform cell
(``random_genotype(True)``) before each weight step, has no architecture step, and at the end
scores 100 uniform cells, each on the next 512 un-augmented validation images, keeping the best
(``search_find_best``; ``RANDOM.config`` has the same SGD settings). Settings are the NB201
configs (``configs/nas-benchmark/algos/GDAS.config`` / ``DARTS.config``: SGD lr 0.025 -> 0.001
cosine, momentum 0.9, Nesterov, weight decay 5e-4; Adam 3e-4, betas (0.5, 0.999), weight decay
1e-3; tau 10 -> 0.1), with ``--epochs`` instead of 250 / 50.

Data and order come from ``_xautodl_nb201.SearchData`` (the nasforge side uses the same); the
supernet weights start from ``--init`` (nasforge's initial weights in xautodl names). The
architecture parameters keep xautodl's own ``1e-3 * randn`` start after ``torch.manual_seed(seed)``.
Writes one JSON with a record per epoch (losses, accuracies, tau, lr, ``softmax(alpha)``, cell).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _xautodl_nb201 as X  # noqa: E402

NAMES = {"gdas": "GDAS", "darts": "DARTS-V1", "rsps": "RANDOM"}
RSPS_SAMPLES, RSPS_EVAL_BATCH = 100, 512  # RANDOM-NAS.sh --select_num 100; RANDOM.config test_batch_size


def load_optimizers() -> ModuleType:
    """xautodl/procedures/optimizers.py without xautodl/procedures/__init__.py (which needs torchvision)."""
    spec = importlib.util.find_spec("xautodl")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("xautodl is not installed in this interpreter")
    path = Path(list(spec.submodule_search_locations)[0]) / "procedures" / "optimizers.py"
    mspec = importlib.util.spec_from_file_location("_xautodl_procedures_optimizers", path)
    if mspec is None or mspec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


@torch.no_grad()
def find_best(model: Any, data: X.SearchData) -> str:
    """RANDOM-NAS.py ``search_find_best``: 100 uniform cells, each scored on the next validation batch."""
    model.eval()
    batches = data.eval_batches(RSPS_EVAL_BATCH)
    best, best_acc = "", -1.0
    for _ in range(RSPS_SAMPLES):
        genotype = model.random_genotype(True)
        x, y = next(batches)
        acc = float((model(x)[1].argmax(1) == y).float().mean())
        if acc > best_acc:  # np.argmax: the first of equal maxima
            ops = [op for node in genotype.nodes for op, _ in node]
            best, best_acc = X.arch_string(ops), acc
    model.train()
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True, choices=sorted(NAMES))
    ap.add_argument("--data", required=True)
    ap.add_argument("--init", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--C", type=int, default=8)
    ap.add_argument("--N", type=int, default=1)
    ap.add_argument("--tau-max", type=float, default=10.0)
    ap.add_argument("--tau-min", type=float, default=0.1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    from xautodl.config_utils import dict2config
    from xautodl.models import get_cell_based_tiny_net, get_search_spaces

    optimizers = load_optimizers()
    space = get_search_spaces("cell", "nas-bench-201")
    model: Any = get_cell_based_tiny_net({
        "name": NAMES[args.method], "C": args.C, "N": args.N, "max_nodes": 4, "num_classes": 10,
        "space": space, "affine": False, "track_running_stats": False,
    })
    state = X.to_xautodl_state(torch.load(args.init, weights_only=True), model.state_dict())
    if hasattr(model, "arch_parameters"):
        state["arch_parameters"] = model.arch_parameters.detach().clone()  # xautodl's own 1e-3 * randn
    model.load_state_dict(state)
    config = dict2config({
        "optim": "SGD", "LR": 0.025, "momentum": 0.9, "decay": 5e-4, "nesterov": True,
        "scheduler": "cos", "epochs": args.epochs, "warmup": 0, "eta_min": 0.001, "criterion": "Softmax",
    }, None)
    weights = model.get_weights() if hasattr(model, "get_weights") else model.parameters()  # RANDOM-NAS.py: parameters()
    w_opt, w_sched, criterion = optimizers.get_optim_scheduler(weights, config)
    a_opt = (torch.optim.Adam(model.get_alphas(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
             if args.method != "rsps" else None)
    data = X.SearchData(args.data, args.seed, args.batch_size)
    history = []
    t_start = time.perf_counter()
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        w_sched.update(epoch, 0.0)
        if args.method == "gdas":
            denom = max(args.epochs - 1, 1)
            model.set_tau(args.tau_max - (args.tau_max - args.tau_min) * epoch / denom)
        model.train()
        sums = {"train_loss": 0.0, "train_acc": 0.0, "valid_loss": 0.0, "valid_acc": 0.0}
        for step, (xt, yt), (xv, yv) in data.epoch(epoch):
            w_sched.update(None, 1.0 * step / data.steps)
            if args.method == "rsps":  # RANDOM-NAS.py search_func: a uniform cell per step, weights only
                model.random_genotype(True)
            w_opt.zero_grad()
            _, logits = model(xt)
            loss = criterion(logits, yt)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5)
            w_opt.step()
            sums["train_loss"] += float(loss)
            sums["train_acc"] += 100.0 * float((logits.argmax(1) == yt).float().mean())
            if a_opt is None:
                continue
            a_opt.zero_grad()
            _, logits = model(xv)
            loss = criterion(logits, yv)
            loss.backward()
            a_opt.step()
            sums["valid_loss"] += float(loss)
            sums["valid_acc"] += 100.0 * float((logits.argmax(1) == yv).float().mean())
        if args.method == "rsps":
            probs, arch = None, None
            if epoch == args.epochs - 1:  # RANDOM-NAS.py search_find_best after the last epoch
                arch = find_best(model, data)
        else:
            with torch.no_grad():
                probs = F.softmax(model.arch_parameters, dim=-1)
            arch = X.arch_string([X.NB201_OPS[int(i)] for i in model.arch_parameters.argmax(-1)])
        means: dict[str, float | None] = {k: v / data.steps for k, v in sums.items()}
        if args.method == "rsps":  # no architecture step: no validation loss
            means["valid_loss"] = means["valid_acc"] = None
        history.append({
            "epoch": epoch, **means,
            "tau": float(model.get_tau()) if args.method == "gdas" else None, "lr": float(w_sched.get_min_lr()),
            "probs": None if probs is None else probs.tolist(), "entropy": None if probs is None else X.entropy(probs),
            "arch": arch, "seconds": time.perf_counter() - t0,
        })
        last = history[-1]
        valid = "" if last["valid_loss"] is None else f" valid {last['valid_loss']:.3f}"
        print(f"[xautodl {args.method} seed {args.seed}] epoch {epoch}: {last['arch'] or ''} "
              f"train {last['train_loss']:.3f}{valid}", flush=True)
    Path(args.out).write_text(json.dumps({
        "impl": "xautodl", "method": args.method, "seed": args.seed, "history": history,
        "arch": history[-1]["arch"], "seconds": time.perf_counter() - t_start,
    }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
