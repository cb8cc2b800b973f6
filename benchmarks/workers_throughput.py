"""Several workers on one study: trials per minute with 1 and N workers, and the log's integrity.

Runs the same search (regularized evolution on NB201, each trial a real training of a C=16, N=2
network on the built-in digits) with 1 worker and with ``--workers N`` against one storage (PostgreSQL when
``--storage`` or $NASFORGE_TEST_POSTGRES gives a URL, else SQLite), side by side in this run
(every process with the same number of torch threads), then checks each study: every ask told once (duplicates 0), no position of the log lost or used
twice, and the log replays into a fresh searcher (a resume that runs nothing).

    .venv/bin/python benchmarks/workers_throughput.py --workers 4 --trials 32

Prints a table and writes benchmarks/results/workers/workers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from nasforge.experiment import SearchConfig, open_study, run_search
from nasforge.study.store import redact_url
from nasforge.study.worker import read_log

RESULTS = Path(__file__).parent / "results" / "workers"


def one_run(workers: int, args: argparse.Namespace, storage: str | None, scratch: Path) -> dict[str, Any]:
    out = scratch / f"w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = SearchConfig(
        method="evolution", space="nb201", build_kwargs={"C": args.C, "N": args.N}, train_subset=args.images,
        recipe_overrides={"epochs": args.epochs, "batch_size": 64}, trials=args.trials, workers=workers,
        storage=storage, study_name=f"bench-{uuid.uuid4().hex[:8]}" if storage else None, final_train=False,
        seed=args.seed, out=str(out),
    )
    t0 = time.perf_counter()
    run_search(cfg, progress=False, log=lambda m: None)
    seconds = time.perf_counter() - t0
    study = open_study(cfg)
    log = read_log(study.trials())
    told = [slot.told for kind, _, slot in log.events if kind == "tell"]
    per_ask = Counter(int(t.user_attrs["ask_seq"]) for t in told if t is not None)
    positions = sorted(seq for _, seq, _ in log.events)
    again = run_search(SearchConfig(**{**cfg.to_dict(), "workers": 1}), progress=False, log=lambda m: None)
    first = min(t.datetime_start for t in told if t is not None and t.datetime_start is not None)
    last = max(t.datetime_complete for t in told if t is not None and t.datetime_complete is not None)
    trial_span = (last - first).total_seconds()
    return {
        "workers": workers, "trials": log.told, "seconds": seconds,
        "trials_per_minute": 60.0 * log.told / trial_span,
        "trial_span_seconds": trial_span,
        "evaluated_by": dict(Counter(str(t.user_attrs["worker"]["pid"]) for t in told if t is not None)),
        "duplicated": sum(n - 1 for n in per_ask.values()),
        "lost": args.trials - len(per_ask),
        "log_positions_ok": positions == list(range(len(positions))),
        "replay_ok": again.resumed_trials == args.trials,
        "storage": redact_url(storage) if storage else "sqlite (run directory)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=4000, help="training images per trial (stratified subset)")
    parser.add_argument("--C", type=int, default=16, help="NB201 network channels")
    parser.add_argument("--N", type=int, default=2, help="NB201 cells per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default=os.environ.get("NASFORGE_TEST_POSTGRES"))
    parser.add_argument("--scratch", default="runs/bench_workers")
    args = parser.parse_args()
    scratch = Path(args.scratch)
    # every worker process gets the same number of torch threads in both runs (what --workers N
    # gives each of its processes), so the ratio measures the workers, not a thread setting
    import torch

    threads = max(1, (os.cpu_count() or 1) // args.workers)
    torch.set_num_threads(threads)
    rows = [one_run(n, args, args.storage, scratch) for n in (1, args.workers)]
    base = rows[0]["trials_per_minute"]
    print(f"{'workers':>7}  {'trials':>6}  {'wall s':>7}  {'trials/min':>10}  {'speed-up':>8}  {'dup':>3}  {'lost':>4}  "
          f"{'log ok':>6}  {'replay ok':>9}  evaluated by (pid: trials)")
    for r in rows:
        print(f"{r['workers']:>7}  {r['trials']:>6}  {r['seconds']:>7.1f}  {r['trials_per_minute']:>10.1f}  "
              f"{r['trials_per_minute'] / base:>8.2f}  {r['duplicated']:>3}  {r['lost']:>4}  {str(r['log_positions_ok']):>6}  "
              f"{str(r['replay_ok']):>9}  {r['evaluated_by']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cores": os.cpu_count(),
              "torch_threads_per_process": threads, "load_average_at_end": os.getloadavg(),
              "python": platform.python_version(), "runs": rows}
    (RESULTS / "workers.json").write_text(json.dumps(record, indent=2) + "\n")
    ok = all(r["duplicated"] == 0 and r["lost"] == 0 and r["log_positions_ok"] and r["replay_ok"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
