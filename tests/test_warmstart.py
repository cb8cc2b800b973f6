"""Proxy warm start: the first proposals are the screen's top picks, then the inner searcher runs."""

from __future__ import annotations

import pytest

from nasforge.errors import BudgetError
from nasforge.searchers.evolution import RegularizedEvolution
from nasforge.searchers.warmstart import ProxyWarmStart

from _toy import ToySpace


def _score(arch) -> float:
    return sum({"a": 0, "b": 1, "c": 2}[o] for o in arch.values())


def test_first_asks_are_the_best_screened_then_the_inner_searcher_takes_over():
    space = ToySpace()
    inner = RegularizedEvolution(space, seed=0, population_size=3, sample_size=2)
    ws = ProxyWarmStart(inner, _score, pool=40, keep=3, seed=1)
    firsts = [ws.ask() for _ in range(3)]
    # the top of 40 uniform samples over 27 architectures includes the optimum c-c-c
    assert space.format(firsts[0]) == "c-c-c"
    assert [_score(a) for a in firsts] == sorted((_score(a) for a in firsts), reverse=True)
    for a in firsts:
        ws.tell(a, _score(a))
    assert len(inner.population) == 3  # the inner searcher was told everything
    child = ws.ask()  # now a mutation of a population member (REA tournament phase)
    assert 1 in [sum(child[d] != m[d] for d in child) for m, _ in inner.population]


def test_warm_start_is_deterministic_and_checks_sizes():
    space = ToySpace()

    def asks(seed):
        ws = ProxyWarmStart(RegularizedEvolution(space, seed=0, population_size=3, sample_size=2), _score,
                            pool=10, keep=3, seed=seed)
        out = []
        for _ in range(8):
            a = ws.ask()
            ws.tell(a, _score(a))
            out.append(a)
        return out

    assert asks(5) == asks(5)
    with pytest.raises(BudgetError, match="keep"):
        ProxyWarmStart(RegularizedEvolution(space), _score, pool=3, keep=4)
