"""SPOS supernet training, nasforge against the reference code, on the same data and path sequence.

    bash benchmarks/peers/setup_peers.sh            # puts the reference under runs/peers/SinglePathOneShot
    .venv/bin/python benchmarks/peers/spos_differential.py [--steps 600] [--seeds 0 1]

Question: does nasforge's single-path training of the ShuffleNetV2 supernet (the ``shufflenet``
space, :mod:`nasforge.methods.spos`'s optimizer, schedule, loss and step) learn as the SPOS
reference (``megvii-model/SinglePathOneShot``, ``src/Supernet``) does, when both see the same
images in the same order and run the same sequence of sampled paths?

Both sides, per seed:

* **reference**: ``ShuffleNetV2_OneShot(n_class=10)`` imported from the reference's
  ``src/Supernet`` (unchanged files; the only adaptation is its ``globalpool``, ``AvgPool2d(7)``
  for 224x224 inputs, replaced by a global average pool, since 32x32 CIFAR-10 images end at 1x1),
  trained as its ``train.py`` does: SGD on ``get_parameters`` groups (weight decay on weights
  of 2+ dimensions), label smoothing 0.1, ``optimizer.zero_grad()``, gradients whose sum is 0
  set to None, LambdaLR ``1 - step / total``;
* **nasforge**: ``get_space("shufflenet").supernet(num_classes=10)`` (same layout and
  ``affine=False`` BN, its own initialisation), trained with ``spos.sgd_no_decay_1d``,
  ``spos.linear_decay`` and ``train.bilevel.weight_step_pieces``, label smoothing 0.1.

Same hyper-parameters both sides (reference values except batch and learning rate, which
``--batch`` / ``--lr`` set for the CPU budget), the same seeded batches of ``--train-images``
CIFAR-10 training images, and per step the same path: ``uniform`` draws each of the 20 blocks'
ops uniformly (the paper; the reference's ``train.py`` additionally restricts draws to FLOPs bins
of its ImageNet layout, which do not apply at 32x32 and are not used here), ``fixed`` uses one
path throughout (the stand-alone baseline). After training, 10 uniformly drawn paths are scored
on ``--test-images`` CIFAR-10 test images (a seeded random subset) (BN in training mode on batches of 500: each path's
statistics come from the batch, as after a recalibration).

It prints the mean training loss over windows of steps and the final scores, per side, mode
and seed, and writes them to ``--out`` (JSON). Quoted in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REFERENCE = ROOT / "runs" / "peers" / "SinglePathOneShot"
N_BLOCKS, N_OPS = 20, 4


def load_cifar(cache: Path, n_train: int, n_test: int) -> tuple[Any, Any, Any, Any]:
    import torch

    from nasforge.data import load_data

    data = load_data("cifar10", cache)
    xs = torch.stack([data.train[i][0] for i in range(n_train)])
    ys = torch.tensor([int(data.train[i][1]) for i in range(n_train)])
    # a seeded random subset: the data kit's test batch is ordered by class (its first 1,000 are all class 0)
    test = random.Random(0).sample(range(len(data.test)), n_test)
    xt = torch.stack([data.test[i][0] for i in test])
    yt = torch.tensor([int(data.test[i][1]) for i in test])
    return xs, ys, xt, yt


def reference_side(ref_dir: Path, seed: int) -> tuple[Any, Any, Any]:
    """(net, forward(x, path indices), step(loss)) of the reference supernet and its train.py step."""
    import torch
    from torch import nn

    src = ref_dir / "src" / "Supernet"
    if not (src / "network.py").is_file():
        raise SystemExit(f"no SPOS reference at {ref_dir} (expected src/Supernet/network.py); "
                         "run bash benchmarks/peers/setup_peers.sh or pass --reference")
    sys.path.insert(0, str(src))
    try:
        network = importlib.import_module("network")
        utils = importlib.import_module("utils")
    finally:
        sys.path.remove(str(src))
    torch.manual_seed(seed)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints every block it adds
        net = network.ShuffleNetV2_OneShot(input_size=224, n_class=10)
    net.globalpool = nn.AdaptiveAvgPool2d(1)  # AvgPool2d(7) is the 224x224 layout's 7x7 map
    return net, lambda x, path: net(x, tuple(path)), utils.get_parameters(net)


def nasforge_side(seed: int) -> tuple[Any, Any, Any]:
    import torch

    from nasforge import get_space
    from nasforge.spaces.shufflenet import OPS

    space = get_space("shufflenet")
    torch.manual_seed(seed)
    net = space.supernet(num_classes=10)
    names = [b.name for b in space.blocks]

    def forward(x: Any, path: list[int]) -> Any:
        return net(x, {f"{n}_op": OPS[i] for n, i in zip(names, path)})

    return net, forward, None


def train(side: str, mode: str, seed: int, data: tuple[Any, ...], args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from nasforge.methods.spos import SposConfig, linear_decay, sgd_no_decay_1d
    from nasforge.train.bilevel import weight_step_pieces

    xs, ys, xt, yt = data
    if side == "reference":
        net, forward, groups = reference_side(Path(args.reference), seed)
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=4e-5)
    else:
        net, forward, _ = nasforge_side(seed)
        opt = sgd_no_decay_1d(net, SposConfig(lr=args.lr, momentum=0.9, weight_decay=4e-5))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_decay(args.steps, args.lr, 0.0))
    paths = random.Random(1000 + seed)  # the same path sequence for both sides
    order = torch.Generator().manual_seed(2000 + seed)  # the same batches for both sides
    fixed = [paths.randrange(N_OPS) for _ in range(N_BLOCKS)]
    class _Forward(torch.nn.Module):  # weight_step_pieces calls supernet(x, path): path indices here
        def forward(self, x: Any, path: Any) -> Any:
            return forward(x, path)

    stepper = _Forward()
    net.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for _ in range(args.steps):
        idx = torch.randint(0, len(xs), (args.batch,), generator=order)
        path = fixed if mode == "fixed" else [paths.randrange(N_OPS) for _ in range(N_BLOCKS)]
        x, y = xs[idx], ys[idx]
        if side == "reference":  # train.py: zero_grad, backward, zero-sum gradients to None, step
            loss = F.cross_entropy(forward(x, path), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            for p in net.parameters():
                if p.grad is not None and p.grad.sum() == 0:
                    p.grad = None
            opt.step()
            losses.append(loss.item())
        else:
            value, _ = weight_step_pieces(stepper, [(path, (x, y))], opt,
                                          loss_fn=lambda o, t: F.cross_entropy(o, t, label_smoothing=0.1),
                                          grad_clip=None, where="differential")
            losses.append(value)
        sched.step()
    train_s = time.perf_counter() - t0
    scores = []
    probe = random.Random(3000 + seed)
    with torch.no_grad():
        for _ in range(args.probe_paths):
            path = fixed if mode == "fixed" else [probe.randrange(N_OPS) for _ in range(N_BLOCKS)]
            correct = sum(int((forward(xt[i:i + 500], path).argmax(1) == yt[i:i + 500]).sum())
                          for i in range(0, len(xt), 500))
            scores.append(100.0 * correct / len(xt))
            if mode == "fixed":
                break
    return {"side": side, "mode": mode, "seed": seed, "losses": losses, "scores": scores, "train_s": train_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=str(DEFAULT_REFERENCE), help="checkout of megvii-model/SinglePathOneShot")
    ap.add_argument("--cifar", default=str(ROOT / "runs" / "cache" / "cifar10" / "cifar-10-batches-py"),
                    help="CIFAR-10 python batches (../shared/data/cifar10/materialize.py batches DIR writes them)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--modes", nargs="+", default=["fixed", "uniform"], choices=["fixed", "uniform"])
    ap.add_argument("--train-images", type=int, default=5000)
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--probe-paths", type=int, default=10)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "spos_differential.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    data = load_cifar(Path(args.cifar), args.train_images, args.test_images)
    runs = []
    marks = list(range(0, args.steps, args.window))
    print(f"CIFAR-10 {args.train_images} train / {args.test_images} test images, batch {args.batch}, SGD lr {args.lr} "
          f"linear to 0, momentum 0.9, wd 4e-5, label smoothing 0.1, {args.steps} steps; mean training loss per "
          f"{args.window} steps, then test accuracy of {args.probe_paths} uniform paths (fixed: its path)\n")
    print("| side | paths | seed | " + " | ".join(f"{m}-{m + args.window}" for m in marks)
          + " | test acc % mean [min, max] | s |")
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in marks) + " | --- | ---: |")
    for mode in args.modes:
        for seed in args.seeds:
            for side in ("reference", "nasforge"):
                r = train(side, mode, seed, data, args)
                runs.append(r)
                w = [sum(r["losses"][m:m + args.window]) / len(r["losses"][m:m + args.window]) for m in marks]
                s = r["scores"]
                print(f"| {side} | {mode} | {seed} | " + " | ".join(f"{v:.3f}" for v in w)
                      + f" | {sum(s) / len(s):.2f} [{min(s):.2f}, {max(s):.2f}] | {r['train_s']:.0f} |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "runs": runs}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
