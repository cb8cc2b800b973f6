"""BANANAS: the neural ensemble, the acquisition functions, the mutation pool and the iteration schedule."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.stats import norm
from tests._toy import ToySpace

from nasforge import get_space
from nasforge.errors import BudgetError, ConfigError
from nasforge.searchers._encodings import encode_batch
from nasforge.searchers._surrogates import MLPEnsemble
from nasforge.searchers.bananas import Bananas, acquisition_scores

SMALL = {"num_ensemble": 3, "num_layers": 3, "layer_width": 16, "epochs": 20}
OP_VALUE = {"none": 0.0, "skip_connect": 1.0, "avg_pool_3x3": 0.5, "nor_conv_1x1": 2.0, "nor_conv_3x3": 3.0}


def _synthetic(arch) -> float:
    """A fixed NB201 landscape: op values plus a bonus for a conv on both edges into node 3."""
    bonus = 2.0 if arch["edge_3_1"].startswith("nor") and arch["edge_3_2"].startswith("nor") else 0.0
    return sum(OP_VALUE[o] for o in arch.values()) + bonus


def test_options_are_the_paper_defaults_and_bad_values_are_typed_errors():
    opts = Bananas.options()
    assert opts["num_init"] == 10 and opts["k"] == 10 and opts["num_ensemble"] == 5
    assert opts["num_layers"] == 10 and opts["layer_width"] == 20 and opts["lr"] == 0.01
    assert opts["acquisition"] == "its" and opts["encoding"] == "path" and opts["num_candidates"] == 100
    space = get_space("nb201")
    with pytest.raises(BudgetError, match="num_init"):
        Bananas(space, num_init=0)
    with pytest.raises(BudgetError, match="k must"):
        Bananas(space, k=True)
    with pytest.raises(ConfigError, match="its, ei, ucb"):
        Bananas(space, acquisition="pi")
    with pytest.raises(ConfigError, match="lr"):
        Bananas(space, lr=-0.1)
    with pytest.raises(ConfigError, match="path, onehot"):
        Bananas(space, encoding="adjacency")


def test_acquisition_functions():
    preds = np.array([[1.0, 2.0, 0.0], [3.0, 2.0, 2.0]])  # 2 members x 3 candidates
    mean, std = np.array([2.0, 2.0, 1.0]), np.array([1.0, 0.0, 1.0])
    draws = acquisition_scores(preds, "its", best=0.0, rng=np.random.default_rng(7))
    assert np.allclose(draws, np.random.default_rng(7).normal(mean, std))  # one independent draw each
    assert draws[1] == 2.0  # no spread: the draw is the mean
    assert np.allclose(acquisition_scores(preds, "ucb", best=0.0, rng=np.random.default_rng()), mean + 0.5 * std)
    ei = acquisition_scores(preds, "ei", best=2.0, rng=np.random.default_rng())
    z = (1.0 - 2.0) / 1.0
    assert ei[0] == pytest.approx(norm.pdf(0.0))  # mean at the incumbent: std * phi(0)
    assert ei[1] == 0.0  # certain and not better
    assert ei[2] == pytest.approx(z * norm.cdf(z) + norm.pdf(z))


def test_mlp_ensemble_learns_a_path_feature_function_with_independent_members():
    space = get_space("nb201")
    rng = random.Random(0)
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(160)))
    x = encode_batch(space, archs)
    y = x @ np.random.default_rng(1).normal(size=x.shape[1]) + 90.0
    net = MLPEnsemble(x.shape[1], members=3, layers=3, width=20, lr=0.01, epochs=60, batch_size=32,
                      rng=np.random.default_rng(2))
    train_mae = net.fit(x[:120], y[:120])
    assert train_mae < 0.3 * np.abs(y[:120] - y[:120].mean()).mean()  # far better than the mean
    pred = net.predict(x[120:])
    assert pred.shape == (3, len(archs) - 120)
    assert np.corrcoef(pred.mean(axis=0), y[120:])[0, 1] > 0.8
    assert not np.allclose(pred[0], pred[1])  # members start from different initialisations
    again = MLPEnsemble(x.shape[1], members=3, layers=3, width=20, lr=0.01, epochs=60, batch_size=32,
                        rng=np.random.default_rng(2))
    again.fit(x[:120], y[:120])
    assert np.array_equal(again.predict(x[120:]), pred)  # deterministic under its generator


def _run(searcher, n, fitness, fail=()):
    out = []
    for i in range(n):
        arch = searcher.ask()
        f = -math.inf if i in fail else fitness(arch)
        searcher.tell(arch, f, {"val_acc": f})
        out.append((arch, f))
    return out


def test_random_init_then_one_ensemble_training_per_k_proposals():
    space = get_space("nb201")
    s = Bananas(space, seed=0, num_init=4, k=3, **SMALL)
    _run(s, 4, _synthetic)
    assert s.fits == 0  # the first num_init proposals are uniform samples
    for it in range(3):
        for j in range(3):
            arch = s.ask()
            assert s.fits == it + 1  # trained at the first ask of the iteration only
            assert len(s.queue) == 2 - j  # the other k - 1 proposals were queued with it
            s.tell(arch, _synthetic(arch))


def test_proposals_are_unseen_mutations_of_the_best_told_architectures():
    space = get_space("nb201")
    s = Bananas(space, seed=3, num_init=10, k=10, **SMALL)
    _run(s, 10, _synthetic)
    for _ in range(3):
        data = sorted(s.training_set(), key=lambda t: -t[1])
        parents = [a for a, _ in data[: s.num_arches_to_mutate * s.patience_factor]]
        seen = set(s.proposed)
        batch = []
        for _ in range(s.k):
            arch = s.ask()
            batch.append(arch)
            assert arch not in seen
            # exactly one decision differs from one of the top-5 told architectures
            assert any(sum(arch[d] != p[d] for d in arch) == 1 for p in parents)
        for arch in batch:
            s.tell(arch, _synthetic(arch))
    assert len(s.proposed) == 40


def test_failed_trials_are_left_out_of_training_and_never_proposed_again():
    space = get_space("nb201")
    s = Bananas(space, seed=1, num_init=6, k=4, **SMALL)
    trials = _run(s, 30, _synthetic, fail={1, 3, 11, 17})
    failed = {a for a, f in trials if f == -math.inf}
    assert len(failed) == 4
    assert not failed & {a for a, _ in s.training_set()}
    assert len(s.training_set()) == 26
    assert len({a for a, _ in trials}) == 30


def test_everything_failed_falls_back_to_uniform_samples():
    space = get_space("nb201")
    s = Bananas(space, seed=2, num_init=2, k=4, **SMALL)
    _run(s, 5, _synthetic, fail={0, 1, 2, 3, 4})
    assert s.fits == 0


def test_no_repeats_until_a_tiny_space_is_exhausted():
    space = ToySpace()
    s = Bananas(space, seed=0, num_init=3, k=5, **SMALL)
    archs = [a for a, _ in _run(s, 27, lambda a: float(sum("abc".index(o) for o in a.values())))]
    assert len(set(archs)) == 27
    with pytest.raises(BudgetError, match="every architecture"):
        s.ask()


def test_bananas_beats_random_search_on_a_fixed_nb201_landscape():
    space = get_space("nb201")
    optimum = max(_synthetic(a) for a in [space.parse(
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")])
    b_best, r_best = [], []
    for seed in range(3):
        b_best.append(max(f for _, f in _run(Bananas(space, seed=seed, **SMALL), 40, _synthetic)))
        rng = random.Random(seed)
        r_best.append(max(_synthetic(space.sample(rng)) for _ in range(40)))
    assert np.mean(b_best) > np.mean(r_best)
    assert max(b_best) == optimum
