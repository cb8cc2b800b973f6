"""Regularized (aging) evolution.

Real, Aggarwal, Huang & Le, "Regularized Evolution for Image Classifier Architecture Search",
AAAI 2019, Algorithm 1 (reference: the paper's pseudo-code and the NAS-Bench-101 colab
``regularized_evolution``):

1. Fill a population of ``population_size`` (P) uniformly sampled architectures.
2. Repeat: draw ``sample_size`` (S) members uniformly *with replacement*; the fittest of the
   sample is the parent; its child is ``space.mutate(parent)`` (one decision changed to a
   different option); the child joins the population and the *oldest* member is removed
   (aging, not the worst: that is the "regularization").

Fitness ties inside a tournament go to the member drawn first (the reference code's ``max``).

``aging=False`` is the paper's ablation, *non-aging evolution* (Section 4 / Figure 3: the same
tournament, but the *worst* member is removed); it is also registered as ``nonaging_evolution``.
A failed or infeasible trial (fitness ``-inf``) joins the population like any other member: it
is never a tournament winner while a finite member is drawn with it, and non-aging evolution
removes it first.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any, ClassVar

from nasforge.arch import Arch
from nasforge.errors import BudgetError
from nasforge.registry import register
from nasforge.searchers.base import Searcher
from nasforge.spaces.base import SearchSpace


@register("method", "evolution")
class RegularizedEvolution(Searcher):
    name: ClassVar[str] = "evolution"
    paper: ClassVar[str] = (
        "Real, Aggarwal, Huang & Le, Regularized Evolution for Image Classifier Architecture Search, AAAI 2019"
    )

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, population_size: int = 10, sample_size: int = 3, aging: bool = True,
    ) -> None:
        super().__init__(space, seed=seed)
        if population_size < 1:
            raise BudgetError(f"population_size must be >= 1, got {population_size}")
        if not 1 <= sample_size <= population_size:
            raise BudgetError(f"sample_size must be in [1, population_size={population_size}], got {sample_size}")
        self.population_size = population_size
        self.sample_size = sample_size
        self.aging = bool(aging)
        self.population: collections.deque[tuple[Arch, float]] = collections.deque()
        self._filled = False  # True once the population first reached P members

    @classmethod
    def options(cls) -> dict[str, Any]:
        # P and S of the NAS-Bench-201 paper's REA baseline (P=10, S=3); the AAAI paper used P=100, S=25.
        return {"population_size": 10, "sample_size": 3, "aging": True}

    def ask(self) -> Arch:
        if not self._filled:
            return self.space.sample(self.rng)
        tournament = [self.rng.choice(self.population) for _ in range(self.sample_size)]
        parent = max(tournament, key=lambda member: member[1])[0]
        return self.space.mutate(parent, self.rng)

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        self.population.append((arch, fitness))
        self._filled = self._filled or len(self.population) >= self.population_size
        if len(self.population) > self.population_size:
            if self.aging:
                self.population.popleft()  # aging: the oldest dies, whatever its fitness
            else:  # the ablation: the worst dies (the oldest of equally bad members)
                worst = min(range(len(self.population)), key=lambda i: self.population[i][1])
                del self.population[worst]


@register("method", "nonaging_evolution")
class NonAgingEvolution(RegularizedEvolution):
    """Regularized evolution's ablation in the same paper: the worst member dies, not the oldest."""

    name: ClassVar[str] = "nonaging_evolution"

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, population_size: int = 10, sample_size: int = 3, aging: bool = False,
    ) -> None:
        super().__init__(space, seed=seed, population_size=population_size, sample_size=sample_size, aging=aging)

    @classmethod
    def options(cls) -> dict[str, Any]:
        return {"population_size": 10, "sample_size": 3, "aging": False}
