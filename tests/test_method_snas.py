"""SNAS: single-level joint update from the training loss, tau annealing, resource penalty."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Subset

import nasforge
from _oneshot import NETS, killed_after
from nasforge import registry
from nasforge.errors import ConfigError
from nasforge.methods import snas as snas_mod
from nasforge.methods.snas import SnasConfig, candidate_costs, concrete_log_prob, snas, snas_tau
from nasforge.policies import GumbelPolicy
from nasforge.train.oneshot import OneShotContext

FAST = {"batch_size": 16}




def make_ctx(splits: tuple[Any, Any], space: str = "nb201", **kwargs: Any) -> OneShotContext:
    train, valid = splits
    kwargs.setdefault("max_batches_per_epoch", 2)
    kwargs.setdefault("valid_set", valid)
    return OneShotContext(
        space=nasforge.get_space(space), train_set=train, num_classes=10, input_shape=(1, 8, 8),
        supernet_kwargs=NETS[space], log=lambda _: None, **kwargs,
    )


def capture(monkeypatch: pytest.MonkeyPatch, ctx: OneShotContext) -> dict[str, Any]:
    """Record the supernet and policy the search builds, and a copy of their initial state."""
    got: dict[str, Any] = {}
    build = ctx.supernet

    def supernet(**overrides: Any) -> Any:
        net = build(**overrides)
        got["supernet"], got["weights0"] = net, [p.detach().clone() for p in net.parameters()]
        got["forwards"] = 0

        def count(*_: Any) -> None:
            got["forwards"] += 1

        net.register_forward_hook(count)
        return net

    class SpyPolicy(GumbelPolicy):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            got["policy"], got["alphas0"] = self, [p.detach().clone() for p in self.parameters()]

    monkeypatch.setattr(ctx, "supernet", supernet)
    monkeypatch.setattr(snas_mod, "GumbelPolicy", SpyPolicy)
    return got


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k], sb[k]) for k in sa if isinstance(sa[k], torch.Tensor)
    )


def test_registered() -> None:
    assert registry.get("method", "snas") is snas
    assert snas.config_cls is SnasConfig


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_one_step_updates_weights_and_alpha_from_one_training_forward(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, space: str,
) -> None:
    ctx = make_ctx(splits, space, max_batches_per_epoch=1)
    got = capture(monkeypatch, ctx)
    torch.manual_seed(0)
    snas(ctx, epochs=1, **FAST)
    assert got["forwards"] == 1  # a single forward (and backward) did the whole step
    alphas = list(got["policy"].parameters())
    # every candidate ran under the soft sample, so every logit of every edge moved
    for a0, a in zip(got["alphas0"], alphas):
        assert bool((a0 != a.detach()).all())
    changed = [not torch.equal(w0, w) for w0, w in zip(got["weights0"], got["supernet"].parameters())]
    assert sum(changed) > 0.9 * len(changed)


def test_validation_split_is_never_used(splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    runs = []
    other = Subset(splits[0], range(5))  # different content and fewer images than one batch
    for valid in (splits[1], other):
        with monkeypatch.context() as m:
            ctx = make_ctx(splits, valid_set=valid)
            got = capture(m, ctx)
            torch.manual_seed(0)
            res = snas(ctx, epochs=2, resource_weight=1.0, **FAST)
            runs.append((got, res))
    (a, ra), (b, rb) = runs
    assert states_equal(a["policy"], b["policy"]) and states_equal(a["supernet"], b["supernet"])
    assert ra.strengths == rb.strengths
    assert [h["train_loss"] for h in ra.history] == [h["train_loss"] for h in rb.history]


def test_tau_schedules() -> None:
    cfg = SnasConfig(epochs=4)
    # reference Temp_Scheduler: stepped before epoch 0, linear to tau_min at the last epoch
    assert [snas_tau(e, cfg) for e in range(4)] == pytest.approx([0.7575, 0.515, 0.2725, 0.03])
    assert snas_tau(0, SnasConfig()) == pytest.approx(0.03 + 0.97 * (1 - 1 / 150))
    exp = SnasConfig(epochs=200, tau_schedule="exponential", tau_decay=0.97)
    assert snas_tau(0, exp) == 1.0
    assert snas_tau(10, exp) == pytest.approx(0.97 ** 10)
    assert snas_tau(199, exp) == 0.03  # clipped at tau_min


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_end_to_end(splits: tuple[Any, Any], space: str) -> None:
    ctx = make_ctx(splits, space)
    torch.manual_seed(0)
    res = snas(ctx, epochs=2, resource_weight=0.5, resource="flops", **FAST)
    sp = ctx.space
    assert [h["tau"] for h in res.history] == pytest.approx([0.03 + 0.97 / 2, 0.03])
    for h in res.history:
        for key in ("train_loss", "train_acc", "resource", "expected_cost", "lr"):
            assert math.isfinite(h[key]), key
        assert "valid_loss" not in h
        sp.parse(h["arch"])
    strengths = {k: torch.tensor(v) for k, v in res.strengths.items()}
    assert all(float(v.sum()) == pytest.approx(1.0, abs=1e-5) for v in strengths.values())
    assert res.arch == sp.derive(strengths)
    assert sp.format(res.arch) == res.history[-1]["arch"]
    assert res.info["resource"] == "flops" and res.info["derived_cost"] >= 0


def test_concrete_log_prob_is_the_gumbel_softmax_density() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5)
    dist = torch.distributions.RelaxedOneHotCategorical(torch.tensor(0.6), logits=logits)
    for _ in range(3):
        z = dist.sample()
        assert float(concrete_log_prob(logits, z, 0.6)) == pytest.approx(float(dist.log_prob(z)), rel=1e-4)


def test_candidate_costs_of_nb201(splits: tuple[Any, Any]) -> None:
    net = make_ctx(splits).supernet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = candidate_costs(net, (1, 8, 8), "params")
    flops = candidate_costs(net, (1, 8, 8), "flops")
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # N=1: one cell per stage at C = 4, 8, 16 channels and 8x8, 4x4, 2x2; BN without affine
    conv1 = sum(c * c for c in (4, 8, 16))
    hw = {4: 64, 8: 16, 16: 4}
    for key in net.choices():  # none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
        assert params[key].tolist() == pytest.approx([0, 0, conv1 / 1e6, 9 * conv1 / 1e6, 0])
        assert flops[key].tolist() == pytest.approx(
            [0, 0, sum(2 * c * c * hw[c] for c in hw) / 1e6, sum(18 * c * c * hw[c] for c in hw) / 1e6,
             0]  # pools are counted as pools (0 FLOPs), not as the depthwise convolution the fast path runs
        )
    with pytest.raises(ConfigError, match="latency"):
        candidate_costs(net, (1, 8, 8), "latency")


@pytest.mark.parametrize("estimator", ["policy_gradient", "reparametrization", "discrete"])
def test_resource_penalty_derives_a_cheaper_cell(splits: tuple[Any, Any], estimator: str) -> None:
    sp = nasforge.get_space("nb201")

    def derived_params(resource_weight: float) -> int:
        torch.manual_seed(0)
        res = snas(
            make_ctx(splits, max_batches_per_epoch=3), epochs=4, arch_lr=0.05, resource_weight=resource_weight,
            resource_estimator=estimator, **FAST,
        )
        net = sp.build(res.arch, C=4, N=1, num_classes=10, in_channels=1)
        return sum(p.numel() for p in net.parameters())

    free, constrained = derived_params(0.0), derived_params(1e4)
    assert constrained < free


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    opts = {"epochs": 3, "resource_weight": 1.0, **FAST}
    with monkeypatch.context() as m:
        ctx = make_ctx(splits, run_dir=tmp_path / "full", checkpoint_every=1)
        full = capture(m, ctx)
        torch.manual_seed(0)
        ref = snas(ctx, **opts)

    with killed_after(monkeypatch, 3):  # mid-epoch 1
        torch.manual_seed(0)
        snas(make_ctx(splits, run_dir=tmp_path / "killed", checkpoint_every=1), **opts)
    with monkeypatch.context() as m:
        ctx = make_ctx(splits, run_dir=tmp_path / "killed", checkpoint_every=1)
        again = capture(m, ctx)
        torch.manual_seed(123)  # the resumed run must not depend on the caller's RNG
        res = snas(ctx, **opts)
    assert states_equal(full["policy"], again["policy"])
    assert states_equal(full["supernet"], again["supernet"])
    assert res.strengths == ref.strengths
    assert [h["train_loss"] for h in res.history] == [h["train_loss"] for h in ref.history]


@pytest.mark.parametrize(("options", "needle"), [
    ({"tau0": 0.01}, "tau0=0.01"),
    ({"tau_min": 0.0}, "tau_min=0.0"),
    ({"tau0": float("nan")}, "tau0=nan"),
    ({"tau_schedule": "cosine"}, "tau_schedule"),
    ({"tau_decay": 0.0}, "tau_decay"),
    ({"tau_decay": 1.5}, "tau_decay"),
    ({"resource_weight": -1.0}, "resource_weight"),
    ({"resource_weight": float("inf")}, "resource_weight"),
    ({"resource": "macs"}, "resource must be one of params, flops"),
    ({"resource_estimator": "reinforce"}, "resource_estimator"),
    ({"arch_grad_clip": 0.0}, "arch_grad_clip"),
    ({"init_scale": -0.1}, "init_scale"),
    ({"weight_decay": -1.0}, "weight_decay"),
    ({"valid_fraction": 0.5}, "unknown snas option"),
])
def test_bad_config_is_a_config_error(splits: tuple[Any, Any], options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        snas(make_ctx(splits), **options)


def test_config_defaults_follow_the_reference() -> None:
    cfg = SnasConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_min, cfg.momentum, cfg.weight_decay) == (
        150, 64, 0.025, 0.001, 0.9, 3e-4)
    assert (cfg.arch_lr, cfg.arch_betas, cfg.arch_weight_decay, cfg.tau0, cfg.tau_min) == (
        3e-4, (0.5, 0.999), 1e-3, 1.0, 0.03)
    assert cfg.resource_weight == 0.0
    with pytest.raises(AttributeError):
        cfg.tau0 = 2.0  # type: ignore[misc]  # frozen


def test_tau_epochs_is_the_reference_schedule_length() -> None:
    """The reference's Temp_Scheduler fixes E = 150: a 10-epoch run ends at tau 0.935, not 0.03."""
    short = SnasConfig(epochs=10, tau_epochs=150)
    assert [snas_tau(e, short) for e in (0, 9)] == pytest.approx([0.03 + 0.97 * (1 - 1 / 150), 0.03 + 0.97 * (1 - 10 / 150)])
    assert snas_tau(9, SnasConfig(epochs=10)) == pytest.approx(0.03)  # default: E = epochs
    with pytest.raises(ConfigError, match="tau_epochs"):
        SnasConfig(tau_epochs=0)
    with pytest.raises(ConfigError, match="resource_form"):
        SnasConfig(resource_form="sqrt")


@pytest.mark.parametrize("estimator", ["reparametrization", "discrete", "policy_gradient"])
def test_log_resource_penalty_matches_the_reference_form(estimator: str) -> None:
    """``resource_form="log"``: per edge log(max(raw cost, 1)) (reference --log_penalty); its gradient
    lowers the logits of the costly candidates, and a sample on cost-free ops contributes log 1 = 0."""
    from nasforge.methods.snas import resource_terms
    from nasforge.policies import GumbelPolicy

    torch.manual_seed(0)
    policy = GumbelPolicy({"e": ("none", "skip", "conv")}, tau=1.0)
    costs = {"e": torch.tensor([0.0, 0.0, 2e-3])}  # 2,000 parameters, in millions
    z = torch.tensor([0.2, 0.3, 0.5], requires_grad=True)
    penalty, value = resource_terms(policy, {"e": z}, costs, estimator, "log")
    assert value == pytest.approx(1e-3)
    if estimator == "reparametrization":
        assert float(penalty.detach()) == pytest.approx(math.log(1000.0))
        (g,) = torch.autograd.grad(penalty, z)
        assert g.tolist() == pytest.approx([0.0, 0.0, 2000.0 / 1000.0])  # d log(z . c) / dz = c / (z . c)
    elif estimator == "discrete":
        (g,) = torch.autograd.grad(penalty, list(policy.parameters()))
        assert float(g[2]) > 0 > float(g[0])  # descent lowers the costly candidate's logit
    else:
        z0 = torch.tensor([0.9996, 0.0002, 0.0002])  # 0.4 parameters: clamped to 1, log 1 = 0
        zero, _ = resource_terms(policy, {"e": z0}, costs, estimator, "log")
        assert float(zero.detach()) == 0.0


def test_concrete_log_prob_equals_the_reference_expression() -> None:
    """SNAS-Series ``model_search.py`` ``Network.logp`` (re-typed; its constant ``log 5040`` is
    ``log 7!`` for 8 DARTS ops, ``log (n-1)!`` in general) gives the same log-density and gradient."""
    torch.manual_seed(1)
    for n, tau in ((5, 1.0), (8, 0.5)):
        alpha = torch.randn(n, requires_grad=True)
        z = torch.softmax((alpha.detach() + -torch.log(-torch.log(torch.rand(n)))) / tau, -1)
        w = torch.clamp_min(z, 1e-4)
        last = torch.clamp_min(w ** (-tau) * torch.exp(alpha), 1e-4)
        ref = math.lgamma(n) + (n - 1) * math.log(tau) + alpha.sum() - (tau + 1) * torch.log(w).sum() - n * torch.log(last.sum())
        ours = concrete_log_prob(alpha, z, tau)
        assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-5)
        (g_ref,) = torch.autograd.grad(ref, alpha)
        (g_ours,) = torch.autograd.grad(ours, alpha)
        assert torch.allclose(g_ours, g_ref, atol=1e-5)
