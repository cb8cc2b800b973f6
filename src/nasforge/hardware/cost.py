"""Parameters and FLOPs of any network, counted by PyTorch itself.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per
multiply-accumulate for convolutions and matrix products (and nothing for element-wise ops,
pooling or BN). Papers usually quote multiply-adds ("FLOPs" in DARTS, MnasNet, RandWire), so
:class:`Cost` carries ``macs = flops / 2`` as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nasforge.nn.ops import reference_ops


@dataclass(frozen=True)
class Cost:
    params: int  # trainable parameters
    flops: int  # FLOPs of one forward pass for one input (FlopCounterMode convention)

    @property
    def macs(self) -> int:
        return self.flops // 2

    def as_dict(self) -> dict[str, float]:
        return {"params": float(self.params), "flops": float(self.flops), "macs": float(self.macs)}


def count_params(net: nn.Module, *, exclude_auxiliary: bool = True) -> int:
    """Trainable parameters; modules named ``auxiliary*`` are left out by default (DARTS convention)."""
    total = 0
    for name, p in net.named_parameters():
        if exclude_auxiliary and name.split(".")[0].startswith("auxiliary"):
            continue
        if p.requires_grad:
            total += p.numel()
    return total


def count_flops(net: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of ``net`` on one input of ``input_shape`` = (C, H, W), in eval mode, batch 1."""
    was_training = net.training
    net.eval()
    try:
        p = next(net.parameters(), None)
        x = torch.zeros((1, *input_shape), device=p.device if p is not None else "cpu")
        with torch.no_grad(), reference_ops(), FlopCounterMode(display=False) as counter:
            net(x)
        return int(counter.get_total_flops())
    finally:
        net.train(was_training)


def measure(net: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    """Parameters and FLOPs of ``net`` for an input of ``input_shape`` = (C, H, W)."""
    return Cost(params=count_params(net), flops=count_flops(net, input_shape))
