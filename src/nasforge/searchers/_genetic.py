"""The genetic algorithm of the predictor-driven searches (ChamNet), shared by the searcher and the method.

Dai et al., "ChamNet: Towards Efficient Network Design through Platform-Aware Model
Adaptation", CVPR 2019 (arXiv:1812.08934), search the architecture of highest predicted
accuracy whose predicted resources meet the constraints with a genetic algorithm over their
predictors. The paper does not list its GA's operators or settings; this one is used by
:class:`nasforge.searchers.gp_evolution.GPEvolution` (online, ask/tell) and by the ChamNet
method (:mod:`nasforge.methods.chamnet`, offline over a fitted predictor).

:func:`genetic_search`: the initial population is ``seeds`` (in order) topped up with uniform
samples to ``population_size`` (duplicates dropped); each of ``generations`` generations keeps
the top ``parent_fraction`` of the population as parents (ranked *feasible first, then by
score*, :func:`rank`) and breeds ``population_size`` children, each by uniform crossover of
two distinct parents with probability ``crossover_prob`` (:func:`crossover`; an invalid or
parent-identical child is mutated instead) or by mutation of one parent (``space.mutate``:
one decision changed); the next population is the best ``population_size`` of parents and
children (elitist). ``score(archs) -> (feasible bool array, score array)`` is called once per
batch of architectures never scored before; every scored architecture is returned, ranked.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

from nasforge.arch import Arch
from nasforge.spaces.base import SearchSpace

#: ``score(archs) -> (feasible, score)``: two arrays of ``len(archs)``.
Scorer = Callable[[list[Arch]], tuple[np.ndarray, np.ndarray]]


def crossover(space: SearchSpace, a: Arch, b: Arch, rng: random.Random) -> Arch:
    """Uniform crossover: each decision from ``a`` or ``b`` with equal chance (may be invalid)."""
    return Arch(space.name, tuple((d, o if rng.random() < 0.5 else b[d]) for d, o in a.choices))


def rank(archs: Sequence[Arch], scored: dict[Arch, tuple[bool, float]]) -> list[Arch]:
    """Feasible first, then by score (descending); ties keep the given order."""
    return sorted(archs, key=lambda a: (not scored[a][0], -scored[a][1]))


def genetic_search(
    space: SearchSpace, score: Scorer, rng: random.Random, *, seeds: Sequence[Arch], population_size: int,
    generations: int, parent_fraction: float, crossover_prob: float,
) -> tuple[list[Arch], dict[Arch, tuple[bool, float]]]:
    """Run the GA of the module docstring; returns every architecture it scored, ranked, and their
    ``(feasible, score)``. All randomness comes from ``rng`` (same ``rng`` state, same result)."""
    scored: dict[Arch, tuple[bool, float]] = {}

    def add(archs: list[Arch]) -> None:
        new = [a for a in dict.fromkeys(archs) if a not in scored]
        if new:
            feasible, s = score(new)
            for a, f, v in zip(new, feasible, s):
                scored[a] = (bool(f), float(v))

    population = list(seeds)
    while len(population) < population_size:
        population.append(space.sample(rng))
    population = list(dict.fromkeys(population))
    add(population)
    n_parents = max(1, round(parent_fraction * population_size))
    for _ in range(generations):
        parents = rank(population, scored)[:n_parents]
        children = []
        for _ in range(population_size):
            if len(parents) > 1 and rng.random() < crossover_prob:
                a, b = rng.sample(parents, 2)
                child = crossover(space, a, b, rng)
                if child in (a, b) or not space.is_valid(child):
                    child = space.mutate(a, rng)
            else:
                child = space.mutate(rng.choice(parents), rng)
            children.append(child)
        add(children)
        population = rank(list(dict.fromkeys(parents + children)), scored)[:population_size]
    return rank(list(scored), scored), scored
