"""PC-DARTS: partial channels, channel shuffle, edge normalisation, arch warm-up, resume, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import nasforge
from nasforge.data import load_data, split_train_valid
from nasforge.errors import ConfigError
from nasforge.methods.pc_darts import PcDartsConfig, pc_darts, supernet_and_policy
from nasforge.nn.choice import Choice, Mix
from nasforge.nn.ops import Zero
from nasforge.train.oneshot import OneShotContext

K = 4


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    data = load_data("digits", None)
    return split_train_valid(data.train, 0.5, seed=0), data


def _ctx(digits, space: str, run_dir: Path | None = None, C: int = 8, **kw: Any) -> OneShotContext:  # type: ignore[no-untyped-def]
    (tr, va), data = digits
    kwargs: dict[str, Any] = (
        {"C": C, "N": 1, "affine": False, "track_running_stats": False} if space == "nb201" else {"C": C, "layers": 3}
    )
    kw.setdefault("max_batches_per_epoch", 2)
    return OneShotContext(
        space=nasforge.get_space(space), train_set=tr, valid_set=va, num_classes=10, input_shape=data.input_shape(),
        supernet_kwargs=kwargs, run_dir=run_dir, log=lambda s: None, **kw,
    )


def _policy_state(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "search.pt", weights_only=True)["state"]
    return {k: v.clone() for k, v in state["policy"].items()}


class _Inputs:
    """Records, for every module called inside the block, the channel counts of its first input."""

    def __init__(self) -> None:
        self.channels: dict[torch.nn.Module, set[int]] = {}

    def __enter__(self) -> _Inputs:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
                self.channels.setdefault(module, set()).add(int(args[0].shape[1]))

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def choices(self) -> Iterator[Choice]:
        return (m for m in self.channels if isinstance(m, Choice))


def test_ops_output_is_concatenated_before_the_bypass_and_shuffled(digits) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    supernet, policy = supernet_and_policy(_ctx(digits, "darts"), PcDartsConfig())
    supernet.eval()
    path = policy()
    for cell, key, stride in ((0, "normal_e3_2", 1), (1, "reduce_e2_0", 2)):
        choice = supernet.cells[cell].edges[key]
        C = 8 * (1 if stride == 1 else 2)
        x = torch.randn(2, C, 8, 8)
        sel = path[key]
        assert isinstance(sel, Mix)
        with torch.no_grad():
            out = choice(x, sel)
            head, tail = x[:, : C // K], x[:, C // K:]
            mixed = sum(w * choice.candidates[op](head) for w, op in zip(sel.weights, choice.options))
            if stride == 2:
                tail = F.max_pool2d(tail, 2, 2)
        assert isinstance(mixed, torch.Tensor)
        z = torch.cat([mixed, tail], dim=1)  # the ops' C/K channels first, then the bypass
        # shuffle with K groups: output channel j*K + g is channel g*(C/K) + j of z
        expected = torch.stack([z[:, g * (C // K) + j] for j in range(C // K) for g in range(K)], dim=1)
        assert torch.allclose(out, expected * sel.scale, atol=1e-6)
        # so the ops' output lands on every K-th channel, starting at 0
        assert torch.allclose(out[:, ::K], mixed * sel.scale, atol=1e-6)


# ---- edge normalisation ------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_betas_normalise_the_edges_entering_each_node(digits, space: str) -> None:  # type: ignore[no-untyped-def]
    supernet, policy = supernet_and_policy(_ctx(digits, space), PcDartsConfig())
    assert policy.edge_groups == supernet.edge_groups()
    with torch.no_grad():
        for beta in policy.betas:
            beta.copy_(torch.randn_like(beta))
    path = policy()
    x = torch.randn(2, 8, 8, 8)
    for group, beta in zip(policy.edge_groups, policy.betas):
        scales = torch.softmax(beta.detach(), -1)
        for i, key in enumerate(group):
            sel = path[key]
            assert isinstance(sel, Mix)
            assert torch.allclose(sel.scale, scales[i])
            assert torch.allclose(sel.weights, torch.softmax(policy.logits[key].detach(), -1))
    # the edge output is the alpha mixture times the edge's normalised beta
    choice = supernet.cells[0].edges[policy.edge_groups[1][0]]
    supernet.eval()
    sel = path[policy.edge_groups[1][0]]
    assert isinstance(sel, Mix)
    with torch.no_grad():
        assert torch.allclose(choice(x, sel), choice(x, sel.weights) * sel.scale, atol=1e-6)


# ---- warm-up ---------------------------------------------------------------------------------------
def test_alphas_and_betas_are_frozen_during_warmup_and_trained_after(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = _ctx(digits, "nb201", tmp_path)
    snapshots: list[dict[str, torch.Tensor]] = []
    weights: list[torch.Tensor] = []

    def log(msg: str) -> None:  # called right after each epoch's checkpoint
        snapshots.append(_policy_state(tmp_path))
        sd = torch.load(tmp_path / "search.pt", weights_only=True)["state"]["supernet"]
        weights.append(sd["cells.0.edges.edge_2_1.candidates.nor_conv_3x3.1.weight"].clone())

    ctx.log = log
    res = pc_darts(ctx, epochs=3, warmup_epochs=2, batch_size=16)
    assert len(snapshots) == 3
    betas = [k for k in snapshots[0] if k.startswith("betas.")]
    assert len(betas) == 3 and any(k.startswith("logits.") for k in snapshots[0])
    # warm-up: no architecture parameter moved in epoch 1, while the weights did
    assert all(torch.equal(snapshots[0][k], snapshots[1][k]) for k in snapshots[0])
    assert not torch.equal(weights[0], weights[1])
    # after warm-up every alpha changes, and the betas of nodes with several incoming edges
    for key in snapshots[1]:
        if key.startswith("logits.") or key in ("betas.1", "betas.2"):
            assert not torch.equal(snapshots[1][key], snapshots[2][key]), key
    assert [h["arch_trained"] for h in res.history] == [False, False, True]
    assert ["valid_loss" in h for h in res.history] == [False, False, True]


# ---- end to end: partial channels during the search, derivation ----------------------------------
@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_search_feeds_a_kth_of_the_channels_and_derives_from_alpha_times_beta(  # type: ignore[no-untyped-def]
    digits, tmp_path: Path, space: str,
) -> None:
    with _Inputs() as seen:
        res = pc_darts(_ctx(digits, space, tmp_path), epochs=2, warmup_epochs=1, batch_size=16)
    # partial channels: every Choice that ran got the full width, its candidates a K-th of it
    choices = list(seen.choices())
    assert len(choices) == (6 * 3 if space == "nb201" else 14 * 3)  # every edge of every cell ran
    widths = set()
    for choice in choices:
        (full,) = seen.channels[choice]
        widths.add(full)
        assert choice.partial == K
        for name, cand in choice.candidates.items():
            if isinstance(cand, Zero):  # 'none' adds nothing and is not run
                continue
            assert seen.channels[cand] == {full // K}, (name, full)  # softmax weights: every other op runs
            for conv in (m for m in cand.modules() if isinstance(m, torch.nn.Conv2d)):
                assert conv.in_channels == full // K, name
    assert widths == {8, 16, 32}  # edges sit at the cell widths C, 2C, 4C
    # derivation: strength = softmax(alpha) * softmax(beta over the node's edges), then the space's rule
    state = _policy_state(tmp_path)
    space_obj = nasforge.get_space(space)
    supernet, _ = supernet_and_policy(_ctx(digits, space), PcDartsConfig())
    expected: dict[str, torch.Tensor] = {}
    for g, group in enumerate(supernet.edge_groups()):
        scale = torch.softmax(state[f"betas.{g}"], -1)
        for i, key in enumerate(group):
            expected[key] = torch.softmax(state[f"logits.alphas.{key}"], -1) * scale[i]
    assert set(res.strengths) == set(expected)
    for key, values in res.strengths.items():
        assert values == pytest.approx(expected[key].tolist(), abs=1e-7)
    assert res.arch.space == space and res.arch == space_obj.derive(expected)
    assert len(res.history) == 2 and all(space_obj.parse(h["arch"]) is not None for h in res.history)
    assert res.info["partial_channels"] == K


def test_resume_gives_the_same_architecture_parameters(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = {"epochs": 3, "warmup_epochs": 1, "batch_size": 16}
    full = pc_darts(_ctx(digits, "nb201", tmp_path / "full"), **opts)
    calls = {"n": 0}

    def crash(msg: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # after epoch 1's checkpoint (the first epoch with arch steps)
            raise KeyboardInterrupt

    ctx = _ctx(digits, "nb201", tmp_path / "cut")
    ctx.log = crash
    with pytest.raises(KeyboardInterrupt):
        pc_darts(ctx, **opts)
    logs: list[str] = []
    resumed_ctx = _ctx(digits, "nb201", tmp_path / "cut")
    resumed_ctx.log = logs.append
    resumed = pc_darts(resumed_ctx, **opts)
    assert any("resuming the search" in m for m in logs)
    a, b = _policy_state(tmp_path / "full"), _policy_state(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.strengths == full.strengths and resumed.arch == full.arch
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


# ---- errors ------------------------------------------------------------------------------------
def test_bad_options_raise_config_errors(digits) -> None:  # type: ignore[no-untyped-def]
    for space in ("nb201", "darts"):
        with pytest.raises(ConfigError, match="partial_channels=4 must divide the supernet width C=6"):
            pc_darts(_ctx(digits, space, C=6), epochs=2, warmup_epochs=0, batch_size=16)
    ctx = _ctx(digits, "nb201")
    for bad in (50, 51, -1, 1.5, True):
        with pytest.raises(ConfigError, match="warmup_epochs must be an int in \\[0, epochs=50\\)"):
            pc_darts(ctx, warmup_epochs=bad)
    for bad_k in (0, -4, 2.0, False):
        with pytest.raises(ConfigError, match="partial_channels \\(PC-DARTS K\\) must be an int >= 1"):
            pc_darts(ctx, partial_channels=bad_k)
    with pytest.raises(ConfigError, match="contradicts the pc_darts option partial_channels=4"):
        ctx2 = _ctx(digits, "nb201")
        ctx2.supernet_kwargs["partial_channels"] = 2
        pc_darts(ctx2, epochs=2, warmup_epochs=0, batch_size=16)
    with pytest.raises(ConfigError, match="unknown pc_darts option"):
        pc_darts(ctx, warmup=3)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        pc_darts(ctx, lr=0.0)


def test_defaults_are_the_reference_cifar10_search() -> None:
    cfg = PcDartsConfig()
    assert (cfg.partial_channels, cfg.epochs, cfg.warmup_epochs, cfg.batch_size) == (4, 50, 15, 256)
    assert (cfg.lr, cfg.lr_min, cfg.momentum, cfg.weight_decay, cfg.grad_clip) == (0.1, 0.001, 0.9, 3e-4, 5.0)
    assert (cfg.arch_lr, cfg.arch_betas, cfg.arch_weight_decay) == (6e-4, (0.5, 0.999), 1e-3)
