"""Single-Path NAS superkernel (Stamoulis et al. 2019): indicators on weight norms, exact sub-networks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import nasforge
from nasforge.arch import Arch
from nasforge.errors import ConfigError
from nasforge.nn.blocks import MBConv
from nasforge.nn.superkernel import LayerIndicators, SuperkernelMBConv, relaxed_indicator
from nasforge.spaces.mobilenet_superkernel import SuperkernelMobileNet, check_superkernel_space

TINY_SPACE: dict[str, Any] = {"preset": "cifar", "width_mult": 0.1, "kernels": [3, 5], "expansions": [3, 6]}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> Iterator[None]:
    yield  # tiny convolutions: one intra-op thread is fastest on the shared machine


def space() -> Any:
    return nasforge.get_space("mobilenet", **TINY_SPACE)


def select(block: SuperkernelMBConv, option: str) -> None:
    """Set the block's thresholds so that its hard decisions select ``option``."""
    with torch.no_grad():
        if option == "skip":
            block.t_kernel.fill_(0.0)
            block.t_large.fill_(0.0)
            assert block.t_small is not None
            block.t_small.fill_(float(block.norms()["small"]) + 1.0)
            return
        k, e = (int(p[1:]) for p in option.split("_")[1:])
        n = block.norms()
        block.t_kernel.fill_(float(n["kernel"]) + (-1.0 if k == 5 else 1.0))
        n = block.norms()  # the channel norms are taken after the kernel decision
        block.t_large.fill_(float(n["large"]) + (-1.0 if e == 6 else 1.0))
        if block.t_small is not None:
            block.t_small.fill_(float(n["small"]) - 1.0)


def select_arch(net: SuperkernelMobileNet, arch: Arch) -> None:
    for name, block in net.blocks().items():
        select(block, arch[name])


def test_relaxed_indicator_is_a_hard_step_with_the_sigmoid_gradient() -> None:
    x = torch.tensor([-2.0, -1e-6, 0.0, 0.5, 3.0], requires_grad=True)
    d = relaxed_indicator(x)
    assert d.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]  # reference Indicator: 1(x >= 0)
    d.sum().backward()
    s = torch.sigmoid(x.detach())
    assert x.grad is not None and torch.allclose(x.grad, s * (1 - s))


def test_each_decision_reads_its_own_weight_subset() -> None:
    torch.manual_seed(0)
    block = SuperkernelMBConv(4, 4, 1, allow_skip=True)  # hidden 24 channels: e3 = the first 12
    w = block.depthwise_weight
    assert tuple(w.shape) == (24, 1, 5, 5) and block.hidden_small == 12
    with torch.no_grad():
        w.zero_()
        w[:12, :, 1:4, 1:4] = 1.0  # centre of the first half: 12 * 9 ones
        w[12:, :, 1:4, 1:4] = 2.0  # centre of the second half: 12 * 9 twos
        w[:12, :, 0, :] = 3.0  # part of the ring in the first half: 12 * 5 threes
    ring = (12 * 5 * 9.0) ** 0.5
    n = block.norms()
    assert float(n["kernel"]) == pytest.approx(ring)  # ||w_5x5 \ 3x3||: the ring only
    # thresholds at zero: every indicator is 1 (the largest block), so the ring counts in the channel norms
    assert float(n["small"]) == pytest.approx((12 * 9 * 1.0 + 12 * 5 * 9.0) ** 0.5)
    assert float(n["large"]) == pytest.approx((12 * 9 * 4.0) ** 0.5)
    assert block.option() == "ir_k5_e6"
    with torch.no_grad():
        block.t_kernel.fill_(ring + 0.01)  # just above the ring's norm: the 3x3 centre only
    n = block.norms()
    assert float(n["small"]) == pytest.approx((12 * 9 * 1.0) ** 0.5)  # ring gone from the e3 norm
    assert block.option() == "ir_k3_e6"
    with torch.no_grad():
        block.t_kernel.fill_(ring)  # equal: used (the reference compares with >=)
    assert block.option() == "ir_k5_e6"
    with torch.no_grad():
        block.t_large.fill_((12 * 9 * 4.0) ** 0.5 + 0.01)
    assert block.option() == "ir_k5_e3"
    with torch.no_grad():
        block.t_small.fill_(100.0)  # type: ignore[union-attr]
    assert block.option() == "skip"
    # the squared norm (paper) decides the same on squared thresholds
    sq = SuperkernelMBConv(4, 4, 1, allow_skip=True, squared_norm=True)
    sq.load_state_dict(block.state_dict())
    assert float(sq.norms()["kernel"]) == pytest.approx(ring ** 2)


def test_indicator_dropout_zeroes_or_scales_by_one_over_keep() -> None:
    torch.manual_seed(1)
    block = SuperkernelMBConv(4, 4, 1, allow_skip=True)
    seen: set[float] = set()
    for _ in range(30):
        ind = block.indicators(keep=0.6)
        for d in (ind.kernel, ind.large, ind.small):
            assert d is not None
            seen.add(round(float(d.detach()), 5))
    assert seen == {0.0, round(1 / 0.6, 5)}
    ind = block.indicators()
    assert ind.small is not None and ind.hard() == (True, True, True)
    assert [float(d.detach()) for d in (ind.kernel, ind.large, ind.small)] == [1.0, 1.0, 1.0]


def test_single_path_nas_superkernel_equals_the_selected_standalone_kernel() -> None:
    """Required: at several threshold settings, ``space.build(arch)`` with the extracted weights computes
    exactly what the superkernel network computes (train and eval mode)."""
    sp = space()
    torch.manual_seed(0)
    net = SuperkernelMobileNet(sp, num_classes=10, in_channels=1)
    x = torch.randn(6, 1, 8, 8)
    rng = random.Random(0)
    fixed = [sp.make({d: opts[0] for d, opts in sp.decisions().items()}),  # every layer k3 e3
             sp.make({d: "skip" if "skip" in opts else "ir_k5_e6" for d, opts in sp.decisions().items()})]
    archs = fixed + [sp.sample(rng) for _ in range(3)]
    options = {o for a in archs for _, o in a.choices}
    assert options == {"ir_k3_e3", "ir_k3_e6", "ir_k5_e3", "ir_k5_e6", "skip"}
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    for arch in archs:
        select_arch(net, arch)
        assert net.arch() == arch
        standalone = sp.build(arch, num_classes=10, in_channels=1)
        standalone.load_state_dict(net.subnet_state_dict(arch))  # strict
        for train in (False, True):
            net.train(train)
            standalone.train(train)
            with torch.no_grad():
                assert torch.allclose(net(x), standalone(x), atol=1e-5, rtol=1e-5), (sp.format(arch), train)
    # the comparison can fail: the stand-alone network of another architecture differs
    net.eval()
    other = sp.build(archs[0], num_classes=10, in_channels=1).eval()
    other.load_state_dict(net.subnet_state_dict(archs[0]))
    with torch.no_grad():
        assert not torch.allclose(net(x), other(x), atol=1e-4)


def test_layer_level_equality_and_skip_is_the_identity() -> None:
    torch.manual_seed(2)
    block = SuperkernelMBConv(8, 8, 1, allow_skip=True).eval()
    x = torch.randn(2, 8, 6, 6)
    for option in ("ir_k3_e3", "ir_k3_e6", "ir_k5_e3", "ir_k5_e6"):
        select(block, option)
        k, e = (int(p[1:]) for p in option.split("_")[1:])
        ref = MBConv(8, 8, k, 1, e).eval()
        ref.load_state_dict(block.standalone_state_dict(option))
        with torch.no_grad():
            assert torch.allclose(block(x), ref(x), atol=1e-6)
    select(block, "skip")
    with torch.no_grad():
        assert torch.equal(block(x), x)
    strided = SuperkernelMBConv(8, 16, 2)
    assert strided.t_small is None and strided.option() == "ir_k5_e6"  # no skip: the first part always runs


def test_gradients_reach_every_threshold_through_the_relaxation() -> None:
    torch.manual_seed(3)
    block = SuperkernelMBConv(4, 4, 1, allow_skip=True)
    x = torch.randn(4, 4, 6, 6)
    for option in ("ir_k5_e6", "ir_k3_e3"):  # indicators at 1, and at 0 (the off part still gets a gradient)
        select(block, option)
        # a loss centred per example, so BN's normalisation does not cancel the gradient
        block.zero_grad()
        ind = block.indicators()
        (block(x, ind) - x).pow(2).sum().backward()
        for t in (block.t_kernel, block.t_large, block.t_small):
            assert t is not None and t.grad is not None and float(t.grad.abs()) > 0, option
        # the gradient is the sigmoid's: d indicator / d t = -sigmoid'(norm - t)
        n = block.norms()
        s = torch.sigmoid(n["large"].detach() - block.t_large.detach())
        ind2 = block.indicators()
        (g,) = torch.autograd.grad(ind2.large, block.t_large)
        assert float(g) == pytest.approx(float(-s * (1 - s)), rel=1e-5)


def test_option_of_given_hard_indicators() -> None:
    block = SuperkernelMBConv(4, 4, 1, allow_skip=True)
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    assert block.option(LayerIndicators(one, one, one)) == "ir_k5_e6"
    assert block.option(LayerIndicators(zero, one, one)) == "ir_k3_e6"
    assert block.option(LayerIndicators(one, zero, one)) == "ir_k5_e3"
    assert block.option(LayerIndicators(zero, zero, one)) == "ir_k3_e3"
    assert block.option(LayerIndicators(one, one, zero)) == "skip"


def test_bad_configurations_are_refused_with_the_valid_choices() -> None:
    with pytest.raises(ConfigError, match="skip needs stride 1"):
        SuperkernelMBConv(4, 8, 2, allow_skip=True)
    with pytest.raises(ConfigError, match="small < large"):
        SuperkernelMBConv(4, 4, 1, kernels=(5, 3))
    with pytest.raises(ConfigError, match="valid: ir_k3_e3"):
        SuperkernelMBConv(4, 4, 1).standalone_state_dict("ir_k7_e6")
    with pytest.raises(ConfigError, match=r"kernels=\[3, 5, 7\].*kernels=\[3,5\]"):
        check_superkernel_space(nasforge.get_space("mobilenet", preset="cifar"))
    with pytest.raises(ConfigError, match="se=False"):
        check_superkernel_space(nasforge.get_space("mobilenet", kernels=[3, 5], se=True))
    with pytest.raises(ConfigError, match="mobilenet space"):
        check_superkernel_space(nasforge.get_space("nb201"))
