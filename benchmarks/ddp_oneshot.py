"""Data-parallel one-shot search: 2 torchrun processes (gloo) against one process, wall time and alphas.

    .venv/bin/python benchmarks/ddp_oneshot.py --method darts --out benchmarks/results/ddp_oneshot

Runs the same ``nasforge search`` (NB201 supernet on the built-in digits, no final training)
three ways, each in fresh processes, one torch thread per process:

* ``one``: one process over whole batches (the ordinary run);
* ``twin``: one process with ``NASFORGE_SIMULATE_RANKS=2`` (every batch as the two shards of a
  2-rank run, BN per shard: the run the 2-rank one must equal);
* ``ddp``: ``torchrun --standalone --nproc_per_node 2`` on gloo;

and ``one`` again with 2 torch threads (the other way to use two cores). Reported per run: the
wall time of the command (process start included) and the search time (``search_seconds_this_run``),
and the max |difference| of the final architecture strengths of ``ddp`` against ``twin``
and ``one``. Writes ``OUT/results.json``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import _children  # benchmarks/_children.py: children stopped with the script

ROOT = Path(__file__).resolve().parents[1]


def run(label: str, out: Path, args: list[str], *, ranks: int, simulate: bool, threads: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "NASFORGE_SIMULATE_RANKS")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    if simulate:
        env["NASFORGE_SIMULATE_RANKS"] = str(ranks)
    launcher = [sys.executable]
    if ranks > 1 and not simulate:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    run_dir = ROOT / "runs" / "ddp_oneshot" / label  # checkpoints stay out of benchmarks/results
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    proc = _children.run([*launcher, "-m", "nasforge", "search", *args, "--out", str(run_dir)], env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads((run_dir / "results.json").read_text())
    return {"label": label, "wall_s": wall, "search_s": res["search_seconds_this_run"], "arch": res["best"]["arch"],
            "strengths": res["strengths"]}


def max_diff(a: dict[str, list[float]], b: dict[str, list[float]]) -> float:
    return max(abs(x - y) for k in a for x, y in zip(a[k], b[k]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="darts")
    ap.add_argument("--C", type=int, default=16)
    ap.add_argument("--N", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-batches", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ddp_oneshot")
    ns = ap.parse_args()
    args = ["--space", "nb201", "--method", ns.method, "--supernet-opt", f"C={ns.C}", "--supernet-opt", f"N={ns.N}",
            "--supernet-opt", "affine=false", "--supernet-opt", "track_running_stats=false",
            "--method-opt", f"batch_size={ns.batch_size}", "--epochs", str(ns.epochs),
            "--max-batches-per-epoch", str(ns.max_batches), "--no-final-train", "--no-progress"]
    runs = [
        run("one", ns.out, args, ranks=1, simulate=False, threads=1),
        run("one_2threads", ns.out, args, ranks=1, simulate=False, threads=2),
        run("twin", ns.out, args, ranks=2, simulate=True, threads=1),
        run("ddp", ns.out, args, ranks=2, simulate=False, threads=1),
    ]
    by = {r["label"]: r for r in runs}
    summary = {
        "command": " ".join(["nasforge", "search", *args]),
        "runs": [{k: v for k, v in r.items() if k != "strengths"} for r in runs],
        "max_strength_diff_ddp_vs_twin": max_diff(by["ddp"]["strengths"], by["twin"]["strengths"]),
        "max_strength_diff_ddp_vs_one": max_diff(by["ddp"]["strengths"], by["one"]["strengths"]),
        "same_arch_ddp_twin": by["ddp"]["arch"] == by["twin"]["arch"],
    }
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"`{summary['command']}`\n")
    print("| run | processes x threads | wall s | search s | derived cell |")
    print("| --- | --- | --- | --- | --- |")
    shape = {"one": "1 x 1", "one_2threads": "1 x 2", "twin": "1 x 1 (2 shards)", "ddp": "2 x 1 (gloo)"}
    for r in runs:
        print(f"| {r['label']} | {shape[r['label']]} | {r['wall_s']:.1f} | {r['search_s']:.1f} | `{r['arch']}` |")
    print(f"\nmax |strength difference|: ddp vs twin {summary['max_strength_diff_ddp_vs_twin']:.3g}, "
          f"ddp vs one {summary['max_strength_diff_ddp_vs_one']:.3g}")


if __name__ == "__main__":
    main()
