"""Path dropout: every candidate runs unless dropped; the kept ones are summed.

Bender, Kindermans, Zoph, Vasudevan & Le, "Understanding and Simplifying One-Shot Architecture
Search", ICML 2018 (sec. 3, "path dropout"): during one-shot training each operation feeding a
node is zeroed out independently; with ``k`` candidates on a choice each is dropped with
probability ``rate ** (1 / k)``, so all of them are dropped together with probability
``rate``. The rate is raised linearly from 0 during training (the method sets :attr:`rate`).
Where every candidate of a key would be dropped we keep one drawn uniformly, so a node always
has an input (the paper's model always keeps the node's input path; our cell edges have none
to fall back on).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from nasforge.errors import ConfigError
from nasforge.nn.choice import Path
from nasforge.policies.base import Policy


def _check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0 <= rate < 1:
        raise ConfigError(f"path dropout rate must be in [0, 1), got {rate!r}")
    return float(rate)


class PathDropoutPolicy(Policy):
    """``forward()`` gives each key a 0/1 mask over its candidates (drawn from the global torch RNG).

    Args:
        choices: the supernet's ``choices()``.
        rate: probability that all candidates of a key would be dropped (0 = all kept).
        exclude: candidate names never run (e.g. ``none``, which only adds zero).
    """

    name = "path_dropout"

    def __init__(self, choices: Mapping[str, Sequence[str]], *, rate: float = 0.0, exclude: Sequence[str] = ()) -> None:
        super().__init__(choices)
        self._rate = _check_rate(rate)
        self.exclude = tuple(exclude)
        self._allowed = {
            k: torch.tensor([0.0 if op in self.exclude else 1.0 for op in v]) for k, v in self.choices.items()
        }
        empty = [k for k, m in self._allowed.items() if not bool(m.any())]
        if empty:
            raise ConfigError(f"path dropout: every candidate of {empty[:5]} is excluded ({', '.join(self.exclude)})")

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._rate = _check_rate(value)

    def forward(self) -> Path:
        path: dict[str, torch.Tensor] = {}
        for key, allowed in self._allowed.items():
            k = int(allowed.sum())
            drop = self._rate ** (1.0 / k) if self._rate > 0 else 0.0
            mask = (torch.rand(len(allowed)) >= drop).float() * allowed
            if not bool(mask.any()):
                candidates = allowed.nonzero().flatten()
                mask[candidates[int(torch.randint(len(candidates), ()))]] = 1.0
            path[key] = mask
        return path

    def strengths(self) -> dict[str, torch.Tensor]:
        return {k: m.clone() for k, m in self._allowed.items()}

    def get_extra_state(self) -> dict[str, float]:
        return {"rate": self._rate}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.rate = float(state["rate"])
