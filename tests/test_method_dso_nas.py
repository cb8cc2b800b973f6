"""DSO-NAS: pre-training at lambda = 1, split APG-NAG search, adaptive FLOPs, pruning, derivation, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

import nasforge
from nasforge.data import load_data, split_train_valid
from nasforge.errors import BudgetError, ConfigError, UnknownNameError
from nasforge.methods import dso_nas as mod
from nasforge.methods.dso_nas import DsoNasConfig, candidate_flops, dso_nas, set_adaptive_gammas
from nasforge.policies.scaling import ScalingPolicy
from nasforge.train.apg import APG
from nasforge.train.oneshot import OneShotContext


@pytest.fixture(scope="module")
def digits_splits():  # type: ignore[no-untyped-def]
    data = load_data("digits", None)
    return split_train_valid(data.train, 0.5, seed=0), data


def _ctx(splits, run_dir: Path | None, space: str = "nb201", valid_set=None, **kw):  # type: ignore[no-untyped-def]
    (tr, va), data = splits
    kwargs = {"C": 4, "N": 1, "track_running_stats": False} if space == "nb201" else {"C": 4, "layers": 3}
    return OneShotContext(
        space=nasforge.get_space(space), train_set=tr, valid_set=va if valid_set is None else valid_set,
        num_classes=10, input_shape=data.input_shape(), supernet_kwargs=kwargs, run_dir=run_dir,
        log=lambda s: None, **kw,
    )


class Relabelled(Dataset):  # type: ignore[type-arg]
    """The structure split with every label set to 7, so its batches are recognisable."""

    def __init__(self, base) -> None:  # type: ignore[no-untyped-def]
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        return self.base[i][0], 7


def test_defaults_are_the_papers_cifar_search() -> None:
    cfg = DsoNasConfig()
    assert (cfg.pretrain_epochs, cfg.search_epochs, cfg.batch_size, cfg.lr, cfg.momentum) == (120, 120, 128, 0.1, 0.9)
    assert (cfg.weight_decay, cfg.gamma, cfg.grad_clip_value, cfg.adaptive_flops, cfg.init) == (1e-4, 1e-3, 2.0, True, 1.0)


def test_pretraining_trains_weights_only_with_every_lambda_at_one(digits_splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = _ctx(digits_splits, tmp_path, max_batches_per_epoch=3)

    def stop(msg: str) -> None:  # the first epoch_done has saved its checkpoint when it logs
        raise KeyboardInterrupt

    ctx.log = stop
    with pytest.raises(KeyboardInterrupt):
        dso_nas(ctx, pretrain_epochs=2, search_epochs=1, batch_size=16, gamma=10.0)
    state = torch.load(tmp_path / "search.pt", weights_only=True)
    assert state["history"][0]["phase"] == "pretrain" and state["history"][0]["active"] == 24
    lambdas = {k[len("lambdas."):]: v for k, v in state["state"]["policy"].items() if k.startswith("lambdas.")}
    assert len(lambdas) == 6
    for key, lam in lambdas.items():  # exactly 1 for every op but none (no factor), despite gamma = 10
        assert lam.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0], key
    assert state["state"]["a_opt"]["state"] == {}  # APG never stepped
    assert len(state["state"]["w_opt"]["state"]) > 0  # the weights did
    assert "valid_loss" not in state["history"][0]  # no structure batch was used


def test_weights_learn_on_the_weight_split_and_lambdas_on_the_structure_split(digits_splits, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[str, set[int]]] = []
    original = mod._update

    def spy(supernet, path, batch, params, optimizer, clip_value, where):  # type: ignore[no-untyped-def]
        seen.append(("lambda" if isinstance(optimizer, APG) else "weight", set(batch[1].tolist())))
        if isinstance(optimizer, APG):  # the lambda step differentiates exactly the factors
            assert all(p.dim() == 1 and p.numel() == 5 for p in params)
        return original(supernet, path, batch, params, optimizer, clip_value, where)

    monkeypatch.setattr(mod, "_update", spy)
    va = digits_splits[0][1]
    dso_nas(_ctx(digits_splits, None, valid_set=Relabelled(va), max_batches_per_epoch=3),
            pretrain_epochs=1, search_epochs=1, batch_size=16)
    kinds = [k for k, _ in seen]
    assert kinds == ["weight"] * 3 + ["weight", "lambda"] * 3  # pre-training, then alternating 1:1, weights first
    assert all(labels == {7} for k, labels in seen if k == "lambda")
    assert all(len(labels) > 1 for k, labels in seen if k == "weight")  # real digits, mixed classes


def test_search_updates_clip_each_gradient_entry() -> None:
    net = nasforge.get_space("nb201").supernet(C=4, N=1, affine=False, track_running_stats=False)
    policy = ScalingPolicy(net.choices(), exclude=("none",))
    weights = list(net.parameters())
    before = [p.detach().clone() for p in weights]
    opt = torch.optim.SGD(weights, lr=1.0)
    batch = (torch.randn(4, 3, 8, 8) * 50, torch.arange(4))
    mod._update(net, policy(), batch, weights, opt, 1e-3, "test")  # lr 1: a step moves by the clipped gradient
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(weights, before))
    assert 0 < moved <= 1e-3 + 1e-6  # float32 rounding of w - g
    assert all(p.grad is None or p.grad.abs().max() <= 1e-3 for p in weights)
    assert all(p.grad is None for p in policy.parameters())  # the weight step leaves the factors alone


def test_the_penalty_prunes_ops_over_the_search(digits_splits) -> None:  # type: ignore[no-untyped-def]
    opts = {"pretrain_epochs": 1, "search_epochs": 6, "batch_size": 16, "adaptive_flops": False}
    sparse = dso_nas(_ctx(digits_splits, None, max_batches_per_epoch=2), gamma=0.3, **opts)
    active = [h["active"] for h in sparse.history]
    assert active[0] == 24 and all(a >= b for a, b in zip(active, active[1:]))
    assert 0 < active[-1] < 24  # pruned, but the loss keeps the ops it needs (seed 0: 24, ..., 9, 3, 3)
    assert sparse.info == {"active_ops": active[-1], "total_ops": 24}
    assert sum(v > 0 for s in sparse.strengths.values() for v in s) == active[-1]
    dense = dso_nas(_ctx(digits_splits, None, max_batches_per_epoch=2), gamma=0.0, **opts)
    assert dense.info["active_ops"] == 24  # without the penalty nothing reaches zero
    assert all(s[0] == 0.0 for s in dense.strengths.values())  # none never has a factor


def test_strong_penalty_prunes_every_edge_to_none(digits_splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = dso_nas(_ctx(digits_splits, tmp_path, max_batches_per_epoch=3), pretrain_epochs=0, search_epochs=2,
                  batch_size=16, gamma=5.0)
    assert res.info["active_ops"] == 0
    assert nasforge.get_space("nb201").format(res.arch) == "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    state = torch.load(tmp_path / "search.pt", weights_only=True)["state"]["policy"]
    assert all(not bool(v.any()) for k, v in state.items())  # factors exactly 0 and every entry dead


def test_nb201_derivation_is_argmax_of_lambda_and_none_for_an_all_zero_edge() -> None:
    net = nasforge.get_space("nb201").supernet(C=4, N=1, affine=False, track_running_stats=False)
    policy = ScalingPolicy(net.choices(), exclude=("none",))
    values = {  # skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
        "edge_1_0": [0.2, 0.0, 0.9, 0.1], "edge_2_0": [0.0, 0.0, 0.0, 0.0], "edge_2_1": [0.5, 0.0, 0.0, 0.0],
        "edge_3_0": [0.0, 0.3, 0.3, 0.0], "edge_3_1": [0.0, 0.0, 0.0, 0.0], "edge_3_2": [0.0, 0.0, 0.0, 1e-6],
    }
    with torch.no_grad():
        for key, v in values.items():
            policy.lambdas[key][1:] = torch.tensor(v)
    policy.prune()
    arch = nasforge.get_space("nb201").derive(policy.strengths())
    assert nasforge.get_space("nb201").format(arch) == (
        "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|nor_conv_1x1~0|none~1|avg_pool_3x3~2|"
    )


def test_darts_derivation_reads_lambda_with_none_at_zero() -> None:
    net = nasforge.get_space("darts").supernet(C=4, layers=3)
    policy = ScalingPolicy(net.choices(), exclude=("none",))
    with torch.no_grad():  # PRIMITIVES: none, max_pool, avg_pool, skip, sep3, sep5, dil3, dil5
        for lam in policy.lambdas.values():
            lam[1:] = 0.1  # every op alive but weak
        policy.lambdas["normal_e2_0"][1] = 0.5  # node 2: the strongest op of each of its two inputs
        policy.lambdas["normal_e2_1"][5] = 0.8
        policy.lambdas["normal_e3_0"].zero_()  # node 3: a pruned input loses to a weak live one
        policy.lambdas["normal_e3_1"][1:] = 0.05
        policy.lambdas["normal_e3_2"][3] = 0.7
        policy.lambdas["normal_e4_2"][2] = 0.6  # node 4: the two strongest of four inputs
        policy.lambdas["normal_e4_3"][4] = 0.9
    policy.prune()
    strengths = policy.strengths()
    assert all(float(s[0]) == 0.0 and s.numel() == 8 for s in strengths.values())
    genotype = nasforge.get_space("darts").derive(strengths)
    normal = nasforge.get_space("darts").cell_edges(genotype, "normal")
    assert normal[:6] == [
        ("max_pool_3x3", 0), ("sep_conv_5x5", 1),
        ("max_pool_3x3", 1), ("skip_connect", 2),
        ("avg_pool_3x3", 2), ("sep_conv_3x3", 3),
    ]


def test_candidate_flops_and_adaptive_gamma() -> None:
    net = nasforge.get_space("nb201").supernet(C=4, N=1, affine=False, track_running_stats=False)
    flops = candidate_flops(net, net.choices(), (3, 8, 8), "cpu")
    ops = net.choices()["edge_1_0"]
    f = dict(zip(ops, flops["edge_1_0"]))
    # summed over the 3 cells (C=4 at 8x8, 8 at 4x4, 16 at 2x2), 2 FLOPs per multiply-accumulate
    assert f["none"] == f["skip_connect"] == 0.0
    assert f["nor_conv_1x1"] == 2 * (4 * 4 * 64 + 8 * 8 * 16 + 16 * 16 * 4) and f["nor_conv_3x3"] == 9 * f["nor_conv_1x1"]
    assert f["avg_pool_3x3"] == 0.0  # pools count as pools (0 FLOPs), not as the fast depthwise convolution
    assert all(flops[k] == flops["edge_1_0"] for k in flops)  # every edge of a cell has the same width
    policy = ScalingPolicy(net.choices(), exclude=("none",))
    opt = APG([{"params": list(policy.parameters()), "block": "cell", "keys": list(net.choices())}],
              lr=0.1, gamma=0.5)
    assert set_adaptive_gammas(opt, policy, flops, 0.5) == {"cell": 0.5}  # the complete graph: full penalty
    with torch.no_grad():
        for lam in policy.lambdas.values():
            lam[3] = 0.0  # prune every nor_conv_3x3
    policy.prune()
    gammas = set_adaptive_gammas(opt, policy, flops, 0.5)
    kept = (f["nor_conv_1x1"] + f["avg_pool_3x3"]) / sum(f.values())
    assert gammas["cell"] == pytest.approx(0.5 * kept) and opt.param_groups[0]["gamma"] == gammas["cell"]


def test_end_to_end_on_nb201_and_darts(digits_splits) -> None:  # type: ignore[no-untyped-def]
    res = dso_nas(_ctx(digits_splits, None, max_batches_per_epoch=2), pretrain_epochs=1, search_epochs=1,
                  batch_size=16, gamma=0.05)
    assert res.arch.space == "nb201" and len(res.strengths) == 6
    assert [h["phase"] for h in res.history] == ["pretrain", "search"]
    assert res.history[1]["gamma"]["cell"] <= 0.05 and "arch" in res.history[1]
    res = dso_nas(_ctx(digits_splits, None, "darts", max_batches_per_epoch=2), pretrain_epochs=1, search_epochs=1,
                  batch_size=16, gamma=0.05)
    assert res.arch.space == "darts" and len(res.strengths) == 28
    assert set(res.history[1]["gamma"]) == {"normal", "reduce"}
    assert 0 < res.info["active_ops"] <= res.info["total_ops"] == 28 * 7


def test_resume_gives_the_same_lambdas(digits_splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = {"pretrain_epochs": 1, "search_epochs": 2, "batch_size": 16, "gamma": 0.3}
    full = dso_nas(_ctx(digits_splits, tmp_path / "full", max_batches_per_epoch=3), **opts)
    calls = {"n": 0}

    def crash(msg: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # after the first search epoch's checkpoint
            raise KeyboardInterrupt

    ctx = _ctx(digits_splits, tmp_path / "cut", max_batches_per_epoch=3)
    ctx.log = crash
    with pytest.raises(KeyboardInterrupt):
        dso_nas(ctx, **opts)
    logs: list[str] = []
    resumed_ctx = _ctx(digits_splits, tmp_path / "cut", max_batches_per_epoch=3)
    resumed_ctx.log = logs.append
    resumed = dso_nas(resumed_ctx, **opts)
    assert any("resuming the search" in m for m in logs)
    assert resumed.strengths == full.strengths and resumed.arch == full.arch
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert [h["active"] for h in resumed.history] == [h["active"] for h in full.history]
    a = torch.load(tmp_path / "full" / "search.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "cut" / "search.pt", weights_only=True)["state"]
    for name in ("policy", "supernet"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name])
    assert all(torch.equal(a["a_opt"]["state"][i]["momentum_buffer"], b["a_opt"]["state"][i]["momentum_buffer"])
               for i in a["a_opt"]["state"])


def test_resume_mid_epoch_from_a_step_checkpoint(digits_splits, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    opts = {"pretrain_epochs": 1, "search_epochs": 2, "batch_size": 16, "gamma": 0.3}
    full = dso_nas(_ctx(digits_splits, None, max_batches_per_epoch=3), **opts)
    calls = {"n": 0}
    original = mod._update

    def die_in_step_9(*args):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3 + 2 * 5 + 1:  # 3 pre-training steps, 5 search steps of 2 updates, then step 9
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(mod, "_update", die_in_step_9)
    with pytest.raises(KeyboardInterrupt):
        dso_nas(_ctx(digits_splits, tmp_path, max_batches_per_epoch=3, checkpoint_every=2), **opts)
    state = torch.load(tmp_path / "search.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (2, 2)  # the checkpoint of step 8, inside the last epoch
    monkeypatch.setattr(mod, "_update", original)
    resumed = dso_nas(_ctx(digits_splits, tmp_path, max_batches_per_epoch=3, checkpoint_every=2), **opts)
    assert resumed.strengths == full.strengths
    assert resumed.history[-1]["train_loss"] == full.history[-1]["train_loss"]


def test_bad_config_and_space(digits_splits) -> None:  # type: ignore[no-untyped-def]
    ctx = _ctx(digits_splits, None)
    with pytest.raises(ConfigError, match="gamma .* must be >= 0, got -0.001"):
        dso_nas(ctx, gamma=-0.001)
    with pytest.raises(ConfigError, match="pretrain_epochs must be an int >= 0, got -1"):
        dso_nas(ctx, pretrain_epochs=-1)
    with pytest.raises(BudgetError, match="search_epochs must be an int > 0, got 0"):
        dso_nas(ctx, search_epochs=0)
    with pytest.raises(ConfigError, match="momentum must be in"):
        dso_nas(ctx, momentum=1.0)
    with pytest.raises(ConfigError, match="arch_lr must be > 0"):
        dso_nas(ctx, arch_lr=0.0)
    with pytest.raises(ConfigError, match="init must be > 0"):
        dso_nas(ctx, init=0.0)
    with pytest.raises(ConfigError, match="grad_clip_value must be > 0 or None"):
        dso_nas(ctx, grad_clip_value=-2.0)
    with pytest.raises(ConfigError, match="unknown dso_nas option"):
        dso_nas(ctx, sparsity=0.1)
    affine = _ctx(digits_splits, None)
    affine.supernet_kwargs["affine"] = True
    with pytest.raises(ConfigError, match="affine must be False, got True"):
        dso_nas(affine, pretrain_epochs=0, search_epochs=1)
    data = digits_splits[1]
    with pytest.raises(UnknownNameError, match="valid: nb201, darts"):
        dso_nas(OneShotContext(space=nasforge.get_space("mobilenet"), train_set=data.train, valid_set=data.train,
                               num_classes=10, input_shape=data.input_shape()))
