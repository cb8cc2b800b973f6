"""How well a latency lookup table predicts measured latency, on random mobilenet networks.

    .venv/bin/python benchmarks/latency_lut_quality.py [--backends onnxruntime,torch] [--archs 200]

For each backend: builds (or reuses, resuming an interrupted build) the table of the
``mobilenet`` space, preset ``cifar`` (CIFAR-10 input 3x32x32; ``--preset proxyless``: the
space's own ImageNet backbone at 3x224x224; batch 1, one thread), with
``nasforge.hardware.lut.build_lut``; samples ``--archs`` random architectures (seed
``--seed``, none of them a fit network), measures each whole network with the table's own
setting, and reports Spearman's rho between predicted and measured latency, the median
relative error |pred - meas| / meas, and the shares within +-5% and +-10% (issue 10's targets:
rho >= 0.95, median relative error <= 10%). The measurements are appended to
``OUT/measured_<backend>.jsonl`` as they are taken (a rerun continues), the tables live in
``OUT/lut_<backend>.json`` and the summary in ``OUT/summary.json`` / ``OUT/summary.md``.

Latency depends on the machine's load: the script records ``os.getloadavg()`` before and
after each backend.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr
from tqdm.auto import tqdm

from nasforge import get_space
from nasforge.hardware.latency import LatencySpec, measure
from nasforge.hardware.lut import FITS, STATISTICS, build_lut, fit_architectures

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latency_lut"
#: network input of each ``mobilenet`` preset: CIFAR-10 images, or ImageNet's 224x224 (ProxylessNAS)
PRESET_SHAPES: dict[str, tuple[int, int, int]] = {"cifar": (3, 32, 32), "proxyless": (3, 224, 224)}


def quality(pred: list[float], meas: list[float]) -> dict[str, float]:
    """Spearman rho, median / mean relative error and shares within +-5% / +-10%."""
    rel = [abs(p - m) / m for p, m in zip(pred, meas)]
    signed = [(p - m) / m for p, m in zip(pred, meas)]
    return {
        "n": len(pred),
        "spearman_rho": float(spearmanr(pred, meas).statistic),
        "median_rel_error": statistics.median(rel),
        "mean_rel_error": statistics.fmean(rel),
        "median_signed_rel_error": statistics.median(signed),
        "within_5pct": sum(r <= 0.05 for r in rel) / len(rel),
        "within_10pct": sum(r <= 0.10 for r in rel) / len(rel),
        "measured_min_ms": min(meas), "measured_max_ms": max(meas),
    }


def run_backend(backend: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    space = get_space("mobilenet", preset=args.preset)
    shape = PRESET_SHAPES[args.preset]
    spec = LatencySpec(backend=backend, batch_size=1, threads=args.threads, warmup=args.warmup, repeats=args.repeats)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    table = build_lut(space, shape, spec, out / f"lut_{backend}.json", fit_networks=args.fit_networks,
                      seed=0, progress=not args.no_progress,
                      **({"context_rounds": args.context_rounds} if backend == "torch" else {}))
    build_s = time.perf_counter() - t0
    fit = set(fit_architectures(space, args.fit_networks, 0))
    rng = random.Random(args.seed)
    archs: list[Any] = []
    while len(archs) < args.archs:
        a = space.sample(rng)
        if a not in fit and a not in archs:
            archs.append(a)
    path = out / f"measured_{backend}.jsonl"
    seen: dict[tuple[str, int], dict[str, Any]] = {}  # (arch, round) -> measurement
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                seen[(r["arch"], r.get("round", 0))] = r
    t1 = time.perf_counter()
    with path.open("a") as f:
        for rnd in range(args.rounds):  # every network once per round, in a new order each round
            order = list(archs)
            random.Random(f"round {rnd}").shuffle(order)
            for a in tqdm(order, desc=f"{backend} networks, round {rnd + 1}/{args.rounds}", disable=args.no_progress):
                text = space.format(a)
                if (text, rnd) in seen:
                    continue
                m = measure(space.build(a, num_classes=10), shape, spec)
                r = {"arch": text, "round": rnd, "median_ms": m.median_ms, "p25_ms": m.p25_ms, "p75_ms": m.p75_ms,
                     "min_ms": m.min_ms, "max_ms": m.max_ms}
                f.write(json.dumps(r) + "\n")
                f.flush()
                seen[(text, rnd)] = r
    done = {space.format(a): _combine([seen[(space.format(a), k)] for k in range(args.rounds)]) for a in archs}
    rows = [done[space.format(a)] for a in archs]
    if args.rounds > 1:  # two halves of the rounds: the same networks measured twice, at interleaved times
        halves = [{space.format(a): _combine([seen[(space.format(a), k)] for k in range(h, args.rounds, 2)])
                   for a in archs} for h in (0, 1)]
        retest = _agreement(archs, space, halves[0], halves[1])
    else:
        retest = _retest(space, archs[: args.retest], spec, shape, out / f"retest_{backend}.jsonl", done, args)
    by_statistic = {}
    for stat in STATISTICS:  # the same measurements, predicted and compared with each statistic and fit
        if stat == "context" and not table.has_context:
            continue  # in-context timings exist for torch tables only
        for fit in FITS:
            table.use_statistic(stat, fit)
            pred = [table.predict(a) for a in archs]
            meas = [r[f"{'min' if stat == 'context' else stat}_ms"] for r in rows]  # context: vs the min
            by_statistic[f"{stat}/{fit}"] = {**quality(pred, meas), "constant_ms": table.constant_ms,
                                             "scale": table.scale, "fit": table.doc["fit"],
                                             # the same predictions against the networks' median latency
                                             "vs_median": quality(pred, [r["median_ms"] for r in rows])}
    res = {
        "backend": backend, "by_statistic": by_statistic, "retest": retest,
        "blocks": len(table.doc["entries"]), "fit_networks": len(table.doc["fit_networks"]),
        "iqr_over_median": statistics.median((r["p75_ms"] - r["p25_ms"]) / r["median_ms"] for r in rows),
        "table_build_s": build_s, "measure_s": time.perf_counter() - t1,
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "device": table.header["device"], "versions": table.header["versions"], "threads": args.threads,
        "warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds, "context_rounds": args.context_rounds,
    }
    return res


def _combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One network's rounds as one measurement: the fastest pass of all, the median of the medians."""
    return {"arch": rounds[0]["arch"], "min_ms": min(r["min_ms"] for r in rounds),
            "median_ms": statistics.median(r["median_ms"] for r in rounds),
            "p25_ms": statistics.median(r["p25_ms"] for r in rounds), "p75_ms": statistics.median(r["p75_ms"] for r in rounds)}


def _agreement(archs: list[Any], space: Any, again: dict[str, dict[str, Any]],
               first: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How well two measurements of the same networks agree (Spearman rho, relative differences)."""
    out: dict[str, Any] = {"n": len(archs)}
    for stat in ("median", "min"):  # what a whole network's measurement has
        x = [again[space.format(a)][f"{stat}_ms"] for a in archs]
        y = [first[space.format(a)][f"{stat}_ms"] for a in archs]
        rel = [abs(p - q) / q for p, q in zip(x, y)]
        out[stat] = {"spearman_rho": float(spearmanr(x, y).statistic), "median_rel_difference": statistics.median(rel),
                     "within_10pct": sum(r <= 0.10 for r in rel) / len(rel)}
    return out


def _retest(space: Any, archs: list[Any], spec: LatencySpec, shape: tuple[int, ...], path: Path,
            first: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any] | None:
    """Measure ``archs`` a second time (later, so under another load): how well do two
    measurements of the same networks agree? That is the best any predictor can score here."""
    if not archs:
        return None
    again: dict[str, dict[str, Any]] = {}
    if path.exists():
        again = {r["arch"]: r for r in map(json.loads, path.read_text().splitlines()) if r}
    with path.open("a") as f:
        for a in tqdm(archs, desc="retest", disable=args.no_progress):
            text = space.format(a)
            if text not in again:
                m = measure(space.build(a, num_classes=10), shape, spec)
                again[text] = {"arch": text, "median_ms": m.median_ms, "min_ms": m.min_ms}
                f.write(json.dumps(again[text]) + "\n")
                f.flush()
    return _agreement(archs, space, again, first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="onnxruntime,torch", help="comma-separated: onnxruntime, torch")
    ap.add_argument("--archs", type=int, default=200, help="random test architectures (default 200)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the test architectures (default 1)")
    ap.add_argument("--preset", default="cifar", choices=sorted(PRESET_SHAPES),
                    help="mobilenet preset: cifar (3x32x32, default) or proxyless (3x224x224, the space's own)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--fit-networks", type=int, default=10)
    ap.add_argument("--retest", type=int, default=50,
                    help="with one round: measure the first N test networks again (noise floor)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every network this many times, in turn (a network's latency: its fastest pass of "
                         "all rounds); with 2 or more, the retest compares the even rounds with the odd ones")
    ap.add_argument("--context-rounds", type=int, default=1,
                    help="torch: rounds over the in-context timing networks (build_lut's context_rounds)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        summary[backend] = run_backend(backend, args, out)
        summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    header = ("| backend | statistic / fit | n | Spearman rho | median rel. error | within +-5% | within +-10% | "
              "measured range (ms) | scale | constant (ms) | median IQR / median |")
    lines = [header, "|" + " --- |" * 11]
    for b, res in summary.items():
        for stat, r in res["by_statistic"].items():
            lines.append(f"| {b} | {stat} | {r['n']} | {r['spearman_rho']:.3f} | {100 * r['median_rel_error']:.1f}% | "
                         f"{100 * r['within_5pct']:.0f}% | {100 * r['within_10pct']:.0f}% | "
                         f"{r['measured_min_ms']:.2f}-{r['measured_max_ms']:.2f} | {r['scale']:.3f} | {r['constant_ms']:.2f} | "
                         f"{100 * res['iqr_over_median']:.0f}% |")
    lines += ["", "The same predictions against each network's measured median (with rounds: the median of the rounds' "
              "medians):", "",
              "| backend | statistic / fit | Spearman rho | median rel. error | within +-5% | within +-10% |",
              "|" + " --- |" * 6]
    for b, res in summary.items():
        for stat, r in res["by_statistic"].items():
            v = r.get("vs_median")
            if v:
                lines.append(f"| {b} | {stat} | {v['spearman_rho']:.3f} | {100 * v['median_rel_error']:.1f}% | "
                             f"{100 * v['within_5pct']:.0f}% | {100 * v['within_10pct']:.0f}% |")
    lines += ["", "| backend | statistic | retest n | rho(measured, measured again) | median rel. difference | within +-10% |",
              "|" + " --- |" * 6]
    for b, res in summary.items():
        for stat in STATISTICS:
            rt = (res.get("retest") or {}).get(stat)
            if rt:
                lines.append(f"| {b} | {stat} | {res['retest']['n']} | {rt['spearman_rho']:.3f} | "
                             f"{100 * rt['median_rel_difference']:.1f}% | {100 * rt['within_10pct']:.0f}% |")
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
