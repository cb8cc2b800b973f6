"""ChamNet-style GP evolution: the GP predictor, the genetic algorithm over it and the cost constraint."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from tests._toy import ToySpace

from nasforge import get_space
from nasforge.errors import BudgetError, ConfigError
from nasforge.searchers._encodings import encode_batch
from nasforge.searchers._surrogates import fit_gp
from nasforge.searchers.gp_evolution import GPEvolution, crossover

SMALL = {"population_size": 40, "generations": 4}
OP_VALUE = {"none": 0.0, "skip_connect": 1.0, "avg_pool_3x3": 0.5, "nor_conv_1x1": 2.0, "nor_conv_3x3": 3.0}
LIMIT = 21.0  # at most two 3x3 convs (plus two 1x1): the unconstrained optimum (six 3x3) is far above


def _fitness(arch) -> float:
    return sum(OP_VALUE[o] for o in arch.values())


def _cost(arch) -> float:
    """A params-like cost: 9 per 3x3 conv, 1 per 1x1 conv, plus a constant."""
    return 1.0 + sum(9.0 if o == "nor_conv_3x3" else 1.0 if o == "nor_conv_1x1" else 0.0 for o in arch.values())


def _run(searcher, n, *, constrained_fitness=False, fail=()):
    out = []
    for i in range(n):
        arch = searcher.ask()
        f = _fitness(arch)
        if i in fail or (constrained_fitness and _cost(arch) > LIMIT):
            f = -math.inf  # what the search loop tells for a failed or infeasible trial
        searcher.tell(arch, f, {"val_acc": _fitness(arch), "params": _cost(arch)})
        out.append(arch)
    return out


def test_options_required_metrics_and_typed_errors():
    space = get_space("nb201")
    assert GPEvolution.options()["cost_limit"] is None and GPEvolution.options()["acquisition"] == "mean"
    assert GPEvolution(space).required_metrics() == ()
    assert GPEvolution(space, cost_limit=5e5).required_metrics() == ("params",)
    assert GPEvolution(space, cost_metric="hwnb_pixel3_latency_ms", cost_limit=3.0).required_metrics() == (
        "hwnb_pixel3_latency_ms",)
    with pytest.raises(ConfigError, match="cost_limit"):
        GPEvolution(space, cost_limit=-1.0)
    with pytest.raises(ConfigError, match="cost_metric"):
        GPEvolution(space, cost_metric="")
    with pytest.raises(ConfigError, match="mean, ei, ucb"):
        GPEvolution(space, acquisition="its")
    with pytest.raises(BudgetError, match="population_size"):
        GPEvolution(space, population_size=0)
    with pytest.raises(ConfigError, match="crossover_prob"):
        GPEvolution(space, crossover_prob=1.5)


def test_gp_predictor_fits_hyper_parameters_and_predicts_held_out_cells():
    space = get_space("nb201")
    rng = random.Random(0)
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(120)))
    x = encode_batch(space, archs, "onehot")
    y = np.array([_fitness(a) for a in archs])
    gp = fit_gp(x[:80], y[:80], random_state=0)
    assert gp.kernel_ != gp.kernel  # hyper-parameters moved by marginal-likelihood maximisation
    mean, std = gp.predict(x[80:], return_std=True)
    assert np.corrcoef(mean, y[80:])[0, 1] > 0.95
    assert np.all(std > 0)


def test_crossover_takes_every_decision_from_a_parent():
    space = get_space("nb201")
    rng = random.Random(4)
    a, b = space.sample(rng), space.sample(rng)
    for _ in range(20):
        child = crossover(space, a, b, rng)
        assert all(child[d] in (a[d], b[d]) for d in child)


@pytest.mark.parametrize("limit, optimum", [(None, 18.0), (LIMIT, 13.0)])
def test_the_genetic_algorithm_finds_the_optimum_of_a_known_predictor(limit, optimum):
    space = get_space("nb201")
    base = GPEvolution(space, seed=5, num_init=10)
    _run(base, 10)
    data = base.training_set()

    def exact(_data, _seed):  # stands in for the GPs: the true fitness and the true cost
        return lambda archs: (np.array([limit is None or _cost(a) <= limit for a in archs]),
                              np.array([_fitness(a) for a in archs]))

    best = {}
    for g in (1, 10):
        s = GPEvolution(space, seed=9, generations=g)
        s._scorer = exact  # type: ignore[method-assign]
        ranked, scored = s.evolve(data)
        assert scored[ranked[0]][0]  # the best ranked is feasible
        assert all(scored[a][1] <= scored[ranked[0]][1] for a in scored if scored[a][0])
        best[g] = scored[ranked[0]][1]
    # six 3x3 convs unconstrained; one 3x3 and five 1x1 under the limit (cost 15 <= 21)
    assert best[10] == optimum and best[1] <= optimum


def test_proposals_are_the_best_predicted_unseen_and_refit_once_per_k():
    space = get_space("nb201")
    s = GPEvolution(space, seed=0, num_init=8, k=5, **SMALL)
    _run(s, 8)
    assert s.fits == 0
    for it in range(3):
        for j in range(5):
            arch = s.ask()
            assert s.fits == it + 1 and len(s.queue) == 4 - j
            s.tell(arch, _fitness(arch), {})
    archs = [a for a, _ in s.history]
    assert len(set(archs)) == len(archs)
    # the model-chosen batches beat the random initial sample on this smooth landscape
    assert np.mean([f for _, f in s.history[8:]]) > np.mean([f for _, f in s.history[:8]])


def test_the_cost_constraint_steers_the_search_to_feasible_cells():
    space = get_space("nb201")
    fractions = {}
    for limit in (None, LIMIT):
        s = GPEvolution(space, seed=2, num_init=10, k=10, cost_limit=limit, **SMALL)
        archs = _run(s, 40, constrained_fitness=limit is not None)
        fractions[limit] = np.mean([_cost(a) <= LIMIT for a in archs[10:]])
        best_feasible = max(_fitness(a) for a in archs if _cost(a) <= LIMIT)
        if limit is not None:
            assert s.required_metrics() == ("params",)
            assert best_feasible >= 11.0  # the feasible optimum is 13 (one 3x3, five 1x1)
    assert fractions[LIMIT] >= 0.7
    assert fractions[None] <= 0.3  # unconstrained, it chases the many-3x3 cells


def test_a_told_cost_overrides_the_prediction():
    space = get_space("nb201")
    s = GPEvolution(space, seed=0, num_init=4, cost_limit=LIMIT, **SMALL)
    archs = _run(s, 6)
    expensive = space.parse(
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    s.tell(expensive, 1.0, {"params": 55.0})
    feasible = s.predicted_cost_feasible(archs + [expensive])
    assert list(feasible[:-1]) == [_cost(a) <= LIMIT for a in archs]
    assert not feasible[-1]


def test_failed_trials_are_left_out_of_the_gp():
    space = get_space("nb201")
    s = GPEvolution(space, seed=1, num_init=5, k=5, **SMALL)
    archs = _run(s, 20, fail={0, 6, 13})
    assert len(s.training_set()) == 17
    assert not {archs[0], archs[6], archs[13]} & {a for a, _ in s.training_set()}


def test_no_repeats_until_a_tiny_space_is_exhausted():
    space = ToySpace()
    s = GPEvolution(space, seed=0, num_init=3, k=4, population_size=10, generations=2)
    archs = []
    for _ in range(27):
        a = s.ask()
        s.tell(a, float(sum("abc".index(o) for o in a.values())))
        archs.append(a)
    assert len(set(archs)) == 27
    with pytest.raises(BudgetError, match="every architecture"):
        s.ask()
