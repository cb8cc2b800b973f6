"""The ONE place where candidate operations are mixed.

A :class:`Choice` holds the candidates of one decision (or of one supernet edge). What runs
is given explicitly on every call by a *selection*:

* an option name (``str``): only that candidate runs (single path: SPOS, One-Shot, RSPS);
* a 1-D weight tensor over the candidates: their weighted sum (DARTS softmax, SNAS / GDAS
  Gumbel samples, One-Shot path-dropout masks, DSO-NAS scaling factors). Candidates whose
  weight is exactly zero, and ``none`` (:class:`~nasforge.nn.ops.Zero`, which adds exactly
  zero), are not executed, so a one-hot (or straight-through one-hot) vector
  costs one candidate's forward and backward;
* a :class:`Mix`: weights as above and a scalar ``scale`` multiplying the whole edge output
  (PC-DARTS edge normalisation);
* :class:`Gates`: gates over a listed subset of candidates, each of which runs even at gate 0
  (ProxylessNAS binary gates: the gate gradients of two sampled paths).

A Choice built with ``partial=K`` (PC-DARTS, Xu et al. 2020) runs its candidates on the first
``C / K`` channels only; the other channels bypass them (max-pooled on a stride-2 edge) and the
two parts are concatenated and channel-shuffled with ``K`` groups.

Cells add up their edges with :func:`sum_edges`, which also leaves out edges whose selection is
``none`` (by name, or as one-hot weights): they would only add zeros, and adding those costs
full-size temporaries in the forward and backward passes (the stand-alone networks drop those
edges too).

A :class:`Supernet` is an ``nn.Module`` whose ``forward(x, path)`` takes a mapping from choice
key to selection. There is no global or context state: the path is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.errors import ArchError, ConfigError
from nasforge.nn.ops import Zero


@dataclass(frozen=True)
class Mix:
    """A weighted mixture whose output is also multiplied by ``scale`` (a scalar tensor)."""

    weights: torch.Tensor
    scale: torch.Tensor


@dataclass(frozen=True)
class StraightThrough:
    """A one-hot straight-through weight vector run as the GDAS reference runs it.

    Only the candidate with a non-zero weight runs; every other candidate's (zero-valued) weight
    is *added* to the output, so it receives the summed upstream gradient (xautodl
    ``search_model_gdas.py``: ``sum(state * w if i == argmax else w ...)``). The output value
    is the same as for the plain weight tensor; only the gradients of the weights differ.
    """

    weights: torch.Tensor


@dataclass(frozen=True)
class Gates:
    """Gates over a listed subset of candidates: ``sum_{i in run} weights[i] * op_i(x)``.

    ProxylessNAS' binary gates (Cai et al., ICLR 2019; reference ``mit-han-lab/proxylessnas``
    ``search/modules/mix_op.py``, ``MixedEdge.forward`` in mode ``two``): every candidate listed
    in ``run`` executes, even at gate 0, so that its gate receives the gradient
    ``dL/dg_i = <upstream, op_i(x)>``; unlisted candidates never run. The output of a candidate
    whose gate is exactly 0 is detached (it adds 0 and nothing upstream of it can get a gradient
    through a zero gate), so its graph is freed at once, as the reference's ``oi.detach()``.
    """

    weights: torch.Tensor
    run: tuple[int, ...]


Selection: TypeAlias = "str | torch.Tensor | Mix | StraightThrough | Gates"
Path: TypeAlias = "Mapping[str, Selection]"


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: ``[N, g*c, H, W]`` -> interleave the ``g`` groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Choice(nn.Module):
    """Candidates of one decision, run according to an explicit selection.

    Args:
        candidates: option name -> module; with ``partial=K`` each maps ``C / K`` channels.
        partial: PC-DARTS channel proportion ``K`` (1: every channel goes through the ops).
        stride: the candidates' stride (only used by ``partial`` to pool the bypassed channels).
    """

    def __init__(self, candidates: Mapping[str, nn.Module], *, partial: int = 1, stride: int = 1) -> None:
        super().__init__()
        if not candidates:
            raise ValueError("a Choice needs at least one candidate")
        if isinstance(partial, bool) or not isinstance(partial, int) or partial < 1:
            raise ConfigError(f"partial (PC-DARTS K) must be an int >= 1, got {partial!r}")
        self.options: tuple[str, ...] = tuple(candidates)
        self.candidates = nn.ModuleDict(dict(candidates))
        self.partial, self.stride = partial, stride
        # ``none`` adds exactly zero to a mixture (and gives its weight a zero gradient): skip it
        self._adds_nothing = tuple(isinstance(m, Zero) for m in candidates.values())

    def forward(self, x: torch.Tensor, selection: Selection) -> torch.Tensor:
        if isinstance(selection, Mix):
            return self.forward(x, selection.weights) * selection.scale
        if isinstance(selection, Gates):
            return self._gated(x, selection)
        if isinstance(selection, StraightThrough):
            weights = selection.weights
            out = self.forward(x, weights)
            inactive = weights.detach() == 0
            if bool(inactive.any()):
                out = out + weights[inactive].sum()  # value 0; gradient 1 x upstream for each unselected weight
            return out
        if self.partial == 1:
            return self._run(x, selection)
        c = x.shape[1]
        if c % self.partial:
            raise ConfigError(f"partial channels K={self.partial} does not divide the {c} input channels")
        head, tail = x[:, : c // self.partial], x[:, c // self.partial :]
        if self.stride > 1:
            tail = F.max_pool2d(tail, self.stride, self.stride)
        return channel_shuffle(torch.cat([self._run(head, selection), tail], dim=1), self.partial)

    def adds_nothing(self, selection: Selection) -> bool:
        """True when the edge's output is exactly zero and carries no gradient: ``selection`` is
        the name of a ``none`` candidate, or a plain weight tensor whose non-zero weights are all on
        ``none`` (a one-hot Gumbel sample of ``none``). Never with ``partial`` (the bypassed
        channels still pass) nor for :class:`Mix` / :class:`StraightThrough` selections (their
        weights get gradients even when no candidate runs)."""
        if self.partial != 1:
            return False
        if isinstance(selection, str):
            return selection in self.candidates and self._adds_nothing[self.options.index(selection)]
        if isinstance(selection, torch.Tensor) and selection.dim() == 1 and selection.numel() == len(self.options):
            active = (selection.detach() != 0).tolist()
            return all(nothing for on, nothing in zip(active, self._adds_nothing) if on)
        return False

    def _gated(self, x: torch.Tensor, gates: Gates) -> torch.Tensor:
        if self.partial != 1:
            raise ConfigError("Gates selections do not support partial channels (PC-DARTS)")
        weights = gates.weights
        if weights.dim() != 1 or weights.numel() != len(self.options):
            raise ArchError(f"gates must be a 1-D tensor of {len(self.options)} entries ({', '.join(self.options)}), "
                            f"got shape {tuple(weights.shape)}")
        if not gates.run or any(not 0 <= i < len(self.options) for i in gates.run):
            raise ArchError(f"gates.run must list candidate indices in 0..{len(self.options) - 1}, got {gates.run}")
        closed = (weights.detach() == 0).tolist()
        out: torch.Tensor | None = None
        for i in gates.run:
            y = self.candidates[self.options[i]](x)
            y = weights[i] * (y.detach() if closed[i] else y)
            out = y if out is None else out + y
        assert out is not None  # gates.run is not empty
        return out

    def _run(self, x: torch.Tensor, selection: str | torch.Tensor) -> torch.Tensor:
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
            if not on or self._adds_nothing[i]:
                continue
            y = weights[i] * self.candidates[name](x)
            out = y if out is None else out + y
        if out is None:  # only zero weights or ``none``: the mixture is zero (shape of a candidate)
            first = self._adds_nothing.index(True) if True in self._adds_nothing else 0
            with torch.no_grad():
                ref = self.candidates[self.options[first]](x)
            return torch.zeros_like(ref)
        return out


def sum_edges(edges: Iterable[tuple[nn.Module, torch.Tensor, Selection]]) -> torch.Tensor:
    """The sum of ``choice(x, selection)`` over the edges entering a node.

    Edges whose selection :meth:`Choice.adds_nothing` are left out; if that leaves none, the
    first edge runs anyway, so the node is a zero tensor of the right shape (what the ``none``
    op returns). Values and gradients are the same as summing every edge.
    """
    edges = list(edges)
    out: torch.Tensor | None = None
    for choice, x, selection in edges:
        if isinstance(choice, Choice) and choice.adds_nothing(selection):
            continue
        y = choice(x, selection)
        out = y if out is None else out + y
    if out is None:
        choice, x, selection = edges[0]
        first: torch.Tensor = choice(x, selection)
        return first
    return out


class Supernet(nn.Module):
    """Base of every space's supernet: all candidates with shared weights.

    Subclasses build their layers with :class:`Choice` modules registered through
    :meth:`add_choice` and implement ``forward(x, path)`` and :meth:`path_for`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._choice_keys: dict[str, tuple[str, ...]] = {}

    def add_choice(self, key: str, candidates: Mapping[str, nn.Module], **kwargs: int) -> Choice:
        if key in self._choice_keys:
            raise ValueError(f"choice key {key!r} added twice")
        choice = Choice(candidates, **kwargs)
        self._choice_keys[key] = choice.options
        return choice

    def choices(self) -> dict[str, tuple[str, ...]]:
        """Ordered choice key -> candidate names: the keys a ``path`` must provide."""
        return dict(self._choice_keys)

    def path_for(self, arch: object) -> dict[str, str]:
        """The single path that runs the stand-alone network of ``arch`` inside the supernet."""
        raise NotImplementedError

    def edge_groups(self) -> list[list[str]]:
        """Choice keys grouped by the node their edges enter (PC-DARTS edge normalisation).

        The default puts every key in a group of its own (no node structure).
        """
        return [[k] for k in self._choice_keys]

    def check_path(self, path: Path) -> None:
        missing = [k for k in self._choice_keys if k not in path]
        if missing:
            raise ArchError(f"path lacks choice keys {missing[:5]} (needs {len(self._choice_keys)} keys)")
