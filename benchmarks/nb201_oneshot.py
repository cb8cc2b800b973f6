"""One-shot methods under the NAS-Bench-201 protocol: search on CIFAR-10, look the cell up.

    .venv/bin/python benchmarks/nb201_oneshot.py --methods darts,gdas --seeds 0,1,2

Each (method, seed) runs ``nasforge search --method M --space nb201 --split nb201`` on the
CIFAR-10 25k/25k split from the data kit (a stratified ``--train-subset`` of it on CPU), with
the search cells' BN ``affine=False, track_running_stats=False`` as the NB201 paper's one-shot
runs, then looks the derived cell up in the NB201 table (``cifar10_test_acc``, 200-epoch
training). The default budget is a documented CPU reduction of the paper's (C=16, N=5, 50-250
epochs on 25k/25k): width ``--C``, cells per stage ``--N``, ``--train-subset`` images,
``--epochs`` epochs. Every run is resumable (rerun the same command); results go to
``--out/<method>/seed<k>/results.json`` and the summary table to ``--out/summary.md``.

``--paper-budget`` runs the NB201 paper's protocol instead (for a GPU: add ``--device cuda``):
C=16, N=5, the whole 25k/25k split, and each method's own epochs and batch size (its defaults,
which follow its paper or reference, or the NB201 settings in ``PAPER_OPTIONS``). The output
format is the same. Variants: ``darts2`` (second order), ``gdas_ref`` (xautodl's gradient form),
``snas_t150`` (the reference's 150-epoch temperature schedule), ``snas_ref`` (that and the
reference README's log resource penalty, reparametrised, eta 1.5e-3).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARAMETER_FREE = ("none", "skip_connect", "avg_pool_3x3")

# Method options that differ from the method's defaults for this protocol (documented in docs/benchmarks.md):
# the NB201 paper's settings where the method has them, and a smaller ranking budget for the
# sample-and-rank methods (every candidate costs forward passes on CPU).
PROTOCOL_OPTIONS: dict[str, dict[str, object]] = {
    "darts": {"weight_decay": 5e-4, "nesterov": True},  # NB201 paper's DARTS runs (xautodl DARTS.config)
    "darts2": {"order": 2, "weight_decay": 5e-4, "nesterov": True},
    "gdas_ref": {"reference_gradient": True},  # GDAS with xautodl's gradient to unselected ops
    "pc_darts": {"lr": 0.025, "warmup_epochs": 3},  # batch 64 instead of 256: lr scaled by 1/4; warm-up 15/50 of the epochs
    "enas": {"weight_decay": 2.5e-4, "controller_steps": 50, "controller_num_aggregate": 20, "controller_lr": 1e-3,
             "controller_grad_clip": 5.0, "lstm_size": 32, "lstm_layers": 2, "temperature": 5.0, "tanh_constant": 2.5,
             "op_tanh_reduce": 1.0},  # xautodl NB201 ENAS settings (nasforge.methods.enas.NB201_PROTOCOL)
    "rsps": {"weight_decay": 5e-4, "nesterov": True, "grad_clip": 5.0, "num_samples": 100, "screen_batches": 1,
             "top_k": 0, "eval_batch_size": 512},  # xautodl RANDOM-NAS on NB201 (RANDOM.config test_batch_size 512)
    "one_shot": {"num_samples": 100, "eval_batches": 1},
    "smash": {"num_samples": 100, "eval_batches": 1, "eval_batch_size": 64},
    "snas_t150": {"tau_epochs": 150},  # the reference's Temp_Scheduler length, whatever the epochs
    "snas_ref": {"tau_epochs": 150, "resource_weight": 1.5e-3, "resource_form": "log",
                 "resource_estimator": "reparametrization"},  # SNAS README CIFAR-10 command (one resource)
}
#: Variant name -> registered method.
VARIANTS = {"darts2": "darts", "gdas_ref": "gdas", "snas_t150": "snas", "snas_ref": "snas"}

#: ``--paper-budget`` options: the NB201 paper's settings where the method has them (epochs and
#: batch size from the method's defaults otherwise, which follow its own paper or reference).
PAPER_OPTIONS: dict[str, dict[str, object]] = {
    "darts": {"weight_decay": 5e-4, "nesterov": True},  # xautodl DARTS.config: 50 epochs, batch 64
    "darts2": {"order": 2, "weight_decay": 5e-4, "nesterov": True},
    "gdas_ref": {"reference_gradient": True},  # gdas defaults: GDAS.config, 250 epochs, batch 64
    "rsps": {**PROTOCOL_OPTIONS["rsps"], "epochs": 250},  # xautodl RANDOM.config
    "snas_t150": PROTOCOL_OPTIONS["snas_t150"],
    "snas_ref": PROTOCOL_OPTIONS["snas_ref"],
}


def paper_options(method: str) -> dict[str, object]:
    """The options of ``method`` under ``--paper-budget``."""
    if method == "enas":
        from nasforge.methods.enas import NB201_PROTOCOL

        return dict(NB201_PROTOCOL)  # xautodl's NB201 ENAS settings
    return dict(PAPER_OPTIONS.get(method, {}))


def method_options(method: str, epochs: int, batch_size: int, C: int = 8, N: int = 1) -> dict[str, object]:
    """The options of ``method`` for this protocol.

    DSO-NAS splits its epochs into pre-training and search. P-DARTS sets width and depth itself:
    its three stages have N, N + 1, N + 2 cells per stage (3N + 2, 3N + 5, 3N + 8 cells) of width
    C, ``epochs`` epochs each, the architecture frozen for the first 40% of a stage (10 of 25 in
    the paper).
    """
    budget: dict[str, object] = {"batch_size": batch_size}
    if method == "dso_nas":
        budget.update(pretrain_epochs=epochs // 2, search_epochs=epochs - epochs // 2)
    else:
        budget["epochs"] = epochs
    if method == "p_darts":
        warm = (epochs * 2) // 5
        budget.update(C=C, layers=3 * N + 2, add_layers=(0, 3, 6), arch_warmup_epochs=(warm, warm, warm))
    return {**budget, **PROTOCOL_OPTIONS.get(method, {})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", default=os.environ.get("NASFORGE_DATA_KIT", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--cache", default=str(ROOT / "runs" / "cache" / "cifar10"), help="where the CIFAR-10 batches are written")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nb201_oneshot"))
    ap.add_argument("--methods", default="darts,darts2,gdas,snas,pc_darts,enas,rsps,one_shot,smash,dso_nas",
                    help="one-shot methods; darts2 = darts with order=2, gdas_ref = gdas with reference_gradient=true")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--C", type=int, default=8)
    ap.add_argument("--N", type=int, default=1)
    ap.add_argument("--train-subset", type=int, default=5000, help="images of the 25k/25k split used (half each side)")
    ap.add_argument("--max-batches-per-epoch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--paper-budget", action="store_true",
                    help="C=16, N=5, the whole 25k/25k split, each method's paper epochs and batch (ignores --C/--N/--epochs/--batch-size/--train-subset)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.paper_budget:
        args.C, args.N, args.train_subset, args.epochs, args.batch_size = 16, 5, None, None, None

    import torch

    torch.set_num_threads(args.threads)
    kit = Path(args.kit)
    batches = Path(args.cache) / "cifar-10-batches-py"
    if not args.report_only and not (batches / "test_batch").exists():
        subprocess.run([sys.executable, str(kit / "cifar10" / "materialize.py"), "batches", args.cache], check=True)
    table = kit / "nb201" / "nb201_table.csv.gz"
    out = Path(args.out)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    from nasforge import registry
    from nasforge.experiment import SearchConfig, run_search

    for method in methods:
        name = VARIANTS.get(method, method)
        if name not in registry.names("method"):
            print(f"skipping {method}: not a registered method")
            continue
        for seed in seeds:
            run_dir = out / method / f"seed{seed}"
            if args.report_only or (run_dir / "results.json").exists():
                continue
            cfg = SearchConfig(
                method=name, space="nb201", data="cifar10", data_root=str(batches), split="nb201",
                train_subset=args.train_subset, seed=seed, table=str(table), final_train=False, out=str(run_dir),
                supernet_kwargs={**({} if name == "p_darts" else {"C": args.C, "N": args.N}),
                                 "affine": False, "track_running_stats": False},
                method_kwargs=(paper_options(method) if args.paper_budget
                               else method_options(method, args.epochs, args.batch_size, args.C, args.N)),
                max_batches_per_epoch=args.max_batches_per_epoch, device=args.device,
            )
            t0 = time.perf_counter()
            run_search(cfg, progress=False, log=lambda s, m=method, k=seed: print(f"[{m} seed {k}] {s}", flush=True))
            print(f"[{method} seed {seed}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(report(out, methods, seeds, args))
    return 0


def report(out: Path, methods: list[str], seeds: list[int], args: argparse.Namespace) -> str:
    data = "the whole 25k/25k split" if args.train_subset is None else f"{args.train_subset} images of the 25k/25k split"
    budget = ("each method's paper epochs and batch size" if args.epochs is None
              else f"{args.epochs} epochs, batch {args.batch_size}")
    lines = [
        f"Budget: C={args.C}, N={args.N}, {data}, {budget}; seeds {seeds}; device {args.device}.",
        "",
        "| method | runs | C10 test acc of the derived cell (NB201 table), mean ± sd | parameter-free edges (of 6), mean "
        "| most frequent cell | search time per run |",
        "|---|---|---|---|---|---|",
    ]
    summary = {}
    for method in methods:
        records = []
        for seed in seeds:
            path = out / method / f"seed{seed}" / "results.json"
            if path.exists():
                records.append(json.loads(path.read_text()))
        if not records:
            continue
        accs = [r["best"]["table"]["test_acc"] for r in records]
        archs = [r["best"]["arch"] for r in records]
        free = [sum(arch.count(op + "~") for op in PARAMETER_FREE) for arch in archs]
        secs = [r["search_seconds_this_run"] for r in records]
        common, _ = Counter(archs).most_common(1)[0]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {method} | {len(records)} | {statistics.mean(accs):.2f} ± {sd:.2f} | {statistics.mean(free):.1f} "
                     f"| `{common}` | {statistics.mean(secs):.0f} s |")
        summary[method] = {"test_acc": accs, "archs": archs, "parameter_free_edges": free, "seconds": secs}
    text = "\n".join(lines)
    if summary:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(text + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return text


if __name__ == "__main__":
    sys.exit(main())
