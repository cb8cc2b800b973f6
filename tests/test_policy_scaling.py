"""DSO-NAS pieces: the APG-NAG optimizer and the scaling-factor policy (zero factor = pruned op)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import nasforge
from nasforge.errors import ConfigError
from nasforge.nn.choice import Choice
from nasforge.policies.scaling import ScalingPolicy
from nasforge.train.apg import APG, soft_threshold


def tiny_nb201():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return nasforge.get_space("nb201").supernet(C=4, N=1, affine=False, track_running_stats=False)


def count_calls(net):  # type: ignore[no-untyped-def]
    """Forward hooks on every candidate of every Choice: (key, op) -> number of calls."""
    calls: dict[tuple[str, str], int] = {}
    for name, module in net.named_modules():
        if isinstance(module, Choice):
            key = name.rsplit(".", 1)[-1]
            for op in module.options:
                calls[(key, op)] = 0

                def hook(_m, _a, _o, k=(key, op)):  # type: ignore[no-untyped-def]
                    calls[k] += 1

                module.candidates[op].register_forward_hook(hook)
    return calls


# ---- APG-NAG ------------------------------------------------------------------------------
def test_soft_threshold() -> None:
    z = torch.tensor([1.5, -1.5, 0.25, -0.25, 0.0])
    assert soft_threshold(z, 0.5).tolist() == [1.0, -1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("nonnegative", [False, True])
def test_apg_steps_equal_the_hand_computed_update(nonnegative: bool) -> None:
    # lr 0.5, gamma 0.5 (threshold lr * gamma = 0.25), mu 0.5: every number is exact in binary
    p = torch.nn.Parameter(torch.tensor([1.0, 0.25, -0.5, 0.0]))
    opt = APG([p], lr=0.5, momentum=0.5, gamma=0.5, nonnegative=nonnegative)
    p.grad = torch.tensor([0.5, 0.25, -1.0, 0.0])
    opt.step()
    # z = p - lr g = [0.75, 0.125, 0, 0]; S(z) = [0.5, 0, 0, 0]; v1 = S(z) - p + mu * 0 = [-0.5, -0.25, 0.5, 0]
    # p1 = S(z) + mu v1 = [0.25, -0.125, 0.25, 0]
    expected1 = [0.25, 0.0, 0.25, 0.0] if nonnegative else [0.25, -0.125, 0.25, 0.0]
    assert p.detach().tolist() == expected1
    assert opt.state[p]["momentum_buffer"].tolist() == [-0.5, -0.25, 0.5, 0.0]  # the velocity is never clipped
    p.grad = torch.zeros(4)
    opt.step()
    # z = p1; S(z) = 0 everywhere; v2 = 0 - p1 + mu v1; p2 = mu v2
    if nonnegative:  # v2 = [-0.5, -0.125, 0, 0] -> p2 = [-0.25, -0.0625, 0, 0] -> clipped at 0
        assert opt.state[p]["momentum_buffer"].tolist() == [-0.5, -0.125, 0.0, 0.0]
        assert p.detach().tolist() == [0.0, 0.0, 0.0, 0.0]
    else:  # v2 = [-0.5, 0, 0, 0]: the momentum overshoots entry 0 below zero, entry 2 lands on 0 exactly
        assert opt.state[p]["momentum_buffer"].tolist() == [-0.5, 0.0, 0.0, 0.0]
        assert p.detach().tolist() == [-0.25, 0.0, 0.0, 0.0]


def test_apg_without_momentum_is_the_proximal_gradient_step() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.125]))
    opt = APG([p], lr=0.5, momentum=0.0, gamma=0.5)
    p.grad = torch.tensor([1.0, 1.0, 0.0])
    opt.step()
    assert p.detach().tolist() == soft_threshold(torch.tensor([0.5, -1.5, 0.125]), 0.25).tolist() == [0.25, -1.25, 0.0]


def test_apg_state_dict_restores_velocity_and_group_gamma() -> None:
    def make():  # type: ignore[no-untyped-def]
        p = torch.nn.Parameter(torch.tensor([1.0, 0.5, 0.25]))
        return p, APG([{"params": [p], "block": "cell"}], lr=0.1, momentum=0.9, gamma=0.3, nonnegative=True)

    p, opt = make()
    for g in ([0.5, -0.5, 0.1], [0.2, 0.2, 0.2]):
        p.grad = torch.tensor(g)
        opt.step()
    opt.param_groups[0]["gamma"] = 0.05  # as adaptive FLOPs does between steps
    q, opt2 = make()
    with torch.no_grad():
        q.copy_(p)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as through a checkpoint file: no shared buffers
    assert opt2.param_groups[0]["gamma"] == 0.05
    for param, o in ((p, opt), (q, opt2)):
        param.grad = torch.tensor([0.1, 0.1, -0.1])
        o.step()
    assert torch.equal(p, q)
    assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])


def test_apg_rejects_bad_hyper_parameters() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ConfigError, match="gamma .* must be >= 0, got -0.1"):
        APG([p], lr=0.1, gamma=-0.1)
    with pytest.raises(ConfigError, match="momentum must be in \\[0, 1\\), got 1.0"):
        APG([p], lr=0.1, momentum=1.0)
    with pytest.raises(ConfigError, match="lr must be > 0, got 0"):
        APG([p], lr=0)
    opt = APG([p], lr=0.1)
    opt.param_groups[0]["gamma"] = float("nan")
    p.grad = torch.ones(2)
    with pytest.raises(ConfigError, match="gamma"):
        opt.step()


# ---- the policy ---------------------------------------------------------------------------
def test_policy_starts_at_one_without_a_factor_for_none() -> None:
    net = tiny_nb201()
    policy = ScalingPolicy(net.choices(), exclude=("none",))
    path = policy()
    assert set(path) == set(net.choices())
    for key, options in net.choices().items():
        assert path[key].tolist() == [0.0 if op == "none" else 1.0 for op in options]
    assert [n for n, _ in policy.named_parameters()] == [f"lambdas.{k}" for k in net.choices()]
    assert policy.total() == policy.active() == 6 * 4
    with pytest.raises(ConfigError, match="init=0"):
        ScalingPolicy(net.choices(), init=0.0)
    with pytest.raises(ConfigError, match="every candidate of"):
        ScalingPolicy({"k": ("none",)}, exclude=("none",))


def test_zero_factors_are_not_executed_and_pruning_is_permanent() -> None:
    net = tiny_nb201()
    calls = count_calls(net)
    policy = ScalingPolicy(net.choices(), exclude=("none",))
    with torch.no_grad():
        policy.lambdas["edge_2_1"][3] = 0.0  # nor_conv_3x3 of edge 2<-1
        policy.lambdas["edge_3_0"].zero_()  # the whole edge
    assert policy.prune() == 24 - 1 - 4
    net(torch.randn(2, 3, 8, 8), policy())
    assert calls[("edge_2_1", "nor_conv_3x3")] == 0
    cells = sum(1 for name, m in net.named_modules() if isinstance(m, Choice) and name.endswith(".edge_2_1"))
    assert cells == 3 and calls[("edge_2_1", "nor_conv_1x1")] == cells  # N=1: one search cell per stage
    assert all(calls[("edge_3_0", op)] == 0 for op in net.choices()["edge_3_0"] if op != "none")
    # ``none`` has no factor, and a wholly pruned edge adds zeros: it is left out (sum_edges), nothing runs
    assert not {k for (k, op), n in calls.items() if op == "none" and n}
    # a revived value (e.g. by an optimizer's momentum) stays masked: the op is pruned for good
    with torch.no_grad():
        policy.lambdas["edge_2_1"][3] = 0.7
    assert float(policy()["edge_2_1"][3].detach()) == 0.0 and float(policy.strengths()["edge_2_1"][3]) == 0.0
    policy.prune()
    assert float(policy.lambdas["edge_2_1"][3].detach()) == 0.0
    # the dead set is part of the state
    fresh = ScalingPolicy(net.choices(), exclude=("none",))
    fresh.load_state_dict(policy.state_dict())
    assert fresh.active() == policy.active() == 19
    assert not bool(fresh.alive("edge_3_0").any())


def test_strong_penalty_zeroes_every_factor_and_then_nothing_runs() -> None:
    net = tiny_nb201()
    policy = ScalingPolicy(net.choices(), exclude=("none",))
    opt = APG(policy.parameters(), lr=0.1, momentum=0.9, gamma=5.0, nonnegative=True)
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    active = [policy.active()]
    for _ in range(6):
        loss = F.cross_entropy(net(x, policy()), y)
        params = list(policy.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
            p.grad = g
        opt.step()
        active.append(policy.prune())
    assert active[0] == 24 and active[-1] == 0
    assert all(a >= b for a, b in zip(active, active[1:]))
    assert all(torch.equal(t, torch.zeros_like(t)) for t in policy.lambdas.values())  # exactly zero, not small
    calls = count_calls(net)
    out = net(x, policy())
    assert sum(n for (_, op), n in calls.items() if op != "none") == 0 and torch.isfinite(out).all()
    assert nasforge.get_space("nb201").format(nasforge.get_space("nb201").derive(policy.strengths())) == (
        "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    )
