"""Tests of the MobileNet (MBConv chain) space and of the mobile blocks it is built from."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import nasforge
from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.hardware.cost import measure
from nasforge.nn.blocks import HSigmoid, HSwish, MBConv, SqueezeExcite, make_activation, make_divisible
from nasforge.spaces.mobilenet import PROXYLESSNAS_MOBILE, MobileNetSpace

SPACE_CONFIGS = [
    {},
    {"preset": "cifar"},
    {"preset": "cifar", "width_mult": 0.5, "se": "search", "activation": "hswish"},
    {"width_mult": 1.4, "kernels": (3, 5), "expansions": (1, 4), "allow_skip": False, "se": True},
]


def _uniform(space: MobileNetSpace, option: str) -> Arch:
    return space.make({d: option for d in space.decisions()})


# ---- blocks ---------------------------------------------------------------------------------
def test_make_divisible_matches_mobilenetv2() -> None:
    assert [make_divisible(v) for v in (32, 12, 20, 44.8, 3, 1792.0)] == [32, 16, 24, 48, 8, 1792]
    assert make_divisible(10, 8) == 16  # 8 would round down by more than 10%


def test_hswish_and_hsigmoid_formulas() -> None:
    x = torch.linspace(-6, 6, 101)
    relu6 = torch.clamp(x + 3, 0, 6)
    assert torch.allclose(HSwish()(x), x * relu6 / 6)
    assert torch.allclose(HSigmoid()(x), relu6 / 6)
    with pytest.raises(ConfigError, match="relu6"):
        make_activation("gelu")


def test_mbconv_structure() -> None:
    b = MBConv(16, 16, 5, 1, 6)
    assert b.use_residual and isinstance(b.expand, nn.Sequential)
    assert b.depthwise[0].kernel_size == (5, 5) and b.depthwise[0].groups == 96
    assert not MBConv(16, 24, 3, 1, 6).use_residual and not MBConv(16, 16, 3, 2, 6).use_residual
    assert isinstance(MBConv(32, 16, 3, 1, 1).expand, nn.Identity)  # e=1: no expansion conv
    y = b(torch.randn(2, 16, 9, 9))
    assert y.shape == (2, 16, 9, 9)
    assert MBConv(16, 24, 3, 2, 3)(torch.randn(1, 16, 9, 9)).shape == (1, 24, 5, 5)
    with pytest.raises(ConfigError):
        MBConv(16, 24, 3, 1, 6, residual=True)
    with pytest.raises(ConfigError, match="odd"):
        MBConv(16, 16, 4, 1, 6)


def test_se_widths_and_gates() -> None:
    b = MBConv(24, 24, 3, 1, 3, se=True)
    assert isinstance(b.se, SqueezeExcite)
    assert b.se.reduce.out_channels == make_divisible(72 * 0.25) == 24
    assert isinstance(b.se.gate, nn.Sigmoid)
    assert isinstance(MBConv(24, 24, 3, 1, 3, activation="hswish", se=True).se.gate, HSigmoid)


# ---- the space ------------------------------------------------------------------------------
def test_decisions_and_backbone() -> None:
    space = MobileNetSpace()
    d = space.decisions()
    assert len(d) == 21 and list(d)[:5] == ["s1_l0", "s1_l1", "s1_l2", "s1_l3", "s2_l0"]
    assert list(d)[-1] == "s6_l0"
    assert d["s1_l0"] == ("ir_k3_e3", "ir_k3_e6", "ir_k5_e3", "ir_k5_e6", "ir_k7_e3", "ir_k7_e6")
    assert d["s1_l1"] == d["s1_l0"] + ("skip",)
    assert space.size() == 6**6 * 7**15
    assert [s for _, _, s in space.stages] == [2, 2, 2, 1, 2, 1]
    assert [s for _, _, s in MobileNetSpace(preset="cifar").stages] == [1, 2, 2, 1, 2, 1]
    half = MobileNetSpace(width_mult=0.5)
    assert [c for c, _, _ in half.stages] == [16, 24, 40, 48, 96, 160]
    assert (half.stem_channels, half.first_channels, half.head_channels) == (16, 8, 1280)
    assert MobileNetSpace(width_mult=1.4).head_channels == 1792
    se = MobileNetSpace(se="search").decisions()["s2_l1"]
    assert se[:2] == ("ir_k3_e3", "ir_k3_e3_se") and len(se) == 13
    assert "skip" not in MobileNetSpace(allow_skip=False).decisions()["s2_l1"]


@pytest.mark.parametrize("cfg", SPACE_CONFIGS)
def test_config_recreates_space(cfg: dict) -> None:
    space = MobileNetSpace(**cfg)
    again = MobileNetSpace(**space.config())
    assert again.config() == space.config() and again.decisions() == space.decisions()


def test_registered_under_mobilenet() -> None:
    import nasforge

    space = nasforge.get_space("mobilenet", preset="cifar", se="search")
    assert isinstance(space, MobileNetSpace) and space.name == "mobilenet"
    assert nasforge.get_space("mobilenet", **space.config()).config() == space.config()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"preset": "imagenet"}, "proxyless, cifar"),
        ({"width_mult": 0}, "width_mult"),
        ({"kernels": (3, 4)}, "odd"),
        ({"kernels": ()}, "non-empty"),
        ({"expansions": (0, 6)}, ">= 1"),
        ({"expansions": (6, 6)}, "duplicates"),
        ({"se": "yes"}, "'search'"),
        ({"activation": "gelu"}, "hswish"),
        ({"allow_skip": "no"}, "allow_skip"),
    ],
)
def test_bad_config_raises_config_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        MobileNetSpace(**kwargs)


def test_format_groups_equal_layers() -> None:
    space = MobileNetSpace()
    assert space.format(_uniform(space, "ir_k3_e6")) == (
        "ir_r4_k3_s2_e6_c24 | ir_r4_k3_s2_e6_c40 | ir_r4_k3_s2_e6_c80 | ir_r4_k3_s1_e6_c96 | "
        "ir_r4_k3_s2_e6_c192 | ir_r1_k3_s1_e6_c320"
    )
    arch = space.make(PROXYLESSNAS_MOBILE)
    text = space.format(arch)
    assert text.startswith("ir_r1_k5_s2_e3_c24 ir_r1_k3_s1_e3_c24 skip_r2 | ")
    assert text.endswith("| ir_r2_k7_s2_e6_c192 ir_r2_k7_s1_e3_c192 | ir_r1_k7_s1_e6_c320")
    assert space.parse(text) == arch
    cifar = MobileNetSpace(preset="cifar")
    assert cifar.format(cifar.make(PROXYLESSNAS_MOBILE)).startswith("ir_r1_k5_s1_e3_c24 ")


@pytest.mark.parametrize("cfg", SPACE_CONFIGS)
def test_round_trip_50_samples(cfg: dict) -> None:
    space = MobileNetSpace(**cfg)
    rng = random.Random(0)
    for _ in range(50):
        arch = space.sample(rng)
        text = space.format(arch)
        assert space.parse(text) == arch
        assert space.parse(f"  {text}  ") == arch
        assert Arch.from_json(arch.to_json()) == arch


def test_parse_accepts_ungrouped_and_r_less_forms() -> None:
    space = MobileNetSpace(preset="cifar")
    arch = space.make(PROXYLESSNAS_MOBILE)
    stages: list[list[str]] = [[] for _ in space.stages]
    for layer in space.layers:  # one r1 token per layer, later layers of a group at stride 1
        option = arch[layer.name]
        c = layer.out_channels
        tok = "skip_r1" if option == "skip" else option.replace("ir_", "ir_r1_").replace("_e", f"_s{layer.stride}_e")
        stages[layer.stage - 1].append(tok + ("" if option == "skip" else f"_c{c}"))
    text = " | ".join(" ".join(s) for s in stages)
    assert "_r2" not in text and text != space.format(arch)
    assert space.parse(text) == arch
    assert space.parse(text.replace("_r1", "")) == arch
    assert space.parse(text.replace(" | ", "|")) == arch


@pytest.mark.parametrize(
    "mutation, match",
    [
        (lambda t: t.rsplit(" | ", 1)[0], "expected 6 stages"),
        (lambda t: t + " | ir_r1_k3_s1_e6_c320", "expected 6 stages"),
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24", "ir_r1_k3_s2_e6_c24 skip_r3"), None),  # valid
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24", "skip_r1 ir_r3_k3_s2_e6_c24"), "cannot open stage 1"),
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24", "ir_r4_k4_s2_e6_c24"), "kernel 4 .* valid: 3, 5, 7"),
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24", "ir_r4_k3_s2_e4_c24"), "expansion 4 .* valid: 3, 6"),
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24", "ir_r4_k3_s1_e6_c24"), "expects s2"),
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24", "ir_r1_k3_s2_e6_c24 ir_r3_k3_s2_e6_c24"), "expects s1"),
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24", "ir_r4_k3_s2_e6_c32"), "expects c24"),
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24", "ir_r5_k3_s2_e6_c24"), "has 4 searchable layer.*more"),
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24", "ir_r3_k3_s2_e6_c24"), "describes 3"),
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24", "ir_r0_k3_s2_e6_c24 ir_r4_k3_s2_e6_c24"), ">= 1"),
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24", "mb_r4_k3_s2_e6_c24"), "cannot parse block"),
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24", "ir_r4_k3_s2_e6_c24_se0.25"), "se=False"),
        (lambda t: t.replace("ir_r4_k3_s2_e6_c24 |", " |"), "stage 1 is empty"),
    ],
)
def test_parse_errors(mutation, match: str | None) -> None:
    space = MobileNetSpace()
    text = mutation(space.format(_uniform(space, "ir_k3_e6")))
    if match is None:
        space.parse(text)
        return
    with pytest.raises(ArchError, match=match):
        space.parse(text)


def test_parse_errors_specific_to_options() -> None:
    se_all = MobileNetSpace(se=True)
    text = se_all.format(_uniform(se_all, "ir_k3_e3"))
    assert text.count("_se0.25") == 6
    with pytest.raises(ArchError, match="se=True"):
        se_all.parse(text.replace("_se0.25", ""))
    no_skip = MobileNetSpace(allow_skip=False)
    with pytest.raises(ArchError, match="allow_skip=False"):
        no_skip.parse(MobileNetSpace().format(MobileNetSpace().make(PROXYLESSNAS_MOBILE)))
    half = MobileNetSpace(width_mult=0.5)
    with pytest.raises(ArchError, match="expects c16"):
        half.parse(MobileNetSpace().format(_uniform(MobileNetSpace(), "ir_k3_e3")))
    with pytest.raises(ArchError):
        MobileNetSpace().parse(123)  # type: ignore[arg-type]


def test_make_and_validate_errors() -> None:
    space = MobileNetSpace()
    good = dict(_uniform(space, "ir_k5_e3"))
    with pytest.raises(ArchError, match="skip"):
        space.make({**good, "s2_l0": "skip"})  # first layer of a stage: skip not offered
    with pytest.raises(ArchError, match="ir_k7_e6"):
        space.make({**good, "s2_l1": "ir_k9_e6"})
    with pytest.raises(ArchError, match="belongs to space"):
        space.validate(Arch("nb201", _uniform(space, "ir_k5_e3").choices))
    with pytest.raises(ArchError):
        space.build(Arch("mobilenet", (("s1_l0", "ir_k3_e3"),)))


def test_sample_mutate_neighbours() -> None:
    space = MobileNetSpace(se="search")
    rng = random.Random(1)
    arch = space.sample(rng)
    assert space.is_valid(arch)
    for _ in range(20):
        child = space.mutate(arch, rng)
        assert space.is_valid(child)
        assert sum(arch[d] != child[d] for d in arch) == 1
    nb = space.neighbours(arch)
    assert len(nb) == sum(len(o) - 1 for o in space.decisions().values())
    assert len(set(nb)) == len(nb) and arch not in nb
    assert all(space.is_valid(a) for a in nb)
    # samples use skip somewhere but never on a stage's first layer
    samples = [space.sample(rng) for _ in range(30)]
    assert any(a[d] == "skip" for a in samples for d in a)
    assert all(a[f"s{s}_l0"] != "skip" for a in samples for s in range(1, 7))


def test_encodings() -> None:
    space = MobileNetSpace()
    rng = random.Random(2)
    for _ in range(10):
        arch = space.sample(rng)
        seq = space.encode_sequence(arch)
        assert space.decode_sequence(seq) == arch
        onehot = space.encode_onehot(arch)
        assert len(onehot) == sum(len(o) for o in space.decisions().values()) == 6 * 6 + 15 * 7
        assert sum(onehot) == 21
    with pytest.raises(ArchError):
        space.decode_sequence([6] + [0] * 20)  # s1_l0 has 6 options: index 6 is out of range


# ---- networks -------------------------------------------------------------------------------
def test_forward_shapes_cifar() -> None:
    space = MobileNetSpace(preset="cifar", width_mult=0.5)
    arch = space.sample(random.Random(3))
    net = space.build(arch, num_classes=10)
    seen: list[tuple[int, ...]] = []
    net.head.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert seen[0][-2:] == (4, 4)  # the CIFAR backbone has total stride 8
    small = space.build(arch, num_classes=7, in_channels=1, dropout=0.2)
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    with pytest.raises(ConfigError, match="num_classes"):
        space.build(arch, num_classes=0)
    with pytest.raises(ConfigError, match="unknown network option"):
        space.build(arch, drop_path=0.1)


def test_forward_shape_proxyless_224() -> None:
    space = MobileNetSpace()
    net = space.build(space.make(PROXYLESSNAS_MOBILE), num_classes=1000).eval()
    seen: list[tuple[int, ...]] = []
    net.head.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    with torch.no_grad():
        assert net(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    assert seen[0] == (1, 320, 7, 7)


def test_costs_at_224() -> None:
    """MACs grow with kernel and expansion; skips remove parameters; ProxylessNAS-Mobile size."""
    space = MobileNetSpace()
    cost = {
        (k, e): measure(space.build(_uniform(space, f"ir_k{k}_e{e}"), num_classes=1000), (3, 224, 224))
        for k in (3, 5, 7) for e in (3, 6)
    }
    # Reference figures (width 1.0, 224x224, 1000 classes), measured with hardware.cost.measure.
    assert (cost[3, 3].params, cost[3, 3].macs) == (3_191_928, 257_422_208)
    assert (cost[7, 6].params, cost[7, 6].macs) == (5_103_336, 606_590_720)
    for e in (3, 6):
        assert cost[3, e].macs < cost[5, e].macs < cost[7, e].macs
    for k in (3, 5, 7):
        assert cost[k, 3].macs < cost[k, 6].macs
    assert cost[3, 3].macs == min(c.macs for c in cost.values())
    assert cost[7, 6].macs == max(c.macs for c in cost.values())

    arch = _uniform(space, "ir_k5_e6")
    skipped = arch.replace(s1_l3="skip", s3_l2="skip", s5_l1="skip")
    full_c = measure(space.build(arch, num_classes=1000), (3, 224, 224))
    skip_c = measure(space.build(skipped, num_classes=1000), (3, 224, 224))
    assert skip_c.params < full_c.params and skip_c.macs < full_c.macs

    # Published ProxylessNAS-Mobile: 4.08M params / 320M MACs with 32 channels in stage 1;
    # in this backbone (24 channels there) it is slightly smaller.
    pm = measure(space.build(space.make(PROXYLESSNAS_MOBILE), num_classes=1000), (3, 224, 224))
    assert pm.params == 4_073_520
    assert 300e6 < pm.macs < 310e6


# ---- supernet -------------------------------------------------------------------------------
def _small_space(**kw) -> MobileNetSpace:
    return MobileNetSpace(preset="cifar", width_mult=0.25, kernels=(3, 5), expansions=(2, 3), **kw)


@pytest.mark.parametrize("cfg", [{}, {"se": "search", "activation": "hswish"}, {"se": True, "activation": "relu"}])
def test_supernet_path_matches_standalone(cfg: dict) -> None:
    torch.manual_seed(0)
    space = _small_space(**cfg)
    sn = space.supernet(num_classes=5)
    assert sn.choices() == space.decisions()
    rng = random.Random(4)
    x = torch.randn(3, 3, 16, 16)
    # a few training-mode steps on random paths so BN running stats are not the defaults
    sn.train()
    with torch.no_grad():
        for _ in range(3):
            sn(x, sn.path_for(space.sample(rng)))
    sn.eval()
    for _ in range(4):
        arch = space.sample(rng)
        net = space.build(arch, num_classes=5)
        net.load_state_dict(sn.subnet_state_dict(arch), strict=True)
        net.eval()
        with torch.no_grad():
            assert torch.equal(net(x), sn(x, sn.path_for(arch)))


def test_supernet_weight_paths() -> None:
    torch.manual_seed(0)
    space = _small_space()
    sn = space.supernet(num_classes=4).eval()
    arch = space.sample(random.Random(5))
    x = torch.randn(2, 3, 8, 8)
    decisions = space.decisions()
    onehot = {d: torch.tensor([1.0 if o == arch[d] else 0.0 for o in opts]) for d, opts in decisions.items()}
    with torch.no_grad():
        assert torch.equal(sn(x, onehot), sn(x, sn.path_for(arch)))
    soft = {d: torch.softmax(torch.randn(len(opts)), 0).requires_grad_() for d, opts in decisions.items()}
    out = sn(x, soft)
    assert out.shape == (2, 4)
    out.sum().backward()
    assert all(w.grad is not None for w in soft.values())
    # skip is the identity inside the supernet
    layer = sn.layers["s2_l1"]
    h = torch.randn(2, space.stages[1][0], 4, 4)
    assert torch.equal(layer(h, "skip"), h)
    with pytest.raises(ArchError, match="lacks choice keys"):
        sn(x, {"s1_l0": "ir_k3_e2"})
    with pytest.raises(ArchError):
        sn.path_for("ir_k3_e2")


# ---- FBNet's group-convolution blocks (group_conv=True) ----------------------------------------


FBNET_CFG = {"preset": "cifar", "width_mult": 0.25, "kernels": [3, 5], "expansions": [1, 3, 6], "group_conv": True}


def test_group_conv_gives_fbnets_nine_candidates() -> None:
    space = nasforge.get_space("mobilenet", **FBNET_CFG)
    assert space.decisions()["s1_l1"] == (
        "ir_k3_e1", "ir_k3_e1_g2", "ir_k3_e3", "ir_k3_e6", "ir_k5_e1", "ir_k5_e1_g2", "ir_k5_e3", "ir_k5_e6", "skip",
    )
    assert space.config()["group_conv"] is True
    assert "group_conv" not in nasforge.get_space("mobilenet").config()  # old tables and runs keep matching
    with pytest.raises(ConfigError, match="has no 1"):
        nasforge.get_space("mobilenet", expansions=[3, 6], group_conv=True)
    with pytest.raises(ConfigError, match="group_conv must be True or False"):
        nasforge.get_space("mobilenet", group_conv="yes")


def test_group_block_is_fbnets_irfblock() -> None:
    """1x1 group conv (kept at e1), channel shuffle, depthwise, 1x1 group conv (authors' IRFBlock)."""
    block = MBConv(16, 16, 3, 1, 1, groups=2)
    assert block.expand[0].groups == 2 and block.expand[0].weight.shape == (16, 8, 1, 1)
    assert block.project[0].groups == 2 and block.project[0].weight.shape == (16, 8, 1, 1)
    assert block.depthwise[0].groups == 16
    plain = MBConv(16, 16, 3, 1, 1)
    assert isinstance(plain.expand, torch.nn.Identity) and isinstance(plain.shuffle, torch.nn.Identity)
    # the shuffle interleaves the two groups: channel j of group g goes to position 2 j + g
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert block.shuffle(x).flatten().tolist() == [0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]
    # without the shuffle, group 0 of the output would only ever see group 0 of the input
    block.eval()
    x = torch.zeros(1, 16, 4, 4)
    x[:, :8] = torch.randn(1, 8, 4, 4)
    y = block(x) - x  # the residual branch
    assert y[:, 8:].abs().sum() > 0
    with pytest.raises(ConfigError, match="groups must be a positive integer dividing"):
        MBConv(12, 12, 3, 1, 1, groups=5)


def test_group_options_round_trip_and_match_the_supernet() -> None:
    space = nasforge.get_space("mobilenet", **FBNET_CFG)
    arch = space.make({d: ("ir_k5_e1_g2" if "ir_k5_e1_g2" in o else o[0]) for d, o in space.decisions().items()})
    text = space.format(arch)
    assert "_e1_c8_g2" in text and space.parse(text) == arch
    with pytest.raises(ArchError, match="group convolution g2 is not searched"):
        nasforge.get_space("mobilenet", preset="cifar", width_mult=0.25, kernels=[3, 5], expansions=[1]).parse(text)
    with pytest.raises(ArchError, match="g4 is not searched"):
        space.parse(text.replace("_g2", "_g4", 1))
    supernet = space.supernet().eval()
    net = space.build(arch).eval()
    net.load_state_dict(supernet.subnet_state_dict(arch))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(net(x), supernet(x, supernet.path_for(arch)))
