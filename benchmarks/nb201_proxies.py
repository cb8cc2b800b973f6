"""Zero-cost proxies vs NAS-Bench-201, from the data kit: the table in docs/benchmarks.md.

    .venv/bin/python benchmarks/nb201_proxies.py [--sample 1000] [--proxies synflow,naswot,...]

Writes the kit's CIFAR-10 in the official batches layout once (to ``--cache``) with
``../shared/data/cifar10/materialize.py``, then runs ``nasforge bench proxies`` on it. Scores
go to ``--out`` (default runs/bench/nb201_proxies) as JSONL; rerun to resume.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from nasforge.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", default=os.environ.get("NASFORGE_DATA_KIT", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--cache", default=str(ROOT / "runs" / "cache" / "cifar10"), help="where the CIFAR-10 batches are written")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nb201_proxies"))
    ap.add_argument("--proxies", default=None)
    ap.add_argument("--sample", default="1000")
    ap.add_argument("--all-cells", default="", help="data-dependent proxies to run on all cells")
    ap.add_argument("--sampled", default="", help="data-free proxies to run on the sample only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest per cell for these tiny nets)")
    ap.add_argument("--report-only", action="store_true", help="correlate the scores computed so far")
    ap.add_argument("--workers", default="1", help="scoring processes (one per core is fastest)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    kit = Path(args.kit)
    batches = Path(args.cache) / "cifar-10-batches-py"
    if not (batches / "test_batch").exists():
        subprocess.run([sys.executable, str(kit / "cifar10" / "materialize.py"), "batches", args.cache], check=True)
    argv = ["bench", "proxies", "--table", str(kit / "nb201" / "nb201_table.csv.gz"), "--data-root", str(batches),
            "--out", args.out, "--sample", args.sample, "--all-cells", args.all_cells, "--sampled", args.sampled, "--workers", args.workers]
    if args.proxies:
        argv += ["--proxies", args.proxies]
    if args.no_progress:
        argv.append("--no-progress")
    if args.report_only:
        argv.append("--report-only")
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
