"""NSGA-II: elitist multi-objective evolution by non-dominated rank and crowding distance.

Deb, Pratap, Agarwal & Meyarivan, "A Fast and Elitist Multiobjective Genetic Algorithm:
NSGA-II", IEEE Transactions on Evolutionary Computation 6(2), 2002; as used for architecture
search by NSGA-Net (Lu, Whalen, Boddeti, Dhebar, Deb, Goodman & Banzhaf, "NSGA-Net: Neural
Architecture Search using Multi-Objective Genetic Algorithm", GECCO 2019; reference
implementation: pymoo's ``NSGA2`` with ``RankAndCrowdingSurvival``, on which NSGA-Net is built).

Objectives are ``(metric, sign)`` pairs read from the ``metrics`` of each ``tell`` (+1 maximise,
-1 minimise; default validation accuracy up, parameters down). A failed trial (fitness ``-inf``
or NaN) has the worst value, ``-inf`` after orientation, in every objective: every other trial
dominates it. The ask/tell loop runs the paper's generations:

1. **Initial population**: the first ``population_size`` (P) proposals are uniform samples.
2. **Offspring**: each next proposal is a child of two parents, each the winner of a *binary
   tournament* between two distinct members drawn uniformly from the parent population, by
   Deb's crowded comparison: lower non-dominated rank wins, then larger crowding distance, then
   a fair coin. With probability ``crossover_prob`` the child takes each decision from either
   parent with probability 1/2 (*uniform crossover*; children breaking the space's structural
   rules are redrawn, up to 100 times, else the first parent is taken), otherwise it copies the
   first parent; then ``space.mutate`` changes one decision (the expected number of changes under
   the paper's per-variable mutation rate 1/n, and never a copy of a parent).
3. **Environmental selection**: once P offspring are told, parents and offspring (2P) are sorted
   into non-dominated fronts; whole fronts fill the next population while they fit, and the
   front that does not fit is cut by crowding distance (largest first, ties by age: parents
   before offspring, then order of tell). Each survivor keeps the rank and crowding distance
   computed in the merged population (Deb's crowded-comparison attributes for the tournaments).

Rank and crowding are :func:`nasforge.pareto.non_dominated_sort` and
:func:`nasforge.pareto.crowding_distance` (see :mod:`nasforge.pareto` for ties and infinities).
:meth:`NSGA2.front` gives the Pareto-optimal trials among all trials told so far.

Defaults: ``population_size = 20`` (NSGA-Net used 40; 20 gives six generations after the
initial population in the 150-query benchmark runs); ``crossover_prob = 0.9`` (the NSGA-II
paper's p_c).

Departures: as pymoo (``eliminate_duplicates=True``), a proposal that equals an architecture
already proposed is redrawn (up to 100 children, then up to 100 uniform samples; after that the
repeat is accepted), so the search does not spend queries on known points. Decisions are
categorical, so the paper's SBX crossover and polynomial mutation for real variables become
uniform crossover and ``space.mutate``. Trials told during an offspring generation all count as
offspring, including architectures the searcher did not propose (a warm start).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from nasforge.arch import Arch
from nasforge.errors import check_int, check_probability
from nasforge.pareto import (
    Objectives,
    check_objectives,
    crowding_distance,
    front_of_told,
    non_dominated_sort,
    objective_vector,
)
from nasforge.registry import register
from nasforge.searchers.base import Searcher
from nasforge.spaces.base import SearchSpace

_REDRAWS = 100


@dataclass
class Member:
    """One told trial: its architecture, oriented objective values (to maximise) and metrics."""

    arch: Arch
    values: tuple[float, ...]
    metrics: dict[str, float]
    failed: bool = False
    rank: int = 0  # non-dominated front in the population that selected it (0 = best)
    crowding: float = field(default=math.inf)


def environmental_selection(members: list[Member], size: int) -> list[Member]:
    """NSGA-II's survival: the best ``size`` of ``members`` by front, the cut front by crowding.

    Sets ``rank`` and ``crowding`` of each survivor (computed among all ``members``) and returns
    the survivors in their order in ``members``.
    """
    values = np.array([m.values for m in members], dtype=float).reshape(len(members), -1)
    chosen: list[int] = []
    for r, front in enumerate(non_dominated_sort(values)):
        cd = crowding_distance(values[front])
        for k, i in enumerate(front):
            members[i].rank, members[i].crowding = r, float(cd[k])
        if len(chosen) + len(front) <= size:
            chosen += front
        else:
            by_crowding = sorted(range(len(front)), key=lambda k: (-cd[k], front[k]))
            chosen += [front[k] for k in by_crowding[: size - len(chosen)]]
        if len(chosen) >= size:
            break
    return [members[i] for i in sorted(chosen)]


@register("method", "nsga2")
class NSGA2(Searcher):
    """NSGA-II over the objectives read from the told metrics.

    Args:
        space: the search space (any).
        seed: seed of ``self.rng``, the only source of randomness.
        objectives: ``((metric, sign), ...)``; sign +1 maximises, -1 minimises.
        population_size: P, parents kept and offspring per generation (>= 2).
        crossover_prob: probability that a child is a uniform crossover of its two parents.
    """

    name: ClassVar[str] = "nsga2"
    paper: ClassVar[str] = (
        "Deb, Pratap, Agarwal & Meyarivan, A Fast and Elitist Multiobjective Genetic Algorithm: NSGA-II, "
        "IEEE TEC 2002 (for NAS: Lu et al., NSGA-Net, GECCO 2019)"
    )
    multi_objective: ClassVar[bool] = True
    smoke_options: ClassVar[dict[str, Any]] = {"population_size": 4}

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        objectives: Objectives = (("val_acc", 1), ("params", -1)),
        population_size: int = 20,
        crossover_prob: float = 0.9,
    ) -> None:
        super().__init__(space, seed=seed)
        self.objectives = check_objectives(objectives)
        self.population_size = check_int("population_size", population_size, low=2)
        self.crossover_prob = check_probability("crossover_prob", crossover_prob)
        self.population: list[Member] = []  # parents (empty until the initial population is told)
        self.offspring: list[Member] = []  # told since the last environmental selection
        self.history: list[Member] = []  # every told trial, in order
        self.generation = 0  # environmental selections done (0: initial population not complete)
        self._proposed: set[Arch] = set()

    @classmethod
    def options(cls) -> dict[str, Any]:
        # P = 20 (NSGA-Net: 40; see the module docstring); p_c = 0.9 from the NSGA-II paper.
        return {"objectives": (("val_acc", 1), ("params", -1)), "population_size": 20, "crossover_prob": 0.9}

    def required_metrics(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.objectives)

    # ---- ask / tell ------------------------------------------------------------------------------
    def ask(self) -> Arch:
        if not self.population:
            arch = self._fresh(lambda: self.space.sample(self.rng))
        else:
            arch = self._fresh(self._child, fallback=lambda: self.space.sample(self.rng))
        self._proposed.add(arch)
        return arch

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        failed = not (fitness > -math.inf)  # -inf or NaN
        values = objective_vector(metrics, self.objectives, failed=failed)
        member = Member(arch, values, dict(metrics or {}), failed)
        self._proposed.add(arch)
        self.history.append(member)
        self.offspring.append(member)
        if len(self.offspring) >= self.population_size:
            self.population = environmental_selection(self.population + self.offspring, self.population_size)
            self.offspring = []
            self.generation += 1

    def front(self) -> list[tuple[Arch, dict[str, float]]]:
        """The Pareto-optimal trials among all told (failed ones excluded), each architecture once,
        in order of tell, as ``(arch, metrics)``."""
        told = [(m.arch, m.values, m.metrics) for m in self.history if not m.failed]
        return front_of_told(told, len(self.objectives))

    # ---- variation -------------------------------------------------------------------------------
    def _fresh(self, draw: Callable[[], Arch], fallback: Callable[[], Arch] | None = None) -> Arch:
        """A draw not proposed before (pymoo's duplicate elimination), else the last draw."""
        arch = draw()
        for source in (draw, fallback or draw):
            for _ in range(_REDRAWS):
                if arch not in self._proposed:
                    return arch
                arch = source()
        return arch

    def _tournament(self) -> Member:
        a, b = (self.population[i] for i in self.rng.sample(range(len(self.population)), 2))
        if a.rank != b.rank:
            return a if a.rank < b.rank else b
        if a.crowding != b.crowding:
            return a if a.crowding > b.crowding else b
        return a if self.rng.random() < 0.5 else b

    def _child(self) -> Arch:
        p1, p2 = self._tournament().arch, self._tournament().arch
        child = p1
        if self.rng.random() < self.crossover_prob:
            for _ in range(_REDRAWS):
                mixed = Arch(self.space.name, tuple(
                    (d, o1 if self.rng.random() < 0.5 else o2) for (d, o1), (_, o2) in zip(p1.choices, p2.choices)
                ))
                if self.space.is_valid(mixed):
                    child = mixed
                    break
        return self.space.mutate(child, self.rng)
