"""SPOS (Guo et al. 2020) on its own ShuffleNetV2 space with channel-number search."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chi2

import nasforge
from nasforge.cli import main
from nasforge.hardware.cost import measure
from nasforge.methods import spos as mod
from nasforge.methods.spos import spos
from nasforge.policies import FairPolicy, UniformPolicy
from nasforge.spaces.shufflenet import CHANNEL_SCALES, OPS
from nasforge.train.bilevel import weight_step_pieces
from nasforge.train.oneshot import OneShotContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny convolutions: one thread is fastest on a busy machine

#: the CIFAR layout at a quarter width (8 | 16 40 80 160 | 1024 channels) with channel search
TINY_SPACE: dict[str, Any] = {"preset": "cifar", "width_mult": 0.25, "channels": True}
FAST: dict[str, Any] = {
    "epochs": 1, "batch_size": 16, "lr": 0.05, "population_size": 6, "iterations": 2, "top_k": 2,
    "mutation_num": 2, "crossover_num": 2, "bn_recal_images": 32, "eval_batches": 2,
}


def make_ctx(splits: tuple[Any, Any], **kwargs: Any) -> OneShotContext:
    train, valid = splits
    kwargs.setdefault("max_batches_per_epoch", 2)
    return OneShotContext(
        space=nasforge.get_space("shufflenet", **TINY_SPACE), train_set=train, valid_set=valid, num_classes=10,
        input_shape=(1, 8, 8), log=lambda _: None, **kwargs,
    )


def test_spos_is_registered_on_the_space() -> None:
    assert "shufflenet" in spos.spaces


def test_uniform_sampling_covers_ops_and_channel_scales() -> None:
    """Chi-square over 2,000 draws of the method's policy: each op and each width uniformly, independently."""
    space = nasforge.get_space("shufflenet", **TINY_SPACE)
    policy = UniformPolicy(space, space.supernet(num_classes=10, in_channels=1), seed=0)
    draws = [policy() for _ in range(2000)]
    assert set(draws[0]) == set(space.decisions()) and len(draws[0]) == 40  # 20 ops + 20 widths per path
    stat, dof = 0.0, 0
    for key, options in space.decisions().items():
        assert options == (CHANNEL_SCALES if key.endswith("_ch") else OPS)
        counts = Counter(path[key] for path in draws)
        assert set(counts) == set(options), key
        expected = len(draws) / len(options)
        stat += sum((counts[o] - expected) ** 2 / expected for o in options)
        dof += len(options) - 1
    assert chi2.sf(stat, dof) > 1e-3, (stat, dof)
    pairs = Counter((p["b07_op"], p["b07_ch"]) for p in draws)  # op and width of one block: 40 pairs
    exp = len(draws) / 40
    assert chi2.sf(sum((pairs[(o, s)] - exp) ** 2 / exp for o in OPS for s in CHANNEL_SCALES), 39) > 1e-3


def test_fair_policy_runs_every_width_once_per_step() -> None:
    """FairPolicy sees the width keys as decisions: 10 paths per step, each scale once per block."""
    space = nasforge.get_space("shufflenet", **TINY_SPACE)
    policy = FairPolicy(space.supernet(num_classes=10, in_channels=1).choices(), seed=0)
    paths = policy.paths()
    assert len(paths) == len(CHANNEL_SCALES)
    for b in space.blocks:
        assert sorted(p[f"{b.name}_ch"] for p in paths) == sorted(CHANNEL_SCALES)
        assert set(p[f"{b.name}_op"] for p in paths) == set(OPS)


def _block_params(net: Any, name: str, op: str) -> dict[str, torch.nn.Parameter]:
    return dict(net.blocks[name].candidates[op].named_parameters())


def test_a_step_updates_only_the_sliced_weights_of_the_sampled_width(splits: tuple[Any, Any]) -> None:
    ctx = make_ctx(splits)
    torch.manual_seed(0)
    net = ctx.supernet()
    space = ctx.space
    arch = space.make({**dict(space.sample(random.Random(5)).choices), "b05_op": "shuffle5", "b05_ch": "0.6",
                       "b06_op": "xception", "b06_ch": "1.4"})
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.5)  # no momentum, no decay: a change is the gradient's
    batch = ctx.fixed_train_batches(1, 16)[0]
    weight_step_pieces(net, [(net.path_for(arch), batch)], opt, loss_fn=F.cross_entropy, grad_clip=None, where="t")
    after = net.state_dict()
    # b05: shuffle5 in the split form, 40 channels, base mid 20 -> allocated 40, sampled 0.6 x 20 = 12
    p = _block_params(net, "b05", "shuffle5")
    pw1, dw, pw2 = p["main.0.0.weight"], p["main.1.0.weight"], p["main.2.0.weight"]
    assert pw1.shape[0] == dw.shape[0] == pw2.shape[1] == 40
    for w, sliced in ((pw1, (slice(0, 12),)), (dw, (slice(0, 12),)), (pw2, (slice(None), slice(0, 12)))):
        assert w.grad is not None and w.grad[sliced].abs().sum() > 0
        outside = torch.ones_like(w, dtype=torch.bool)
        outside[sliced] = False
        assert torch.count_nonzero(w.grad[outside]) == 0  # the gradient is exactly zero outside the slice
    key = "blocks.b05.candidates.shuffle5.main.0.0.weight"
    assert torch.equal(after[key][12:], before[key][12:]) and not torch.equal(after[key][:12], before[key][:12])
    # b06: xception at 1.4 x 20 = 28 of 40: the middle 1x1 conv is sliced in both dimensions
    mid = _block_params(net, "b06", "xception")["main.3.0.weight"]
    assert mid.grad is not None and torch.count_nonzero(mid.grad[28:]) == 0
    assert torch.count_nonzero(mid.grad[:, 28:]) == 0 and mid.grad[:28, :28].abs().sum() > 0
    # the running statistics of the sliced BN: only the sampled channels moved
    rm = "blocks.b05.candidates.shuffle5.main.0.1.running_mean"
    assert torch.equal(after[rm][12:], before[rm][12:]) and not torch.equal(after[rm][:12], before[rm][:12])
    # the other ops of every block: no gradient, unchanged
    for b in space.blocks:
        for op in OPS:
            if op != arch[f"{b.name}_op"]:
                assert all(q.grad is None for q in _block_params(net, b.name, op).values()), (b.name, op)
                prefix = f"blocks.{b.name}.candidates.{op}."
                assert all(torch.equal(v, before[k]) for k, v in after.items() if k.startswith(prefix))


def test_each_method_step_trains_one_uniform_path_at_its_widths(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = make_ctx(splits, max_batches_per_epoch=2)
    seen: list[dict[str, str]] = []
    original = mod.weight_step_pieces

    def step(supernet: Any, pieces: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(supernet, pieces, *args, **kwargs)
        path = pieces[0][0]
        seen.append(dict(path))
        for b in ctx.space.blocks:
            op, mid = path[f"{b.name}_op"], b.mid(path[f"{b.name}_ch"])
            for name, q in _block_params(supernet, b.name, op).items():
                if name == "main.0.0.weight" and op != "xception":  # first 1x1 conv: mid output filters
                    assert q.grad is not None and torch.count_nonzero(q.grad[mid:]) == 0
            assert all(q.grad is None for o in OPS if o != op for q in _block_params(supernet, b.name, o).values())
        return out

    monkeypatch.setattr(mod, "weight_step_pieces", step)
    res = spos(ctx, **FAST)
    assert len(seen) == 2 and seen[0] != seen[1]
    assert ctx.space.is_valid(res.arch) and res.arch.space == "shufflenet"


def test_evolution_under_a_flops_limit_returns_a_network_that_meets_it(splits: tuple[Any, Any]) -> None:
    ctx = make_ctx(splits)
    space = ctx.space
    macs = sorted(measure(space.build(space.sample(random.Random(i)), num_classes=10, in_channels=1), (1, 8, 8)).macs
                  for i in range(12))
    bound = macs[len(macs) // 2]  # about half of the space breaks it
    res = spos(ctx, **{**FAST, "constraints": [f"macs<={bound}"]})
    got = measure(space.build(res.arch, num_classes=10, in_channels=1), (1, 8, 8)).macs
    assert got <= bound and res.info["metrics"]["macs"] == got
    assert res.info["rejected"] > 0 and all(r["macs"] <= bound for r in res.info["scored"])


def test_cli_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["search", "--method", "spos", "--space", "shufflenet", "--space-opt", "preset=cifar",
            "--space-opt", "width_mult=0.25", "--space-opt", "channels=true", "--epochs", "1",
            "--max-batches-per-epoch", "2", "--no-final-train", "--no-progress", "--out", str(out)]
    for k, v in FAST.items():
        if k != "epochs":
            argv += ["--method-opt", f"{k}={v}"]
    argv += ["--constraint", "macs<=3M"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method_kind"] == "one-shot" and results["info"]["constraints"] == ["macs<=3e+06"]
    assert all(r["macs"] <= 3e6 for r in results["info"]["scored"])
    arch = nasforge.get_space("shufflenet", **TINY_SPACE).parse(results["best"]["arch"])
    assert "@" in results["best"]["arch"] and len(arch.choices) == 40
