"""BOHB: the categorical KDE, when the model is fitted, the l/g choice, concentration on good regions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from tests._toy import ToySpace

from nasforge import get_space, registry
from nasforge.errors import BudgetError, ConfigError
from nasforge.searchers.bohb import BOHB, CategoricalKDE


def test_registered_with_reference_defaults():
    assert registry.get("method", "bohb") is BOHB
    assert BOHB.multi_fidelity and not BOHB.no_repeats
    opts = BOHB.options()
    assert opts["top_n_percent"] == 15 and opts["num_samples"] == 64 and opts["random_fraction"] == 1 / 3
    assert opts["bandwidth_factor"] == 3 and opts["min_bandwidth"] == 1e-3 and opts["eta"] == 3


def test_kde_is_an_aitchison_aitken_density_with_normal_reference_bandwidth():
    data = np.array([[0, 1, 2], [0, 2, 2], [1, 1, 2], [0, 1, 2]])
    levels = np.array([3, 3, 3])
    kde = CategoricalKDE(data, levels, min_bandwidth=1e-3)
    n, d = data.shape
    raw = 1.06 * data.std(axis=0) * n ** (-1 / (4 + d))
    assert np.allclose(kde.bw, np.maximum(raw, 1e-3))
    assert kde.bw[2] == 1e-3  # all points agree: the minimum bandwidth
    grid = np.array(list(itertools.product(range(3), repeat=3)))
    assert kde.pdf(grid).sum() == pytest.approx(1.0)  # a probability mass function
    # by hand at x = (0, 1, 2): mean over the data of the product of per-decision kernels
    h = kde.pdf_bw
    k = [[1 - h[0], 1 - h[1], 1 - h[2]], [1 - h[0], h[1] / 2, 1 - h[2]],
         [h[0] / 2, 1 - h[1], 1 - h[2]], [1 - h[0], 1 - h[1], 1 - h[2]]]
    assert kde.pdf(np.array([[0, 1, 2]]))[0] == pytest.approx(np.mean([np.prod(r) for r in k]))


def test_kde_bandwidth_is_capped_where_the_kernel_is_uniform():
    data = np.array([[0], [4], [0], [4], [2]])
    kde = CategoricalKDE(data, np.array([5]))
    assert kde.bw[0] > 0.8 and kde.pdf_bw[0] == pytest.approx(0.8)
    assert np.allclose(kde.pdf(np.arange(5)[:, None]), 0.2)  # a uniform kernel
    const = CategoricalKDE(np.zeros((4, 1), dtype=int), np.array([1]))  # a one-option decision
    assert const.pdf(np.zeros((1, 1), dtype=int))[0] == pytest.approx(1.0)


def test_model_is_fitted_once_good_and_bad_sets_exceed_d():
    space = ToySpace()  # d = 3, N_min = 4: n_bad = max(4, floor(0.85 N)) rows after the best 4
    bohb = BOHB(space, seed=0, min_fidelity=1.0)
    assert bohb.min_points_in_model == 4
    for i in range(8):
        arch = bohb.ask()
        bohb.tell(arch, float(i), {})
        assert (1.0 in bohb.models) == (i + 1 >= 8), i  # 7 points leave 3 bad ones, 8 leave 4 > d
    good, bad = bohb.models[1.0]
    told = bohb.observations[1.0][0]
    assert good.data.tolist() == told[7:3:-1]  # the 4 best (highest fitness = lowest loss), best first
    assert bad.data.tolist() == told[3::-1]


def test_failed_trials_are_bad_observations():
    space = ToySpace()
    bohb = BOHB(space, seed=0, min_fidelity=1.0)
    for i in range(10):
        arch = bohb.ask()
        bohb.tell(arch, -math.inf if i < 2 else float(i), None)
    losses = bohb.observations[1.0][1]
    assert losses[:2] == [math.inf, math.inf]
    _, bad = bohb.models[1.0]
    told = bohb.observations[1.0][0]
    assert bad.data.tolist()[-2:] == told[:2]  # the worst losses, ties in order of tell


def test_model_proposal_maximises_l_over_g():
    space = ToySpace()
    # many candidates over a 27-point space: the proposal must be the best l/g of the whole space
    bohb = BOHB(space, seed=1, min_fidelity=1.0, random_fraction=0.0, num_samples=400)
    grid = [list(c) for c in itertools.product(range(3), repeat=3)]
    for i, c in enumerate(grid[:12]):  # results not proposed by BOHB count as full-budget observations
        bohb.tell(space.decode_sequence(c), float(sum(c) + 0.01 * i), {})
    good, bad = bohb.models[1.0]
    x = np.array(grid)
    ratio = np.maximum(good.pdf(x), 1e-32) / np.maximum(bad.pdf(x), 1e-32)
    proposal = space.encode_sequence(bohb.ask())
    assert bohb.model_based[-1]
    assert ratio[grid.index(proposal)] == pytest.approx(ratio.max())


def test_samples_concentrate_on_the_good_region_of_a_toy_landscape():
    space = get_space("nb201")

    def fitness(arch) -> float:  # good region: many 3x3 convolutions
        return float(sum(o == "nor_conv_3x3" for o in arch.values()))

    bohb = BOHB(space, seed=0, min_fidelity=1.0)
    model_hits, random_hits = [], []
    for _ in range(120):
        arch = bohb.ask()
        f = fitness(arch)
        if bohb.models:
            (model_hits if bohb.model_based[-1] else random_hits).append(f)
        bohb.tell(arch, f, {})
    assert len(model_hits) > 40
    assert np.mean(model_hits[-30:]) > 2.5  # uniform samples average 6/5 = 1.2
    assert np.mean(random_hits) < 2.0


def test_multi_fidelity_model_uses_the_largest_fidelity_with_a_model():
    space = ToySpace()
    bohb = BOHB(space, seed=2, min_fidelity=1 / 9)
    fids = []
    for _ in range(22 * 3):
        arch = bohb.ask()
        fid = bohb.fidelity()
        fids.append(fid)
        bohb.tell(arch, sum(space.encode_sequence(arch)) * fid, {})
    assert sorted(set(fids)) == [1 / 9, 1 / 3, 1.0]
    # 27 results at 1/9 (three first rungs) fit a model there; full budget sees 5 per iteration
    assert 1 / 9 in bohb.models
    top = max(bohb.models)
    for fid, (vectors, _) in bohb.observations.items():
        if fid < top:  # nothing stored below the largest modelled fidelity once that model exists
            assert len(vectors) <= 27


def test_bad_options_raise_typed_errors():
    space = ToySpace()
    with pytest.raises(ConfigError, match="top_n_percent"):
        BOHB(space, top_n_percent=0)
    with pytest.raises(BudgetError, match="num_samples"):
        BOHB(space, num_samples=0)
    with pytest.raises(ConfigError, match="random_fraction"):
        BOHB(space, random_fraction=1.5)
    with pytest.raises(ConfigError, match="bandwidth_factor"):
        BOHB(space, bandwidth_factor=0.5)
    with pytest.raises(BudgetError, match="min_points_in_model"):
        BOHB(space, min_points_in_model=3)
    with pytest.raises(ConfigError, match="eta"):
        BOHB(space, eta=1)
