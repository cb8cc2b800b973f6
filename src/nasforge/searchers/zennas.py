"""Zen-NAS evolutionary search (Algorithm 1 of the paper).

Lin, Wang, Sun, Chen, Sun, Qian, Li & Jin, "Zen-NAS: A Zero-Shot NAS for High-Performance
Image Recognition", ICCV 2021; reference ``idstcv/ZenNAS`` ``evolution_search.py``.

Each step picks a parent *uniformly at random* from the population (no tournament), mutates it
(``space.mutate``; for the ``zennas`` space that is the paper's block mutation), and adds the
child with its fitness (the Zen-score, computed by the evaluator the search loop is given).
Whenever the population holds more than ``population_size`` members, the one with the
*lowest* fitness is removed: selection pressure comes from removing the worst, not from
choosing parents (the opposite of regularized evolution, which removes the oldest). Ties go to
the earliest-told member (the reference's ``list.index(min(...))``). A NaN fitness counts as
``-inf``, so a failed score is removed first (the reference records ``-9999``).

Budgets (parameters, FLOPs) are checked by the search loop before evaluation; an infeasible
child is re-asked and never told, as in the reference, which ``continue``s past it.

Departures from the reference:

- Initial population: like the reference, the first ``init_size`` members are mutations of a
  small starting structure: ``initial_structure`` if given, else the space's
  :meth:`~nasforge.spaces.base.SearchSpace.starting_point` (for ``zennas``, the reference's
  ``init_plainnet`` of the preset, :data:`nasforge.spaces.zennas.INITIAL_STRUCTURES`, or
  :data:`~nasforge.spaces.zennas.INITIAL_STRUCTURE_IDW` for MBConv-only ImageNet spaces). Spaces
  without one, or ``initial_structure="uniform"``, start from uniform samples instead. (Under a
  budget that matters: a uniform sample of the ``zennas`` CIFAR space has around 150M
  parameters and takes about 2 s per forward pass on this CPU, so nearly every sample is
  infeasible and a latency check alone costs seconds each.)
- The reference mutates two blocks per child after the initial phase (``num_replaces=2``); a
  child here is one ``space.mutate`` of its parent (the paper's Algorithm 1 mutates once).
- The reference's ``max_layers`` limit has no counterpart; bound depth with the space's
  ``depths`` and ``extra_slots``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from nasforge.arch import Arch
from nasforge.errors import BudgetError, check_int
from nasforge.registry import register
from nasforge.searchers.base import Searcher
from nasforge.spaces.base import SearchSpace


@register("method", "zennas")
class ZenNASEvolution(Searcher):
    """Zen-NAS evolution: uniform parent, one mutation, the worst member is removed.

    Args:
        space: the search space (any; the paper's is ``zennas``).
        seed: seed of ``self.rng``, the only source of randomness.
        population_size: P, the most members kept (paper: 512).
        init_size: members gathered before evolving (from ``initial_structure`` or uniform
            samples); at most ``population_size``. Default ``min(11, population_size)``: the
            reference mutates the initial structure while the population has at most 10 members.
        initial_structure: text form (``space.parse``) of the structure the initial members are
            mutated from; None: the space's ``starting_point()`` (uniform samples if it has
            none); ``"uniform"``: uniform samples.

    Raises:
        BudgetError: a size that is not a positive integer or ``init_size > population_size``.
        ArchError: an ``initial_structure`` that is not in the space.
    """

    name: ClassVar[str] = "zennas"
    paper: ClassVar[str] = (
        "Lin, Wang, Sun, Chen, Sun, Qian, Li & Jin. Zen-NAS: A Zero-Shot NAS for High-Performance "
        "Image Recognition. ICCV 2021"
    )

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, population_size: int = 512, init_size: int | None = None,
        initial_structure: str | None = None,
    ) -> None:
        super().__init__(space, seed=seed)
        if init_size is None:
            init_size = min(11, population_size) if isinstance(population_size, int) else 11
        for what, v in (("population_size", population_size), ("init_size", init_size)):
            check_int(what, v)
        if init_size > population_size:
            raise BudgetError(f"init_size must be <= population_size={population_size}, got {init_size}")
        self.population_size = population_size
        self.init_size = min(init_size, population_size)
        if initial_structure is None:
            self.initial: Arch | None = space.starting_point()
        elif initial_structure == "uniform":
            self.initial = None
        else:
            self.initial = space.parse(initial_structure)
        self.population: list[tuple[Arch, float]] = []

    @classmethod
    def options(cls) -> dict[str, Any]:
        # P = 512 as in the paper and the reference scripts; init_size as the reference's "<= 10" rule.
        return {"population_size": 512, "init_size": None, "initial_structure": None}

    def ask(self) -> Arch:
        if len(self.population) < self.init_size:
            if self.initial is None:
                return self.space.sample(self.rng)
            return self.space.mutate(self.initial, self.rng)
        parent = self.rng.choice(self.population)[0]  # uniform: no tournament, fitness plays no part
        return self.space.mutate(parent, self.rng)

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        fitness = float(fitness)
        self.population.append((arch, -math.inf if math.isnan(fitness) else fitness))
        while len(self.population) > self.population_size:
            worst = min(range(len(self.population)), key=lambda i: self.population[i][1])  # first of ties
            del self.population[worst]
