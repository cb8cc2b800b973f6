"""Pieces shared by the batch-Bayesian-optimisation searchers (BANANAS, the ChamNet-style GP search).

Both propose ``num_init`` distinct uniform samples, then, whenever their queue is empty, fit a
model and queue the next ``k`` proposals; neither ever proposes an architecture twice.
:class:`BatchProposer` is that bookkeeping, :class:`EncodingCache` keeps the encodings a model
needs, and :func:`sample_unseen` draws a uniform architecture not proposed before.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import numpy as np

from nasforge.arch import Arch
from nasforge.errors import BudgetError
from nasforge.searchers._encodings import encode
from nasforge.spaces.base import SearchSpace

_SAMPLE_TRIES = 1000
_ENUMERATE_LIMIT = 200_000


def sample_unseen(space: SearchSpace, rng: random.Random, seen: set[Arch]) -> Arch:
    """A uniform sample never seen before: rejection sampling, then (for spaces of at most
    200,000 combinations) a uniform pick among the unseen valid ones; :class:`BudgetError` when
    every architecture has been seen."""
    for _ in range(_SAMPLE_TRIES):
        arch = space.sample(rng)
        if arch not in seen:
            return arch
    if space.size() <= _ENUMERATE_LIMIT:
        decisions = space.decisions()
        left = []
        for combo in itertools.product(*decisions.values()):
            arch = Arch(space.name, tuple(zip(decisions, combo)))
            if arch not in seen and space.is_valid(arch):
                left.append(arch)
        if left:
            return left[rng.randrange(len(left))]
        raise BudgetError(f"every architecture of {space.name} ({len(seen)}) has been proposed")
    raise BudgetError(f"no architecture of {space.name} that was not proposed before in {_SAMPLE_TRIES} samples")


class BatchProposer:
    """The first ``num_init`` asks are distinct uniform samples; after that each ask takes the next
    queued proposal, refilling the queue with ``next_batch()`` when it is empty. Every asked or
    told architecture is in :attr:`proposed` and is never proposed again."""

    def __init__(self, space: SearchSpace, rng: random.Random, num_init: int) -> None:
        self.space, self.rng, self.num_init = space, rng, num_init
        self.proposed: set[Arch] = set()  # every architecture asked (or told), never proposed again
        self.queue: list[Arch] = []  # this iteration's remaining proposals

    def ask(self, next_batch: Callable[[], list[Arch]]) -> Arch:
        self.queue = [a for a in self.queue if a not in self.proposed]  # told meanwhile by other means
        if not self.queue:
            if len(self.proposed) < self.num_init:
                self.queue = [sample_unseen(self.space, self.rng, self.proposed)]
            else:
                self.queue = next_batch()
        arch = self.queue.pop(0)
        self.proposed.add(arch)
        return arch

    def told(self, arch: Arch) -> None:
        self.proposed.add(arch)


class EncodingCache:
    """Encodings of architectures (``_encodings.encode``), computed once. :meth:`keep_only` drops
    all but the given ones (the told trials) at the start of an iteration, so the memory is the
    trials plus one iteration's candidates, not every candidate ever scored."""

    def __init__(self, space: SearchSpace, kind: str) -> None:
        self.space, self.kind = space, kind
        self._codes: dict[Arch, np.ndarray] = {}

    def __call__(self, arch: Arch) -> np.ndarray:
        code = self._codes.get(arch)
        if code is None:
            code = self._codes[arch] = encode(self.space, arch, self.kind)
        return code

    def keep_only(self, archs: set[Arch]) -> None:
        self._codes = {a: c for a, c in self._codes.items() if a in archs}
