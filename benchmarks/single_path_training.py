"""How fast does a single-path (SPOS-style) mobilenet supernet learn, against one fixed path of it?

    .venv/bin/python benchmarks/single_path_training.py [--steps 200] [--lr 0.05]

On the built-in digits (8x8, one channel), the ``mobilenet`` supernet (``preset=cifar``,
``width_mult=0.25``) is trained from the same seed with SGD (momentum 0.9, batch 64, one
thread) for ``--steps`` steps, drawing the path of every step in one of these ways:

* ``fixed``: one architecture of the ``k3/k5 x e3/e6 + skip`` space, every step;
* ``uniform k3/k5 x e3/e6 + skip``: a uniform architecture per step (SPOS, ChamNet);
* ``uniform k3/k5, e6``: kernels only (two separately weighted candidates per layer, no skip);
* ``uniform e3/e6, k3``: expansions only;
* ``uniform k3 e6 + skip``: one block or the identity per layer (the stage's first layer has
  no choice).

It prints the training loss (one batch) every ``--every`` steps and the mean of the last 40
steps. The loss at chance is ln 10 = 2.30. The table is quoted in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

CONFIGS: dict[str, tuple[dict[str, Any], bool]] = {
    "fixed": ({"kernels": [3, 5], "expansions": [3, 6]}, True),
    "uniform k3/k5 x e3/e6 + skip": ({"kernels": [3, 5], "expansions": [3, 6]}, False),
    "uniform k3/k5, e6": ({"kernels": [3, 5], "expansions": [6], "allow_skip": False}, False),
    "uniform e3/e6, k3": ({"kernels": [3], "expansions": [3, 6], "allow_skip": False}, False),
    "uniform k3 e6 + skip": ({"kernels": [3], "expansions": [6]}, False),
}


def run(name: str, steps: int, lr: float, every: int, seed: int) -> list[float]:
    import torch
    import torch.nn.functional as F

    import nasforge
    from nasforge.data import load_data

    options, fixed = CONFIGS[name]
    torch.manual_seed(seed)
    space = nasforge.get_space("mobilenet", preset="cifar", width_mult=0.25, **options)
    supernet = space.supernet(in_channels=1)
    data = load_data("digits")
    xs = torch.stack([data.train[i][0] for i in range(len(data.train))])
    ys = torch.tensor([data.train[i][1] for i in range(len(data.train))])
    opt = torch.optim.SGD(supernet.parameters(), lr=lr, momentum=0.9)
    rng = random.Random(seed)
    one = space.sample(random.Random(seed + 1))
    supernet.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(xs), (64,))
        path = supernet.path_for(one if fixed else space.sample(rng))
        for p in supernet.parameters():
            p.grad = None
        loss = F.cross_entropy(supernet(xs[idx], path), ys[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--every", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    marks = list(range(0, args.steps, args.every))
    print(f"SGD lr {args.lr}, momentum 0.9, batch 64, digits; training loss at step (chance 2.30)\n")
    print("| paths | " + " | ".join(str(m) for m in marks) + " | mean of last 40 |")
    print("| --- | " + " | ".join("---:" for _ in marks) + " | ---: |")
    for name in CONFIGS:
        losses = run(name, args.steps, args.lr, args.every, args.seed)
        tail = losses[-40:]
        print(f"| {name} | " + " | ".join(f"{losses[m]:.2f}" for m in marks) + f" | {sum(tail) / len(tail):.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
