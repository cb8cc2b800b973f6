"""NSGA-II (environmental selection, crowded tournaments, front improvement) and the Pareto wrapper."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tests._toy import ToySpace

from nasforge import get_space, registry
from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError
from nasforge.pareto import hypervolume
from nasforge.searchers.base import Searcher
from nasforge.searchers.evolution import RegularizedEvolution
from nasforge.searchers.nsga2 import NSGA2, Member, environmental_selection
from nasforge.searchers.pareto_wrapper import ParetoWrapper
from nasforge.searchers.random_search import RandomSearch

OBJS = (("acc", 1), ("cost", -1))
COST = {"none": 0, "skip_connect": 0, "avg_pool_3x3": 0, "nor_conv_1x1": 1, "nor_conv_3x3": 9}


def _toy_metrics(arch: Arch) -> dict[str, float]:
    """A bi-objective NB201 landscape: accuracy rises with convolutions, cost with their size."""
    ops = list(arch.values())
    acc = 2.0 * sum(o == "nor_conv_3x3" for o in ops) + 1.5 * sum(o == "nor_conv_1x1" for o in ops) \
        + 0.3 * sum(o == "skip_connect" for o in ops)
    return {"acc": acc, "cost": float(sum(COST[o] for o in ops))}


def _member(i: int, values) -> Member:
    return Member(Arch("toy_test", (("layer0", str(i)),)), tuple(values), {})


def test_registered_as_multi_objective():
    assert registry.get("method", "nsga2") is NSGA2
    assert NSGA2.multi_objective and not NSGA2.multi_fidelity
    s = NSGA2(ToySpace(), objectives=OBJS)
    assert s.required_metrics() == ("acc", "cost")
    assert NSGA2.options()["population_size"] == 20 and NSGA2.options()["crossover_prob"] == 0.9


def test_environmental_selection_by_front_then_crowding():
    pts = [
        (1, 9), (5, 5), (9, 1),  # front 0
        (1, 8), (4, 4), (4.8, 3.5), (4.5, 3.8), (8, 1),  # front 1 (each dominated by a front-0 point)
        (0, 0), (-math.inf, -math.inf),  # front 2, and a failed trial
    ]
    members = [_member(i, p) for i, p in enumerate(pts)]
    survivors = environmental_selection(members, 6)
    # all of front 0; from front 1 the boundaries (1, 8) and (8, 1) (infinite crowding), then the
    # least crowded interior point: (4, 4) d = 3.5/7 + 4.2/7 beats (4.8, 3.5) d = 3.5/7 + 2.8/7
    # and (4.5, 3.8) d = 0.8/7 + 0.5/7
    assert [m.values for m in survivors] == [(1, 9), (5, 5), (9, 1), (1, 8), (4, 4), (8, 1)]
    assert [m.rank for m in survivors] == [0, 0, 0, 1, 1, 1]
    assert survivors[4].crowding == pytest.approx(7.7 / 7)
    assert environmental_selection(members, 3) == members[:3]
    assert environmental_selection(members, 10) == members  # everything fits, the failed one last


def test_tournament_prefers_rank_then_crowding():
    s = NSGA2(ToySpace(), objectives=OBJS, population_size=2)
    a, b = _member(0, (1, 1)), _member(1, (2, 2))
    a.rank, b.rank = 1, 0
    s.population = [a, b]
    assert all(s._tournament() is b for _ in range(20))
    a.rank, b.rank, a.crowding, b.crowding = 0, 0, 0.5, math.inf
    assert all(s._tournament() is b for _ in range(20))
    b.crowding = 0.5
    assert {id(s._tournament()) for _ in range(50)} == {id(a), id(b)}  # a fair coin on full ties


def test_generations_and_failed_trials():
    space = get_space("nb201")
    s = NSGA2(space, seed=0, objectives=OBJS, population_size=6)
    for i in range(18):
        arch = s.ask()
        s.tell(arch, -math.inf if i == 0 else 1.0, _toy_metrics(arch))
        assert s.generation == (i + 1) // 6
    assert len(s.population) == 6 and not s.offspring
    assert s.history[0].values == (-math.inf, -math.inf)  # failed: the worst in every objective
    assert s.history[0].arch not in [a for a, _ in s.front()]
    assert len({m.arch for m in s.history}) == 18  # duplicates are redrawn
    with pytest.raises(ConfigError, match="cost"):
        s.tell(s.ask(), 1.0, {"acc": 1.0})


def _front_hypervolume(searcher: Searcher, steps: int, front) -> float:
    metrics = []
    for _ in range(steps):
        arch = searcher.ask()
        m = _toy_metrics(arch)
        searcher.tell(arch, m["acc"], m)
        metrics.append(m)
    pts = [m for _, m in front()] if front else metrics
    return hypervolume(pts, OBJS, {"acc": 0.0, "cost": 60.0})


def test_front_improves_and_beats_random_search_on_a_toy_landscape():
    space = get_space("nb201")
    hv_nsga, hv_rand, hv_early = [], [], []
    for seed in range(4):
        s = NSGA2(space, seed=seed, objectives=OBJS, population_size=10)
        hv_early.append(_front_hypervolume(s, 10, s.front))
        hv_nsga.append(_front_hypervolume(s, 70, s.front))
        hv_rand.append(_front_hypervolume(RandomSearch(space, seed=seed), 80, None))
    assert np.mean(hv_nsga) > np.mean(hv_early)
    assert np.mean(hv_nsga) > np.mean(hv_rand)


def test_bad_options_raise_typed_errors():
    with pytest.raises(BudgetError, match="population_size"):
        NSGA2(ToySpace(), population_size=1)
    with pytest.raises(ConfigError, match="crossover_prob"):
        NSGA2(ToySpace(), crossover_prob=1.5)
    with pytest.raises(ConfigError, match="sign"):
        NSGA2(ToySpace(), objectives=(("acc", 0),))


# ---- the Pareto wrapper -------------------------------------------------------------------------
class _Recorder(RandomSearch):
    def __init__(self, space, seed=0):
        super().__init__(space, seed=seed)
        self.told: list[float] = []

    def tell(self, arch, fitness, metrics=None):
        self.told.append(fitness)


def test_wrapper_tells_rank_and_crowding_scalars():
    space = ToySpace()
    inner = _Recorder(space)
    w = ParetoWrapper(inner, OBJS)
    seq = [
        {"acc": 5, "cost": 5},  # alone: front 0, a boundary -> (m + 0.5) / (m + 1) = 2.5 / 3
        {"acc": 4, "cost": 6},  # dominated by the first: front 1, alone there
        {"acc": 6, "cost": 7},  # front 0 with the first, a boundary
        {"acc": 5.5, "cost": 6},  # front 0, interior: crowding (6 - 5) / 1 + (7 - 5) / 2 = 2
        {"acc": 1, "cost": 9},  # dominated by all of front 0 and by (4, 6): front 2
    ]
    for m in seq:
        w.tell(w.ask(), 1.0, m)
    w.tell(w.ask(), -math.inf, {})
    assert inner.told == pytest.approx([2.5 / 3, -1 + 2.5 / 3, 2.5 / 3, 2 / 3, -2 + 2.5 / 3, -math.inf])
    assert [m for _, m in w.front()] == [seq[0], seq[2], seq[3]]
    assert w.required_metrics() == ("acc", "cost")


def test_wrapper_forwards_inner_behaviour_and_drives_evolution():
    space = get_space("nb201")
    inner = RegularizedEvolution(space, seed=0)
    w = ParetoWrapper(inner, OBJS)
    assert w.no_repeats == inner.no_repeats and w.multi_fidelity == inner.multi_fidelity and w.fidelity() == 1.0
    hv = _front_hypervolume(w, 80, w.front)
    hv_rand = _front_hypervolume(RandomSearch(space, seed=0), 80, None)
    assert hv > 0 and hv >= 0.9 * hv_rand
    # replay: a fresh wrapper around a fresh inner searcher proposes the same architectures
    w2 = ParetoWrapper(RegularizedEvolution(space, seed=0), OBJS)
    for arch, m in zip([a for a in w.archs], w.metrics):
        assert w2.ask() == arch
        w2.tell(arch, 1.0, m)
    assert w2.scalars == w.scalars
