"""The ONE place where candidate operations are mixed.

A :class:`Choice` holds the candidates of one decision (or of one supernet edge). What runs
is given explicitly on every call by a *selection*:

* an option name (``str``): only that candidate runs (single path: SPOS, One-Shot, RSPS);
* a 1-D weight tensor over the candidates: their weighted sum (DARTS softmax, SNAS / GDAS
  Gumbel samples). Candidates whose weight is exactly zero are not executed, so a one-hot
  (or straight-through one-hot) vector costs one candidate's forward and backward.

A :class:`Supernet` is an ``nn.Module`` whose ``forward(x, path)`` takes a mapping from choice
key to selection. There is no global or context state: the path is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import torch
from torch import nn

from nasforge.errors import ArchError

Selection: TypeAlias = "str | torch.Tensor"
Path: TypeAlias = "Mapping[str, Selection]"


class Choice(nn.Module):
    """Candidates of one decision, run according to an explicit selection."""

    def __init__(self, candidates: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not candidates:
            raise ValueError("a Choice needs at least one candidate")
        self.options: tuple[str, ...] = tuple(candidates)
        self.candidates = nn.ModuleDict(dict(candidates))

    def forward(self, x: torch.Tensor, selection: Selection) -> torch.Tensor:
        if isinstance(selection, str):
            if selection not in self.candidates:
                raise ArchError(f"unknown option {selection!r}; valid: {', '.join(self.options)}")
            return self.candidates[selection](x)
        weights = selection
        if weights.dim() != 1 or weights.numel() != len(self.options):
            raise ArchError(
                f"selection weights must be a 1-D tensor of {len(self.options)} entries "
                f"({', '.join(self.options)}), got shape {tuple(weights.shape)}"
            )
        active = (weights.detach() != 0).tolist()
        out: torch.Tensor | None = None
        for i, (name, on) in enumerate(zip(self.options, active)):
            if not on:
                continue
            y = weights[i] * self.candidates[name](x)
            out = y if out is None else out + y
        if out is None:  # every weight zero: the mixture is zero (shape of the first candidate)
            with torch.no_grad():
                ref = self.candidates[self.options[0]](x)
            return torch.zeros_like(ref)
        return out


class Supernet(nn.Module):
    """Base of every space's supernet: all candidates with shared weights.

    Subclasses build their layers with :class:`Choice` modules registered through
    :meth:`add_choice` and implement ``forward(x, path)`` and :meth:`path_for`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._choice_keys: dict[str, tuple[str, ...]] = {}

    def add_choice(self, key: str, candidates: Mapping[str, nn.Module]) -> Choice:
        if key in self._choice_keys:
            raise ValueError(f"choice key {key!r} added twice")
        choice = Choice(candidates)
        self._choice_keys[key] = choice.options
        return choice

    def choices(self) -> dict[str, tuple[str, ...]]:
        """Ordered choice key -> candidate names: the keys a ``path`` must provide."""
        return dict(self._choice_keys)

    def path_for(self, arch: object) -> dict[str, str]:
        """The single path that runs the stand-alone network of ``arch`` inside the supernet."""
        raise NotImplementedError

    def check_path(self, path: Path) -> None:
        missing = [k for k in self._choice_keys if k not in path]
        if missing:
            raise ArchError(f"path lacks choice keys {missing[:5]} (needs {len(self._choice_keys)} keys)")
