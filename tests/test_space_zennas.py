"""Tests of the Zen-NAS residual chain space (structure strings, networks, mutation)."""

from __future__ import annotations

import random

import pytest
import torch

import nasforge
from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.hardware.cost import count_params, measure
from nasforge.spaces.zennas import (
    BLOCK_TYPES,
    IDW_BLOCK_TYPES,
    INITIAL_STRUCTURE_IDW,
    INITIAL_STRUCTURES,
    WIDTH_SCALES,
    ZENNET_CIFAR_05M,
    ZENNET_CIFAR_1M,
    ZENNET_CIFAR_2M,
    ZENNET_IMAGENET_01MS,
    ResUnit,
    ZenNASSpace,
    super_block,
)

# A small space whose networks build and run quickly.
SMALL = {"widths": [8, 16, 24, 32], "head_widths": [16, 32], "depths": [1, 2, 3]}
IDW = list(IDW_BLOCK_TYPES)
# The published FLOPs-constrained ImageNet ZenNets (``ZenNet/zennet_imagenet1k_flops*_res224.txt``),
# all of them published as SE networks: structure, published parameters and FLOPs.
ZENNET_IDW_SE = {
    "400M": ("SuperConvK3BNRELU(3,16,2,1)SuperResIDWE1K7(16,40,2,40,1)SuperResIDWE1K7(40,64,2,64,1)"
             "SuperResIDWE4K7(64,96,2,96,5)SuperResIDWE2K7(96,224,2,224,5)SuperConvK1BNRELU(224,2048,1,1)",
             5.7e6, 410e6),
    "600M": ("SuperConvK3BNRELU(3,24,2,1)SuperResIDWE1K7(24,48,2,48,1)SuperResIDWE2K7(48,72,2,72,1)"
             "SuperResIDWE6K7(72,96,2,88,5)SuperResIDWE4K7(96,192,2,168,5)SuperConvK1BNRELU(192,2048,1,1)",
             7.1e6, 611e6),
    "900M": ("SuperConvK3BNRELU(3,16,2,1)SuperResIDWE1K7(16,48,2,72,1)SuperResIDWE2K7(48,72,2,64,3)"
             "SuperResIDWE2K7(72,152,2,144,3)SuperResIDWE2K7(152,360,2,352,4)SuperResIDWE4K7(360,288,1,264,3)"
             "SuperConvK1BNRELU(288,2048,1,1)",
             19.4e6, 934e6),
}


@pytest.fixture(scope="module")
def small() -> ZenNASSpace:
    return ZenNASSpace(**SMALL)  # type: ignore[arg-type]


def _arch(space: ZenNASSpace, text: str) -> Arch:
    return space.parse(text)


# ---- decisions, config, registry -------------------------------------------------------------
def test_decisions_layout_and_config_round_trip() -> None:
    space = nasforge.get_space("zennas")
    assert isinstance(space, ZenNASSpace)
    d = space.decisions()
    # stem + 8 slots (4 stages x (1 + 1 optional)) x 4 decisions + head
    assert len(d) == 1 + 8 * 4 + 1 and list(d)[:5] == ["stem", "b0_type", "b0_width", "b0_btl", "b0_depth"]
    assert d["b0_type"] == ("K3K3", "K5K5", "K7K7", "K1K3K1", "K1K5K1", "K1K7K1")  # mandatory slot
    assert d["b1_type"] == d["b0_type"] + ("none",)  # optional slot
    assert d["stem"][0] == "8" and d["stem"][-1] == "512" and len(d["stem"]) == 64
    assert [s.stride for s in space.slots] == [1, 1, 2, 1, 2, 1, 2, 1]
    imnet = ZenNASSpace(preset="imagenet", extra_slots=2)
    assert [s.stride for s in imnet.slots] == [2, 1, 1] * 4 and imnet.stem_stride == 2
    assert imnet.decisions()["head"][-1] == "4096"
    again = nasforge.get_space("zennas", **imnet.config())
    assert again.config() == imnet.config() and again.decisions() == imnet.decisions()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"preset": "mnist"}, "cifar, imagenet"),
        ({"extra_slots": -1}, "extra_slots"),
        ({"widths": []}, "widths"),
        ({"widths": [8, 8]}, "duplicates"),
        ({"head_widths": [0, 8]}, "head_widths"),
        ({"depths": None}, "depths"),
        ({"depths": [1.5]}, "depths"),
    ],
)
def test_bad_config_raises(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ZenNASSpace(**kwargs)  # type: ignore[arg-type]


def test_block_types_option() -> None:
    # the default is the six ResNet-style types for both presets; IDW types are opt-in
    for preset in ("cifar", "imagenet"):
        assert ZenNASSpace(preset=preset).block_types == tuple(BLOCK_TYPES)
    idw = ZenNASSpace(preset="imagenet", block_types=IDW_BLOCK_TYPES)  # any collection of names
    assert idw.decisions()["b0_type"] == tuple(IDW) and len(IDW) == 12
    assert IDW[:4] == ["IDWE1K3", "IDWE2K3", "IDWE4K3", "IDWE6K3"] and IDW[-1] == "IDWE6K7"
    assert idw.decisions()["b1_type"] == tuple(IDW) + ("none",)
    # kept in table order whatever order they are given in, and round-tripped through config()
    mixed = ZenNASSpace(block_types=["IDWE6K7", "K1K3K1", "IDWE1K3", "K3K3"])
    assert mixed.block_types == ("K3K3", "K1K3K1", "IDWE1K3", "IDWE6K7")
    assert mixed.config()["block_types"] == ["K3K3", "K1K3K1", "IDWE1K3", "IDWE6K7"]
    again = nasforge.get_space("zennas", **mixed.config())
    assert again.decisions() == mixed.decisions()
    # the option changes nothing else: the type decisions are the only difference
    default, idw_cifar = ZenNASSpace(), ZenNASSpace(block_types=IDW)
    differing = {d for d in default.decisions() if default.decisions()[d] != idw_cifar.decisions()[d]}
    assert differing == {f"b{j}_type" for j in range(8)}


@pytest.mark.parametrize(
    "block_types,match",
    [
        (["K3K3", "IDWE3K3"], r"unknown block_types \['IDWE3K3'\]; valid: K3K3, .*K1K7K1, IDWE1K3, .*IDWE6K7"),
        (["SuperResK3K3"], r"unknown block_types \['SuperResK3K3'\]"),
        (["none"], r"unknown block_types \['none'\]"),
        (["K3K3", 3], r"unknown block_types \[3\]"),
        (["K3K3", "K3K3"], "duplicates"),
        ([], "non-empty collection"),
        ("K3K3", "non-empty collection of block type names, got 'K3K3'; valid: K3K3"),
        (None, "non-empty collection"),
    ],
)
def test_bad_block_types_raise(block_types: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ZenNASSpace(block_types=block_types)  # type: ignore[arg-type]


def test_supernet_is_refused_with_a_typed_error(small: ZenNASSpace) -> None:
    with pytest.raises(ConfigError, match="zero-shot"):
        small.supernet()


# ---- strings ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        SMALL, {}, {"preset": "imagenet", "extra_slots": 2}, {"preset": "imagenet", "block_types": IDW},
        {**SMALL, "block_types": [*BLOCK_TYPES, *IDW]},
    ],
)
def test_sampled_archs_round_trip(kwargs: dict[str, object]) -> None:
    space = ZenNASSpace(**kwargs)  # type: ignore[arg-type]
    rng = random.Random(0)
    seen_none = False
    for _ in range(50):
        arch = space.sample(rng)
        text = space.format(arch)
        assert space.parse(text) == arch
        assert Arch.from_json(arch.to_json()) == arch
        seen_none |= "none" in arch.values()
    assert seen_none  # optional slots are sometimes left empty


def test_format_writes_the_reference_grammar(small: ZenNASSpace) -> None:
    mapping = {d: opts[0] for d, opts in small.decisions().items()}
    mapping.update({"b1_type": "none", "b5_type": "none", "b7_type": "none"})
    mapping.update({"stem": "16", "b0_type": "K1K5K1", "b0_width": "24", "b0_btl": "8", "b0_depth": "2",
                    "b2_type": "K7K7", "b2_width": "32", "b2_btl": "16", "b2_depth": "1",
                    "b3_type": "K3K3", "b3_width": "32", "b3_btl": "8", "b3_depth": "3",
                    "b4_type": "K5K5", "b6_type": "K3K3", "head": "32"})
    arch = small.make(mapping)
    assert small.format(arch) == (
        "SuperConvK3BNRELU(3,16,1,1)SuperResK1K5K1(16,24,1,8,2)SuperResK7K7(24,32,2,16,1)"
        "SuperResK3K3(32,32,1,8,3)SuperResK5K5(32,8,2,8,1)SuperResK3K3(8,8,2,8,1)SuperConvK1BNRELU(8,32,1,1)"
    )
    # whitespace between blocks is tolerated, the canonical form has none
    assert small.parse(small.format(arch).replace(")S", ") S")) == arch


def test_published_zennets_parse_and_round_trip() -> None:
    cifar = ZenNASSpace()
    for text in (ZENNET_CIFAR_1M, ZENNET_CIFAR_05M, INITIAL_STRUCTURES["cifar"]):
        assert cifar.format(cifar.parse(text)) == text
    # ZenNet-2M has four blocks in its second stage: only with three optional slots per stage
    with pytest.raises(ArchError, match="at most 2 blocks"):
        cifar.parse(ZENNET_CIFAR_2M)
    wide = ZenNASSpace(extra_slots=3)
    assert wide.format(wide.parse(ZENNET_CIFAR_2M)) == ZENNET_CIFAR_2M
    imnet = ZenNASSpace(preset="imagenet")
    for text in (ZENNET_IMAGENET_01MS, INITIAL_STRUCTURES["imagenet"]):
        assert imnet.format(imnet.parse(text)) == text


def test_published_zennet_sizes_match_the_reference() -> None:
    """ZenNet-1M (CIFAR): published 1.0M parameters and 162M FLOPs (the reference counts MACs
    plus BN/bias terms). With 10 classes this network has 994,674 parameters, 159.2M MACs."""
    space = ZenNASSpace()
    cost = measure(space.build(space.parse(ZENNET_CIFAR_1M), num_classes=10), (3, 32, 32))
    assert cost.params == 994_674
    assert 155e6 < cost.macs < 162e6


def test_published_idw_zennets_parse_only_with_idw_types() -> None:
    idw = ZenNASSpace(preset="imagenet", block_types=IDW)
    for text, _, _ in ZENNET_IDW_SE.values():
        arch = idw.parse(text)
        assert idw.format(arch) == text and idw.is_valid(arch)
    assert idw.format(idw.parse(INITIAL_STRUCTURE_IDW)) == INITIAL_STRUCTURE_IDW
    # the default space refuses IDW blocks, naming its own types; an IDW-only one refuses K3K3
    with pytest.raises(ArchError, match="SuperResIDWE1K7.*not in this space's block_types; valid: SuperResK3K3"):
        ZenNASSpace(preset="imagenet").parse(ZENNET_IDW_SE["400M"][0])
    with pytest.raises(ArchError, match="SuperResK3K3.*not in this space's block_types; valid: SuperResIDWE1K3"):
        idw.parse(ZENNET_IMAGENET_01MS)
    with pytest.raises(ArchError, match="SuperResIDWE3K3.*unknown block type; valid: SuperResIDWE1K3"):
        idw.parse(INITIAL_STRUCTURE_IDW.replace("IDWE6K3", "IDWE3K3"))
    # a space with both families holds both kinds of published network
    both = ZenNASSpace(preset="imagenet", block_types=[*BLOCK_TYPES, *IDW])
    for text in (ZENNET_IDW_SE["900M"][0], ZENNET_IMAGENET_01MS):
        assert both.format(both.parse(text)) == text


def _se_params(space: ZenNASSpace, arch: Arch) -> int:
    """Parameters the reference's ``use_se`` adds: an ``SE(m)`` after each depthwise conv's ReLU,
    ``avgpool conv1x1(m -> q) BN ReLU conv1x1(q -> m) BN sigmoid`` with ``q = round(m / 4)``
    (``basic_blocks.SE``), two per IDW sub-layer with ``m = 8-rounded bottleneck * e, out * e``."""
    total = 0
    for t, _, c_out, _, btl, depth in space.blocks(arch):
        _, e = IDW_BLOCK_TYPES[t]
        for m in (btl * e, c_out * e):  # multiples of 8 here, so no rounding
            q = max(1, int(round(m * 0.25)))
            total += depth * (m * q + 2 * q + q * m + 2 * m)
    return total


def test_published_idw_zennet_sizes() -> None:
    """The published IDW ZenNets are SE networks; built here without SE. MACs: 2-3% under the
    published FLOPs (which add BN and SE terms). Parameters: 400M and 600M have the published
    count *without* SE (their SE modules would add 1.8M and 4.2M), 900M only *with* SE, added by
    the reference formula (13.3M without)."""
    idw = ZenNASSpace(preset="imagenet", block_types=IDW)
    expected_params = {"400M": 5_698_208, "600M": 7_125_944, "900M": 13_300_208}
    for name, (text, params, flops) in ZENNET_IDW_SE.items():
        arch = idw.parse(text)
        cost = measure(idw.build(arch, num_classes=1000), (3, 224, 224))
        assert cost.params == expected_params[name]
        assert 0.96 * flops < cost.macs < flops, name
        with_se = cost.params + _se_params(idw, arch)
        if name == "900M":
            assert abs(with_se / params - 1) < 0.01 and cost.params < 0.7 * params
        else:
            assert abs(cost.params / params - 1) < 0.01 and with_se > 1.3 * params


@pytest.mark.parametrize(
    "text,match",
    [
        ("SuperConvK3BNRELU(3,16,1,1)", "stem and a head"),
        ("SuperConvK3BNRELU(3,16,1,1)garbage", "cannot parse"),
        ("SuperConvK1BNRELU(3,16,1,1)SuperResK3K3(16,8,1,8,1)SuperConvK1BNRELU(8,16,1,1)", "start with"),
        ("SuperConvK3BNRELU(3,16,2,1)SuperResK3K3(16,8,1,8,1)SuperConvK1BNRELU(8,16,1,1)", "stride 1"),
        ("SuperConvK3BNRELU(3,12,1,1)SuperResK3K3(12,8,1,8,1)SuperConvK1BNRELU(8,16,1,1)", "stem 12 .*valid: 8, 16"),
        ("SuperConvK3BNRELU(3,16,1,1)SuperResK9K9(16,8,1,8,1)SuperConvK1BNRELU(8,16,1,1)", "SuperResK9K9.*SuperResK3K3"),
        ("SuperConvK3BNRELU(3,16,1,1)SuperResK3K3(16,8,1,8)SuperConvK1BNRELU(8,16,1,1)", "5 arguments"),
        ("SuperConvK3BNRELU(3,16,1,1)SuperResK3K3(16,8,1,x,1)SuperConvK1BNRELU(8,16,1,1)", "integers"),
        ("SuperConvK3BNRELU(3,16,1,1)SuperResK3K3(24,8,1,8,1)SuperConvK1BNRELU(8,16,1,1)", "previous output"),
        ("SuperConvK3BNRELU(3,16,1,1)SuperResK3K3(16,8,2,8,1)SuperConvK1BNRELU(8,16,1,1)", "stride-1 block"),
        ("SuperConvK3BNRELU(3,16,1,1)SuperResK3K3(16,8,1,8,9)SuperConvK1BNRELU(8,16,1,1)", "b0_depth 9.*1, 2, 3"),
        ("SuperConvK3BNRELU(3,16,1,1)SuperResK3K3(16,8,1,12,1)SuperConvK1BNRELU(8,16,1,1)", "b0_btl 12"),
        ("SuperConvK3BNRELU(3,16,1,1)SuperResK3K3(16,8,1,8,1)SuperConvK1BNRELU(8,16,1,1)", "mandatory slot"),
    ],
)
def test_parse_rejects_structures_outside_the_space(small: ZenNASSpace, text: str, match: str) -> None:
    with pytest.raises(ArchError, match=match):
        small.parse(text)


def test_parse_rejects_bad_head_and_too_many_blocks(small: ZenNASSpace) -> None:
    base = ("SuperConvK3BNRELU(3,16,1,1)SuperResK3K3(16,8,1,8,1)SuperResK3K3(8,8,2,8,1)"
            "SuperResK3K3(8,8,2,8,1)SuperResK3K3(8,8,2,8,1)")
    assert small.is_valid(small.parse(base + "SuperConvK1BNRELU(8,16,1,1)"))
    with pytest.raises(ArchError, match="head .*stride 1"):
        small.parse(base + "SuperConvK1BNRELU(8,16,2,1)")
    with pytest.raises(ArchError, match="head 24 .*valid: 16, 32"):
        small.parse(base + "SuperConvK1BNRELU(8,24,1,1)")
    with pytest.raises(ArchError, match="more blocks than the space holds"):
        small.parse(base + "SuperResK3K3(8,8,1,8,1)" * 2 + "SuperConvK1BNRELU(8,16,1,1)")
    with pytest.raises(ArchError, match="expected a zennas structure string"):
        small.parse(42)  # type: ignore[arg-type]


def test_check_keeps_one_arch_per_network(small: ZenNASSpace) -> None:
    arch = small.parse(
        "SuperConvK3BNRELU(3,16,1,1)SuperResK3K3(16,8,1,8,1)SuperResK3K3(8,8,2,8,1)"
        "SuperResK3K3(8,8,2,8,1)SuperResK3K3(8,8,2,8,1)SuperConvK1BNRELU(8,16,1,1)"
    )
    assert arch["b1_type"] == "none" and arch["b1_width"] == "8"
    with pytest.raises(ArchError, match="b1 is none, so b1_width must be its canonical '8'"):
        small.validate(arch.replace(b1_width="16"))
    deep = ZenNASSpace(extra_slots=2, **SMALL)  # type: ignore[arg-type]
    gap = {d: o[0] for d, o in deep.decisions().items()}
    gap.update(b1_type="none", b2_type="K3K3")  # a block after an empty slot of the same stage
    with pytest.raises(ArchError, match="after the empty slot b1"):
        deep.make(gap)


# ---- networks ---------------------------------------------------------------------------------
def test_forward_shapes_for_both_presets(small: ZenNASSpace) -> None:
    torch.manual_seed(0)
    rng = random.Random(1)
    for _ in range(2):
        arch = small.sample(rng)
        net = small.build(arch, num_classes=7).eval()
        x = torch.randn(2, 3, 32, 32)
        assert net(x).shape == (2, 7)
        assert net.forward_pre_gap(x).shape == (2, int(arch["head"]), 4, 4)  # total stride 8
    imnet = ZenNASSpace(preset="imagenet", **SMALL)  # type: ignore[arg-type]
    arch = imnet.sample(rng)
    net = imnet.build(arch, num_classes=5, in_channels=1).eval()
    x = torch.randn(2, 1, 64, 64)
    assert net(x).shape == (2, 5)
    assert net.forward_pre_gap(x).shape == (2, int(arch["head"]), 2, 2)  # total stride 32
    # logits = linear(global average of forward_pre_gap)
    assert torch.allclose(net(x), net.classifier(net.forward_pre_gap(x).mean((2, 3))), atol=1e-6)


def test_blocks_follow_the_reference_layout() -> None:
    # K1KXK1: each sub-layer is two bottleneck units; the stride sits in the first kxk conv.
    b = super_block("K1K5K1", 8, 16, 2, 4, 2, residual=True)
    units = [u for u in b if isinstance(u, ResUnit)]
    assert len(b) == len(units) == 4
    convs = [m for m in units[0].body if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0], c.in_channels, c.out_channels) for c in convs] == [
        (1, 1, 8, 4), (5, 2, 4, 4), (1, 1, 4, 16)]
    assert [u.shortcut_kind for u in units] == ["proj", "identity", "identity", "identity"]
    assert b(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)
    # KXKX: one unit per sub-layer, conv kxk to the bottleneck width then kxk to the output.
    k = super_block("K3K3", 8, 8, 1, 24, 3, residual=True)
    k_units = [u for u in k if isinstance(u, ResUnit)]
    assert len(k) == len(k_units) == 3
    convs = [m for m in k_units[0].body if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.in_channels, c.out_channels) for c in convs] == [(3, 8, 24), (3, 24, 8)]
    # the first unit projects even though the shape is unchanged (the reference ResBlockProj)
    proj = k_units[0].proj
    assert proj is not None and isinstance(proj[0], torch.nn.Conv2d) and proj[0].bias is not None
    # residual=False (the reference no_reslink, used for the Zen-score) drops every shortcut
    plain = super_block("K3K3", 8, 8, 1, 24, 3, residual=False)
    assert all(isinstance(u, ResUnit) and u.shortcut_kind == "none" and u.proj is None for u in plain)
    # parameters by hand: 3 units x (3*3*8*24 + 2*24 + 3*3*24*8 + 2*8), plus a 1x1 proj with bias and BN
    assert count_params(k) == 3 * (9 * 8 * 24 + 48 + 9 * 24 * 8 + 16) + (8 * 8 + 8 + 16)
    assert count_params(plain) == count_params(k) - (8 * 8 + 8 + 16)


def _conv_specs(unit: ResUnit) -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, in, out, groups) of the convs of a unit's body."""
    return [(c.kernel_size[0], c.stride[0], c.in_channels, c.out_channels, c.groups)
            for c in unit.body if isinstance(c, torch.nn.Conv2d)]


def test_idw_blocks_follow_the_reference_layout() -> None:
    # SuperResIDWEXKX: each sub-layer is two inverted-residual units, in -> btl (the stride sits
    # in the first depthwise conv) and btl -> out, expanded by e from btl and from out.
    b = super_block("IDWE2K5", 8, 16, 2, 24, 2, residual=True)
    units = [u for u in b if isinstance(u, ResUnit)]
    assert len(b) == len(units) == 4
    assert [_conv_specs(u) for u in units] == [
        [(1, 1, 8, 48, 1), (5, 2, 48, 48, 48), (1, 1, 48, 24, 1)],
        [(1, 1, 24, 32, 1), (5, 1, 32, 32, 32), (1, 1, 32, 16, 1)],
        [(1, 1, 16, 48, 1), (5, 1, 48, 48, 48), (1, 1, 48, 24, 1)],
        [(1, 1, 24, 32, 1), (5, 1, 32, 32, 32), (1, 1, 32, 16, 1)],
    ]
    # ResBlockProj on the first unit; ResBlock elsewhere, which projects where btl != out
    assert [u.shortcut_kind for u in units] == ["proj"] * 4
    assert b(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)
    # every unit ends BN (no ReLU inside the body) and applies ReLU after the addition
    assert all(isinstance(u.body[-1], torch.nn.BatchNorm2d) for u in units)
    assert (b(torch.randn(2, 8, 8, 8)) >= 0).all()
    same = [u for u in super_block("IDWE1K3", 16, 16, 1, 16, 2, residual=True) if isinstance(u, ResUnit)]
    assert [u.shortcut_kind for u in same] == ["proj", "identity", "identity", "identity"]
    # expanded widths are rounded like the reference smart_round(x, base=8) (Python round, >= 8)
    odd = [u for u in super_block("IDWE1K3", 8, 4, 1, 20, 1, residual=True) if isinstance(u, ResUnit)]
    assert [_conv_specs(u)[0][3] for u in odd] == [16, 8]  # round(20/8)=2 -> 16; 4 -> at least 8
    plain = super_block("IDWE2K5", 8, 16, 2, 24, 2, residual=False)
    assert all(isinstance(u, ResUnit) and u.shortcut_kind == "none" and u.proj is None for u in plain)


def test_idw_block_parameters_by_hand() -> None:
    b = super_block("IDWE2K5", 8, 16, 2, 24, 2, residual=True)

    def unit(c_in: int, m: int, c_out: int) -> int:  # 1x1 + BN, depthwise 5x5 + BN, 1x1 + BN
        return c_in * m + 2 * m + 25 * m + 2 * m + m * c_out + 2 * c_out

    def proj(c_in: int, c_out: int) -> int:  # 1x1 conv with bias, then BN
        return c_in * c_out + c_out + 2 * c_out

    body = unit(8, 48, 24) + unit(24, 32, 16) + unit(16, 48, 24) + unit(24, 32, 16)
    shortcuts = proj(8, 24) + proj(24, 16) + proj(16, 24) + proj(24, 16)
    assert count_params(b) == body + shortcuts
    assert count_params(super_block("IDWE2K5", 8, 16, 2, 24, 2, residual=False)) == body
    # a whole tiny network: stem, one block per stage, head, classifier
    space = ZenNASSpace(preset="imagenet", block_types=["IDWE1K3"], widths=[8, 16], head_widths=[32], depths=[1])
    arch = space.parse(
        "SuperConvK3BNRELU(3,8,2,1)SuperResIDWE1K3(8,16,2,8,1)SuperResIDWE1K3(16,16,2,16,1)"
        "SuperResIDWE1K3(16,8,2,8,1)SuperResIDWE1K3(8,8,2,8,1)SuperConvK1BNRELU(8,32,1,1)"
    )

    def unit3(c_in: int, m: int, c_out: int) -> int:
        return c_in * m + 2 * m + 9 * m + 2 * m + m * c_out + 2 * c_out

    blocks = [(8, 16, 8), (16, 16, 16), (16, 8, 8), (8, 8, 8)]  # (in, out, btl)
    total = 3 * 9 * 8 + 2 * 8  # stem
    for c_in, c_out, btl in blocks:
        total += unit3(c_in, btl, btl) + proj(c_in, btl) + unit3(btl, c_out, c_out)
        total += proj(btl, c_out) if btl != c_out else 0
    total += 8 * 32 + 2 * 32 + 32 * 5 + 5  # head, classifier
    net = space.build(arch, num_classes=5)
    assert count_params(net) == total
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_residual_false_changes_only_the_shortcuts(small: ZenNASSpace) -> None:
    arch = small.sample(random.Random(3))
    with_res, without = small.build(arch), small.build(arch, residual=False)
    assert count_params(with_res) > count_params(without)
    with pytest.raises(ConfigError, match="unknown network option"):
        small.build(arch, dropout=0.1)
    with pytest.raises(ConfigError, match="num_classes"):
        small.build(arch, num_classes=0)


def test_params_and_flops_grow_with_width() -> None:
    space = ZenNASSpace()
    arch = space.parse(INITIAL_STRUCTURES["cifar"])
    costs = []
    for w in ("16", "32", "64", "128"):
        # widen the second stage's block, and the block after it reads the wider input
        costs.append(measure(space.build(arch.replace(b2_width=w)), (3, 32, 32)))
    assert all(a.params < b.params and a.flops < b.flops for a, b in zip(costs, costs[1:]))
    heads = [measure(space.build(arch.replace(head=h)), (3, 32, 32)) for h in ("64", "128", "256")]
    assert all(a.params < b.params and a.flops < b.flops for a, b in zip(heads, heads[1:]))
    btls = [measure(space.build(arch.replace(b2_btl=b)), (3, 32, 32)) for b in ("8", "32", "128")]
    assert all(a.params < b.params and a.flops < b.flops for a, b in zip(btls, btls[1:]))


# ---- mutation and neighbourhoods ----------------------------------------------------------------
def _nearest(grid: tuple[int, ...], target: float) -> int:
    return min(grid, key=lambda g: (abs(g - target), g))


def _changed_units(space: ZenNASSpace, a: Arch, b: Arch) -> set[str]:
    return {d.split("_")[0] for d in a if a[d] != b[d]}


def test_mutate_redraws_one_unit_within_the_reference_neighbourhood() -> None:
    space = ZenNASSpace()
    rng = random.Random(0)
    arch = space.parse(ZENNET_CIFAR_1M)
    grid = space.widths
    touched: set[str] = set()
    for _ in range(300):
        child = space.mutate(arch, rng)
        assert space.is_valid(child) and child != arch
        units = _changed_units(space, arch, child)
        assert len(units) == 1  # one block (or the stem / head) of the chain
        unit = units.pop()
        touched.add(unit)
        if unit in ("stem", "head"):
            continue
        if arch[f"{unit}_type"] != "none" and child[f"{unit}_type"] != "none":
            for k in ("width", "btl"):
                old, new = int(arch[f"{unit}_{k}"]), int(child[f"{unit}_{k}"])
                allowed = {_nearest(grid, old * f) for f in WIDTH_SCALES}
                assert new in allowed, (unit, k, old, new)
            assert abs(int(child[f"{unit}_depth"]) - int(arch[f"{unit}_depth"])) <= 2
    assert touched == set(space.units())  # every unit gets mutated


def test_mutate_switches_optional_slots_on_and_off() -> None:
    space = ZenNASSpace()
    rng = random.Random(1)
    arch = space.parse(ZENNET_CIFAR_1M)  # b1, b7 present; b3, b5 empty
    switched_off = switched_on = False
    for _ in range(400):
        child = space.mutate(arch, rng)
        for slot in ("b1", "b7"):
            switched_off |= child[f"{slot}_type"] == "none"
        if child["b3_type"] != "none":
            switched_on = True
            # a block appearing in an empty slot starts from the block before it (like a split)
            assert abs(int(child["b3_depth"]) - int(arch["b2_depth"])) <= 2
    assert switched_off and switched_on


def test_mutate_with_idw_types_stays_in_the_reference_neighbourhood() -> None:
    space = ZenNASSpace(preset="imagenet", block_types=IDW)
    rng = random.Random(4)
    arch = space.parse(ZENNET_IDW_SE["900M"][0])
    types: set[str] = set()
    for _ in range(300):
        child = space.mutate(arch, rng)
        assert space.is_valid(child) and child != arch
        units = _changed_units(space, arch, child)
        assert len(units) == 1
        unit = units.pop()
        if unit in ("stem", "head") or "none" in (arch[f"{unit}_type"], child[f"{unit}_type"]):
            continue
        types.add(child[f"{unit}_type"])
        for k in ("width", "btl"):
            old, new = int(arch[f"{unit}_{k}"]), int(child[f"{unit}_{k}"])
            assert new in {_nearest(space.widths, old * f) for f in WIDTH_SCALES}
        assert abs(int(child[f"{unit}_depth"]) - int(arch[f"{unit}_depth"])) <= 2
    assert types == set(IDW)  # every IDW type is drawn, and nothing else
    # with both families a mutation may switch a block between them
    both = ZenNASSpace(preset="imagenet", block_types=[*BLOCK_TYPES, *IDW])
    start = both.parse(ZENNET_IMAGENET_01MS)
    seen = {both.mutate(start, rng)["b0_type"] for _ in range(300)}
    assert seen & set(IDW) and seen & set(BLOCK_TYPES)


def test_starting_point_follows_the_block_types() -> None:
    assert ZenNASSpace().starting_point() == ZenNASSpace().parse(INITIAL_STRUCTURES["cifar"])
    imnet = ZenNASSpace(preset="imagenet", block_types=[*BLOCK_TYPES, *IDW])
    assert imnet.starting_point() == imnet.parse(INITIAL_STRUCTURES["imagenet"])
    idw = ZenNASSpace(preset="imagenet", block_types=IDW)
    start = idw.starting_point()
    assert start is not None and idw.format(start) == INITIAL_STRUCTURE_IDW
    assert ZenNASSpace(block_types=IDW).starting_point() is None  # no IDW CIFAR search in the reference


def test_sample_and_neighbours_are_valid(small: ZenNASSpace) -> None:
    rng = random.Random(2)
    for _ in range(5):
        arch = small.sample(rng)
        nbrs = small.neighbours(arch)
        assert nbrs and len(set(nbrs)) == len(nbrs) and arch not in nbrs
        for n in nbrs:
            assert small.is_valid(n)
            assert len(_changed_units(small, arch, n)) == 1
        if arch["b1_type"] != "none":
            assert any(n["b1_type"] == "none" for n in nbrs)  # switching a slot off resets it
