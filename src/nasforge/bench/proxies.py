"""Zero-cost proxies vs NAS-Bench-201 ground truth: rank correlations with bootstrap intervals.

Protocol (Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021; Mellor et al.,
"Neural Architecture Search without Training", ICML 2021): build every NB201 cell's CIFAR-10
network (C=16, N=5, 10 classes) with a fixed seed, score it untrained on one fixed batch of
CIFAR-10 training images (data-free proxies ignore the values), and compare the scores with
the table's ``cifar10_test_acc`` by Spearman's rho and Kendall's tau. Data-free proxies run on
all 15,625 cells, data-dependent ones on a fixed random sample (default 1,000; ``--sample 0``
for all).

Scores are appended to ``OUT/<proxy>.jsonl`` as they are computed (one JSON object per cell,
flushed), so an interrupted run continues where it stopped. Cells with no path from input to
output get the proxy's documented value (e.g. -inf), which ranks them last.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Published |Spearman rho| on NB201 CIFAR-10 (test accuracy), all 15,625 cells: Abdelfattah et al.
# ICLR 2021, Table 1, as printed by the authors' notebook (SamsungLabs/zero-cost-nas,
# notebooks/nasbench201_correlations.ipynb, cell "Table 1: Spearman rho ..."): grad_norm 0.594,
# snip 0.596, grasp 0.514, fisher 0.36, synflow 0.737, jacob_cov 0.731.
PAPER_SPEARMAN = {
    "grad_norm": 0.594, "snip": 0.596, "grasp": 0.514, "fisher": 0.36, "synflow": 0.737, "jacob_cov": 0.731,
}


@dataclass(frozen=True)
class Correlation:
    proxy: str
    n: int
    spearman: float
    spearman_ci: tuple[float, float]
    kendall: float
    kendall_ci: tuple[float, float]
    ms_per_arch: float


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of the NB201 table CSV (gzip or plain): index, arch_str and float metrics."""
    raw = Path(path).read_bytes()
    text = gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode()
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        rows.append({"index": int(r["index"]), "arch": r["arch_str"], "test_acc": float(r["cifar10_test_acc"]),
                     "valid_acc": float(r["cifar10valid_valid_acc"])})
    return rows


def load_scores(path: Path) -> dict[int, dict[str, Any]]:
    """Scores already computed (``index -> record``) in ``path`` and, for ``OUT/<proxy>.jsonl``,
    in the per-worker shards ``OUT/<proxy>.w<k>.jsonl``; a torn line from a kill is ignored."""
    out: dict[int, dict[str, Any]] = {}
    for file in [path, *sorted(path.parent.glob(f"{path.stem}.w*.jsonl"))]:
        if not file.exists():
            continue
        for line in file.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            out[int(rec["index"])] = rec
    return out


def _append_scores(
    proxy_name: str, rows: Sequence[dict[str, Any]], inputs: Any, targets: Any, path: Path, seed: int,
    build_kwargs: dict[str, Any] | None, threads: int | None = None, bar: Any = None,
) -> None:
    """Score ``rows`` one by one, appending a flushed JSON line per cell to ``path``."""
    import torch

    from nasforge import get_proxy, get_space

    if threads is not None:
        torch.set_num_threads(threads)
    proxy = get_proxy(proxy_name)
    space = get_space("nb201")
    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with path.open("a") as f:
        if torn:  # a kill mid-write left half a line: end it so the next record starts clean
            f.write("\n")
        for r in rows:
            t = time.perf_counter()
            torch.manual_seed(seed)
            net = space.build(space.parse(r["arch"]), num_classes=10, in_channels=3, **(build_kwargs or {}))
            score = float(proxy(net, inputs, targets, seed=seed))
            rec = {"index": r["index"], "score": score if math.isfinite(score) else str(score),
                   "seconds": time.perf_counter() - t}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            if bar is not None:
                bar.update(1)


def score_cells(
    proxy_name: str, rows: Sequence[dict[str, Any]], inputs: Any, targets: Any, out: Path, *,
    seed: int = 0, progress: bool = True, build_kwargs: dict[str, Any] | None = None, workers: int = 1,
) -> dict[int, dict[str, Any]]:
    """Score ``rows`` with the proxy into ``out/<proxy>.jsonl``; skips cells already scored.

    With ``workers > 1`` the remaining cells are split round-robin over that many processes
    (one torch thread each: these networks are too small for intra-op parallelism to pay), each
    appending to its own shard ``out/<proxy>.w<k>.jsonl``.
    """
    path = out / f"{proxy_name}.jsonl"
    done = load_scores(path)
    todo = [r for r in rows if r["index"] not in done]
    out.mkdir(parents=True, exist_ok=True)
    if workers <= 1 or len(todo) < 2 * workers:
        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=proxy_name, unit="cell")
        _append_scores(proxy_name, todo, inputs, targets, path, seed, build_kwargs, bar=bar)
        if bar is not None:
            bar.close()
    else:
        _score_in_pool(proxy_name, todo, inputs, targets, out, seed, build_kwargs, workers)
    return load_scores(path)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _score_in_pool(proxy_name: str, todo: Sequence[dict[str, Any]], inputs: Any, targets: Any, out: Path,
                   seed: int, build_kwargs: dict[str, Any] | None, workers: int) -> None:
    """Score ``todo`` round-robin in ``workers`` spawned processes, one shard file each.

    SIGTERM and Ctrl-C stop the workers before the parent exits (no orphan keeps scoring; a
    ``ProcessPoolExecutor`` would wait for the running shards, or be left behind by SIGTERM).
    Every finished score is already on disk, so a rerun continues where this one stopped.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(workers, initializer=_ignore_sigint)

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _stop) if threading.current_thread() is threading.main_thread() else None
    try:
        jobs = [pool.apply_async(_append_scores, (proxy_name, todo[k::workers], inputs, targets,
                                                  out / f"{proxy_name}.w{k}.jsonl", seed, build_kwargs, 1))
                for k in range(workers)]
        for job in jobs:
            job.get()
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def as_float(score: Any) -> float:
    return float(score)  # "-inf" / "inf" strings parse too


def correlate(
    proxy: str, scores: dict[int, dict[str, Any]], truth: dict[int, float], indices: Sequence[int], *,
    bootstrap: int = 1000, seed: int = 0,
) -> Correlation:
    """Spearman rho and Kendall tau of scores vs truth on ``indices`` with percentile bootstrap 95% CIs."""
    from scipy.stats import kendalltau, rankdata, spearmanr

    indices = [i for i in indices if i in scores]  # a partial run: the cells scored so far
    x = np.array([as_float(scores[i]["score"]) for i in indices], dtype=np.float64)
    y = np.array([truth[i] for i in indices], dtype=np.float64)
    # -inf (no path) ranks below every finite score; NaN is never produced by our proxies.
    xr, yr = rankdata(x), rankdata(y)
    rho = float(spearmanr(xr, yr).statistic)
    tau = float(kendalltau(xr, yr).statistic)
    rng = np.random.default_rng(seed)
    rhos, taus = [], []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(x), len(x))
        rhos.append(spearmanr(xr[idx], yr[idx]).statistic)
        taus.append(kendalltau(xr[idx], yr[idx]).statistic)
    ms = 1000.0 * float(np.mean([scores[i]["seconds"] for i in indices]))
    ci = lambda v: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))  # noqa: E731
    return Correlation(proxy, len(x), rho, ci(rhos), tau, ci(taus), ms)


def rank_vote(scores: Sequence[dict[int, dict[str, Any]]], indices: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Ensemble by rank vote: the mean of each proxy's rank (Abdelfattah et al.'s "vote", with ranks)."""
    from scipy.stats import rankdata

    ranks = [rankdata([as_float(s[i]["score"]) for i in indices]) for s in scores]
    mean = np.mean(ranks, axis=0)
    seconds = [sum(s[i]["seconds"] for s in scores) for i in indices]
    return {i: {"index": i, "score": float(m), "seconds": sec} for i, m, sec in zip(indices, mean, seconds)}


def sample_indices(rows: Sequence[dict[str, Any]], sample: int, seed: int) -> list[int]:
    """The seeded sample of cell indices, in random order: an interrupted run has scored a random
    subset (a prefix of this list), not the low indices."""
    idx = [r["index"] for r in rows]
    if sample and sample < len(idx):
        idx = random.Random(seed).sample(idx, sample)
    return idx


def format_table(results: Sequence[Correlation], paper: Callable[[str], str]) -> str:
    lines = [
        "| proxy | cells | Spearman rho [95% CI] | Kendall tau [95% CI] | paper rho | ms / cell |",
        "| --- | ---: | --- | --- | ---: | ---: |",
    ]
    for c in results:
        lines.append(
            f"| {c.proxy} | {c.n} | {c.spearman:.3f} [{c.spearman_ci[0]:.3f}, {c.spearman_ci[1]:.3f}] | "
            f"{c.kendall:.3f} [{c.kendall_ci[0]:.3f}, {c.kendall_ci[1]:.3f}] | {paper(c.proxy)} | {c.ms_per_arch:.1f} |"
        )
    return "\n".join(lines)


# ---- the whole benchmark ---------------------------------------------------------------------

DATA_FREE_DEFAULT = ("synflow", "zen", "params", "flops")
DATA_DEFAULT = ("naswot", "snip", "grasp", "fisher", "jacob_cov", "grad_norm")
VOTE = ("synflow", "jacob_cov", "snip")  # Abdelfattah et al.'s voting ensemble


def run_benchmark(
    table: str | Path, data_root: str | Path | None, out: str | Path, *,
    proxies: Sequence[str] = DATA_FREE_DEFAULT + DATA_DEFAULT, sample: int = 1000, all_cells: Sequence[str] = (),
    sampled: Sequence[str] = (), report_only: bool = False, workers: int = 1,
    batch_size: int = 64, seed: int = 0, bootstrap: int = 1000, progress: bool = True, log: Callable[[str], None] = print,
) -> str:
    """Score, correlate, and return the markdown table; see the module docstring.

    Args:
        table: the NB201 table CSV.
        data_root: CIFAR-10 official batches (``cifar-10-batches-py`` or its parent) for
            data-dependent proxies; ``None`` runs only data-free ones.
        out: directory of the per-proxy JSONL score files and ``summary.md``.
        proxies: names of the proxies to run.
        sample: cells scored by data-dependent proxies (0 = all).
        all_cells: data-dependent proxies to run on all cells anyway (e.g. ``naswot``).
        sampled: data-free proxies to run on the sample only (e.g. a slow ``zen``).
        report_only: score nothing; correlate the scores already in ``out`` (for a partial run).
        workers: scoring processes (see :func:`score_cells`).
    """
    import torch

    from nasforge import get_proxy, registry
    from nasforge.errors import ConfigError
    from nasforge.evaluators.proxy import fixed_batch

    for p in proxies:
        if p not in registry.names("proxy"):
            raise ConfigError(f"unknown proxy {p!r}; valid: {', '.join(registry.names('proxy'))}")
    out = Path(out)
    rows = read_table(table)
    truth = {r["index"]: r["test_acc"] for r in rows}
    by_index = {r["index"]: r for r in rows}
    data_set = None
    if data_root is not None and not report_only:
        from nasforge.data import load_data

        data_set = load_data("cifar10", data_root).train
    results: list[Correlation] = []
    all_scores: dict[str, dict[int, dict[str, Any]]] = {}
    sample_ids = sample_indices(rows, sample, seed)
    for name in proxies:
        proxy = get_proxy(name)
        needs_data = bool(getattr(proxy, "needs_data", True))
        if needs_data and data_set is None and not report_only:
            log(f"skipping {name}: it needs CIFAR-10 data (--data-root)")
            continue
        on_all = (not needs_data and name not in sampled) or name in all_cells
        indices = [r["index"] for r in rows] if on_all else sample_ids
        if report_only:
            scores = load_scores(out / f"{name}.jsonl")
            if not any(i in scores for i in indices):
                continue
        else:
            inputs, targets = fixed_batch(data_set if needs_data else None, (3, 32, 32), batch_size, seed)
            torch.set_grad_enabled(True)
            scores = score_cells(name, [by_index[i] for i in indices], inputs, targets, out, seed=seed,
                                 progress=progress, workers=workers)
        all_scores[name] = scores
        results.append(correlate(name, scores, truth, indices, bootstrap=bootstrap, seed=seed))
    vote = [p for p in VOTE if p in all_scores]
    common = [i for i in sample_ids if all(i in all_scores[p] for p in vote)]
    if len(vote) == len(VOTE) and len(common) >= 10:
        results.append(correlate("vote(" + ",".join(vote) + ")", rank_vote([all_scores[p] for p in vote], common),
                                 truth, common, bootstrap=bootstrap, seed=seed))
    text = format_table(results, lambda p: f"{PAPER_SPEARMAN[p]:.3f}" if p in PAPER_SPEARMAN else "-")
    (out / "summary.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps([c.__dict__ for c in results], indent=2) + "\n")
    return text
