"""Zero-cost proxies: formulas on hand-computable nets, invariants, statelessness, edge cases."""

from __future__ import annotations

import math
from typing import cast

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nasforge
from nasforge import registry
from nasforge.data import load_data
from nasforge.errors import ConfigError, NasforgeError
from nasforge.evaluators.proxies import ProxyError
from nasforge.evaluators.proxies.jacob_cov import jacob_cov_score
from nasforge.evaluators.proxies.naswot import naswot_kernel
from nasforge.evaluators.proxies.zen import global_pool
from nasforge.spaces.nb201 import TinyNetwork

PROXIES = registry.names("proxy")
NB201_DEAD = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
NB201_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|skip_connect~2|"


def nb201(arch: str = NB201_CELL, *, in_channels: int = 3, num_classes: int = 10) -> TinyNetwork:
    space = nasforge.get_space("nb201")
    torch.manual_seed(0)
    return space.build(space.parse(arch), C=4, N=1, in_channels=in_channels, num_classes=num_classes)


@pytest.fixture(scope="module")
def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_data("digits")
    items = [data.train[i] for i in range(16)]
    x = torch.stack([im for im, _ in items])
    y = torch.tensor([lab for _, lab in items])
    return x, y


def cifar_batch(n: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def snapshot(net: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool], list[bool], list[bool]]:
    state = {k: v.clone() for k, v in net.state_dict().items()}
    return (
        state,
        [m.training for m in net.modules()],
        [p.requires_grad for p in net.parameters()],
        [p.grad is None for p in net.parameters()],
    )


# ---- registry conformance -------------------------------------------------------------------------
def test_all_proxies_registered() -> None:
    assert set(PROXIES) >= {
        "zen", "synflow", "naswot", "snip", "grasp", "fisher", "jacob_cov", "grad_norm", "params", "flops",
    }


@pytest.mark.parametrize("name", PROXIES)
def test_conformance(name: str, digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    proxy = nasforge.get_proxy(name)
    assert proxy.name == name and isinstance(proxy.paper, str) and proxy.paper
    assert isinstance(proxy.needs_data, bool) and isinstance(proxy.needs_labels, bool)
    assert proxy.higher_is_better is True
    assert not proxy.needs_labels or proxy.needs_data
    x, y = digits_batch
    for net, inputs, targets in (
        (nb201(in_channels=1), x, y),
        (nb201(), *cifar_batch()),
    ):
        score = proxy(net, inputs, targets)
        assert isinstance(score, float)
        assert math.isfinite(score), f"{name} gave {score}"


@pytest.mark.parametrize("name", PROXIES)
def test_does_not_modify_the_network(name: str) -> None:
    net = nb201()
    cast(nn.Module, net.cells[0]).eval()  # a mixed-mode network: every flag must come back as it was
    cast(nn.Conv2d, net.stem[0]).weight.requires_grad_(False)
    before = snapshot(net)
    x, y = cifar_batch()
    x_before = x.clone()
    nasforge.get_proxy(name)(net, x, y)
    after = snapshot(net)
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), f"{name} changed {k}"
    assert before[1:] == after[1:]
    assert torch.equal(x, x_before)
    assert all(type(m).forward is m.forward.__func__ for m in net.modules())  # type: ignore[attr-defined]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


@pytest.mark.parametrize("name", PROXIES)
def test_deterministic_under_seed_and_restores_rng(name: str) -> None:
    net = nb201()
    net.cells.append(nn.Dropout(0.5))  # randomness inside the network is seeded too
    proxy = nasforge.get_proxy(name)
    x, y = cifar_batch()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = proxy(net, x, y, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    b = proxy(net, x, y, seed=7)
    assert a == b


def test_seed_changes_random_proxies() -> None:
    net = nb201()
    x, _ = cifar_batch()
    zen = nasforge.get_proxy("zen")
    assert zen(net, x, seed=0) != zen(net, x, seed=1)


# ---- networks without a path from input to output --------------------------------------------------
EXPECTED_DEAD = {
    "synflow": 0.0, "snip": 0.0, "grad_norm": 0.0, "grasp": 0.0,
    "naswot": -math.inf, "zen": -math.inf, "jacob_cov": -math.inf,
}


@pytest.mark.parametrize("name", PROXIES)
def test_no_path_networks(name: str) -> None:
    net = nb201(NB201_DEAD)
    x, y = cifar_batch()
    score = nasforge.get_proxy(name)(net, x, y)
    assert not math.isnan(score)
    if name in EXPECTED_DEAD:
        assert score == EXPECTED_DEAD[name]
    else:  # fisher: only the classifier's own activation term; params/flops: the skeleton's
        assert math.isfinite(score) and score >= 0


def test_no_path_scores_below_a_real_cell() -> None:
    x, y = cifar_batch()
    for name in ("synflow", "snip", "grad_norm", "naswot", "zen", "jacob_cov"):
        proxy = nasforge.get_proxy(name)
        assert proxy(nb201(NB201_DEAD), x, y) < proxy(nb201(), x, y), name


# ---- typed errors ---------------------------------------------------------------------------------
def test_typed_errors() -> None:
    x, y = cifar_batch()
    no_relu = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    with pytest.raises(ProxyError, match="ReLU"):
        nasforge.get_proxy("naswot")(no_relu, x)
    with pytest.raises(ProxyError, match="BatchNorm"):
        nasforge.get_proxy("zen")(no_relu, x)
    for name in PROXIES:
        proxy = nasforge.get_proxy(name)
        if proxy.needs_labels:
            with pytest.raises(ProxyError, match="needs labels"):
                proxy(nb201(), x, None)
    with pytest.raises(ConfigError, match="repeat"):
        nasforge.get_proxy("zen")(nb201(), x, bogus=1)
    with pytest.raises(ProxyError, match="shape"):
        nasforge.get_proxy("snip")(nb201(), x, y[:3])
    with pytest.raises(ProxyError, match="0..9"):
        nasforge.get_proxy("snip")(nb201(), x, y + 10)
    err = ProxyError("x")
    assert isinstance(err, NasforgeError) and isinstance(err, ValueError)


# ---- formulas on hand-computable networks ---------------------------------------------------------
def two_layer(w1: list[list[float]], w2: list[list[float]], middle: nn.Module | None = None) -> nn.Sequential:
    l1 = nn.Linear(len(w1[0]), len(w1), bias=False)
    l2 = nn.Linear(len(w2[0]), len(w2), bias=False)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor(w1))
        l2.weight.copy_(torch.tensor(w2))
    return nn.Sequential(l1, middle or nn.Identity(), l2)


def test_synflow_by_hand() -> None:
    # R = 1^T |W2| |W1| 1 = [1, 2] . [3, 3.5] = 10; every layer's sum_theta theta dR/dtheta = R
    w1, w2 = [[1.0, -2.0], [3.0, 0.5]], [[-1.0, 2.0]]
    synflow = nasforge.get_proxy("synflow")
    x = torch.randn(5, 2)  # values (and batch size) are ignored
    assert synflow(two_layer(w1, w2), x) == pytest.approx(20.0)
    # ReLU is the identity on the positive linearised network; BN is removed (reference bn=False)
    assert synflow(two_layer(w1, w2, nn.Sequential(nn.BatchNorm1d(2), nn.ReLU())), x) == pytest.approx(20.0)
    # scaling one layer by c scales R, hence the score, by c
    assert synflow(two_layer([[3 * v for v in r] for r in w1], w2), x) == pytest.approx(60.0)


def test_synflow_positive_on_real_cells() -> None:
    x, _ = cifar_batch()
    synflow = nasforge.get_proxy("synflow")
    assert synflow(nb201(), x) > 0
    assert synflow(nb201(), x, bn=True) > 0


def manual_grads(w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """dL/dW for L = CE(W2 relu(W1 x)), derived by hand (not autograd)."""
    h_pre = x @ w1.T
    h = h_pre.clamp_min(0)
    p = torch.softmax(h @ w2.T, dim=1)
    d_logits = (p - F.one_hot(y, p.shape[1]).to(p.dtype)) / x.shape[0]
    g2 = d_logits.T @ h
    d_h = (d_logits @ w2) * (h_pre > 0).to(p.dtype)
    g1 = d_h.T @ x
    return g1, g2, h_pre, d_h, h @ w2.T, d_logits


def small_mlp() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    net = two_layer(torch.randn(4, 3).tolist(), torch.randn(2, 4).tolist(), nn.ReLU())
    return net, torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])


def test_snip_and_grad_norm_by_hand() -> None:
    net, x, y = small_mlp()
    w1, w2 = cast(nn.Linear, net[0]).weight.detach(), cast(nn.Linear, net[2]).weight.detach()
    g1, g2, *_ = manual_grads(w1, w2, x, y)
    snip = (w1 * g1).abs().sum() + (w2 * g2).abs().sum()
    assert nasforge.get_proxy("snip")(net, x, y) == pytest.approx(float(snip), rel=1e-5)
    grad_norm = g1.norm() + g2.norm()
    assert nasforge.get_proxy("grad_norm")(net, x, y) == pytest.approx(float(grad_norm), rel=1e-5)


def test_fisher_by_hand() -> None:
    net, x, y = small_mlp()
    w1, w2 = cast(nn.Linear, net[0]).weight.detach(), cast(nn.Linear, net[2]).weight.detach()
    _, _, a1, d_a1, a2, d_a2 = manual_grads(w1, w2, x, y)
    # per channel 0.5 * mean_n (a * g)^2, broadcast to the layer's fan-in weights and summed
    f1 = 0.5 * (a1 * d_a1).pow(2).mean(0).sum() * 3
    f2 = 0.5 * (a2 * d_a2).pow(2).mean(0).sum() * 4
    assert nasforge.get_proxy("fisher")(net, x, y) == pytest.approx(float(f1 + f2), rel=1e-5)


def test_grasp_by_hand() -> None:
    # one linear layer: L(W) = CE(W x, y); H from torch's dense Hessian, g by hand
    torch.manual_seed(4)
    layer = nn.Linear(3, 2, bias=False)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 0, 1])
    w = layer.weight.detach()
    p = torch.softmax(x @ w.T, 1)
    g = ((p - F.one_hot(y, 2)) / 5).T @ x
    hess = torch.autograd.functional.hessian(lambda v: F.cross_entropy(x @ v.reshape(2, 3).T, y), w.flatten())
    hg = hess @ g.flatten()
    expected = float(-(w.flatten() * hg).sum())
    assert nasforge.get_proxy("grasp")(layer, x, y) == pytest.approx(expected, rel=1e-4, abs=1e-7)
    # the temperature divides the logits: T=2 equals halving the weights' effect on the loss
    assert nasforge.get_proxy("grasp")(layer, x, y, T=2.0) != nasforge.get_proxy("grasp")(layer, x, y)


def test_jacob_cov_formula() -> None:
    k = 1e-5
    # uncorrelated Jacobians: corr = I, eigenvalues 1
    eye = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])
    assert jacob_cov_score(eye) == pytest.approx(-2 * (math.log(1 + k) + 1 / (1 + k)))
    # a linear network has the same Jacobian for every sample: corr = all ones, eigenvalues N, 0, ...
    torch.manual_seed(0)
    net = nn.Linear(5, 3)
    n = 4
    expected = -(math.log(n + k) + 1 / (n + k)) - (n - 1) * (math.log(k) + 1 / k)
    assert nasforge.get_proxy("jacob_cov")(net, torch.randn(n, 5)) == pytest.approx(expected, rel=1e-6)
    # a constant Jacobian row has no correlation: documented -inf
    assert jacob_cov_score(torch.tensor([[1.0, 1.0], [1.0, 2.0]])) == -math.inf


def test_naswot_known_pattern() -> None:
    # codes of [1,1,-1], [1,-1,-1], [-1,-1,-1]: 110, 100, 000; K = 3 - Hamming
    x = torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    net = nn.Sequential(nn.ReLU())
    naswot = nasforge.get_proxy("naswot")
    K = torch.tensor([[3.0, 2.0, 1.0], [2.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    assert float(torch.det(K)) == pytest.approx(8.0)
    assert naswot(net, x) == pytest.approx(math.log(8.0))
    # two ReLU calls: the kernel adds up over layers
    assert naswot(nn.Sequential(nn.ReLU(), nn.ReLU()), x) == pytest.approx(math.log(torch.det(2 * K).item()))
    # duplicate inputs make K singular: -inf, not NaN
    assert naswot(net, torch.cat([x, x[:1]])) == -math.inf


class _DeadBranch(nn.Module):
    """A ReLU whose output is discarded: the reference's backward pass never reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.dead = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.dead(-x)
        return self.live(x)


def test_naswot_counts_only_relus_on_a_path_to_the_output() -> None:
    x = torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    assert nasforge.get_proxy("naswot")(_DeadBranch(), x) == pytest.approx(math.log(8.0))


class _BranchOnData(nn.Module):
    """Control flow that depends on the batch: the two-input reachability pass sees fewer calls."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(x)
        if x.shape[0] > 2:
            h = h + self.relu(-x)
        return h


def test_naswot_with_data_dependent_control_flow_marks_the_whole_batch() -> None:
    x = torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    codes = [x > 0, -x > 0]
    expected = float(torch.linalg.slogdet(naswot_kernel(codes))[1])
    assert nasforge.get_proxy("naswot")(_BranchOnData(), x) == pytest.approx(expected)


@pytest.mark.parametrize("units", [1, 2, 15, 16, 17, 64, 1000])
def test_naswot_kernel_equals_the_hamming_definition(units: int) -> None:
    gen = torch.Generator().manual_seed(units)
    codes = [torch.rand(9, units, generator=gen) > 0.5, torch.rand(9, 3, generator=gen) > 0.3]
    expected = torch.zeros(9, 9, dtype=torch.float64)
    for c in codes:
        hamming = (c[:, None, :] != c[None, :, :]).sum(-1)
        expected += c.shape[1] - hamming.to(torch.float64)
    assert torch.equal(naswot_kernel(codes), expected)


def test_naswot_ignores_labels() -> None:
    x, y = cifar_batch()
    naswot = nasforge.get_proxy("naswot")
    assert naswot(nb201(), x, y) == naswot(nb201(), x, (y + 3) % 10) == naswot(nb201(), x)


def test_zen_formula_on_bn_only_net() -> None:
    # F(x) = BN(x) with batch statistics; no weights to draw, so the draws are x then eps
    net = nn.Sequential(nn.BatchNorm2d(2))
    shape = (4, 2, 3, 3)
    torch.manual_seed(5)
    x, eps = torch.randn(shape), torch.randn(shape)

    def bn(t: torch.Tensor) -> torch.Tensor:
        mean = t.mean(dim=(0, 2, 3), keepdim=True)
        var = t.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        return (t - mean) / torch.sqrt(var + 1e-5)

    delta = (bn(x) - bn(x + 0.01 * eps)).abs().flatten(1).sum(1).mean()
    sigma = torch.sqrt(x.var(dim=(0, 2, 3), unbiased=True).mean())
    expected = float(torch.log(delta) + torch.log(sigma))
    assert nasforge.get_proxy("zen")(net, torch.zeros(shape), seed=5) == pytest.approx(expected, rel=1e-5)


class _Features(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gap(self.body(x)).flatten(1))


class _WithPreGap(_Features):
    def forward_pre_gap(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_zen_uses_pre_gap_features_and_gaussian_weights() -> None:
    x, _ = cifar_batch()
    zen = nasforge.get_proxy("zen")
    a = zen(_Features(10), x)
    assert zen(_Features(3), x) == pytest.approx(a)  # the classifier behind the pooling is not used
    assert zen(_WithPreGap(10), x) == pytest.approx(a)  # the hook finds what forward_pre_gap gives
    scaled = _Features(10)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(7.0)
    assert zen(scaled, x) == pytest.approx(a)  # weights are redrawn N(0, 1), the net's own are unused
    assert zen(_Features(10), x, repeat=3) != a
    assert math.isfinite(zen(_Features(10), x, bn_stats="running"))


def test_zen_finds_global_pooling_of_space_networks() -> None:
    net = nb201()
    assert global_pool(net) is net.global_pooling
    darts = nasforge.get_space("darts")
    from nasforge.spaces.darts import DARTS_V2

    dnet = darts.build(darts.parse(DARTS_V2), C=4, layers=3, auxiliary=True)
    assert global_pool(dnet) is dnet.global_pooling
    x, _ = cifar_batch(4)
    assert math.isfinite(nasforge.get_proxy("zen")(dnet, x))


def test_params_and_flops() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    x = torch.randn(4, 3)
    assert nasforge.get_proxy("params")(net, x) == 8.0
    assert nasforge.get_proxy("flops")(net, x) == 12.0  # 2 FLOPs per multiply-accumulate, batch 1
    cell = nb201()
    assert nasforge.get_proxy("params")(cell, x) == sum(p.numel() for p in cell.parameters())


@pytest.mark.parametrize("name", PROXIES)
def test_no_activation_outlives_the_call(name: str) -> None:
    """Regression: fisher's activation hooks once formed tensor <-> hook cycles that leaked every
    activation (~100 MB per NB201 network at batch 64; the benchmark process was OOM-killed)."""
    import gc
    import weakref

    net = nb201()
    x, y = cifar_batch()
    refs: list[weakref.ref[torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda m, i, o: refs.append(weakref.ref(o)))
               for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        nasforge.get_proxy(name)(net, x, y, seed=0)
    finally:
        for h in handles:
            h.remove()
    gc.collect()
    assert refs or name in ("params", "flops", "synflow", "zen")
    assert [r for r in refs if r() is not None] == []
