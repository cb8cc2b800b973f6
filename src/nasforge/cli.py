"""The ``nasforge`` command.

Every ``search`` / ``train`` option may also come from a YAML or TOML file (``--config``) whose
keys are the option names with underscores (``trials: 30``, ``recipe_overrides: {epochs: 3}``);
options given on the command line win. The fully resolved config is stored in the run
directory as ``config.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError, NasforgeError

DEFAULT_TRAIN_OUT = "runs/train"


def _kv(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as a YAML scalar/list (safe_load: no code runs)."""
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) options file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = p.read_text()
    if p.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from None
    elif p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({e})") from None
    else:
        raise ConfigError(f"config file {path} must end in .yaml, .yml or .toml, not {p.suffix!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


# ---- parser ----------------------------------------------------------------------------------

S = argparse.SUPPRESS  # options not given stay absent, so config-file values are not overwritten


def _data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=S, help="digits (built in, default), cifar10 (official batches) or folder (ImageFolder layout)")
    g.add_argument("--data-root", default=S, help="directory holding cifar-10-batches-py, or train/ and test/ class folders")
    g.add_argument("--image-size", type=int, default=S, help="resize folder images to this square size (default 32)")


def _space_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("space")
    g.add_argument("--space", default=S, help="search space (see `nasforge spaces`; default nb201)")
    g.add_argument("--space-opt", dest="space_kwargs", type=_kv, action="append", default=S, metavar="KEY=VALUE",
                   help="space constructor option, e.g. preset=cifar for mobilenet (repeatable)")
    g.add_argument("--build-opt", dest="build_kwargs", type=_kv, action="append", default=S, metavar="KEY=VALUE",
                   help="network option passed to space.build, e.g. C=8 N=1 for nb201, layers=8 for darts (repeatable)")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=S, help="YAML or TOML file of options (command-line options win)")
    p.add_argument("--seed", type=int, default=S, help="random seed (default 0)")
    p.add_argument("--out", default=S, help="run directory (rerun with the same one to resume)")
    p.add_argument("--device", default=S, help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nasforge", description="Neural architecture search on PyTorch.",
        epilog="Run `nasforge COMMAND --help` for the options of a command.",
    )
    from nasforge import __version__

    parser.add_argument("--version", action="version", version=f"nasforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("search", help="run (or resume) an architecture search",
                       description="Search a space with a method; every trial is stored durably in the run directory. "
                                   "Interrupt with Ctrl-C and rerun the same command to resume.")
    p.add_argument("--method", default=S, help="search method (see `nasforge methods`; default evolution)")
    p.add_argument("--method-opt", dest="method_kwargs", type=_kv, action="append", default=S, metavar="KEY=VALUE",
                   help="method option, e.g. population_size=10 sample_size=3 (repeatable)")
    _space_options(p)
    _data_options(p)
    g = p.add_argument_group("one-shot (weight-sharing) methods")
    g.add_argument("--supernet-opt", dest="supernet_kwargs", type=_kv, action="append", default=S, metavar="KEY=VALUE",
                   help="supernet option, e.g. C=16 N=5 affine=false track_running_stats=false (nb201), "
                        "C=16 layers=8 (darts) (repeatable)")
    g.add_argument("--max-batches-per-epoch", type=int, default=S,
                   help="reduced budget: at most this many search steps per epoch")
    g.add_argument("--checkpoint-every", type=int, default=S, help="search steps between checkpoints (default 100)")
    g.add_argument("--channels-last", action="store_true", default=S, help="run the supernet in channels-last format")
    p.add_argument("--tensorboard", action="store_true", default=S,
                   help="write TensorBoard scalars (one-shot search epochs, final training) to OUT/tensorboard "
                        "(needs `pip install tensorboard`)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--evaluator", default=S, choices=("train", "table", "proxy"),
                   help="train each candidate (default), look it up in the NB201 table (--table), "
                        "or score it untrained with a zero-cost proxy (--proxy)")
    g.add_argument("--table", default=S,
                   help="NB201 results CSV (e.g. ../shared/data/nb201/nb201_table.csv.gz): the evaluator with "
                        "--evaluator table, otherwise the best cell's table accuracy is reported")
    g.add_argument("--proxy", default=S, help="zero-cost proxy for --evaluator proxy (see `nasforge proxies`)")
    g.add_argument("--proxy-batch-size", type=int, default=S, help="images in the proxy's scoring batch (default 64)")
    g.add_argument("--split", default=S, choices=("random", "nb201"),
                   help="validation split: random stratified (default) or nb201 (CIFAR-10 25k/25k)")
    g.add_argument("--valid-fraction", type=float, default=S, help="share of training images held out (default 0.5)")
    g.add_argument("--train-subset", type=int, default=S, help="use only this many training images for the search")
    g.add_argument("--recipe", default=S, help="training recipe of each candidate: quick (default), nb201, darts")
    g.add_argument("--recipe-opt", dest="recipe_overrides", type=_kv, action="append", default=S, metavar="KEY=VALUE",
                   help="override a recipe field, e.g. lr=0.05 (repeatable)")
    g.add_argument("--epochs", type=int, default=S,
                   help="epochs of training per candidate (recipe override); for one-shot methods the search epochs")
    g = p.add_argument_group("budget and objective")
    g.add_argument("--trials", type=int, default=S, help="number of finished trials to reach (default 20)")
    g.add_argument("--objective", default=S,
                   help="metric to optimise: val_acc (default; the proxy with --evaluator proxy), min:params, ...; "
                        "several, comma-separated (val_acc,min:params), search the Pareto front: nsga2 natively, "
                        "any other method through NSGA-II's selection")
    g.add_argument("--constraint", dest="constraints", action="append", default=S, metavar="EXPR",
                   help="hard limit, e.g. params<=200k or flops<=5M (repeatable)")
    g.add_argument("--latency-opt", dest="latency_kwargs", type=_kv, action="append", default=S, metavar="KEY=VALUE",
                   help="how latency_ms is measured in the loop: statistic=median|min, repeats=N, warmup=N, threads=N, "
                        "isolated=true (fresh pinned process), backend=torch|onnxruntime (default: median of 10 passes "
                        "in process; on a busy machine use statistic=min repeats=100 isolated=true) (repeatable)")
    g = p.add_argument_group("final training")
    g.add_argument("--final-recipe", default=S, help="recipe to retrain the best architecture (default quick)")
    g.add_argument("--final-opt", dest="final_overrides", type=_kv, action="append", default=S, metavar="KEY=VALUE",
                   help="override a final-recipe field (repeatable)")
    g.add_argument("--final-epochs", type=int, default=S, help="epochs of the final training")
    g.add_argument("--no-final-train", dest="final_train", action="store_false", default=S,
                   help="skip retraining and export of the best architecture")
    p.add_argument("--storage", default=S, help="Optuna storage URL (default: sqlite file study.db in the run directory)")
    g = p.add_argument_group("workers (multi-trial methods)")
    g.add_argument("--workers", type=int, default=S,
                   help="worker processes on this machine asking, evaluating and telling one study (default 1); "
                        "with --executor ray, trials evaluated at once as Ray tasks")
    g.add_argument("--study-name", default=S,
                   help="study name in --storage; workers on other machines join with the same --storage and "
                        "--study-name (default: derived from the run directory)")
    g.add_argument("--max-retries", type=int, default=S,
                   help="times an architecture is evaluated again after its worker died (default 3)")
    g.add_argument("--heartbeat-seconds", type=int, default=S,
                   help="heartbeat interval of running trials; 3 missed beats mark a worker dead (default 10)")
    g.add_argument("--executor", default=S, choices=("local", "ray"),
                   help="where trials are evaluated: local worker processes (default) or Ray tasks")
    g.add_argument("--ray-address", default=S,
                   help="Ray cluster to join (e.g. auto, or ray://host:10001); default: start a local Ray instance")
    g.add_argument("--ray-cpus", type=float, default=S, help="CPUs each Ray trial task requests (default 1)")
    g.add_argument("--ray-gpus", type=float, default=S, help="GPUs each Ray trial task requests (default 0)")
    _run_options(p)

    p = sub.add_parser("train", help="train one architecture from scratch and export it",
                       description="Train an architecture string of a space on a data set, test it, export it "
                                   "(safetensors + ONNX). Rerun the same command to resume an interrupted training.")
    p.add_argument("--arch", default=S, help="architecture text in the space's format (see `nasforge spaces`)")
    _space_options(p)
    _data_options(p)
    p.add_argument("--recipe", default=S, help="training recipe: quick (default), nb201, darts")
    p.add_argument("--recipe-opt", dest="recipe_overrides", type=_kv, action="append", default=S, metavar="KEY=VALUE",
                   help="override a recipe field, e.g. cutout=16 (repeatable)")
    p.add_argument("--epochs", type=int, default=S, help="epochs (recipe override)")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", default=S, help="skip the ONNX export")
    p.add_argument("--tensorboard", action="store_true", default=S,
                   help="write TensorBoard scalars (loss, accuracy, lr per epoch) to OUT/tensorboard/final "
                        "(needs `pip install tensorboard`)")
    _run_options(p)

    p = sub.add_parser("evaluate", help="evaluate an exported model on a data set's test split")
    p.add_argument("model_dir", help="directory written by search/train (RUN/model)")
    _data_options(p)
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")

    sub.add_parser("spaces", help="list the search spaces with their papers")
    sub.add_parser("methods", help="list the search methods with their papers")
    sub.add_parser("proxies", help="list the zero-cost proxies with their papers")

    p = sub.add_parser("bench", help="reproduce published benchmark numbers")
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    b = bench.add_parser("proxies", help="zero-cost proxies vs NAS-Bench-201 (Spearman / Kendall with bootstrap CIs)",
                         description="Score NB201 cells with zero-cost proxies and correlate with the table's CIFAR-10 "
                                     "test accuracy. Resumable: scores are appended to OUT/<proxy>.jsonl.")
    b.add_argument("--table", required=True, help="NB201 results CSV (e.g. ../shared/data/nb201/nb201_table.csv.gz)")
    b.add_argument("--data-root", default=None,
                   help="CIFAR-10 official batches for data-dependent proxies (without it only data-free ones run)")
    b.add_argument("--out", default="runs/bench/nb201_proxies", help="directory for scores and summary.md")
    b.add_argument("--proxies", default=None, help="comma-separated proxy names (default: all)")
    b.add_argument("--sample", type=int, default=1000, help="cells for data-dependent proxies (0 = all 15,625)")
    b.add_argument("--all-cells", default="", help="comma-separated data-dependent proxies to run on all cells")
    b.add_argument("--sampled", default="", help="comma-separated data-free proxies to run on the sample only")
    b.add_argument("--report-only", action="store_true", help="score nothing: correlate the scores already in --out")
    b.add_argument("--workers", type=int, default=1, help="scoring processes, one torch thread each (default 1)")
    b.add_argument("--batch-size", type=int, default=64, help="images in the scoring batch (default 64)")
    b.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    b.add_argument("--seed", type=int, default=0, help="seed of the sample, the batch and every network (default 0)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")

    b = bench.add_parser("strategies", help="multi-trial search strategies on the NB201 table (curves, Welch tests)",
                         description="Run search methods for a query budget over many seeds on the NB201 table; print "
                                     "mean +- std of the best-by-validation cell's test accuracy, the mean best-so-far "
                                     "curve, a Welch t-test against random search and the time per proposal; write "
                                     "summary.json, curves.csv, summary.md and curves.png to --out.")
    b.add_argument("--table", required=True, help="NB201 results CSV (e.g. ../shared/data/nb201/nb201_table.csv.gz)")
    b.add_argument("--methods", default=None, help="comma-separated method names (default: every multi-trial method)")
    b.add_argument("--seeds", type=int, default=100, help="seeds per method (default 100)")
    b.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    b.add_argument("--queries", type=int, default=150, help="table queries per run (default 150)")
    b.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    b.add_argument("--method-opt", action="append", default=[], metavar="METHOD:KEY=VALUE",
                   help="a method option, e.g. mnasnet_ppo:target=6 (repeatable)")
    b.add_argument("--latency-metric", default=None,
                   help="a latency column (e.g. hwnb_pixel3_latency_ms): report the Pareto front's hypervolume ratio")
    b.add_argument("--latency-target", type=float, default=None,
                   help="with --latency-metric: report the share of proposals meeting it by quarter of the run")
    b.add_argument("--out", default="runs/bench/nb201_strategies", help="directory for the summary, curves and plot")

    p = sub.add_parser("hardware", help="latency lookup tables: build one for this machine, predict with it")
    hw = p.add_subparsers(dest="hardware", required=True, metavar="ACTION")
    h = hw.add_parser("build-lut", help="measure every candidate block of a space on this machine (resumable)",
                      description="Measure every distinct block of the space at every position once, then a few "
                                  "whole networks to fit the constant for stem, head and overheads; write a JSON "
                                  "table. Interrupt and rerun the same command to continue. See docs/hardware.md.")
    h.add_argument("--space", default="mobilenet", help="search space (mobilenet)")
    h.add_argument("--space-opt", dest="space_kwargs", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="space constructor option, e.g. preset=cifar (repeatable)")
    h.add_argument("--backend", default="torch", help="torch (eager) or onnxruntime (default torch)")
    h.add_argument("--input-size", type=int, default=32, help="square input height and width (default 32)")
    h.add_argument("--in-channels", type=int, default=3, help="input channels (default 3)")
    h.add_argument("--num-classes", type=int, default=10, help="classifier outputs of the fitted networks (default 10)")
    h.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    h.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    h.add_argument("--warmup", type=int, default=10, help="untimed passes before timing (default 10)")
    h.add_argument("--repeats", type=int, default=30, help="timed passes per block and network (default 30)")
    h.add_argument("--fit-networks", type=int, default=10, help="whole networks measured to fit the constant (default 10)")
    h.add_argument("--statistic", default="median",
                   help="median (default) or min of the blocks' timed passes alone, or context: their fastest pass "
                        "inside whole networks (torch backend)")
    h.add_argument("--fit", default="offset", help="offset (a constant, default) or affine (scale and constant)")
    h.add_argument("--context-rounds", type=int, default=1,
                   help="torch: go over the in-context timing networks this many times in turn, each block keeping "
                        "its fastest pass (spreads the timings over time on a machine whose speed drifts; default 1)")
    h.add_argument("--out", required=True, help="the JSON table to write (an existing one is continued)")
    h.add_argument("--no-progress", action="store_true", help="no progress bar")
    h = hw.add_parser("predict", help="predicted (and optionally measured) latency of one architecture")
    h.add_argument("--lut", required=True, help="a table written by build-lut")
    h.add_argument("--arch", required=True, help="the architecture in the space's text form")
    h.add_argument("--measure", action="store_true", help="also measure the network with the table's setting")
    h.add_argument("--strict", action="store_true", help="refuse a table measured on another device or library versions")
    h.add_argument("--limit", default=None, help="a latency limit with its unit (5ms, 800us, 0.005s): say if it is met")

    p = sub.add_parser("show", help="print a run's results")
    p.add_argument("run_dir", help="run directory of a search or train command")
    p.add_argument("--top", type=int, default=10, help="how many of the best trials to list")

    p = sub.add_parser("report", help="write a run's results as one self-contained HTML page",
                       description="Write one HTML file (plots inlined, no external links or scripts) with the "
                                   "best-so-far curve, the Pareto front, the found cell drawn, the architecture "
                                   "weights over epochs of one-shot methods, params / FLOPs / latency, the "
                                   "resolved config and the environment.")
    p.add_argument("run_dir", help="run directory of a search or train command")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN_DIR/report.html)")
    return parser


# ---- commands --------------------------------------------------------------------------------


def _gather(ns: argparse.Namespace, keys: Sequence[str]) -> dict[str, Any]:
    """Options from --config, then from the command line (which wins)."""
    opts: dict[str, Any] = load_config_file(ns.config) if "config" in ns else {}
    for key in keys:
        if key in ns:
            value = getattr(ns, key)
            if key.endswith(("_kwargs", "_overrides")) and isinstance(value, list):
                value = {**opts.get(key, {}), **dict(value)}
            opts[key] = value
    return opts


def cmd_search(ns: argparse.Namespace) -> int:
    from nasforge.experiment import SearchConfig, run_search

    keys = [f.name for f in dataclasses.fields(SearchConfig)]
    opts = _gather(ns, keys + ["epochs", "final_epochs"])
    if "epochs" in opts:
        from nasforge import registry
        from nasforge.train.oneshot import OneShotMethod

        method = opts.get("method", SearchConfig.method)
        if method in registry.names("method") and isinstance(registry.get("method", method), OneShotMethod):
            # a one-shot method trains one supernet: --epochs is its number of search epochs
            opts["method_kwargs"] = {**opts.get("method_kwargs", {}), "epochs": opts.pop("epochs")}
        else:
            opts["recipe_overrides"] = {**opts.get("recipe_overrides", {}), "epochs": opts.pop("epochs")}
    if "final_epochs" in opts:
        opts["final_overrides"] = {**opts.get("final_overrides", {}), "epochs": opts.pop("final_epochs")}
    cfg = SearchConfig.from_dict(opts)
    outcome = run_search(cfg, progress=not ns.no_progress)
    from nasforge.train.distributed import env_rank

    if env_rank() != 0:  # torchrun: rank 0 prints the summary
        return 0
    _print_search_summary(json.loads((outcome.run_dir / "results.json").read_text()), top=5)
    print(f"\nrun directory: {outcome.run_dir}  ({outcome.seconds:.0f} s)")
    return 0


def cmd_train(ns: argparse.Namespace) -> int:
    from nasforge.experiment import TrainConfig, run_train

    keys = [f.name for f in dataclasses.fields(TrainConfig)]
    opts = _gather(ns, keys + ["epochs"])
    if "epochs" in opts:
        opts["recipe_overrides"] = {**opts.get("recipe_overrides", {}), "epochs": opts.pop("epochs")}
    cfg = TrainConfig.from_dict(opts)
    res = run_train(cfg, progress=not ns.no_progress)
    _print_rows(["architecture", "test acc %", "params", "FLOPs"],
                [[res["arch"], f"{res['test_acc']:.2f}", f"{res['params']:,.0f}", f"{res['flops']:,.0f}"]])
    print(f"\nmodel: {res['model_dir']}")
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from nasforge.data import load_data
    from nasforge.export import load_model
    from nasforge.train.trainer import evaluate

    data = load_data(getattr(ns, "data", "digits"), getattr(ns, "data_root", None),
                     image_size=getattr(ns, "image_size", None))
    model = load_model(ns.model_dir)
    metrics = evaluate(model, data.test, batch_size=ns.batch_size, device=ns.device)
    print(f"test accuracy {metrics['acc']:.2f}%  loss {metrics['loss']:.4f}  ({len(data.test)} images)")  # type: ignore[arg-type]
    return 0


def cmd_spaces(ns: argparse.Namespace) -> int:
    from nasforge import get_space, registry

    rows = []
    for name in registry.names("space"):
        space = get_space(name)
        rows.append([name, f"{space.size():.3g}", str(len(space.decisions())), space.paper])
    _print_rows(["space", "size", "decisions", "paper"], rows)
    return 0


def cmd_methods(ns: argparse.Namespace) -> int:
    from nasforge import registry
    from nasforge.train.oneshot import OneShotMethod

    rows = []
    for name in registry.names("method"):
        method = registry.get("method", name)
        kind = "one-shot" if isinstance(method, OneShotMethod) else "multi-trial"
        opts = ", ".join(f"{k}={v}" for k, v in method.options().items()) or "-"
        rows.append([name, kind, opts if len(opts) <= 70 else opts[:67] + "...", method.paper])
    _print_rows(["method", "kind", "options (defaults)", "paper"], rows)
    return 0


def cmd_proxies(ns: argparse.Namespace) -> int:
    from nasforge import registry

    rows = []
    for name in registry.names("proxy"):
        p = registry.get("proxy", name)
        data = "labels" if getattr(p, "needs_labels", False) else ("inputs" if getattr(p, "needs_data", False) else "none")
        rows.append([name, data, getattr(p, "paper", "")])
    _print_rows(["proxy", "data needed", "paper"], rows)
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    if ns.bench == "strategies":
        return _bench_strategies(ns)
    from nasforge.bench.proxies import DATA_DEFAULT, DATA_FREE_DEFAULT, run_benchmark

    proxies = [p.strip() for p in ns.proxies.split(",") if p.strip()] if ns.proxies else [*DATA_FREE_DEFAULT, *DATA_DEFAULT]
    all_cells = [p.strip() for p in ns.all_cells.split(",") if p.strip()]
    sampled = [p.strip() for p in ns.sampled.split(",") if p.strip()]
    print(run_benchmark(ns.table, ns.data_root, ns.out, proxies=proxies, sample=ns.sample, all_cells=all_cells,
                        sampled=sampled, report_only=ns.report_only, workers=ns.workers,
                        batch_size=ns.batch_size, seed=ns.seed, bootstrap=ns.bootstrap, progress=not ns.no_progress))
    return 0


def _bench_strategies(ns: argparse.Namespace) -> int:
    from nasforge.bench.strategies import default_methods, format_summary, parse_method_options, run_benchmark

    methods = [m.strip() for m in ns.methods.split(",") if m.strip()] if ns.methods else default_methods()
    summary = run_benchmark(
        ns.table, methods, seeds=ns.seeds, queries=ns.queries, workers=ns.workers,
        options=parse_method_options(ns.method_opt), out=ns.out, latency_metric=ns.latency_metric,
        latency_target=ns.latency_target, first_seed=ns.first_seed,
    )
    print(format_summary(summary))
    print(f"\nwritten to {ns.out} ({summary['seconds']:.1f} s)")
    return 0


def cmd_hardware(ns: argparse.Namespace) -> int:
    import warnings

    from nasforge.hardware.latency import LatencySpec, NetworkRecipe, measure, parse_duration_ms
    from nasforge.hardware.lut import LatencyTableWarning, build_lut, load_lut

    if ns.hardware == "build-lut":
        import nasforge

        space = nasforge.get_space(ns.space, **dict(ns.space_kwargs))
        spec = LatencySpec(backend=ns.backend, batch_size=ns.batch, threads=ns.threads, warmup=ns.warmup,
                           repeats=ns.repeats)
        table = build_lut(space, (ns.in_channels, ns.input_size, ns.input_size), spec, ns.out,
                          num_classes=ns.num_classes, fit_networks=ns.fit_networks, statistic=ns.statistic,
                          fit=ns.fit, progress=not ns.no_progress,
                          **({"context_rounds": ns.context_rounds} if ns.backend == "torch" else {}))
        fit = table.doc["fit"]
        print(f"{len(table.doc['entries'])} blocks and {fit['networks']} networks measured on {table.header['device']} "
              f"({ns.backend}, {ns.threads} thread(s)); constant {table.constant_ms:.3f} ms, scale {table.scale:.3f}, "
              f"fit residuals {fit['residual_min_ms']:+.3f} to {fit['residual_max_ms']:+.3f} ms")
        print(f"table: {ns.out}")
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LatencyTableWarning)
        table = load_lut(ns.lut, strict=ns.strict)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    limit = None if ns.limit is None else parse_duration_ms(ns.limit)
    space = table.space
    arch = space.parse(ns.arch)
    predicted = table.predict(arch)
    print(f"predicted: {predicted:.3f} ms  ({table.header['backend']}, {table.header['threads']} thread(s), "
          f"batch {table.header['batch_size']}, input {'x'.join(map(str, table.input_shape))}, {table.statistic})")
    if ns.measure:
        recipe = NetworkRecipe.of(space, arch, num_classes=table.header["num_classes"], in_channels=table.input_shape[0])
        m = measure(recipe, table.input_shape, table.spec())
        value = m.median_ms if table.statistic == "median" else m.min_ms
        print(f"measured:  {value:.3f} ms  ({table.statistic} of {m.repeats}; median {m.median_ms:.3f}, "
              f"IQR {m.p25_ms:.3f}-{m.p75_ms:.3f}, min {m.min_ms:.3f}; {m.device})")
    if limit is not None:
        print(f"limit {limit:g} ms: predicted latency {'meets' if predicted <= limit else 'exceeds'} it")
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    path = Path(ns.run_dir) / "results.json"
    if not path.is_file():
        raise ConfigError(f"{ns.run_dir} holds no results.json (not a finished nasforge run directory)")
    res = json.loads(path.read_text())
    if res.get("kind") == "search":
        _print_search_summary(res, top=ns.top)
    else:
        f = res["final"]
        _print_rows(["architecture", "test acc %", "params", "FLOPs", "epochs"],
                    [[f["arch"], f"{f['test_acc']:.2f}", f"{f['params']:,.0f}", f"{f['flops']:,.0f}", str(f["epochs"])]])
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    from nasforge.report import write_report

    path = write_report(ns.run_dir, ns.out)
    print(f"report: {path}")
    return 0


def _print_search_summary(res: dict[str, Any], top: int) -> None:
    from nasforge.experiment import parse_objective

    cfg = res["config"]
    if res.get("method_kind") == "one-shot":
        _print_one_shot_summary(res)
        return
    objective = res.get("objective") or cfg.get("objective") or "val_acc"
    metric = parse_objective(objective.split(",")[0])[0]  # the first objective is the trial's fitness
    trials = sorted(res["trials"], key=lambda t: -t["fitness"])[:top]
    print(f"\n{cfg['method']} on {cfg['space']} / {cfg['data']}: {len(res['trials'])} trials, objective {objective}")
    rows = []
    for t in trials:
        m = t["metrics"]
        rows.append([str(t["number"]), t["arch"], f"{m.get(metric, float('nan')):.4g}",
                     f"{m.get('params', float('nan')):,.0f}", f"{m.get('flops', float('nan')):,.0f}"])
    _print_rows(["trial", "architecture", "val acc %" if metric == "val_acc" else metric, "params", "FLOPs"], rows)
    front = res.get("pareto_front")
    if front:
        names = [o.split(":", 1)[1] for o in res["objectives"]]
        print(f"\nPareto front ({', '.join(res['objectives'])}): {len(front)} trial(s)")
        _print_rows(["trial", "architecture", *names],
                    [[str(t["trial"]), t["arch"], *(f"{t[n]:.4g}" for n in names)] for t in front])
    final = res.get("final")
    if final:
        print("\nbest architecture, retrained on the full training set:")
        _print_rows(["architecture", "test acc %", "params", "FLOPs", "epochs"],
                    [[final["arch"], f"{final['test_acc']:.2f}", f"{final['params']:,.0f}",
                      f"{final['flops']:,.0f}", str(final["epochs"])]])
        print(f"model: {final['model_dir']}" + (f"  onnx: {final['onnx']}" if final.get("onnx") else ""))
    table = res["best"].get("table") or (res["best"]["metrics"] if "test_acc" in res["best"]["metrics"] else None)
    if table:
        print(f"\nbest architecture in the NB201 table: CIFAR-10 test accuracy {table['test_acc']:.2f}%, "
              f"cifar10-valid validation accuracy {table['val_acc']:.2f}%")


def _print_one_shot_summary(res: dict[str, Any]) -> None:
    cfg = res["config"]
    history = res.get("history", [])
    print(f"\n{cfg['method']} (one-shot) on {cfg['space']} / {cfg['data']}: {len(history)} search epoch(s)")
    rows = []
    for h in history:
        rows.append([str(h["epoch"]), f"{h.get('train_loss', float('nan')):.4g}", f"{h.get('valid_loss', float('nan')):.4g}",
                     str(h.get("arch", "-")), f"{h['table_test_acc']:.2f}" if "table_test_acc" in h else "-"])
    _print_rows(["epoch", "train loss", "valid loss", "derived architecture", "table test acc %"], rows[-10:])
    print(f"\nderived architecture: {res['best']['arch']}")
    table = res["best"].get("table")
    if table:
        print(f"NB201 table: CIFAR-10 test accuracy {table['test_acc']:.2f}%")
    final = res.get("final")
    if final:
        print(f"retrained: test accuracy {final['test_acc']:.2f}% after {final['epochs']} epochs; model: {final['model_dir']}")


def _print_rows(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


COMMANDS = {"search": cmd_search, "train": cmd_train, "evaluate": cmd_evaluate,
            "spaces": cmd_spaces, "methods": cmd_methods, "proxies": cmd_proxies, "bench": cmd_bench,
            "hardware": cmd_hardware, "show": cmd_show, "report": cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return COMMANDS[ns.command](ns)
    except BrokenPipeError:  # the reader went away (``nasforge show RUN | head``): stop quietly, as Unix tools do
        try:  # the interpreter's final flush of stdout must not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor
            pass
        return 141
    except KeyboardInterrupt as e:  # includes SearchInterrupted
        msg = str(e) or "interrupted; finished work is saved. Rerun the same command to resume."
        print(f"\n{msg}", file=sys.stderr)
        return 130
    except NasforgeError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
