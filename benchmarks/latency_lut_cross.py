"""Two runs of latency_lut_quality.py on the same networks, crossed: each run's table against the
other run's measurements, and the two runs' measurements against each other.

    .venv/bin/python benchmarks/latency_lut_cross.py benchmarks/results/latency_lut_rounds \\
        benchmarks/results/latency_lut_rounds12

A network's measurement is combined over its rounds as the benchmark does (fastest pass of all
rounds; median of the rounds' medians). Torch tables only (``lut_torch.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scipy.stats import spearmanr

from nasforge.hardware.lut import LatencyTable


def networks(run: Path) -> dict[str, dict[str, float]]:
    rounds: dict[str, list[dict[str, float]]] = {}
    for line in (run / "measured_torch.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rounds.setdefault(r["arch"], []).append(r)
    return {a: {"min": min(r["min_ms"] for r in rs), "median": statistics.median(r["median_ms"] for r in rs)}
            for a, rs in rounds.items()}


def agreement(x: list[float], y: list[float]) -> str:
    rel = statistics.median(abs(p - q) / q for p, q in zip(x, y))
    return f"{spearmanr(x, y).statistic:.3f} | {100 * rel:.1f}%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs=2, type=Path, help="two output directories of latency_lut_quality.py")
    args = ap.parse_args()
    measured = {run: networks(run) for run in args.runs}
    archs = sorted(set(measured[args.runs[0]]) & set(measured[args.runs[1]]))
    print(f"{len(archs)} networks in both runs\n")
    print("| measurements | statistic | Spearman rho | median rel. difference |\n| --- | --- | ---: | ---: |")
    a, b = args.runs
    for st in ("min", "median"):
        print(f"| {a.name} vs {b.name} | {st} | "
              + agreement([measured[a][n][st] for n in archs], [measured[b][n][st] for n in archs]) + " |")
    print("\n| table | statistic (offset fit) | measured by | measured statistic | Spearman rho | median rel. error |")
    print("| --- | --- | --- | --- | ---: | ---: |")
    for run in args.runs:
        table = LatencyTable.load(run / "lut_torch.json")
        for stat in ("median", "min", "context"):
            table.use_statistic(stat, "offset")
            pred = [table.predict(table.space.parse(n)) for n in archs]
            for other in args.runs:
                for st in ("min", "median"):
                    print(f"| {run.name} | {stat} | {other.name} | {st} | "
                          + agreement(pred, [measured[other][n][st] for n in archs]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
