"""FBNet (Wu et al. 2019): Gumbel-softmax masks, CE x alpha x log(LAT)^beta, 80/20 split, sampling."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import nasforge
from _oneshot import killed_after, quick_table, synthetic_table
from nasforge import registry
from nasforge.cli import main
from nasforge.errors import BudgetError, ConfigError
from nasforge.hardware.lut import load_lut
from nasforge.hardware.objectives import FBNetLoss
from nasforge.methods import fbnet as mod
from nasforge.methods.fbnet import (
    SAMPLE_SEED_OFFSET,
    FbnetConfig,
    LatencyAwareLoss,
    fbnet,
    fbnet_tau,
    sample_architectures,
    split_search_data,
)
from nasforge.nn.choice import Choice
from nasforge.policies import GumbelPolicy
from nasforge.train.oneshot import OneShotContext

#: a tiny CIFAR-preset MobileNet space: kernels 3 / 5, expansion 1, skip on later layers
TINY_SPACE: dict[str, Any] = {"preset": "cifar", "width_mult": 0.25, "kernels": [3, 5], "expansions": [1]}
SHAPE = (1, 8, 8)  # the built-in digits
#: synthetic per-option latencies (ms) of the hand-computed cases, and their constant
SYNTHETIC = {"ir_k3_e1": 0.2, "ir_k5_e1": 0.5, "skip": 0.01}
CONSTANT = 0.3


def space() -> Any:
    return nasforge.get_space("mobilenet", **TINY_SPACE)


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (measured) table of the tiny space on this machine, built fast."""
    return quick_table(space(), SHAPE, tmp_path_factory.mktemp("lut") / "lut.json")


def synthetic(table_path: Path, name: str, factor: float = 1.0) -> Path:
    """The table with every entry replaced by :data:`SYNTHETIC` and the constant by :data:`CONSTANT` (times ``factor``)."""
    return synthetic_table(table_path, name, {k: v * factor for k, v in SYNTHETIC.items()}, CONSTANT * factor)


@pytest.fixture(scope="module")
def synthetic_path(table_path: Path) -> Path:
    return synthetic(table_path, "synthetic.json")


def make_ctx(splits: tuple[Any, Any], **kwargs: Any) -> OneShotContext:
    train, valid = splits
    kwargs.setdefault("max_batches_per_epoch", 2)
    return OneShotContext(
        space=space(), train_set=train, valid_set=valid, num_classes=10, input_shape=SHAPE, log=lambda _: None,
        **kwargs,
    )


def fast(table: Path, **overrides: Any) -> dict[str, Any]:
    return {"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "latency_table": str(table), "latency_unit": "us",
            "num_samples": 3, **overrides}


def test_registered_with_paper_defaults() -> None:
    assert registry.get("method", "fbnet") is fbnet and fbnet.spaces == ("mobilenet",)
    cfg = FbnetConfig()
    assert (cfg.epochs, cfg.tau0, cfg.alpha, cfg.beta, cfg.theta_share) == (90, 5.0, 0.2, 0.6, 0.2)
    assert cfg.tau_decay == pytest.approx(0.956, abs=1e-4) and cfg.arch_lr == 0.01 and cfg.lr == 0.1
    assert fbnet.options()["latency_table"] is None


def test_temperature_schedule() -> None:
    cfg = FbnetConfig()
    for e in range(90):
        assert fbnet_tau(e, cfg.tau0, cfg.tau_decay) == pytest.approx(5.0 * 0.956 ** e, rel=1e-3)
        assert fbnet_tau(e, cfg.tau0, cfg.tau_decay) == pytest.approx(5.0 * math.exp(-0.045 * e), rel=1e-12)
    with pytest.raises(ConfigError, match="tau_decay"):
        FbnetConfig(tau_decay=0.0)


def test_mask_is_a_gumbel_softmax_sample() -> None:
    net = space().supernet(num_classes=10, in_channels=1)
    policy = GumbelPolicy(net.choices(), tau=5.0, init_scale=1.0)
    noise = {k: -torch.log(-torch.log(torch.rand(len(v)))) for k, v in net.choices().items()}
    path = policy(noise)
    for k, m in path.items():
        assert torch.allclose(m, torch.softmax((policy.logits[k] + noise[k]) / 5.0, dim=-1))
    torch.manual_seed(0)
    a = policy()
    torch.manual_seed(0)
    b = policy()
    torch.manual_seed(1)
    c = policy()
    for k in a:
        assert float(a[k].detach().sum()) == pytest.approx(1.0) and bool((a[k] > 0).all())
        assert torch.equal(a[k], b[k])
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_loss_is_ce_times_alpha_log_expected_latency_to_the_beta(synthetic_path: Path) -> None:
    sp = space()
    table = load_lut(synthetic_path, space=sp, input_shape=SHAPE)
    loss = LatencyAwareLoss(table, FBNetLoss(0.2, 0.6), "us")
    theta = {k: torch.randn(len(v), generator=torch.Generator().manual_seed(i), requires_grad=True)
             for i, (k, v) in enumerate(sp.decisions().items())}
    mask = {k: torch.softmax(t, dim=-1) for k, t in theta.items()}
    ce = torch.tensor(2.3)
    lat_ms = sum(float(mask[k][i].detach()) * SYNTHETIC[o] for k, opts in sp.decisions().items() for i, o in enumerate(opts))
    lat_us = (lat_ms + CONSTANT) * 1000.0
    value = loss(ce, mask)
    assert float(loss.latency(mask).detach()) == pytest.approx(lat_us, rel=1e-5)
    assert float(value.detach()) == pytest.approx(2.3 * 0.2 * math.log(lat_us) ** 0.6, rel=1e-5)
    # the gradient reaches theta through the latency term only (CE is a constant here), with the right sign
    value.backward()
    layer = "s1_l1"  # options ir_k3_e1 (0.2 ms), ir_k5_e1 (0.5 ms), skip (0.01 ms)
    assert list(sp.decisions()[layer]) == ["ir_k3_e1", "ir_k5_e1", "skip"]
    g = theta[layer].grad
    assert g is not None and float(g[1]) > 0 > float(g[2])  # more of the slowest raises the loss, of skip lowers it
    with torch.no_grad():
        raised = {k: t.clone() for k, t in theta.items()}
        raised[layer][1] += 1.0
    assert float(loss(ce, {k: torch.softmax(t, -1) for k, t in raised.items()}).detach()) > float(value.detach())
    # the fastest architecture: every layer its fastest option, plus the constant
    fastest = sum(min(SYNTHETIC[o] for o in opts) for opts in sp.decisions().values()) + CONSTANT
    assert loss.fastest() == pytest.approx(fastest * 1000.0)


def test_data_split_is_80_20_of_the_search_data(splits: tuple[Any, Any], table_path: Path, tmp_path: Path) -> None:
    train, valid = splits
    w, th = split_search_data(train, valid, 0.2, seed=0)
    total = len(train) + len(valid)
    assert len(th) == round(0.2 * total) and len(w) + len(th) == total
    assert set(w.indices).isdisjoint(th.indices)
    assert set(w.indices) | set(th.indices) == set(train.indices) | set(valid.indices)
    fbnet(make_ctx(splits, run_dir=tmp_path), **fast(table_path, epochs=1))
    meta = torch.load(tmp_path / "search.pt", weights_only=True)["meta"]
    assert (meta["train_size"], meta["valid_size"]) == (len(w), len(th))


def test_epoch_trains_weights_then_theta_after_warmup_with_every_candidate(
    splits: tuple[Any, Any], table_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, int]] = []
    ran: Counter[str] = Counter()
    policies: list[GumbelPolicy] = []
    w_step, a_step = mod.weight_step, mod.arch_step

    def weight(supernet: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        if not calls:
            for m in supernet.modules():
                if isinstance(m, Choice):
                    for name, cand in m.candidates.items():
                        cand.register_forward_hook(lambda *_, name=name: ran.update([name]))
        assert all(float(v.sum()) == pytest.approx(1.0) and not v.requires_grad for v in path.values())
        calls.append(("weight", len(ran)))
        return w_step(supernet, path, *args, **kwargs)

    def arch(*args: Any, **kwargs: Any) -> Any:
        calls.append(("arch", 0))
        return a_step(*args, **kwargs)

    class Spy(GumbelPolicy):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            policies.append(self)

    monkeypatch.setattr(mod, "weight_step", weight)
    monkeypatch.setattr(mod, "arch_step", arch)
    monkeypatch.setattr(mod, "GumbelPolicy", Spy)
    res = fbnet(make_ctx(splits), **fast(table_path, epochs=3, warmup_epochs=1))
    kinds = [k for k, _ in calls]
    assert kinds == ["weight"] * 2 + (["weight"] * 2 + ["arch"] * 2) * 2  # warm-up epoch: weights only
    sp = space()
    n_candidates = sum(len(v) for v in sp.decisions().values())
    assert sum(ran.values()) >= n_candidates * 2  # every candidate of every layer ran on every step
    assert [h["tau"] for h in res.history] == [pytest.approx(fbnet_tau(e, 5.0, FbnetConfig().tau_decay)) for e in range(3)]
    assert policies[0].tau == pytest.approx(fbnet_tau(2, 5.0, FbnetConfig().tau_decay))
    assert "valid_loss" not in res.history[0] and "valid_loss" in res.history[1]


def test_final_architectures_are_sampled_from_softmax_theta(
    splits: tuple[Any, Any], table_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sp = space()
    dec = sp.decisions()
    probs = {k: torch.tensor([0.7] + [0.3 / (len(v) - 1)] * (len(v) - 1)) for k, v in dec.items()}
    many = sample_architectures(sp, probs, 400, seed=3)
    assert many == sample_architectures(sp, probs, 400, seed=3) and many != sample_architectures(sp, probs, 400, seed=4)
    share = sum(a["s1_l1"] == dec["s1_l1"][0] for a in many) / len(many)
    assert share == pytest.approx(0.7, abs=0.07)
    res = fbnet(make_ctx(splits, seed=5), **fast(table_path))
    strengths = {k: torch.tensor(v) for k, v in res.strengths.items()}
    expected = sample_architectures(sp, strengths, 3, seed=5 + SAMPLE_SEED_OFFSET)
    assert [s["arch"] for s in res.info["samples"]] == [sp.format(a) for a in expected]
    argmax = sp.make({k: dec[k][int(torch.argmax(strengths[k]))] for k in dec})
    assert res.arch == argmax and res.info["argmax"]["arch"] == sp.format(argmax)
    table = load_lut(table_path)
    assert res.info["argmax"]["predicted_latency_ms"] == pytest.approx(table.predict(argmax))


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    splits: tuple[Any, Any], table_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    opts = fast(table_path, epochs=2, warmup_epochs=0)
    ref = fbnet(make_ctx(splits, run_dir=tmp_path / "full", checkpoint_every=1), **opts)

    with killed_after(monkeypatch, 3):  # the first theta step of epoch 0
        fbnet(make_ctx(splits, run_dir=tmp_path / "cut", checkpoint_every=1), **opts)
    torch.manual_seed(123)  # the resumed run must not depend on the caller's RNG
    res = fbnet(make_ctx(splits, run_dir=tmp_path / "cut", checkpoint_every=1), **opts)
    assert res.strengths == ref.strengths and res.arch == ref.arch and res.info == ref.info
    drop = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert drop(res.history) == drop(ref.history)


def test_without_a_table_or_below_one_unit_is_refused(splits: tuple[Any, Any], table_path: Path) -> None:
    with pytest.raises(ConfigError, match="build-lut"):
        fbnet(make_ctx(splits), **{**fast(table_path), "latency_table": None})
    with pytest.raises(ConfigError, match="latency_unit=us"):
        # a network predicted at 0.0165 ms (sub-millisecond): log(LAT) < 0 in ms
        fbnet(make_ctx(splits), **fast(synthetic(table_path, "fast.json", 0.01), latency_unit="ms"))
    with pytest.raises(ConfigError, match="space"):
        fbnet(OneShotContext(
            space=nasforge.get_space("mobilenet", **{**TINY_SPACE, "kernels": [3]}), train_set=splits[0],
            valid_set=splits[1], num_classes=10, input_shape=SHAPE, log=lambda _: None,
        ), **fast(table_path))


def test_weight_loss_is_the_latency_aware_loss(synthetic_path: Path) -> None:
    """Weights and theta minimise the same L(a, w_a) (paper Eq. 1): the CE scaled by the latency factor."""
    table = load_lut(synthetic_path)
    loss = LatencyAwareLoss(table, FBNetLoss(), "us")
    mask = {k: torch.full((len(v),), 1.0 / len(v)) for k, v in space().decisions().items()}
    logits, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    ce = F.cross_entropy(logits, y)
    assert float(loss(ce, mask)) == pytest.approx(float(ce) * 0.2 * math.log(float(loss.latency(mask))) ** 0.6)


def test_cli_end_to_end(table_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["search", "--method", "fbnet", "--space", "mobilenet", "--space-opt", "preset=cifar",
            "--space-opt", "width_mult=0.25", "--space-opt", "kernels=[3,5]", "--space-opt", "expansions=[1]",
            "--epochs", "2", "--max-batches-per-epoch", "2", "--no-final-train", "--no-progress", "--out", str(out)]
    for k, v in fast(table_path).items():
        if k != "epochs":
            argv += ["--method-opt", f"{k}={v}"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method_kind"] == "one-shot"
    assert results["best"]["arch"] == results["info"]["argmax"]["arch"] and len(results["info"]["samples"]) == 3
    assert space().parse(results["best"]["arch"])
    assert (out / "search" / "search.pt").exists()


def test_a_limit_picks_the_most_likely_feasible_candidate_and_a_rerun_only_picks_again(
    splits: tuple[Any, Any], synthetic_path: Path, tmp_path: Path,
) -> None:
    sp, table = space(), load_lut(synthetic_path)
    opts = fast(synthetic_path, num_samples=6)
    free = fbnet(make_ctx(splits, seed=5, run_dir=tmp_path / "run"), **opts)
    candidates = [free.info["argmax"], *free.info["samples"]]
    latencies = sorted({round(c["predicted_latency_ms"], 9) for c in candidates})
    assert len(latencies) >= 2, "the test needs candidates of different predicted latency"
    limit = latencies[0] + 1e-6  # only the fastest candidate(s) meet it
    picked = fbnet(make_ctx(splits, seed=5, run_dir=tmp_path / "run"), **opts, constraints=(f"latency_ms<={limit}",))
    feasible = [c for c in candidates if c["predicted_latency_ms"] <= limit]
    best = max(feasible, key=lambda c: c["log_prob"])
    assert sp.format(picked.arch) == best["arch"] and table.predict(picked.arch) <= limit
    # the rerun resumed the finished search: same distribution, nothing trained again
    assert picked.strengths == free.strengths and picked.history == free.history
    assert picked.info["result"]["arch"] == best["arch"] and picked.info["constraints"] == [f"latency_ms<={limit}"]
    with pytest.raises(BudgetError, match=r"closest seen: smallest latency_ms \d"):
        fbnet(make_ctx(splits, seed=5, run_dir=tmp_path / "run"), **opts, constraints=("latency_ms<=0.001",))
    with pytest.raises(ConfigError, match="bad constraint"):
        FbnetConfig(constraints=("latency_ms<=4ms",))
