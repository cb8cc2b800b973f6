"""MnasNet search: reward ACC x (LAT/T)^w, PPO (clipped surrogate) on the NAS-RL LSTM controller."""

from __future__ import annotations

import inspect
import math
import random

import pytest
import torch

from nasforge import get_space
from nasforge.errors import BudgetError, ConfigError
from nasforge.searchers._controller import LSTMController
from nasforge.searchers.mnasnet_ppo import MnasNetPPO, clipped_surrogate

from _toy import WIDTHS, ToySpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _latency(arch) -> float:
    return float(sum(WIDTHS[v] for v in arch.values()))  # 12 .. 48


def test_defaults_and_options_agree():
    sig = inspect.signature(MnasNetPPO.__init__).parameters
    opts = MnasNetPPO.options()
    assert opts == {k: sig[k].default for k in opts}
    assert (opts["mode"], opts["clip"], opts["learning_rate"], opts["baseline_decay"]) == ("soft", 0.2, 3.5e-4, 0.95)
    assert opts["latency_metric"] == "hwnb_pixel3_latency_ms" and opts["accuracy_metric"] == "val_acc"
    s = MnasNetPPO(get_space("nb201"), seed=0, target=5.0)
    assert isinstance(s.controller, LSTMController)  # the same controller class as nas_rl
    assert len(s.controller.cells) == 1 and s.controller.cells[0].hidden_size == 100


def test_required_metrics_are_accuracy_and_latency():
    s = MnasNetPPO(ToySpace(), seed=0, target=5.0, accuracy_metric="acc", latency_metric="flops")
    assert s.required_metrics() == ("acc", "flops")
    assert MnasNetPPO(ToySpace(), seed=0, target=5.0).required_metrics() == ("val_acc", "hwnb_pixel3_latency_ms")


@pytest.mark.parametrize(
    ("mode", "lat", "expected"),
    [("soft", 20.0, 0.8 * 2**-0.07), ("soft", 5.0, 0.8 * 0.5**-0.07), ("soft", 10.0, 0.8),
     ("hard", 20.0, 0.8 * 0.5), ("hard", 5.0, 0.8), ("hard", 10.0, 0.8)],
)
def test_reward_is_acc_times_latency_ratio_to_the_power_w(mode, lat, expected):
    s = MnasNetPPO(ToySpace(), seed=0, target=10.0, mode=mode, latency_metric="lat")
    assert s.reward(123.0, {"val_acc": 0.8, "lat": lat}) == pytest.approx(expected)  # fitness is not used


def test_failed_trial_gets_reward_zero_without_metrics():
    s = MnasNetPPO(ToySpace(), seed=0, target=10.0)
    assert s.reward(-math.inf, None) == 0.0 and s.reward(math.nan, {}) == 0.0


def test_missing_or_bad_metrics_raise():
    s = MnasNetPPO(ToySpace(), seed=0, target=10.0, latency_metric="lat")
    with pytest.raises(ConfigError, match="lat"):
        s.tell(s.ask(), 70.0, {"val_acc": 70.0})
    with pytest.raises(ConfigError, match="lat"):
        s.reward(70.0, {"val_acc": 70.0, "lat": 0.0})


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    [({}, ConfigError, "target"), ({"target": 0.0}, ConfigError, "target"), ({"target": -3}, ConfigError, "target"),
     ({"target": 5.0, "mode": "medium"}, ConfigError, "mode"), ({"target": 5.0, "clip": 1.5}, ConfigError, "clip"),
     ({"target": 5.0, "ppo_epochs": 0}, BudgetError, "ppo_epochs"),
     ({"target": 5.0, "latency_metric": ""}, ConfigError, "latency_metric")],
)
def test_bad_options_raise_typed_errors(kwargs, error, word):
    with pytest.raises(error, match=word):
        MnasNetPPO(ToySpace(), seed=0, **kwargs)


def test_clipped_surrogate_stops_the_gradient_outside_the_trust_region():
    old = torch.zeros(4)
    # ratios 1.5 (A > 0: clipped), 0.5 (A < 0: clipped), 1.1 and 0.9 (inside: ratio * A)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.9])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0])
    value = clipped_surrogate(logp, old, adv, 0.2)
    assert value.item() == pytest.approx((1.2 * 1 + 0.8 * -1 + 1.1 * 2 + 0.9 * -2) / 4)
    value.backward()
    assert logp.grad is not None
    assert logp.grad[0] == 0 and logp.grad[1] == 0
    assert logp.grad[2] == pytest.approx(1.1 * 2 / 4) and logp.grad[3] == pytest.approx(0.9 * -2 / 4)
    # on the pessimistic side the clip does not apply: a ratio of 0.5 with A > 0 still gets its gradient
    logp2 = torch.log(torch.tensor([0.5])).requires_grad_()
    clipped_surrogate(logp2, torch.zeros(1), torch.tensor([1.0]), 0.2).backward()
    assert logp2.grad is not None and logp2.grad[0] == pytest.approx(0.5)


def test_each_batch_gets_ppo_epochs_adam_steps_and_the_baseline_follows_the_rewards():
    space = ToySpace()
    s = MnasNetPPO(space, seed=0, target=20.0, mode="hard", latency_metric="lat", batch_size=3, ppo_epochs=4)
    rewards = []
    for _ in range(6):
        a = s.ask()
        s.tell(a, 70.0, {"val_acc": 70.0, "lat": _latency(a)})
        rewards.append(s.reward(70.0, {"val_acc": 70.0, "lat": _latency(a)}))
    assert s.updates == 2
    state = s.optimizer.state[next(iter(s.controller.parameters()))]
    assert int(state["step"]) == 8
    b = sum(rewards[:3]) / 3
    for r in rewards:
        b = 0.95 * b + 0.05 * r
    assert s.baseline == pytest.approx(b)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_share_of_proposals_meeting_the_target_rises(mode):
    """Accuracy constant, latency a function of the arch: the reward only favours fast archs."""
    space = ToySpace()
    target = 20.0  # 7 of the 27 archs have latency <= 20
    s = MnasNetPPO(space, seed=1, target=target, mode=mode, latency_metric="lat")
    meets = []
    for _ in range(160):
        a = s.ask()
        lat = _latency(a)
        meets.append(lat <= target)
        s.tell(a, 70.0, {"val_acc": 70.0, "lat": lat})
    first, last = sum(meets[:40]) / 40, sum(meets[-40:]) / 40
    assert first < 0.5 and last >= 0.85


def test_global_random_state_is_untouched():
    torch_state, py_state = torch.random.get_rng_state(), random.getstate()
    s = MnasNetPPO(get_space("nb201"), seed=0, target=5.0, batch_size=2, ppo_epochs=2)
    for i in range(4):
        s.tell(s.ask(), 70.0, {"val_acc": 70.0, "hwnb_pixel3_latency_ms": 1.0 + i})
    assert torch.equal(torch.random.get_rng_state(), torch_state) and random.getstate() == py_state
