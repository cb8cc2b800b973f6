"""Tests of the NAS-Bench-201 space: strings, the benchmark table, networks and the supernet."""

from __future__ import annotations

import csv
import gzip
import random
from pathlib import Path

import pytest
import torch
from torch import nn

import nasforge
from nasforge import registry
from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.hardware.cost import count_params
from nasforge.nn.choice import Choice
from nasforge.spaces.nb201 import (
    EDGE_NAMES,
    OPS,
    NB201Cell,
    NB201SearchCell,
    NB201Space,
    NB201Supernet,
)

EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
OP_COLUMNS = ("op_e01", "op_e02", "op_e12", "op_e03", "op_e13", "op_e23")


@pytest.fixture(scope="module")
def space() -> NB201Space:
    return NB201Space()


@pytest.fixture(scope="module")
def table(data_kit: Path) -> list[dict[str, str]]:
    """All 15,625 rows of the kit's NB201 table (``data_kit``: ../shared/data or $NASFORGE_DATA_KIT)."""
    path = data_kit / "nb201" / "nb201_table.csv.gz"
    if not path.is_file():
        pytest.skip(f"NAS-Bench-201 table not found at {path} (set $NASFORGE_DATA_KIT to the data kit directory)")
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15_625
    return rows


# ---- the space ------------------------------------------------------------------------------
def test_registered_and_described(space: NB201Space) -> None:
    assert registry._REGISTRIES["space"]["nb201"] is NB201Space
    assert isinstance(nasforge.get_space("nb201"), NB201Space)
    assert "nb201" in nasforge.list_spaces()
    assert space.name == "nb201" and "NAS-Bench-201" in space.paper and "ICLR 2020" in space.paper
    d = space.decisions()
    assert list(d) == ["edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2"]
    assert all(opts == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3") for opts in d.values())
    assert space.size() == 15_625


def test_format_parse_example(space: NB201Space) -> None:
    arch = space.parse(EXAMPLE)
    assert arch["edge_1_0"] == "nor_conv_3x3" and arch["edge_2_1"] == "avg_pool_3x3" and arch["edge_3_2"] == "skip_connect"
    assert space.format(arch) == EXAMPLE
    assert space.encode_sequence(arch) == [3, 3, 4, 1, 3, 1]
    assert space.parse(f"  {EXAMPLE}\n") == arch  # surrounding whitespace tolerated
    # inputs of a node may be listed in any order; the canonical form sorts them
    shuffled = "|nor_conv_3x3~0|+|avg_pool_3x3~1|nor_conv_3x3~0|+|skip_connect~2|skip_connect~0|nor_conv_3x3~1|"
    assert space.parse(shuffled) == arch
    assert Arch.from_json(arch.to_json()) == arch


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("|none~0|+|none~0|none~1|", r"3 nodes separated by '\+', got 2"),
        (EXAMPLE + "+|none~0|", r"3 nodes .* got 4"),
        ("|none~0|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", r"node 1 must have 1 input edge\(s\), got 2"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", r"node 2 must have 2 input edge\(s\), got 1"),
        ("|none~0|+|none~0|none~3|+|none~0|none~1|none~2|", r"node 2 can only take inputs 0..1, got input node 3"),
        (
            "|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|",
            r"unknown NB201 op 'conv_5x5'.*valid: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3",
        ),
        ("|none~0|+|none~0|none~0|+|none~0|none~1|none~2|", r"node 2 takes input node 0 twice"),
        ("|none~0|+|none~0|none-1|+|none~0|none~1|none~2|", r"must look like 'op~input_node'"),
        ("|none~0|+|none~0|none~x|+|none~0|none~1|none~2|", r"must look like 'op~input_node'"),
        ("none~0+none~0|none~1+none~0|none~1|none~2", r"node 1 .* must look like '\|op~input\|"),
        ("hello world", r"3 nodes"),
        ("", r"3 nodes"),
        ("++", r"node 1 .* must look like"),
    ],
)
def test_parse_errors(space: NB201Space, text: str, match: str) -> None:
    with pytest.raises(ArchError, match=match):
        space.parse(text)


def test_parse_rejects_non_string(space: NB201Space) -> None:
    with pytest.raises(ArchError, match="must be a str"):
        space.parse(42)  # type: ignore[arg-type]


def test_validate_rejects_foreign_and_bad_archs(space: NB201Space) -> None:
    arch = space.parse(EXAMPLE)
    with pytest.raises(ArchError, match="belongs to space 'darts'"):
        space.validate(Arch("darts", arch.choices))
    with pytest.raises(ArchError, match="not valid for decision 'edge_1_0'.*valid: none, skip_connect"):
        space.validate(arch.replace(edge_1_0="sep_conv_3x3"))
    with pytest.raises(ArchError, match="missing decision"):
        space.make({"edge_1_0": "none"})
    with pytest.raises(ArchError):
        space.build(Arch("darts", arch.choices))


def test_sample_mutate_neighbours(space: NB201Space) -> None:
    rng = random.Random(0)
    seen = {space.sample(rng) for _ in range(200)}
    assert len(seen) > 150  # uniform over 15,625: almost no repeats
    for arch in list(seen)[:20]:
        assert space.parse(space.format(arch)) == arch
        child = space.mutate(arch, rng)
        assert sum(a != b for a, b in zip(space.encode_sequence(arch), space.encode_sequence(child))) == 1
        nbrs = space.neighbours(arch)
        assert len(nbrs) == 24 and len(set(nbrs)) == 24 and arch not in nbrs
        for n in nbrs:
            assert sum(arch[d] != n[d] for d in EDGE_NAMES) == 1
        assert space.decode_sequence(space.encode_sequence(arch)) == arch


# ---- the benchmark table ------------------------------------------------------------------
def test_every_table_string_round_trips(space: NB201Space, table: list[dict[str, str]]) -> None:
    archs = set()
    for row in table:
        arch = space.parse(row["arch_str"])
        assert space.format(arch) == row["arch_str"]
        assert space.encode_sequence(arch) == [int(row[c]) for c in OP_COLUMNS]
        archs.add(arch)
    assert len(archs) == 15_625


# Parameters of one nor_conv edge over the 15 cells of the C=16, N=5 network (conv + BN affine).
_EDGE_PARAMS = [5 * sum(c * c * k * k + 2 * c for c in (16, 32, 64)) for k in (1, 3)]


def _one_seed_off(params: int, table_mb: float) -> bool:
    """True if ``table_mb`` is a mean over 2 or 3 seeds of which one counted 1 or 2 conv edges more or less.

    That is how the benchmark's 200-epoch cost record is wrong for ~1.3% of the cells: one seed's
    record there belongs to a different cell (NATS-Bench issue #36), e.g. both
    ``|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|none~2|``
    (1,045,466 parameters) and ``|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|nor_conv_3x3~0|skip_connect~1|none~2|``
    (802,426) read 0.923946 = their mean.
    """
    for seeds in (2, 3):
        other = seeds * table_mb * 1e6 - (seeds - 1) * params
        for edge in _EDGE_PARAMS:
            for j in (-2, -1, 1, 2):
                if abs(other - (params + j * edge)) <= seeds:  # the table has 6-7 decimals
                    return True
    return False


def test_params_match_table(space: NB201Space, table: list[dict[str, str]]) -> None:
    """``count_params / 1e6`` equals ``params_mb`` (C=16, N=5, 10 classes): every parameter counts.

    BN affine terms and the classifier are included, as in NB201's ``count_parameters_in_MB``.
    Over all 15,625 rows 15,421 match to the table's rounding; the other 204 are the benchmark's
    own seed-mixing error (see :func:`_one_seed_off`), which a fixed sample must also explain.
    """
    rows = random.Random(201).sample(table, 300)
    exact = 0
    for row in rows:
        arch = space.parse(row["arch_str"])
        with torch.device("meta"):  # only shapes are needed: no weight initialisation
            params = count_params(space.build(arch, num_classes=10, in_channels=3, C=16, N=5))
        tab = float(row["params_mb"])
        if abs(params / 1e6 - tab) <= 5e-7:
            exact += 1
        else:
            assert _one_seed_off(params, tab), (row["arch_str"], params, tab)
    assert exact >= 290


def test_params_of_known_cells(space: NB201Space) -> None:
    # table rows 0 and 1, and the 12-epoch record quoted in NATS-Bench issue #36
    for text, expected in (
        ("|skip_connect~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", 802_426),
        ("|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|", 129_306),
        (EXAMPLE, 802_426),
    ):
        with torch.device("meta"):
            assert count_params(space.build(space.parse(text))) == expected


# ---- stand-alone networks -----------------------------------------------------------------
@pytest.mark.parametrize("size", [8, 9, 11, 16])
def test_build_forward(space: NB201Space, size: int) -> None:
    torch.manual_seed(0)
    net = space.build(space.parse(EXAMPLE), num_classes=10, in_channels=1, C=8, N=1)
    out = net(torch.randn(2, 1, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()


def test_build_all_none_and_dead_nodes(space: NB201Space) -> None:
    all_none = space.decode_sequence([0] * 6)
    net = space.build(all_none, in_channels=1, C=4, N=1)
    assert not any(len(c.edges) for c in net.cells if isinstance(c, NB201Cell))
    out = net(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # node 1 is dead (all inputs none) but edge 2<-1 still runs on its zeros
    net = space.build(space.decode_sequence([0, 1, 3, 0, 0, 1]), in_channels=1, C=4, N=1)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_build_reference_layout(space: NB201Space) -> None:
    net = space.build(space.parse(EXAMPLE), C=16, N=5)
    assert len(net.cells) == 17
    reductions = [i for i, c in enumerate(net.cells) if not hasattr(c, "edges")]
    assert reductions == [5, 11]
    assert net.classifier.in_features == 64 and net.classifier.out_features == 10
    assert net.stem[0].bias is None and net.stem[0].in_channels == 3
    assert "nor_conv_3x3~0" in repr(net)


def test_build_rejects_bad_options(space: NB201Space) -> None:
    arch = space.parse(EXAMPLE)
    with pytest.raises(ConfigError, match="unknown nb201 network option.*'width'"):
        space.build(arch, width=3)
    with pytest.raises(ConfigError, match="C must be a positive int, got 0"):
        space.build(arch, C=0)
    with pytest.raises(ConfigError, match="num_classes"):
        space.supernet(num_classes=-1)


# ---- the supernet ---------------------------------------------------------------------------
def _randomize(net: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine terms, so a wrong weight mapping cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                if m.running_mean is not None and m.running_var is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture(scope="module")
def supernet(space: NB201Space) -> NB201Supernet:
    torch.manual_seed(0)
    net = space.supernet(num_classes=10, in_channels=1, C=4, N=2)
    _randomize(net, 1)
    return net


def test_supernet_choices(supernet: NB201Supernet) -> None:
    assert supernet.choices() == {name: OPS for name in EDGE_NAMES}
    cells = [c for c in supernet.cells if isinstance(c, NB201SearchCell)]
    assert len(cells) == 6
    choices = [m for m in supernet.modules() if isinstance(m, Choice)]
    assert len(choices) == 6 * 6 and len({id(c) for c in choices}) == 36  # own weights per cell


def test_supernet_single_path_equals_standalone(space: NB201Space, supernet: NB201Supernet) -> None:
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    archs = [space.parse(EXAMPLE), space.decode_sequence([0] * 6), space.decode_sequence([0, 1, 3, 0, 0, 1])]
    archs += [space.sample(random.Random(s)) for s in range(4)]
    for arch in archs:
        net = space.build(arch, num_classes=10, in_channels=1, C=4, N=2)
        sd = supernet.subnet_state_dict(arch)
        assert set(sd) == set(net.state_dict())
        net.load_state_dict(sd)  # strict: every key present, none extra
        path = supernet.path_for(arch)
        assert path == dict(arch.choices)
        for train in (False, True):
            supernet.train(train)
            net.train(train)
            with torch.no_grad():
                torch.testing.assert_close(supernet(x, path), net(x), rtol=0, atol=0)
        supernet.eval()
        net.eval()
        # the same parameters are involved: gradients reach the same weights with the same values
        supernet.zero_grad(set_to_none=True)
        supernet(x, path).sum().backward()
        net(x).sum().backward()
        sup_grads = {k: p.grad for k, p in supernet.named_parameters() if p.grad is not None}
        net_grads = {k: p.grad for k, p in net.named_parameters() if p.grad is not None}
        assert sum(g.numel() for g in sup_grads.values()) == sum(g.numel() for g in net_grads.values())
        for key, g in net_grads.items():
            parts = key.split(".")
            if parts[0] == "cells" and parts[2] == "edges":  # the rule of subnet_state_dict, reversed
                parts[4:4] = ["candidates", arch[parts[3]]]
            torch.testing.assert_close(sup_grads[".".join(parts)], g, rtol=1e-5, atol=1e-6)
    supernet.zero_grad(set_to_none=True)


def test_supernet_weight_path(space: NB201Space, supernet: NB201Supernet) -> None:
    supernet.eval()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    arch = space.parse(EXAMPLE)
    onehot = {k: torch.eye(len(OPS))[OPS.index(v)] for k, v in supernet.path_for(arch).items()}
    with torch.no_grad():
        torch.testing.assert_close(supernet(x, onehot), supernet(x, supernet.path_for(arch)), rtol=0, atol=0)

    # a weighted mixture on one edge, the others fixed: output node = 0.3 * x + 0.7 * conv1x1(x)
    cell = next(c for c in supernet.cells if isinstance(c, NB201SearchCell))
    h = torch.randn(2, 4, 8, 8)
    path: dict[str, str | torch.Tensor] = {name: "none" for name in EDGE_NAMES}
    path["edge_3_0"] = torch.tensor([0.0, 0.3, 0.7, 0.0, 0.0])
    choice = cell.edges["edge_3_0"]
    assert isinstance(choice, Choice)
    conv = choice.candidates["nor_conv_1x1"]
    with torch.no_grad():
        torch.testing.assert_close(cell(h, path), 0.3 * h + 0.7 * conv(h))


def test_supernet_zero_weight_ops_not_run(supernet: NB201Supernet) -> None:
    calls: dict[str, int] = {op: 0 for op in OPS}
    handles = []
    for m in supernet.modules():
        if isinstance(m, Choice):
            for op in OPS:

                def hook(*_: object, op: str = op) -> None:
                    calls[op] += 1

                handles.append(m.candidates[op].register_forward_hook(hook))
    try:
        w = torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0], requires_grad=True)
        out = supernet(torch.randn(2, 1, 8, 8), {name: w for name in EDGE_NAMES})
        out.sum().backward()
    finally:
        for h in handles:
            h.remove()
    assert calls["none"] == calls["nor_conv_3x3"] == calls["avg_pool_3x3"] == 0
    assert calls["skip_connect"] == calls["nor_conv_1x1"] == 36
    assert w.grad is not None and w.grad[1:3].abs().sum() > 0
    supernet.zero_grad(set_to_none=True)


def test_supernet_path_errors(space: NB201Space, supernet: NB201Supernet) -> None:
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ArchError, match="path lacks choice keys"):
        supernet(x, {"edge_1_0": "none"})
    bad = {name: "none" for name in EDGE_NAMES}
    bad["edge_2_1"] = "conv_7x7"
    with pytest.raises(ArchError, match="unknown option 'conv_7x7'"):
        supernet(x, bad)
    with pytest.raises(ArchError, match="belongs to space 'darts'"):
        supernet.path_for(Arch("darts", space.parse(EXAMPLE).choices))
    with pytest.raises(ArchError):
        supernet.path_for("not an arch")


def test_supernet_without_affine(space: NB201Space) -> None:
    net = space.supernet(in_channels=1, C=4, N=1, affine=False, track_running_stats=False)
    arch = space.parse(EXAMPLE)
    assert net(torch.randn(2, 1, 8, 8), net.path_for(arch)).shape == (2, 10)
    sd = net.subnet_state_dict(arch)
    assert set(sd) < set(space.build(arch, in_channels=1, C=4, N=1).state_dict())
