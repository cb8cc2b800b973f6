"""The SMASH hypernetwork: what it generates, for which path, and what it leaves alone."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

import nasforge
from nasforge.errors import ArchError, ConfigError
from nasforge.nn.choice import Choice
from nasforge.policies.hypernet import HyperNet
from nasforge.spaces.darts import DARTS_V2


def tiny_nb201():  # type: ignore[no-untyped-def]
    return nasforge.get_space("nb201").supernet(C=4, N=1, affine=False, track_running_stats=False)


def tiny_darts():  # type: ignore[no-untyped-def]
    return nasforge.get_space("darts").supernet(C=4, layers=3)


def selected_convs(net, path, pointwise_only: bool = False):  # type: ignore[no-untyped-def]
    """Independently: name -> shape of every conv weight inside the ops ``path`` selects."""
    out = {}
    for name, module in net.named_modules():
        if isinstance(module, Choice):
            op = path[name.rsplit(".", 1)[-1]]
            for sub, m in module.candidates[op].named_modules():
                if isinstance(m, nn.Conv2d) and (not pointwise_only or (m.kernel_size == (1, 1) and m.groups == 1)):
                    out[f"{name}.candidates.{op}.{sub}.weight"] = tuple(m.weight.shape)
    return out


NB_A = {"edge_1_0": "nor_conv_3x3", "edge_2_0": "skip_connect", "edge_2_1": "nor_conv_1x1",
        "edge_3_0": "none", "edge_3_1": "avg_pool_3x3", "edge_3_2": "nor_conv_3x3"}


def test_generated_weights_have_the_shapes_of_the_selected_ops_convs() -> None:
    net = tiny_nb201()
    hyper = HyperNet(net, noise_dim=0)
    weights = hyper(NB_A)
    assert {k: tuple(v.shape) for k, v in weights.items()} == selected_convs(net, NB_A)
    assert len(weights) == 3 * 3  # 3 conv ops per cell, 3 cells (N=1)

    darts = tiny_darts()
    space = nasforge.get_space("darts")
    arch = space.parse(DARTS_V2).replace(reduce_n0_op_a="skip_connect")  # stride-2 skip
    path = darts.path_for(arch)
    dh = HyperNet(darts, noise_dim=0)
    w = dh(path)
    assert {k: tuple(v.shape) for k, v in w.items()} == selected_convs(darts, path)
    # sep_conv_3x3: two (depthwise 3x3, pointwise 1x1) pairs; reduction skip: FactorizedReduce's two 1x1 convs
    assert w["cells.0.edges.normal_e2_0.candidates.sep_conv_3x3.0.1.weight"].shape == (4, 1, 3, 3)
    assert w["cells.0.edges.normal_e2_0.candidates.sep_conv_3x3.1.2.weight"].shape == (4, 4, 1, 1)
    assert w["cells.1.edges.reduce_e2_0.candidates.skip_connect.conv_1.weight"].shape == (4, 8, 1, 1)
    assert not any(".none." in k or "pool" in k for k in w)


def test_weights_depend_on_the_whole_architecture() -> None:
    net = tiny_nb201()
    hyper = HyperNet(net, noise_dim=0)
    other = {**NB_A, "edge_2_0": "nor_conv_1x1"}  # edge_1_0 keeps its op, another edge changes
    name = "cells.0.edges.edge_1_0.candidates.nor_conv_3x3.1.weight"
    a, b = hyper(NB_A)[name], hyper(other)[name]
    assert a.shape == b.shape and not torch.allclose(a, b)
    assert torch.equal(hyper(NB_A)[name], a)  # without noise: a function of the architecture
    code = hyper.encode(NB_A)
    assert code.shape == (6 * 5,) and int((code == 1).sum()) == 6 and int((code == -1).sum()) == 24
    # weight norm: each generated tensor has norm sqrt(C_out)
    assert torch.allclose(hyper(NB_A)[name].norm(), torch.tensor(2.0))
    # two cells of one stage using the same op on the same edge get different weights (site embedding)
    w = HyperNet(nasforge.get_space("nb201").supernet(C=4, N=2), noise_dim=0)(NB_A)
    assert not torch.allclose(w[name], w["cells.1.edges.edge_1_0.candidates.nor_conv_3x3.1.weight"])


def test_run_equals_the_supernet_loaded_with_the_generated_weights() -> None:
    torch.manual_seed(0)
    net = tiny_darts()
    path = net.path_for(nasforge.get_space("darts").sample(random.Random(1)))
    hyper = HyperNet(net, noise_dim=0)
    x = torch.randn(4, 3, 8, 8)
    weights = hyper(path)
    out = hyper.run(net, x, path, weights)
    loaded = copy.deepcopy(net)
    params = dict(loaded.named_parameters())
    with torch.no_grad():
        for k, v in weights.items():
            params[k].copy_(v)
    assert torch.allclose(out, loaded(x, path), atol=1e-6)
    assert not torch.allclose(out, net(x, path), atol=1e-3)  # the supernet's own candidate weights are not used


def test_gradients_reach_the_hypernet_and_not_the_candidate_convs() -> None:
    torch.manual_seed(0)
    net = tiny_nb201()
    hyper = HyperNet(net)
    generated = set(hyper.generated_names())
    params = dict(net.named_parameters())
    assert generated and all(not params[n].requires_grad for n in generated)
    assert all(p.requires_grad for n, p in params.items() if n not in generated)  # stem, reductions, head
    hyper.run(net, torch.randn(8, 1, 8, 8).repeat(1, 3, 1, 1), NB_A).square().mean().backward()
    assert all(params[n].grad is None for n in generated)
    for name, p in hyper.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert params["stem.0.weight"].grad is not None and params["classifier.weight"].grad is not None


def test_noise_is_redrawn_per_call_and_its_rng_is_in_the_state_dict() -> None:
    net = tiny_nb201()
    hyper = HyperNet(net, noise_dim=1, seed=5)
    saved = copy.deepcopy(hyper.state_dict())
    first, second = hyper(NB_A), hyper(NB_A)
    name = "cells.0.edges.edge_1_0.candidates.nor_conv_3x3.1.weight"
    assert not torch.allclose(first[name], second[name])
    hyper.load_state_dict(saved)
    assert torch.equal(hyper(NB_A)[name], first[name])
    again = HyperNet(tiny_nb201(), noise_dim=1, seed=5)
    again.load_state_dict(saved)
    assert torch.equal(again(NB_A)[name], first[name])


def test_pointwise_mode_generates_only_the_1x1_convs() -> None:
    net = tiny_darts()
    path = net.path_for(nasforge.get_space("darts").parse(DARTS_V2))
    hyper = HyperNet(net, generated="pointwise", noise_dim=0)
    w = hyper(path)
    assert {k: tuple(v.shape) for k, v in w.items()} == selected_convs(net, path, pointwise_only=True)
    assert all(v.shape[-2:] == (1, 1) for v in w.values())
    params = dict(net.named_parameters())
    assert params["cells.0.edges.normal_e2_0.candidates.sep_conv_3x3.0.1.weight"].requires_grad  # depthwise: learned
    assert not params["cells.0.edges.normal_e2_0.candidates.sep_conv_3x3.0.2.weight"].requires_grad


def test_bad_options_paths_and_supernets_are_refused() -> None:
    net = tiny_nb201()
    for kw, match in (({"hidden": 0}, "hidden"), ({"layers": 1.5}, "layers"), ({"chunk_size": True}, "chunk_size"),
                      ({"noise_dim": -1}, "noise_dim"), ({"generated": "spatial"}, "valid|one of"),
                      ({"weight_norm": 1}, "weight_norm")):
        with pytest.raises(ConfigError, match=match):
            HyperNet(net, **kw)
    with pytest.raises(ConfigError, match="needs a Supernet"):
        HyperNet(nn.Linear(2, 2))  # type: ignore[arg-type]
    hyper = HyperNet(net)
    with pytest.raises(ArchError, match="single paths"):
        hyper({**NB_A, "edge_1_0": torch.ones(5)})
    with pytest.raises(ArchError, match="unknown option 'conv_7x7'.*valid: none"):
        hyper({**NB_A, "edge_1_0": "conv_7x7"})
    with pytest.raises(ArchError, match="lacks choice key 'edge_3_2'"):
        hyper({k: v for k, v in NB_A.items() if k != "edge_3_2"})
    wider = nasforge.get_space("nb201").supernet(C=8, N=1)
    with pytest.raises(ConfigError, match="built for another supernet"):
        hyper.run(wider, torch.randn(2, 3, 8, 8), NB_A)
    with pytest.raises(ConfigError, match="built for another supernet"):
        hyper.run(tiny_darts(), torch.randn(2, 3, 8, 8), NB_A)
