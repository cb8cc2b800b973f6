"""AlphaX MCTS (Wang et al. 2019): UCT selection, expansion, meta-DNN rollouts, backpropagation."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.stats import spearmanr

from nasforge import get_space
from nasforge.errors import BudgetError, ConfigError
from nasforge.searchers.mcts import AlphaXMCTS, _MetaDNN

from _toy import ToySpace

OPTS = ("a", "b", "c")


def _seq(arch):
    return tuple(OPTS.index(o) for o in arch.values())


def test_defaults():
    opts = AlphaXMCTS.options()
    assert opts["exploration"] == 2.0  # reference Cp
    assert opts["predicted_rollouts"] == 10 and opts["refit_every"] == 5
    assert AlphaXMCTS.no_repeats


def test_uct_value():
    s = AlphaXMCTS(ToySpace(), exploration=0.5)
    s.tree[()] = [10, 7.0]
    s.tree[(0,)] = [4, 3.0]
    s.tree[(1,)] = [0, 0.0]
    assert s.uct((), (0,)) == pytest.approx(3.0 / 4 + 2 * 0.5 * math.sqrt(2 * math.log(10) / 4))
    assert s.uct((), (1,)) == math.inf  # never backed up


def test_expansion_covers_the_root_children_before_descending():
    s = AlphaXMCTS(ToySpace(), seed=0, reward_scale=1.0)
    firsts = []
    for _ in range(3):
        arch = s.ask()
        firsts.append(_seq(arch)[0])
        s.tell(arch, 0.5)
    assert sorted(firsts) == [0, 1, 2]
    assert set(s.tree) == {(), (0,), (1,), (2,)}  # one new node per iteration, rollouts leave no node


def test_selection_takes_the_child_of_largest_uct():
    s = AlphaXMCTS(ToySpace(), seed=0, exploration=0.0)
    s.tree[()] = [30, 15.0]
    s.tree[(0,)] = [10, 3.0]
    s.tree[(1,)] = [10, 9.0]  # best mean
    s.tree[(2,)] = [10, 3.0]
    arch = s.ask()
    assert _seq(arch)[0] == 1
    assert (1, _seq(arch)[1]) in s.tree  # expanded below the selected child


def test_backpropagation_of_the_real_reward_along_the_path():
    s = AlphaXMCTS(ToySpace(), seed=0, reward_scale=1.0)
    arch = s.ask()
    node = (_seq(arch)[0],)
    s.tell(arch, 0.8)
    assert s.tree[()] == [1, pytest.approx(0.8)]
    assert s.tree[node] == [1, pytest.approx(0.8)]
    # second iteration: another root child; the root accumulates both
    arch2 = s.ask()
    s.tell(arch2, 0.2)
    assert s.tree[()] == [2, pytest.approx(1.0)]
    assert s.tree[(_seq(arch2)[0],)] == [1, pytest.approx(0.2)]


def test_simulation_averages_the_real_and_the_predicted_rewards():
    s = AlphaXMCTS(ToySpace(), seed=0, reward_scale=1.0, predicted_rollouts=4)
    s._fitted = True
    s.predictor.predict = lambda seqs: [0.3] * len(seqs)  # type: ignore[method-assign]
    arch = s.ask()
    s.tell(arch, 0.9)
    assert s.tree[()][1] == pytest.approx((0.9 + 0.3) / 2)


def test_predicted_rollouts_use_true_rewards_of_told_architectures():
    s = AlphaXMCTS(ToySpace(), seed=0, reward_scale=1.0, predicted_rollouts=50)
    s._fitted = True
    s.predictor.predict = lambda seqs: [0.0] * len(seqs)  # type: ignore[method-assign]
    for seq in [(0, a, b) for a in range(3) for b in range(3)]:
        s._told[seq] = 1.0  # every completion of node (0,) is known
    assert s._predicted((0,)) == 1.0
    assert s._predicted((1,)) == 0.0


def test_failed_trial_backs_up_the_lowest_reward_seen():
    s = AlphaXMCTS(ToySpace(), seed=0, reward_scale=1.0)
    for f in (0.7, 0.5):
        s.tell(s.ask(), f)
    w = s.tree[()][1]
    s.tell(s.ask(), -math.inf)
    assert s.tree[()][1] - w == pytest.approx(0.5)
    fresh = AlphaXMCTS(ToySpace(), seed=0)
    fresh.tell(fresh.ask(), -math.inf)
    assert fresh.tree[()][1] == 0.0  # nothing seen yet: 0


def test_reward_scale_auto_percent():
    s = AlphaXMCTS(ToySpace(), seed=0)
    s.tell(s.ask(), 90.0)
    assert s.tree[()][1] == pytest.approx(0.9)


def test_predictor_is_refitted_from_told_trials_on_schedule():
    s = AlphaXMCTS(ToySpace(), seed=0, refit_every=3, predictor_steps=5)
    for i in range(2):
        s.tell(s.ask(), 50.0 + i)
    assert not s._fitted and s.predictor.params is None
    s.tell(s.ask(), 60.0)
    assert s._fitted and s.predictor.params is not None
    assert set(s._told) == s._asked  # training data = the told trials


def test_meta_dnn_learns_a_landscape_on_nb201():
    space = get_space("nb201")
    decisions = space.decisions()
    sizes = [len(v) for v in decisions.values()]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    rng = random.Random(0)
    weights = [[rng.random() for _ in range(k)] for k in sizes]
    seqs = [[rng.randrange(k) for k in sizes] for _ in range(300)]
    ys = [sum(w[i] for w, i in zip(weights, seq)) / len(sizes) for seq in seqs]
    model = _MetaDNN(offsets, sum(sizes), hidden=64, steps=100, lr=1e-3)
    model.fit(seqs[:100], ys[:100], np.random.default_rng(0))
    rho = spearmanr(model.predict(seqs[100:]), ys[100:])[0]
    assert rho > 0.8


def test_never_repeats_and_reports_exhaustion():
    space = ToySpace()
    s = AlphaXMCTS(space, seed=2, refit_every=5, predictor_steps=5)
    seen = set()
    for _ in range(27):
        arch = s.ask()
        assert arch not in seen
        seen.add(arch)
        s.tell(arch, random.Random(space.format(arch)).random())
    with pytest.raises(BudgetError, match="exhausted"):
        s.ask()


def test_asked_but_untold_architecture_is_not_proposed_again():
    s = AlphaXMCTS(ToySpace(), seed=0)
    first = s.ask()  # the loop found it infeasible and asks again
    assert all(s.ask() != first for _ in range(10))


def test_discarded_proposal_is_backed_up_as_a_failed_trial():
    s = AlphaXMCTS(ToySpace(), seed=0, reward_scale=1.0)
    for f in (0.9, 0.6, 0.3):
        s.tell(s.ask(), f)
    first = s.ask()  # the loop found it infeasible and asks again without a tell
    n, w = s.tree[()]
    assert s.ask() != first
    assert s.tree[()][0] == n + 1 and s.tree[()][1] - w == pytest.approx(0.3)  # the lowest reward seen
    assert s.tree[(_seq(first)[0],)][0] >= 2
    s.tell(first, 1.0)  # a late tell of the discarded proposal changes no node
    assert s.tree[()] == [n + 1, pytest.approx(w + 0.3)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repeated_asks_without_tells_do_not_keep_descending_into_one_subtree(seed):
    s = AlphaXMCTS(ToySpace(), seed=seed, reward_scale=1.0)
    for f in (0.9, 0.6, 0.3):
        s.tell(s.ask(), f)
    firsts = []
    for _ in range(6):
        firsts.append(_seq(s.ask())[0])
        assert sum(stats[0] == 0 for stats in s.tree.values()) <= 1  # only the node just expanded
    assert max(firsts.count(a) for a in range(3)) <= 3  # without the backup: 6 times the same child


def test_search_concentrates_on_good_subtrees_on_nb201():
    """Synthetic nb201 landscape: the tree visits the best first-edge option most."""
    space = get_space("nb201")
    s = AlphaXMCTS(space, seed=0, exploration=0.1, predictor_steps=30)
    for _ in range(100):
        arch = s.ask()
        s.tell(arch, 100.0 * sum(o == "nor_conv_3x3" for o in arch.values()) / 6)
    best = space.decisions()[next(iter(space.decisions()))].index("nor_conv_3x3")
    visits = [s.tree[(a,)][0] for a in range(5)]
    assert visits.index(max(visits)) == best


@pytest.mark.parametrize("kwargs, error", [
    ({"exploration": -1.0}, ConfigError), ({"predicted_rollouts": -1}, BudgetError),
    ({"refit_every": 0}, BudgetError), ({"predictor_hidden": 0}, BudgetError),
    ({"predictor_steps": 1.5}, BudgetError), ({"predictor_lr": 0.0}, ConfigError),
    ({"reward_scale": 0.0}, ConfigError),
])
def test_bad_options_raise_typed_errors(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        AlphaXMCTS(ToySpace(), **kwargs)
