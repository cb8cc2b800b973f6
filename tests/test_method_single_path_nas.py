"""Single-Path NAS (Stamoulis et al. 2019): runtime model, CE + lambda log(R), schedule, resume, CLI."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import nasforge
from _oneshot import killed_after, quick_table, synthetic_table
from nasforge import registry
from nasforge.cli import main
from nasforge.errors import ConfigError
from nasforge.hardware.lut import load_lut
from nasforge.methods import single_path_nas as mod
from nasforge.methods.single_path_nas import (
    RuntimeModel,
    SinglePathNasConfig,
    single_path_lr,
    single_path_nas,
)
from nasforge.nn.superkernel import LayerIndicators
from nasforge.spaces.mobilenet_superkernel import SuperkernelMobileNet
from nasforge.train.oneshot import OneShotContext

#: a tiny CIFAR-preset MobileNet space with the paper's candidates (k3/k5, e3/e6, skip)
TINY_SPACE: dict[str, Any] = {"preset": "cifar", "width_mult": 0.1, "kernels": [3, 5], "expansions": [3, 6]}
SHAPE = (1, 8, 8)  # the built-in digits
#: synthetic per-option latencies (ms); k3_e3 breaks the paper's k3/k5 ratio assumption (0.5 * 0.6 / 1.0 = 0.3)
SYNTHETIC = {"ir_k3_e3": 0.25, "ir_k5_e3": 0.5, "ir_k3_e6": 0.6, "ir_k5_e6": 1.0, "skip": 0.05}
CONSTANT = 0.4


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> Iterator[None]:
    yield  # tiny convolutions: one intra-op thread is fastest on the shared machine


def space() -> Any:
    return nasforge.get_space("mobilenet", **TINY_SPACE)


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (measured) table of the tiny space on this machine, built fast."""
    return quick_table(space(), SHAPE, tmp_path_factory.mktemp("lut") / "lut.json")


@pytest.fixture(scope="module")
def synthetic_path(table_path: Path) -> Path:
    """The table with every entry replaced by :data:`SYNTHETIC` and the constant by :data:`CONSTANT`."""
    return synthetic_table(table_path, "synthetic.json", SYNTHETIC, CONSTANT)


def make_ctx(splits: tuple[Any, Any], **kwargs: Any) -> OneShotContext:
    train, valid = splits
    kwargs.setdefault("max_batches_per_epoch", 2)
    return OneShotContext(
        space=space(), train_set=train, valid_set=valid, num_classes=10, input_shape=SHAPE, log=lambda _: None,
        **kwargs,
    )


def fast(table: Path, **overrides: Any) -> dict[str, Any]:
    return {"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "latency_table": str(table), **overrides}


def hard(arch: Any, sp: Any) -> dict[str, LayerIndicators]:
    """Hard indicators selecting ``arch``."""
    out = {}
    for layer, opts in sp.decisions().items():
        option = arch[layer]
        skip = option == "skip"
        k, e = (5, 6) if skip else (int(p[1:]) for p in option.split("_")[1:])
        small = None if "skip" not in opts else torch.tensor(0.0 if skip else 1.0)
        out[layer] = LayerIndicators(torch.tensor(float(k == 5)), torch.tensor(float(e == 6)), small)
    return out


def test_registered_with_the_reference_defaults() -> None:
    assert registry.get("method", "single_path_nas") is single_path_nas and single_path_nas.spaces == ("mobilenet",)
    cfg = SinglePathNasConfig()
    assert (cfg.epochs, cfg.warmup_epochs, cfg.batch_size, cfg.lr_per_256) == (8, 5, 1024, 0.016)
    assert (cfg.rmsprop_decay, cfg.momentum, cfg.rmsprop_eps, cfg.weight_decay) == (0.9, 0.9, 1e-3, 1e-5)
    assert (cfg.runtime_lambda, cfg.runtime_loss_scale, cfg.warmup_keep, cfg.label_smoothing) == (0.02, 1e3, 0.6, 0.1)
    assert cfg.runtime_model == "paper" and single_path_nas.options()["latency_table"] is None
    with pytest.raises(ConfigError, match="runtime_model must be one of paper, table"):
        SinglePathNasConfig(runtime_model="exact")


def test_learning_rate_is_scaled_and_decayed_in_steps_of_2_4_epochs() -> None:
    cfg = SinglePathNasConfig()
    assert single_path_lr(cfg, 0.0) == pytest.approx(0.016 * 4)  # batch 1024 = 4 x 256
    assert single_path_lr(cfg, 2.39) == pytest.approx(0.064)
    assert single_path_lr(cfg, 2.4) == pytest.approx(0.064 * 0.97)
    assert single_path_lr(cfg, 7.9) == pytest.approx(0.064 * 0.97 ** 3)


def test_table_runtime_model_equals_the_table_prediction_at_hard_indicators(table_path: Path) -> None:
    sp = space()
    table = load_lut(table_path, space=sp, input_shape=SHAPE)
    model = RuntimeModel(table, sp, "table")
    rng = random.Random(0)
    for arch in [sp.sample(rng) for _ in range(6)]:
        assert float(model(hard(arch, sp))) == pytest.approx(table.predict(arch), rel=1e-6)
    # and through the network: the indicators of set thresholds give the prediction of the derived arch
    torch.manual_seed(0)
    net = SuperkernelMobileNet(sp, num_classes=10, in_channels=1)
    with torch.no_grad():
        for i, block in enumerate(net.blocks().values()):
            block.t_kernel.fill_(float(block.norms()["kernel"]) + (1.0 if i % 2 else -1.0))
            block.t_large.fill_(float(block.norms()["large"]) + (1.0 if i % 3 else -1.0))
            if block.t_small is not None:
                block.t_small.fill_(float(block.norms()["small"]) + (1.0 if i % 4 == 1 else -1.0))
    arch = net.arch()
    assert len({o for _, o in arch.choices}) >= 4
    assert float(model(net.indicators()).detach()) == pytest.approx(table.predict(arch), rel=1e-6)


def test_paper_runtime_model_is_the_reference_formula(synthetic_path: Path) -> None:
    sp = space()
    table = load_lut(synthetic_path, space=sp, input_shape=SHAPE)
    model = RuntimeModel(table, sp, "paper")
    n = len(sp.layers)
    skippable = sum("skip" in opts for opts in sp.decisions().values())
    for option, per_layer in [("ir_k5_e6", 1.0), ("ir_k5_e3", 0.5), ("ir_k3_e6", 0.6)]:
        arch = sp.make({d: option for d in sp.decisions()})
        assert float(model(hard(arch, sp))) == pytest.approx(n * per_layer + CONSTANT)
        assert table.predict(arch) == pytest.approx(n * per_layer + CONSTANT)
    # k3 e3 assumes the k3/k5 ratio of e6: 0.5 * 0.6 / 1.0 = 0.3, where the table says 0.25
    arch = sp.make({d: "ir_k3_e3" for d in sp.decisions()})
    assert float(model(hard(arch, sp))) == pytest.approx(n * 0.3 + CONSTANT)
    assert table.predict(arch) == pytest.approx(n * 0.25 + CONSTANT)
    # skip costs nothing in the paper's model (the table: 0.05 ms)
    arch = sp.make({d: "skip" if "skip" in o else "ir_k5_e6" for d, o in sp.decisions().items()})
    assert float(model(hard(arch, sp))) == pytest.approx((n - skippable) * 1.0 + CONSTANT)
    assert model.fastest() == pytest.approx((n - skippable) * 0.3 + CONSTANT)


def test_runtime_gradient_raises_every_threshold(synthetic_path: Path) -> None:
    """d(lambda log R)/dt < 0 for every threshold: gradient descent on the runtime term makes layers smaller."""
    sp = space()
    model = RuntimeModel(load_lut(synthetic_path, space=sp, input_shape=SHAPE), sp, "paper")
    torch.manual_seed(0)
    net = SuperkernelMobileNet(sp, num_classes=10, in_channels=1)
    with torch.no_grad():  # thresholds near the norms: the sigmoid's slope is not negligible
        for block in net.blocks().values():
            for name in ("kernel", "large", "small"):
                t = getattr(block, f"t_{name}")
                if t is not None:
                    t.fill_(float(block.norms()[name]) - 0.5)
    torch.log(model(net.indicators())).backward()
    for name, block in net.blocks().items():
        for t in (block.t_kernel, block.t_large, block.t_small):
            if t is not None:
                assert t.grad is not None and float(t.grad) < 0, name


def test_loss_and_schedule_warmup_drops_indicators_then_adds_lambda_log_r(
    splits: tuple[Any, Any], synthetic_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict[str, Any]] = []
    step = mod.weight_step
    sp = space()
    model = RuntimeModel(load_lut(synthetic_path, space=sp, input_shape=SHAPE), sp, "paper")

    def spy(net: Any, indicators: Any, batch: Any, optimizer: Any, **kwargs: Any) -> Any:
        values = {round(float(d.detach()), 5) for ind in indicators.values() for d in (ind.kernel, ind.large, ind.small)
                  if d is not None}
        extra = kwargs["extra_loss"]
        logits = net(batch[0], indicators)
        seen.append({"values": values, "extra": None if extra is None else float(extra.detach()),
                     "log_r": math.log(float(model(indicators).detach())), "lr": optimizer.param_groups[0]["lr"],
                     "ce": float(F.cross_entropy(logits, batch[1], label_smoothing=0.1).detach())})
        return step(net, indicators, batch, optimizer, **kwargs)

    monkeypatch.setattr(mod, "weight_step", spy)
    res = single_path_nas(make_ctx(splits), **fast(synthetic_path, epochs=3, warmup_epochs=1, runtime_lambda=0.5))
    assert len(seen) == 6
    warm, after = seen[:2], seen[2:]
    assert all(s["extra"] is None for s in warm)  # lambda 0 in the warm-up
    assert set().union(*(s["values"] for s in warm)) <= {0.0, round(1 / 0.6, 5)}  # dropped-out indicators
    assert round(1 / 0.6, 5) in set().union(*(s["values"] for s in warm))
    for s in after:
        assert s["values"] <= {0.0, 1.0}  # no dropout afterwards
        assert s["extra"] == pytest.approx(0.5 * 1e3 * s["log_r"], rel=1e-5)
    # per step: 2 steps an epoch, so step 5 is at 2.5 epochs, after the first decay (every 2.4 epochs)
    assert [s["lr"] for s in seen] == pytest.approx([0.016 * 16 / 256] * 5 + [0.016 * 16 / 256 * 0.97])
    assert [h["runtime_lambda"] for h in res.history] == [0.0, 0.5, 0.5]
    assert [h["indicator_keep"] for h in res.history] == [0.6, 1.0, 1.0]
    assert res.history[1]["train_loss"] == pytest.approx(
        sum(s["ce"] + s["extra"] for s in after[:2]) / 2, rel=1e-4)  # CE (smoothed) + lambda 1e3 log R


def test_larger_lambda_never_lowers_a_threshold_on_the_same_seed(splits: tuple[Any, Any], synthetic_path: Path) -> None:
    """One step after the warm-up: RMSProp's first step follows the gradient's sign, and the runtime term's
    gradient raises every threshold, so a large lambda leaves each threshold at least as high."""
    base = fast(synthetic_path, epochs=1, warmup_epochs=0)
    low = single_path_nas(make_ctx(splits, max_batches_per_epoch=1), **base, runtime_lambda=0.0)
    high = single_path_nas(make_ctx(splits, max_batches_per_epoch=1), **base, runtime_lambda=5.0)
    lo, hi = low.info["thresholds"], high.info["thresholds"]
    pairs = [(lo[layer][k], hi[layer][k]) for layer in lo for k in lo[layer]]
    assert all(h >= v - 1e-9 for v, h in pairs)
    assert sum(h > v + 1e-6 for v, h in pairs) >= len(pairs) // 2
    assert all(h > 0 for _, h in pairs)  # every threshold moved up from 0
    assert high.info["predicted_latency_ms"] <= low.info["predicted_latency_ms"]


def test_result_is_the_arch_of_the_final_thresholds(splits: tuple[Any, Any], table_path: Path) -> None:
    res = single_path_nas(make_ctx(splits), **fast(table_path))
    sp = space()
    table = load_lut(table_path)
    assert res.info["predicted_latency_ms"] == pytest.approx(table.predict(res.arch))
    assert res.history[-1]["arch"] == sp.format(res.arch)
    norms, thresholds = res.info["norms"], res.info["thresholds"]
    for layer, option in res.arch.choices:  # the decision rule, read back from the reported values
        assert set(norms[layer]) == {"kernel", "large", "small"}
        if "small" in thresholds[layer] and norms[layer]["small"] < thresholds[layer]["small"]:
            assert option == "skip"
        else:
            k5 = norms[layer]["kernel"] >= thresholds[layer]["kernel"]
            e6 = norms[layer]["large"] >= thresholds[layer]["large"]
            assert option == f"ir_k{5 if k5 else 3}_e{6 if e6 else 3}"
    assert res.strengths[sp.layers[0].name].count(1.0) == 1  # one-hot strengths of the result


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    splits: tuple[Any, Any], table_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    opts = fast(table_path, epochs=2, warmup_epochs=1, runtime_lambda=0.5)
    ref = single_path_nas(make_ctx(splits, run_dir=tmp_path / "full", checkpoint_every=1), **opts)
    with killed_after(monkeypatch, 3):  # the first step after the warm-up
        single_path_nas(make_ctx(splits, run_dir=tmp_path / "cut", checkpoint_every=1), **opts)
    torch.manual_seed(123)  # the resumed run must not depend on the caller's RNG
    res = single_path_nas(make_ctx(splits, run_dir=tmp_path / "cut", checkpoint_every=1), **opts)
    assert res.strengths == ref.strengths and res.arch == ref.arch and res.info == ref.info
    drop = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert drop(res.history) == drop(ref.history)


def test_without_a_table_or_with_another_space_is_refused(splits: tuple[Any, Any], table_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"build-lut --space mobilenet .*--space-opt kernels=\[3,5\]"):
        single_path_nas(make_ctx(splits), **{**fast(table_path), "latency_table": None})
    with pytest.raises(ConfigError, match="two kernel sizes"):
        single_path_nas(OneShotContext(
            space=nasforge.get_space("mobilenet", **{**TINY_SPACE, "kernels": [3, 5, 7]}), train_set=splits[0],
            valid_set=splits[1], num_classes=10, input_shape=SHAPE, log=lambda _: None,
        ), **fast(table_path))
    with pytest.raises(ConfigError, match="space"):  # a table of another space config
        single_path_nas(OneShotContext(
            space=nasforge.get_space("mobilenet", **{**TINY_SPACE, "width_mult": 0.25}), train_set=splits[0],
            valid_set=splits[1], num_classes=10, input_shape=SHAPE, log=lambda _: None,
        ), **fast(table_path))


def test_cli_end_to_end(table_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["search", "--method", "single_path_nas", "--space", "mobilenet", "--space-opt", "preset=cifar",
            "--space-opt", "width_mult=0.1", "--space-opt", "kernels=[3,5]", "--space-opt", "expansions=[3,6]",
            "--epochs", "2", "--max-batches-per-epoch", "2", "--no-final-train", "--no-progress", "--out", str(out)]
    for k, v in fast(table_path).items():
        if k != "epochs":
            argv += ["--method-opt", f"{k}={v}"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method_kind"] == "one-shot" and len(results["history"]) == 2
    arch = space().parse(results["best"]["arch"])
    assert results["info"]["predicted_latency_ms"] == pytest.approx(load_lut(table_path).predict(arch))
    assert set(results["info"]["thresholds"]) == {layer.name for layer in space().layers}
    assert (out / "search" / "search.pt").exists()
