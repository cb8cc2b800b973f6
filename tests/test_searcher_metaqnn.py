"""MetaQNN (Baker et al., ICLR 2017): the Q-table, the Q-learning rule, replay, the epsilon schedule."""

from __future__ import annotations

import math
import random

import pytest

from nasforge import get_space
from nasforge.errors import BudgetError, ConfigError
from nasforge.searchers import metaqnn as mq
from nasforge.searchers.metaqnn import PAPER_EPSILON_SCHEDULE, MetaQNN

from _toy import ToySpace


def test_defaults_are_the_papers():
    opts = MetaQNN.options()
    assert opts["learning_rate"] == 0.01 and opts["discount"] == 1.0 and opts["q_init"] == 0.5
    assert opts["replay_number"] == 100 and opts["schedule_scale"] == 1.0
    assert [e for e, _ in PAPER_EPSILON_SCHEDULE] == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    assert sum(n for _, n in PAPER_EPSILON_SCHEDULE) == 2700 and PAPER_EPSILON_SCHEDULE[0] == (1.0, 1500)
    s = MetaQNN(ToySpace())
    assert s.learning_rate == 0.01 and s.discount == 1.0 and s.replay_number == 100


def test_q_table_shape_and_initial_value():
    s = MetaQNN(ToySpace())
    # depth 0: the start state only; depth i > 0: one row per option of decision i - 1
    assert [len(rows) for rows in s.q] == [1, 3, 3]
    assert all(v == 0.5 for rows in s.q for row in rows for v in row)


def test_update_follows_the_bellman_rule_terminal_first():
    s = MetaQNN(ToySpace())
    s.q[2][1] = [0.5, 0.5, 0.5]
    s.update_sequence([0, 1, 2], 0.8)
    alpha = 0.01
    q_last = 0.5 + alpha * (0.8 - 0.5)  # terminal transition: the reward, no bootstrap
    assert s.q[2][1][2] == pytest.approx(q_last)
    q_mid = 0.5 + alpha * (1.0 * max(s.q[2][1]) - 0.5)  # uses the just-updated next state (gamma = 1)
    assert s.q[1][0][1] == pytest.approx(q_mid)
    q_first = 0.5 + alpha * (max(s.q[1][0]) - 0.5)
    assert s.q[0][0][0] == pytest.approx(q_first)
    # untouched entries keep their initial value
    assert s.q[2][1][0] == 0.5 and s.q[1][2][1] == 0.5


def test_discount_scales_the_bootstrap_term():
    s = MetaQNN(ToySpace(), discount=0.5, learning_rate=0.1)
    s.q[2][0] = [0.9, 0.2, 0.1]
    s.update_sequence([1, 0, 1], 0.0)
    assert s.q[2][0][1] == pytest.approx(0.2 + 0.1 * (0.0 - 0.2))
    assert s.q[1][1][0] == pytest.approx(0.5 + 0.1 * (0.5 * 0.9 - 0.5))


def test_tell_replays_sampled_trials_with_normalised_reward():
    space = ToySpace()
    s = MetaQNN(space, replay_number=1)
    arch = s.ask()
    seq = [("a", "b", "c").index(o) for o in arch.values()]
    s.tell(arch, 80.0)  # an accuracy in %: reward 0.8
    assert s.replay == [(tuple(seq), 80.0)]
    assert s.q[2][seq[1]][seq[2]] == pytest.approx(0.5 + 0.01 * (0.8 - 0.5))

    none = MetaQNN(space, replay_number=0)
    a = none.ask()
    none.tell(a, 80.0)
    assert all(v == 0.5 for rows in none.q for row in rows for v in row)  # no replay, no update


def test_failed_trial_gets_reward_zero():
    s = MetaQNN(ToySpace(), replay_number=1)
    arch = s.ask()
    seq = [("a", "b", "c").index(o) for o in arch.values()]
    s.tell(arch, -math.inf)
    assert s.reward(-math.inf) == 0.0
    assert s.q[2][seq[1]][seq[2]] == pytest.approx(0.5 + 0.01 * (0.0 - 0.5))


def test_reward_scale():
    s = MetaQNN(ToySpace())
    assert s.reward(0.7) == 0.7  # no fitness > 1 seen yet: already in [0, 1]
    s.tell(s.ask(), 93.0)
    assert s.reward(93.0) == pytest.approx(0.93)
    assert MetaQNN(ToySpace(), reward_scale=10.0).reward(5.0) == 0.5


def test_epsilon_schedule_and_its_scaling():
    s = MetaQNN(ToySpace())
    assert s._phase_ends == [1500, 1600, 1700, 1800, 1950, 2100, 2250, 2400, 2550, 2700]
    scaled = MetaQNN(get_space("nb201"), schedule_scale=150 / 2700)
    assert scaled._phase_ends[0] == 83 and scaled._phase_ends[-1] == 150
    short = MetaQNN(get_space("nb201"), epsilon_schedule=[(1.0, 2), (0.5, 1), (0.0, 1)], replay_number=0)
    seen = []
    for _ in range(6):
        seen.append(short.epsilon())
        short.tell(short.ask(), 50.0)
    assert seen == [1.0, 1.0, 0.5, 0.0, 0.0, 0.0]  # the last epsilon continues after the schedule


def test_greedy_walk_follows_the_largest_q():
    s = MetaQNN(ToySpace(), epsilon_schedule=[(0.0, 10)])
    s.q[0][0] = [0.1, 0.9, 0.2]
    s.q[1][1] = [0.3, 0.1, 0.8]
    s.q[2][2] = [0.7, 0.2, 0.1]
    assert list(s.ask().values()) == ["b", "c", "a"]


def test_q_learning_learns_the_rewarded_options():
    space = ToySpace()
    s = MetaQNN(space, seed=3, epsilon_schedule=[(1.0, 20), (0.0, 7)])
    for _ in range(20):
        arch = s.ask()
        s.tell(arch, 100.0 * sum(o == "c" for o in arch.values()) / 3)  # option c is best everywhere
    greedy = []
    prev = 0
    for rows in s.q:
        row = rows[prev]
        prev = row.index(max(row))
        greedy.append(prev)
    assert greedy == [2, 2, 2]


def test_resampling_a_trained_architecture_replays_it_instead():
    space = ToySpace()
    s = MetaQNN(space, epsilon_schedule=[(0.0, 10)], replay_number=0)
    s.q[0][0] = [1.0, 0.0, 0.0]
    s.q[1][0] = [1.0, 0.0, 0.0]
    s.q[2][0] = [1.0, 0.0, 0.0]
    first = s.ask()
    assert list(first.values()) == ["a", "a", "a"]
    s.tell(first, 50.0)
    second = s.ask()  # the greedy walk keeps giving a-a-a: replayed each time, then a new one
    assert second != first
    assert len(s.replay) == 1 + mq._MAX_DRAWS and all(seq == (0, 0, 0) for seq, _ in s.replay)


def test_never_repeats_and_reports_exhaustion():
    space = ToySpace()
    s = MetaQNN(space, seed=1, replay_number=2)
    seen = set()
    for _ in range(27):
        arch = s.ask()
        assert arch not in seen
        seen.add(arch)
        s.tell(arch, random.Random(space.format(arch)).random())
    with pytest.raises(BudgetError, match="exhausted"):
        s.ask()


def test_learns_on_nb201():
    """A synthetic nb201 landscape (share of conv 3x3 edges): greedy phases beat the random phase."""
    space = get_space("nb201")
    s = MetaQNN(space, seed=0, schedule_scale=120 / 2700)
    fits = []
    for _ in range(120):
        arch = s.ask()
        f = 100.0 * sum(o == "nor_conv_3x3" for o in arch.values()) / 6
        s.tell(arch, f)
        fits.append(f)
    assert sum(fits[-30:]) / 30 > sum(fits[:60]) / 60 + 5  # 26.1 vs 17.8 (random: 16.7)


@pytest.mark.parametrize("kwargs, error", [
    ({"learning_rate": 0.0}, ConfigError), ({"learning_rate": 1.5}, ConfigError),
    ({"discount": -0.1}, ConfigError), ({"replay_number": -1}, BudgetError),
    ({"replay_number": 2.5}, BudgetError), ({"schedule_scale": 0}, ConfigError),
    ({"epsilon_schedule": []}, ConfigError), ({"epsilon_schedule": [(1.2, 10)]}, ConfigError),
    ({"epsilon_schedule": [(0.5, 0)]}, ConfigError), ({"reward_scale": -1.0}, ConfigError),
])
def test_bad_options_raise_typed_errors(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs)).split("_")[0]):
        MetaQNN(ToySpace(), **kwargs)
