"""GDAS: one sampled candidate per edge, alternating weight / architecture steps, linear tau."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from _oneshot import killed_after, make_ctx
from nasforge import registry
from nasforge.errors import ConfigError
from nasforge.methods import gdas as gdas_mod
from nasforge.methods.gdas import GdasConfig, gdas, gdas_tau
from nasforge.nn.choice import Choice
from nasforge.policies import HardGumbelPolicy
from nasforge.train.oneshot import OneShotContext

FAST = {"batch_size": 16}






def capture(monkeypatch: pytest.MonkeyPatch, ctx: OneShotContext) -> dict[str, Any]:
    """Record the supernet and the policy the search builds (the objects, not copies)."""
    got: dict[str, Any] = {}
    build = ctx.supernet

    def supernet(**overrides: Any) -> Any:
        got["supernet"] = build(**overrides)
        return got["supernet"]

    class SpyPolicy(HardGumbelPolicy):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            got["policy"] = self

    monkeypatch.setattr(ctx, "supernet", supernet)
    monkeypatch.setattr(gdas_mod, "HardGumbelPolicy", SpyPolicy)
    return got


def test_registered() -> None:
    assert registry.get("method", "gdas") is gdas
    assert gdas.config_cls is GdasConfig


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_each_step_runs_one_candidate_per_edge_and_separates_weight_and_arch_updates(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, space: str,
) -> None:
    ctx = make_ctx(splits, space)
    got = capture(monkeypatch, ctx)
    ran: list[tuple[int, str]] = []  # (Choice id, candidate) of every candidate forward of the current pass
    passes: list[dict[str, Any]] = []

    def hook_candidates(net: torch.nn.Module) -> None:
        for m in net.modules():
            if isinstance(m, Choice):
                for name, cand in m.candidates.items():
                    cand.register_forward_hook(lambda *_, m=m, name=name: ran.append((id(m), name)))

    def spy(kind: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(supernet: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            if not passes and not ran:
                hook_candidates(supernet)
            policy = got["policy"]
            alphas = [p.detach().clone() for p in policy.parameters()]
            weights = [p.detach().clone() for p in supernet.parameters()]
            ran.clear()
            out = original(supernet, *args, **kwargs)
            passes.append({
                "kind": kind, "tau": policy.tau, "ran": list(ran), "path": args[0] if kind == "weight" else None,
                "choices": sum(isinstance(m, Choice) for m in supernet.modules()),
                "alpha_same": all(torch.equal(a, p) for a, p in zip(alphas, policy.parameters())),
                "weights_same": all(torch.equal(w, p) for w, p in zip(weights, supernet.parameters())),
            })
            return out
        return wrapped

    monkeypatch.setattr(gdas_mod, "weight_step", spy("weight", gdas_mod.weight_step))
    monkeypatch.setattr(gdas_mod, "arch_step", spy("arch", gdas_mod.arch_step))
    gdas(ctx, epochs=3, **FAST)

    assert [p["kind"] for p in passes] == ["weight", "arch"] * 6  # 3 epochs x 2 batches, weight step first
    net = got["supernet"]
    key_of = {id(m): name.rsplit(".", 1)[-1] for name, m in net.named_modules() if isinstance(m, Choice)}
    for p in passes:
        per_choice = Counter(choice for choice, _ in p["ran"])
        assert set(per_choice.values()) == {1}  # one candidate per edge at most
        if p["path"] is not None:  # weight steps: every edge whose sample is not 'none' ran the sampled op;
            # 'none' edges are left out (they add zeros), except that a node whose every input is
            # 'none' runs one 'none' for a zero tensor of the right shape
            options = net.choices()
            sampled = {k: options[k][int(w.argmax())] for k, w in p["path"].items()}
            ran_op = dict(p["ran"])
            for c, k in key_of.items():
                if sampled[k] != "none":
                    assert ran_op.get(c) == sampled[k]
                else:
                    assert ran_op.get(c, "none") == "none"
    for p in passes[0::2]:  # weight steps: weights move, alpha does not
        assert p["alpha_same"] and not p["weights_same"]
    for p in passes[1::2]:  # arch steps: alpha moves, weights do not
        assert not p["alpha_same"] and p["weights_same"]
    # each pass draws a fresh sample: the weight and the arch pass of a step do not always agree
    samples = [sorted(p["ran"]) for p in passes]
    assert any(samples[i] != samples[i + 1] for i in range(0, len(samples), 2))
    # tau is set at the start of every epoch from the linear schedule
    assert [p["tau"] for p in passes] == [pytest.approx(gdas_tau(i // 4, 3, 10.0, 0.1)) for i in range(12)]


def test_straight_through_gradient_reaches_every_logit_of_a_sampled_edge(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = make_ctx(splits, "nb201", max_batches_per_epoch=3)
    got = capture(monkeypatch, ctx)
    sampled: list[dict[str, int]] = []
    grads: list[dict[str, torch.Tensor]] = []
    original = gdas_mod.arch_step

    def arch_step(supernet: Any, path_fn: Any, *args: Any, **kwargs: Any) -> Any:
        def path() -> Any:
            p = path_fn()
            sampled.append({k: int(v.detach().argmax()) for k, v in p.items()})
            return p

        out = original(supernet, path, *args, **kwargs)
        grads.append({k: got["policy"].logits[k].grad.clone() for k in got["policy"].choices})
        return out

    monkeypatch.setattr(gdas_mod, "arch_step", arch_step)
    gdas(ctx, epochs=1, **FAST)
    assert len(grads) == 3
    nonzero = 0
    for sample, step_grads in zip(sampled, grads):
        for key, g in step_grads.items():
            if not g.any():  # e.g. a 'none' edge: its output, hence dL/dh, is zero
                continue
            nonzero += 1
            # d/d alpha of h~_s: (dL/dh_s) * h~_s / tau * (e_s - h~): every entry non-zero, summing to 0,
            # the sampled entry of the opposite sign to all the others
            assert bool((g != 0).all()), (key, g)
            assert float(g.sum()) == pytest.approx(0.0, abs=1e-6 * float(g.abs().max()) + 1e-12)
            s = sample[key]
            others = torch.cat([g[:s], g[s + 1:]])
            assert bool((torch.sign(others) == -torch.sign(g[s])).all()), (key, g, s)
    assert nonzero >= 9  # of 3 steps x 6 edges: the check above is not vacuous


def test_tau_schedule_is_linear_from_tau_max_to_tau_min() -> None:
    assert gdas_tau(0, 5, 10.0, 0.1) == 10.0
    assert gdas_tau(4, 5, 10.0, 0.1) == pytest.approx(0.1)
    assert gdas_tau(2, 5, 10.0, 0.1) == pytest.approx(10.0 - 9.9 * 2 / 4)
    taus = [gdas_tau(e, 250, 10.0, 0.1) for e in range(250)]
    assert all(a > b for a, b in zip(taus, taus[1:]))
    assert gdas_tau(0, 1, 10.0, 0.1) == 10.0  # the reference would divide by zero


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_end_to_end(splits: tuple[Any, Any], space: str) -> None:
    ctx = make_ctx(splits, space)
    torch.manual_seed(0)
    res = gdas(ctx, epochs=3, tau_max=5.0, tau_min=0.5, **FAST)
    sp = ctx.space
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    assert [h["tau"] for h in res.history] == pytest.approx([5.0, 2.75, 0.5])
    for h in res.history:
        for key in ("train_loss", "valid_loss", "train_acc", "valid_acc", "lr"):
            assert math.isfinite(h[key]), key
        sp.parse(h["arch"])  # a member of the space
    assert res.history[0]["lr"] == pytest.approx(0.025)
    strengths = {k: torch.tensor(v) for k, v in res.strengths.items()}
    assert all(float(v.sum()) == pytest.approx(1.0, abs=1e-5) for v in strengths.values())  # softmax(alpha)
    assert res.arch == sp.derive(strengths)
    assert sp.format(res.arch) == res.history[-1]["arch"]


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    opts = {"epochs": 3, "tau_max": 4.0, **FAST}
    with monkeypatch.context() as m:
        ctx = make_ctx(splits, "nb201", run_dir=tmp_path / "full", checkpoint_every=1)
        full = capture(m, ctx)
        torch.manual_seed(0)
        ref = gdas(ctx, **opts)

    with killed_after(monkeypatch, 3):  # mid-epoch 1
        torch.manual_seed(0)
        gdas(make_ctx(splits, "nb201", run_dir=tmp_path / "killed", checkpoint_every=1), **opts)
    with monkeypatch.context() as m:
        ctx = make_ctx(splits, "nb201", run_dir=tmp_path / "killed", checkpoint_every=1)
        again = capture(m, ctx)
        torch.manual_seed(123)  # the resumed run must not depend on the caller's RNG
        res = gdas(ctx, **opts)
    for name in ("policy", "supernet"):
        a, b = full[name].state_dict(), again[name].state_dict()
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert torch.equal(a[k], b[k]), (name, k)
    assert res.strengths == ref.strengths
    assert [h["train_loss"] for h in res.history] == [h["train_loss"] for h in ref.history]


@pytest.mark.parametrize(("options", "needle"), [
    ({"tau_min": 0.0}, "tau_min=0.0"),
    ({"tau_min": -1.0}, "tau_min=-1.0"),
    ({"tau_max": 0.05, "tau_min": 0.1}, "tau_max=0.05"),
    ({"tau_max": float("nan")}, "tau_max=nan"),
    ({"tau_max": float("inf")}, "tau_max=inf"),
    ({"init_scale": -1.0}, "init_scale"),
    ({"lr": 0.0}, "lr"),
    ({"arch_betas": (1.0, 0.5)}, "arch_betas"),
    ({"grad_clip": -5.0}, "grad_clip"),
    ({"temperature": 1.0}, "unknown gdas option"),
])
def test_bad_config_is_a_config_error(splits: tuple[Any, Any], options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        gdas(make_ctx(splits), **options)


def test_config_defaults_follow_the_nb201_reference_run() -> None:
    cfg = GdasConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_min, cfg.momentum, cfg.nesterov) == (250, 64, 0.025, 0.001, 0.9, True)
    assert (cfg.weight_decay, cfg.grad_clip, cfg.tau_max, cfg.tau_min) == (5e-4, 5.0, 10.0, 0.1)
    assert (cfg.arch_lr, cfg.arch_betas, cfg.arch_weight_decay) == (3e-4, (0.5, 0.999), 1e-3)
    with pytest.raises(AttributeError):
        cfg.epochs = 1  # type: ignore[misc]  # frozen
