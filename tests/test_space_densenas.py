"""DenseNAS space (Fang et al. CVPR 2020): layout, connections, strings, supernet aggregation, Viterbi."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest
import torch

import nasforge
from nasforge.errors import ArchError, ConfigError
from nasforge.spaces.densenas import DenseNasSpace, viterbi_path

#: a tiny CIFAR-preset space: two blocks per stage, one stacked layer, ops ir_k3_e3 / skip
TINY: dict[str, Any] = {"preset": "cifar", "width_mult": 0.25, "blocks_per_stage": 2, "layers": 1,
                        "kernels": [3], "expansions": [3]}
SHAPE = (1, 8, 8)
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny nets: one thread is fastest on a busy machine


def tiny(**kw: Any) -> DenseNasSpace:
    space: DenseNasSpace = nasforge.get_space("densenas", **{**TINY, **kw})
    return space


def all_paths(space: DenseNasSpace) -> list[list[int]]:
    """Every block path from block 0 to the tail (enumerated by recursion)."""
    def walk(a: int) -> list[list[int]]:
        if a == space.tail:
            return [[a]]
        return [[a, *rest] for c in space.outgoing(a) for rest in walk(c.target)]
    return walk(0)


def test_imagenet_layout_and_connections_follow_the_reference() -> None:
    space = nasforge.get_space("densenas")
    widths = [b.channels for b in space.blocks]
    assert widths == [16, 24, 32, 40, 48, 56, 64, 72, 96, 112, 128, 160, 176, 192, 320, 352, 384, 1984]
    assert [b.layers for b in space.blocks[1:-1]] == [3] * 13 + [0] * 3
    targets = {a: [c.target for c in space.outgoing(a)] for a in range(space.tail)}
    assert targets[0] == [1]  # the only stage-1 block
    assert targets[1] == [2, 3, 4]  # stage 2 only: stage 3 is two stages on
    assert targets[2] == [3, 4, 5, 6]  # the next M = 4 blocks
    assert [c.source for c in space.incoming(space.tail)] == [14, 15, 16]
    for c in space.connections:
        a, t = space.blocks[c.source], space.blocks[c.target]
        assert 0 < c.target - c.source <= 4 and t.stage - a.stage <= 1 and c.stride == t.scale // a.scale
    assert space.decisions()["b1_head"] == space.head_ops  # block 1 cannot be skipped: no "off"
    assert space.decisions()["b2_head"][0] == "off"
    assert space.stack_ops == ("ir_k3_e3", "ir_k3_e6", "ir_k5_e3", "ir_k5_e6", "ir_k7_e3", "ir_k7_e6", "skip")
    cifar = nasforge.get_space("densenas", preset="cifar")
    assert [b.scale for b in cifar.blocks] == [1, 1, 2, 2, 2, 4, 4, 4, 4, 4, 4, 8, 8, 8, 8, 8, 8, 8]


def test_round_trip_and_samples_are_valid() -> None:
    rng = random.Random(0)
    for space in (nasforge.get_space("densenas"), tiny(), nasforge.get_space("densenas", preset="cifar", connect=2)):
        for _ in range(30):
            arch = space.sample(rng)
            assert space.parse(space.format(arch)) == arch
            child = space.mutate(arch, rng)
            assert space.is_valid(child) and child != arch
    space = tiny()
    assert space.parse("b1:ir_k3_e3/skip > b3:ir_k3_e3/ir_k3_e3 > b5:ir_k3_e3/skip > b7:ir_k3_e3/skip > "
                       "b9:ir_k3_e3/skip > b11:ir_k3_e3")["b2_head"] == "off"


@pytest.mark.parametrize("text, match", [
    ("b1:ir_k3_e3/skip > b5:ir_k3_e3/skip > b11:ir_k3_e3", "b1 is not connected to b5; it connects to: b2, b3"),
    ("b1:ir_k5_e3/skip", "head op 'ir_k5_e3' is not valid; valid: ir_k3_e3"),
    ("b1:ir_k3_e3", "has 1 stacked layer"),
    ("b3:ir_k3_e3/skip > b1:ir_k3_e3/skip", "increasing order"),
    ("b12:ir_k3_e3", "does not exist"),
    ("b1 ir_k3_e3", "cannot parse"),
])
def test_parse_errors_name_the_problem(text: str, match: str) -> None:
    with pytest.raises(ArchError, match=match):
        tiny().parse(text)


def test_unvisited_blocks_must_be_canonical_and_bad_options_are_refused() -> None:
    space = tiny()
    arch = space.sample(random.Random(1))
    off = next(b for b in space.blocks[1:-1] if arch[f"{b.name}_head"] == "off" and b.layers)
    with pytest.raises(ArchError, match="not visited"):
        space.validate(arch.replace(**{f"{off.name}_l0": "ir_k3_e3"}))
    with pytest.raises(ConfigError, match="preset"):
        nasforge.get_space("densenas", preset="tiny")
    with pytest.raises(ConfigError, match="connect"):
        nasforge.get_space("densenas", connect=0)


def test_standalone_network_equals_the_supernet_on_one_hot_paths() -> None:
    torch.manual_seed(0)
    space = tiny(kernels=[3, 5])
    supernet = space.supernet(num_classes=10, in_channels=1).eval()
    for p in supernet.parameters():  # non-trivial BN affine parameters
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(3, *SHAPE)
    rng = random.Random(2)
    for _ in range(4):
        arch = space.sample(rng)
        net = space.build(arch, num_classes=10, in_channels=1).eval()
        net.load_state_dict(supernet.subnet_state_dict(arch))
        assert torch.allclose(net(x), supernet(x, supernet.path_for(arch)), atol=1e-6)


def test_aggregation_is_transition_weighted_sum_of_op_mixtures() -> None:
    """A block's input is sum_a beta_{a->t} * sum_o w_o head_o(x_a) over the blocks entering it."""
    torch.manual_seed(1)
    space = tiny(kernels=[3, 5])
    net = space.supernet(num_classes=10, in_channels=1).eval()
    ops = {k: torch.softmax(torch.randn(len(v)), 0) for k, v in net.choices().items()}
    trans = {k: torch.softmax(torch.randn(len(v)), 0) for k, v in net.transitions().items()}
    for k in trans.values():
        assert math.isclose(float(k.sum()), 1.0, rel_tol=1e-6)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        out = {0: net.stem(x)}
        for t in range(1, space.tail + 1):
            y = 0
            for c in space.incoming(t):
                beta = trans[space.transition_key(c.source)][[o.target for o in space.outgoing(c.source)].index(t)]
                if c.target == space.tail:
                    head = net.tails[c.key].candidates["conv1x1"](out[c.source])
                else:
                    cands = net.heads[c.key].candidates
                    head = sum(w * cands[o](out[c.source]) for w, o in zip(ops[c.key], space.head_ops))
                y = y + beta * head
            for j in range(space.blocks[t].layers):
                key = f"b{t}_l{j}"
                y = sum(w * net.layers[key].candidates[o](y) for w, o in zip(ops[key], space.stack_ops))
            out[t] = y
        manual = net.classifier(net.pool(out[space.tail]).flatten(1))
        assert torch.allclose(net(x, {**ops, **trans}), manual, atol=1e-5)


def test_zero_transitions_do_not_run_their_blocks() -> None:
    space = tiny()
    net = space.supernet(num_classes=10, in_channels=1)
    arch = space.sample(random.Random(3))
    path = net.path_for(arch)
    visited = set(space.visited(arch))
    for key, targets in net.transitions().items():  # one-hot tensors instead of names
        onehot = torch.zeros(len(targets))
        onehot[targets.index(path[key])] = 1.0  # type: ignore[arg-type]
        path[key] = onehot
    ran: set[str] = set()
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: ran.add(k)) for k, m in net.heads.items()]
    net.eval()(torch.randn(1, *SHAPE), path)
    for h in hooks:
        h.remove()
    assert ran == {c.key for c in space.connections if c.source in visited and c.target in visited
                   and c.target != space.tail and path[space.transition_key(c.source)][  # type: ignore[index]
                       [o.target for o in space.outgoing(c.source)].index(c.target)] == 1.0}


def test_viterbi_equals_the_best_path_by_enumeration() -> None:
    space = tiny()
    net = space.supernet(num_classes=10, in_channels=1)
    paths = all_paths(space)
    assert len(paths) > 10
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        trans = {k: torch.softmax(3 * torch.randn(len(v), generator=gen), 0) for k, v in net.transitions().items()}

        def prob(path: list[int], trans: dict[str, torch.Tensor] = trans) -> float:
            return math.prod(float(trans[space.transition_key(a)][[c.target for c in space.outgoing(a)].index(t)])
                             for a, t in zip(path, path[1:]))
        assert viterbi_path(space, trans) == max(paths, key=prob)


def test_derive_takes_the_viterbi_path_and_argmax_ops() -> None:
    space = tiny(kernels=[3, 5])
    net = space.supernet(num_classes=10, in_channels=1)
    gen = torch.Generator().manual_seed(4)
    weights = {k: torch.softmax(torch.randn(len(v), generator=gen), 0)
               for k, v in itertools.chain(net.choices().items(), net.transitions().items())}
    arch = space.derive(weights)
    path = viterbi_path(space, weights)
    assert space.visited(arch) == path
    for a, t in zip(path, path[1:-1]):
        assert arch[f"b{t}_head"] == space.head_ops[int(weights[space.connection(a, t).key].argmax())]
        for j in range(space.blocks[t].layers):
            assert arch[f"b{t}_l{j}"] == space.stack_ops[int(weights[f"b{t}_l{j}"].argmax())]
    with pytest.raises(ConfigError, match="transition key"):
        space.derive({k: weights[k] for k in net.choices()})
