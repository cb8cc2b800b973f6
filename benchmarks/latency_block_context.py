"""Why a table of blocks timed alone under-predicts PyTorch eager networks: blocks in context.

For random `mobilenet` (preset=cifar) networks, times every block three ways, each the min over
timed passes with one torch thread:

* in context: forward hooks around each block while the whole network runs;
* alone: the same block module on an input of the same shape, run in a loop (what the lookup
  table measures: its weights and input stay in cache between passes);
* alone after a cache flush: a buffer of ``--flush-mb`` MiB is written before each timed pass.

    .venv/bin/python benchmarks/latency_block_context.py --archs 6 --flush-mb 4 --flush-mb 64

Prints one row per network: the network's time, the sums of its blocks' times each way, and the
ratio in-context / alone (how much more a block costs inside the network).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import torch

from nasforge import get_space


def fastest_ms(fn: Callable[[], object], passes: int, before: Callable[[], object] | None = None) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(passes):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", type=int, default=6)
    parser.add_argument("--passes", type=int, default=40)
    parser.add_argument("--flush-mb", type=int, action="append", default=[], help="cache flush size (repeatable)")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = get_space("mobilenet", preset="cifar")
    rng = random.Random(args.seed)
    flushes = {mb: torch.empty(mb * 1024 * 1024 // 4) for mb in args.flush_mb}
    head = f"{'net ms':>7}  {'in context':>10}  {'alone':>6}  " + "  ".join(f"{f'flush {mb}M':>9}" for mb in flushes)
    print(head + f"  {'ctx/alone':>9}  {'net - ctx':>9}")
    for _ in range(args.archs):
        net = space.build(space.sample(rng), num_classes=10, in_channels=3).eval()
        net_ms, in_context, alone, flushed = one_network(net, args.passes, flushes)
        row = f"{net_ms:>7.2f}  {in_context:>10.2f}  {alone:>6.2f}  " + "  ".join(f"{v:>9.2f}" for v in flushed.values())
        print(row + f"  {in_context / alone:>9.2f}  {net_ms - in_context:>9.2f}")


def one_network(net: torch.nn.Module, passes: int,
                flushes: dict[int, torch.Tensor]) -> tuple[float, float, float, dict[int, float]]:
    """(network ms, sum of blocks in context, sum of blocks alone, sum alone after each flush)."""
    blocks = [(name, m) for name, m in net.named_modules() if name.startswith("layers.") and name.count(".") == 1]
    spans: dict[str, list[float]] = {}
    shapes: dict[str, torch.Size] = {}

    def pre(name: str) -> Callable[..., None]:
        def hook(_m: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            shapes[name] = inputs[0].shape
            spans.setdefault(name, []).append(-time.perf_counter())
        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(_m: torch.nn.Module, _i: object, _o: object) -> None:
            spans[name][-1] += time.perf_counter()
        return hook

    handles = [m.register_forward_pre_hook(pre(n)) for n, m in blocks]
    handles += [m.register_forward_hook(post(n)) for n, m in blocks]
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        fastest_ms(lambda: net(x), passes)
    for h in handles:
        h.remove()
    in_context = sum(min(v) * 1000.0 for v in spans.values())
    with torch.inference_mode():
        net_ms = fastest_ms(lambda: net(x), passes)
        inputs = {n: torch.randn(shapes[n]) for n, _ in blocks}
        alone = sum(fastest_ms(lambda m=m, n=n: m(inputs[n]), passes) for n, m in blocks)
        flushed = {mb: sum(fastest_ms(lambda m=m, n=n: m(inputs[n]), passes, before=lambda b=buf: b.add_(1.0))
                           for n, m in blocks) for mb, buf in flushes.items()}
    return net_ms, in_context, alone, flushed

if __name__ == "__main__":
    main()
