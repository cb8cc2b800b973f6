"""The policy contract and the architecture logits most policies share."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.nn.choice import Path


def check_choices(policy: str, choices: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """Validate a supernet's ``choices()`` for ``policy``: at least one key, two options each."""
    out = {str(k): tuple(v) for k, v in choices.items()}
    if not out:
        raise ConfigError(f"policy {policy!r} needs a supernet with choice keys; this one has none")
    single = [k for k, v in out.items() if len(v) < 1]
    if single:
        raise ConfigError(f"policy {policy!r}: choice keys {single[:5]} have no candidates")
    return out


class Policy(nn.Module):
    """Base of every policy. ``forward()`` returns the path of the next step.

    Subclasses set ``name`` and implement :meth:`forward` and :meth:`strengths`.
    """

    name = "policy"

    def __init__(self, choices: Mapping[str, Sequence[str]]) -> None:
        super().__init__()
        self.choices: dict[str, tuple[str, ...]] = check_choices(self.name, choices)

    def forward(self) -> Path:  # noqa: D102 (documented on the class)
        raise NotImplementedError

    def strengths(self) -> dict[str, torch.Tensor]:
        """Per choice key, one detached number per candidate: what a space's ``derive`` reads."""
        raise NotImplementedError


class SeededUniformPolicy(Policy):
    """A policy that prefers no candidate and draws its paths from its own seeded ``random.Random``,
    whose state is part of ``state_dict()`` (so a resumed search draws the same paths). What SPOS'
    uniform sampling and FairNAS' strict fairness share; they differ in what they draw."""

    def __init__(self, choices: Mapping[str, Sequence[str]], *, seed: int = 0) -> None:
        super().__init__(choices)
        self.rng = random.Random(seed)

    def strengths(self) -> dict[str, torch.Tensor]:
        """Uniform: no candidate is preferred (these methods derive by ranking samples instead)."""
        return {k: torch.full((len(v),), 1.0 / len(v)) for k, v in self.choices.items()}

    def get_extra_state(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"version": version, "state": list(internal), "gauss": gauss}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.rng.setstate((int(state["version"]), tuple(int(v) for v in state["state"]), state["gauss"]))


class ArchLogits(nn.Module):
    """One logit vector per choice key (DARTS ``alphas``), initialised ``scale * N(0, 1)``.

    Stored as an ``nn.ParameterDict`` so keys may have different candidate counts (P-DARTS
    drops candidates per edge). Key names are supernet choice keys (no dots).
    """

    def __init__(self, choices: Mapping[str, Sequence[str]], *, init_scale: float = 1e-3) -> None:
        super().__init__()
        if not init_scale >= 0:
            raise ConfigError(f"init_scale must be >= 0, got {init_scale!r}")
        self.alphas = nn.ParameterDict(
            {k: nn.Parameter(init_scale * torch.randn(len(v))) for k, v in choices.items()}
        )

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.alphas[key]

    def keys(self) -> list[str]:
        return list(self.alphas.keys())
