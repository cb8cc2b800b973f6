"""ENAS: REINFORCE updates, the baseline, which phase updates what, derivation, resume, config errors."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import nasforge
import nasforge.methods.enas as mod
from nasforge.data import load_data, split_train_valid
from nasforge.errors import BudgetError, ConfigError, UnknownNameError
from nasforge.methods.enas import (
    NB201_PROTOCOL,
    EnasConfig,
    controller_step,
    enas,
    reward_batches,
    weight_schedule,
)
from nasforge.policies.controller import ControllerPolicy
from nasforge.train.oneshot import OneShotContext, path_accuracy

TINY = {"epochs": 2, "batch_size": 16, "controller_steps": 2, "controller_num_aggregate": 2, "derive_samples": 6}


@pytest.fixture(scope="module")
def digits_splits():  # type: ignore[no-untyped-def]
    data = load_data("digits", None)
    return split_train_valid(data.train, 0.5, seed=0), data


def _ctx(splits, run_dir: Path | None, space: str = "nb201", **kw):  # type: ignore[no-untyped-def]
    (tr, va), data = splits
    kwargs = {"C": 4, "N": 1, "affine": False, "track_running_stats": False} if space == "nb201" else {"C": 4, "layers": 3}
    kw.setdefault("max_batches_per_epoch", 3)
    return OneShotContext(
        space=nasforge.get_space(space), train_set=tr, valid_set=va, num_classes=10, input_shape=data.input_shape(),
        supernet_kwargs=kwargs, run_dir=run_dir, log=lambda s: None, **kw,
    )


def _capture_state(ctx: OneShotContext) -> dict[str, Any]:
    """Make ``ctx.open_run`` record the search's state objects (supernet, controller, optimizers)."""
    captured: dict[str, Any] = {}
    original = ctx.open_run

    def open_run(method: str, config: Any, **state: Any):  # type: ignore[no-untyped-def]
        captured.update(state)
        return original(method, config, **state)

    ctx.open_run = open_run  # type: ignore[method-assign]
    return captured


def _nb201_controller(seed: int = 0) -> ControllerPolicy:
    space = nasforge.get_space("nb201")
    net = space.supernet(C=4, N=1)
    return ControllerPolicy(space, net, lstm_size=32, lstm_layers=2, temperature=5.0, tanh_constant=2.5,
                            op_tanh_reduce=1.0, seed=seed)


# ---- REINFORCE ------------------------------------------------------------------------------
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_reinforce_moves_probability_towards_rewarded_architectures(sign: float) -> None:
    controller = _nb201_controller(seed=1)
    target = [3] * 6  # nor_conv_3x3 on every edge
    opt = torch.optim.Adam(controller.parameters(), lr=0.05, betas=(0.0, 0.999), eps=1e-3)

    def reward(arch) -> float:  # type: ignore[no-untyped-def]
        return sign * sum(op == "nor_conv_3x3" for op in arch.values()) / 6

    with torch.no_grad():
        before = float(controller.score(target).log_prob)
    baseline = None
    for _ in range(15):
        baseline, _ = controller_step(controller, reward, opt, baseline, num_aggregate=4, baseline_decay=0.9,
                                      entropy_weight=0.0)
    with torch.no_grad():
        after = float(controller.score(target).log_prob)
    if sign > 0:
        assert after > before + 1.0  # log p(all nor_conv_3x3) rose (from about 6 * log(1/5))
    else:
        assert after < before - 1.0


@pytest.mark.parametrize("mode", ["reward", "loss"])
def test_baseline_moves_before_the_advantage_and_gradients_are_the_mean(mode: str) -> None:
    controller = _nb201_controller(seed=2)
    twin = copy.deepcopy(controller)  # same parameters and generator: draws the same samples
    accs = iter([0.5, 0.8, 0.2])
    w, decay = 0.01, 0.9
    opt = torch.optim.SGD(controller.parameters(), lr=0.0)
    baseline, means = controller_step(controller, lambda arch: next(accs), opt, None, num_aggregate=3,
                                      baseline_decay=decay, entropy_weight=w, entropy_mode=mode)
    samples = [twin.sample() for _ in range(3)]
    b = None
    expected_loss = torch.zeros(())
    rewards = []
    for acc, s in zip([0.5, 0.8, 0.2], samples):
        r = acc + w * float(s.entropy.detach()) if mode == "reward" else acc
        b = r if b is None else b - (1 - decay) * (b - r)  # the first reward starts the baseline
        loss = -s.log_prob * (r - b) - (w * s.entropy if mode == "loss" else 0.0)
        expected_loss = expected_loss + loss / 3
        rewards.append(r)
    assert baseline == pytest.approx(b, abs=1e-12)
    assert means["reward"] == pytest.approx(sum(rewards) / 3)
    assert means["valid_acc"] == pytest.approx(50.0)
    expected_loss.backward()
    for p, q in zip(controller.parameters(), twin.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-7)
    # the first sample's advantage is zero: alone, it gives no gradient in "reward" mode
    single = _nb201_controller(seed=3)
    controller_step(single, lambda arch: 0.7, torch.optim.SGD(single.parameters(), lr=0.0), None, num_aggregate=1,
                    baseline_decay=0.99, entropy_weight=0.0)
    assert all(p.grad is None or not p.grad.any() for p in single.parameters())


# ---- the search loop ------------------------------------------------------------------------
def test_weight_phase_leaves_the_controller_and_controller_phase_leaves_the_weights(digits_splits, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ctx = _ctx(digits_splits, None)
    state = _capture_state(ctx)
    log: list[tuple[str, int]] = []
    real_weight_step, real_controller_step = mod.weight_step, mod.controller_step

    def params(module: torch.nn.Module) -> list[torch.Tensor]:
        return [t.detach().clone() for t in module.state_dict().values() if isinstance(t, torch.Tensor)]

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b))

    def weight_step(supernet, path, batch, optimizer, **kw):  # type: ignore[no-untyped-def]
        controller = state["controller"]
        assert path == supernet.path_for(controller.last.arch)  # the sampled child's single path
        assert not controller.last.log_prob.requires_grad  # sampled without a graph
        grads = [None if p.grad is None else p.grad.clone() for p in controller.parameters()]
        before_c, before_w = params(controller), params(supernet)
        out = real_weight_step(supernet, path, batch, optimizer, **kw)
        assert same(before_c, params(controller))
        for g, p in zip(grads, controller.parameters()):
            assert (g is None and p.grad is None) or torch.equal(g, p.grad)
        assert not same(before_w, params(supernet))
        log.append(("weight", len(log)))
        return out

    def controller_step(controller, *args, **kw):  # type: ignore[no-untyped-def]
        supernet = state["supernet"]
        assert not supernet.training  # rewards under eval-mode BN, as the references
        before_w, before_c = [t.clone() for t in supernet.state_dict().values()], params(controller)
        out = real_controller_step(controller, *args, **kw)
        assert same(before_w, list(supernet.state_dict().values()))  # weights and BN buffers untouched
        assert not same(before_c, params(controller))
        log.append(("controller", len(log)))
        return out

    monkeypatch.setattr(mod, "weight_step", weight_step)
    monkeypatch.setattr(mod, "controller_step", controller_step)
    enas(ctx, **TINY)
    # per epoch: 3 weight steps (max_batches_per_epoch), then 2 controller steps
    assert [kind for kind, _ in log] == (["weight"] * 3 + ["controller"] * 2) * 2


def test_end_to_end_nb201_returns_the_best_sample(digits_splits) -> None:  # type: ignore[no-untyped-def]
    ctx = _ctx(digits_splits, None)
    state = _capture_state(ctx)
    res = enas(ctx, **TINY, derive_batches=2)
    space = ctx.space
    samples = res.info["samples"]
    assert 1 <= len(samples) <= 6 and len({s["arch"] for s in samples}) == len(samples)
    accs = [s["valid_acc"] for s in samples]
    assert accs == sorted(accs, reverse=True)
    assert space.parse(samples[0]["arch"]) == res.arch and res.info["valid_accuracy"] == accs[0]
    supernet = state["supernet"]
    supernet.eval()
    batches = ctx.fixed_valid_batches(2, 16)
    for s in samples:
        assert path_accuracy(supernet, supernet.path_for(space.parse(s["arch"])), batches) == s["valid_acc"]
        assert s["log_prob"] < 0
    assert space.derive({k: torch.tensor(v) for k, v in res.strengths.items()}) == res.arch
    assert all(sorted(v) == [0.0] * 4 + [1.0] for v in res.strengths.values())  # one-hot per edge
    assert [h["epoch"] for h in res.history] == [0, 1]
    for h in res.history:
        assert {"train_loss", "train_acc", "valid_acc", "reward", "entropy", "controller_loss", "baseline", "lr"} <= set(h)
        space.parse(h["arch"])
    assert res.info["baseline"] == res.history[-1]["baseline"]
    assert res.info["greedy_arch"] == space.format(state["controller"].sample(greedy=True).arch)


def test_end_to_end_darts(digits_splits) -> None:  # type: ignore[no-untyped-def]
    ctx = _ctx(digits_splits, None, "darts", max_batches_per_epoch=2)
    res = enas(ctx, **{**TINY, "epochs": 1, "derive_samples": 3})
    assert res.arch.space == "darts" and len(res.strengths) == 28
    assert ctx.space.parse(res.info["samples"][0]["arch"]) == res.arch
    assert ctx.space.derive({k: torch.tensor(v) for k, v in res.strengths.items()}) == res.arch
    assert len(res.info["greedy_probabilities"]) == 32  # 2 cells x 4 nodes x (2 inputs + 2 ops)


def _assert_same(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_resume_inside_the_controller_phase_ends_in_the_same_state(digits_splits, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    opts = {**TINY, "controller_steps": 3}
    full = enas(_ctx(digits_splits, tmp_path / "full"), **opts)
    calls = {"n": 0}
    real = mod.batch_accuracy

    def dies_at_call_11(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 11:  # epoch 1, third controller step (epoch 0 used 6 rewards, epoch 1 steps 1-2 used 4)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(mod, "batch_accuracy", dies_at_call_11)
    with pytest.raises(KeyboardInterrupt):
        enas(_ctx(digits_splits, tmp_path / "cut", checkpoint_every=2), **opts)
    monkeypatch.setattr(mod, "batch_accuracy", real)
    cut = torch.load(tmp_path / "cut" / "search.pt", weights_only=True)
    assert (cut["epoch"], cut["batch"]) == (1, 4)  # 3 weight steps and 1 controller step of epoch 1 done
    resumed = enas(_ctx(digits_splits, tmp_path / "cut", checkpoint_every=2), **opts)
    assert resumed.arch == full.arch
    assert resumed.info["samples"] == full.info["samples"]
    drop = ("seconds",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in full.history
    ]
    a = torch.load(tmp_path / "full" / "search.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "search.pt", weights_only=True)
    _assert_same(a["state"], b["state"])  # supernet, controller (and its generator), optimizers, scheduler
    assert a["scalars"]["baseline"] == b["scalars"]["baseline"]


# ---- pieces -------------------------------------------------------------------------------------
def test_reward_stream_is_a_function_of_position(digits_splits) -> None:  # type: ignore[no-untyped-def]
    ctx = _ctx(digits_splits, None)
    per_cycle = len(ctx.valid_set) // 64
    total = per_cycle + 3  # crosses a cycle boundary
    stream = reward_batches(ctx, 64, epoch=2, total=total)
    whole = [next(stream) for _ in range(total)]
    for skip in (1, per_cycle - 1, per_cycle, per_cycle + 2):
        x, y = next(reward_batches(ctx, 64, epoch=2, total=total, skip=skip))
        assert torch.equal(x, whole[skip][0]) and torch.equal(y, whole[skip][1])
    assert not torch.equal(whole[per_cycle][1], whole[0][1])  # a new cycle is a new permutation
    other = next(reward_batches(ctx, 64, epoch=3, total=total))
    assert not torch.equal(other[1], whole[0][1])


def test_weight_schedule_restarts_the_cosine() -> None:
    cfg = EnasConfig(epochs=7, lr=0.05, lr_min=0.0005, lr_T0=2, lr_T_mul=2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = weight_schedule(opt, cfg)
    lrs = []
    for _ in range(7):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()

    def cos(t: int, period: int) -> float:
        return 0.0005 + (0.05 - 0.0005) * (1 + math.cos(math.pi * t / period)) / 2

    expected = [cos(0, 2), cos(1, 2), cos(0, 4), cos(1, 4), cos(2, 4), cos(3, 4), cos(0, 8)]
    assert lrs == pytest.approx(expected)
    single = weight_schedule(opt, EnasConfig(epochs=7, lr_T0=None))
    assert isinstance(single, torch.optim.lr_scheduler.CosineAnnealingLR) and single.T_max == 7


def test_nb201_protocol_is_a_valid_config() -> None:
    cfg = EnasConfig(**NB201_PROTOCOL)
    assert (cfg.lstm_size, cfg.lstm_layers, cfg.temperature, cfg.tanh_constant) == (32, 2, 5.0, 2.5)
    assert (cfg.controller_steps, cfg.controller_num_aggregate, cfg.controller_lr) == (50, 20, 1e-3)
    default = EnasConfig()
    assert (default.epochs, default.batch_size, default.controller_lr, default.temperature) == (150, 160, 3.5e-3, None)


@pytest.mark.parametrize(
    ("option", "value", "error", "message"),
    [
        ("entropy_mode", "bonus", ConfigError, "entropy_mode must be one of reward, loss"),
        ("baseline_decay", 1.0, ConfigError, r"baseline_decay must be in \[0, 1\)"),
        ("controller_lr", 0.0, ConfigError, "controller_lr must be > 0"),
        ("controller_betas", (0.9,), ConfigError, "controller_betas must be two numbers"),
        ("controller_eps", -1e-3, ConfigError, "controller_eps must be > 0"),
        ("controller_grad_clip", 0.0, ConfigError, "controller_grad_clip must be > 0 or None"),
        ("entropy_weight", float("nan"), ConfigError, "entropy_weight must be >= 0"),
        ("temperature", 0.0, ConfigError, "temperature must be > 0 or None"),
        ("tanh_constant", -2.5, ConfigError, "tanh_constant must be > 0 or None"),
        ("op_tanh_reduce", 0.0, ConfigError, "op_tanh_reduce must be > 0"),
        ("lstm_size", 0, ConfigError, "lstm_size must be an int > 0"),
        ("lstm_layers", True, ConfigError, "lstm_layers must be an int > 0"),
        ("lr_T_mul", 0, ConfigError, "lr_T_mul must be an int >= 1"),
        ("nesterov", "yes", ConfigError, "nesterov must be a bool"),
        ("lr_T0", 0, BudgetError, "lr_T0 must be an int > 0"),
        ("controller_steps", 0, BudgetError, "controller_steps must be an int > 0"),
        ("controller_num_aggregate", 2.0, BudgetError, "controller_num_aggregate must be an int > 0"),
        ("derive_samples", -1, BudgetError, "derive_samples must be an int > 0"),
        ("derive_batches", 0, BudgetError, "derive_batches must be an int > 0"),
        ("lr", 0.0, ConfigError, "lr must be > 0"),
    ],
)
def test_bad_config_values_raise_typed_errors(digits_splits, option: str, value: object, error: type, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        enas(_ctx(digits_splits, None), **{option: value})


def test_unknown_options_and_spaces_are_refused(digits_splits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="unknown enas option"):
        enas(_ctx(digits_splits, None), controller_train_steps=3)
    data = digits_splits[1]
    ctx = OneShotContext(space=nasforge.get_space("mobilenet"), train_set=data.train, valid_set=data.train,
                         num_classes=10, input_shape=data.input_shape())
    with pytest.raises(UnknownNameError, match="valid: nb201, darts"):
        enas(ctx)
