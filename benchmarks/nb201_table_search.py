"""Random search vs regularized evolution on the NAS-Bench-201 table (CIFAR-10).

    .venv/bin/python benchmarks/nb201_table_search.py [--seeds 100] [--queries 150]

Each run searches on the cifar10-valid validation accuracy and reports the CIFAR-10 test
accuracy of the best-by-validation cell, as the NB201 paper's Table 5 does (RS 93.70±0.36,
REA 93.92±0.30 at a 12,000 s simulated budget; a query budget is used here because the kit
has no training times).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from nasforge import get_space
from nasforge.evaluators.table import NB201Table, best_test_after
from nasforge.searchers.evolution import RegularizedEvolution
from nasforge.searchers.random_search import RandomSearch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--queries", type=int, default=150)
    ap.add_argument("--kit", default=os.environ.get("NASFORGE_DATA_KIT", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    args = ap.parse_args()
    space = get_space("nb201")
    table = NB201Table(space, Path(args.kit) / "nb201" / "nb201_table.csv.gz")
    t = time.perf_counter()
    print(f"{args.queries} queries, {args.seeds} seeds; CIFAR-10 test accuracy (%) of the best-by-validation cell")
    print(f"{'method':34s} {'mean':>7s} {'std':>6s} {'min':>7s} {'max':>7s}")
    for label, make in (
        ("random search", lambda s: RandomSearch(space, seed=s)),
        ("regularized evolution P=10 S=3", lambda s: RegularizedEvolution(space, seed=s, population_size=10, sample_size=3)),
    ):
        accs = [best_test_after(table, make(s), args.queries) for s in range(args.seeds)]
        print(f"{label:34s} {statistics.mean(accs):7.2f} {statistics.stdev(accs):6.2f} {min(accs):7.2f} {max(accs):7.2f}")
    print(f"table optimum: {table.best('test_acc')[1]:.2f}   ({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
