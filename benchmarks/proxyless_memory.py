"""ProxylessNAS search-step memory: binary gates vs a single-path network vs DARTS-style mixing (issue 10).

    .venv/bin/python benchmarks/proxyless_memory.py --archs 3 --batch 32

On the ``mobilenet`` space (``preset=cifar``: 21 searchable layers of 6-7 candidates, 3x32x32
inputs, 10 classes) each measurement runs in a **fresh process** (one torch thread,
``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns every freed tensor buffer to the system
at once and the resident set follows the live tensors), builds its model and batches, records
the resident set (the *set-up RSS*: parameters, batches, library code), then runs one untimed
step and two more; the figure is the peak RSS of the process (``getrusage`` ``ru_maxrss``) above
the set-up RSS: activations kept for the backward pass, gradients, optimizer state, temporaries.
Modes, all on the same batch size and, for each of ``--archs`` seeded architectures A:

* ``standalone``: ``space.build(A)``, forward, backward, SGD step: the single-path network;
* ``proxyless_weight``: the supernet, ProxylessNAS' weight step along A's path (one candidate
  per layer, :func:`nasforge.train.bilevel.weight_step`);
* ``proxyless_arch``: the supernet, ProxylessNAS' two-path architecture step (two sampled
  candidates per layer under binary gates, gate gradients, Adam, rescaling;
  :func:`nasforge.methods.proxylessnas.two_path_step`);
* ``darts_weight``: the supernet, a weight step along ``softmax(alpha)`` weights on every layer
  (every candidate runs: DARTS' mixed op, :class:`~nasforge.policies.SoftmaxPolicy`);
* ``darts_arch``: the supernet, DARTS' first-order architecture step (gradient of ``alpha``
  through every candidate, :func:`~nasforge.train.bilevel.arch_step`).

Writes ``benchmarks/results/proxyless_memory.json`` and ``.txt`` (the Markdown table).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
MODES = ("standalone", "proxyless_weight", "proxyless_arch", "darts_weight", "darts_arch")


def rss_mb() -> float:
    """The current resident set in MB (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(mode: str, index: int, batch: int, steps: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    import nasforge
    from nasforge.methods.proxylessnas import two_path_step
    from nasforge.policies import BinaryGatePolicy, SoftmaxPolicy
    from nasforge.train.bilevel import arch_step, weight_step

    torch.set_num_threads(1)
    torch.manual_seed(index)
    space = nasforge.get_space("mobilenet", preset="cifar")
    arch = [space.sample(random.Random(1234)) for _ in range(index + 1)][-1]
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    xv, yv = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if mode == "standalone":
        net = space.build(arch, num_classes=10)
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=4e-5)
        params = sum(p.numel() for p in net.parameters())

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
    else:
        sup = space.supernet(num_classes=10, in_channels=3)
        sup.train()
        params = sum(p.numel() for p in sup.parameters())
        opt = torch.optim.SGD(sup.parameters(), lr=0.025, momentum=0.9, weight_decay=4e-5)
        if mode.startswith("proxyless"):
            gates = BinaryGatePolicy(sup.choices(), seed=index)
            a_opt = torch.optim.Adam(gates.parameters(), lr=1e-3, betas=(0.0, 0.999), eps=1e-8)
            single = sup.path_for(arch)

            def step() -> None:
                if mode == "proxyless_weight":
                    weight_step(sup, single, (x, y), opt, loss_fn=F.cross_entropy, grad_clip=None, where="w")
                else:
                    two_path_step(sup, gates, (xv, yv), a_opt, objective=None, table=None, where="a")
        else:
            soft = SoftmaxPolicy(sup.choices())
            d_opt = torch.optim.Adam(soft.parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)

            def step() -> None:
                if mode == "darts_weight":
                    with torch.no_grad():
                        path = soft()
                    weight_step(sup, path, (x, y), opt, loss_fn=F.cross_entropy, grad_clip=5.0, where="w")
                else:
                    arch_step(sup, soft, (xv, yv), d_opt, loss_fn=F.cross_entropy, where="a")
    setup = rss_mb()
    setup_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(steps):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "arch": space.format(arch), "batch": batch, "params": params, "setup_rss_mb": setup,
            "setup_max_rss_mb": setup_max, "peak_rss_mb": peak, "step_mb": peak - setup}


def main() -> int:
    import _children

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--archs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="steps per process (the first one included in the peak)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "proxyless_memory.json"))
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "INDEX"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.batch, args.steps)))
        return 0
    env = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    rows: list[dict[str, Any]] = []
    for i in range(args.archs):
        order = MODES if i % 2 == 0 else MODES[::-1]
        for mode in order:
            cmd = [sys.executable, __file__, "--worker", mode, str(i), "--batch", str(args.batch),
                   "--steps", str(args.steps)]
            out = _children.run(cmd, env=env, timeout=1800)
            if out.returncode != 0:
                raise SystemExit(f"{mode} failed: {out.stderr[-2000:]}")
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(rec)
            print(f"arch {i} {mode}: {rec['step_mb']:.0f} MB above set-up (set-up {rec['setup_rss_mb']:.0f} MB)",
                  flush=True)
    med = {m: statistics.median(r["step_mb"] for r in rows if r["mode"] == m) for m in MODES}
    params = {m: next(r["params"] for r in rows if r["mode"] == m) for m in MODES}
    base = med["standalone"]
    labels = {
        "standalone": "stand-alone single-path network, weight step",
        "proxyless_weight": "ProxylessNAS weight step (one sampled path)",
        "proxyless_arch": "ProxylessNAS architecture step (two paths, binary gates)",
        "darts_weight": "DARTS-style weight step (softmax mixture, every candidate)",
        "darts_arch": "DARTS-style architecture step (first order, every candidate)",
    }
    lines = [f"| step (batch {args.batch}, 3x32x32, median of {args.archs} architectures) | peak RSS above set-up "
             "| vs stand-alone | parameters of the model |", "|---|---|---|---|"]
    for m in MODES:
        lines.append(f"| {labels[m]} | {med[m]:.0f} MB | {med[m] / base:.2f}x | {params[m] / 1e6:.2f}M |")
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"batch": args.batch, "steps": args.steps, "rows": rows,
                                          "median_step_mb": med}, indent=2) + "\n")
    Path(args.out).with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
