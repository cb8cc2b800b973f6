"""xautodl (AutoDL-Projects) NAS-Bench-201 search models: one search step of DARTS / GDAS / SPOS, and a fixed net.

    runs/peers/xautodl/bin/python benchmarks/peers/xautodl_worker.py --method darts --steps 10 --warmup 2

Models are xautodl's own, built by ``xautodl.models.get_cell_based_tiny_net`` (the pip package
``xautodl`` 1.0.0, imported from its venv; nothing of it is copied here). One measured step
follows the loop of the repository's ``exps/NAS-Bench-201-algos/*.py`` scripts (the scripts are
not in the pip package, so the loop is re-typed here; model, ops, Gumbel sampling, optimizer and
LR-scheduler objects are xautodl's):

- darts: ``name="DARTS-V1"`` (``TinyNetworkDarts``: softmax-weighted python-loop sum of all 5 ops
  per edge). ``search_func`` of ``DARTS-V1.py``: ``scheduler.update``; weight step (``zero_grad``,
  forward on the train batch, CE, backward, ``clip_grad_norm_(network.parameters(), 5)``, SGD step);
  arch step (``zero_grad``, forward on the valid batch, CE, backward, Adam step).
- gdas: ``name="GDAS"`` (``TinyNetworkGDAS``: hard Gumbel-softmax with straight-through, one sample
  per forward shared by all cells, ``forward_gdas`` runs only the sampled op), ``set_tau(10)``;
  the loop of ``GDAS.py`` (same shape as DARTS-V1's, clip 5).
- spos: ``name="RANDOM"`` (``TinyNetworkRANDOM``), the weight-sharing random-search model of
  ``RANDOM-NAS.py`` (Li & Talwalkar): each step ``random_genotype(True)`` draws one cell uniformly
  (one op per edge), shared by all cells, then one weight step with clip 5 -- a uniform single
  path, i.e. SPOS-style supernet training. (SETN's and ``generic``'s ``urs`` mode also sample
  uniformly, but per cell and rejecting all-"none" nodes, so they are not the plain uniform path.)
- fixed: ``name="infer.tiny"`` (``TinyNetwork`` of ``_protocol.fixed_arch(seed)``, affine BN),
  zero_grad, forward, CE, backward, SGD step.

Left out of the timed step, in all workers alike: accuracy meters, ``loss.item()`` logging, data
loading, ``DataParallel``/``.cuda()`` (CPU run). Search cells use ``affine=False``,
``track_running_stats=False`` (the scripts' ``--track_running_stats 0``).

Import note: ``xautodl.procedures`` imports its dataset code (PIL, torchvision) at package import,
so ``get_optim_scheduler`` is loaded straight from ``xautodl/procedures/optimizers.py`` (that file
imports only math, bisect and torch); nothing else needs torchvision, and no stub is used.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocol as P  # noqa: E402

IMPL = "xautodl"
NAMES = {"darts": "DARTS-V1", "gdas": "GDAS", "spos": "RANDOM"}


def _load_optimizers() -> ModuleType:
    """xautodl/procedures/optimizers.py without running xautodl/procedures/__init__.py."""
    spec = importlib.util.find_spec("xautodl")
    assert spec is not None and spec.submodule_search_locations
    path = Path(list(spec.submodule_search_locations)[0]) / "procedures" / "optimizers.py"
    mspec = importlib.util.spec_from_file_location("_xautodl_procedures_optimizers", path)
    assert mspec is not None and mspec.loader is not None
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


def main() -> None:
    args = P.parse_args()
    if args.method not in P.METHODS:
        P.emit_error(f"unknown method {args.method!r}")
        return
    P.setup_torch(args.seed)

    import xautodl
    from xautodl.config_utils import dict2config
    from xautodl.models import CellStructure, get_cell_based_tiny_net, get_search_spaces

    optimizers = _load_optimizers()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    (xt, yt), (xv, yv) = P.make_batches(args.channels_last)
    # configs/nas-benchmark/algos/*.config of AutoDL-Projects (SGD, nesterov, cosine, CE)
    config = dict2config({
        "optim": "SGD", "LR": P.W_LR, "momentum": P.W_MOMENTUM, "decay": P.W_DECAY, "nesterov": P.W_NESTEROV,
        "scheduler": "cos", "epochs": 50, "warmup": 0, "eta_min": 0.001, "criterion": "Softmax",
    }, None)
    space = get_search_spaces("cell", "nas-bench-201")
    assert list(space) == list(P.NB201_OPS), space
    version = xautodl.version() if callable(getattr(xautodl, "version", None)) else "?"

    if args.method == "fixed":
        ops = P.fixed_arch(args.seed)
        net = get_cell_based_tiny_net({
            "name": "infer.tiny", "C": P.C, "N": P.N_CELLS, "num_classes": P.NUM_CLASSES,
            "genotype": CellStructure.str2structure(P.arch_str(ops)),
        }).to(memory_format=fmt)
        opt, _sched, criterion = optimizers.get_optim_scheduler(net.parameters(), config)
        net.train()

        def step() -> None:
            opt.zero_grad()
            _, logits = net(xt)
            criterion(logits, yt).backward()
            opt.step()

        notes = f"xautodl {version} TinyNetwork (infer.tiny) {P.arch_str(ops)}; fwd+bwd+SGD"
    else:
        model: Any = get_cell_based_tiny_net({
            "name": NAMES[args.method], "C": P.C, "N": P.N_CELLS, "max_nodes": P.MAX_NODES,
            "num_classes": P.NUM_CLASSES, "space": space, "affine": False, "track_running_stats": False,
        }).to(memory_format=fmt)
        w_opt, sched, criterion = optimizers.get_optim_scheduler(
            model.get_weights() if hasattr(model, "get_weights") else model.parameters(), config)
        model.train()
        it = {"n": 0}

        def weight_step() -> None:
            sched.update(None, (it["n"] % 1000) / 1000.0)  # search_func: scheduler.update(None, step / len(loader))
            it["n"] += 1
            w_opt.zero_grad()
            _, logits = model(xt)
            criterion(logits, yt).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), P.GRAD_CLIP)
            w_opt.step()

        if args.method == "spos":
            def step() -> None:
                model.random_genotype(True)
                weight_step()

            notes = f"xautodl {version} TinyNetworkRANDOM (RANDOM-NAS loop): random_genotype + weight step (clip 5)"
        else:
            if args.method == "gdas":
                model.set_tau(P.GDAS_TAU)
            a_opt = torch.optim.Adam(model.get_alphas(), lr=P.A_LR, betas=P.A_BETAS, weight_decay=P.A_DECAY)

            def step() -> None:
                weight_step()
                a_opt.zero_grad()
                _, logits = model(xv)
                criterion(logits, yv).backward()
                a_opt.step()

            cls = type(model).__name__
            notes = f"xautodl {version} {cls} ({NAMES[args.method]} loop): weight step (clip 5) + arch step"

    rss0 = round(P.peak_rss_mb(), 1)
    times = P.time_steps(step, args.steps, args.warmup)
    P.emit(IMPL, args.method, times, notes, setup_rss_mb=rss0, channels_last=args.channels_last)


if __name__ == "__main__":
    main()
