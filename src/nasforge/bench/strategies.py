"""Multi-trial search strategies compared on the NAS-Bench-201 table (``nasforge bench strategies``).

Each run gives a searcher ``queries`` table lookups: it is told the cifar10-valid validation
accuracy (the search signal) and every other column of the row (latencies, params), and the
run's *reported* number after ``n`` queries is the CIFAR-10 test accuracy of the best-by-
validation cell among the first ``n`` (the NB201 paper's protocol; ties go to the first found).
Over many seeds the benchmark prints mean +- std at the end of the budget, the mean best-so-far
curve at fixed checkpoints, a one-sided Welch t-test of each method against random search, and
the searcher's own time per proposal (ask + tell, the table lookup excluded).

Two checks keep it honest:

* random search's mean curve is compared with its exact expectation, computed from the table's
  order statistics (n uniform draws with replacement: the best-by-validation cell lies in the
  group of cells of validation value v with probability F(v)^n - F(v-)^n, and within the group
  every member is equally likely to be the first drawn);
* with a latency metric and target, the share of each method's proposals that meet the target
  is reported by quarter of the run, and the Pareto front it found in (test accuracy, latency)
  is compared with the table's true front by 2-D hypervolume.

Multi-fidelity searchers run at full fidelity on the table (``min_fidelity=1.0``): the kit has
no per-epoch accuracies.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasforge import registry
from nasforge.errors import BudgetError, ConfigError, require_choice

CHECKPOINTS = (10, 25, 50, 100, 150)
def default_methods() -> list[str]:
    """Every registered multi-trial method that searches NB201 (all but ``zennas``, whose space is its own)."""
    from nasforge.train.oneshot import OneShotMethod

    return [n for n in registry.names("method")
            if not isinstance(registry.get("method", n), OneShotMethod) and n != "zennas"]


@dataclass
class TableData:
    """The table as the benchmark needs it: one row of metrics per cell string."""

    rows: dict[str, dict[str, float]]

    @classmethod
    def load(cls, path: str | Path) -> TableData:
        from nasforge import get_space
        from nasforge.evaluators.table import NB201Table

        return cls(NB201Table(get_space("nb201"), path).rows)


@dataclass
class RunResult:
    """One (method, seed) run."""

    method: str
    seed: int
    curve: list[float]  # test accuracy of the best-by-validation cell after 1..queries queries
    seconds: float  # the searcher's own time (ask + fidelity + tell)
    proposals: list[str] = field(default_factory=list)  # cell strings in query order


def _searcher(method: str, seed: int, options: Mapping[str, Any]) -> Any:
    from nasforge import get_space

    cls = registry.get("method", method)
    kwargs = dict(options)
    if cls.multi_fidelity:
        if kwargs.get("min_fidelity", 1.0) != 1.0:
            raise ConfigError(f"the NB201 table has no budget knob: {method} runs at full fidelity only "
                              f"(min_fidelity=1.0), not min_fidelity={kwargs['min_fidelity']!r}")
        kwargs["min_fidelity"] = 1.0
    return cls(get_space("nb201"), seed=seed, **kwargs)


def run_one(table: TableData, method: str, seed: int, queries: int, options: Mapping[str, Any]) -> RunResult:
    """``queries`` table lookups of one searcher; the reported curve and the searcher's own time."""
    searcher = _searcher(method, seed, options)
    space = searcher.space
    best_val, best_test = -math.inf, float("nan")
    curve: list[float] = []
    proposals: list[str] = []
    own = 0.0
    for _ in range(queries):
        t = time.perf_counter()
        arch = searcher.ask()
        searcher.fidelity()
        own += time.perf_counter() - t
        key = space.format(arch)
        metrics = table.rows[key]
        if metrics["val_acc"] > best_val:
            best_val, best_test = metrics["val_acc"], metrics["test_acc"]
        curve.append(best_test)
        proposals.append(key)
        t = time.perf_counter()
        searcher.tell(arch, metrics["val_acc"], metrics)
        own += time.perf_counter() - t
    return RunResult(method, seed, curve, own, proposals)


def random_search_expectation(table: TableData, checkpoints: Sequence[int]) -> dict[int, float]:
    """Exact expected test accuracy of random search's best-by-validation cell after n queries."""
    groups: dict[float, list[float]] = {}
    for m in table.rows.values():
        groups.setdefault(m["val_acc"], []).append(m["test_acc"])
    n_cells = len(table.rows)
    out: dict[int, float] = {}
    for n in checkpoints:
        below, expected = 0, 0.0
        for val in sorted(groups):
            tests = groups[val]
            p = ((below + len(tests)) / n_cells) ** n - (below / n_cells) ** n
            expected += p * statistics.fmean(tests)
            below += len(tests)
        out[n] = expected
    return out


# ---- worker pool ------------------------------------------------------------------------------

_TABLE: TableData | None = None


def _init_worker(table: TableData | None, path: str) -> None:
    global _TABLE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)  # one process per core: no oversubscription of torch's threads ...
    threadpool_limits(1)  # ... nor of numpy's / scipy's BLAS (the GP and MLP searchers)
    _TABLE = table if table is not None else TableData.load(path)


def _work(job: tuple[str, int, int, dict[str, Any]]) -> RunResult:
    if _TABLE is None:  # pragma: no cover - set by the initializer
        raise RuntimeError("worker table not loaded")
    return run_one(_TABLE, *job)


def run_jobs(table: TableData, path: str, jobs: list[tuple[str, int, int, dict[str, Any]]], workers: int,
             progress: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Run the jobs in ``workers`` processes (forked: the table is shared, not reloaded).

    SIGTERM and Ctrl-C stop the workers before the parent exits: no orphaned processes.
    """
    if workers <= 1:  # in this process: its signal handlers and thread settings stay as they are
        results = []
        for job in jobs:
            results.append(run_one(table, *job))
            if progress:
                progress(results[-1])
        return results
    import multiprocessing

    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    pool = ctx.Pool(workers, initializer=_init_worker,
                    initargs=(table if ctx.get_start_method() == "fork" else None, path))

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _stop)
    results = []
    try:
        for result in pool.imap_unordered(_work, jobs, chunksize=1):
            results.append(result)
            if progress:
                progress(result)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        signal.signal(signal.SIGTERM, previous)
    return results


# ---- the report -------------------------------------------------------------------------------


def _ci95(values: Sequence[float]) -> float:
    return 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def summarise(
    table: TableData, results: list[RunResult], queries: int, *, latency_metric: str | None = None,
    latency_target: float | None = None,
) -> dict[str, Any]:
    """Per-method statistics: final mean/std, curve checkpoints, p-value against random, time."""
    from scipy.stats import ttest_ind

    by_method: dict[str, list[RunResult]] = {}
    for r in sorted(results, key=lambda r: (r.method, r.seed)):
        by_method.setdefault(r.method, []).append(r)
    checkpoints = [c for c in CHECKPOINTS if c <= queries] + ([queries] if queries not in CHECKPOINTS else [])
    out: dict[str, Any] = {"queries": queries, "checkpoints": checkpoints, "methods": {}}
    baseline = [r.curve[-1] for r in by_method.get("random", [])]
    for method, runs in by_method.items():
        finals = [r.curve[-1] for r in runs]
        mean_curve = [statistics.fmean(r.curve[i] for r in runs) for i in range(queries)]
        ci_curve = [_ci95([r.curve[i] for r in runs]) for i in range(queries)]
        entry: dict[str, Any] = {
            "seeds": len(runs),
            "mean": statistics.fmean(finals),
            "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "curve": {str(c): mean_curve[c - 1] for c in checkpoints},
            "mean_curve": mean_curve,
            "ci95_curve": ci_curve,
            "ms_per_proposal": 1000 * sum(r.seconds for r in runs) / (queries * len(runs)),
            "p_vs_random": None,
        }
        if method != "random" and len(baseline) > 1 and len(finals) > 1:
            # one-sided Welch: does the method's final reported accuracy exceed random search's?
            p = float(ttest_ind(finals, baseline, equal_var=False, alternative="greater").pvalue)
            entry["p_vs_random"] = p if math.isfinite(p) else 1.0
        if latency_metric is not None:
            entry.update(_latency_report(table, runs, latency_metric, latency_target))
        out["methods"][method] = entry
    if "random" in by_method:
        exact = random_search_expectation(table, checkpoints)
        measured = out["methods"]["random"]["curve"]
        out["random_exact"] = {str(c): exact[c] for c in checkpoints}
        out["random_max_abs_gap"] = max(abs(measured[str(c)] - exact[c]) for c in checkpoints)
    if latency_metric is not None:
        out["latency"] = {"metric": latency_metric, "target": latency_target}
    return out


def _latency_report(table: TableData, runs: list[RunResult], metric: str, target: float | None) -> dict[str, Any]:
    from nasforge.pareto import hypervolume, pareto_front

    rows = table.rows
    objectives = (("test_acc", 1), (metric, -1))  # maximise accuracy, minimise latency
    cells = list(rows.values())
    reference = {"test_acc": min(m["test_acc"] for m in cells), metric: max(m[metric] for m in cells)}
    true_front = [cells[i] for i in pareto_front(cells, objectives)]
    true_hv = hypervolume(true_front, objectives, reference)
    ratios = []
    shares: list[list[float]] = []
    for r in runs:
        found = [rows[k] for k in dict.fromkeys(r.proposals)]
        ratios.append(hypervolume(found, objectives, reference) / true_hv)
        if target is not None:
            n = len(r.proposals)
            quarters = [r.proposals[q * n // 4:(q + 1) * n // 4] for q in range(4)]
            shares.append([sum(rows[k][metric] <= target for k in part) / max(1, len(part)) for part in quarters])
    report: dict[str, Any] = {"hv_ratio": statistics.fmean(ratios), "hv_ratio_std": statistics.pstdev(ratios),
                              "true_front_size": len(true_front)}
    if target is not None:
        report["share_meeting_target_by_quarter"] = [statistics.fmean(s[q] for s in shares) for q in range(4)]
    return report


def format_summary(summary: dict[str, Any]) -> str:
    checkpoints = summary["checkpoints"]
    head = f"{'method':20s} {'seeds':>5s} {'mean':>6s} {'std':>5s} " + " ".join(f"{'@' + str(c):>6s}" for c in checkpoints)
    head += f" {'p vs RS':>8s} {'ms/prop':>8s}"
    lines = [f"NB201 table, {summary['queries']} queries: CIFAR-10 test accuracy (%) of the best-by-validation cell",
             head, "-" * len(head)]
    for method, e in sorted(summary["methods"].items(), key=lambda kv: -kv[1]["mean"]):
        p = "-" if e["p_vs_random"] is None else f"{e['p_vs_random']:.2g}"
        lines.append(f"{method:20s} {e['seeds']:5d} {e['mean']:6.2f} {e['std']:5.2f} "
                     + " ".join(f"{e['curve'][str(c)]:6.2f}" for c in checkpoints)
                     + f" {p:>8s} {e['ms_per_proposal']:8.2f}")
    if "random_exact" in summary:
        lines.append(f"{'random (exact)':20s} {'':5s} {'':6s} {'':5s} "
                     + " ".join(f"{summary['random_exact'][str(c)]:6.2f}" for c in checkpoints)
                     + f"   max |measured - exact| = {summary['random_max_abs_gap']:.3f}")
    lat = summary.get("latency")
    if lat:
        lines.append("")
        lines.append(f"latency {lat['metric']}" + (f", target {lat['target']:g}" if lat["target"] is not None else "")
                     + ": hypervolume of the found (test acc, latency) front / the table's true front"
                     + ("; share of proposals meeting the target by quarter of the run" if lat["target"] is not None else ""))
        for method, e in sorted(summary["methods"].items()):
            share = e.get("share_meeting_target_by_quarter")
            lines.append(f"  {method:20s} HV ratio {e['hv_ratio']:.3f} +- {e['hv_ratio_std']:.3f}"
                         + ("   " + " / ".join(f"{s:.2f}" for s in share) if share else ""))
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    """Mean best-so-far curves with 95% confidence bands, one line per method (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colours = [plt.get_cmap("tab20")(i) for i in range(20)]
    for i, (method, e) in enumerate(sorted(summary["methods"].items(), key=lambda kv: -kv[1]["mean"])):
        x = list(range(1, summary["queries"] + 1))
        mean, ci = e["mean_curve"], e["ci95_curve"]
        (line,) = ax.plot(x, mean, label=f"{method} ({e['mean']:.2f})", linewidth=1.4,
                          color=colours[(2 * i) % 20 + (i // 10)], linestyle=("-", "--", ":")[i % 3])
        ax.fill_between(x, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                        color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("table queries")
    ax.set_ylabel("CIFAR-10 test accuracy (%) of the best-by-validation cell")
    ax.set_ylim(bottom=max(85.0, ax.get_ylim()[0]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title("NAS-Bench-201 CIFAR-10, mean over seeds with 95% bands")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def load_summary(out: str | Path) -> dict[str, Any]:
    """A summary written by :func:`run_benchmark` with its curves read back from curves.csv
    (to redraw the plot or reprint the table without rerunning)."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    lines = (out / "curves.csv").read_text().splitlines()
    header = lines[0].split(",")[1:]
    columns = list(zip(*[[float(v) for v in line.split(",")[1:]] for line in lines[1:]]))
    for name, column in zip(header, columns):
        method, kind = name.rsplit("_", 1)
        summary["methods"][method]["mean_curve" if kind == "mean" else "ci95_curve"] = list(column)
    return summary


def parse_method_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["bananas:num_init=10", ...]`` -> ``{"bananas": {"num_init": 10}}`` (values read as YAML scalars)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if ":" not in item or "=" not in item.split(":", 1)[1]:
            raise ConfigError(f"bad method option {item!r}; expected METHOD:KEY=VALUE, e.g. bananas:num_init=10")
        method, kv = item.split(":", 1)
        key, value = kv.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        out.setdefault(method.strip(), {})[key.strip()] = parsed
    return out


def run_benchmark(
    table_path: str | Path, methods: Sequence[str], *, seeds: int = 100, queries: int = 150, workers: int = 2,
    options: Mapping[str, Mapping[str, Any]] | None = None, out: str | Path | None = None,
    latency_metric: str | None = None, latency_target: float | None = None, first_seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every method for ``seeds`` seeds x ``queries`` queries and report (see the module docstring).

    Every argument is checked before any work starts; with ``out`` the summary (JSON), the mean
    curves (CSV), the table (Markdown) and the plot (PNG) are written there.
    """
    from nasforge import get_space

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds <= 0:
        raise BudgetError(f"seeds must be a positive int, got {seeds!r}")
    if isinstance(queries, bool) or not isinstance(queries, int) or queries <= 0:
        raise BudgetError(f"queries must be a positive int, got {queries!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers <= 0:
        raise BudgetError(f"workers must be a positive int, got {workers!r}")
    if not methods:
        raise ConfigError("no methods given")
    opts: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (options or {}).items()}
    for name in [*methods, *opts]:
        require_choice("method", name, registry.names("method"))
    for name in opts:
        if name not in methods:
            raise ConfigError(f"options given for {name!r}, which is not among the methods {list(methods)}")
    table = TableData.load(table_path)
    some_row = next(iter(table.rows.values()))
    if latency_metric is not None and latency_metric not in some_row:
        raise ConfigError(f"latency metric {latency_metric!r} is not a column of {table_path}; valid: "
                          + ", ".join(sorted(k for k in some_row if "latency" in k)))
    space = get_space("nb201")
    for name in methods:  # build each searcher once: bad options fail here, not in a worker
        _searcher(name, first_seed, opts.get(name, {}))
        registry.get("method", name).check_space(space)
    jobs: list[tuple[str, int, int, dict[str, Any]]] = [(m, s, queries, opts.get(m, {})) for m in methods for s in range(first_seed, first_seed + seeds)]
    log(f"{len(jobs)} runs ({len(methods)} method(s) x {seeds} seeds x {queries} queries) on {workers} worker(s)")
    t0 = time.perf_counter()
    done: dict[str, int] = {}
    wall: dict[str, float] = {}

    def progress(r: RunResult) -> None:
        done[r.method] = done.get(r.method, 0) + 1
        if done[r.method] == seeds:
            wall[r.method] = time.perf_counter() - t0
            log(f"  {r.method}: {seeds} seeds done ({wall[r.method]:.1f} s since start)")

    results = run_jobs(table, str(table_path), jobs, workers, progress)
    summary = summarise(table, results, queries, latency_metric=latency_metric, latency_target=latency_target)
    summary["seconds"] = time.perf_counter() - t0
    summary["workers"] = workers
    summary["options"] = opts
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        slim = {**summary, "methods": {m: {k: v for k, v in e.items() if k not in ("mean_curve", "ci95_curve")}
                                       for m, e in summary["methods"].items()}}
        (out / "summary.json").write_text(json.dumps(slim, indent=2, sort_keys=True) + "\n")
        names = sorted(summary["methods"])
        lines = ["queries," + ",".join(f"{m}_mean,{m}_ci95" for m in names)]
        for i in range(queries):
            lines.append(f"{i + 1}," + ",".join(
                f"{summary['methods'][m]['mean_curve'][i]:.4f},{summary['methods'][m]['ci95_curve'][i]:.4f}" for m in names))
        (out / "curves.csv").write_text("\n".join(lines) + "\n")
        (out / "summary.md").write_text("```\n" + format_summary(summary) + "\n```\n")
        plot_curves(summary, out / "curves.png")
    return summary
