"""Multi-trial search strategies on the NAS-Bench-201 table: the figures of docs/benchmarks.md.

    .venv/bin/python benchmarks/nb201_strategies.py [--seeds 100] [--queries 150] [--workers 2] [--methods a,b]

Runs ``nasforge bench strategies`` on the data kit's table with the issue's defaults (150
queries, 100 seeds, 2 workers) and, as a second part, MnasNet's PPO controller with a Pixel 3
latency target (the table's ``hwnb_pixel3_latency_ms``) against random search and NSGA-II,
reporting the share of proposals that meet the target by quarter of the run and the
hypervolume of the found (test accuracy, latency) front relative to the table's true front.
Results go to benchmarks/results/nb201_strategies/ (summary.json, curves.csv, summary.md, curves.png).
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from nasforge.bench.strategies import TableData, default_methods, format_summary, run_benchmark

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--queries", type=int, default=150)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--methods", default=None, help="comma-separated (default: every multi-trial method but zennas)")
    ap.add_argument("--skip-latency", action="store_true", help="skip the MnasNet latency part")
    ap.add_argument("--kit", default=os.environ.get("NASFORGE_DATA_KIT", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nb201_strategies"))
    args = ap.parse_args()
    table_path = Path(args.kit) / "nb201" / "nb201_table.csv.gz"
    methods = [m for m in args.methods.split(",") if m] if args.methods else default_methods()
    # A Pixel 3 latency target at the table's median latency (half the cells meet it): MnasNet's
    # reward needs one (its accuracy part is then ACC x (LAT/T)^-0.07, not the accuracy alone).
    rows = TableData.load(table_path).rows
    target = statistics.median(m["hwnb_pixel3_latency_ms"] for m in rows.values())
    mnas = {"latency_metric": "hwnb_pixel3_latency_ms", "target": target}
    summary = run_benchmark(table_path, methods, seeds=args.seeds, queries=args.queries, workers=args.workers,
                            options={"mnasnet_ppo": mnas} if "mnasnet_ppo" in methods else {}, out=args.out)
    print(format_summary(summary))
    print(f"({summary['seconds']:.1f} s on {args.workers} workers)\n")
    if args.skip_latency:
        return
    latency_methods = [m for m in ("random", "mnasnet_ppo", "nsga2") if m in methods or m == "random"]
    options = {"mnasnet_ppo": mnas,
               "nsga2": {"objectives": [["val_acc", 1], ["hwnb_pixel3_latency_ms", -1]]}}
    summary = run_benchmark(
        table_path, latency_methods, seeds=args.seeds, queries=args.queries, workers=args.workers,
        options={k: v for k, v in options.items() if k in latency_methods},
        out=Path(args.out) / "pixel3_latency", latency_metric="hwnb_pixel3_latency_ms", latency_target=target,
    )
    print(format_summary(summary))
    print(f"({summary['seconds']:.1f} s on {args.workers} workers)")


if __name__ == "__main__":
    main()
