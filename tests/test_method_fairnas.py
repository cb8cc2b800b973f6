"""FairNAS (Chu et al. 2021): strict fairness (every choice once per step), accumulated gradients, NSGA-II front."""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import nasforge
from nasforge import registry
from nasforge.cli import main
from nasforge.methods import fairnas as mod
from nasforge.methods.fairnas import FairNasConfig, fair_step, fairnas
from nasforge.pareto import dominates
from nasforge.policies import FairPolicy
from nasforge.train.oneshot import OneShotContext

#: the paper's kind of space (every layer the same choices, no skip), tiny: kernels 3 / 5, expansion 1 or 2
FAIR_SPACE: dict[str, Any] = {"preset": "cifar", "width_mult": 0.25, "kernels": [3, 5], "expansions": [1, 2],
                              "allow_skip": False}
FAST: dict[str, Any] = {"epochs": 1, "batch_size": 16, "lr": 0.05, "population_size": 4, "generations": 2,
                        "bn_recal_images": 32, "eval_batches": 2}


def make_ctx(splits: tuple[Any, Any], space: dict[str, Any] = FAIR_SPACE, **kwargs: Any) -> OneShotContext:
    train, valid = splits
    kwargs.setdefault("max_batches_per_epoch", 2)
    return OneShotContext(
        space=nasforge.get_space("mobilenet", **space), train_set=train, valid_set=valid, num_classes=10,
        input_shape=(1, 8, 8), log=lambda _: None, **kwargs,
    )


def record_steps(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    original = mod.fair_step

    def step(supernet: Any, paths: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        ran: list[tuple[str, str]] = []
        hooks = [cand.register_forward_hook(lambda *_, k=key, o=name: ran.append((k, o)))
                 for key, choice in supernet.layers.items() for name, cand in choice.candidates.items()]
        out = original(supernet, paths, batch, *args, **kwargs)
        for h in hooks:
            h.remove()
        steps.append({"paths": list(paths), "ran": ran, "batch": batch, "choices": supernet.choices()})
        return out

    monkeypatch.setattr(mod, "fair_step", step)
    return steps


def test_registered_with_defaults() -> None:
    assert registry.get("method", "fairnas") is fairnas and fairnas.spaces == ("mobilenet", "nb201")
    assert FairNasConfig().cost_objectives == ("macs",)


def test_every_choice_of_every_layer_runs_exactly_once_per_step(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = record_steps(monkeypatch)
    res = fairnas(make_ctx(splits, max_batches_per_epoch=3), **FAST)
    assert len(steps) == 3 and res.info["strict_fairness"] and res.info["models_per_step"] == 4
    policy = FairPolicy(steps[0]["choices"], seed=0)
    for s in steps:
        assert s["paths"] == policy.paths()  # the seeded permutations
        assert len(s["paths"]) == 4
        every = {(k, o) for k, options in s["choices"].items() for o in options}
        assert Counter(s["ran"]) == {pair: 1 for pair in every}  # each choice of each layer, once
    assert len({tuple(sorted(p.items())) for s in steps for p in s["paths"]}) > 4  # permutations differ per step


def test_layers_with_fewer_choices_run_each_once_or_twice(splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    steps = record_steps(monkeypatch)
    space = {**FAIR_SPACE, "allow_skip": True, "expansions": [1]}  # first layer of a stage: 2 choices, others 3
    res = fairnas(make_ctx(splits, space), **FAST)
    assert not res.info["strict_fairness"] and res.info["models_per_step"] == 3
    for s in steps:
        per_layer = Counter(k for p in s["paths"] for k in p)
        assert set(per_layer.values()) == {3}
        for key, options in s["choices"].items():
            used = Counter(p[key] for p in s["paths"])
            assert set(used) == set(options) and set(used.values()) <= {1, 2}
            if len(options) == 3:
                assert set(used.values()) == {1}


def test_nb201_edges_use_a_permutation_per_step() -> None:
    net = nasforge.get_space("nb201").supernet(num_classes=10, in_channels=1, C=4, N=1)
    policy = FairPolicy(net.choices(), seed=3)
    for _ in range(3):
        paths = policy.paths()
        assert len(paths) == 5 and policy.strict
        for key, options in net.choices().items():
            assert sorted(p[key] for p in paths) == sorted(options)


def test_one_optimizer_step_on_the_sum_of_the_m_models_gradients(splits: tuple[Any, Any]) -> None:
    ctx = make_ctx(splits)
    torch.manual_seed(0)
    net = ctx.supernet()
    net.train()
    paths = FairPolicy(net.choices(), seed=1).paths()
    x, y = ctx.fixed_train_batches(1, 8)[0]
    # reference: each model's gradient on its own, from the same weights, summed
    ref = copy.deepcopy(net)
    total = {n: torch.zeros_like(p) for n, p in ref.named_parameters()}
    for path in paths:
        ref.zero_grad(set_to_none=True)
        F.cross_entropy(ref(x, path), y).backward()
        for n, p in ref.named_parameters():
            if p.grad is not None:
                total[n] += p.grad
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    calls = {"n": 0}
    original_step = opt.step

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return original_step(*args, **kwargs)

    opt.step = counted  # type: ignore[method-assign]
    loss, logits = fair_step(net, paths, (x, y), opt, loss_fn=F.cross_entropy, grad_clip=None, where="test")
    assert calls["n"] == 1 and logits.shape == (len(paths) * 8, 10)
    for n, p in net.named_parameters():
        assert torch.allclose(p.detach(), before[n] - 0.1 * total[n], atol=1e-6), n
    assert all(total[n].abs().sum() > 0 for n, _ in net.named_parameters() if n.startswith("layers."))


def test_selection_returns_a_non_dominated_front_within_the_limits(splits: tuple[Any, Any]) -> None:
    ctx = make_ctx(splits)
    space = ctx.space
    from nasforge.hardware.cost import measure

    macs = sorted(measure(space.build(space.sample(random.Random(i)), num_classes=10, in_channels=1), (1, 8, 8)).macs
                  for i in range(20))
    bound = macs[3 * len(macs) // 4]
    res = fairnas(ctx, **{**FAST, "constraints": [f"macs<={bound}"]})
    front = res.info["pareto_front"]
    assert front and res.info["scored"] + res.info["rejected"] == 4 * 3
    values = [(r["val_acc"], -r["macs"]) for r in front]
    for i, a in enumerate(values):
        assert all(not dominates(b, a) for j, b in enumerate(values) if j != i)
    assert all(r["macs"] <= bound for r in front)
    best = max(front, key=lambda r: r["val_acc"])
    assert space.format(res.arch) == best["arch"] and res.info["valid_accuracy"] == best["val_acc"]


def test_resume_after_the_selection_gives_the_same_result(splits: tuple[Any, Any], tmp_path: Path) -> None:
    first = fairnas(make_ctx(splits, run_dir=tmp_path), **FAST)
    again = fairnas(make_ctx(splits, run_dir=tmp_path), **FAST)  # everything replayed from the checkpoint
    assert again.arch == first.arch and again.info["pareto_front"] == first.info["pareto_front"]


def test_runs_on_nb201(splits: tuple[Any, Any]) -> None:
    train, valid = splits
    ctx = OneShotContext(
        space=nasforge.get_space("nb201"), train_set=train, valid_set=valid, num_classes=10, input_shape=(1, 8, 8),
        supernet_kwargs={"C": 4, "N": 1}, log=lambda _: None, max_batches_per_epoch=2,
    )
    res = fairnas(ctx, **FAST)
    assert res.arch.space == "nb201" and res.info["strict_fairness"] and res.info["models_per_step"] == 5


def test_cli_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["search", "--method", "fairnas", "--space", "mobilenet", "--space-opt", "preset=cifar",
            "--space-opt", "width_mult=0.25", "--space-opt", "kernels=[3,5]", "--space-opt", "expansions=[1]",
            "--space-opt", "allow_skip=false", "--epochs", "1", "--max-batches-per-epoch", "2", "--no-final-train",
            "--no-progress", "--out", str(out)]
    for k, v in FAST.items():
        if k != "epochs":
            argv += ["--method-opt", f"{k}={v}"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["info"]["objectives"] == ["max:val_acc", "min:macs"] and results["info"]["pareto_front"]
    assert results["best"]["arch"] in {r["arch"] for r in results["info"]["pareto_front"]}
