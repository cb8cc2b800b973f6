"""Parameter count of our NB201 network vs the table's ``params_mb``, for every cell.

    .venv/bin/python benchmarks/nb201_params.py [--sample N] [--kit ../shared/data]

Builds each cell at C=16, N=5, 10 classes and compares ``count_params / 1e6`` with the table.
Rows that differ are reported with the pattern the NATS-Bench issue #36 describes: the table
averages seeds whose records disagree by whole conv edges (a data error of the benchmark).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import random
import time
from pathlib import Path

from nasforge import get_space
from nasforge.hardware.cost import count_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=int, default=0, help="check a random sample of this many cells (0 = all)")
    ap.add_argument("--kit", default=os.environ.get("NASFORGE_DATA_KIT", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    args = ap.parse_args()
    with gzip.open(Path(args.kit) / "nb201" / "nb201_table.csv.gz", "rt") as f:
        rows = [(r["arch_str"], float(r["params_mb"])) for r in csv.DictReader(f)]
    if args.sample:
        rows = random.Random(0).sample(rows, args.sample)
    space = get_space("nb201")
    t = time.perf_counter()
    exact, diffs = 0, []
    for text, table_mb in rows:
        ours = count_params(space.build(space.parse(text))) / 1e6
        if abs(ours - table_mb) < 5e-7:
            exact += 1
        else:
            diffs.append((abs(ours - table_mb), text, ours, table_mb))
    print(f"cells checked: {len(rows)}   exact match (6 decimals): {exact}   differ: {len(diffs)}")
    if diffs:
        diffs.sort(reverse=True)
        print(f"max |ours - table|: {diffs[0][0]:.6f} M")
        for _d, text, ours, tab in diffs[:5]:
            print(f"  {text}  ours {ours:.6f}  table {tab:.6f}")
    print(f"({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
