"""NAS-RL (Zoph & Le 2017): LSTM controller, REINFORCE over batches of m, moving-average baseline."""

from __future__ import annotations

import inspect
import math
import random

import pytest
import torch

from nasforge import get_space
from nasforge.errors import BudgetError, ConfigError
from nasforge.searchers.nas_rl import NASRL

from _toy import ToySpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _params(s: NASRL) -> list[torch.Tensor]:
    return [p.detach().clone() for p in s.controller.parameters()]


def test_paper_defaults_and_options_agree():
    sig = inspect.signature(NASRL.__init__).parameters
    opts = NASRL.options()
    assert opts == {k: sig[k].default for k in opts}
    assert opts["batch_size"] == 8 and opts["learning_rate"] == 6e-4 and opts["reward_power"] == 3.0
    assert (opts["lstm_size"], opts["lstm_layers"], opts["init_range"]) == (35, 2, 0.08)
    s = NASRL(get_space("nb201"), seed=0)
    assert len(s.controller.cells) == 2 and s.controller.cells[0].hidden_size == 35
    assert all(p.abs().max() <= 0.08 for p in s.controller.parameters())


def test_one_softmax_per_decision_in_canonical_order():
    space = get_space("darts")
    s = NASRL(space, seed=0)
    sizes = [len(o) for o in space.decisions().values()]
    assert s.controller.sizes == sizes
    assert [h.out_features for h in s.controller.heads] == sizes  # its own classifier per step
    arch = s.ask()
    # the sequence's probability is the product of the per-step softmaxes of the canonical decisions
    p = s.controller.probability(space.encode_sequence(arch))
    assert 0 < p < 1


def test_no_update_until_a_batch_of_m_is_told():
    space = ToySpace()
    s = NASRL(space, seed=0, batch_size=3)
    before = _params(s)
    for f in (1.0, 2.0):
        s.tell(s.ask(), f)
    assert s.updates == 0 and all(torch.equal(a, b) for a, b in zip(before, _params(s)))
    s.tell(s.ask(), 3.0)
    assert s.updates == 1 and not all(torch.equal(a, b) for a, b in zip(before, _params(s)))


def test_update_moves_probability_toward_the_sequence_above_the_baseline():
    space = ToySpace()
    good, bad = space.parse("c-c-c"), space.parse("a-a-a")
    s = NASRL(space, seed=3, batch_size=2, learning_rate=0.01)
    p_good, p_bad = (s.controller.probability(space.encode_sequence(a)) for a in (good, bad))
    s.tell(good, 0.9)
    s.tell(bad, 0.5)
    assert s.controller.probability(space.encode_sequence(good)) > p_good
    assert s.controller.probability(space.encode_sequence(bad)) < p_bad
    # baseline: first-batch mean of the cubed rewards, then the 0.95 EMA over the batch in told order
    b = (0.9**3 + 0.5**3) / 2
    for r in (0.9**3, 0.5**3):
        b = 0.95 * b + 0.05 * r
    assert s.baseline == pytest.approx(b)


def test_reward_is_the_fitness_cubed_keeping_the_sign():
    s = NASRL(ToySpace(), seed=0)
    assert s.reward(0.9) == pytest.approx(0.729)
    assert s.reward(-2.0) == pytest.approx(-8.0)
    assert s.reward(-math.inf) is None and s.reward(math.nan) is None


def test_failed_trial_gets_the_worst_finite_reward_seen():
    s = NASRL(ToySpace(), seed=0, batch_size=3, reward_power=1.0)
    for f in (90.0, -math.inf, 50.0):
        s.tell(s.ask(), f)
    assert s.worst_reward == 50.0
    b = (90 + 50 + 50) / 3  # the failure counted as 50
    for r in (90, 50, 50):
        b = 0.95 * b + 0.05 * r
    assert s.baseline == pytest.approx(b)


def test_a_batch_of_failures_before_any_success_is_skipped():
    s = NASRL(ToySpace(), seed=0, batch_size=2)
    before = _params(s)
    s.tell(s.ask(), -math.inf)
    s.tell(s.ask(), -math.inf)
    assert s.updates == 0 and s.baseline is None
    assert all(torch.equal(a, b) for a, b in zip(before, _params(s)))


def test_the_controller_concentrates_on_the_best_architecture():
    space = ToySpace()
    s = NASRL(space, seed=0, batch_size=4, learning_rate=0.01)
    archs = []
    for _ in range(160):
        a = s.ask()
        archs.append(a)
        s.tell(a, 50.0 + 10 * sum(v == "c" for v in a.values()))
    best = space.parse("c-c-c")
    assert sum(a == best for a in archs[:40]) < 25 <= sum(a == best for a in archs[-40:])


def test_global_random_state_is_untouched():
    torch_state, py_state = torch.random.get_rng_state(), random.getstate()
    s = NASRL(get_space("nb201"), seed=0, batch_size=2)
    for i in range(4):
        s.tell(s.ask(), float(i))
    assert torch.equal(torch.random.get_rng_state(), torch_state) and random.getstate() == py_state


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"batch_size": 0}, BudgetError), ({"lstm_layers": 0}, BudgetError), ({"learning_rate": 0.0}, ConfigError),
     ({"baseline_decay": 1.0}, ConfigError), ({"reward_power": -1.0}, ConfigError),
     ({"init_range": math.nan}, ConfigError)],
)
def test_bad_options_raise_typed_errors(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        NASRL(ToySpace(), seed=0, **kwargs)
