"""Tests of randomly wired networks (Xie et al., ICCV 2019): generators, DAGs, networks, the space."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import cast

import networkx as nx
import pytest
import torch

import nasforge
from nasforge import registry
from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError, UnknownNameError
from nasforge.hardware.cost import count_params, measure
from nasforge.spaces.randwire import (
    NA,
    NodeOp,
    RandomWiredStage,
    RandWireNet,
    RandWireSpace,
    stage_seeds,
)
from nasforge.spaces.randwire_graphs import (
    INPUT_NODE,
    RandomDAG,
    check_generator_params,
    random_dag,
    random_graph,
)

GENERATOR_CASES = [("ER", {"p": 0.2}), ("ER", {"p": 0.7}), ("BA", {"m": 1}), ("BA", {"m": 5}),
                   ("WS", {"k": 4, "p": 0.75}), ("WS", {"k": 2, "p": 1.0}), ("WS", {"k": 6, "p": 0.0})]


def _nodes(stage: RandomWiredStage) -> list[NodeOp]:
    return [cast(NodeOp, m) for m in stage.nodes]


@pytest.fixture(scope="module")
def space() -> RandWireSpace:
    return RandWireSpace()


@pytest.fixture(scope="module")
def tiny() -> RandWireSpace:
    """Small regime, 8 nodes per stage, C=8: builds and runs in milliseconds."""
    return RandWireSpace(regime="small", nodes=8, channels=8)


# ---- generators -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("generator", "n", "params", "error", "needle"),
    [
        ("ER", 8, {"p": -0.1}, ConfigError, "[0, 1]"),
        ("ER", 8, {"p": 1.5}, ConfigError, "[0, 1]"),
        ("ER", 8, {"p": math.nan}, ConfigError, "[0, 1]"),
        ("ER", 1, {"p": 0.5}, ConfigError, "N >= 2"),
        ("ER", 8, {"p": 0.5, "m": 2}, ConfigError, "takes parameter(s) p"),
        ("BA", 8, {"m": 0}, ConfigError, "1 <= m < N = 8"),
        ("BA", 8, {"m": 8}, ConfigError, "1 <= m < N = 8"),
        ("BA", 8, {"m": 2.5}, ConfigError, "must be an int"),
        ("BA", 8, {}, ConfigError, "takes parameter(s) m"),
        ("WS", 8, {"k": 3, "p": 0.5}, ConfigError, "even k"),
        ("WS", 8, {"k": 8, "p": 0.5}, ConfigError, "2 <= k < N = 8"),
        ("WS", 8, {"k": 0, "p": 0.5}, ConfigError, "2 <= k < N = 8"),
        ("WS", 8, {"k": 4, "p": 2.0}, ConfigError, "[0, 1]"),
        ("WS", 8, {"k": 4}, ConfigError, "takes parameter(s) k, p"),
        ("XX", 8, {"p": 0.5}, UnknownNameError, "valid: ER, BA, WS"),
    ],
)
def test_generator_domain_errors(generator: str, n: int, params: dict[str, float], error: type, needle: str) -> None:
    with pytest.raises(error) as info:
        random_graph(generator, n, 0, **params)
    assert needle in str(info.value)


def test_er_extremes() -> None:
    empty, full = random_dag("ER", 6, 0, p=0.0), random_dag("ER", 6, 0, p=1.0)
    assert empty.edges == () and empty.sources == empty.sinks == tuple(range(6))
    assert len(full.edges) == 15 and full.sources == (0,) and full.sinks == (5,)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("m", [1, 3, 5])
def test_ba_follows_the_paper(m: int, seed: int) -> None:
    """M initial nodes without edges; node M joins all of them; every later node brings M edges."""
    n = 16
    g = random_graph("BA", n, seed, m=m)
    assert sorted(g.nodes) == list(range(n))
    assert not any(g.has_edge(i, j) for i in range(m) for j in range(m))
    assert all(g.has_edge(i, m) for i in range(m))
    for v in range(m, n):  # each added node connects to exactly M earlier nodes
        assert sum(1 for u in g.neighbors(v) if u < v) == m
    assert g.number_of_edges() == m * (n - m)
    # hence the DAG's sources are exactly the M initial nodes
    assert random_dag("BA", n, seed, m=m).sources == tuple(range(m))


def test_ws_ring_lattice_and_rewiring() -> None:
    n, k = 10, 4
    lattice = random_graph("WS", n, 0, k=k, p=0.0)
    assert {frozenset(e) for e in lattice.edges} == {
        frozenset((i, (i + j) % n)) for i in range(n) for j in range(1, k // 2 + 1)
    }
    dag = RandomDAG.from_graph(lattice)
    assert dag.sources == (0,) and dag.sinks == (n - 1,)
    for seed in range(5):  # rewiring moves edges but keeps their number N*K/2
        g = random_graph("WS", 32, seed, k=4, p=0.75)
        assert g.number_of_edges() == 64
    assert random_graph("WS", 32, 0, k=4, p=0.75).edges != lattice.edges


@pytest.mark.parametrize(("generator", "params"), GENERATOR_CASES)
def test_dag_properties(generator: str, params: dict[str, float]) -> None:
    n = 16
    for seed in range(6):
        dag = random_dag(generator, n, seed, **params)
        assert all(u < v for u, v in dag.edges) and len(set(dag.edges)) == len(dag.edges)
        g = dag.to_networkx()
        assert nx.is_directed_acyclic_graph(g)
        assert [v for v in g if g.in_degree(v) == 0] == [INPUT_NODE]  # unique input node
        assert [v for v in g if g.out_degree(v) == 0] == [n]  # unique output node
        assert all(u < v for u, v in g.edges)
        assert nx.descendants(g, INPUT_NODE) == set(range(n + 1))
        assert nx.ancestors(g, n) == set(range(INPUT_NODE, n))
        assert set(g.successors(INPUT_NODE)) == {v for v in range(n) if dag.predecessors()[v] == ()}
        # determinism: the same seed gives the same graph
        assert random_dag(generator, n, seed, **params) == dag


def test_seeds_give_different_graphs() -> None:
    dags = {random_dag("WS", 32, s, k=4, p=0.75).edges for s in range(10)}
    assert len(dags) == 10
    seeds = stage_seeds(3, 4)
    assert len(set(seeds)) == 4 and seeds == stage_seeds(3, 4) and seeds != stage_seeds(4, 4)


def test_check_generator_params_normalises() -> None:
    assert check_generator_params("WS", 32, {"k": 4, "p": 1}) == {"k": 4, "p": 1.0}
    with pytest.raises(ConfigError, match="must be an int"):
        check_generator_params("ER", True, {"p": 0.5})


# ---- nodes and stages ----------------------------------------------------------------------
def test_aggregation_weights_are_positive_and_learnable() -> None:
    torch.manual_seed(0)
    node = NodeOp(3, 4, 4, 1)
    assert isinstance(node.edge_logits, torch.nn.Parameter) and node.edge_logits.requires_grad
    with torch.no_grad():
        node.edge_logits.copy_(torch.tensor([-3.0, 0.0, 5.0]))
    w = node.edge_weights()
    assert torch.all(w > 0) and torch.all(w < 1)
    assert torch.allclose(w, torch.sigmoid(torch.tensor([-3.0, 0.0, 5.0])))
    xs = [torch.randn(2, 4, 5, 5) for _ in range(3)]
    node.eval()
    expected = node.bn(node.pointwise(node.depthwise(torch.relu(w[0] * xs[0] + w[1] * xs[1] + w[2] * xs[2]))))
    assert torch.allclose(node(xs), expected, atol=1e-6)
    node.train()
    node(xs).square().sum().backward()
    assert node.edge_logits.grad is not None and torch.all(node.edge_logits.grad != 0)
    single = NodeOp(1, 4, 8, 2)  # one input: no weight (BN absorbs a positive scale)
    assert single.edge_logits is None and torch.equal(single.edge_weights(), torch.ones(1))


def test_stage_runs_in_index_order_and_averages_sinks() -> None:
    torch.manual_seed(0)
    g = nx.Graph([(0, 2), (1, 2)])
    g.add_node(3)  # isolated: a source and a sink
    dag = RandomDAG.from_graph(g)
    assert dag.sources == (0, 1, 3) and dag.sinks == (2, 3)
    stage = RandomWiredStage(dag, 3, 6).eval()
    x = torch.randn(1, 3, 8, 8)
    n = _nodes(stage)
    y0, y1, y3 = n[0]([x]), n[1]([x]), n[3]([x])
    y2 = n[2]([y0, y1])
    assert torch.allclose(stage(x), (y2 + y3) / 2, atol=1e-6)
    assert stage(x).shape == (1, 6, 4, 4)
    for v in (0, 1, 3):  # sources take C_in at stride 2
        assert n[v].depthwise.stride == (2, 2) and n[v].depthwise.in_channels == 3
    assert n[2].depthwise.stride == (1, 1) and n[2].depthwise.in_channels == 6
    assert n[2].edge_logits is not None and n[2].edge_logits.numel() == 2


def test_every_node_with_several_inputs_has_one_weight_per_edge(tiny: RandWireSpace) -> None:
    net = tiny.build(tiny.parse("ER(p=0.5)/seed=1"))
    for stage in net.stages():
        for node, preds in zip(_nodes(stage), stage.dag.predecessors()):
            assert (node.edge_logits is None) == (len(preds) <= 1)
            if node.edge_logits is not None:
                assert node.edge_logits.numel() == len(preds)


@pytest.mark.parametrize(("regime", "stem_stride", "size", "expected"), [
    ("small", 2, 32, [16, 8, 4, 2, 1]),
    ("small", 1, 32, [32, 32, 16, 8, 4]),
    ("regular", 2, 64, [32, 16, 8, 4, 2]),
    ("regular", 1, 32, [32, 16, 8, 4, 2]),
])
def test_stride_placement(regime: str, stem_stride: int, size: int, expected: list[int]) -> None:
    sp = RandWireSpace(regime=regime, nodes=8, channels=4)
    net = sp.build(sp.parse("WS(k=2,p=0.5)/seed=0"), stem_stride=stem_stride, head=16)
    sizes: list[int] = []
    for layer in net.layers.values():
        layer.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
    net.eval()(torch.zeros(1, 3, size, size))
    assert sizes == expected
    for stage in net.stages():  # stride 2 exactly in the nodes fed by the stage's input node
        for node, preds in zip(_nodes(stage), stage.dag.predecessors()):
            assert node.depthwise.stride == ((1, 1) if preds else (2, 2))


def test_table1_layout() -> None:
    small = RandWireSpace(regime="small", nodes=8, channels=6)
    net = small.build(small.parse("BA(m=2)/seed=0"), head=32)
    assert list(net.layers) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert [s.dag.num_nodes for s in net.stages()] == [8, 8, 8]
    assert [_nodes(s)[0].bn.num_features for s in net.stages()] == [6, 12, 24]
    assert isinstance(net, RandWireNet)
    conv1, conv2 = cast(torch.nn.Sequential, net.layers["conv1"]), cast(torch.nn.Sequential, net.layers["conv2"])
    assert conv1[0].out_channels == 3 and conv2[1].out_channels == 6 and conv2[1].stride == (2, 2)
    regular = RandWireSpace(regime="regular", nodes=8, channels=6)
    net = regular.build(regular.parse("BA(m=2)/seed=0"), head=32)
    assert list(net.layers) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert [s.dag.num_nodes for s in net.stages()] == [4, 8, 8, 8]
    assert [_nodes(s)[0].bn.num_features for s in net.stages()] == [6, 12, 24, 48]
    assert net.classifier[1].in_channels == 48 and net.classifier[1].out_channels == 32


def test_stages_get_independent_graphs(space: RandWireSpace) -> None:
    dags = space.stage_dags(space.parse("WS(k=4,p=0.75)/seed=0"))
    assert len({d.edges for d in dags}) == 3


def test_param_count_matches_the_graphs() -> None:
    """Every parameter accounted for from the DAGs: the network is exactly the paper's layout."""
    C, head, classes, in_ch = 6, 32, 7, 2
    sp = RandWireSpace(regime="small", nodes=10, channels=C)
    net = sp.build(sp.parse("ER(p=0.3)/seed=4"), num_classes=classes, in_channels=in_ch, head=head)
    half = C // 2
    expected = in_ch * half * 9 + 2 * half + half * C * 9 + 2 * C  # conv1 + BN, conv2 + BN
    c_prev = C
    for stage, c_out in zip(net.stages(), (C, 2 * C, 4 * C)):
        for preds in stage.dag.predecessors():
            c_in = c_out if preds else c_prev
            expected += 9 * c_in + c_in * c_out + 2 * c_out + (len(preds) if len(preds) > 1 else 0)
        c_prev = c_out
    expected += c_prev * head + 2 * head + head * classes + classes
    assert count_params(net) == expected


# ---- networks -------------------------------------------------------------------------------
def test_forward_cifar_and_digits(tiny: RandWireSpace) -> None:
    torch.manual_seed(0)
    for text in ("ER(p=0.4)/seed=2", "BA(m=3)/seed=5", "WS(k=4,p=0.75)/seed=9"):
        arch = tiny.parse(text)
        net = tiny.build(arch, num_classes=10, head=32)
        y = net(torch.randn(2, 3, 32, 32))
        assert y.shape == (2, 10) and torch.isfinite(y).all()
        y.sum().backward()
        assert all(p.grad is not None for p in net.parameters())
        digits = tiny.build(arch, num_classes=10, in_channels=1, head=32, stem_stride=1)
        assert digits(torch.randn(2, 1, 8, 8)).shape == (2, 10)
        assert tiny.build(arch, in_channels=1, head=32)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    regular = RandWireSpace(regime="regular", nodes=8, channels=4)
    assert regular.build(regular.sample(random.Random(0)), in_channels=1, head=16, stem_stride=1)(
        torch.randn(2, 1, 8, 8)
    ).shape == (2, 10)


def test_build_is_deterministic(tiny: RandWireSpace) -> None:
    arch = tiny.parse("WS(k=4,p=0.75)/seed=3")
    a, b = tiny.build(arch, head=16), tiny.build(arch, head=16)
    assert [s.dag for s in a.stages()] == [s.dag for s in b.stages()]
    b.load_state_dict(a.state_dict())  # same modules, same names, strict
    a.eval()
    b.eval()
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(a(x), b(x))
    other = tiny.build(tiny.parse("WS(k=4,p=0.75)/seed=4"), head=16)
    assert [s.dag for s in other.stages()] != [s.dag for s in a.stages()]


def test_build_options_and_errors(tiny: RandWireSpace) -> None:
    arch = tiny.parse("BA(m=7)/seed=0")
    with pytest.raises(ConfigError, match="unknown randwire network option"):
        tiny.build(arch, layers=3)
    with pytest.raises(ConfigError, match="1 <= m < N = 6"):
        tiny.build(arch, N=6)  # the arch's M=7 does not fit a 6-node stage
    with pytest.raises(ConfigError, match="stem_stride must be 1 or 2"):
        tiny.build(arch, stem_stride=3)
    with pytest.raises(ConfigError, match="C must be an int >= 2"):
        tiny.build(arch, C=1)
    with pytest.raises(ArchError):
        tiny.build(Arch("nb201", arch.choices))
    net = tiny.build(arch, C=4, N=12, head=8, dropout=0.2)
    assert [s.dag.num_nodes for s in net.stages()] == [12, 12, 12]
    assert net.classifier[-1].in_features == 8
    with pytest.raises(ConfigError, match="randwire has no supernet"):
        tiny.supernet()


def test_export_round_trip(tmp_path: Path, tiny: RandWireSpace) -> None:
    from nasforge.export import load_model, save_model

    arch = tiny.parse("ER(p=0.3)/seed=1")
    kwargs = {"num_classes": 5, "in_channels": 1, "head": 16, "stem_stride": 1}
    net = tiny.build(arch, **kwargs).eval()
    save_model(net, tmp_path / "m", space=tiny, arch=arch, build_kwargs=kwargs)
    back = load_model(tmp_path / "m").eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(net(x), back(x))


# ---- the space ------------------------------------------------------------------------------
def test_registered_and_described(space: RandWireSpace) -> None:
    assert registry._REGISTRIES["space"]["randwire"] is RandWireSpace
    assert isinstance(nasforge.get_space("randwire"), RandWireSpace)
    assert "randwire" in nasforge.list_spaces()
    assert "Randomly Wired" in space.paper and "ICCV 2019" in space.paper
    assert space.config() == {"regime": "small", "nodes": 32, "channels": 78, "seeds": 10}
    assert RandWireSpace(regime="regular").channels == 109
    d = space.decisions()
    assert list(d) == ["generator", "er_p", "ba_m", "ws_k", "ws_p", "seed"]
    assert d["generator"] == ("ER", "BA", "WS")
    assert d["ba_m"] == (NA, "1", "2", "3", "4", "5", "6", "7", "8")
    assert d["ws_k"] == (NA, "2", "4", "6", "8") and d["ws_p"] == (NA, "0.0", "0.25", "0.5", "0.75", "1.0")
    assert space.size() == (9 + 8 + 4 * 5) * 10
    same = nasforge.get_space("randwire", **RandWireSpace(regime="regular", nodes=16, channels=8, seeds=3).config())
    assert same.config() == {"regime": "regular", "nodes": 16, "channels": 8, "seeds": 3}


def test_options_fit_the_smallest_stage() -> None:
    regular = RandWireSpace(regime="regular", nodes=8)  # first stage has 4 nodes
    assert regular.decisions()["ba_m"] == (NA, "1", "2", "3") and regular.decisions()["ws_k"] == (NA, "2")
    small = RandWireSpace(regime="small", nodes=8)
    assert small.decisions()["ba_m"][-1] == "7" and small.decisions()["ws_k"] == (NA, "2", "4", "6")
    for sp in (regular, small):  # every point builds
        rng = random.Random(0)
        for _ in range(20):
            sp.stage_dags(sp.sample(rng))
    with pytest.raises(ConfigError, match="needs >= 3"):
        RandWireSpace(regime="regular", nodes=5)
    with pytest.raises(ConfigError, match="valid: small, regular"):
        RandWireSpace(regime="large")
    with pytest.raises(ConfigError, match="seeds must be an int >= 1"):
        RandWireSpace(seeds=0)


def test_canonical_parameters(space: RandWireSpace) -> None:
    good = {"generator": "WS", "er_p": NA, "ba_m": NA, "ws_k": "4", "ws_p": "0.75", "seed": "3"}
    assert space.format(space.make(good)) == "WS(k=4,p=0.75)/seed=3"
    with pytest.raises(ArchError, match="er_p belongs to generator ER and must be '-'"):
        space.make(good | {"er_p": "0.5"})
    with pytest.raises(ArchError, match="generator WS needs ws_k"):
        space.make(good | {"ws_k": NA})
    assert space.graph_params(space.make(good)) == {"k": 4, "p": 0.75}


@pytest.mark.parametrize(("text", "canonical"), [
    ("WS(k=4,p=0.75)/seed=3", "WS(k=4,p=0.75)/seed=3"),
    (" ws( p = .75 , k = 4 ) / seed = 3 ", "WS(k=4,p=0.75)/seed=3"),
    ("ER(p=0.20)/seed=0", "ER(p=0.2)/seed=0"),
    ("BA(m=5)/seed=9", "BA(m=5)/seed=9"),
    ("WS(k=2,p=0)/seed=1", "WS(k=2,p=0.0)/seed=1"),
])
def test_parse_examples(space: RandWireSpace, text: str, canonical: str) -> None:
    assert space.format(space.parse(text)) == canonical


@pytest.mark.parametrize(("text", "needle"), [
    ("WS(k=4,p=0.75)", "expected e.g."),
    ("XY(p=0.1)/seed=0", "valid: ER, BA, WS"),
    ("ER(p=0.15)/seed=0", "valid: 0.1, 0.2"),
    ("ER(m=2)/seed=0", "ER takes p"),
    ("WS(k=4)/seed=0", "needs parameter(s) p"),
    ("WS(k=4,k=4,p=0.5)/seed=0", "given twice"),
    ("WS(k=5,p=0.5)/seed=0", "valid: 2, 4, 6, 8"),
    ("BA(m=9)/seed=0", "valid: 1, 2, 3"),
    ("BA(m=2)/seed=10", "valid: 0, 1, 2"),
    ("BA(m=x)/seed=0", "ba_m='x'"),
])
def test_parse_errors(space: RandWireSpace, text: str, needle: str) -> None:
    with pytest.raises(ArchError) as info:
        space.parse(text)
    assert needle in str(info.value)


def test_round_trip_and_json(space: RandWireSpace) -> None:
    rng = random.Random(0)
    for _ in range(50):
        arch = space.sample(rng)
        assert space.parse(space.format(arch)) == arch
        assert Arch.from_json(arch.to_json()) == arch
        assert space.decode_sequence(space.encode_sequence(arch)) == arch
        assert sum(space.encode_onehot(arch)) == 6


def test_sampling_is_uniform_over_canonical_points(space: RandWireSpace) -> None:
    rng = random.Random(1)
    n = 7400
    archs = [space.sample(rng) for _ in range(n)]
    assert all(space.is_valid(a) for a in archs)
    counts = Counter(a["generator"] for a in archs)
    for g, points in (("ER", 9), ("BA", 8), ("WS", 20)):  # share = its points / 37
        expected = n * points / 37
        assert abs(counts[g] - expected) < 4 * math.sqrt(expected)
    assert len(set(archs)) > 0.8 * space.size()  # 370 points, ~20 draws each: nearly all seen
    assert Counter(a["ws_k"] for a in archs if a["generator"] == "WS").keys() == {"2", "4", "6", "8"}


def test_mutate_and_neighbours(space: RandWireSpace) -> None:
    rng = random.Random(2)
    switched = 0
    for _ in range(200):
        arch = space.sample(rng)
        child = space.mutate(arch, rng)
        assert space.is_valid(child) and child != arch
        assert child in space.neighbours(arch)
        if child["generator"] != arch["generator"]:
            switched += 1
            assert child["seed"] == arch["seed"]
        else:
            assert sum(arch[d] != child[d] for d in arch) == 1
    assert switched > 30  # one of 3-4 applicable decisions is the generator
    ws = space.parse("WS(k=4,p=0.75)/seed=3")
    nbrs = space.neighbours(ws)
    assert len(nbrs) == len(set(nbrs)) == 9 + 8 + 3 + 4 + 9  # ER, BA, k, p, seed
    assert all(space.is_valid(a) for a in nbrs)


def test_one_seed_space_still_mutates() -> None:
    sp = RandWireSpace(seeds=1)
    arch = sp.parse("BA(m=2)/seed=0")
    rng = random.Random(0)
    assert all(sp.mutate(arch, rng)["seed"] == "0" for _ in range(20))


# ---- complexity at the paper's settings -------------------------------------------------------
def test_small_regime_params_match_paper(space: RandWireSpace) -> None:
    """RandWire-WS(4, 0.75), small regime, C=78: the paper's 5.6M parameters (mean of 5 seeds)."""
    params = [count_params(space.build(space.parse(f"WS(k=4,p=0.75)/seed={s}"), num_classes=1000)) for s in range(5)]
    assert abs(statistics.mean(params) / 5.6e6 - 1) < 0.03


@pytest.mark.slow
@pytest.mark.parametrize(("regime", "C", "paper_params", "paper_macs"), [
    ("small", 78, 5.6e6, 583e6),
    ("regular", 109, 31.9e6, 4.0e9),
    ("regular", 154, 61.5e6, 7.9e9),
])
def test_complexity_matches_paper(regime: str, C: int, paper_params: float, paper_macs: float) -> None:
    """Params and multiply-adds (``Cost.macs``) on 224x224 ImageNet, mean over 5 graph seeds."""
    sp = RandWireSpace(regime=regime, channels=C)
    costs = [measure(sp.build(sp.parse(f"WS(k=4,p=0.75)/seed={s}"), num_classes=1000), (3, 224, 224))
             for s in range(5)]
    assert abs(statistics.mean(c.params for c in costs) / paper_params - 1) < 0.03
    assert abs(statistics.mean(c.macs for c in costs) / paper_macs - 1) < 0.03
