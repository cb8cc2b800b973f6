"""Hyperband: successive halving over brackets of decreasing aggressiveness, new configurations uniform.

Li, Jamieson, DeSalvo, Rostamizadeh & Talwalkar, "Hyperband: A Novel Bandit-Based Approach to
Hyperparameter Optimization", JMLR 18(185), 2018, Algorithm 1 (reference: the paper's
pseudo-code; HpBandSter's ``HyperBand`` optimizer for the ask/tell form of the brackets).

With ``R = 1 / min_fidelity`` (the largest budget in units of the smallest) and ``eta``:
``s_max = floor(log_eta(R))``. One Hyperband *iteration* runs the brackets ``s = s_max, ..., 0``;
bracket ``s`` starts ``n = ceil((s_max + 1) / (s + 1) * eta**s)`` configurations at fidelity
``eta**-s`` (a share of the full budget) and runs successive halving: rung ``i = 0..s`` evaluates
``n_i = floor(n * eta**-i)`` configurations at fidelity ``eta**(i - s)``, then the top
``floor(n_i / eta)`` by fitness go on to the next rung. For ``eta = 3, min_fidelity = 1/9``
(``R = 9``, ``s_max = 2``) an iteration is::

    s = 2: 9 at 1/9 -> 3 at 1/3 -> 1 at 1
    s = 1: 5 at 1/3 -> 1 at 1
    s = 0: 3 at 1

(22 evaluations). After bracket 0 the next iteration starts again at ``s_max``.

In ask/tell form (:class:`HyperbandScheduler`, shared with BOHB by composition): each ``ask()``
returns one configuration of the current rung and ``fidelity()`` its rung's fidelity; a rung is
complete when all its configurations are told; promotions re-propose the *same* Arch at ``eta``
times the fidelity, so the method repeats architectures by design (``no_repeats = False``).
Configurations of a bracket's first rung are drawn when they are asked (not all at the start of
the bracket), which lets BOHB's model use every result told so far. A ``-inf`` (failed) or NaN
fitness ranks last; fitness ties go to the configuration evaluated first (the promoted keep
their order of evaluation).

``min_fidelity`` (default 1/9, so ``R = 9``: the paper's worked example uses ``R = 81``; 1/9
is chosen so that short trainings still give distinct rungs, as the search loop trains
``round(epochs * fidelity)`` epochs, at least 1). It need not be a power of ``1/eta``: the
smallest fidelity used is ``eta**-s_max >= min_fidelity``. With ``min_fidelity = 1.0`` (what the
search loop passes for evaluators without a budget knob: the NB201 table, zero-cost proxies)
``s_max = 0`` and every bracket is one uniformly sampled configuration at full budget:
Hyperband degenerates to random search, as the paper notes for ``R = 1``.

Departures: the paper's brackets run in parallel or as a whole; here trials are sequential.
When the search loop asks again without telling (it discards proposals that break a cost
constraint), a discarded first-rung configuration is replaced by a new one in the same slot, and
a discarded promotion counts as failed (``-inf``). A ``tell`` of an architecture that was not the
pending proposal (e.g. from a warm start) does not enter the brackets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError, check_int, check_probability
from nasforge.registry import register
from nasforge.searchers.base import Searcher
from nasforge.spaces.base import SearchSpace


def _rank_key(fitness: float) -> float:
    """Sort key (ascending = best first): NaN and -inf rank last."""
    return math.inf if math.isnan(fitness) else -fitness


class HyperbandScheduler:
    """Hyperband's brackets of successive halving as a stream of (configuration, fidelity) proposals.

    Args:
        new_config: draws a new configuration (uniform for Hyperband, the KDE model for BOHB); called
            when a first-rung slot is asked.
        eta: the halving rate (integer >= 2).
        min_fidelity: the smallest share of the full budget; ``R = 1 / min_fidelity``.

    Call :meth:`next` for each proposal and :meth:`report` with its result.
    """

    def __init__(self, new_config: Callable[[], Arch], *, eta: int = 3, min_fidelity: float = 1 / 9) -> None:
        given: object = eta
        if isinstance(given, float) and given.is_integer():  # eta=3.0, as a config file may give it
            given = int(given)
        self.eta = check_int("eta", given, low=2, error=ConfigError)
        # min_fidelity is a share of the full budget
        self.min_fidelity = check_probability("min_fidelity", min_fidelity, low_open=True, error=BudgetError)
        ratio = 1.0 / self.min_fidelity
        s = 0
        while self.eta ** (s + 1) <= ratio * (1 + 1e-9):  # floor(log_eta(R)), robust to rounding of 1/R
            s += 1
        self.s_max = s
        self._new_config = new_config
        self.iteration = 0  # completed Hyperband iterations
        self.bracket = self.s_max  # s of the current bracket
        self.rung = 0  # i of the current rung
        self._configs: list[Arch] = []
        self._fitness: list[float | None] = []
        self._asked = 0  # slots of the current rung handed out
        self._pending: int | None = None  # slot asked but not told yet

    # ---- the schedule ------------------------------------------------------------------------
    def bracket_plan(self, s: int) -> list[tuple[int, float]]:
        """``(n_i, fidelity_i)`` of each rung of bracket ``s`` (Algorithm 1 of the paper)."""
        if not 0 <= s <= self.s_max:
            raise ConfigError(f"bracket s must be in [0, {self.s_max}], got {s}")
        n = -(-(self.s_max + 1) * self.eta**s // (s + 1))  # ceil((s_max + 1) / (s + 1) * eta^s)
        return [(n // self.eta**i, self.fidelity_of(s, i)) for i in range(s + 1)]

    def iteration_plan(self) -> list[list[tuple[int, float]]]:
        """The rungs of every bracket of one Hyperband iteration, ``s = s_max`` first."""
        return [self.bracket_plan(s) for s in range(self.s_max, -1, -1)]

    def fidelity_of(self, s: int, i: int) -> float:
        return float(self.eta) ** (i - s)

    @property
    def fidelity(self) -> float:
        """Fidelity of the current rung."""
        return self.fidelity_of(self.bracket, self.rung)

    def _rung_size(self) -> int:
        return self.bracket_plan(self.bracket)[self.rung][0]

    # ---- proposals and results -----------------------------------------------------------------
    def next(self) -> tuple[Arch, float]:
        """The next configuration to evaluate and its fidelity."""
        if self._pending is not None:  # asked again without a tell: the proposal was discarded
            slot = self._pending
            if self.rung == 0:
                self._configs[slot] = self._new_config()
                return self._configs[slot], self.fidelity
            self._fitness[slot] = -math.inf
            self._pending = None
            self._advance_if_complete()
        slot = self._asked
        if self.rung == 0 and slot == len(self._configs):
            self._configs.append(self._new_config())
            self._fitness.append(None)
        self._asked += 1
        self._pending = slot
        return self._configs[slot], self.fidelity

    def report(self, arch: Arch, fitness: float) -> float | None:
        """Record the result of the pending proposal; returns its fidelity, or None when ``arch``
        is not the pending proposal (then the result does not enter the brackets)."""
        slot = self._pending
        if slot is None or self._configs[slot] != arch:
            return None
        fidelity = self.fidelity
        self._fitness[slot] = float(fitness)
        self._pending = None
        self._advance_if_complete()
        return fidelity

    def _advance_if_complete(self) -> None:
        if self._pending is not None or self._asked < self._rung_size():
            return
        if self.rung < self.bracket:  # promote the top floor(n_i / eta), keeping their order
            keep = self.bracket_plan(self.bracket)[self.rung + 1][0]
            scores = [-math.inf if f is None else f for f in self._fitness]
            ranked = sorted(range(len(scores)), key=lambda j: (_rank_key(scores[j]), j))
            survivors = sorted(ranked[:keep])
            self._configs = [self._configs[j] for j in survivors]
            self.rung += 1
        else:  # bracket done: the next one, or a new Hyperband iteration
            self._configs = []
            self.rung = 0
            if self.bracket == 0:
                self.bracket = self.s_max
                self.iteration += 1
            else:
                self.bracket -= 1
        self._fitness = [None] * len(self._configs)
        self._asked = 0


@register("method", "hyperband")
class Hyperband(Searcher):
    """Hyperband with uniformly sampled new configurations.

    Args:
        space: the search space (any).
        seed: seed of ``self.rng``, the only source of randomness.
        eta: halving rate; the paper's default 3.
        min_fidelity: share of the full budget at the smallest rung, ``1 / R``; default 1/9.
            ``1.0`` turns Hyperband into random search at full budget (for evaluators without a
            budget knob).
    """

    name: ClassVar[str] = "hyperband"
    paper: ClassVar[str] = (
        "Li, Jamieson, DeSalvo, Rostamizadeh & Talwalkar, Hyperband: A Novel Bandit-Based Approach to "
        "Hyperparameter Optimization, JMLR 2018"
    )
    multi_fidelity: ClassVar[bool] = True
    concurrent_asks: ClassVar[bool] = False  # a rung is promoted from its told results, in order
    smoke_options: ClassVar[dict[str, Any]] = {"eta": 3, "min_fidelity": 1 / 9}

    def __init__(self, space: SearchSpace, *, seed: int = 0, eta: int = 3, min_fidelity: float = 1 / 9) -> None:
        super().__init__(space, seed=seed)
        self.scheduler = HyperbandScheduler(lambda: self.space.sample(self.rng), eta=eta, min_fidelity=min_fidelity)
        self._fidelity = 1.0

    @classmethod
    def options(cls) -> dict[str, Any]:
        # eta = 3: the paper recommends 3 or 4 and uses 3 in its worked example (HpBandSter's default too);
        # min_fidelity 1/9: see the module docstring.
        return {"eta": 3, "min_fidelity": 1 / 9}

    def ask(self) -> Arch:
        arch, self._fidelity = self.scheduler.next()
        return arch

    def fidelity(self) -> float:
        return self._fidelity

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        self.scheduler.report(arch, fitness)
