"""Ghost batch normalisation: batch statistics of fixed-size slices of the batch.

Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the generalization gap in
large batch training of neural networks", NeurIPS 2017: a batch is cut into "ghost batches" of
``ghost_batch_size`` examples along dim 0 and each is normalised with its own mean and
variance. Bender et al. (ICML 2018) train the One-Shot model with it, and compute batch
statistics on the fly when they evaluate candidates as well, because the set of active paths
(and so each layer's input statistics) changes from one batch to the next; moving averages
would mix statistics of different architectures.

:class:`GhostBatchNorm2d` therefore keeps no running statistics: it normalises every ghost batch
with its own statistics in training and evaluation mode alike. :func:`use_ghost_batchnorm`
swaps it in for every ``BatchNorm2d`` of a built network (the supernets' constructors are not
touched), keeping the affine parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.errors import ConfigError


def check_ghost_batch_size(value: object) -> int | None:
    """``value`` if it is ``None`` (whole batch) or an int >= 1; else :class:`ConfigError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"ghost_batch_size must be an int >= 1 or None (the whole batch), got {value!r}")
    return value


class GhostBatchNorm2d(nn.Module):
    """BatchNorm over ghost batches of ``ghost_batch_size`` examples (``None``: the whole batch).

    The batch is cut with ``x.split(ghost_batch_size)``: full ghost batches in order, then the
    remainder as a smaller last one. No running statistics are kept (see the module docstring),
    so the output never depends on the module's mode or on earlier batches.

    Args:
        num_features: channels ``C`` of the ``[N, C, H, W]`` input.
        ghost_batch_size: examples per ghost batch, or ``None`` for the whole batch.
        eps: added to the variance (as ``nn.BatchNorm2d``).
        affine: learn a per-channel scale and shift.
    """

    def __init__(self, num_features: int, *, ghost_batch_size: int | None, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.ghost_batch_size = check_ghost_batch_size(ghost_batch_size)
        self.eps = eps
        self.weight: nn.Parameter | None
        self.bias: nn.Parameter | None
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, ghost_batch_size: int | None) -> GhostBatchNorm2d:
        """A ghost version of ``bn`` that reuses its affine parameters (same tensors)."""
        ghost = cls(bn.num_features, ghost_batch_size=ghost_batch_size, eps=bn.eps, affine=False)
        # the same Parameter objects: values (and an optimizer built later) carry over
        ghost.weight, ghost.bias = bn.weight, bn.bias
        return ghost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError(f"GhostBatchNorm2d expects a [N, C, H, W] input, got shape {tuple(x.shape)}")
        g = self.ghost_batch_size
        chunks = [x] if g is None or x.shape[0] <= g else list(x.split(g))
        out = [F.batch_norm(c, None, None, self.weight, self.bias, training=True, momentum=0.0, eps=self.eps)
               for c in chunks]
        return out[0] if len(out) == 1 else torch.cat(out)

    def extra_repr(self) -> str:
        return f"{self.num_features}, ghost_batch_size={self.ghost_batch_size}, eps={self.eps}, affine={self.weight is not None}"


def use_ghost_batchnorm(net: nn.Module, ghost_batch_size: int | None) -> int:
    """Replace every ``nn.BatchNorm2d`` inside ``net`` by a :class:`GhostBatchNorm2d`; returns the count.

    Call it before building the optimizer (the affine parameters are kept, the running-statistic
    buffers are dropped, which changes the module's ``state_dict`` keys).
    """
    size = check_ghost_batch_size(ghost_batch_size)
    replaced = 0
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, GhostBatchNorm2d.from_batchnorm(child, size))
                replaced += 1
    return replaced
