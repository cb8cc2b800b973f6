"""The one-shot engine: Choice variants, policies, bilevel steps, checkpointed search runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nasforge
from nasforge.data import load_data, split_train_valid
from nasforge.errors import CheckpointError, ConfigError, UnknownNameError
from nasforge.nn.choice import Choice, Mix, channel_shuffle
from nasforge.policies import GumbelPolicy, HardGumbelPolicy, PathDropoutPolicy, SoftmaxPolicy, UniformPolicy
from nasforge.train.bilevel import (
    SearchDivergedError,
    arch_step,
    unrolled_arch_grads,
    unrolled_arch_grads_exact,
    weight_step,
)
from nasforge.train.oneshot import OneShotContext


def tiny_nb201(**kw):  # type: ignore[no-untyped-def]
    return nasforge.get_space("nb201").supernet(C=4, N=1, affine=False, track_running_stats=False, **kw)


# ---- Choice -------------------------------------------------------------------------------
class Counting(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor, self.calls = factor, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * self.factor


def test_choice_skips_zero_weights_and_scales_mix() -> None:
    ops = {"a": Counting(1.0), "b": Counting(2.0), "c": Counting(3.0)}
    choice = Choice(ops)
    x = torch.ones(2, 4, 3, 3)
    out = choice(x, torch.tensor([0.0, 0.5, 0.0]))
    assert torch.equal(out, x)  # 0.5 * 2
    assert (ops["a"].calls, ops["b"].calls, ops["c"].calls) == (0, 1, 0)
    out = choice(x, Mix(torch.tensor([0.5, 0.0, 0.5]), torch.tensor(0.25)))
    assert torch.allclose(out, x * 0.25 * (0.5 + 1.5))


def test_partial_channels_run_a_quarter_and_shuffle() -> None:
    seen: list[int] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape[1])
            return x * 10

    choice = Choice({"p": Probe()}, partial=4, stride=1)
    x = torch.arange(8.0).view(1, 8, 1, 1)
    out = choice(x, "p")
    assert seen == [2]  # 8 channels / K=4
    # the processed head (0, 10) and the bypass (2..7) concatenated, then shuffled in 4 groups
    expected = channel_shuffle(torch.tensor([0.0, 10.0, 2, 3, 4, 5, 6, 7]).view(1, 8, 1, 1), 4)
    assert torch.equal(out, expected)
    assert out.flatten().tolist() == [0.0, 2.0, 4.0, 6.0, 10.0, 3.0, 5.0, 7.0]


def test_partial_supernets_build_ops_on_a_fraction_of_channels() -> None:
    net = tiny_nb201(partial_channels=2)
    conv = net.cells[0].edges["edge_1_0"].candidates["nor_conv_3x3"][1]
    assert conv.in_channels == 2  # C=4 / K=2
    with pytest.raises(ConfigError, match="partial_channels=3 must divide"):
        tiny_nb201(partial_channels=3)
    darts = nasforge.get_space("darts").supernet(C=8, layers=3, partial_channels=4)
    policy = SoftmaxPolicy(darts.choices(), edge_groups=darts.edge_groups())
    assert darts(torch.randn(2, 3, 16, 16), policy()).shape == (2, 10)


def test_edge_groups_are_the_edges_entering_each_node() -> None:
    assert tiny_nb201().edge_groups() == [["edge_1_0"], ["edge_2_0", "edge_2_1"], ["edge_3_0", "edge_3_1", "edge_3_2"]]
    groups = nasforge.get_space("darts").supernet(C=4, layers=3).edge_groups()
    assert len(groups) == 8 and groups[0] == ["normal_e2_0", "normal_e2_1"] and len(groups[3]) == 5


# ---- policies ----------------------------------------------------------------------------
def test_softmax_policy_gives_softmax_weights_and_pc_darts_scales() -> None:
    net = tiny_nb201()
    torch.manual_seed(0)
    policy = SoftmaxPolicy(net.choices(), edge_groups=net.edge_groups())
    path = policy()
    mix = path["edge_3_1"]
    assert isinstance(mix, Mix)
    assert torch.allclose(mix.weights, torch.softmax(policy.logits["edge_3_1"], -1))
    assert torch.allclose(mix.scale, torch.softmax(policy.betas[2], -1)[1])
    s = policy.strengths()["edge_3_1"]
    assert torch.allclose(s, mix.weights.detach() * mix.scale.detach())


def test_hard_gumbel_is_one_hot_straight_through() -> None:
    net = tiny_nb201()
    torch.manual_seed(0)
    policy = HardGumbelPolicy(net.choices(), tau=10.0)
    path = policy()
    w = path["edge_1_0"]
    assert isinstance(w, torch.Tensor)
    assert sorted(w.detach().tolist()) == [0.0, 0.0, 0.0, 0.0, 1.0]
    # straight-through: the gradient reaches every logit of the edge through the soft sample
    w[int(w.argmax())].backward()
    grad = policy.logits["edge_1_0"].grad
    assert grad is not None and bool((grad != 0).all())


def test_gumbel_temperature_must_stay_positive_and_is_saved() -> None:
    net = tiny_nb201()
    policy = GumbelPolicy(net.choices(), tau=1.0)
    for bad in (0.0, -0.5, math.nan, math.inf):
        with pytest.raises(ConfigError, match="tau"):
            policy.tau = bad
    policy.tau = 0.3
    other = GumbelPolicy(net.choices(), tau=1.0)
    other.load_state_dict(policy.state_dict())
    assert other.tau == 0.3 and torch.equal(other.logits["edge_1_0"], policy.logits["edge_1_0"])


def test_uniform_policy_paths_are_sampled_archs_and_rng_is_in_state() -> None:
    space = nasforge.get_space("darts")
    net = space.supernet(C=4, layers=3)
    policy = UniformPolicy(space, net, seed=3)
    path = policy()
    assert policy.last is not None and path == net.path_for(policy.last)
    assert sum(op != "none" for op in path.values()) == 16  # 2 inputs x 4 nodes x 2 cell types
    saved = policy.state_dict()
    a = [space.format(policy.sample()) for _ in range(3)]
    policy.load_state_dict(saved)
    assert [space.format(policy.sample()) for _ in range(3)] == a


def test_path_dropout_drops_all_with_probability_rate_but_keeps_one() -> None:
    net = tiny_nb201()
    policy = PathDropoutPolicy(net.choices(), rate=0.5, exclude=("none",))
    torch.manual_seed(0)
    kept = [int(policy()["edge_1_0"].sum()) for _ in range(4000)]
    assert min(kept) >= 1  # never an edge without input
    # each of the 4 allowed ops is dropped with 0.5 ** (1/4): on average 4 * (1 - 0.84) kept
    expected = 4 * (1 - 0.5 ** 0.25) + 0.5 * 1  # + the forced keep when all are dropped (prob 0.5)
    assert abs(sum(kept) / len(kept) - expected) < 0.05
    assert all(policy()["edge_1_0"][0] == 0 for _ in range(50))  # 'none' excluded
    with pytest.raises(ConfigError, match="rate"):
        policy.rate = 1.0


def test_policies_refuse_supernets_without_choices() -> None:
    with pytest.raises(ConfigError, match="no"):
        SoftmaxPolicy({})


# ---- bilevel -----------------------------------------------------------------------------
def _batches(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=g)
    xv = torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64)
    yv = torch.randint(0, 10, (8,), generator=g)
    return (x, y), (xv, yv)


def test_second_order_matches_autograd_double_backward() -> None:
    torch.manual_seed(0)
    net = tiny_nb201().double()
    policy = SoftmaxPolicy(net.choices(), init_scale=0.5).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    train, valid = _batches()
    # one real step first so the momentum buffers the virtual step reads are non-zero
    weight_step(net, {k: v.detach() for k, v in policy().items()}, train, opt, loss_fn=F.cross_entropy, grad_clip=None, where="t")  # type: ignore[union-attr]
    before = {k: v.clone() for k, v in net.named_parameters()}
    alphas = list(policy.parameters())
    # a small finite-difference step in float64: the tiny net (batch 8, C=4) is strongly curved
    _, fd = unrolled_arch_grads(net, policy, alphas, train, valid, opt, xi=0.1, loss_fn=F.cross_entropy, where="t", r=1e-7)
    exact = unrolled_arch_grads_exact(net, policy, alphas, train, valid, opt, xi=0.1, loss_fn=F.cross_entropy)
    for a, b in zip(fd, exact):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), (a, b)
    # the second-order term matters: it differs from the first-order gradient
    first = torch.autograd.grad(F.cross_entropy(net(valid[0], policy()), valid[1]), alphas)
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(first, exact))
    # the weights are restored exactly (BN running statistics do move: every forward updates them)
    assert all(torch.equal(before[k], v) for k, v in net.named_parameters())


def test_arch_step_updates_only_arch_and_weight_step_only_weights() -> None:
    torch.manual_seed(0)
    net = tiny_nb201()
    policy = SoftmaxPolicy(net.choices())
    w_opt = torch.optim.SGD(net.parameters(), lr=0.1)
    a_opt = torch.optim.Adam(policy.parameters(), lr=0.1)
    (x, y), (xv, yv) = _batches()
    train, valid = (x.float(), y), (xv.float(), yv)
    w0 = {k: v.clone() for k, v in net.named_parameters()}
    a0 = {k: v.clone() for k, v in policy.state_dict().items()}
    arch_step(net, policy, valid, a_opt, loss_fn=F.cross_entropy, where="t")
    assert all(torch.equal(w0[k], v) for k, v in net.named_parameters())
    assert any(not torch.equal(a0[k], v) for k, v in policy.state_dict().items())
    a1 = {k: v.clone() for k, v in policy.state_dict().items()}
    with torch.no_grad():
        path = policy()
    weight_step(net, path, train, w_opt, loss_fn=F.cross_entropy, grad_clip=5.0, where="t")
    assert all(torch.equal(a1[k], v) for k, v in policy.state_dict().items())
    assert any(not torch.equal(w0[k], v) for k, v in net.named_parameters())


def test_non_finite_loss_raises_search_diverged() -> None:
    net = tiny_nb201()
    policy = SoftmaxPolicy(net.choices())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    (x, y), _ = _batches()
    bad = (x.float() * math.nan, y)
    with pytest.raises(SearchDivergedError, match="epoch 3 batch 7 weight loss is nan"):
        weight_step(net, policy(), bad, opt, loss_fn=F.cross_entropy, grad_clip=None, where="epoch 3 batch 7 weight")


# ---- search runs: DARTS end to end, resume, errors --------------------------------------
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


@pytest.mark.parametrize("order", [1, 2])
def test_darts_resumes_to_the_same_alphas(digits_splits, tmp_path: Path, order: int) -> None:  # type: ignore[no-untyped-def]
    from nasforge.methods.darts import darts

    full = darts(_ctx(digits_splits, tmp_path / "full", max_batches_per_epoch=4), epochs=3, batch_size=16, order=order)
    # interrupted: a run told to stop after 1 epoch leaves a checkpoint mid-schedule? no: the
    # epoch count is part of the config. Interrupt instead by raising from the logger.
    calls = {"n": 0}

    def crash(msg: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # after the second epoch's checkpoint
            raise KeyboardInterrupt

    ctx = _ctx(digits_splits, tmp_path / "cut", max_batches_per_epoch=4)
    ctx.log = crash
    with pytest.raises(KeyboardInterrupt):
        darts(ctx, epochs=3, batch_size=16, order=order)
    resumed_ctx = _ctx(digits_splits, tmp_path / "cut", max_batches_per_epoch=4)
    logs: list[str] = []
    resumed_ctx.log = logs.append
    resumed = darts(resumed_ctx, epochs=3, batch_size=16, order=order)
    assert any("resuming the search" in m for m in logs)
    assert resumed.strengths == full.strengths
    assert resumed.arch == full.arch
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_resume_mid_epoch_from_step_checkpoint(digits_splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from nasforge.methods.darts import darts

    full = darts(_ctx(digits_splits, None, max_batches_per_epoch=5), epochs=2, batch_size=16)
    ctx = _ctx(digits_splits, tmp_path, max_batches_per_epoch=5, checkpoint_every=3)
    steps = {"n": 0}
    original = F.cross_entropy

    def stop_at_step_7(*a, **k):  # type: ignore[no-untyped-def]
        steps["n"] += 1
        if steps["n"] == 2 * 7 + 1:  # arch + weight loss per step: die inside step 8 (checkpoint after step 6)
            raise KeyboardInterrupt
        return original(*a, **k)

    import nasforge.methods.darts as mod

    mod.F.cross_entropy = stop_at_step_7  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            darts(ctx, epochs=2, batch_size=16)
    finally:
        mod.F.cross_entropy = original  # type: ignore[assignment]
    state = torch.load(tmp_path / "search.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 1)  # step 6 = epoch 1, batch 1 done
    resumed = darts(_ctx(digits_splits, tmp_path, max_batches_per_epoch=5, checkpoint_every=3), epochs=2, batch_size=16)
    assert resumed.strengths == full.strengths


def test_checkpoint_of_another_config_or_space_is_refused(digits_splits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from nasforge.methods.darts import darts

    darts(_ctx(digits_splits, tmp_path, max_batches_per_epoch=2), epochs=1, batch_size=16)
    with pytest.raises(CheckpointError, match="meta 'config'"):
        darts(_ctx(digits_splits, tmp_path, max_batches_per_epoch=2), epochs=1, batch_size=16, lr=0.1)
    with pytest.raises(CheckpointError, match="meta 'space' is 'nb201'"):
        darts(_ctx(digits_splits, tmp_path, "darts", max_batches_per_epoch=2), epochs=1, batch_size=16)
    with pytest.raises(CheckpointError, match="meta 'format_version'"):
        state = torch.load(tmp_path / "search.pt", weights_only=True)
        state["meta"]["format_version"] = 0
        torch.save(state, tmp_path / "search.pt")
        darts(_ctx(digits_splits, tmp_path, max_batches_per_epoch=2), epochs=1, batch_size=16)


def test_darts_on_the_darts_space_and_bad_options(digits_splits) -> None:  # type: ignore[no-untyped-def]
    from nasforge.methods.darts import darts

    res = darts(_ctx(digits_splits, None, "darts", max_batches_per_epoch=2), epochs=1, batch_size=16)
    assert res.arch.space == "darts" and len(res.strengths) == 28
    with pytest.raises(ConfigError, match="order must be 1 or 2"):
        darts(_ctx(digits_splits, None), order=3)
    with pytest.raises(ConfigError, match="unknown darts option"):
        darts(_ctx(digits_splits, None), epoch=3)
    with pytest.raises(UnknownNameError, match="valid: nb201, darts"):
        data = digits_splits[1]
        ctx = OneShotContext(space=nasforge.get_space("mobilenet"), train_set=data.train, valid_set=data.train,
                             num_classes=10, input_shape=data.input_shape())
        darts(ctx)


# ---- fast pooling ops ----------------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [7, 8])
def test_fast_pools_equal_torch_pools_values_and_gradients(stride: int, size: int) -> None:
    from nasforge.nn.ops import AvgPool3x3, MaxPool3x3

    torch.manual_seed(0)
    x = torch.randn(3, 5, size, size, requires_grad=True)
    g = torch.randn(3, 5, (size + stride - 1) // stride, (size + stride - 1) // stride)
    for ours, ref in ((AvgPool3x3(stride), torch.nn.AvgPool2d(3, stride, 1, count_include_pad=False)),
                      (MaxPool3x3(stride), torch.nn.MaxPool2d(3, stride, 1))):
        a = ours(x)
        (ga,) = torch.autograd.grad(a, x, g)
        b = ref(x)
        (gb,) = torch.autograd.grad(b, x, g)
        assert a.is_contiguous() and torch.allclose(a, b, atol=1e-6)
        assert torch.allclose(ga, gb, atol=1e-6)


def test_none_is_never_executed_in_a_mixture() -> None:
    from nasforge.nn.ops import Zero

    zero = Zero(4, 1)
    calls = {"n": 0}
    zero.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    choice = Choice({"none": zero, "skip": torch.nn.Identity()})
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(choice(x, torch.tensor([0.7, 0.3])), 0.3 * x)
    assert calls["n"] == 0
    assert torch.equal(choice(x, torch.tensor([1.0, 0.0])), torch.zeros_like(x))  # only none: zeros


def test_straight_through_selection_feeds_unselected_weights_the_summed_gradient() -> None:
    from nasforge.nn.choice import StraightThrough

    ops = {"a": Counting(1.0), "b": Counting(2.0), "c": Counting(3.0)}
    choice = Choice(ops)
    x = torch.randn(2, 4, 3, 3)
    logits = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)
    soft = torch.softmax(logits, -1)
    hard = torch.tensor([0.0, 1.0, 0.0]) - soft.detach() + soft
    w = hard.detach().requires_grad_()
    out = choice(x, StraightThrough(w))
    assert torch.equal(out, choice(x, w.detach()))  # same value as the plain weights
    assert (ops["a"].calls, ops["b"].calls, ops["c"].calls) == (0, 2, 0)  # still only the sampled op runs
    upstream = torch.randn_like(out)
    out.backward(upstream)
    assert w.grad is not None
    assert torch.allclose(w.grad[0], upstream.sum()) and torch.allclose(w.grad[2], upstream.sum())
    assert torch.allclose(w.grad[1], (upstream * 2 * x).sum())
    net = tiny_nb201()
    policy = HardGumbelPolicy(net.choices(), tau=5.0, reference_gradient=True)
    assert all(isinstance(v, StraightThrough) for v in policy().values())


def test_single_path_none_edges_are_not_run_and_change_nothing() -> None:
    from nasforge.nn.choice import sum_edges
    from nasforge.nn.ops import Zero

    ran: list[torch.nn.Module] = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, a, o: ran.append(m) if isinstance(m, Zero) else None)
    try:
        for name in ("nb201", "darts"):
            space = nasforge.get_space(name)
            torch.manual_seed(0)
            net = space.supernet(C=4, N=1) if name == "nb201" else space.supernet(C=4, layers=3)
            choices = net.choices()
            # 'none' on every edge but one per node of the first half of the keys
            path = {k: ("none" if i % 2 else [o for o in ops if o != "none"][0]) for i, (k, ops) in enumerate(choices.items())}
            x = torch.randn(2, 3, 8, 8)
            ran.clear()
            net.zero_grad()
            out = net(x, path)
            out.sum().backward()
            grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
            zeros_run = len(ran)
            # the same path as one-hot weights (every edge summed, Zero included) gives the same values and grads
            onehot = {k: torch.tensor([float(o == path[k]) for o in ops]) for k, ops in choices.items()}
            net.zero_grad()
            ref = net(x, onehot)
            ref.sum().backward()
            assert torch.allclose(out, ref, atol=1e-6)
            for n, p in net.named_parameters():
                if n in grads:
                    assert torch.allclose(grads[n], p.grad, atol=1e-6), n
            # only nodes whose every input is 'none' run one Zero (for a zero tensor of the right shape)
            assert zeros_run < sum(1 for k in path.values() if k == "none")
    finally:
        handle.remove()
    # a node whose inputs are all 'none': a zero tensor of the edge's output shape (stride 2 here)
    choice = Choice({"none": Zero(2, 2), "skip": torch.nn.Identity()})
    out = sum_edges([(choice, torch.randn(1, 2, 4, 4), "none"), (choice, torch.randn(1, 2, 4, 4), "none")])
    assert out.shape == (1, 2, 2, 2) and not out.any()
