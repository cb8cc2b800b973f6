"""APG-NAG: Nesterov-accelerated proximal gradient for an L1 penalty on scaling factors.

Huang & Wang, "Data-Driven Sparse Structure Selection for Deep Neural Networks", ECCV 2018
(sec. 3.3, "APG-NAG"), used by DSO-NAS (Zhang, Huang & Wang, "You Only Search Once: Single
Shot Neural Architecture Search via Direct Sparse Optimization", arXiv 1811.01567 / TPAMI
2020, eq. 6-8) for the operation scaling factors ``lambda``. It minimises
``G(lambda) + gamma * ||lambda||_1`` with stochastic gradients of the smooth part ``G`` and
the soft-threshold (the proximal operator of the L1 norm)
``S_a(z)_i = sign(z_i) * max(|z_i| - a, 0)``. The reformulation keeps only the look-ahead
point ``lambda'`` (the one the network runs with), so each step needs one forward and backward
at the stored parameters::

    z_t      = lambda'_{t-1} - lr * grad G(lambda'_{t-1})
    v_t      = S_{lr*gamma}(z_t) - lambda'_{t-1} + mu * v_{t-1}          (v_0 = 0)
    lambda'_t = S_{lr*gamma}(z_t) + mu * v_t

This is the update of the reference ``XinbangZhang/DSO-NAS`` (``Cifar/core/optimizer.py``,
class ``APGNAG``), including its final ``lambda = max(lambda, 0)`` (``nonnegative=True``; the
velocity ``v`` is not clipped there either). Entries reach exactly zero, which is what makes
the regulariser prune.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from nasforge.errors import ConfigError


def soft_threshold(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """``sign(z) * max(|z| - alpha, 0)``: the proximal operator of ``alpha * ||.||_1``."""
    return torch.sign(z) * torch.clamp(z.abs() - alpha, min=0.0)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(lr: Any, momentum: Any, gamma: Any) -> None:
    if not (_number(lr) and lr > 0):
        raise ConfigError(f"APG lr must be > 0, got {lr!r}")
    if not (_number(momentum) and 0 <= momentum < 1):
        raise ConfigError(f"APG momentum must be in [0, 1), got {momentum!r}")
    if not (_number(gamma) and gamma >= 0):
        raise ConfigError(f"APG gamma (L1 weight) must be >= 0, got {gamma!r}")


class APG(torch.optim.Optimizer):
    """APG-NAG on its parameters (see the module docstring for the update).

    Args:
        params: tensors or parameter groups (a group may set its own ``lr``, ``momentum``,
            ``gamma``, ``nonnegative``; the methods change ``group["gamma"]`` between steps for
            DSO-NAS's adaptive FLOPs).
        lr: gradient step size ``eta``; the soft-threshold is ``lr * gamma``.
        momentum: ``mu`` (0 gives the plain proximal gradient step ``S(z)``).
        gamma: weight of the L1 penalty.
        nonnegative: clip the parameters at 0 after each step (DSO-NAS reference).

    Parameters whose ``grad`` is None are skipped (the torch convention), so a caller that wants
    the shrinkage applied must give them a (zero) gradient. The velocity is kept as
    ``state[p]["momentum_buffer"]``, so :meth:`state_dict` restores the optimizer exactly.
    """

    def __init__(
        self, params: Iterable[Any], *, lr: float, momentum: float = 0.9, gamma: float = 0.0,
        nonnegative: bool = False,
    ) -> None:
        _check(lr, momentum, gamma)
        if not isinstance(nonnegative, bool):
            raise ConfigError(f"APG nonnegative must be a bool, got {nonnegative!r}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "gamma": gamma, "nonnegative": nonnegative})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, gamma = group["lr"], group["momentum"], group["gamma"]
            _check(lr, mu, gamma)  # groups are mutable (adaptive gamma): re-check what this step uses
            for p in group["params"]:
                if p.grad is None:
                    continue
                shrunk = soft_threshold(p - lr * p.grad, lr * gamma)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                v = state["momentum_buffer"]
                v.mul_(mu).add_(shrunk - p)
                p.copy_(shrunk + mu * v)
                if group["nonnegative"]:
                    p.clamp_(min=0.0)
        return loss
