"""Single-path overhead: a supernet step along a sampled cell vs the stand-alone network of that cell.

    .venv/bin/python benchmarks/oneshot_overhead.py --archs 5 --steps 10

For each of ``--archs`` uniformly sampled NB201 cells (seeded) three workers run in fresh
processes, one torch thread each, batch 64 of 3x32x32 random images, C=16, N=5:

* ``standalone``: ``space.build(arch)`` — forward, backward, SGD step (the reference point);
* ``spos``: the supernet (search-cell BN ``affine=False, track_running_stats=False``) with
  ``weight_step`` along ``supernet.path_for(arch)``: the single-path step of RSPS / SPOS;
* ``gdas_w``: the same supernet with a one-hot straight-through weight vector on every edge
  (the arch's ops, as a GDAS sample gives them): one ``weight_step`` — the hard-Gumbel
  counterpart of one stand-alone step;
* ``gdas``: ``gdas_w`` followed by GDAS' ``arch_step`` on a second batch (a whole GDAS search
  step: two forward/backward passes, so about twice a stand-alone step by construction).

Reported: the median step time and the peak RSS above the set-up RSS (activations and
gradients: the part that scales with the network), per cell, and the ratios to stand-alone.
Modes alternate within every cell so machine drift cancels.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(mode: str, index: int, steps: int, warmup: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    import nasforge
    from nasforge.policies import HardGumbelPolicy
    from nasforge.train.bilevel import arch_step, weight_step

    torch.set_num_threads(1)
    torch.manual_seed(index)
    space = nasforge.get_space("nb201")
    rng = random.Random(1234)
    arch = [space.sample(rng) for _ in range(index + 1)][-1]
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    xv, yv = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    if mode == "standalone":
        net = space.build(arch, C=16, N=5)
        opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
    else:
        sup = space.supernet(C=16, N=5, affine=False, track_running_stats=False)
        opt = torch.optim.SGD(sup.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
        single = sup.path_for(arch)
        if mode == "spos":
            def step() -> None:
                weight_step(sup, single, (x, y), opt, loss_fn=F.cross_entropy, grad_clip=5.0, where="spos")
        else:
            policy = HardGumbelPolicy(sup.choices(), tau=10.0)
            a_opt = torch.optim.Adam(policy.parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)

            def path() -> dict[str, torch.Tensor]:  # the arch's ops as straight-through one-hot weights
                soft = {k: torch.softmax(torch.log_softmax(policy.logits[k], -1) / policy.tau, -1) for k in policy.choices}
                out = {}
                for k, ops in policy.choices.items():
                    hard = torch.zeros(len(ops))
                    hard[ops.index(single[k])] = 1.0
                    out[k] = hard - soft[k].detach() + soft[k]
                return out

            def step() -> None:
                with torch.no_grad():
                    p = path()
                weight_step(sup, p, (x, y), opt, loss_fn=F.cross_entropy, grad_clip=5.0, where="gdas w")
                if mode == "gdas":
                    arch_step(sup, path, (xv, yv), a_opt, loss_fn=F.cross_entropy, where="gdas a")
    setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"median_s": statistics.median(times), "setup_rss_mb": setup, "peak_rss_mb": peak,
            "arch": space.format(arch)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--pin-cpu", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "oneshot_overhead.json"))
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "INDEX"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.steps, args.warmup)))
        return 0
    rows = []
    for i in range(args.archs):
        modes = ["standalone", "spos", "gdas_w", "gdas"]
        modes = modes if i % 2 == 0 else modes[::-1]
        rec: dict[str, dict[str, float]] = {}
        for mode in modes:
            cmd = [sys.executable, __file__, "--worker", mode, str(i), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            if args.pin_cpu is not None:
                cmd = ["taskset", "-c", str(args.pin_cpu), *cmd]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
            rec[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(rec)
        print(f"cell {i}: {rec['standalone']['arch']}", flush=True)
    lines = ["| cell | stand-alone step | spos step | hard-Gumbel weight step | GDAS w+arch step | stand-alone mem "
             "| spos mem | hard-Gumbel weight-step mem |", "|---|---|---|---|---|---|---|---|"]
    for rec in rows:
        s, p, gw, g = rec["standalone"], rec["spos"], rec["gdas_w"], rec["gdas"]
        ms = [r["peak_rss_mb"] - r["setup_rss_mb"] for r in (s, p, gw)]

        def t(r: dict[str, float], s: dict[str, float] = s) -> str:
            return f"{1000 * r['median_s']:.0f} ms ({r['median_s'] / s['median_s']:.2f}x)"

        lines.append(
            f"| `{s['arch']}` | {1000 * s['median_s']:.0f} ms | {t(p)} | {t(gw)} | {t(g)} | {ms[0]:.0f} MB "
            f"| {ms[1]:.0f} MB ({ms[1] / ms[0]:.2f}x) | {ms[2]:.0f} MB ({ms[2] / ms[0]:.2f}x) |"
        )
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    Path(args.out).with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
