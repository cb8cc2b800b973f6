"""SPOS (Guo et al. 2020): uniform single paths, BN recalibration, evolution under cost limits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from scipy.stats import chi2
from torch.nn.modules.batchnorm import _BatchNorm

import nasforge
from nasforge import registry
from nasforge.cli import main
from nasforge.errors import BudgetError, ConfigError
from nasforge.evaluators.supernet import SupernetEvaluator, recalibrate_bn
from nasforge.hardware.cost import measure
from nasforge.methods import spos as mod
from nasforge.methods.spos import SposConfig, spos
from nasforge.nn.choice import Choice
from nasforge.policies import UniformPolicy
from nasforge.train.oneshot import OneShotContext, path_accuracy

#: a tiny CIFAR-preset MobileNet space: 8..80 channels, kernels 3 / 5, expansion 1, skip offered
TINY_SPACE: dict[str, Any] = {"preset": "cifar", "width_mult": 0.25, "kernels": [3, 5], "expansions": [1]}
FAST: dict[str, Any] = {
    "epochs": 1, "batch_size": 16, "lr": 0.05, "population_size": 6, "iterations": 2, "top_k": 2,
    "mutation_num": 2, "crossover_num": 2, "bn_recal_images": 32, "eval_batches": 2,
}


def make_ctx(splits: tuple[Any, Any], **kwargs: Any) -> OneShotContext:
    train, valid = splits
    kwargs.setdefault("max_batches_per_epoch", 2)
    return OneShotContext(
        space=nasforge.get_space("mobilenet", **TINY_SPACE), train_set=train, valid_set=valid, num_classes=10,
        input_shape=(1, 8, 8), log=lambda _: None, **kwargs,
    )


def capture_supernet(monkeypatch: pytest.MonkeyPatch, ctx: OneShotContext) -> dict[str, Any]:
    got: dict[str, Any] = {}
    build = ctx.supernet

    def supernet(**overrides: Any) -> Any:
        got["supernet"] = build(**overrides)
        return got["supernet"]

    monkeypatch.setattr(ctx, "supernet", supernet)
    return got


def test_registered_with_paper_defaults() -> None:
    assert registry.get("method", "spos") is spos and spos.spaces == ("mobilenet", "nb201", "shufflenet")
    cfg = SposConfig()
    assert (cfg.population_size, cfg.iterations, cfg.top_k, cfg.mutation_prob) == (50, 20, 10, 0.1)
    assert cfg.bn_recal_images == 20000
    with pytest.raises(ConfigError, match="val_acc"):
        SposConfig(constraints=("val_acc>=50",))  # limits checked before scoring are cost-model limits
    assert SposConfig(constraints="flops<=5M").constraints == ("flops<=5M",)  # one string from the command line


def test_uniform_sampling_chi_square(splits: tuple[Any, Any]) -> None:
    """Each option of each layer is drawn uniformly: chi-square over 3000 draws of the method's sampler."""
    ctx = make_ctx(splits)
    space = nasforge.get_space("mobilenet", preset="cifar", width_mult=0.25)  # 6 or 7 options per layer
    policy = UniformPolicy(space, space.supernet(num_classes=10, in_channels=1), seed=ctx.seed)
    draws = [policy() for _ in range(3000)]
    stat, dof = 0.0, 0
    for key, options in space.decisions().items():
        counts = Counter(path[key] for path in draws)
        assert set(counts) == set(options)
        expected = len(draws) / len(options)
        stat += sum((counts[o] - expected) ** 2 / expected for o in options)
        dof += len(options) - 1
    assert chi2.sf(stat, dof) > 1e-3, (stat, dof)
    # the decisions are drawn independently: pairs of layers are uniform over the 36 or more pairs
    pairs = Counter((p["s1_l0"], p["s2_l0"]) for p in draws)
    exp = len(draws) / 36
    assert chi2.sf(sum((pairs[(a, b)] - exp) ** 2 / exp for a in space.decisions()["s1_l0"]
                       for b in space.decisions()["s2_l0"]), 35) > 1e-3


def test_each_step_trains_exactly_one_uniform_path(splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx(splits, max_batches_per_epoch=3)
    got = capture_supernet(monkeypatch, ctx)
    steps: list[dict[str, Any]] = []
    original = mod.weight_step_pieces

    def step(supernet: Any, pieces: Any, *args: Any, **kwargs: Any) -> Any:
        ran: list[tuple[str, str]] = []
        hooks = [cand.register_forward_hook(lambda *_, k=key, o=name: ran.append((k, o)))
                 for key, choice in supernet.layers.items() for name, cand in choice.candidates.items()]
        out = original(supernet, pieces, *args, **kwargs)
        for h in hooks:
            h.remove()
        with_grad = {n.split(".")[1] + "/" + n.split(".")[3] for n, p in supernet.named_parameters()
                     if n.startswith("layers.") and p.grad is not None}
        steps.append({"pieces": pieces, "ran": ran, "with_grad": with_grad})
        return out

    monkeypatch.setattr(mod, "weight_step_pieces", step)
    spos(ctx, **FAST)
    net = got["supernet"]
    rng_policy = UniformPolicy(ctx.space, net, seed=ctx.seed)
    assert len(steps) == 3
    for s in steps:
        assert len(s["pieces"]) == 1  # one path, one forward of the whole batch
        path = s["pieces"][0][0]
        assert path == rng_policy()  # the seeded uniform stream
        assert sorted(s["ran"]) == sorted(path.items())  # exactly one candidate per layer: the sampled one
        with_params = {f"{k}/{o}" for k, o in path.items() if o != "skip"}  # skip has no weights
        assert s["with_grad"] == with_params  # only the sampled candidates' weights got gradients


def test_bn_recalibration_equals_a_manual_recomputation(splits: tuple[Any, Any]) -> None:
    ctx = make_ctx(splits)
    torch.manual_seed(0)
    net = ctx.supernet()
    bns = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    for m in bns:  # stale statistics, as a supernet trained on every path holds them
        m.running_mean.fill_(3.0)
        m.running_var.fill_(7.0)
    arch = ctx.space.sample(__import__("random").Random(1))
    path = net.path_for(arch)
    batches = ctx.fixed_train_batches(3, 16)
    inputs: dict[int, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod_, inp, _out, i=i: inputs.setdefault(i, []).append(inp[0].detach()))
             for i, m in enumerate(bns)]
    net.eval()
    n = recalibrate_bn(net, path, batches)
    for h in hooks:
        h.remove()
    assert n == 3 and not net.training and all(m.momentum == 0.1 for m in bns)  # mode and momentum restored
    assert inputs, "no BN ran"
    for i, m in enumerate(bns):
        if i not in inputs:  # off the path: reset
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            continue
        xs = inputs[i]
        assert len(xs) == 3
        mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
        var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in xs]).mean(0)
        assert torch.allclose(m.running_mean, mean, atol=1e-5), i
        assert torch.allclose(m.running_var, var, atol=1e-4, rtol=1e-4), i
    # the evaluator recalibrates and scores; the score does not depend on what was scored before
    valid = ctx.fixed_valid_batches(2, 16)
    ev = SupernetEvaluator(net, calibration=batches, batches=valid)
    other = ctx.space.sample(__import__("random").Random(2))
    first = ev.accuracy(arch)
    ev.accuracy(other)
    assert ev.accuracy(arch) == first
    net.eval()
    assert path_accuracy(net, path, valid) == first
    assert ev.calibration_images == 48


def test_every_scored_candidate_meets_the_limits(splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx(splits)
    import random

    space = ctx.space
    sizes = sorted(measure(space.build(space.sample(random.Random(i)), num_classes=10, in_channels=1), (1, 8, 8)).params
                   for i in range(20))
    bound = sizes[len(sizes) // 2]  # about half the space breaks it
    scored_archs: list[Any] = []
    original = SupernetEvaluator.accuracy

    def spy(self: Any, arch: Any) -> float:
        scored_archs.append(arch)
        return original(self, arch)

    monkeypatch.setattr(SupernetEvaluator, "accuracy", spy)
    res = spos(ctx, **{**FAST, "constraints": [f"params<={bound}", "latency_ms<=1000"]})
    assert res.info["rejected"] > 0 and len(scored_archs) == len(res.info["scored"]) >= 6
    for arch, record in zip(scored_archs, res.info["scored"]):
        params = measure(space.build(arch, num_classes=10, in_channels=1), (1, 8, 8)).params
        assert params <= bound and record["params"] == params and record["arch"] == space.format(arch)
        assert 0 < record["latency_ms"] <= 1000
    assert res.info["metrics"]["params"] <= bound
    best = max(res.info["scored"], key=lambda r: r["val_acc"])
    assert space.format(res.arch) == best["arch"] == res.info["top_k"][0]["arch"]
    assert len(res.info["evolution"]) == 2 and res.info["bn_recal_images"] == 32


def test_no_feasible_architecture_names_the_closest(splits: tuple[Any, Any]) -> None:
    with pytest.raises(BudgetError, match=r"smallest params \d+"):
        spos(make_ctx(splits), **{**FAST, "population_size": 1, "top_k": 1, "mutation_num": 0, "crossover_num": 0,
                                  "constraints": ["params<=10"]})


def test_selection_resumes_after_an_interrupted_iteration(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    whole = spos(make_ctx(splits, run_dir=tmp_path / "whole"), **FAST)
    calls = {"n": 0}
    original = SupernetEvaluator.accuracy

    def stop_in_second_iteration(self: Any, arch: Any) -> float:
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(self, arch)

    monkeypatch.setattr(SupernetEvaluator, "accuracy", stop_in_second_iteration)
    with pytest.raises(KeyboardInterrupt):
        spos(make_ctx(splits, run_dir=tmp_path / "cut"), **FAST)
    state = torch.load(tmp_path / "cut" / "search.pt", weights_only=True)["scalars"]["evolution"]
    assert state["iteration"] == 1 and len(state["scored"]) == 6  # the first iteration is saved
    monkeypatch.setattr(SupernetEvaluator, "accuracy", original)
    resumed = spos(make_ctx(splits, run_dir=tmp_path / "cut"), **FAST)
    assert resumed.arch == whole.arch and resumed.info["scored"] == whole.info["scored"]
    drop = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert drop(resumed.history) == drop(whole.history)


def test_runs_on_nb201(splits: tuple[Any, Any]) -> None:
    train, valid = splits
    ctx = OneShotContext(
        space=nasforge.get_space("nb201"), train_set=train, valid_set=valid, num_classes=10, input_shape=(1, 8, 8),
        supernet_kwargs={"C": 4, "N": 1}, log=lambda _: None, max_batches_per_epoch=2,
    )
    res = spos(ctx, **{**FAST, "constraints": ["flops<=1G"]})
    assert res.arch.space == "nb201" and len(res.info["scored"]) >= 6


def test_cli_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["search", "--method", "spos", "--space", "mobilenet", "--space-opt", "preset=cifar",
            "--space-opt", "width_mult=0.25", "--space-opt", "kernels=[3,5]", "--space-opt", "expansions=[1]",
            "--epochs", "1", "--max-batches-per-epoch", "2", "--no-final-train", "--no-progress", "--out", str(out)]
    for k, v in FAST.items():
        if k != "epochs":
            argv += ["--method-opt", f"{k}={v}"]
    argv += ["--constraint", "flops<=2M"]  # the search's limits reach the method's selection
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method_kind"] == "one-shot" and results["info"]["constraints"] == ["flops<=2e+06"]
    assert all(r["flops"] <= 2e6 for r in results["info"]["scored"])
    assert nasforge.get_space("mobilenet", **TINY_SPACE).parse(results["best"]["arch"])
    assert (out / "search" / "search.pt").exists()


def test_candidates_run_one_choice_per_layer() -> None:
    """The supernet's single path of an architecture runs one candidate per Choice (what SPOS trains)."""
    space = nasforge.get_space("mobilenet", **TINY_SPACE)
    net = space.supernet(num_classes=10, in_channels=1)
    assert all(isinstance(c, Choice) for c in net.layers.values())
    assert set(net.choices()) == set(space.decisions())


def test_constraint_is_refused_where_a_one_shot_method_takes_no_limits(tmp_path: Path) -> None:
    from nasforge.errors import ConfigError
    from nasforge.experiment import SearchConfig

    with pytest.raises(ConfigError, match="--constraint does not apply to the one-shot method 'darts'.*fairnas.*spos"):
        SearchConfig(method="darts", constraints=["flops<=2M"], out=str(tmp_path / "x")).validate()
    with pytest.raises(ConfigError, match="give the limits once"):
        SearchConfig(method="spos", space="mobilenet", constraints=["flops<=2M"],
                     method_kwargs={"constraints": ["params<=1M"]}, out=str(tmp_path / "y")).validate()
    assert not (tmp_path / "x").exists()
