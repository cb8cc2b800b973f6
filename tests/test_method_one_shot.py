"""One-Shot (Bender et al. 2018): per-node path dropout with a linear rate, ghost BN, L2 on active parts, ranking."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nasforge
from _oneshot import killed_after, make_ctx
from nasforge import registry
from nasforge.errors import BudgetError, ConfigError
from nasforge.methods import one_shot as mod
from nasforge.methods.one_shot import (
    OneShotConfig,
    PathDropoutPolicy,
    ghost_batches,
    one_shot,
    scheduled_drop_rate,
)
from nasforge.nn.choice import Choice
from nasforge.nn.ghost_bn import GhostBatchNorm2d, use_ghost_batchnorm
from nasforge.train.bilevel import weight_step_pieces
from nasforge.train.oneshot import OneShotContext, path_accuracy

FAST: dict[str, Any] = {"batch_size": 16, "ghost_batch_size": 6, "num_samples": 12, "eval_batches": 2}






def capture(monkeypatch: pytest.MonkeyPatch, ctx: OneShotContext) -> dict[str, Any]:
    """Record the supernet and the policy the search builds (the objects, not copies)."""
    got: dict[str, Any] = {"draws": []}
    build = ctx.supernet

    def supernet(**overrides: Any) -> Any:
        got["supernet"] = build(**overrides)
        return got["supernet"]

    class SpyPolicy(PathDropoutPolicy):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            got["policy"] = self

        def forward(self) -> Any:
            path = super().forward()
            got["draws"].append((self.rate, path))
            return path

    monkeypatch.setattr(ctx, "supernet", supernet)
    monkeypatch.setattr(mod, "PathDropoutPolicy", SpyPolicy)
    return got


def tiny_nb201() -> Any:
    return nasforge.get_space("nb201").supernet(C=4, N=1, affine=False, track_running_stats=False, in_channels=1)


def test_registered() -> None:
    assert registry.get("method", "one_shot") is one_shot
    assert one_shot.config_cls is OneShotConfig


# ---- path dropout ----------------------------------------------------------------------------
def test_drop_rate_rises_linearly_from_zero_to_r_over_the_steps() -> None:
    assert [scheduled_drop_rate(s, 5, 0.4) for s in range(5)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert scheduled_drop_rate(9, 5, 0.4) == pytest.approx(0.4)  # clamped after the last step
    assert scheduled_drop_rate(0, 1, 0.4) == 0.0  # a one-step run starts (and ends) at 0


@pytest.mark.parametrize("rate", [0.3, 0.7])
def test_all_paths_into_a_node_are_dropped_with_probability_r(rate: float) -> None:
    net = tiny_nb201()
    policy = PathDropoutPolicy(net.choices(), net.edge_groups(), rate=rate)
    assert [policy.paths_into(g) for g in policy.groups] == [4, 8, 12]  # 4 non-'none' ops per edge into node 1/2/3
    torch.manual_seed(0)
    n = 2000
    raw = [policy.draw(keep_one=False) for _ in range(n)]
    for group in policy.groups:
        k = policy.paths_into(group)
        all_dropped = sum(not any(bool(d[key].any()) for key in group) for d in raw) / n
        assert abs(all_dropped - rate) < 0.03, (group, all_dropped)
        per_path = sum(float(d[group[0]][1:].sum()) for d in raw) / (4 * n)  # kept fraction of one edge's 4 ops
        assert abs((1 - per_path) - rate ** (1 / k)) < 0.02, (group, per_path)
    kept = [policy() for _ in range(n)]
    for group in policy.groups:
        counts = [sum(int(d[key].sum()) for key in group) for d in kept]
        assert min(counts) >= 1  # a node always keeps an input
        k = policy.paths_into(group)
        expected = k * (1 - rate ** (1 / k)) + rate  # the keep-one rule adds one path when all were dropped
        assert abs(sum(counts) / n - expected) < 0.1, (group, sum(counts) / n, expected)
    assert all(float(d[key][0]) == 0.0 for d in kept[:200] for key in d)  # 'none' (index 0) never runs


def test_darts_nodes_count_the_paths_of_all_their_incoming_edges() -> None:
    net = nasforge.get_space("darts").supernet(C=4, layers=3, in_channels=1)
    policy = PathDropoutPolicy(net.choices(), net.edge_groups(), rate=0.5)
    assert [policy.paths_into(g) for g in policy.groups] == [14, 21, 28, 35] * 2  # 7 ops x 2..5 inputs, both cells
    torch.manual_seed(1)
    path = policy()
    assert set(path) == set(net.choices()) and all(float(v[0]) == 0.0 for v in path.values())


def test_path_dropout_policy_refuses_bad_rates_and_groups() -> None:
    net = tiny_nb201()
    policy = PathDropoutPolicy(net.choices(), net.edge_groups())
    for bad in (1.0, -0.1, math.nan, True):
        with pytest.raises(ConfigError, match="rate must be in"):
            policy.rate = bad
    with pytest.raises(ConfigError, match="exactly once"):
        PathDropoutPolicy(net.choices(), [["edge_1_0"], ["edge_2_0", "edge_2_1"]])
    with pytest.raises(ConfigError, match="every candidate is excluded"):
        PathDropoutPolicy(net.choices(), net.edge_groups(), exclude=tuple(net.choices()["edge_1_0"]))
    assert list(policy.parameters()) == []  # no architecture parameters


# ---- ghost batch norm ------------------------------------------------------------------------
def test_ghost_batchnorm_normalises_each_ghost_batch_with_its_own_statistics() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    ghost = GhostBatchNorm2d.from_batchnorm(bn, 4)
    assert ghost.weight is bn.weight and ghost.bias is bn.bias
    x = torch.randn(10, 3, 5, 5) * 3 + 1
    expected = []
    for chunk in (x[0:4], x[4:8], x[8:10]):  # ghost batches of 4, the remainder on its own
        mean = chunk.mean(dim=(0, 2, 3), keepdim=True)
        var = chunk.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        expected.append((chunk - mean) / torch.sqrt(var + 1e-5) * bn.weight.view(1, 3, 1, 1) + bn.bias.view(1, 3, 1, 1))
    out = ghost(x)
    assert torch.allclose(out, torch.cat(expected), atol=1e-5)
    assert not torch.allclose(out, F.batch_norm(x, None, None, bn.weight, bn.bias, training=True), atol=1e-3)
    ghost.eval()  # batch statistics in evaluation too: no running statistics exist
    assert torch.allclose(ghost(x), out) and list(ghost.buffers()) == []
    whole = GhostBatchNorm2d.from_batchnorm(bn, None)
    assert torch.allclose(whole(x), F.batch_norm(x, None, None, bn.weight, bn.bias, training=True), atol=1e-5)
    with pytest.raises(ConfigError, match=r"\[N, C, H, W\]"):
        ghost(torch.randn(4, 3))


def test_use_ghost_batchnorm_replaces_every_batchnorm_and_keeps_the_parameters() -> None:
    net = nasforge.get_space("darts").supernet(C=4, layers=3, in_channels=1)
    before = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    params = {id(p) for p in net.parameters()}
    assert use_ghost_batchnorm(net, 8) == before > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert {id(p) for p in net.parameters()} == params  # the stem BN's affine parameters are the same tensors
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="ghost_batch_size"):
            use_ghost_batchnorm(net, bad)  # type: ignore[arg-type]


def test_ghost_batches_split_the_batch_in_order() -> None:
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    parts = ghost_batches((x, y), 4)
    assert [p[1].tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(ghost_batches((x, y), None)) == 1 and len(ghost_batches((x, y), 10)) == 1


# ---- what a training step does ---------------------------------------------------------------
def test_each_ghost_batch_runs_its_own_mask_and_exactly_the_kept_candidates(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = make_ctx(splits)
    got = capture(monkeypatch, ctx)
    forwards: list[dict[str, Any]] = []
    original = mod.weight_step_pieces

    def step(supernet: Any, pieces: Any, *args: Any, **kwargs: Any) -> Any:
        if not forwards:  # first step: hook every candidate and the supernet's forward
            for m in supernet.modules():
                if isinstance(m, Choice):
                    for name, cand in m.candidates.items():
                        cand.register_forward_hook(lambda *_, m=m, name=name: forwards[-1]["ran"].append((id(m), name)))
            supernet.register_forward_pre_hook(
                lambda _, args: forwards.append({"n": args[0].shape[0], "path": args[1], "ran": []}))
        before = len(forwards)
        out = original(supernet, pieces, *args, **kwargs)
        assert len(forwards) - before == len(pieces)  # one forward pass per ghost batch
        return out

    monkeypatch.setattr(mod, "weight_step_pieces", step)
    one_shot(ctx, epochs=3, drop_rate=0.9, **FAST)
    net = got["supernet"]
    train = [f for f in forwards if isinstance(next(iter(f["path"].values())), torch.Tensor)]
    assert [f["n"] for f in train] == [6, 6, 4] * 6  # 3 epochs x 2 steps, each 16 = 6 + 6 + 4 examples
    assert len(got["draws"]) == len(train)  # one mask per ghost batch
    # the rate follows the linear schedule over the 6 steps (same for the 3 ghost batches of a step)
    assert [r for r, _ in got["draws"]] == pytest.approx([0.9 * (i // 3) / 5 for i in range(18)])
    key_of = {id(m): name.rsplit(".", 1)[-1] for name, m in net.named_modules() if isinstance(m, Choice)}
    for f in train:
        ran = Counter((key_of[c], op) for c, op in f["ran"])
        expected = Counter({(k, net.choices()[k][i]): 3 for k, mask in f["path"].items()
                            for i in range(len(mask)) if mask[i] == 1})  # 3 search cells share each key
        # an edge whose paths were all dropped (its node kept another edge) adds zeros: it is left
        # out (sum_edges), nothing of it runs
        assert ran == expected
        assert all(bool(f["path"][k].any()) for k in ("edge_1_0",))  # node 1 has a single edge: always kept
    masks = [tuple(tuple(v.tolist()) for v in f["path"].values()) for f in train]
    assert any(len(set(masks[i:i + 3])) > 1 for i in range(0, len(masks), 3))  # ghost batches differ within a step
    evaluation = [f for f in forwards if isinstance(next(iter(f["path"].values())), str)]
    assert len(evaluation) == 2 * len({tuple(f["path"].items()) for f in evaluation})  # 2 eval batches per sample


def test_l2_and_momentum_reach_only_the_parameters_a_step_used() -> None:
    torch.manual_seed(0)
    net = tiny_nb201()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    batch = (torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    conv = {k: "nor_conv_3x3" for k in net.choices()}
    skip = {k: "skip_connect" for k in net.choices()}

    def snapshot() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in net.named_parameters()}

    start = snapshot()
    weight_step_pieces(net, [(conv, batch)], opt, loss_fn=F.cross_entropy, grad_clip=5.0, where="t")
    after_conv = snapshot()
    weight_step_pieces(net, [(skip, batch)], opt, loss_fn=F.cross_entropy, grad_clip=5.0, where="t")
    after_skip = snapshot()
    conv3 = [n for n in start if ".candidates.nor_conv_3x3." in n]
    conv1 = [n for n in start if ".candidates.nor_conv_1x1." in n]
    fixed = [n for n in start if ".candidates." not in n]
    assert conv3 and conv1 and fixed
    assert all(not torch.equal(start[n], after_conv[n]) for n in conv3)  # used: moved
    assert all(torch.equal(start[n], after_skip[n]) for n in conv1)  # never used: no decay either
    # used in step 1 only: step 2 leaves them exactly alone (no L2, no momentum carry-over)
    assert all(torch.equal(after_conv[n], after_skip[n]) for n in conv3)
    assert all(not torch.equal(after_conv[n], after_skip[n]) for n in fixed)  # the stem etc. run every step


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_end_to_end_ranks_samples_with_the_trained_shared_weights(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, space: str,
) -> None:
    ctx = make_ctx(splits, space, run_dir=tmp_path)
    got = capture(monkeypatch, ctx)
    res = one_shot(ctx, epochs=3, drop_rate=0.5, **FAST)
    sp, net = ctx.space, got["supernet"]
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    rates = [r for h in res.history for r in (h["drop_rate_start"], h["drop_rate_end"])]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])  # 6 steps: r * step / 5
    assert all(math.isfinite(h["train_loss"]) for h in res.history)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # ghost BN everywhere
    # the ranking: every distinct uniform sample (random.Random(seed)), best first, the result its head
    ranking = res.info["ranking"]
    rng = random.Random(ctx.seed)
    samples = list(dict.fromkeys(sp.format(sp.sample(rng)) for _ in range(FAST["num_samples"])))
    assert sorted(r["arch"] for r in ranking) == sorted(samples)
    accs = [r["accuracy"] for r in ranking]
    assert accs == sorted(accs, reverse=True)
    assert ranking[0]["arch"] == sp.format(res.arch) and res.info["valid_accuracy"] == accs[0]
    # recorded accuracies are the single-path accuracies of the trained supernet on the fixed batches
    batches = ctx.fixed_valid_batches(FAST["eval_batches"], FAST["batch_size"])
    for r in ranking[:3] + ranking[-1:]:
        assert path_accuracy(net, net.path_for(sp.parse(r["arch"])), batches) == r["accuracy"]
    # the strengths are the chosen path, one-hot, and derive back to the result
    strengths = {k: torch.tensor(v) for k, v in res.strengths.items()}
    assert all(float(v.sum()) == 1.0 for v in strengths.values())
    assert sp.derive(strengths) == res.arch
    # the checkpoint holds the shared weights, the optimizer and the dropout rate: no architecture parameters
    state = torch.load(tmp_path / "search.pt", weights_only=False)["state"]
    assert sorted(state) == ["policy", "scheduler", "supernet", "w_opt"]
    assert list(state["policy"]) == ["_extra_state"] and state["policy"]["_extra_state"]["rate"] == pytest.approx(0.5)
    assert len(state["w_opt"]["param_groups"][0]["params"]) == len(list(net.parameters()))


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    splits: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    opts = {"epochs": 2, "drop_rate": 0.6, **FAST}
    with monkeypatch.context() as m:
        ctx = make_ctx(splits, "nb201", run_dir=tmp_path / "full", max_batches_per_epoch=3, checkpoint_every=2)
        full = capture(m, ctx)
        ref = one_shot(ctx, **opts)

    with killed_after(monkeypatch, 5):  # mid-epoch 1; the last checkpoint is the one of step 4
        torch.manual_seed(7)
        one_shot(make_ctx(splits, "nb201", run_dir=tmp_path / "cut", max_batches_per_epoch=3,
                          checkpoint_every=2), **opts)
    assert torch.load(tmp_path / "cut" / "search.pt", weights_only=False)["step"] == 4
    with monkeypatch.context() as m:
        ctx = make_ctx(splits, "nb201", run_dir=tmp_path / "cut", max_batches_per_epoch=3, checkpoint_every=2)
        again = capture(m, ctx)
        torch.manual_seed(123)  # the resumed run must not depend on the caller's RNG
        res = one_shot(ctx, **opts)
    a, b = full["supernet"].state_dict(), again["supernet"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.info["ranking"] == ref.info["ranking"] and res.arch == ref.arch
    assert [h["train_loss"] for h in res.history] == [h["train_loss"] for h in ref.history]


# ---- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "error", "needle"), [
    ({"drop_rate": 1.0}, ConfigError, "drop_rate must be in"),
    ({"drop_rate": -0.1}, ConfigError, "drop_rate must be in"),
    ({"drop_rate": float("nan")}, ConfigError, "drop_rate must be in"),
    ({"ghost_batch_size": 0}, ConfigError, "ghost_batch_size"),
    ({"ghost_batch_size": -2}, ConfigError, "ghost_batch_size"),
    ({"ghost_batch_size": 2.5}, ConfigError, "ghost_batch_size"),
    ({"num_samples": 0}, BudgetError, "num_samples"),
    ({"eval_batches": 0}, BudgetError, "eval_batches"),
    ({"lr": -1.0}, ConfigError, "lr must be"),
    ({"grad_clip": 0.0}, ConfigError, "grad_clip"),
    ({"dropout": 0.1}, ConfigError, "unknown one_shot option"),
])
def test_bad_config_values_are_refused(
    splits: tuple[Any, Any], options: dict[str, Any], error: type[Exception], needle: str,
) -> None:
    with pytest.raises(error, match=needle):
        one_shot(make_ctx(splits), **options)


def test_config_defaults_and_frozen() -> None:
    cfg = OneShotConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.drop_rate, cfg.ghost_batch_size) == (
        50, 64, 0.025, 3e-4, 0.1, 32)
    with pytest.raises(AttributeError):
        cfg.drop_rate = 0.5  # type: ignore[misc]
