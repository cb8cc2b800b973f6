"""Hardware-aware methods on CIFAR-10 at a CPU budget: one latency target, measured vs predicted, a Pareto plot.

    .venv/bin/python benchmarks/hw_methods.py setup                  # data, latency table, targets
    .venv/bin/python benchmarks/hw_methods.py search [--method M ...] # one search per method (resumable)
    .venv/bin/python benchmarks/hw_methods.py evaluate               # measure + train what each found
    .venv/bin/python benchmarks/hw_methods.py report                 # table (Markdown) + Pareto plot
    .venv/bin/python benchmarks/hw_methods.py all                    # the four in order

1. **Setup.** CIFAR-10 is written from the data kit in the official batches layout. For every space
   used here the *largest network* is measured (PyTorch eager, batch 1, one thread, 32x32, in a
   fresh pinned process, the fastest of ``--repeats`` passes: the statistic the ``context`` latency
   table predicts, and the one that stays put when other jobs share the machine; the median is
   reported beside it): for ``mobilenet`` (``preset=cifar``,
   ``width_mult=0.35``, kernels 3/5, expansions 3/6, skip) every layer ``ir_k5_e6``; for
   ``densenas`` every block visited with every layer ``ir_k5_e6``; for ``mnasnet`` every block
   at 1.25x filters, one extra layer, kernel 5, SE and identity skips, with the ConvOp of most
   FLOPs. The **latency target is 70% of that measured latency**. A latency table
   of the ``mobilenet`` space is built on this machine (``nasforge hardware build-lut``,
   ``--statistic context``): the methods that search that space read their latency from it.
2. **Search.** Every method runs through ``nasforge search`` on 5,000 CIFAR-10 training images
   (half for weights, half for the architecture / validation), with the reduced budgets of
   :data:`METHODS` (epochs, steps, populations), aimed at the target the way its paper aims:
   a hard limit (SPOS, FairNAS, ChamNet, DenseNAS decoding), a latency term with the target as
   its reference (ProxylessNAS, MnasNet, Single-Path NAS where it has one), or FBNet's
   target-free latency loss.
3. **Evaluate.** Each found network is measured as in step 1 (median and minimum), its table
   prediction is computed where a table applies, and it is trained from scratch with one short
   recipe (``--train-images`` class-balanced training images, ``--epochs`` epochs, the ``quick``
   recipe at batch 64) and tested on all 10,000 test images. The largest and the smallest network
   of the ``mobilenet`` space and ``--random`` uniform samples are trained the same way, for
   reference.
4. **Report.** A Markdown table (``OUT/report.md``) and the Pareto plot of test accuracy against
   measured latency (``OUT/pareto.png``); the committed copies are under
   ``benchmarks/results/hw_methods/``.

Everything is resumable: a finished step is skipped on a rerun. Set ``--threads`` for training
(measurements always use one thread, pinned).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_FRACTION = 0.7

#: the mobilenet space every layer-wise method searches here
MOBILE: dict[str, Any] = {"preset": "cifar", "width_mult": 0.35, "kernels": [3, 5], "expansions": [3, 6]}
#: DenseNAS' own space, with the same widths and block options
DENSE: dict[str, Any] = {"preset": "cifar", "width_mult": 0.35, "kernels": [3, 5], "expansions": [3, 6]}
#: MnasNet's factorized hierarchical space at the same width
MNAS: dict[str, Any] = {"preset": "cifar", "width_mult": 0.35}


@dataclass(frozen=True)
class Method:
    """One search of the benchmark: the method, its space, and its reduced-budget options."""

    method: str
    space: str
    space_opts: dict[str, Any]
    opts: dict[str, Any]  # --method-opt values; "{table}" and "{target}" are filled in
    epochs: int | None = None  # --epochs (one-shot: search epochs; multi-trial: per candidate)
    extra: tuple[str, ...] = ()  # more CLI arguments; "{target}" is filled in
    aims: str = ""  # how the method is pointed at the target (printed in the report)
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.method


#: how the search loop measures MnasNet's latency: the fastest of 100 passes in a fresh pinned
#: process (the in-process median of 10, the default, took the training's time in under load)
LOOP_LATENCY = ("--latency-opt", "statistic=min", "--latency-opt", "repeats=100", "--latency-opt", "warmup=10",
                "--latency-opt", "isolated=true")

EVOLUTION = {"population_size": 20, "iterations": 4, "top_k": 5, "mutation_num": 8, "crossover_num": 8,
             "bn_recal_images": 512, "eval_batch_size": 128, "eval_batches": 8}

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("spos", "mobilenet", MOBILE, {"batch_size": 64, "lr": 0.05, "latency_table": "{table}", **EVOLUTION},
           epochs=8, extra=("--constraint", "latency_ms<={target}"), aims="hard limit (predicted by the table)"),
    Method("fairnas", "mobilenet", MOBILE, {
        "batch_size": 64, "lr": 0.05, "latency_table": "{table}", "population_size": 20, "generations": 4,
        "bn_recal_images": 512, "eval_batch_size": 128, "eval_batches": 8,
    }, epochs=4, extra=("--constraint", "latency_ms<={target}"), aims="hard limit (predicted by the table)"),
    Method("proxylessnas", "mobilenet", MOBILE, {
        "batch_size": 64, "warmup_epochs": 2, "latency_table": "{table}", "latency_target": "{target}",
    }, epochs=8, aims="latency loss mul#log around the target"),
    Method("fbnet", "mobilenet", MOBILE, {
        "batch_size": 64, "warmup_epochs": 2, "latency_table": "{table}", "latency_unit": "us",
    }, epochs=6, extra=("--constraint", "latency_ms<={target}"),
        aims="latency loss CE*a*log(LAT)^b; most likely sample under the limit"),
    Method("single_path_nas", "mobilenet", MOBILE, {"batch_size": 64, "latency_table": "{table}"},
           aims="CE + lambda*log(R) (no target in the paper's loss; lambda 0.02)"),
    Method("chamnet", "mobilenet", MOBILE, {
        "batch_size": 64, "lr": 0.05, "latency_table": "{table}", "latency_limit": "{target}",
        "bn_recal_images": 512, "eval_batch_size": 128, "eval_batches": 8, "predictor_samples": 60,
        "predictor_init": 30, "predictor_batch": 10, "candidate_pool": 300, "holdout_samples": 20,
        "population_size": 50, "generations": 10,
    }, epochs=8, aims="hard limit in the GA (predicted by the table)"),
    Method("densenas", "densenas", DENSE, {
        "batch_size": 64, "warmup_epochs": 2, "lr": 0.05, "latency_budget": "{target}", "lut_repeats": 30,
    }, epochs=6, aims="CE + 0.15*log(LAT)/log 15; budgeted decoding (its own table)"),
    Method("mnasnet_ppo", "mnasnet", MNAS, {"target": "{target}", "latency_metric": "latency_ms"}, epochs=3,
           extra=("--evaluator", "train", "--trials", "40", *LOOP_LATENCY),
           aims="soft reward ACC*(LAT/T)^-0.07 (latency: fastest of 100 passes, pinned process, in the loop); "
                "highest-reward trial under the target"),
)}


def _run(argv: list[str]) -> int:
    from nasforge.cli import main as cli_main

    print("nasforge " + " ".join(argv), flush=True)
    return int(cli_main(argv) or 0)


def _space_argv(space: str, opts: dict[str, Any]) -> list[str]:
    out = ["--space", space]
    for k, v in opts.items():
        out += ["--space-opt", f"{k}={json.dumps(v) if isinstance(v, list) else v}"]
    return out


def _largest(space: Any) -> Any:
    """The space's largest network (the rules are in the module docstring)."""
    from nasforge.hardware.cost import measure as cost

    decisions = space.decisions()
    if space.name in ("mobilenet", "densenas"):  # every block visited, every layer its last block option
        return space.make({d: [o for o in opts if o not in ("skip", "off")][-1] for d, opts in decisions.items()})
    if space.name == "mnasnet":  # widest and deepest, SE, identity skips; the ConvOp with the most FLOPs
        fixed = {"k": "5", "se": "0.25", "skip": "identity", "filters": "1.25", "layers": "+1"}
        candidates = [
            space.make({d: (op if d.endswith("_op") else fixed[d.split("_", 1)[1]]) for d in decisions})
            for op in decisions["b1_op"]
        ]
        return max(candidates, key=lambda a: cost(space.build(a), (3, 32, 32)).flops)
    raise SystemExit(f"no rule for the largest network of space {space.name!r}")


def measure_arch(space: Any, text: str, repeats: int) -> dict[str, float]:
    from nasforge.hardware.latency import LatencySpec, NetworkRecipe, measure

    recipe = NetworkRecipe(space.name, space.config(), text, {"num_classes": 10})
    m = measure(recipe, (3, 32, 32), LatencySpec(repeats=repeats, warmup=10, isolated=True))
    return {"median_ms": m.median_ms, "min_ms": m.min_ms, "p25_ms": m.p25_ms, "p75_ms": m.p75_ms}


def setup(args: argparse.Namespace) -> dict[str, Any]:
    import nasforge

    out = Path(args.out)
    path = out / "setup.json"
    state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"spaces": {}}
    batches = Path(args.cache) / "cifar-10-batches-py"
    if not (batches / "test_batch").exists():
        subprocess.run([sys.executable, str(Path(args.kit) / "cifar10" / "materialize.py"), "batches", args.cache],
                       check=True)
    state["cifar"] = str(batches)
    table = out / "lut_mobilenet_torch.json"
    if not table.exists() or not json.loads(table.read_text()).get("complete", True):
        rc = _run(["hardware", "build-lut", *_space_argv("mobilenet", MOBILE)[2:], "--space", "mobilenet",
                   "--backend", "torch", "--statistic", "context", "--repeats", str(args.lut_repeats),
                   "--out", str(table), "--no-progress"])
        if rc:
            raise SystemExit(rc)
    state["table"] = str(table)
    spaces = {m.space: m.space_opts for m in METHODS.values()}
    for name, opts in spaces.items():
        key = f"{name}:{json.dumps(opts, sort_keys=True)}"
        if key in state["spaces"]:
            continue
        space = nasforge.get_space(name, **opts)
        largest = space.format(_largest(space))
        measured = measure_arch(space, largest, args.repeats)
        state["spaces"][key] = {"largest": largest, "largest_latency": measured,
                                "target_ms": round(TARGET_FRACTION * measured["min_ms"], 3)}
        print(f"{name}: largest network {measured['min_ms']:.2f} ms (min; median {measured['median_ms']:.2f}), target "
              f"{state['spaces'][key]['target_ms']:.2f} ms", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2) + "\n")
    return state


def found_arch(m: Method, results: dict[str, Any], target: float) -> str:
    """The architecture a search reports: its ``best``, except for MnasNet, whose result is the
    trial of highest reward ``ACC x (LAT / T) ** w`` (what its controller maximises; the loop's
    ``best`` is the most accurate trial, whatever its latency) among the trials whose latency
    measured in the loop meets the target. The soft reward lets the controller explore both
    sides of T, and a user with a latency target picks a searched model under it (a choice of this
    benchmark, not a rule of the paper's text, which was not checked for one). With no trial under
    the target, the highest-reward trial overall."""
    if m.method != "mnasnet_ppo":
        return str(results["best"]["arch"])
    from nasforge.hardware.objectives import MnasNetReward

    reward = MnasNetReward(target)
    done = [t for t in results["trials"] if "latency_ms" in t["metrics"] and math.isfinite(t["fitness"])]
    under = [t for t in done if t["metrics"]["latency_ms"] <= target]
    best = max(under or done, key=lambda t: reward.reward(t["metrics"]["val_acc"], t["metrics"]["latency_ms"]))
    return str(best["arch"])


def _space_key(m: Method) -> str:
    return f"{m.space}:{json.dumps(m.space_opts, sort_keys=True)}"


def search(args: argparse.Namespace, state: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(args.threads)
    names = args.method or list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    for name in names:
        m = METHODS[name]
        run_dir = Path(args.out) / "search" / name
        if (run_dir / "results.json").exists() and json.loads((run_dir / "results.json").read_text()).get("best"):
            continue
        target = state["spaces"][_space_key(m)]["target_ms"]
        fill = {"table": state["table"], "target": f"{target:g}"}
        argv = ["search", "--method", m.method, *_space_argv(m.space, m.space_opts), "--data", "cifar10",
                "--data-root", state["cifar"], "--train-subset", str(args.search_images), "--seed", str(args.seed),
                "--no-final-train", "--no-progress", "--out", str(run_dir)]
        for k, v in m.opts.items():
            argv += ["--method-opt", f"{k}={str(v).format(**fill)}"]
        if m.epochs is not None:
            argv += ["--epochs", str(m.epochs)]
        argv += [a.format(**fill) for a in m.extra]
        t = time.perf_counter()
        rc = _run(argv)
        print(f"{name}: search finished with code {rc} in {time.perf_counter() - t:.0f} s", flush=True)


def _train_and_test(space: Any, text: str, data: Any, train_set: Any, args: argparse.Namespace) -> dict[str, float]:
    import torch

    from nasforge.hardware.cost import measure as cost
    from nasforge.train import evaluate, get_recipe, train

    torch.manual_seed(args.seed)
    net = space.build(space.parse(text), num_classes=10)
    c = cost(net, (3, 32, 32))
    recipe = get_recipe("quick", epochs=args.epochs, batch_size=64)
    t = time.perf_counter()
    train(net, train_set, recipe, seed=args.seed)
    test = evaluate(net, data.test, batch_size=256)
    return {"params": c.params, "flops": c.flops, "test_acc": float(test["acc"]),
            "train_seconds": time.perf_counter() - t}


def evaluate_all(args: argparse.Namespace, state: dict[str, Any]) -> None:
    import torch

    import nasforge
    from nasforge.data import load_data, split_train_valid
    from nasforge.hardware.lut import LatencyTable

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    path = out / "evaluated.json"
    done: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    table = LatencyTable.load(state["table"])
    data = load_data("cifar10", state["cifar"])
    train_set = data.train
    if args.train_images < len(train_set):
        train_set, _ = split_train_valid(train_set, 1.0 - args.train_images / len(train_set), seed=args.seed)

    entries: list[tuple[str, Method | None, str, str, dict[str, Any]]] = []
    for name, m in METHODS.items():
        res = Path(args.out) / "search" / name / "results.json"
        if res.exists() and json.loads(res.read_text()).get("best"):
            doc = json.loads(res.read_text())
            target = state["spaces"][_space_key(m)]["target_ms"]
            entries.append((name, m, m.space, found_arch(m, doc, target), m.space_opts))
    mobile = nasforge.get_space("mobilenet", **MOBILE)
    key = _space_key(METHODS["spos"])
    entries.append(("largest (reference)", None, "mobilenet", state["spaces"][key]["largest"], MOBILE))
    smallest = mobile.make({d: ("skip" if "skip" in o else o[0]) for d, o in mobile.decisions().items()})
    entries.append(("smallest (reference)", None, "mobilenet", mobile.format(smallest), MOBILE))
    rng = random.Random(args.seed)
    for i in range(args.random):
        entries.append((f"random {i + 1} (reference)", None, "mobilenet", mobile.format(mobile.sample(rng)), MOBILE))

    for label, m, space_name, text, opts in entries:
        if label in done and done[label]["arch"] == text:
            continue
        predicted_by_search = None  # the search's own table (DenseNAS measures one for its space)
        if m is not None and space_name != "mobilenet":
            info = json.loads((Path(args.out) / "search" / label / "results.json").read_text()).get("info") or {}
            predicted_by_search = info.get("predicted_latency_ms")
        space = nasforge.get_space(space_name, **opts)
        measured = measure_arch(space, text, args.repeats)
        predicted = table.predict(space.parse(text)) if space_name == "mobilenet" else predicted_by_search
        target = state["spaces"][f"{space_name}:{json.dumps(opts, sort_keys=True)}"]["target_ms"]
        record: dict[str, Any] = {
            "label": label, "method": m.method if m else None, "space": space_name, "arch": text,
            "target_ms": target, "measured": measured, "predicted_ms": predicted,
            "meets_target": measured["min_ms"] <= target, "aims": m.aims if m else "",
        }
        record.update(_train_and_test(space, text, data, train_set, args))
        print(f"{label}: {measured['min_ms']:.2f} ms measured (min), predicted "
              f"{'-' if predicted is None else f'{predicted:.2f}'} ms, target {target:.2f}; "
              f"test {record['test_acc']:.2f}%", flush=True)
        done[label] = record
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(done, indent=2) + "\n")


def remeasure(args: argparse.Namespace) -> None:
    """Measure the latency of every evaluated network again in ``--rounds`` interleaved rounds
    (each round every network once, in a new order, ``--repeats`` passes in a fresh pinned
    process); a network's latency is then its fastest pass of all rounds. On this virtual machine
    the speed drifts by about 10% from second to second, so one measurement of a few seconds can
    land in a slow stretch; rounds spread each network's passes over the whole run."""
    import nasforge

    out = Path(args.out)
    path = out / "evaluated.json"
    done: dict[str, Any] = json.loads(path.read_text())
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in done}
    for rnd in range(args.rounds):
        order = sorted(done)
        random.Random(f"round {rnd}").shuffle(order)
        for label in order:
            r = done[label]
            opts = METHODS[label].space_opts if r["method"] else MOBILE
            runs[label].append(measure_arch(nasforge.get_space(r["space"], **opts), r["arch"], args.repeats))
            print(f"round {rnd + 1}/{args.rounds} {label}: {runs[label][-1]['min_ms']:.2f} ms", flush=True)
    for label, ms in runs.items():
        r = done[label]
        r["measured_rounds"] = {"rounds": args.rounds, "repeats": args.repeats,
                                "min_ms": min(m["min_ms"] for m in ms),
                                "median_ms": statistics.median(m["median_ms"] for m in ms),
                                "round_min_ms": [m["min_ms"] for m in ms]}
        r["meets_target"] = r["measured_rounds"]["min_ms"] <= r["target_ms"]
    path.write_text(json.dumps(done, indent=2) + "\n")


def _latency(r: dict[str, Any]) -> dict[str, Any]:
    """The latency a record reports: of the interleaved rounds if measured so, else its first measurement."""
    return r.get("measured_rounds") or r["measured"]


def report(args: argparse.Namespace, state: dict[str, Any]) -> None:
    out = Path(args.out)
    done: dict[str, Any] = json.loads((out / "evaluated.json").read_text())
    rounds = {(_latency(r).get("rounds"), _latency(r).get("repeats", args.repeats)) for r in done.values()}
    how = ", ".join(f"fastest pass of {n} interleaved rounds of {p} passes" if n else f"fastest of {p} passes"
                    for n, p in sorted(rounds, key=str))
    lines = [
        f"Latency: PyTorch eager, batch 1, one thread, 32x32, isolated pinned process, {how}. "
        f"Target: {TARGET_FRACTION:.0%} of the largest network's measured minimum, per space. "
        f"Accuracy: trained from scratch, {args.train_images} CIFAR-10 images, {args.epochs} epochs "
        "(recipe quick, batch 64), tested on 10,000 images.",
        "",
        "| network | space | aimed by | target ms | measured min ms | table ms | measured median ms | meets | "
        "params | MFLOPs | test acc % |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | :-: | ---: | ---: | ---: |",
    ]
    for r in done.values():
        pred = "-" if r["predicted_ms"] is None else f"{r['predicted_ms']:.2f}"
        lines.append(
            f"| {r['label']} | {r['space']} | {r['aims'] or '-'} | {r['target_ms']:.2f} | "
            f"{_latency(r)['min_ms']:.2f} | {pred} | {_latency(r)['median_ms']:.2f} | "
            f"{'yes' if r['meets_target'] else 'no'} | {r['params']:,.0f} | {r['flops'] / 1e6:.1f} | {r['test_acc']:.2f} |"
        )
    lines += ["", "Architectures:", ""] + [f"- {r['label']}: `{r['arch']}`" for r in done.values()]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    for r in done.values():
        ref = r["method"] is None
        ax.scatter(_latency(r)["min_ms"], r["test_acc"], marker="o" if ref else "*", s=30 if ref else 130,
                   color="lightgrey" if ref else None, edgecolors="black", linewidths=0.5, zorder=3,
                   label=None if ref else f"{r['label']} ({r['space']})")
        if ref:
            ax.annotate(r["label"].replace(" (reference)", ""), (_latency(r)["min_ms"], r["test_acc"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    for space, t in sorted({(r["space"], r["target_ms"]) for r in done.values()}):
        ax.axvline(t, color="grey", ls="--", lw=0.8)
        ax.text(t, 0.02, f" target {space} ", rotation=90, va="bottom", ha="right", fontsize=7, color="grey",
                transform=ax.get_xaxis_transform())
    ax.set_xlabel(f"measured latency (ms, {how}, batch 1, 1 thread)")
    ax.set_ylabel(f"CIFAR-10 test acc. % ({args.epochs} ep., {args.train_images} img.)")
    ax.set_title("Hardware-aware methods at one latency target (this CPU)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out / "pareto.png")
    print(f"wrote {out / 'report.md'} and {out / 'pareto.png'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("setup", "search", "evaluate", "remeasure", "report", "all"))
    ap.add_argument("--method", action="append", help="search only these (repeatable; default all)")
    ap.add_argument("--kit", default=os.environ.get("NASFORGE_DATA_KIT", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--cache", default=str(ROOT / "runs" / "cache" / "cifar10"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "hw_methods"))
    ap.add_argument("--repeats", type=int, default=500,
                    help="timed passes per network measurement (its fastest is the latency: many passes find it "
                         "even on a busy machine)")
    ap.add_argument("--rounds", type=int, default=5, help="remeasure: interleaved rounds over the evaluated networks")
    ap.add_argument("--lut-repeats", type=int, default=30, help="timed passes per block of the latency table")
    ap.add_argument("--search-images", type=int, default=5000)
    ap.add_argument("--train-images", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--random", type=int, default=1, help="uniform samples of the mobilenet space trained for reference")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    state = setup(args) if args.step in ("setup", "all") else json.loads((Path(args.out) / "setup.json").read_text())
    if args.step in ("search", "all"):
        search(args, state)
    if args.step in ("evaluate", "all"):
        evaluate_all(args, state)
    if args.step == "remeasure":
        remeasure(args)
    if args.step in ("report", "all"):
        report(args, state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
