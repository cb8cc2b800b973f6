"""REINFORCE baseline of NAS-Bench-201: per-decision logits, bias-corrected EMA baseline, Adam per trial."""

from __future__ import annotations

import inspect
import math
import random

import pytest
import torch

from nasforge import get_space
from nasforge.errors import ConfigError
from nasforge.searchers.reinforce import Reinforce

from _toy import ToySpace


def test_reference_defaults_and_options_agree():
    sig = inspect.signature(Reinforce.__init__).parameters
    assert Reinforce.options() == {k: sig[k].default for k in Reinforce.options()}
    assert Reinforce.options() == {"learning_rate": 0.01, "ema_momentum": 0.9}


def test_one_logit_vector_per_decision_initialised_near_zero():
    s = Reinforce(get_space("nb201"), seed=0)
    assert tuple(s.logits.shape) == (6, 5)  # 6 edges x 5 ops, the reference arch_parameters
    assert 0 < s.logits.abs().max() < 5e-3
    # padded decisions (darts: 1 to 10 options) put no mass outside their options
    space = get_space("darts")
    p = Reinforce(space, seed=0).probabilities()
    for row, opts in zip(p, space.decisions().values()):
        assert row[: len(opts)].sum() == pytest.approx(1.0) and row[len(opts):].sum() == 0


def test_first_trial_has_zero_advantage_as_in_the_reference():
    s = Reinforce(ToySpace(), seed=0)
    before = s.logits.detach().clone()
    s.tell(s.ask(), 80.0)
    assert s.baseline == pytest.approx(80.0)  # bias-corrected EMA of one value is that value
    assert torch.equal(s.logits.detach(), before)


def test_one_adam_step_per_trial_toward_rewarded_decisions():
    space = ToySpace()
    s = Reinforce(space, seed=0)
    s.tell(space.parse("a-a-a"), 50.0)
    before = s.logits.detach().clone()
    s.tell(space.parse("c-b-c"), 70.0)  # above the baseline: its options gain logit
    # baseline updated with the reward first (reference order): b = (0.09*50 + 0.1*70) / 0.19
    assert s.baseline == pytest.approx((0.09 * 50 + 0.1 * 70) / 0.19)
    delta = s.logits.detach() - before
    # Adam's second step (the first had a zero gradient): |step| = lr * (0.1/0.19) / sqrt(0.001/0.001999)
    step = 0.01 * (0.1 / (1 - 0.9**2)) / math.sqrt(0.001 / (1 - 0.999**2))
    chosen = [2, 1, 2]
    for d, i in enumerate(chosen):
        assert delta[d, i] == pytest.approx(step, rel=1e-4)
        for j in range(3):
            if j != i:
                assert delta[d, j] == pytest.approx(-step, rel=1e-4)
    s.tell(space.parse("c-b-c"), 10.0)  # now below the baseline: its logits fall
    assert all(s.logits[d, i] < before[d, i] + step for d, i in enumerate(chosen))


def test_failed_trials_get_the_worst_finite_reward_and_are_skipped_before_any():
    s = Reinforce(ToySpace(), seed=0)
    s.tell(s.ask(), -math.inf)
    assert s.baseline is None and s.worst_reward is None
    s.tell(s.ask(), 60.0)
    s.tell(s.ask(), 40.0)
    s.tell(s.ask(), -math.inf)  # counted as 40
    num = 0.9 * (0.9 * 0.1 * 60 + 0.1 * 40) + 0.1 * 40
    den = 0.9 * (0.9 * 0.1 + 0.1) + 0.1
    assert s.baseline == pytest.approx(num / den)


def test_learns_the_best_op_per_edge_on_nb201():
    space = get_space("nb201")
    s = Reinforce(space, seed=0)
    for _ in range(300):
        a = s.ask()
        s.tell(a, 80.0 + sum(v == "nor_conv_3x3" for v in a.values()))
    p = s.probabilities()
    opts = list(space.decisions().values())
    for d, row in enumerate(p):
        k = opts[d].index("nor_conv_3x3")
        assert row[k] > 0.4 and int(row.argmax()) == k  # from 0.2


def test_global_random_state_is_untouched():
    torch_state, py_state = torch.random.get_rng_state(), random.getstate()
    s = Reinforce(get_space("nb201"), seed=0)
    for i in range(4):
        s.tell(s.ask(), float(i))
    assert torch.equal(torch.random.get_rng_state(), torch_state) and random.getstate() == py_state


@pytest.mark.parametrize("kwargs", [{"learning_rate": -0.1}, {"ema_momentum": 1.0}, {"ema_momentum": -0.5}])
def test_bad_options_raise_config_errors(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        Reinforce(ToySpace(), seed=0, **kwargs)
