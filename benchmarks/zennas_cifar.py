"""Zen-NAS on CIFAR-10 at a CPU budget: search with the Zen-score, then train what it found.

    .venv/bin/python benchmarks/zennas_cifar.py [--params 500000] [--flops 40e6] [--trials 600]

1. **Search** (``nasforge search``, resumable): the ``zennas`` CIFAR space, Zen-NAS evolution
   starting from the reference's initial structure, Zen-score (batch ``--proxy-batch-size``,
   one repeat) as the fitness, under ``params <= --params`` and ``flops <= --flops``.
2. **Train** each of these networks with the same reduced recipe (``--train-images`` CIFAR-10
   training images, stratified; ``--epochs`` epochs of the ``darts``-style SGD recipe without
   the auxiliary head and drop path; batch 64), then test on all 10,000 test images:

   * the Zen-NAS winner (highest Zen-score);
   * the search's starting structure (the reference ``init_plainnet``), i.e. no search;
   * ``--random`` feasible networks drawn uniformly from the search's own trials: what the same
     evaluations give without the Zen-score's selection (random search over the walk).

The search runs in ``--out``/search; ``--out``/results.json holds one record per trained network
(finished trainings are reused on a rerun). The printed table is what ``docs/benchmarks.md``
quotes; the committed copies are ``benchmarks/results/zennas_cifar/{search,trained}.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kit", default=os.environ.get("NASFORGE_DATA_KIT", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--cache", default=str(ROOT / "runs" / "cache" / "cifar10"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "zennas_cifar"))
    ap.add_argument("--params", type=float, default=500_000)
    ap.add_argument("--flops", type=float, default=40e6)
    ap.add_argument("--trials", type=int, default=600)
    ap.add_argument("--population", type=int, default=64)
    ap.add_argument("--proxy-batch-size", type=int, default=64)
    ap.add_argument("--train-images", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--random", type=int, default=1, help="random feasible trials trained as a baseline")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    import nasforge
    from nasforge.cli import main as cli_main
    from nasforge.data import load_data, split_train_valid
    from nasforge.hardware import measure
    from nasforge.spaces.zennas import INITIAL_STRUCTURES
    from nasforge.train import evaluate, get_recipe, train

    torch.set_num_threads(args.threads)
    batches = Path(args.cache) / "cifar-10-batches-py"
    if not (batches / "test_batch").exists():
        subprocess.run([sys.executable, str(Path(args.kit) / "cifar10" / "materialize.py"), "batches", args.cache],
                       check=True)
    out = Path(args.out)
    search_dir = out / "search"
    t0 = time.perf_counter()
    argv = ["search", "--space", "zennas", "--method", "zennas", "--evaluator", "proxy", "--proxy", "zen",
            "--proxy-batch-size", str(args.proxy_batch_size), "--data", "cifar10", "--data-root", str(batches),
            "--constraint", f"params<={int(args.params)}", "--constraint", f"flops<={int(args.flops)}",
            "--method-opt", f"population_size={args.population}", "--trials", str(args.trials),
            "--seed", str(args.seed), "--no-final-train", "--no-progress", "--out", str(search_dir)]
    if not (search_dir / "results.json").exists():
        rc = cli_main(argv)
        if rc:
            return rc
    search = json.loads((search_dir / "results.json").read_text())
    search_seconds = time.perf_counter() - t0
    space = nasforge.get_space("zennas")
    best = search["best"]["arch"]
    trials = [t for t in search["trials"] if t.get("arch") and t["arch"] != best]
    rng = random.Random(args.seed)
    picks = rng.sample(trials, min(args.random, len(trials)))
    networks = [("Zen-NAS winner", best), ("starting structure (no search)", INITIAL_STRUCTURES["cifar"])]
    networks += [(f"random trial of the search (#{t['number']})", t["arch"]) for t in picks]

    data = load_data("cifar10", batches)
    train_set = data.train
    if args.train_images < len(train_set):  # a class-balanced subset, deterministic per seed
        train_set, _ = split_train_valid(train_set, 1.0 - args.train_images / len(train_set), seed=args.seed)
    recipe = get_recipe("darts", epochs=args.epochs, batch_size=64, auxiliary_weight=0.0, drop_path_prob=0.0)
    zen = nasforge.get_proxy("zen")
    results_path = out / "results.json"
    done = {r["arch"]: r for r in json.loads(results_path.read_text())} if results_path.exists() else {}
    records = []
    for label, text in networks:
        arch = space.parse(text)
        if text in done:
            records.append({**done[text], "label": label})
            continue
        torch.manual_seed(args.seed)
        net = space.build(arch, num_classes=10)
        cost = measure(net, (3, 32, 32))
        score = zen(net, torch.zeros(args.proxy_batch_size, 3, 32, 32), seed=args.seed)
        t = time.perf_counter()
        result = train(net, train_set, recipe, seed=args.seed)
        test = evaluate(net, data.test, batch_size=256)
        records.append({
            "label": label, "arch": text, "zen": score, "params": cost.params, "flops": cost.flops,
            "train_acc": float(result.history[-1]["train_acc"]), "test_acc": float(test["acc"]),
            "train_seconds": time.perf_counter() - t,
        })
        done[text] = records[-1]
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(list(done.values()), indent=2) + "\n")
    print(f"\nZen-NAS on CIFAR-10: params <= {args.params:g}, FLOPs <= {args.flops:g}, {args.trials} trials, "
          f"population {args.population}; search {search.get('seconds_this_run', search_seconds):.0f} s")
    print(f"training: {args.train_images} images, {args.epochs} epochs, batch 64; test on 10,000 images\n")
    print("| network | Zen-score | params | FLOPs | test acc % | train s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in records:
        print(f"| {r['label']} | {r['zen']:.2f} | {r['params']:,.0f} | {r['flops'] / 1e6:.1f}M | "
              f"{r['test_acc']:.2f} | {r['train_seconds']:.0f} |")
    for r in records:
        print(f"{r['label']}: {r['arch']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
