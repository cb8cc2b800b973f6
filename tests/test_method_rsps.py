"""RSPS (Li & Talwalkar 2019): one uniformly sampled architecture per step, two-stage ranking under shared weights."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import nasforge
from _oneshot import killed_after, make_ctx
from nasforge import registry
from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError
from nasforge.methods import rsps as mod
from nasforge.methods.rsps import RspsConfig, rsps, two_stage_ranking
from nasforge.nn.choice import Choice
from nasforge.policies import UniformPolicy
from nasforge.spaces.nb201 import OPS
from nasforge.train.oneshot import OneShotContext, path_accuracy

FAST: dict[str, Any] = {"batch_size": 16, "num_samples": 12, "screen_batches": 1, "top_k": 4, "final_batches": 3}






def capture(monkeypatch: pytest.MonkeyPatch, ctx: OneShotContext) -> dict[str, Any]:
    """Record the supernet, the policy and every architecture the policy draws."""
    got: dict[str, Any] = {"archs": []}
    build = ctx.supernet

    def supernet(**overrides: Any) -> Any:
        got["supernet"] = build(**overrides)
        return got["supernet"]

    class SpyPolicy(UniformPolicy):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            got["policy"] = self

        def forward(self) -> Any:
            path = super().forward()
            got["archs"].append(self.last)
            return path

    monkeypatch.setattr(ctx, "supernet", supernet)
    monkeypatch.setattr(mod, "UniformPolicy", SpyPolicy)
    return got


def test_registered() -> None:
    assert registry.get("method", "rsps") is rsps
    assert rsps.config_cls is RspsConfig


# ---- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_each_step_trains_exactly_the_single_path_of_a_uniform_sample(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, space: str,
) -> None:
    ctx = make_ctx(splits, space)
    got = capture(monkeypatch, ctx)
    steps: list[dict[str, Any]] = []
    ran: list[tuple[int, str]] = []
    original = mod.weight_step_pieces

    def step(supernet: Any, pieces: Any, *args: Any, **kwargs: Any) -> Any:
        if not steps:
            for m in supernet.modules():
                if isinstance(m, Choice):
                    for name, cand in m.candidates.items():
                        cand.register_forward_hook(lambda *_, m=m, name=name: ran.append((id(m), name)))
        ran.clear()
        before = {n: p.detach().clone() for n, p in supernet.named_parameters()}
        out = original(supernet, pieces, *args, **kwargs)
        steps.append({"ran": list(ran), "pieces": pieces})  # the ranking's forwards come later, unrecorded
        steps[-1]["moved"] = {n for n, p in supernet.named_parameters() if not torch.equal(before[n], p)}
        return out

    monkeypatch.setattr(mod, "weight_step_pieces", step)
    rsps(ctx, epochs=2, **FAST)
    net, sp = got["supernet"], ctx.space
    assert len(steps) == 4 and len(got["archs"]) == 4  # 2 epochs x 2 batches: one sample per step
    # the samples are the uniform stream of the policy's seeded RNG (seed = ctx.seed)
    rng = random.Random(ctx.seed)
    assert got["archs"] == [sp.sample(rng) for _ in range(4)]
    assert len(set(got["archs"])) > 1
    key_of = {id(m): name.rsplit(".", 1)[-1] for name, m in net.named_modules() if isinstance(m, Choice)}
    n_choices = len(key_of)
    for s, arch in zip(steps, got["archs"]):
        path = net.path_for(arch)
        assert len(s["pieces"]) == 1 and s["pieces"][0][0] == path  # one forward, the whole batch, this path
        per_choice = Counter(c for c, _ in s["ran"])
        assert set(per_choice.values()) == {1}  # at most one candidate per edge ...
        assert all(op == path[key_of[c]] for c, op in s["ran"])  # ... the sampled one
        # every edge whose sample is not 'none' ran ('none' adds zeros and is left out, unless a
        # node has only 'none' inputs: then one runs for the zero tensor)
        assert {c for c in key_of if path[key_of[c]] != "none"} <= set(per_choice)
        assert len(per_choice) <= n_choices
        # only that path's candidates (and the fixed parts) are updated
        for name in s["moved"]:
            if ".candidates." in name:
                key, op = name.split(".candidates.")[0].rsplit(".", 1)[-1], name.split(".candidates.")[1].split(".")[0]
                assert path[key] == op, name
        parameter_free = ("none", "skip_connect", "avg_pool_3x3", "max_pool_3x3")
        assert any(".candidates." in n for n in s["moved"]) or all(v in parameter_free for v in path.values())
    if space == "darts":  # a genotype: 2 inputs per node x 4 nodes x 2 cell types run an op, the other edges 'none'
        assert all(sum(op != "none" for op in net.path_for(a).values()) == 16 for a in got["archs"])


def test_unsampled_candidates_get_no_weight_decay_or_momentum(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = make_ctx(splits, max_batches_per_epoch=3)
    got = capture(monkeypatch, ctx)
    snapshots: list[dict[str, torch.Tensor]] = []
    original = mod.weight_step_pieces

    def step(supernet: Any, *args: Any, **kwargs: Any) -> Any:
        if not snapshots:
            snapshots.append({n: p.detach().clone() for n, p in supernet.named_parameters()})
        out = original(supernet, *args, **kwargs)
        snapshots.append({n: p.detach().clone() for n, p in supernet.named_parameters()})
        return out

    monkeypatch.setattr(mod, "weight_step_pieces", step)
    rsps(ctx, epochs=1, weight_decay=0.1, momentum=0.9, **FAST)
    net = got["supernet"]
    paths = [net.path_for(a) for a in got["archs"]]
    assert len(paths) == 3
    carried = 0  # parameters with momentum from an earlier step that are off the current path
    for i, path in enumerate(paths):
        before, after = snapshots[i], snapshots[i + 1]
        for name in before:
            if ".candidates." not in name:
                continue
            key, op = name.split(".candidates.")[0].rsplit(".", 1)[-1], name.split(".candidates.")[1].split(".")[0]
            if path[key] != op:  # not in this step's path: bit-identical, even if an earlier step moved it
                assert torch.equal(before[name], after[name]), (i, name)
                carried += int(not torch.equal(snapshots[0][name], before[name]))
    assert carried > 0  # the check above covers parameters with a momentum buffer


# ---- selection ---------------------------------------------------------------------------------
class PathClassifier(nn.Module):
    """A fake supernet: predicts class ``OPS.index(path['edge_1_0'])`` for every example."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def path_for(self, arch: Arch) -> dict[str, str]:
        return dict(arch.choices)

    def forward(self, x: torch.Tensor, path: dict[str, str]) -> torch.Tensor:
        self.calls.append((path["edge_1_0"], int(x.shape[0])))
        return nn.functional.one_hot(torch.full((x.shape[0],), OPS.index(path["edge_1_0"])), 10).float()


def test_two_stage_ranking_rescores_the_screened_top_k_on_the_final_batches() -> None:
    sp = nasforge.get_space("nb201")
    rng = random.Random(0)
    base = [sp.sample(rng) for _ in range(6)]
    samples = [a.replace(edge_1_0=op) for a, op in zip(base, OPS[1:] + OPS[1:2])]  # skip, 1x1, 3x3, pool, skip
    samples.append(samples[0])  # a duplicate draw is measured once
    screen = [(torch.zeros(4, 1), torch.full((4,), OPS.index("skip_connect")))]
    final = [(torch.zeros(3, 1), torch.full((3,), OPS.index("nor_conv_1x1")))] * 2
    net = PathClassifier()
    screened, finals = two_stage_ranking(net, samples, screen, final, top_k=3)
    assert len(screened) == 5 and [acc for _, acc in screened] == [100.0, 100.0, 0.0, 0.0, 0.0]
    assert [a["edge_1_0"] for a, _ in screened[:2]] == ["skip_connect", "skip_connect"]  # ties: sampling order
    assert [a for a, _ in screened[:2]] == [samples[0], samples[4]]
    # the top 3 of the screening (two skips, then the first 0% sample: 1x1) re-ranked on the final batches
    assert [a for a, _ in finals] == [samples[1], samples[0], samples[4]] and finals[0][1] == 100.0
    assert Counter(n for _, n in net.calls) == {4: 5, 3: 6}  # 5 distinct on 1 screen batch; 3 x 2 final batches
    _, single = two_stage_ranking(PathClassifier(), samples, screen, final, top_k=0)
    assert single == []  # one stage: the screening decides
    _, top1 = two_stage_ranking(PathClassifier(), samples, screen, final, top_k=1)
    assert top1 == [(samples[0], 0.0)]  # only the screening's best reaches the final stage


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_end_to_end_returns_the_best_finally_measured_architecture(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, space: str,
) -> None:
    ctx = make_ctx(splits, space, run_dir=tmp_path)
    got = capture(monkeypatch, ctx)
    res = rsps(ctx, epochs=2, **FAST)
    sp, net = ctx.space, got["supernet"]
    assert [h["epoch"] for h in res.history] == [0, 1] and all(math.isfinite(h["train_loss"]) for h in res.history)
    assert res.history[0]["lr"] == pytest.approx(0.025)
    assert res.info["rounds"] == 1 and res.info["stage"] == "final"  # 4 steps // 10000 -> the reference's 1 round
    screening, ranking = res.info["screening"][0], res.info["ranking"]
    rng = random.Random(ctx.seed + 1)
    drawn = list(dict.fromkeys(sp.format(sp.sample(rng)) for _ in range(FAST["num_samples"])))
    assert sorted(r["arch"] for r in screening) == sorted(drawn)
    for records in (screening, ranking):
        accs = [r["accuracy"] for r in records]
        assert accs == sorted(accs, reverse=True)
    assert {r["arch"] for r in ranking} == {r["arch"] for r in screening[:4]}  # the screened top 4, re-measured
    assert len(ranking) == 4 and ranking[0]["arch"] == sp.format(res.arch)
    assert res.info["valid_accuracy"] == ranking[0]["accuracy"]
    # the final accuracies are single-path accuracies of the trained weights (eval mode) on 3 batches
    assert not net.training
    batches = ctx.fixed_valid_batches(3, FAST["batch_size"])
    for r in ranking:
        assert path_accuracy(net, net.path_for(sp.parse(r["arch"])), batches) == r["accuracy"]
    screen = ctx.fixed_valid_batches(1, FAST["batch_size"])
    assert path_accuracy(net, net.path_for(sp.parse(screening[0]["arch"])), screen) == screening[0]["accuracy"]
    strengths = {k: torch.tensor(v) for k, v in res.strengths.items()}
    assert sp.derive(strengths) == res.arch
    # only weights, optimizer, schedule and the sampler's RNG are search state: no architecture parameters
    state = torch.load(tmp_path / "search.pt", weights_only=False)["state"]
    assert sorted(state) == ["policy", "scheduler", "supernet", "w_opt"]
    assert list(state["policy"]) == ["_extra_state"] and list(got["policy"].parameters()) == []
    assert len(state["w_opt"]["param_groups"][0]["params"]) == len(list(net.parameters()))


def test_rounds_and_single_stage_selection(splits: tuple[Any, Any]) -> None:
    res = rsps(make_ctx(splits, max_batches_per_epoch=1), epochs=1, rounds=2, **{**FAST, "top_k": 0})
    assert res.info["rounds"] == 2 and len(res.info["screening"]) == 2 and res.info["stage"] == "screen"
    best = max(r["accuracy"] for s in res.info["screening"] for r in s)
    assert res.info["valid_accuracy"] == best == res.info["ranking"][0]["accuracy"]
    res = rsps(make_ctx(splits, max_batches_per_epoch=1), epochs=1, **{**FAST, "final_batches": None})
    assert res.info["rounds"] == 1 and len(res.info["ranking"]) == FAST["top_k"]  # the whole validation split


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    opts = {"epochs": 2, **FAST}
    with monkeypatch.context() as m:
        ctx = make_ctx(splits, "darts", run_dir=tmp_path / "full", max_batches_per_epoch=3, checkpoint_every=2)
        full = capture(m, ctx)
        ref = rsps(ctx, **opts)

    with killed_after(monkeypatch, 5):  # mid-epoch 1; the last checkpoint is the one of step 4
        rsps(make_ctx(splits, "darts", run_dir=tmp_path / "cut", max_batches_per_epoch=3, checkpoint_every=2),
             **opts)
    with monkeypatch.context() as m:
        ctx = make_ctx(splits, "darts", run_dir=tmp_path / "cut", max_batches_per_epoch=3, checkpoint_every=2)
        again = capture(m, ctx)
        torch.manual_seed(123)
        random.seed(123)
        res = rsps(ctx, **opts)
    assert again["archs"] == full["archs"][4:]  # the sampler's RNG resumed with the weights
    a, b = full["supernet"].state_dict(), again["supernet"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.info == ref.info and res.arch == ref.arch


# ---- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "error", "needle"), [
    ({"num_samples": 0}, BudgetError, "num_samples"),
    ({"screen_batches": 0}, BudgetError, "screen_batches"),
    ({"final_batches": 0}, BudgetError, "final_batches"),
    ({"rounds": 0}, BudgetError, "rounds"),
    ({"top_k": -1}, ConfigError, "top_k must be"),
    ({"top_k": True}, ConfigError, "top_k must be"),
    ({"num_samples": 5, "top_k": 6}, ConfigError, r"top_k must be an int in \[0, num_samples=5\]"),
    ({"epochs": 0}, BudgetError, "epochs"),
    ({"momentum": 1.0}, ConfigError, "momentum"),
    ({"select_num": 100}, ConfigError, "unknown rsps option"),
])
def test_bad_config_values_are_refused(
    splits: tuple[Any, Any], options: dict[str, Any], error: type[Exception], needle: str,
) -> None:
    with pytest.raises(error, match=needle):
        rsps(make_ctx(splits), **options)


def test_defaults_are_the_reference_cifar10_run() -> None:
    cfg = RspsConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_min, cfg.momentum, cfg.nesterov) == (150, 64, 0.025, 0.001, 0.9, False)
    assert (cfg.weight_decay, cfg.grad_clip) == (3e-4, 1.0)
    assert (cfg.num_samples, cfg.screen_batches, cfg.top_k, cfg.final_batches, cfg.rounds) == (1000, 10, 10, None, None)
    with pytest.raises(AttributeError):
        cfg.top_k = 1  # type: ignore[misc]
