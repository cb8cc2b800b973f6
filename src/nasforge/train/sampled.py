"""Pieces of the sample-and-rank one-shot methods (One-Shot, RSPS): sparse steps, ranking, results.

These methods train the shared weights without architecture parameters and then pick an
architecture by measuring sampled candidates with the shared weights:

Their weight steps are :func:`nasforge.train.bilevel.weight_step_pieces`: only the parameters
the forward passes reached get a gradient, the others keep ``grad = None`` and SGD skips them
entirely (no weight decay, no momentum for dropped / unsampled candidates). Bender et al. (ICML
2018) apply L2 "only to the parts of the model used by the current architecture"; the RSPS
reference (``liamcli/randomNAS_release`` with the ``liamcli/darts`` fork) gets the same
behaviour by skipping zero-weight ops and setting every ``p.grad = None`` before backward.

* :func:`rank_architectures` — distinct sampled architectures ranked by their single-path
  accuracy (:func:`~nasforge.train.oneshot.path_accuracy`) on fixed batches;
* :func:`one_hot_strengths` / :func:`selected_result` — the result of a selected architecture.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from nasforge.arch import Arch
from nasforge.spaces.base import SearchSpace
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotResult,
    SearchRun,
    json_safe,
    path_accuracy,
    strengths_lists,
)


def sample_architectures(space: SearchSpace, rng: random.Random, n: int) -> list[Arch]:
    """``n`` uniform draws of ``space`` (with replacement, as the references sample)."""
    return [space.sample(rng) for _ in range(n)]


@torch.no_grad()
def rank_architectures(
    supernet: Any, archs: Sequence[Arch], batches: list[tuple[Tensor, Tensor]],
) -> list[tuple[Arch, float]]:
    """Distinct ``archs`` with their single-path accuracy (%) on ``batches``, best first.

    Duplicates are measured once (the measurement is deterministic). Ties keep the order of
    first appearance in ``archs``. The supernet stays in its current mode.
    """
    seen: dict[Arch, float] = {}
    for arch in archs:
        if arch not in seen:
            seen[arch] = path_accuracy(supernet, supernet.path_for(arch), batches)
    return sorted(seen.items(), key=lambda item: -item[1])  # stable: ties keep sampling order


def one_hot_strengths(choices: Mapping[str, Sequence[str]], path: Mapping[str, Any]) -> dict[str, Tensor]:
    """Per key, 1.0 on the candidate ``path`` selects and 0.0 elsewhere.

    Both spaces' ``derive`` read the architecture back: nb201 takes the argmax per edge
    (``none`` included); darts keeps per node the two inputs with the strongest non-``none``
    op, and the unused edges of a genotype (``none`` in its path) have no non-``none`` weight.
    """
    out: dict[str, Tensor] = {}
    for key, options in choices.items():
        vec = torch.zeros(len(options))
        vec[list(options).index(str(path[key]))] = 1.0
        out[key] = vec
    return out


def ranking_records(ranking: Sequence[tuple[Arch, float]], space: SearchSpace) -> list[dict[str, Any]]:
    """``[{"arch": text, "accuracy": %}, ...]`` in ranking order (for ``OneShotResult.info``)."""
    return [{"arch": space.format(arch), "accuracy": acc} for arch, acc in ranking]


def selected_result(
    ctx: OneShotContext, run: SearchRun, supernet: Any, arch: Arch, **info: Any,
) -> OneShotResult:
    """The :class:`OneShotResult` of a selected ``arch``: its one-hot path as the strengths."""
    strengths = one_hot_strengths(supernet.choices(), supernet.path_for(arch))
    return OneShotResult(
        arch=arch, strengths=strengths_lists(strengths), history=list(run.history), seconds=run.seconds(),
        info=json_safe(info),
    )
