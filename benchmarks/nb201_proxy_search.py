"""Searching NB201 with zero-cost proxies: single proxies, a rank-vote ensemble, and warm starts.

    .venv/bin/python benchmarks/nb201_proxy_search.py [--scores runs/bench/nb201_proxies]

Reads the scores written by ``benchmarks/nb201_proxies.py`` (run it first) and the NB201 table.

A. Pick-best-of-N (Mellor et al. ICML 2021, Table 2 protocol): draw N cells, keep the one with
   the best proxy score, report its CIFAR-10 test accuracy; many seeds. Cells are drawn from
   the cells every compared proxy has scored (the 1,000-cell sample for data-dependent ones),
   not from all 15,625: the figures compare proxies on the same pool and are labelled so.
A2. The same protocol over the whole space (N = 10, 100, 1000, Mellor et al.'s three settings)
   for the proxies scored on all 15,625 cells, and the rank vote of synflow and NASWOT.
B. Warm-started regularized evolution (Abdelfattah et al. ICLR 2021, Section 5): screen 1,000
   uniform cells with synflow (scored for all 15,625), start REA from the best 10, then query
   the table (validation accuracy) as usual; compare with plain REA and random search at the
   same number of table queries.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from nasforge import get_space
from nasforge.bench.proxies import as_float, load_scores, rank_vote, read_table
from nasforge.evaluators.table import NB201Table, best_test_after
from nasforge.searchers.evolution import RegularizedEvolution
from nasforge.searchers.random_search import RandomSearch
from nasforge.searchers.warmstart import ProxyWarmStart

ROOT = Path(__file__).resolve().parents[1]


def pick_best_of_n(scores: dict[int, dict], pool: list[int], test: dict[int, float], n: int, seeds: int) -> list[float]:
    out = []
    for s in range(seeds):
        drawn = random.Random(s).sample(pool, n)
        best = max(drawn, key=lambda i: as_float(scores[i]["score"]))
        out.append(test[best])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", default=os.environ.get("NASFORGE_DATA_KIT", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--scores", default=str(ROOT / "benchmarks" / "results" / "nb201_proxies"))
    ap.add_argument("--seeds", type=int, default=500, help="repetitions of pick-best-of-N")
    ap.add_argument("--search-seeds", type=int, default=100, help="repetitions of each table search")
    ap.add_argument("--queries", type=int, default=150, help="table queries per search")
    args = ap.parse_args()
    t0 = time.perf_counter()
    table_path = Path(args.kit) / "nb201" / "nb201_table.csv.gz"
    rows = read_table(table_path)
    test = {r["index"]: r["test_acc"] for r in rows}
    names = sorted({p.name.split(".")[0] for p in Path(args.scores).glob("*.jsonl")})
    scores = {n: load_scores(Path(args.scores) / f"{n}.jsonl") for n in names}
    scores = {k: v for k, v in scores.items() if v}
    pool = sorted(set.intersection(*(set(v) for v in scores.values())))
    vote_members = [p for p in ("synflow", "jacob_cov", "snip") if p in scores]
    if len(vote_members) == 3:
        scores["vote(synflow,jacob_cov,snip)"] = rank_vote([scores[p] for p in vote_members], pool)
    print(f"A. pick-best-of-N on a pool of {len(pool)} cells scored by every proxy; {args.seeds} seeds;"
          " CIFAR-10 test accuracy (%) of the pick, mean ± std")
    print(f"{'proxy':32s} {'N=10':>14s} {'N=100':>14s}")
    for name in ["(random pick)", *sorted(scores)]:
        cells = []
        for n in (10, 100):
            if name == "(random pick)":
                accs = [test[random.Random(s).choice(pool)] for s in range(args.seeds)]
            else:
                accs = pick_best_of_n(scores[name], pool, test, n, args.seeds)
            cells.append(f"{statistics.mean(accs):6.2f} ± {statistics.stdev(accs):4.2f}")
        print(f"{name:32s} {cells[0]:>14s} {cells[1]:>14s}")
    oracle = [max(test[i] for i in random.Random(s).sample(pool, 100)) for s in range(args.seeds)]
    print(f"{'(oracle: best test of 100)':32s} {'':>14s} {statistics.mean(oracle):6.2f} ± {statistics.stdev(oracle):4.2f}")

    everything = sorted(test)
    full = {k: v for k, v in scores.items() if all(i in v for i in everything)}
    if full:
        if "synflow" in full and "naswot" in full:
            full["vote(synflow,naswot)"] = rank_vote([full["synflow"], full["naswot"]], everything)
        ns = (10, 100, 1000)
        print(f"\nA2. pick-best-of-N over all {len(everything)} cells; {args.seeds} seeds; CIFAR-10 test accuracy (%)")
        print(f"{'proxy':32s} " + " ".join(f"{'N=' + str(n):>14s}" for n in ns))
        for name in ["(random pick)", *sorted(full)]:
            cells = []
            for n in ns:
                if name == "(random pick)":
                    accs = [test[random.Random(s).choice(everything)] for s in range(args.seeds)]
                else:
                    accs = pick_best_of_n(full[name], everything, test, n, args.seeds)
                cells.append(f"{statistics.mean(accs):6.2f} ± {statistics.stdev(accs):4.2f}")
            print(f"{name:32s} " + " ".join(f"{c:>14s}" for c in cells))
        cells = []
        for n in ns:
            best = [max(test[i] for i in random.Random(s).sample(everything, n)) for s in range(args.seeds)]
            cells.append(f"{statistics.mean(best):6.2f} ± {statistics.stdev(best):4.2f}")
        print(f"{'(oracle: best test of the N)':32s} " + " ".join(f"{c:>14s}" for c in cells))

    if "synflow" in scores and len(scores["synflow"]) == len(rows):
        space = get_space("nb201")
        table = NB201Table(space, table_path)
        index_of = {r["arch"]: r["index"] for r in rows}
        synflow = scores["synflow"]

        def screen(arch) -> float:
            return as_float(synflow[index_of[space.format(arch)]]["score"])

        print(f"\nB. table searches, {args.queries} queries, {args.search_seeds} seeds; CIFAR-10 test accuracy (%) "
              "of the best-by-validation cell")
        makers = {
            "random search": lambda s: RandomSearch(space, seed=s),
            "REA (P=10, S=3)": lambda s: RegularizedEvolution(space, seed=s, population_size=10, sample_size=3),
            "REA warm-started by synflow (1000 -> 10)": lambda s: ProxyWarmStart(
                RegularizedEvolution(space, seed=s, population_size=10, sample_size=3), screen, pool=1000, keep=10,
                seed=10_000 + s),
        }
        for label, make in makers.items():
            accs = [best_test_after(table, make(s), args.queries) for s in range(args.search_seeds)]
            print(f"{label:42s} {statistics.mean(accs):6.2f} ± {statistics.stdev(accs):4.2f}")
    else:
        print("\nB. skipped: synflow scores for all 15,625 cells are needed (run benchmarks/nb201_proxies.py)")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
