"""Measured inference latency of a network on this machine (PyTorch eager, no grad).

The median of ``repeats`` timed forward passes after ``warmup`` untimed ones, batch 1 by
default, in eval mode, with the current torch thread setting. Latency is a measurement, not a
count: it varies with the machine and its load, so the search loop caches each architecture's
measured value in the run directory and reuses it when a search resumes.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from nasforge.errors import BudgetError


def measure_latency_ms(
    net: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1, warmup: int = 3, repeats: int = 10,
) -> float:
    """Median milliseconds of one forward pass of ``net`` on a ``(batch_size, *input_shape)`` input."""
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise BudgetError(f"need repeats >= 1, warmup >= 0, batch_size >= 1; got {repeats}, {warmup}, {batch_size}")
    was_training = net.training
    net.eval()
    p = next(net.parameters(), None)
    x = torch.randn((batch_size, *input_shape), device=p.device if p is not None else "cpu")
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                t = time.perf_counter()
                net(x)
                if x.is_cuda:
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append((time.perf_counter() - t) * 1000.0)
    finally:
        net.train(was_training)
    return statistics.median(times)
