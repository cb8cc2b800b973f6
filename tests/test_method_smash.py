"""SMASH: hypernet-generated weights trained on a random architecture per batch, then ranking."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nasforge
from nasforge.data import load_data, split_train_valid
from nasforge.errors import BudgetError, ConfigError, UnknownNameError
from nasforge.methods import smash as mod
from nasforge.methods.smash import SmashConfig, smash
from nasforge.policies import UniformPolicy
from nasforge.train.oneshot import OneShotContext, seed_everything

FAST = {"epochs": 2, "batch_size": 16, "num_samples": 6, "eval_batches": 2, "eval_batch_size": 32, "hidden": 16,
        "chunk_size": 32}


@pytest.fixture(scope="module")
def digits_splits():  # type: ignore[no-untyped-def]
    data = load_data("digits", None)
    return split_train_valid(data.train, 0.5, seed=0), data


def _ctx(splits, run_dir: Path | None, space: str = "nb201", **kw):  # type: ignore[no-untyped-def]
    (tr, va), data = splits
    kwargs = {"C": 4, "N": 1, "affine": False, "track_running_stats": False} if space == "nb201" else {"C": 4, "layers": 3}
    return OneShotContext(
        space=nasforge.get_space(space), train_set=tr, valid_set=va, num_classes=10, input_shape=data.input_shape(),
        supernet_kwargs=kwargs, run_dir=run_dir, log=lambda s: None, **kw,
    )


def _batch(splits, n: int = 32):  # type: ignore[no-untyped-def]
    (tr, _), _ = splits
    xs, ys = zip(*(tr[i] for i in range(n)))
    return torch.stack(xs), torch.tensor(ys)


def _net_and_hyper(cfg: SmashConfig):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = nasforge.get_space("nb201").supernet(C=4, N=1, in_channels=1, affine=False, track_running_stats=False)
    return net, mod.build_hypernet(net, cfg, seed=0)


ARCH = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|"


# ---- what one step updates ----------------------------------------------------------------
def test_steps_lower_the_loss_and_train_the_hypernet_not_the_candidate_convs(digits_splits) -> None:  # type: ignore[no-untyped-def]
    cfg = SmashConfig(noise_dim=0, lr=1e-2)
    net, hyper = _net_and_hyper(cfg)
    opt = mod.make_optimizer(net, hyper, cfg)
    path = net.path_for(nasforge.get_space("nb201").parse(ARCH))
    batch = _batch(digits_splits)
    generated = set(hyper.generated_names())
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    hyper_before = {k: v.detach().clone() for k, v in hyper.named_parameters()}
    with torch.no_grad():
        first = float(F.cross_entropy(hyper.run(net, batch[0], path), batch[1]))
    losses = [mod.train_step(net, hyper, path, batch, opt, where="test")[0] for _ in range(15)]
    with torch.no_grad():
        last = float(F.cross_entropy(hyper.run(net, batch[0], path), batch[1]))
    assert losses[0] == pytest.approx(first, rel=1e-5)
    assert last < 0.7 * first
    after = net.state_dict()
    assert generated and all(torch.equal(after[n], before[n]) for n in generated)  # never trained
    assert not torch.equal(after["stem.0.weight"], before["stem.0.weight"])  # ordinary weights are
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])
    assert all(not torch.equal(p, hyper_before[k]) for k, p in hyper.named_parameters() if "site" not in k)
    # optimizer: reference Adam settings, weight decay only on the main network
    groups = opt.param_groups
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"], groups[0]["betas"], groups[0]["eps"]) == (
        1e-4, 0.0, (0.5, 0.999), 1e-4)
    assert not any(p is q for p in groups[0]["params"] for q in net.parameters() if not q.requires_grad)


def test_cosine_learning_rate_is_annealed_per_iteration() -> None:
    cfg = SmashConfig(lr=1e-3, lr_min=1e-4)
    assert mod.cosine_lr(cfg, 0, 10) == pytest.approx(1e-3)
    assert mod.cosine_lr(cfg, 5, 10) == pytest.approx(5.5e-4)
    assert mod.cosine_lr(cfg, 10, 10) == pytest.approx(1e-4)
    assert mod.cosine_lr(SmashConfig(), 3, 12) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi / 4)))


def test_every_batch_trains_a_new_uniformly_sampled_architecture(digits_splits, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seen = []
    real = mod.train_step

    def spy(net, hyper, path, batch, opt, *, where):  # type: ignore[no-untyped-def]
        seen.append(dict(path))
        return real(net, hyper, path, batch, opt, where=where)

    monkeypatch.setattr(mod, "train_step", spy)
    ctx = _ctx(digits_splits, None, "darts", max_batches_per_epoch=3, seed=7)
    smash(ctx, **{**FAST, "num_samples": 1, "eval_batches": 1})
    space = nasforge.get_space("darts")
    net = space.supernet(C=4, layers=3)
    expected = UniformPolicy(space, net, seed=7)
    assert seen == [expected() for _ in range(6)]  # 2 epochs x 3 batches, the seeded stream of genotypes
    assert len({tuple(sorted(p.items())) for p in seen}) == 6


# ---- ranking ------------------------------------------------------------------------------
def test_ranking_returns_the_best_measured_architecture(digits_splits) -> None:  # type: ignore[no-untyped-def]
    cfg = SmashConfig(noise_dim=0)
    net, hyper = _net_and_hyper(cfg)
    space = nasforge.get_space("nb201")
    archs = mod.sample_distinct(space, random.Random(0), 8)
    assert len(archs) == 8 and len(set(archs)) == 8
    batches = [_batch(digits_splits, 64)]
    ranked = mod.rank(space, net, hyper, archs, batches)
    # measured independently: generated weights loaded through functional_call, argmax accuracy
    measured = {}
    for arch in archs:
        path = net.path_for(arch)
        with torch.no_grad():
            logits = hyper.run(net, batches[0][0], path)
        measured[space.format(arch)] = 100.0 * float((logits.argmax(1) == batches[0][1]).float().mean())
    assert [r["valid_acc"] for r in ranked] == sorted(measured.values(), reverse=True)
    assert ranked[0]["valid_acc"] == max(measured.values())
    assert all(measured[r["arch"]] == pytest.approx(r["valid_acc"]) for r in ranked)


def test_ranking_ties_go_to_the_lower_loss_then_the_earlier_sample(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    space = nasforge.get_space("nb201")
    net = space.supernet(C=4, N=1)
    archs = mod.sample_distinct(space, random.Random(3), 4)
    scores = iter([(50.0, 1.0), (60.0, 2.0), (60.0, 1.5), (60.0, 1.5)])
    monkeypatch.setattr(mod, "smash_score", lambda *a: next(scores))
    ranked = mod.rank(space, net, None, archs, [])  # type: ignore[arg-type]
    assert [r["sample"] for r in ranked] == [2, 3, 1, 0]


# ---- end to end, resume, errors ------------------------------------------------------------
@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_search_end_to_end(digits_splits, tmp_path: Path, space: str) -> None:  # type: ignore[no-untyped-def]
    res = smash(_ctx(digits_splits, tmp_path, space, max_batches_per_epoch=3), **FAST)
    sp = nasforge.get_space(space)
    ranked = res.info["ranked"]
    assert len(ranked) == 6 and sp.format(res.arch) == ranked[0]["arch"]
    assert [r["valid_acc"] for r in ranked] == sorted((r["valid_acc"] for r in ranked), reverse=True)
    assert res.info["eval_images"] == 64 and len(res.history) == 2 and res.history[1]["lr"] < res.history[0]["lr"]
    assert sp.derive({k: torch.tensor(v) for k, v in res.strengths.items()}) == res.arch
    assert all(sorted(v) == [0.0] * (len(v) - 1) + [1.0] for v in res.strengths.values())
    # the candidate conv weights in the final checkpoint are the untouched initial ones
    seed_everything(0)  # as OneShotMethod does before search: the supernet's init depends on ctx.seed only
    fresh = _ctx(digits_splits, None, space).supernet()
    state = torch.load(tmp_path / "search.pt", weights_only=True)["state"]
    fresh_sd = fresh.state_dict()
    candidate_convs = [k for k, v in fresh_sd.items() if ".candidates." in k and k.endswith("weight") and v.dim() == 4]
    assert candidate_convs and all(torch.equal(state["supernet"][k], fresh_sd[k]) for k in candidate_convs)
    assert not torch.equal(state["supernet"]["stem.0.weight"], fresh_sd["stem.0.weight"])


def test_resume_gives_the_same_hypernet_and_ranking(digits_splits, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    opts = {**FAST, "epochs": 3}
    full = smash(_ctx(digits_splits, tmp_path / "full", max_batches_per_epoch=3, checkpoint_every=2), **opts)
    real, calls = mod.train_step, {"n": 0}

    def die_in_step_6(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 1, batch 2; the last checkpoint is after step 4 (epoch 1, batch 1)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(mod, "train_step", die_in_step_6)
    with pytest.raises(KeyboardInterrupt):
        smash(_ctx(digits_splits, tmp_path / "cut", max_batches_per_epoch=3, checkpoint_every=2), **opts)
    monkeypatch.setattr(mod, "train_step", real)
    state = torch.load(tmp_path / "cut" / "search.pt", weights_only=True)
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 4)
    logs: list[str] = []
    resumed_ctx = _ctx(digits_splits, tmp_path / "cut", max_batches_per_epoch=3, checkpoint_every=2)
    resumed_ctx.log = logs.append
    resumed = smash(resumed_ctx, **opts)
    assert any("resuming the search" in m for m in logs)
    a = torch.load(tmp_path / "full" / "search.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "cut" / "search.pt", weights_only=True)["state"]
    for part in ("hypernet", "supernet"):
        for k, v in a[part].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, b[part][k]), (part, k)
    assert torch.equal(a["hypernet"]["_extra_state"]["rng"], b["hypernet"]["_extra_state"]["rng"])
    assert resumed.info["ranked"] == full.info["ranked"] and resumed.arch == full.arch
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_bad_config_values_are_refused(digits_splits) -> None:  # type: ignore[no-untyped-def]
    ctx = _ctx(digits_splits, None)
    for kw, err, match in (
        ({"epochs": 0}, BudgetError, "epochs"), ({"num_samples": -1}, BudgetError, "num_samples"),
        ({"eval_batches": 1.5}, BudgetError, "eval_batches"), ({"lr": 0.0}, ConfigError, "lr must be > 0"),
        ({"lr_min": 1.0}, ConfigError, "lr_min"), ({"betas": (0.5, 1.0)}, ConfigError, "betas"),
        ({"eps": -1e-8}, ConfigError, "eps"), ({"weight_decay": math.nan}, ConfigError, "weight_decay"),
        ({"hidden": 0}, ConfigError, "hidden"), ({"noise_dim": -1}, ConfigError, "noise_dim"),
        ({"generated": "spatial"}, ConfigError, "generated must be one of all, pointwise"),
        ({"weight_norm": "yes"}, ConfigError, "weight_norm"), ({"epoch": 3}, ConfigError, "unknown smash option"),
    ):
        with pytest.raises(err, match=match):
            smash(ctx, **kw)
    data = digits_splits[1]
    other = OneShotContext(space=nasforge.get_space("mobilenet"), train_set=data.train, valid_set=data.train,
                           num_classes=10, input_shape=data.input_shape())
    with pytest.raises(UnknownNameError, match="valid: nb201, darts"):
        smash(other)
