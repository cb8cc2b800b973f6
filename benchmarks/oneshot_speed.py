"""One-shot NAS supernet training step: speed and peak memory of nasforge vs NNI 3.0, xautodl and plain PyTorch.

    bash benchmarks/peers/setup_peers.sh            # once: venvs for the peers under runs/peers/
    .venv/bin/python benchmarks/oneshot_speed.py [--impls nasforge,nni,xautodl,plain]
        [--methods darts,gdas,spos,fixed] [--rounds 3] [--steps 10] [--warmup 2]
        [--out benchmarks/results/oneshot_speed.json] [--channels-last] [--pin-cpu N] [--dry-run]

What is measured: NAS-Bench-201 supernet (C=16, N=5, 5 ops per edge), CIFAR-10-shaped random
batches of 64, CPU, one torch thread per process. For each implementation and method, the median
wall time of one search step (darts: weight step + arch step, all ops; gdas: weight step + arch
step, hard Gumbel single path where the implementation has one; spos: one weight step on a uniform
single path; fixed: a stand-alone NB201 network's training step), and the peak RSS of the worker
process (``ru_maxrss``, interpreter and imports included). ``benchmarks/peers/_protocol.py``
defines the worker protocol and the shared settings; each worker's docstring says what its step
contains and which code is the library's.

Procedure: for each round, for each method, every implementation's worker runs in a fresh
subprocess (its own venv's python: ``runs/peers/nni``, ``runs/peers/xautodl``, the repo's ``.venv``
for plain and nasforge), the order of implementations reversed every other round so that machine
drift cancels. Aggregation per (impl, method): median over rounds of the per-run medians, and the
max peak RSS. The table gives each step time as a ratio to the fastest *peer* (every impl but
nasforge) for that method. A missing worker or venv is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _children  # benchmarks/_children.py: children stopped with the script

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
KNOWN_IMPLS = ("nasforge", "nni", "xautodl", "plain")
KNOWN_METHODS = ("darts", "gdas", "spos", "fixed")
PYTHONS = {
    "nni": ROOT / "runs" / "peers" / "nni" / "bin" / "python",
    "xautodl": ROOT / "runs" / "peers" / "xautodl" / "bin" / "python",
    "plain": ROOT / ".venv" / "bin" / "python",
    "nasforge": ROOT / ".venv" / "bin" / "python",
}
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _csv(text: str, known: tuple[str, ...], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in known]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (known: {', '.join(known)})")
    return items


def skip_reason(impl: str) -> str | None:
    """Why ``impl`` cannot run here, or None."""
    worker = PEERS / f"{impl}_worker.py"
    if not worker.exists():
        if impl == "nasforge":
            return f"{worker.relative_to(ROOT)} does not exist yet (the maintainer's worker); skipped"
        return f"{worker.relative_to(ROOT)} not found"
    if not PYTHONS[impl].exists():
        hint = "run bash benchmarks/peers/setup_peers.sh" if impl in ("nni", "xautodl") else "create .venv"
        return f"{PYTHONS[impl].relative_to(ROOT)} not found ({hint})"
    return None


def command(impl: str, method: str, args: argparse.Namespace) -> list[str]:
    """The worker command line for one run."""
    cmd = [str(PYTHONS[impl]), str(PEERS / f"{impl}_worker.py"), "--method", method,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed)]
    if args.channels_last:
        cmd.append("--channels-last")
    if args.pin_cpu is not None:
        cmd = ["taskset", "-c", str(args.pin_cpu), *cmd]
    return cmd


def run_worker(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run one worker; its JSON line, or {"error": ...}."""
    env = {**os.environ, **THREAD_ENV}
    t0 = time.perf_counter()
    try:
        proc = _children.run(cmd, cwd=ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "process_s": round(time.perf_counter() - t0, 2)}
    elapsed = round(time.perf_counter() - t0, 2)
    rec: dict[str, Any] | None = None
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                rec = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if proc.returncode != 0 or rec is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail), "process_s": elapsed}
    rec["process_s"] = elapsed
    return rec


def summarize(runs: list[dict[str, Any]], impls: list[str], methods: list[str]) -> list[dict[str, Any]]:
    """Per (impl, method): median over rounds of the per-run medians, max peak RSS, ratio to the fastest peer."""
    rows: list[dict[str, Any]] = []
    for method in methods:
        block = []
        for impl in impls:
            mine = [r for r in runs if r["impl"] == impl and r["method"] == method]
            ok = [r for r in mine if "error" not in r]
            row: dict[str, Any] = {"impl": impl, "method": method, "runs": len(ok)}
            if ok:
                meds = [r["median_s"] for r in ok]
                row.update(median_s=statistics.median(meds), min_s=min(meds), max_s=max(meds),
                           peak_rss_mb=max(r["peak_rss_mb"] for r in ok),
                           setup_rss_mb=max((r.get("setup_rss_mb") or 0.0) for r in ok) or None,
                           notes=ok[-1].get("notes", ""))
            errors = sorted({r["error"] for r in mine if "error" in r})
            if errors:
                row["errors"] = errors
            block.append(row)
        timed = [r for r in block if "median_s" in r]
        peers = [r for r in timed if r["impl"] != "nasforge"] or timed
        if peers:
            best = min(peers, key=lambda r: r["median_s"])
            for r in timed:
                r["vs_fastest_peer"] = r["median_s"] / best["median_s"]
                r["fastest_peer"] = best["impl"]
        rows.extend(block)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The summary as a markdown table."""
    out = ["| method | impl | step (ms) | vs fastest peer | min-max over rounds (ms) | peak RSS (MB) | runs |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "median_s" in r:
            out.append(f"| {r['method']} | {r['impl']} | {r['median_s'] * 1e3:.1f} | "
                       f"{r['vs_fastest_peer']:.2f}x ({r['fastest_peer']}) | "
                       f"{r['min_s'] * 1e3:.1f}-{r['max_s'] * 1e3:.1f} | {r['peak_rss_mb']:.0f} | {r['runs']} |")
        else:
            err = "; ".join(r.get("errors", ["no result"]))[:150]
            out.append(f"| {r['method']} | {r['impl']} | - | - | - | - | 0 ({err}) |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impls", default=",".join(KNOWN_IMPLS))
    ap.add_argument("--methods", default=",".join(KNOWN_METHODS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true", help="pass --channels-last to every worker")
    ap.add_argument("--pin-cpu", type=int, default=None, help="run every worker under taskset -c N")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker run")
    ap.add_argument("--out", default="benchmarks/results/oneshot_speed.json")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = ap.parse_args()
    impls = _csv(args.impls, KNOWN_IMPLS, "impl")
    methods = _csv(args.methods, KNOWN_METHODS, "method")

    skipped = {impl: reason for impl in impls if (reason := skip_reason(impl))}
    active = [i for i in impls if i not in skipped]
    for impl, reason in skipped.items():
        print(f"note: {impl}: {reason}", file=sys.stderr)

    plan = []
    for rnd in range(args.rounds):
        order = active if rnd % 2 == 0 else active[::-1]
        for method in methods:
            for impl in order:
                plan.append((rnd, method, impl, command(impl, method, args)))
    if args.dry_run:
        for rnd, method, impl, cmd in plan:
            print(f"# round {rnd} {method} {impl}\n{shlex.join(cmd)}")
        return

    runs: list[dict[str, Any]] = []
    t_start = time.time()
    for k, (rnd, method, impl, cmd) in enumerate(plan, 1):
        rec = run_worker(cmd, args.timeout)
        rec.update(round=rnd, impl=impl, method=method)
        runs.append(rec)
        msg = rec["error"] if "error" in rec else \
            f"{rec['median_s'] * 1e3:.1f} ms/step, peak RSS {rec['peak_rss_mb']:.0f} MB"
        print(f"[{k}/{len(plan)}] round {rnd} {method:5s} {impl:8s} {msg}", file=sys.stderr, flush=True)

    rows = summarize(runs, active, methods)
    table = markdown(rows)
    print(table)
    for impl, reason in skipped.items():
        print(f"\n{impl}: {reason}")
    result = {
        "benchmark": "oneshot_speed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(time.time() - t_start, 1),
        "config": {"impls": impls, "methods": methods, "rounds": args.rounds, "steps": args.steps,
                   "warmup": args.warmup, "seed": args.seed, "channels_last": args.channels_last,
                   "pin_cpu": args.pin_cpu, "batch": 64, "C": 16, "N": 5, "threads": 1},
        "host": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                 "harness_python": platform.python_version()},
        "skipped": skipped,
        "summary": rows,
        "table_md": table,
        "runs": runs,
    }
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
