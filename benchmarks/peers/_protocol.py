"""Shared worker protocol for ``benchmarks/oneshot_speed.py`` (stdlib + torch only).

Every worker is run as::

    python WORKER --method M --steps S --warmup W --seed 0 [--channels-last]

in a fresh process, and prints ONE JSON line on stdout::

    {"impl", "method", "median_s", "p10_s", "p90_s", "steps", "peak_rss_mb", "torch", "notes", ...}

or ``{"error": "..."}`` (exit 0) for a method it does not support.

What is measured: the wall time (``time.perf_counter``) of one whole search step, from before the
first ``zero_grad``/sampling call to after the last ``optimizer.step()``, ``warmup`` untimed steps
first; and the peak RSS of the worker process (``getrusage(RUSAGE_SELF).ru_maxrss``), which
includes the interpreter and the imported libraries (``setup_rss_mb`` is the same figure taken
after the model, optimizers and data are built, before the first step).

Shared settings, so that all implementations run the same problem: NAS-Bench-201 supernet,
C=16, N=5 cells per stage, 5 ops per edge, 3x32x32 inputs, 10 classes, batch 64, one thread.
Weights: SGD(lr=0.025, momentum=0.9, weight_decay=5e-4, nesterov=True) as in xautodl's NB201
search configs. Architecture: Adam(lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3) (xautodl,
NNI and the DARTS reference all use it). Data: N(0,1) images and uniform labels, one train and one
valid batch made once and reused (the step time does not depend on the image content).

This file lives next to the workers; a worker imports it as ``_protocol`` because Python puts
the script's folder first on ``sys.path``. It must not import anything but the stdlib and torch,
since it runs inside the peers' virtual environments too.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

METHODS = ("darts", "gdas", "spos", "fixed")
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
C, N_CELLS, NUM_CLASSES, BATCH, IMAGE = 16, 5, 10, 64, (3, 32, 32)
MAX_NODES = 4  # nodes per cell, input included: 6 edges
GDAS_TAU = 10.0
GRAD_CLIP = 5.0
W_LR, W_MOMENTUM, W_DECAY, W_NESTEROV = 0.025, 0.9, 5e-4, True
A_LR, A_BETAS, A_DECAY = 3e-4, (0.5, 0.999), 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The common command line of every worker."""
    ap = argparse.ArgumentParser(description="one-shot NAS step benchmark worker")
    ap.add_argument("--method", required=True, help="darts | gdas | spos | fixed")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    return ap.parse_args(argv)


def setup_torch(seed: int) -> None:
    """One intra-op thread, seeded RNGs (torch and ``random``)."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    random.seed(seed)


def edges() -> list[tuple[int, int]]:
    """NB201 edges as (source j, target i), in the order of the arch string: 0->1, 0->2, 1->2, 0->3, 1->3, 2->3."""
    return [(j, i) for i in range(1, MAX_NODES) for j in range(i)]


def fixed_arch(seed: int) -> list[str]:
    """The op of each edge (order of :func:`edges`) for the "fixed" network: uniform from ``seed``.

    Every worker uses this same function, so all implementations train the same stand-alone cell.
    """
    rng = random.Random(1000 + seed)
    return [rng.choice(NB201_OPS) for _ in edges()]


def arch_str(ops: list[str]) -> str:
    """NB201 string, e.g. ``|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|``."""
    out, k = [], 0
    for i in range(1, MAX_NODES):
        node = []
        for j in range(i):
            node.append(f"{ops[k]}~{j}")
            k += 1
        out.append("|" + "|".join(node) + "|")
    return "+".join(out)


def make_batches(channels_last: bool) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One train and one valid batch of random data (made once, reused every step)."""
    def one() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(BATCH, *IMAGE)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, torch.randint(0, NUM_CLASSES, (BATCH,))
    return one(), one()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_steps(step: Callable[[], Any], steps: int, warmup: int) -> list[float]:
    """Run ``warmup`` untimed steps, then ``steps`` timed ones; seconds per step."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def emit(impl: str, method: str, times: list[float], notes: str, **extra: Any) -> None:
    """Print the one result line."""
    rec: dict[str, Any] = {
        "impl": impl,
        "method": method,
        "median_s": statistics.median(times),
        "p10_s": _quantile(times, 0.10),
        "p90_s": _quantile(times, 0.90),
        "steps": len(times),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "torch": torch.__version__,
        "notes": notes,
    }
    rec.update(extra)
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()


def emit_error(message: str) -> None:
    """Print ``{"error": ...}``; the caller then exits 0."""
    sys.stdout.write(json.dumps({"error": message}) + "\n")
    sys.stdout.flush()
