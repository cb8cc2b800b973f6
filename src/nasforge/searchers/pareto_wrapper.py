"""Multi-objective search with any searcher: NSGA-II's ordering turned into the scalar it is told.

NSGA-II's selection (Deb, Pratap, Agarwal & Meyarivan, "A Fast and Elitist Multiobjective
Genetic Algorithm: NSGA-II", IEEE TEC 2002) ranks trials by non-dominated front and, within a
front, by crowding distance. :class:`ParetoWrapper` gives that ordering to a single-objective
searcher (evolution, BOHB, a predictor...): it keeps every told trial's ``(metric, sign)``
objective values and, when a trial is told, tells the inner searcher

    fitness = -r + min(c, m + 0.5) / (m + 1)

where ``r`` is the new trial's front (0 = non-dominated) in a non-dominated sort of *all*
trials told so far, including it, ``c`` its crowding distance within that front and ``m`` the
number of objectives. A finite crowding distance is at most ``m`` (each objective adds a gap of
at most one range) and a boundary point's is infinite, so the tie-break lies in [0, 1): any
trial of a better front scores higher, and within a front a less crowded one scores higher,
boundary points highest ((m + 0.5) / (m + 1)). A failed trial (fitness ``-inf`` or NaN) is
told ``-inf`` and counts as worst in every objective. See :mod:`nasforge.pareto` for ties and
infinities. The rule is deterministic.

It is an *approximation* of NSGA-II: the scalar of an earlier trial is not revised when later
trials dominate it or crowd its neighbourhood (the inner searcher was told once), so early
trials keep scores that were relative to fewer points.

The wrapper is not a registered method (it wraps an instance); build it in code:
``ParetoWrapper(RegularizedEvolution(space, seed=0), (("val_acc", 1), ("params", -1)))``.
It forwards ``ask``, ``fidelity()``, ``no_repeats``, ``multi_fidelity`` and ``concurrent_asks`` of the inner searcher;
:meth:`ParetoWrapper.front` gives the Pareto-optimal trials told so far.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from nasforge.arch import Arch
from nasforge.pareto import (
    Objectives,
    check_objectives,
    crowding_distance,
    front_of_told,
    objective_vector,
    pareto_ranks,
)
from nasforge.searchers.base import Searcher


class ParetoWrapper(Searcher):
    """Wrap ``inner``: tell it NSGA-II's rank-and-crowding scalar of each trial under ``objectives``.

    Args:
        inner: any searcher; its seed and options are its own.
        objectives: ``((metric, sign), ...)``; sign +1 maximises, -1 minimises.
    """

    name: ClassVar[str] = "pareto_wrapper"
    paper: ClassVar[str] = (
        "Deb, Pratap, Agarwal & Meyarivan, A Fast and Elitist Multiobjective Genetic Algorithm: NSGA-II, IEEE TEC 2002"
    )
    multi_objective: ClassVar[bool] = True

    def __init__(self, inner: Searcher, objectives: Objectives = (("val_acc", 1), ("params", -1))) -> None:
        super().__init__(inner.space, seed=inner.seed)
        self.inner = inner
        self.objectives = check_objectives(objectives)
        self.archs: list[Arch] = []
        self.values: list[tuple[float, ...]] = []
        self.metrics: list[dict[str, float]] = []
        self.failed: list[bool] = []
        self.scalars: list[float] = []  # what the inner searcher was told, per trial

    @property
    def no_repeats(self) -> bool:  # type: ignore[override]
        return self.inner.no_repeats

    @property
    def multi_fidelity(self) -> bool:  # type: ignore[override]
        return self.inner.multi_fidelity

    @property
    def concurrent_asks(self) -> bool:  # type: ignore[override]
        return self.inner.concurrent_asks

    def required_metrics(self) -> tuple[str, ...]:
        names = [m for m, _ in self.objectives]
        return tuple(names + [m for m in self.inner.required_metrics() if m not in names])

    def ask(self) -> Arch:
        return self.inner.ask()

    def fidelity(self) -> float:
        return self.inner.fidelity()

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        failed = not (fitness > -math.inf)
        self.archs.append(arch)
        self.values.append(objective_vector(metrics, self.objectives, failed=failed))
        self.metrics.append(dict(metrics or {}))
        self.failed.append(failed)
        scalar = -math.inf if failed else self._scalar_of_last()
        self.scalars.append(scalar)
        self.inner.tell(arch, scalar, metrics)

    def _scalar_of_last(self) -> float:
        values = np.array(self.values, dtype=float)
        ranks = pareto_ranks(values)
        r = int(ranks[-1])
        front = np.flatnonzero(ranks == r)  # ascending: the new trial is the front's last point
        c = float(crowding_distance(values[front])[-1])
        m = values.shape[1]
        return -r + min(c, m + 0.5) / (m + 1)

    def front(self) -> list[tuple[Arch, dict[str, float]]]:
        """The Pareto-optimal trials told so far (failed ones excluded), each architecture once,
        in order of tell, as ``(arch, metrics)``."""
        told = [(self.archs[i], self.values[i], self.metrics[i]) for i, f in enumerate(self.failed) if not f]
        return front_of_told(told, len(self.objectives))

    @classmethod
    def options(cls) -> dict[str, Any]:
        return {"objectives": (("val_acc", 1), ("params", -1))}
