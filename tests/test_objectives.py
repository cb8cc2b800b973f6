"""Rewards, losses and hard limits on hardware cost (nasforge.hardware.objectives), and what an
unmeetable cost limit says about the closest proposal."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nasforge.errors import BudgetError, ConfigError
from nasforge.experiment import SearchConfig, _ask_feasible, _Feasibility, run_search
from nasforge.hardware.objectives import (
    Constraint,
    FBNetLoss,
    HardLimit,
    MnasNetReward,
    ProxylessLoss,
    parse_constraint,
)
from nasforge.searchers.mnasnet_ppo import MnasNetPPO

from _toy import WIDTHS, ToySpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LATENCIES = [1.5, 2.0, 5.0, 9.9, 10.0, 10.1, 20.0, 80.0, 300.0]


# ---- hard limits -------------------------------------------------------------------------------


def test_hard_limit_is_the_search_loops_constraint_class():
    import nasforge.experiment
    import nasforge.hardware

    assert Constraint is HardLimit is nasforge.experiment.Constraint is nasforge.hardware.HardLimit
    assert nasforge.experiment.parse_constraint is parse_constraint
    c = HardLimit.parse("params <= 1.5M")
    assert c == HardLimit("params", "<=", 1.5e6) and str(c) == "params<=1.5e+06" and c.upper
    assert c.ok(1.5e6) and not c.ok(1.6e6) and not c.ok(math.nan)
    assert HardLimit("val_acc", ">", 90).ok_for({"val_acc": 91.0}) and not HardLimit("val_acc", ">", 90).upper
    assert not parse_constraint("latency_ms<7.5").ok_for({"latency_ms": 7.5, "params": 3.0})


@pytest.mark.parametrize(("args", "error", "match"), [
    (("params", "==", 3.0), ConfigError, "one of <=, <, >=, >"),
    (("2params", "<=", 3.0), ConfigError, "must be a name"),
    (("params", "<=", math.nan), ConfigError, "finite"),
    (("flops", "<=", 0.0), BudgetError, "never be met: flops is always > 0"),
    (("latency_ms", "<", -1.0), BudgetError, "never be met"),
])
def test_bad_hard_limits_raise_typed_errors(args, error, match):
    with pytest.raises(error, match=match):
        HardLimit(*args)


def test_a_limit_on_a_metric_nobody_reported_names_the_reported_ones():
    with pytest.raises(ConfigError, match=r"'latency_ms' was not reported; valid: flops, params"):
        HardLimit("latency_ms", "<=", 5).ok_for({"params": 1.0, "flops": 2.0})


# ---- MnasNet -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "lat", "expected"), [
    # Eq. 2 by hand: ACC = 0.8, T = 10; w = alpha below or at T, beta above
    ("soft", 20.0, 0.8 * 2 ** -0.07), ("soft", 5.0, 0.8 * 0.5 ** -0.07), ("soft", 10.0, 0.8),
    ("hard", 20.0, 0.4), ("hard", 5.0, 0.8), ("hard", 10.0, 0.8),
])
def test_mnasnet_reward_matches_eq_2(mode, lat, expected):
    r = MnasNetReward.from_mode(10.0, mode)
    assert r.reward(0.8, lat) == pytest.approx(expected)
    s = MnasNetPPO(ToySpace(), seed=0, target=10.0, mode=mode, latency_metric="lat")
    assert s.reward(1.0, {"val_acc": 0.8, "lat": lat}) == r.reward(0.8, lat)  # the searcher uses the object


def test_mnasnet_reward_defaults_are_the_soft_constraint():
    assert MnasNetReward(75.0) == MnasNetReward.from_mode(75.0, "soft") == MnasNetReward(75.0, -0.07, -0.07)
    assert MnasNetReward.from_mode(75.0, "hard") == MnasNetReward(75.0, 0.0, -1.0)
    assert MnasNetReward(75.0).reward(0.8, 150.0) == pytest.approx(0.8 * 0.952638, rel=1e-6)  # 2**-0.07
    # ProxylessNAS' REINFORCE reward acc * (ref / LAT) ** 0.1 is the same shape with w = -0.1
    assert MnasNetReward(80.0, -0.1, -0.1).reward(0.7, 60.0) == pytest.approx(0.7 * (80 / 60) ** 0.1)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_more_latency_never_raises_the_mnasnet_reward(mode):
    r = MnasNetReward.from_mode(10.0, mode)
    rewards = [r.reward(0.75, lat) for lat in LATENCIES]
    assert all(a >= b for a, b in zip(rewards, rewards[1:]))
    assert rewards[-1] < rewards[0]
    if mode == "hard":  # no reward for being faster than the target, a penalty beyond it
        assert len({r.reward(0.75, lat) for lat in LATENCIES if lat <= 10.0}) == 1


@pytest.mark.parametrize(("make", "match"), [
    (lambda: MnasNetReward(0.0), "target"), (lambda: MnasNetReward(-5.0), "target"),
    (lambda: MnasNetReward(math.nan), "target"), (lambda: MnasNetReward(10.0, alpha=math.inf), "alpha"),
    (lambda: MnasNetReward.from_mode(10.0, "medium"), "mode must be one of soft, hard"),
    (lambda: MnasNetReward(10.0).reward(0.8, 0.0), "latency must be finite and > 0"),
    (lambda: MnasNetReward(10.0).reward(0.8, -1.0), "latency"),
    (lambda: MnasNetReward(10.0).reward(0.8, math.nan), "latency"),
    (lambda: MnasNetReward(10.0).reward(math.nan, 5.0), "accuracy"),
])
def test_mnasnet_bad_values_raise_config_errors(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


# ---- FBNet ---------------------------------------------------------------------------------------


def test_fbnet_loss_matches_eq_2():
    f = FBNetLoss()
    assert (f.alpha, f.beta) == (0.2, 0.6)
    # CE = 2, LAT = 20 ms: 2 * 0.2 * ln(20) ** 0.6 = 0.4 * 2.995732 ** 0.6 = 0.4 * 1.931532
    assert f.loss(2.0, 20.0) == pytest.approx(0.772613, rel=1e-5)
    assert FBNetLoss(1.0, 1.0).loss(1.0, math.e ** 3) == pytest.approx(3.0)
    t = f.loss(torch.tensor(2.0, dtype=torch.float64), torch.tensor(20.0, dtype=torch.float64))
    assert isinstance(t, torch.Tensor) and t.item() == pytest.approx(f.loss(2.0, 20.0))


def test_more_latency_never_lowers_the_fbnet_loss():
    losses = [FBNetLoss().loss(1.3, lat) for lat in LATENCIES]
    assert all(a < b for a, b in zip(losses, losses[1:]))


def test_fbnet_gradient_is_the_analytic_derivative_through_an_expected_latency():
    f, ce = FBNetLoss(), 1.7
    # expected latency of one layer from a lookup table: sum_i p_i * LAT_i
    table = torch.tensor([4.0, 9.0, 15.0], dtype=torch.float64)
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64, requires_grad=True)
    lat = probs @ table
    lat.retain_grad()
    f.loss(ce, lat).backward()
    x = lat.item()
    dlat = ce * f.alpha * f.beta * math.log(x) ** (f.beta - 1) / x
    assert lat.grad is not None and probs.grad is not None
    assert lat.grad.item() == pytest.approx(dlat, rel=1e-10)
    assert torch.allclose(probs.grad, dlat * table)
    ce_t = torch.tensor(ce, dtype=torch.float64, requires_grad=True)
    f.loss(ce_t, torch.tensor(x, dtype=torch.float64)).backward()
    assert ce_t.grad is not None and ce_t.grad.item() == pytest.approx(f.alpha * math.log(x) ** f.beta)


@pytest.mark.parametrize("lat", [1.0, 0.5, 0.0, -3.0, math.nan, math.inf,
                                 torch.tensor([5.0, math.nan]), torch.tensor([0.9, 3.0])])
def test_fbnet_refuses_latencies_its_log_power_cannot_take(lat):
    with pytest.raises(ConfigError, match=r"latency must be finite and > 1 \(FBNet.*smaller unit"):
        FBNetLoss().loss(2.0, lat)


@pytest.mark.parametrize("kw", [{"alpha": 0.0}, {"beta": -0.6}, {"alpha": math.nan}])
def test_fbnet_bad_constants_raise(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        FBNetLoss(**kw)


# ---- ProxylessNAS --------------------------------------------------------------------------------


def test_proxyless_mul_log_matches_the_reference_code():
    p = ProxylessLoss(80.0)
    assert (p.form, p.alpha, p.beta) == ("mul#log", 0.2, 0.3)
    # alpha * CE * (ln LAT / ln ref) ** beta = 0.4 * (4.094345 / 4.382027) ** 0.3 = 0.4 * 0.979835
    assert p.loss(2.0, 60.0) == pytest.approx(0.391934, rel=1e-5)
    assert p.loss(2.0, 80.0) == pytest.approx(0.2 * 2.0)  # at the reference: alpha * CE


def test_proxyless_add_linear_matches_the_reference_code():
    p = ProxylessLoss(80.0, form="add#linear")
    assert p.lambda_ == 0.1
    assert p.loss(2.0, 60.0) == pytest.approx(2.0 + 0.1 * (60 - 80) / 80)  # 1.975
    assert p.loss(2.0, 80.0) == 2.0
    assert ProxylessLoss(0.5, form="add#linear", lambda_=0.2).loss(1.0, 0.25) == pytest.approx(0.9)


@pytest.mark.parametrize("form", ProxylessLoss.FORMS)
def test_more_latency_never_lowers_the_proxyless_loss(form):
    losses = [ProxylessLoss(80.0, form=form).loss(1.3, lat) for lat in LATENCIES]
    assert all(a < b for a, b in zip(losses, losses[1:]))


@pytest.mark.parametrize("form", ProxylessLoss.FORMS)
def test_proxyless_gradient_is_the_analytic_derivative(form):
    p, ce, x, ref = ProxylessLoss(80.0, form=form), 1.7, 55.0, 80.0
    lat = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    p.loss(ce, lat).sum().backward()
    if form == "mul#log":
        expected = p.alpha * ce * p.beta * (math.log(x) / math.log(ref)) ** (p.beta - 1) / (x * math.log(ref))
    else:
        expected = p.lambda_ / ref
    assert lat.grad is not None and lat.grad.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: ProxylessLoss(80.0, form="mul#exp"), "form must be one of mul#log, add#linear"),
    (lambda: ProxylessLoss(0.0), "ref"), (lambda: ProxylessLoss(1.0), r"ref \(for mul#log\)"),
    (lambda: ProxylessLoss(-2.0, form="add#linear"), "ref"),
    (lambda: ProxylessLoss(80.0, beta=0.0), "beta"), (lambda: ProxylessLoss(80.0, lambda_=-1.0), "lambda_"),
    (lambda: ProxylessLoss(80.0).loss(2.0, 0.7), "latency must be finite and > 1"),
    (lambda: ProxylessLoss(80.0, form="add#linear").loss(2.0, 0.0), "latency must be finite and > 0"),
    (lambda: ProxylessLoss(80.0, form="add#linear").loss(2.0, torch.tensor(math.nan)), "got nan"),
])
def test_proxyless_bad_values_raise_config_errors(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


# ---- an unmeetable cost limit says what the closest proposal measured ---------------------------


def _feasibility(limit: str, **kw) -> _Feasibility:
    return _Feasibility(ToySpace(), [parse_constraint(limit)], (3, 8, 8), 10, {}, **kw)


def _closest_message(feasible: _Feasibility) -> str:
    from nasforge.searchers.random_search import RandomSearch

    with pytest.raises(BudgetError) as err:
        _ask_feasible(RandomSearch(ToySpace(), seed=0), feasible, feasible.pre)
    return str(err.value)


def test_an_unmet_params_limit_says_the_smallest_params_measured():
    from nasforge.hardware.cost import count_params

    space = ToySpace()
    smallest = min(count_params(space.build(space.parse(f"{a}-{b}-{c}"), num_classes=10, in_channels=3))
                   for a in WIDTHS for b in WIDTHS for c in WIDTHS)
    message = _closest_message(_feasibility("params<=10"))
    assert f"rejected: 1000 by params<=10); params<=10: the smallest params of the 1000 proposals it rejected " \
           f"was {smallest:,}; relax" in message
    assert "the largest params of the 1000 proposals it rejected was" in _closest_message(_feasibility("params>=1G"))


def test_an_unmet_latency_target_says_what_the_fastest_proposal_measured(tmp_path):
    # measured latencies come from the run's cost cache (as on resume), so the test is deterministic
    cache = tmp_path / "costs.json"
    costs = {}
    for a in WIDTHS:
        for b in WIDTHS:
            for c in WIDTHS:
                width = WIDTHS[a] + WIDTHS[b] + WIDTHS[c]  # 12 .. 48
                costs[f"{a}-{b}-{c}"] = {"params": 1.0, "flops": 2.0, "macs": 1.0, "latency_ms": 0.5 * width + 1.3}
    cache.write_text(json.dumps(costs))
    message = _closest_message(_feasibility("latency_ms<=5", cache_path=cache))
    assert "latency_ms<=5: the fastest of the 1000 proposals it rejected measured 7.3 ms" in message
    assert json.loads(cache.read_text()) == costs  # nothing measured, nothing lost


def test_the_search_loop_reports_the_smallest_rejected_proposal(tmp_path):
    with pytest.raises(BudgetError, match=r"params<=10: the smallest params of the 1000 proposals it rejected "
                                          r"was 410;"):  # all-4-channel toy net on 1x8x8 digits, 10 classes
        run_search(SearchConfig(space="toy_test", method="random", trials=2, constraints=["params<=10"],
                                out=str(tmp_path / "run")), progress=False, log=lambda s: None)
