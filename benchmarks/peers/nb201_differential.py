"""Differential NB201 search runs: nasforge's GDAS / DARTS against xautodl's on identical set-ups.

    bash benchmarks/peers/setup_peers.sh         # once: the xautodl venv
    .venv/bin/python benchmarks/peers/nb201_differential.py --methods gdas,darts --seeds 0,1,2 --epochs 10

For every (method, seed) the runs share:

* the images: ``--train-subset`` images of the 25k/25k split (nasforge's stratified NB201 split of
  the data kit's CIFAR-10, seed 0; the same subset for every seed), half for weights, half for
  architecture parameters;
* the batch order and augmentation: ``_xautodl_nb201.SearchData`` (per epoch a seeded permutation
  of the training half, validation images drawn with replacement as xautodl's ``SearchDataset``,
  random crop with padding 4 and flip from a generator seeded by (seed, epoch, batch));
* the initial supernet weights: nasforge's seeded initialisation, copied into xautodl's model;
* C, N, batch, epochs, optimizer settings and the temperature schedule (the NB201 configs).

What differs is only the implementation: model code, sampling, update steps. Implementations:
``xautodl`` (``xautodl_search.py`` in the peers venv), ``nasforge`` (``nasforge_search.py``: the
library's method) and, for GDAS, ``nasforge_ref`` (``reference_gradient=true``, xautodl's
gradient form). Each run's derived cell after every epoch is looked up in the NB201 table
(``cifar10_test_acc``). Output under ``--out``: one JSON per run, ``summary.json``,
``summary.md`` (per run: final cell, accuracy, parameter-free edges, entropy, time; per method
and implementation: mean +- sd) and ``trajectories.png``. Runs already written are skipped
(rerun the command to resume); ``--jobs`` runs that many processes (one thread each); SIGTERM or
Ctrl-C stops them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PARAMETER_FREE = ("none", "skip_connect", "avg_pool_3x3")
SCRATCH = ROOT / "runs" / "differential"  # data, initial weights and logs (git-ignored)
IMPLS = {"gdas": ("xautodl", "nasforge", "nasforge_ref"), "darts": ("xautodl", "nasforge"), "rsps": ("xautodl", "nasforge")}


def prepare_data(kit: Path, n: int, path: Path) -> None:
    """Write ``n // 2`` training and ``n - n // 2`` validation images (uint8 HWC) of the 25k/25k split."""
    if path.exists():
        return
    import importlib.util

    import numpy as np
    import torch

    from nasforge.data.splits import split_indices

    spec = importlib.util.spec_from_file_location("kit_materialize", kit / "cifar10" / "materialize.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no CIFAR-10 in the data kit at {kit}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x, y, _ = mod.decode("train")
    train_pos, valid_pos = split_indices(torch.as_tensor(y), 25_000, seed=0)
    picks = []
    for half, k in ((train_pos, n // 2), (valid_pos, n - n // 2)):
        _, sub = split_indices(torch.as_tensor(y[half]), k, seed=0)
        picks.append(np.asarray(half)[sub])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "train_x": torch.as_tensor(x[picks[0]]), "train_y": torch.as_tensor(y[picks[0]]),
        "valid_x": torch.as_tensor(x[picks[1]]), "valid_y": torch.as_tensor(y[picks[1]]),
    }, path)


def command(impl: str, method: str, seed: int, args: argparse.Namespace, data: Path, init: Path, out: Path) -> list[str]:
    common = ["--method", method, "--data", str(data), "--seed", str(seed), "--epochs", str(args.epochs),
              "--batch-size", str(args.batch_size), "--C", str(args.C), "--N", str(args.N), "--out", str(out)]
    if impl == "xautodl":
        return [args.xautodl_python, str(HERE / "xautodl_search.py"), *common, "--init", str(init)]
    extra = ["--write-init", str(init)] if impl == "nasforge" else ["--option", "reference_gradient=true"]
    return [sys.executable, str(HERE / "nasforge_search.py"), *common, *extra]


def run_all(args: argparse.Namespace, out: Path, data: Path) -> None:
    """Every missing run; per (method, seed) nasforge first (it writes the shared initial weights)."""
    groups = []
    for method in args.methods:
        for seed in args.seeds:
            init = SCRATCH / "init" / f"C{args.C}_N{args.N}_seed{seed}.pt"
            todo = [(impl, out / method / impl / f"seed{seed}.json") for impl in IMPLS[method] if impl in args.impls]
            todo = [(impl, p) for impl, p in todo if not p.exists()]
            todo.sort(key=lambda item: item[0] != "nasforge")  # nasforge first: it writes the initial weights
            if todo and not init.exists() and todo[0][0] != "nasforge":
                todo.insert(0, ("nasforge", out / method / "nasforge" / f"seed{seed}.json"))
            if todo:
                groups.append([(impl, method, seed, init, p) for impl, p in todo])
    running: dict[int, tuple[subprocess.Popen[bytes], list[Any]]] = {}

    def stop(signum: int, _frame: Any) -> None:
        for proc, _ in running.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    (SCRATCH / "init").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    while groups or running:
        while groups and len(running) < args.jobs:
            group = groups.pop(0)
            impl, method, seed, init, path = group[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            log_path = SCRATCH / "logs" / out.name / path.relative_to(out).with_suffix(".log")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(log_path, "wb")  # noqa: SIM115 - closed when the process ends
            proc = subprocess.Popen(command(impl, method, seed, args, data, init, path), stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
            print(f"started {method} {impl} seed {seed} (pid {proc.pid})", flush=True)
            running[proc.pid] = (proc, [group[1:], log, path, time.perf_counter(), log_path])
        time.sleep(1.0)
        for pid in list(running):
            proc, (rest, log, path, t0, log_path) = running[pid]
            if proc.poll() is None:
                continue
            log.close()
            del running[pid]
            status = "done" if proc.returncode == 0 else f"FAILED rc={proc.returncode} (see {log_path})"
            print(f"{status}: {path.relative_to(out)} in {time.perf_counter() - t0:.0f} s", flush=True)
            if proc.returncode == 0:  # the initial weights exist now: the other implementations may run side by side
                groups[:0] = [[item] for item in rest]


def free_edges(arch: str) -> int:
    return sum(arch.count(op + "~") for op in PARAMETER_FREE)


def report(args: argparse.Namespace, out: Path) -> str:
    import nasforge
    from nasforge.evaluators.table import NB201Table

    space = nasforge.get_space("nb201")
    table = NB201Table(space, Path(args.kit) / "nb201" / "nb201_table.csv.gz")

    def acc(arch: str) -> float:
        return float(table(space.parse(arch)).metrics["test_acc"])

    runs: dict[str, dict[str, dict[int, Any]]] = {}
    for method in args.methods:
        for impl in IMPLS[method]:
            for seed in args.seeds:
                p = out / method / impl / f"seed{seed}.json"
                if p.exists():
                    rec = json.loads(p.read_text())
                    for h in rec["history"]:
                        h["test_acc"] = acc(h["arch"]) if h["arch"] else None
                        h["parameter_free"] = free_edges(h["arch"]) if h["arch"] else None
                    runs.setdefault(method, {}).setdefault(impl, {})[seed] = rec
    lines = [
        f"Set-up: C={args.C}, N={args.N}, {args.train_subset} images of the 25k/25k split "
        f"({args.train_subset // 2} + {args.train_subset - args.train_subset // 2}), {args.epochs} epochs, "
        f"batch {args.batch_size}, one thread per run; seeds {args.seeds}.",
        "",
        "| method | implementation | seed | derived cell | C10 test acc (NB201) | parameter-free edges | "
        "alpha entropy (nats) | last-epoch train / valid loss | search time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {"setup": {k: getattr(args, k) for k in ("C", "N", "train_subset", "epochs", "batch_size", "seeds")},
                               "runs": {}}
    for method, by_impl in runs.items():
        for impl, by_seed in by_impl.items():
            for seed, rec in sorted(by_seed.items()):
                last = rec["history"][-1]
                ent = "-" if last["entropy"] is None else f"{last['entropy']:.4f}"
                vloss = "-" if last["valid_loss"] is None else f"{last['valid_loss']:.3f}"
                lines.append(
                    f"| {method} | {impl} | {seed} | `{last['arch']}` | {last['test_acc']:.2f} | {last['parameter_free']} "
                    f"| {ent} | {last['train_loss']:.3f} / {vloss} | {rec['seconds']:.0f} s |")
                summary["runs"][f"{method}/{impl}/seed{seed}"] = {
                    "arch": last["arch"], "test_acc": last["test_acc"], "parameter_free": last["parameter_free"],
                    "entropy": last["entropy"], "seconds": rec["seconds"],
                    "per_epoch": [{k: h[k] for k in ("epoch", "arch", "test_acc", "parameter_free", "entropy",
                                                     "train_loss", "valid_loss", "tau", "lr")} for h in rec["history"]],
                }
    lines += ["", "| method | implementation | runs | C10 test acc, mean ± sd | parameter-free edges, mean | entropy, mean |",
              "|---|---|---|---|---|---|"]
    for method, by_impl in runs.items():
        for impl, by_seed in by_impl.items():
            lasts = [rec["history"][-1] for rec in by_seed.values()]
            accs = [h["test_acc"] for h in lasts]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            ents = [h["entropy"] for h in lasts if h["entropy"] is not None]
            lines.append(f"| {method} | {impl} | {len(accs)} | {statistics.mean(accs):.2f} ± {sd:.2f} "
                         f"| {statistics.mean(h['parameter_free'] for h in lasts):.1f} "
                         f"| {f'{statistics.mean(ents):.4f}' if ents else '-'} |")
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(runs, out / "trajectories.png")
    return text


def plot(runs: dict[str, dict[str, dict[int, Any]]], path: Path) -> None:
    if not runs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [m for m in runs if m != "rsps"]
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 4, figsize=(16, 3.2 * len(rows)), squeeze=False)
    colours = {"xautodl": "tab:blue", "nasforge": "tab:orange", "nasforge_ref": "tab:green"}
    for r, method in enumerate(rows):
        for impl, by_seed in runs[method].items():
            for k, (_seed, rec) in enumerate(sorted(by_seed.items())):
                h = [x for x in rec["history"] if x["arch"] is not None]
                if len(h) < 2:  # rsps selects once: no trajectory
                    continue
                ep = [x["epoch"] for x in h]
                label = impl if k == 0 else None
                style = dict(color=colours.get(impl, "gray"), alpha=0.8, lw=1.2, label=label)
                axes[r][0].plot(ep, [x["test_acc"] for x in h], **style)
                axes[r][1].plot(ep, [x["entropy"] for x in h], **style)
                axes[r][2].plot(ep, [x["parameter_free"] for x in h], **style)
                axes[r][3].plot(ep, [x["valid_loss"] for x in h], **style)
        for c, title in enumerate(("derived cell: C10 test acc (NB201)", "alpha entropy (nats)",
                                   "parameter-free edges in the argmax", "architecture-step (valid) loss")):
            axes[r][c].set_title(f"{method}: {title}", fontsize=9)
            axes[r][c].set_xlabel("epoch", fontsize=8)
        axes[r][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", default=os.environ.get("NASFORGE_DATA_KIT", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nb201_differential"))
    ap.add_argument("--methods", default="gdas,darts")
    ap.add_argument("--impls", default="xautodl,nasforge,nasforge_ref")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--C", type=int, default=8)
    ap.add_argument("--N", type=int, default=1)
    ap.add_argument("--train-subset", type=int, default=5000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--xautodl-python", default=str(ROOT / "runs" / "peers" / "xautodl" / "bin" / "python"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in IMPLS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; valid: {', '.join(IMPLS)}")
    args.impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out)
    data = SCRATCH / f"cifar10_{args.train_subset}.pt"
    if not args.report_only:
        if "xautodl" in args.impls and not Path(args.xautodl_python).exists():
            raise SystemExit(f"{args.xautodl_python} not found: run bash benchmarks/peers/setup_peers.sh first")
        prepare_data(Path(args.kit), args.train_subset, data)
        run_all(args, out, data)
    print(report(args, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
