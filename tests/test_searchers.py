"""Behaviour that defines random search and regularized evolution (the contract every registered
searcher meets is tests/test_searcher_conformance.py)."""

from __future__ import annotations

import pytest

from nasforge.errors import BudgetError
from nasforge.searchers.evolution import RegularizedEvolution
from nasforge.searchers.random_search import RandomSearch

from _toy import ToySpace


def _fitness(arch) -> float:
    # A known landscape: more "c" layers is better.
    return sum({"a": 0, "b": 1, "c": 2}[o] for o in arch.values())


def test_random_search_is_uniform_and_ignores_results():
    space = ToySpace()
    s = RandomSearch(space, seed=0)
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(3000):
        a = s.ask()
        s.tell(a, 0.0)
        counts[a["layer0"]] += 1
    assert all(900 < c < 1100 for c in counts.values()), counts


def test_evolution_initial_population_is_random_then_children_are_mutations():
    space = ToySpace()
    ev = RegularizedEvolution(space, seed=1, population_size=5, sample_size=2)
    for _ in range(5):
        a = ev.ask()
        ev.tell(a, _fitness(a))
    members = {m[0] for m in ev.population}
    for _ in range(50):
        child = ev.ask()
        # the child differs from some population member in exactly one decision
        diffs = [sum(child[d] != m[d] for d in child) for m in members]
        assert 1 in diffs
        ev.tell(child, _fitness(child))
        members = {m[0] for m in ev.population}


def test_evolution_ages_out_the_oldest_not_the_worst():
    space = ToySpace()
    ev = RegularizedEvolution(space, seed=0, population_size=3, sample_size=1)
    best = space.parse("c-c-c")
    ev.tell(best, 100.0)  # the best member is told first ...
    for text in ("a-a-a", "a-a-b", "a-b-a"):
        ev.tell(space.parse(text), 0.0)
    # ... and is the one removed (aging), leaving the three worse ones.
    assert [space.format(a) for a, _ in ev.population] == ["a-a-a", "a-a-b", "a-b-a"]


def test_evolution_tournament_picks_the_fittest_sample():
    space = ToySpace()
    ev = RegularizedEvolution(space, seed=0, population_size=4, sample_size=4)
    pop = ["a-a-a", "a-a-b", "b-b-b", "a-b-a"]
    for text in pop:
        ev.tell(space.parse(text), 10.0 if text == "b-b-b" else 0.0)

    parents = []
    orig = space.mutate

    def spy_mutate(arch, rng):
        parents.append(space.format(arch))
        return orig(arch, rng)

    space.mutate = spy_mutate  # type: ignore[method-assign]
    for _ in range(20):
        ev.ask()
    # with S = P = 4 draws with replacement, the best is drawn with prob 1 - (3/4)^4 = 0.68
    assert parents.count("b-b-b") >= 8


def test_evolution_finds_the_optimum_of_a_simple_landscape_faster_than_random():
    space = ToySpace()

    def best_after(cls, seed, n=30, **kw):
        s = cls(space, seed=seed, **kw)
        best = -1.0
        for _ in range(n):
            a = s.ask()
            f = _fitness(a)
            best = max(best, f)
            s.tell(a, f)
        return best

    ev = [best_after(RegularizedEvolution, seed, population_size=5, sample_size=2) for seed in range(20)]
    assert sum(ev) / len(ev) >= 5.5  # optimum 6


@pytest.mark.parametrize("p,s", [(0, 1), (5, 0), (5, 6)])
def test_evolution_rejects_bad_sizes(p, s):
    with pytest.raises(BudgetError, match="population_size|sample_size"):
        RegularizedEvolution(ToySpace(), population_size=p, sample_size=s)
