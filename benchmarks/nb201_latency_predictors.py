"""Few-shot per-op latency predictors vs the NB201 table's 27 measured device latencies (issue 10).

    .venv/bin/python benchmarks/nb201_latency_predictors.py [--seeds 20] [--ns 10,20,100] [--devices ...]

For every ``*_latency_ms`` column of the data kit's NB201 table (HW-NAS-Bench ``hwnb_*``, HELP
``help_*``), fit :func:`nasforge.hardware.nb201_latency.fit` on N cells drawn at random and rank
all the other cells: Spearman rho and Kendall tau, mean and standard deviation over ``--seeds``
draws. Four models: one weight per op shared by all edges (``shared``) or per (edge, op)
(``per_edge``, ridge ``--alpha`` toward the shared weights), each with all ops counted or only
the ops on an input -> output path (``+eff``). Baselines that need no measurement: FLOPs
(counted by PyTorch on our NB201 network, C=16, N=5, 32x32) and the table's ``params_mb``, ranked
against all 15,625 cells. Also the shared model fitted on every cell: its op weights (ms) show
what each device spends its time on.

Prints the tables of docs/benchmarks.md and writes ``--out``/results.json and tables.md (same
numbers for the same arguments: no timings in them).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

from nasforge import get_space
from nasforge.evaluators.table import NB201Table
from nasforge.hardware import nb201_latency as lat
from nasforge.hardware.cost import count_flops
from nasforge.spaces.nb201 import OPS

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, dict[str, object]] = {
    "shared": {"per_edge": False, "effective": False},
    "shared+eff": {"per_edge": False, "effective": True},
    "per_edge": {"per_edge": True, "effective": False},
    "per_edge+eff": {"per_edge": True, "effective": True},
}


def flops_of_cells(codes: np.ndarray, check: int = 12, seed: int = 0) -> np.ndarray:
    """FLOPs of each cell's network. Every edge of our network computes its op (also on a node that
    is always zero, as xautodl's does), and each NB201 conv edge has the same FLOPs wherever it is,
    so FLOPs depend only on the numbers of 1x1 and 3x3 convs: count one network per pair, then
    check ``check`` random cells against a count of their own network."""
    space = get_space("nb201")
    shape = (3, 32, 32)
    pairs = np.stack([(codes == 2).sum(1), (codes == 3).sum(1)], axis=1)
    by_pair: dict[tuple[int, int], int] = {}
    for i in np.unique(pairs, axis=0, return_index=True)[1]:
        arch = space.decode_sequence([int(v) for v in codes[i]])
        by_pair[(int(pairs[i, 0]), int(pairs[i, 1]))] = count_flops(space.build(arch), shape)
    out = np.array([by_pair[(int(a), int(b))] for a, b in pairs], dtype=np.float64)
    for i in np.random.default_rng(seed).choice(len(codes), size=check, replace=False):
        own = count_flops(space.build(space.decode_sequence([int(v) for v in codes[i]])), shape)
        assert own == out[i], (codes[i], own, out[i])
    return out


def ranks(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    return float(spearmanr(pred, truth).statistic), float(kendalltau(pred, truth).statistic)


def fmt(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", default=os.environ.get("NASFORGE_DATA_KIT", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nb201_latency_predictors"))
    ap.add_argument("--seeds", type=int, default=20, help="random draws of the N training cells per device and N")
    ap.add_argument("--seed", type=int, default=0, help="first seed (draw r uses seed + r)")
    ap.add_argument("--ns", default="10,20,100", help="training-set sizes")
    ap.add_argument("--alpha", type=float, default=1.0, help="ridge of the per-edge models (toward the shared weights)")
    ap.add_argument("--devices", default="", help="comma-separated latency columns (default: all)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    table = NB201Table(get_space("nb201"), Path(args.kit) / "nb201" / "nb201_table.csv.gz")
    devices = [d for d in args.devices.split(",") if d] or list(lat.latency_columns(table))
    ns = [int(n) for n in args.ns.split(",")]
    results: dict[str, object] = {
        "config": {"seeds": args.seeds, "seed": args.seed, "ns": ns, "alpha": args.alpha, "variants": VARIANTS,
                   "table": "nb201/nb201_table.csv.gz", "spread": "std over seeds (population, ddof=0)"},
        "devices": {},
    }
    all_codes = np.array([[int(r[c]) for c in lat.OP_CODE_COLUMNS] for r in table.rows.values()], dtype=np.int64)
    flops_by_cell = dict(zip(map(tuple, all_codes.tolist()), flops_of_cells(all_codes)))
    params_by_cell = dict(zip(map(tuple, all_codes.tolist()), (r["params_mb"] for r in table.rows.values())))
    for device in devices:
        codes, y = lat.table_latencies(table, device)
        column = device if device.endswith("_latency_ms") else device + "_latency_ms"
        flops = np.array([flops_by_cell[c] for c in map(tuple, codes.tolist())])
        params = np.array([params_by_cell[c] for c in map(tuple, codes.tolist())])
        full = lat.fit(codes, y)
        entry: dict[str, object] = {
            "cells": int(y.size), "distinct_latencies": int(np.unique(y).size),
            "baselines": {"flops": dict(zip(("spearman", "kendall"), ranks(flops, y))),
                          "params": dict(zip(("spearman", "kendall"), ranks(params, y)))},
            "full_fit_shared": {**full.to_dict(), "spearman_in_sample": ranks(full.predict_many(codes), y)[0]},
            "few_shot": {},
        }
        for name, kw in VARIANTS.items():
            extra = {"alpha": args.alpha} if kw["per_edge"] else {}
            per_n = {}
            for n in ns:
                scores = [lat.few_shot_score(codes, y, n, seed=args.seed + r, **kw, **extra)  # type: ignore[arg-type]
                          for r in range(args.seeds)]
                rho = [s.spearman for s in scores]
                tau = [s.kendall for s in scores]
                per_n[str(n)] = {"spearman": rho, "kendall": tau,
                                 "spearman_mean": float(np.mean(rho)), "spearman_std": float(np.std(rho)),
                                 "kendall_mean": float(np.mean(tau)), "kendall_std": float(np.std(tau))}
            entry["few_shot"][name] = per_n  # type: ignore[index]
        results["devices"][column] = entry  # type: ignore[index]
        print(f"{column}: done ({time.perf_counter() - t0:.0f} s)", flush=True)

    text = tables(results, ns)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "tables.md").write_text(text + "\n")
    print(f"wrote {out}/results.json and tables.md ({time.perf_counter() - t0:.0f} s)")


def short(column: str) -> str:
    return column.removesuffix("_latency_ms")


def tables(results: dict, ns: list[int]) -> str:
    devs = results["devices"]
    lines = ["Shared per-op model (1 + 4 parameters, NNLS), Spearman rho on the held-out cells, "
             f"mean ± std over {results['config']['seeds']} draws; baselines rank all cells without fitting.", "",
             "| device | distinct values | FLOPs rho | params rho | " + " | ".join(f"N={n}" for n in ns)
             + f" | Kendall tau N={ns[-1]} |",
             "| --- | ---: | ---: | ---: | " + " | ".join("---" for _ in ns) + " | --- |"]
    for col, e in devs.items():
        fs = e["few_shot"]["shared"]
        lines.append(
            f"| {short(col)} | {e['distinct_latencies']} | {e['baselines']['flops']['spearman']:.3f} | "
            f"{e['baselines']['params']['spearman']:.3f} | "
            + " | ".join(fmt(fs[str(n)]["spearman"]) for n in ns)
            + f" | {fmt(fs[str(ns[-1])]['kendall'])} |")
    lines += ["", "All four models, mean Spearman rho over the draws (std in results.json):", "",
              "| device | " + " | ".join(f"{v} N={n}" for v in VARIANTS for n in (ns[0], ns[-1])) + " |",
              "| --- | " + " | ".join("---:" for _ in VARIANTS for _ in (0, 1)) + " |"]
    means = {v: {n: [] for n in (ns[0], ns[-1])} for v in VARIANTS}  # type: dict[str, dict[int, list[float]]]
    for col, e in devs.items():
        cells = []
        for v in VARIANTS:
            for n in (ns[0], ns[-1]):
                m = e["few_shot"][v][str(n)]["spearman_mean"]
                means[v][n].append(m)
                cells.append(f"{m:.3f}")
        lines.append(f"| {short(col)} | " + " | ".join(cells) + " |")
    lines.append("| **mean of devices** | " + " | ".join(
        f"**{np.mean(means[v][n]):.3f}**" for v in VARIANTS for n in (ns[0], ns[-1])) + " |")
    lines += ["", "Shared model fitted on all cells: constant and op weights (ms), in-sample rho:", "",
              "| device | constant | " + " | ".join(OPS[1:]) + " | 3x3 / 1x1 | rho |", "| --- | " + " | ".join(
                  "---:" for _ in range(len(OPS) + 2)) + " |"]
    for col, e in devs.items():
        f = e["full_fit_shared"]
        w = f["weights"][0]
        ratio = f"{w[3] / w[2]:.2f}" if w[2] > 0 else "inf"
        lines.append(f"| {short(col)} | {f['intercept']:.3f} | " + " | ".join(f"{v:.3f}" for v in w[1:])
                     + f" | {ratio} | {f['spearman_in_sample']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
