"""ProxylessNAS (Cai et al. 2019): binary gates, two-path gate gradients, rescaling, latency loss, REINFORCE."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nasforge
from _oneshot import killed_after
from nasforge import registry
from nasforge.cli import main
from nasforge.errors import ConfigError
from nasforge.hardware.latency import LatencySpec
from nasforge.hardware.lut import build_lut, expected_latency
from nasforge.methods import proxylessnas as mod
from nasforge.methods.proxylessnas import ProxylessConfig, proxylessnas
from nasforge.nn.choice import Choice, Gates
from nasforge.policies.binary_gate import BinaryGatePolicy, pair_alpha_grad, rescale_pair
from nasforge.train.bilevel import weight_step
from nasforge.train.oneshot import OneShotContext

TINY_SPACE: dict[str, Any] = {"preset": "cifar", "width_mult": 0.25, "kernels": [3, 5], "expansions": [1]}
#: every batch has an architecture step, no warm-up, no skipped first epoch
FAST: dict[str, Any] = {"epochs": 1, "warmup_epochs": 0, "batch_size": 16, "arch_update_every": 1, "arch_start_epoch": 0}


def make_ctx(splits: tuple[Any, Any], **kwargs: Any) -> OneShotContext:
    train, valid = splits
    kwargs.setdefault("max_batches_per_epoch", 2)
    return OneShotContext(
        space=nasforge.get_space("mobilenet", **TINY_SPACE), train_set=train, valid_set=valid, num_classes=10,
        input_shape=(1, 8, 8), log=lambda _: None, **kwargs,
    )


def capture(monkeypatch: pytest.MonkeyPatch, ctx: OneShotContext) -> dict[str, Any]:
    """Record the supernet and policy a search builds."""
    got: dict[str, Any] = {}
    build = ctx.supernet

    def supernet(**overrides: Any) -> Any:
        got["supernet"] = build(**overrides)
        return got["supernet"]

    init = BinaryGatePolicy.__init__

    def policy_init(self: BinaryGatePolicy, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        got["policy"] = self

    monkeypatch.setattr(ctx, "supernet", supernet)
    monkeypatch.setattr(BinaryGatePolicy, "__init__", policy_init)
    return got


def count_candidate_calls(supernet: nn.Module) -> Counter[tuple[str, str]]:
    """A counter of forward calls of every candidate op, keyed by (choice key, option), kept up to date."""
    calls: Counter[tuple[str, str]] = Counter()
    for key, choice in supernet.layers.items():  # type: ignore[union-attr]
        for option, op in choice.candidates.items():
            op.register_forward_hook(lambda *_, k=key, o=option: calls.update([(k, o)]))
    return calls


@pytest.fixture(scope="module")
def tiny_lut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A latency table of the tiny space at the digits' input shape (torch backend, few repeats)."""
    path = tmp_path_factory.mktemp("lut") / "lut.json"
    space = nasforge.get_space("mobilenet", **TINY_SPACE)
    build_lut(space, (1, 8, 8), LatencySpec(backend="torch", threads=1, warmup=1, repeats=3), path,
              fit_networks=2, progress=False)
    return path


def test_registered_with_reference_defaults() -> None:
    assert registry.get("method", "proxylessnas") is proxylessnas
    assert proxylessnas.spaces == ("mobilenet", "nb201")
    cfg = ProxylessConfig()
    assert (cfg.arch_lr, cfg.arch_betas, cfg.arch_eps, cfg.arch_weight_decay) == (1e-3, (0.0, 0.999), 1e-8, 0.0)
    assert (cfg.warmup_epochs, cfg.epochs, cfg.arch_update_every, cfg.lr, cfg.warmup_lr) == (40, 120, 5, 0.025, 0.05)
    assert (cfg.latency_loss, cfg.loss_alpha, cfg.loss_beta, cfg.loss_lambda) == ("mul#log", 0.2, 0.3, 0.1)
    assert cfg.mode == "two" and cfg.latency_table is None


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="latency_table"):
        ProxylessConfig(latency_target=5.0)
    with pytest.raises(ConfigError, match="latency_target"):
        ProxylessConfig(latency_table=str(tmp_path / "t.json"))
    with pytest.raises(ConfigError, match="ref"):  # mul#log divides by log(ref): ref must be > 1
        ProxylessConfig(latency_table="t.json", latency_target=0.5)
    with pytest.raises(ConfigError, match="mode"):
        ProxylessConfig(mode="full_v2")


def test_gates_run_the_listed_candidates_and_give_each_gate_its_gradient() -> None:
    torch.manual_seed(0)
    ops = {name: nn.Linear(3, 3) for name in ("a", "b", "c")}
    choice = Choice(ops)
    calls: Counter[str] = Counter()
    for name, op in ops.items():
        op.register_forward_hook(lambda *_, n=name: calls.update([n]))
    x, w = torch.randn(4, 3), torch.randn(4, 3)
    g = torch.tensor([0.0, 0.0, 1.0], requires_grad=True)
    out = choice(x, Gates(g, (2, 0)))
    assert calls == Counter({"a": 1, "c": 1})  # b is not listed: it never runs
    assert torch.allclose(out, ops["c"](x))
    (out * w).sum().backward()
    with torch.no_grad():
        assert g.grad is not None
        assert float(g.grad[0]) == pytest.approx(float((w * ops["a"](x)).sum()), rel=1e-5)  # gate 0 still gets <up, op(x)>
        assert float(g.grad[2]) == pytest.approx(float((w * ops["c"](x)).sum()), rel=1e-5)
        assert float(g.grad[1]) == 0.0
    assert ops["a"].weight.grad is None  # a closed gate's op is detached: no weight gradient
    assert ops["c"].weight.grad is not None


def test_gate_gradient_mapping_matches_the_formula_by_hand() -> None:
    alpha = torch.tensor([0.1, -0.3, 0.5, 0.2])
    gate_grad = torch.tensor([0.7, 9.0, -1.3, 9.0])  # entries outside the pair must not matter
    got = pair_alpha_grad(alpha, (2, 0), gate_grad)
    e2, e0 = math.exp(0.5), math.exp(0.1)
    q2, q0 = e2 / (e2 + e0), e0 / (e2 + e0)  # softmax over the pair (alpha_2, alpha_0)
    # dL/dalpha_i = sum_j dL/dg_j q_j (delta_ij - q_i)
    want2 = -1.3 * q2 * (1 - q2) + 0.7 * q0 * (0 - q2)
    want0 = -1.3 * q2 * (0 - q0) + 0.7 * q0 * (1 - q0)
    assert got.tolist() == pytest.approx([want0, 0.0, want2, 0.0], abs=1e-7)
    # the same as autograd of sum_j dL/dg_j * softmax(alpha[pair])_j
    a = alpha.clone().requires_grad_(True)
    (torch.softmax(a[[2, 0]], 0) * gate_grad[[2, 0]]).sum().backward()
    assert a.grad is not None and torch.allclose(got, a.grad, atol=1e-7)


def test_rescaling_keeps_the_other_candidates_probabilities() -> None:
    alpha = torch.tensor([0.3, -1.0, 0.8, 0.1, -0.2])
    before = torch.softmax(alpha, 0)
    old = [float(alpha[1]), float(alpha[3])]
    alpha[1] += 0.37  # an optimizer step on the pair
    alpha[3] -= 0.12
    rescale_pair(alpha, (1, 3), old)
    after = torch.softmax(alpha, 0)
    for i in (0, 2, 4):
        assert float(after[i]) == pytest.approx(float(before[i]), abs=1e-6)
    assert float(after[1] + after[3]) == pytest.approx(float(before[1] + before[3]), abs=1e-6)
    assert float(after[1]) > float(before[1])  # the update itself survives the shift


def test_a_weight_step_runs_one_path_and_an_arch_step_exactly_two(splits: tuple[Any, Any]) -> None:
    ctx = make_ctx(splits)
    supernet = ctx.supernet()
    policy = BinaryGatePolicy(supernet.choices(), seed=0)
    calls = count_candidate_calls(supernet)
    train = next(iter(torch.utils.data.DataLoader(splits[0], batch_size=8)))
    opt = torch.optim.SGD(supernet.parameters(), lr=0.01)
    weight_step(supernet, policy.sample_path(), train, opt, loss_fn=F.cross_entropy, grad_clip=None, where="test")
    per_layer = Counter(k for k, _ in calls.elements())
    assert set(per_layer) == set(supernet.choices()) and set(per_layer.values()) == {1}
    calls.clear()
    a_opt = torch.optim.Adam(policy.parameters(), lr=1e-3, betas=(0.0, 0.999))
    mod.two_path_step(supernet, policy, train, a_opt, objective=None, table=None, where="test")
    per_layer = Counter(k for k, _ in calls.elements())
    assert set(per_layer.values()) == {2}  # two forward calls per layer...
    assert all(n == 1 for n in calls.values())  # ...of two different candidates


def test_search_steps_run_one_then_two_paths_per_layer(splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the method: 2 weight steps (1 path each) and 2 arch steps (2 paths each) per layer."""
    ctx = make_ctx(splits)
    got = capture(monkeypatch, ctx)
    counters: list[Counter[tuple[str, str]]] = []
    build = ctx.supernet

    def supernet(**overrides: Any) -> Any:
        net = build(**overrides)
        counters.append(count_candidate_calls(net))
        return net

    monkeypatch.setattr(ctx, "supernet", supernet)
    proxylessnas(ctx, **FAST)
    per_layer = Counter(k for k, _ in counters[0].elements())
    assert set(per_layer) == set(got["policy"].choices) and set(per_layer.values()) == {2 * 1 + 2 * 2}


def test_arch_step_updates_only_the_pair_and_rescales(splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx(splits)
    supernet = ctx.supernet()
    policy = BinaryGatePolicy(supernet.choices(), seed=1, init_scale=0.5)
    drawn: dict[str, Any] = {}
    sample = policy.sample_pairs

    def sample_pairs() -> Any:
        drawn.update(sample())
        return dict(drawn)

    monkeypatch.setattr(policy, "sample_pairs", sample_pairs)
    before = {k: v.clone() for k, v in policy.strengths().items()}
    batch = next(iter(torch.utils.data.DataLoader(splits[1], batch_size=16)))
    a_opt = torch.optim.Adam(policy.parameters(), lr=0.05, betas=(0.0, 0.999), eps=1e-8)
    mod.two_path_step(supernet, policy, batch, a_opt, objective=None, table=None, where="test")
    after = policy.strengths()
    moved = 0
    for key, p in after.items():
        pair = drawn[key].pair
        others = [i for i in range(p.numel()) if i not in pair]
        assert torch.allclose(p[others], before[key][others], atol=1e-6), key
        moved += int(not torch.allclose(p[list(pair)], before[key][list(pair)], atol=1e-6))
    assert moved > 0


def test_reinforce_gradient_and_the_reference_baseline(splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx(splits)
    supernet = ctx.supernet()
    policy = BinaryGatePolicy(supernet.choices(), seed=2, init_scale=0.3)
    cfg = ProxylessConfig(mode="reinforce", rl_batch_size=4)
    samples: list[dict[str, int]] = []
    accs: list[float] = []
    draw = policy.sample_indices
    acc_fn = mod.accuracy
    monkeypatch.setattr(policy, "sample_indices", lambda: samples.append(draw()) or samples[-1])
    monkeypatch.setattr(mod, "accuracy", lambda logits, y: accs.append(acc_fn(logits, y)) or accs[-1])

    class Record:
        def __init__(self) -> None:
            self.grads: list[dict[str, torch.Tensor]] = []

        def step(self) -> None:
            self.grads.append({k: policy.logits[k].grad.clone() for k in policy.choices})  # type: ignore[union-attr]

    run = type("Run", (), {"scalars": {}})()
    batch = next(iter(torch.utils.data.DataLoader(splits[1], batch_size=16)))
    rec = Record()
    means = []
    for _ in range(2):
        samples.clear()
        accs.clear()
        probs = {k: v.clone() for k, v in policy.strengths().items()}
        metrics = mod.reinforce_step(ctx, run, supernet, policy, batch, rec, cfg, table=None, where="t")  # type: ignore[arg-type]
        rewards = [a / 100 for a in accs]
        means.append(sum(rewards) / len(rewards))
        assert metrics["reward"] == pytest.approx(means[-1])
        b = run.scalars["rl_baseline"]
        for key, p in probs.items():  # -mean_j (r_j - b) d log p(a_j) / d alpha = -mean_j (r_j - b)(onehot - p)
            want = -sum((r - b) * (F.one_hot(torch.tensor(s[key]), p.numel()).float() - p)
                        for r, s in zip(rewards, samples)) / len(rewards)
            assert torch.allclose(rec.grads[-1][key], want, atol=1e-6), key
    # the reference: b = mean of the first batch, then b += 0.99 (mean - b)
    assert run.scalars["rl_baseline"] == pytest.approx(means[0] + 0.99 * (means[1] - means[0]))


def test_latency_loss_uses_the_table_and_lowers_the_expected_latency(splits: tuple[Any, Any], tiny_lut: Path) -> None:
    ctx = make_ctx(splits, max_batches_per_epoch=4)
    space = ctx.space
    res = proxylessnas(ctx, **{**FAST, "latency_table": str(tiny_lut), "latency_target": 1e-3,
                               "latency_loss": "add#linear", "loss_lambda": 1.0, "arch_lr": 0.05})
    from nasforge.hardware.lut import load_lut

    table = load_lut(tiny_lut)
    assert res.info["predicted_latency_ms"] == pytest.approx(table.predict(res.arch))
    uniform = {k: torch.full((len(v),), 1 / len(v)) for k, v in space.decisions().items()}
    start = float(expected_latency(table, uniform))
    assert res.info["expected_latency_ms"] < start  # a latency term this strong wins over the CE
    assert "expected_latency_ms" in res.history[-1]


def test_table_in_microseconds_for_the_log_form_and_reinforce(splits: tuple[Any, Any], tiny_lut: Path) -> None:
    """Sub-millisecond networks: mul#log and the MnasNet reward in microseconds."""
    table = {"latency_table": str(tiny_lut), "latency_target": 2000.0, "latency_unit": "us"}
    res = proxylessnas(make_ctx(splits), **{**FAST, "mode": "reinforce", "rl_batch_size": 3, **table})
    assert res.info["mode"] == "reinforce" and res.info["rl_baseline"] is not None
    assert "sampled_latency_ms" in res.history[-1] and "reward" in res.history[-1]
    res = proxylessnas(make_ctx(splits), **{**FAST, **table})  # mul#log: alpha CE (log LAT / log ref) ** beta
    assert math.isfinite(res.history[-1]["arch_loss"]) and res.history[-1]["arch_loss"] != res.history[-1]["arch_ce"]


def test_final_architecture_is_the_argmax(splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx(splits)
    got = capture(monkeypatch, ctx)
    res = proxylessnas(ctx, **FAST)
    policy = got["policy"]
    assert dict(res.arch.choices) == {k: opts[int(policy.logits[k].argmax())] for k, opts in policy.choices.items()}
    assert ctx.space.format(res.arch) == res.history[-1]["arch"]


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    opts = {**FAST, "epochs": 2, "warmup_epochs": 1, "arch_update_every": 2}
    with monkeypatch.context() as m:
        ctx = make_ctx(splits, run_dir=tmp_path / "full", checkpoint_every=1)
        full = capture(m, ctx)
        ref = proxylessnas(ctx, **opts)

    with killed_after(monkeypatch, 4):  # mid-epoch 1 (the first joint epoch)
        proxylessnas(make_ctx(splits, run_dir=tmp_path / "killed", checkpoint_every=1), **opts)
    with monkeypatch.context() as m:
        ctx = make_ctx(splits, run_dir=tmp_path / "killed", checkpoint_every=1)
        again = capture(m, ctx)
        torch.manual_seed(123)  # the resumed run must not depend on the caller's RNG
        res = proxylessnas(ctx, **opts)
    for name in ("policy", "supernet"):
        a, b = full[name].state_dict(), again[name].state_dict()
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert torch.equal(a[k], b[k]), (name, k)
    assert res.strengths == ref.strengths and res.arch == ref.arch
    assert [h["train_loss"] for h in res.history] == [h["train_loss"] for h in ref.history]


def test_runs_on_nb201(splits: tuple[Any, Any]) -> None:
    train, valid = splits
    ctx = OneShotContext(
        space=nasforge.get_space("nb201"), train_set=train, valid_set=valid, num_classes=10, input_shape=(1, 8, 8),
        supernet_kwargs={"C": 4, "N": 1, "affine": False, "track_running_stats": False}, log=lambda _: None,
        max_batches_per_epoch=2,
    )
    res = proxylessnas(ctx, **FAST)
    assert res.arch.space == "nb201"
    assert res.arch == ctx.space.derive({k: torch.tensor(v) for k, v in res.strengths.items()})


def test_cli_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["search", "--method", "proxylessnas", "--space", "mobilenet", "--space-opt", "preset=cifar",
            "--space-opt", "width_mult=0.25", "--space-opt", "kernels=[3,5]", "--space-opt", "expansions=[1]",
            "--epochs", "1", "--max-batches-per-epoch", "2", "--no-final-train", "--no-progress", "--out", str(out)]
    for k, v in FAST.items():
        if k != "epochs":
            argv += ["--method-opt", f"{k}={v}"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    space = nasforge.get_space("mobilenet", **TINY_SPACE)
    space.parse(results["best"]["arch"])
    assert results["info"]["mode"] == "two"
