"""DSO-NAS scaling factors: every candidate's output is multiplied by its own ``lambda``.

Zhang, Huang & Wang, "You Only Search Once: Single Shot Neural Architecture Search via Direct
Sparse Optimization" (arXiv 1811.01567, TPAMI 2020), eq. 2-3: the complete graph runs every
operation, each connection scaled by a factor ``lambda`` that starts at 1 (reference
``XinbangZhang/DSO-NAS``: ``init_one`` for every ``lambda*`` parameter) and is driven to zero by
an L1 penalty. Here one ``lambda`` per candidate of every choice key is the mixture weight the
supernet receives: ``path[k] = lambda_k`` (not normalised). A :class:`~nasforge.nn.choice.Choice`
does not run candidates whose weight is exactly zero, so a zero ``lambda`` *is* the pruned op.

Pruning is also made permanent: :meth:`ScalingPolicy.prune` marks every zero ``lambda`` dead
(a saved buffer), and a dead entry is masked to zero from then on, whatever an optimizer's
momentum would do with it. ``exclude`` names candidates that never get a factor (``none``:
its output is zero, so its ``lambda`` would only ever be shrunk; DSO-NAS has no such op, an
input is removed by zeroing all its factors instead).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.nn.choice import Path
from nasforge.policies.base import Policy


class ScalingPolicy(Policy):
    """``path[k] = lambda_k * alive_k``: one scaling factor per candidate, zero = pruned.

    Args:
        choices: the supernet's ``choices()``.
        init: initial value of every ``lambda`` (DSO-NAS: 1).
        exclude: candidate names without a factor (weight fixed at 0, never run), e.g. ``none``.

    Attributes:
        lambdas: ``nn.ParameterDict`` key -> factors over all the key's candidates (excluded
            and pruned entries hold 0). These are the policy's ``parameters()``.
    """

    name = "scaling"

    def __init__(self, choices: Mapping[str, Sequence[str]], *, init: float = 1.0, exclude: Sequence[str] = ()) -> None:
        super().__init__(choices)
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init) or init <= 0:
            raise ConfigError(f"scaling factors must start > 0 (a zero factor is a pruned op), got init={init!r}")
        self.exclude = tuple(exclude)
        self.lambdas = nn.ParameterDict()
        empty = []
        for key, options in self.choices.items():
            alive = torch.tensor([op not in self.exclude for op in options])
            if not bool(alive.any()):
                empty.append(key)
            self.register_buffer(self._alive_name(key), alive)
            self.lambdas[key] = nn.Parameter(float(init) * alive.float())
        if empty:
            raise ConfigError(f"scaling policy: every candidate of {empty[:5]} is excluded ({', '.join(self.exclude)})")

    @staticmethod
    def _alive_name(key: str) -> str:
        return f"alive_{key}"

    def alive(self, key: str) -> torch.Tensor:
        """Boolean mask of the candidates of ``key`` that are neither excluded nor pruned."""
        mask: torch.Tensor = getattr(self, self._alive_name(key))
        return mask

    def forward(self) -> Path:
        # the mask multiplies rather than indexes: dead entries stay exact zeros (not run) and get zero gradient
        return {k: self.lambdas[k] * self.alive(k).to(self.lambdas[k].dtype) for k in self.choices}

    def strengths(self) -> dict[str, torch.Tensor]:
        """``|lambda|`` of the live candidates, 0 for pruned and excluded ones."""
        return {k: (self.lambdas[k].detach().abs() * self.alive(k)) for k in self.choices}

    @torch.no_grad()
    def prune(self) -> int:
        """Mark every zero factor dead for good (and zero dead entries); returns the live count."""
        for key in self.choices:
            mask = self.alive(key)
            mask &= self.lambdas[key] != 0
            self.lambdas[key].mul_(mask)
        return self.active()

    def active(self) -> int:
        """Number of live (non-zero, not excluded) factors over all keys."""
        return int(sum(self.alive(k).sum() for k in self.choices))  # one device sync, not one per key

    def total(self) -> int:
        """Number of factors that started live (all but the excluded candidates)."""
        return sum(sum(op not in self.exclude for op in ops) for ops in self.choices.values())
