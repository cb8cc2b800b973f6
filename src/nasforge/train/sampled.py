"""Pieces of the sample-and-rank one-shot methods (One-Shot, RSPS): sparse steps, ranking, results.

These methods train the shared weights without architecture parameters and then pick an
architecture by measuring sampled candidates with the shared weights:

* :func:`active_weight_step` — one SGD step in which only the parameters the forward pass
  reached get a gradient. The others keep ``grad = None``, so ``torch.optim.SGD`` skips them
  entirely: no weight decay and no momentum for dropped / unsampled candidates. Bender et al.
  (ICML 2018) apply L2 "only to the parts of the model used by the current architecture"; the
  RSPS reference (``liamcli/randomNAS_release`` with the ``liamcli/darts`` fork) gets the same
  behaviour by skipping zero-weight ops and setting every ``p.grad = None`` before backward;
* :func:`rank_architectures` — distinct sampled architectures ranked by their single-path
  accuracy (:func:`~nasforge.train.oneshot.path_accuracy`) on fixed batches;
* :func:`one_hot_strengths` / :func:`selected_result` — the result of a selected architecture.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nasforge.arch import Arch
from nasforge.nn.choice import Path
from nasforge.spaces.base import SearchSpace
from nasforge.train.bilevel import Batch, LossFn, check_finite
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotResult,
    SearchRun,
    json_safe,
    path_accuracy,
    strengths_lists,
)


def active_weight_step(
    supernet: nn.Module, pieces: Sequence[tuple[Path, Batch]], optimizer: torch.optim.Optimizer, *,
    loss_fn: LossFn, grad_clip: float | None, where: str,
) -> tuple[float, Tensor]:
    """One step on the mean loss over ``pieces`` (``(path, batch)`` pairs, e.g. ghost batches).

    Each piece runs as its own forward pass with its own path; the loss is the example-weighted
    mean over all pieces (``loss_fn`` must average over its batch). Parameters that no piece
    reached get ``grad = None`` and are skipped by the optimizer (see the module docstring);
    ``grad_clip`` bounds the norm of the gradients that exist. Returns ``(loss, logits)`` with
    the logits of all pieces concatenated in order.
    """
    if not pieces:
        raise ValueError("active_weight_step needs at least one (path, batch) piece")
    total = sum(int(batch[1].shape[0]) for _, batch in pieces)
    parts, logits = [], []
    for path, (x, y) in pieces:
        out = supernet(x, path)
        parts.append(loss_fn(out, y) * (y.shape[0] / total))  # example-weighted: a short last ghost batch counts less
        logits.append(out.detach())
    loss = torch.stack(parts).sum()
    value = check_finite(loss, where)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = g  # None where the loss does not depend on p: SGD then skips p (no decay, no momentum)
    if grad_clip is not None:
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
    optimizer.step()
    return value, torch.cat(logits)


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
