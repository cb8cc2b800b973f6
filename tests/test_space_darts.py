"""Tests of the DARTS / NASNet cell space (nasforge.spaces.darts)."""

from __future__ import annotations

import random

import pytest
import torch

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.hardware.cost import count_params
from nasforge.nn.choice import Choice
from nasforge.registry import get
from nasforge.spaces.darts import (
    CELL_TYPES,
    DARTS_V1,
    DARTS_V2,
    EDGE_KEYS,
    GENOTYPES,
    OPS,
    PC_DARTS,
    PDARTS,
    PRIMITIVES,
    DartsSpace,
    DartsSupernet,
    NetworkCIFAR,
    derive,
)

# Verbatim from the reference repositories (quark0/darts cnn/genotypes.py, chenxin061/pdarts
# genotypes.py, yuhuixu1993/PC-DARTS genotypes.py): non-canonical pair order, [2, 3, 4, 5] concat.
REF_DARTS_V1 = "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])"
REF_DARTS_V2 = "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
REF_PDARTS = "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0),('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3',0), ('dil_conv_5x5', 4)], normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 2), ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('dil_conv_5x5', 3)], reduce_concat=range(2, 6))"
REF_PC_DARTS = "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))"
REF_PC_DARTS_IMAGE = "Genotype(normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('skip_connect', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('dil_conv_5x5', 4)], normal_concat=range(2, 6), reduce=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_5x5', 2), ('max_pool_3x3', 1), ('sep_conv_3x3', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 3)], reduce_concat=range(2, 6))"


@pytest.fixture(scope="module")
def space() -> DartsSpace:
    return DartsSpace()


def _genotype(normal: str, reduce: str | None = None, nc: str = "range(2, 6)", rc: str = "range(2, 6)") -> str:
    return f"Genotype(normal={normal}, normal_concat={nc}, reduce={reduce or normal}, reduce_concat={rc})"


GOOD_CELL = ("[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
             "('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('dil_conv_3x3', 2)]")


# ---- the space -------------------------------------------------------------------------------
def test_registered_and_decisions(space: DartsSpace) -> None:
    assert get("space", "darts") is DartsSpace
    d = space.decisions()
    assert len(d) == 24
    assert list(d)[:4] == ["normal_n0_in", "normal_n0_op_a", "normal_n0_op_b", "normal_n1_in"]
    assert d["normal_n0_in"] == ("0,1",)
    assert d["reduce_n3_in"] == ("0,1", "0,2", "0,3", "0,4", "1,2", "1,3", "1,4", "2,3", "2,4", "3,4")
    assert d["normal_n2_op_b"] == OPS and "none" not in OPS and len(OPS) == 7
    assert space.size() == (1 * 3 * 6 * 10 * 7**8) ** 2


def test_sample_valid_and_distinct_inputs(space: DartsSpace) -> None:
    rng = random.Random(0)
    seen_pairs = set()
    for _ in range(200):
        arch = space.sample(rng)
        assert space.is_valid(arch)
        for cell in CELL_TYPES:
            edges = space.cell_edges(arch, cell)
            for i in range(4):
                (_, a), (_, b) = edges[2 * i: 2 * i + 2]
                assert 0 <= a < b <= i + 1
                seen_pairs.add((i, a, b))
    assert len(seen_pairs) == 1 + 3 + 6 + 10  # uniform sampling reaches every input pair


def test_mutate_and_neighbours(space: DartsSpace) -> None:
    rng = random.Random(1)
    arch = space.parse(DARTS_V2)
    for _ in range(30):
        child = space.mutate(arch, rng)
        assert space.is_valid(child)
        assert sum(arch[d] != child[d] for d in arch) == 1
    nbrs = space.neighbours(arch)
    # per cell: node i has (#pairs - 1) + 2 * 6 neighbours: 12 + 14 + 17 + 21 = 64
    assert len(nbrs) == 128 == len(set(nbrs))
    assert arch not in nbrs


def test_encode_decode_round_trip(space: DartsSpace) -> None:
    rng = random.Random(2)
    for _ in range(20):
        arch = space.sample(rng)
        assert space.decode_sequence(space.encode_sequence(arch)) == arch
        onehot = space.encode_onehot(arch)
        assert len(onehot) == sum(len(o) for o in space.decisions().values()) and sum(onehot) == 24
        assert Arch.from_json(arch.to_json()) == arch


# ---- text form ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_published_genotypes_canonical(space: DartsSpace, name: str) -> None:
    text = GENOTYPES[name]
    assert space.format(space.parse(text)) == text


@pytest.mark.parametrize(
    ("reference", "canonical"),
    [(REF_DARTS_V1, DARTS_V1), (REF_DARTS_V2, DARTS_V2), (REF_PDARTS, PDARTS), (REF_PC_DARTS, PC_DARTS),
     (REF_PC_DARTS_IMAGE, GENOTYPES["PC_DARTS_IMAGENET"])],
)
def test_parse_reference_strings(space: DartsSpace, reference: str, canonical: str) -> None:
    assert space.parse(reference) == space.parse(canonical)
    assert space.format(space.parse(reference)) == canonical


def test_darts_v2_content(space: DartsSpace) -> None:
    arch = space.parse(DARTS_V2)
    normal = space.cell_edges(arch, "normal")
    assert normal[:2] == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]  # node 2
    assert normal[4:6] == [("skip_connect", 0), ("sep_conv_3x3", 1)]  # node 4, reordered
    assert normal[6:] == [("skip_connect", 0), ("dil_conv_3x3", 2)]  # node 5
    assert space.cell_edges(arch, "reduce")[2:4] == [("max_pool_3x3", 1), ("skip_connect", 2)]
    assert DARTS_V2.startswith("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ")
    assert DARTS_V2.endswith("], reduce_concat=range(2, 6))")


def test_format_parse_round_trip_random(space: DartsSpace) -> None:
    rng = random.Random(3)
    for _ in range(50):
        arch = space.sample(rng)
        text = space.format(arch)
        assert space.parse(text) == arch
        assert space.format(space.parse(text)) == text


def test_parse_tolerates_whitespace_and_order(space: DartsSpace) -> None:
    messy = (
        "  Genotype(\n  normal = [('sep_conv_3x3', 1),('sep_conv_3x3', 0),\n ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),"
        " ('sep_conv_3x3', 1), ('skip_connect', 0), ('dil_conv_3x3', 2), ('skip_connect', 0),],\n"
        "  normal_concat = [2,3,4,5],\n  reduce=" + REF_DARTS_V2.split("reduce=")[1].split(", reduce_concat")[0]
        + ",\n  reduce_concat = range( 2 , 6 ),\n)\n"
    )
    arch = space.parse(messy)
    assert space.cell_edges(arch, "normal") == space.cell_edges(space.parse(DARTS_V2), "normal")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("garbage", "not a DARTS genotype"),
        ("", "not a DARTS genotype"),
        ("Genotype(normal=[1, 2], normal_concat=range(2, 6))", "not a DARTS genotype"),
        (_genotype("[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)]"), "needs exactly 8"),
        (_genotype(GOOD_CELL.replace("]", ", ('skip_connect', 0)]")), "needs exactly 8"),
        (_genotype(GOOD_CELL.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)")), "node 5"),
        (_genotype(GOOD_CELL.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)")), "0..4"),
        (_genotype(GOOD_CELL.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', -1)")), "out of range"),
        (_genotype(GOOD_CELL.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', '2')")), "out of range"),
        (_genotype(GOOD_CELL.replace("dil_conv_3x3", "conv_7x1_1x7")), "unknown op 'conv_7x1_1x7'"),
        (_genotype(GOOD_CELL.replace("dil_conv_3x3", "conv_7x1_1x7")), "sep_conv_5x5"),
        (_genotype(GOOD_CELL.replace("dil_conv_3x3", "none")), "'none'"),
        (_genotype(GOOD_CELL.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 0)")), "both edges come from input 0"),
        (_genotype(GOOD_CELL, nc="[2, 3, 4, 5, 6]"), "normal_concat"),
        (_genotype(GOOD_CELL, rc="range(2, 5)"), "reduce_concat"),
        (_genotype(GOOD_CELL, nc="[5, 4, 3, 2]"), "2..5"),
        (_genotype(GOOD_CELL.replace("('sep_conv_3x3', 0)", "(__import__('os'), 0)", 1)), "not a literal list"),
        (_genotype("[1, 2, 3, 4, 5, 6, 7, 8]"), "expected an (op, input) pair"),
    ],
)
def test_parse_errors(space: DartsSpace, text: str, fragment: str) -> None:
    with pytest.raises(ArchError) as info:
        space.parse(text)
    assert fragment in str(info.value)


def test_nasnet_not_representable(space: DartsSpace) -> None:
    nasnet_normal = ("[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0), "
                     "('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0), "
                     "('sep_conv_3x3', 1), ('skip_connect', 1)]")
    with pytest.raises(ArchError):
        space.parse(_genotype(nasnet_normal, nc="[2, 3, 4, 5, 6]"))


def test_make_rejects_bad_options(space: DartsSpace) -> None:
    mapping = dict(space.parse(DARTS_V2).choices)
    mapping["normal_n1_in"] = "1,0"
    with pytest.raises(ArchError, match="valid: 0,1, 0,2, 1,2"):
        space.make(mapping)
    with pytest.raises(ArchError, match="unknown cell type"):
        space.cell_edges(space.parse(DARTS_V2), "middle")


# ---- stand-alone network -----------------------------------------------------------------------------
def test_darts_v2_parameter_count(space: DartsSpace) -> None:
    # The reference (quark0/darts train.py) logs "param size = 3.349342MB" for DARTS_V2 at C=36,
    # 20 layers; the paper quotes 3.3M. The auxiliary head is excluded by count_params.
    net = space.build(space.parse(DARTS_V2), C=36, layers=20, auxiliary=True)
    assert isinstance(net, NetworkCIFAR)
    assert count_params(net) == 3_349_342
    assert count_params(space.build(space.parse(DARTS_V2))) == 3_349_342
    assert count_params(space.build(space.parse(DARTS_V1))) == 3_169_414
    assert 3.35e6 < count_params(space.build(space.parse(PDARTS))) < 3.45e6  # P-DARTS paper: 3.4M
    assert 3.55e6 < count_params(space.build(space.parse(PC_DARTS))) < 3.65e6  # PC-DARTS paper: 3.6M


def test_network_shapes_and_small_inputs(space: DartsSpace) -> None:
    torch.manual_seed(0)
    net = space.build(space.parse(DARTS_V2), num_classes=5, in_channels=1, C=8, layers=5, auxiliary=True)
    net.eval()
    out = net(torch.randn(2, 1, 8, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
    net.train()
    logits, aux = net(torch.randn(2, 1, 8, 8))
    assert logits.shape == aux.shape == (2, 5)
    (logits.sum() + 0.4 * aux.sum()).backward()
    # default depth (20 cells) on tiny inputs: maps shrink to 2x2 after the two reductions
    big = space.build(space.parse(DARTS_V1), in_channels=1, C=8, auxiliary=True).eval()
    with torch.no_grad():
        assert big(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_auxiliary_head_on_cifar_and_larger_inputs(space: DartsSpace) -> None:
    net = space.build(space.parse(PDARTS), C=4, layers=3, auxiliary=True).train()
    for size in (32, 48):
        logits, aux = net(torch.randn(2, 3, size, size))
        assert logits.shape == aux.shape == (2, 10)
    net.eval()
    assert isinstance(net(torch.randn(2, 3, 32, 32)), torch.Tensor)
    no_aux = space.build(space.parse(PDARTS), C=4, layers=3).train()
    assert isinstance(no_aux(torch.randn(2, 3, 16, 16)), torch.Tensor)
    assert not hasattr(no_aux, "auxiliary_head")


def test_drop_path(space: DartsSpace) -> None:
    torch.manual_seed(0)
    net = space.build(space.parse(DARTS_V2), C=4, layers=3)
    x = torch.randn(8, 3, 8, 8)
    net.train()
    net.drop_path_prob = 0.0
    base = net(x)
    assert torch.equal(net(x), base)  # no randomness without drop path
    net.drop_path_prob = 0.5
    torch.manual_seed(1)
    dropped = net(x)
    assert not torch.allclose(dropped, base)
    net.eval()
    net.drop_path_prob = 0.0
    ref = net(x)
    net.drop_path_prob = 0.5
    assert torch.equal(net(x), ref)  # eval ignores drop path


def test_build_options_checked(space: DartsSpace) -> None:
    arch = space.parse(DARTS_V2)
    with pytest.raises(ConfigError, match="unknown darts build option"):
        space.build(arch, width=3)
    with pytest.raises(ConfigError, match="layers"):
        space.build(arch, layers=0)
    with pytest.raises(ConfigError, match="auxiliary"):
        space.build(arch, auxiliary="yes")
    with pytest.raises(ArchError):
        space.build(Arch("nb201", (("edge_1_0", "none"),)))


# ---- supernet ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def supernet(space: DartsSpace) -> DartsSupernet:
    torch.manual_seed(0)
    return space.supernet(C=4, layers=5)


def test_supernet_structure(space: DartsSpace, supernet: DartsSupernet) -> None:
    assert list(supernet.choices()) == list(EDGE_KEYS)
    assert all(opts == PRIMITIVES for opts in supernet.choices().values())
    n_choices = sum(isinstance(m, Choice) for m in supernet.modules())
    assert n_choices == 14 * 5
    # reference MixedOp: pools followed by an affine-free BN, no affine BN anywhere in the cells
    choice = next(m for m in supernet.modules() if isinstance(m, Choice))
    pool = choice.candidates["max_pool_3x3"]
    assert isinstance(pool, torch.nn.Sequential) and isinstance(pool[1], torch.nn.BatchNorm2d)
    cell_bns = [m for m in supernet.cells.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert cell_bns and not any(bn.affine for bn in cell_bns)
    # reference search network at C=16, 8 layers ("param size = 1.930618MB" in the DARTS search log)
    assert count_params(space.supernet()) == 1_930_618


def test_supernet_forward_weights_and_str(supernet: DartsSupernet) -> None:
    x = torch.randn(2, 3, 16, 16)
    alphas = {k: torch.randn(len(PRIMITIVES), requires_grad=True) for k in supernet.choices()}
    out = supernet(x, {k: torch.softmax(a, dim=-1) for k, a in alphas.items()})
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(a.grad is not None for a in alphas.values())
    path = {k: "sep_conv_3x3" for k in supernet.choices()}
    assert supernet(x, path).shape == (2, 10)
    with pytest.raises(ArchError, match="path lacks"):
        supernet(x, {})


def test_supernet_one_hot_equals_str_and_skips_zero_ops(space: DartsSpace, supernet: DartsSupernet) -> None:
    supernet.eval()
    try:
        arch = space.sample(random.Random(4))
        path = supernet.path_for(arch)
        assert sum(op != "none" for op in path.values()) == 16
        one_hot = {k: torch.nn.functional.one_hot(torch.tensor(PRIMITIVES.index(op)), 8).float()
                   for k, op in path.items()}
        calls = []
        hooks = [m.register_forward_hook(lambda *_: calls.append(1))
                 for c in supernet.modules() if isinstance(c, Choice)
                 for name, m in c.candidates.items() if name == "sep_conv_5x5"]
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            y_hot = supernet(x, one_hot)
            y_str = supernet(x, path)
        per_type = {"normal": 0, "reduce": 0}
        for cell in supernet.cells:
            per_type[cell.cell_type] += 1
        # each chosen sep_conv_5x5 runs once per cell of its type, in the one-hot and the str run
        expected = sum(per_type[k.split("_")[0]] for k, op in path.items() if op == "sep_conv_5x5") * 2
        assert len(calls) == expected
        assert torch.allclose(y_hot, y_str, atol=1e-5)
        for h in hooks:
            h.remove()
    finally:
        supernet.train()


def test_path_for_and_derive(space: DartsSpace, supernet: DartsSupernet) -> None:
    arch = space.parse(DARTS_V2)
    path = supernet.path_for(arch)
    assert path["normal_e2_0"] == "sep_conv_3x3" and path["normal_e5_2"] == "dil_conv_3x3"
    assert path["normal_e5_1"] == "none" and path["reduce_e3_2"] == "skip_connect"
    # DARTS derivation: weights peaked on the chosen ops give the genotype back
    weights = {k: torch.full((8,), 0.1) for k in EDGE_KEYS}
    for k, op in path.items():
        weights[k][0] = 0.5  # a strong `none` is ignored by the derivation
        if op != "none":
            weights[k][PRIMITIVES.index(op)] = 0.3
    assert derive(weights) == arch
    with pytest.raises(ArchError, match="missing"):
        derive({})
    with pytest.raises(ArchError):
        supernet.path_for("not an arch")


def test_supernet_options_checked(space: DartsSpace) -> None:
    with pytest.raises(ConfigError, match="valid: num_classes"):
        space.supernet(depth=3)
    small = space.supernet(C=2, layers=3, steps=2, multiplier=2)
    assert len(small.choices()) == 2 * (2 + 3)
    with pytest.raises(ConfigError, match="steps=4"):
        small.path_for(space.parse(DARTS_V2))
