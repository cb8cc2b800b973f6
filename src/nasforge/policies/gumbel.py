"""Gumbel-softmax sampling of one candidate per choice key: SNAS (soft) and GDAS (hard).

* SNAS — Xie, Zheng, Liu & Lin, "SNAS: Stochastic Neural Architecture Search", ICLR 2019:
  ``Z = softmax((alpha + G) / tau)`` with Gumbel noise ``G``, a relaxed (soft) one-hot; every
  candidate runs, weighted by ``Z`` (eq. 3).
* GDAS — Dong & Yang, "Searching for A Robust Neural Architecture in Four GPU Hours", CVPR
  2019 (reference ``D-X-Y/AutoDL-Projects`` ``xautodl/models/cell_searchs/search_model_gdas.py``):
  ``h~ = softmax((log_softmax(alpha) + G) / tau)``, ``h = one_hot(argmax h~)`` in the forward
  pass and the gradient of ``h~`` in the backward pass (straight-through:
  ``h - h~.detach() + h~``). Only the sampled candidate has a non-zero weight, so only it runs
  forward and backward (:class:`~nasforge.nn.choice.Choice` skips zero weights). As the
  reference, a draw whose soft sample has an inf/NaN entry is redrawn.

  The reference also adds each unselected weight ``h_j`` (value 0) to the edge output so
  ``h_j`` receives the summed upstream gradient; ``HardGumbelPolicy(reference_gradient=True)``
  does the same (a :class:`~nasforge.nn.choice.StraightThrough` selection). By default
  unselected candidates contribute nothing and the logits get their gradient through ``h~``'s
  softmax of the selected entry only, the straight-through estimator as the paper describes it
  (sec. 3.2: only the sampled operation is back-propagated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from nasforge.errors import ConfigError
from nasforge.nn.choice import Path, StraightThrough
from nasforge.policies.base import ArchLogits, Policy

_MAX_REDRAWS = 100


def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ConfigError(f"Gumbel temperature tau must be a finite number > 0, got {tau!r}")
    return float(tau)


def gumbel_softmax(logits: torch.Tensor, tau: float, *, hard: bool, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One Gumbel-softmax draw (soft, or hard straight-through).

    The Gumbel noise ``G`` comes from the global torch RNG, or is ``noise`` when given (a tensor of
    ``logits``' shape; used to replay a draw, e.g. the reference implementation's, exactly).
    """
    if noise is not None:
        if tuple(noise.shape) != tuple(logits.shape):
            raise ConfigError(f"Gumbel noise of shape {tuple(noise.shape)} does not match logits of shape {tuple(logits.shape)}")
        soft = torch.softmax((logits + noise.to(logits)) / tau, dim=-1)
        if not bool(torch.isfinite(soft).all()):
            raise ConfigError(f"Gumbel-softmax of the given noise is not finite for logits {logits.tolist()} at tau={tau}")
    else:
        for _ in range(_MAX_REDRAWS):
            u = torch.rand_like(logits)
            gumbel = -torch.log(-torch.log(u))  # u == 0 or 1 gives inf: redrawn below
            soft = torch.softmax((logits + gumbel) / tau, dim=-1)
            if bool(torch.isfinite(soft).all()):
                break
        else:  # pragma: no cover - needs 100 consecutive degenerate draws
            raise ConfigError(f"Gumbel-softmax draws are not finite for logits {logits.tolist()} at tau={tau}")
    if not hard:
        return soft
    index = int(soft.detach().argmax())
    one_hot = torch.zeros_like(soft)
    one_hot[index] = 1.0
    return one_hot - soft.detach() + soft


class GumbelPolicy(Policy):
    """SNAS: a soft Gumbel-softmax sample per choice key at temperature ``tau``.

    Args:
        choices: the supernet's ``choices()``.
        tau: temperature (set :attr:`tau` to anneal it; must stay > 0).
        init_scale: logits start at ``init_scale * N(0, 1)``.
    """

    name = "gumbel"
    hard = False

    def __init__(self, choices: Mapping[str, Sequence[str]], *, tau: float = 1.0, init_scale: float = 1e-3) -> None:
        super().__init__(choices)
        self.logits = ArchLogits(self.choices, init_scale=init_scale)
        self._tau = _check_tau(tau)

    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        self._tau = _check_tau(value)

    def _logits(self, key: str) -> torch.Tensor:
        return self.logits[key]

    def forward(self, noise: Mapping[str, torch.Tensor] | None = None) -> Path:
        """One sample per key; ``noise`` (key -> Gumbel noise) replays a given draw instead of drawing."""
        if noise is not None:
            missing = [k for k in self.choices if k not in noise]
            if missing:
                raise ConfigError(f"Gumbel noise lacks choice keys {missing}; needs {', '.join(self.choices)}")
        return {
            k: gumbel_softmax(self._logits(k), self._tau, hard=self.hard, noise=None if noise is None else noise[k])
            for k in self.choices
        }

    def strengths(self) -> dict[str, torch.Tensor]:
        return {k: torch.softmax(self.logits[k].detach(), dim=-1) for k in self.choices}

    def get_extra_state(self) -> dict[str, float]:
        return {"tau": self._tau}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.tau = float(state["tau"])


class HardGumbelPolicy(GumbelPolicy):
    """GDAS: a hard (one-hot, straight-through) Gumbel sample of ``log_softmax(alpha)``.

    Only the sampled candidate of each key runs. Arguments as :class:`GumbelPolicy`
    (GDAS anneals ``tau`` linearly from 10 to 0.1 over the search).
    """

    name = "hard_gumbel"
    hard = True

    def __init__(
        self, choices: Mapping[str, Sequence[str]], *, tau: float = 1.0, init_scale: float = 1e-3,
        reference_gradient: bool = False,
    ) -> None:
        super().__init__(choices, tau=tau, init_scale=init_scale)
        self.reference_gradient = bool(reference_gradient)

    def _logits(self, key: str) -> torch.Tensor:
        return torch.log_softmax(self.logits[key], dim=-1)

    def forward(self, noise: Mapping[str, torch.Tensor] | None = None) -> Path:
        path = super().forward(noise)
        if not self.reference_gradient:
            return path
        # the reference's form: unselected candidates' zero weights are added to the edge output
        return {k: StraightThrough(w) for k, w in path.items() if isinstance(w, torch.Tensor)}
