"""Path dropout: every candidate runs unless dropped; the kept ones are summed.

Bender, Kindermans, Zoph, Vasudevan & Le, "Understanding and Simplifying One-Shot Architecture
Search", ICML 2018 (sec. 3, "path dropout"), as described by secondary accounts (the paper text
could not be read here, see ``nasforge.methods.one_shot``): the ``k`` paths (candidate
operations) feeding a node are each dropped with probability ``rate ** (1 / k)``, so all of them
are dropped together with probability ``rate``. Where every path into a node would be dropped one
is kept, drawn uniformly, so a node always has an input. The method raises the rate linearly
during training by setting :attr:`PathDropoutPolicy.rate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from nasforge.errors import ConfigError
from nasforge.nn.choice import Path
from nasforge.policies.base import Policy


def check_rate(rate: object, name: str = "path dropout rate") -> float:
    """``float(rate)`` or a :class:`ConfigError` naming ``name`` unless ``rate`` is in [0, 1)."""
    ok = isinstance(rate, (int, float)) and not isinstance(rate, bool) and math.isfinite(rate) and 0 <= rate < 1
    if not ok:
        raise ConfigError(f"{name} must be in [0, 1), got {rate!r}")
    return float(rate)  # type: ignore[arg-type]


class PathDropoutPolicy(Policy):
    """Path dropout with the rate defined per node: 0/1 masks over each key's candidates.

    Args:
        choices: the supernet's ``choices()``.
        groups: keys grouped by the node their edges enter (``supernet.edge_groups()``); every
            key in exactly one group. ``None``: every key is a node of its own.
        rate: probability ``r`` that all paths into a node are dropped; each of its ``k`` paths
            is dropped with ``r ** (1 / k)``.
        exclude: candidates never run (``none``: it only adds zeros).

    Masks are drawn from the global torch RNG (checkpointed by the search run). There are no
    parameters; ``rate`` is set by the method every step.
    """

    name = "path_dropout"

    def __init__(self, choices: Mapping[str, Sequence[str]], groups: Sequence[Sequence[str]] | None = None, *,
                 rate: float = 0.0, exclude: Sequence[str] = ("none",)) -> None:
        super().__init__(choices)
        if groups is None:
            groups = [[k] for k in self.choices]
        flat = [k for g in groups for k in g]
        if sorted(flat) != sorted(self.choices) or len(flat) != len(set(flat)):
            raise ConfigError(f"node groups must hold every choice key exactly once; got {[list(g) for g in groups]}")
        self.groups = [tuple(g) for g in groups]
        self.exclude = tuple(exclude)
        self._allowed = {
            k: torch.tensor([0.0 if op in self.exclude else 1.0 for op in v]) for k, v in self.choices.items()
        }
        for group in self.groups:
            if not any(bool(self._allowed[k].any()) for k in group):
                raise ConfigError(f"node {list(group)}: every candidate is excluded ({', '.join(self.exclude)})")
        self._rate = check_rate(rate)

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._rate = check_rate(value)

    def paths_into(self, group: Sequence[str]) -> int:
        """``k``: the number of candidates (paths) that may run into the node of ``group``."""
        return int(sum(float(self._allowed[k].sum()) for k in group))

    def draw(self, *, keep_one: bool = True) -> dict[str, torch.Tensor]:
        """One mask per key; ``keep_one=False`` skips the keep-one rule (for statistics)."""
        path: dict[str, torch.Tensor] = {}
        for group in self.groups:
            drop = self._rate ** (1.0 / self.paths_into(group)) if self._rate > 0 else 0.0
            masks = {k: (torch.rand(len(self._allowed[k])) >= drop).float() * self._allowed[k] for k in group}
            if keep_one and not any(bool(m.any()) for m in masks.values()):
                slots = [(k, int(i)) for k in group for i in self._allowed[k].nonzero().flatten()]
                k, i = slots[int(torch.randint(len(slots), ()))]
                masks[k][i] = 1.0
            path.update(masks)
        return path

    def forward(self) -> Path:
        return self.draw()

    def strengths(self) -> dict[str, torch.Tensor]:
        """Every allowed candidate equally (One-Shot selects by ranking samples instead)."""
        return {k: m.clone() for k, m in self._allowed.items()}

    def get_extra_state(self) -> dict[str, float]:
        return {"rate": self._rate}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.rate = float(state["rate"])
