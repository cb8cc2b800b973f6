"""The SPOS ShuffleNetV2 space (Guo et al. 2020): strings, blocks, supernet slicing, published network."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import nasforge
from nasforge.errors import ArchError, ConfigError
from nasforge.hardware.cost import measure
from nasforge.nn.shuffle import ShuffleBlock, Sliced, XceptionBlock, channel_split
from nasforge.spaces.shufflenet import CHANNEL_SCALES, OPS, SPOS_BLOCK_SEARCH, ShuffleNetSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny convolutions: one thread is fastest on a busy machine

TINY = {"preset": "cifar", "width_mult": 0.25}  # widths 8 | 16 40 80 160 | 1024, total stride 8


def tiny(channels: bool = True) -> ShuffleNetSpace:
    space = nasforge.get_space("shufflenet", **TINY, channels=channels)
    assert isinstance(space, ShuffleNetSpace)
    return space


def scramble_bn(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics (and affine parameters where there are some)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def test_layout_of_the_reference() -> None:
    space = nasforge.get_space("shufflenet")
    assert "shufflenet" in nasforge.list_spaces()
    assert [b.stage for b in space.blocks] == [1] * 4 + [2] * 4 + [3] * 8 + [4] * 4
    assert [b.out_channels for b in space.blocks if b.index == 0] == [64, 160, 320, 640]
    assert [(b.stride, b.project) for b in space.blocks if b.index == 0] == [(2, True)] * 4
    assert all((b.stride, b.project, b.in_channels) == (1, False, b.out_channels) for b in space.blocks if b.index)
    assert (space.stem_channels, space.stem_stride, space.last_channels) == (16, 2, 1024)
    assert list(space.decisions()) == [f"b{i:02d}_op" for i in range(20)] and space.size() == 4**20
    chan = nasforge.get_space("shufflenet", channels=True)
    assert list(chan.decisions())[:4] == ["b00_op", "b00_ch", "b01_op", "b01_ch"] and chan.size() == 40**20
    assert CHANNEL_SCALES == ("0.2", "0.4", "0.6", "0.8", "1.0", "1.2", "1.4", "1.6", "1.8", "2.0")
    # mid width = floor(base * scale), base = out // 2, exactly as the reference's int(base * scale) here
    b = chan.blocks[5]  # 160 channels: base 80
    assert [b.mid(s) for s in CHANNEL_SCALES] == [int(80 * float(s)) for s in CHANNEL_SCALES]
    # cifar: stem and first stage at stride 1; the first block still widens in the two-branch form
    cifar = tiny()
    assert cifar.stem_stride == 1 and [(b.stride, b.project) for b in cifar.blocks if b.index == 0] == [
        (1, True), (2, True), (2, True), (2, True)]


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="valid: imagenet, cifar"):
        nasforge.get_space("shufflenet", preset="mobile")
    with pytest.raises(ConfigError, match="width_mult"):
        nasforge.get_space("shufflenet", width_mult=0)
    with pytest.raises(ConfigError, match="must widen"):
        nasforge.get_space("shufflenet", width_mult=0.1)
    with pytest.raises(ConfigError, match="channels must be True or False"):
        nasforge.get_space("shufflenet", channels="yes")
    with pytest.raises(ConfigError, match="valid: dropout, affine"):
        tiny().supernet(C=4)


@pytest.mark.parametrize("channels", [False, True])
def test_format_parse_round_trip(channels: bool) -> None:
    space = tiny(channels)
    rng = random.Random(0)
    for _ in range(50):
        arch = space.sample(rng)
        text = space.format(arch)
        assert space.parse(text) == arch and space.parse("  " + text.replace(" | ", "|") + " ") == arch
    arch = space.sample(rng)
    stages = space.format(arch).split(" | ")
    assert [len(s.split()) for s in stages] == [4, 4, 8, 4]


def test_published_network_string_and_costs() -> None:
    """The reference README's searched network: 323M FLOPs (multiply-adds), 3.5M parameters."""
    space = nasforge.get_space("shufflenet")
    arch = space.from_reference(SPOS_BLOCK_SEARCH)
    assert [OPS.index(arch[f"b{i:02d}_op"]) for i in range(20)] == list(SPOS_BLOCK_SEARCH)
    assert space.format(arch).startswith("shuffle7 shuffle5 shuffle3 shuffle5 | shuffle7 shuffle3")
    net = space.build(arch, num_classes=1000)
    cost = measure(net, (3, 224, 224))
    assert round(cost.macs / 1e6) == 323  # the reference's get_flops counts conv and linear multiply-adds
    weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert round(weights / 1e5) / 10 == 3.5 and weights < cost.params  # + BN scale and shift
    assert net(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
    with_channels = nasforge.get_space("shufflenet", channels=True).from_reference(SPOS_BLOCK_SEARCH)
    assert measure(nasforge.get_space("shufflenet", channels=True).build(with_channels, num_classes=1000),
                   (3, 224, 224)).macs == cost.macs  # scale 1.0 everywhere is the block-search network


@pytest.mark.parametrize("bad, match", [
    ("shuffle3 shuffle3 shuffle3 shuffle3 | shuffle3", "expected 4 stages"),
    ("shuffle3 shuffle3 shuffle3 | " + " | ".join(["shuffle3 " * 4, "shuffle3 " * 8, "shuffle3 " * 4]),
     "stage 1 has 4 choice blocks, got 3"),
    ("shuffle9@1.0 " + "shuffle3@1.0 " * 3 + "| " + " | ".join(["shuffle3@1.0 " * 4, "shuffle3@1.0 " * 8,
                                                                 "shuffle3@1.0 " * 4]),
     "unknown block 'shuffle9'.*valid: shuffle3, shuffle5, shuffle7, xception"),
    ("shuffle3 " * 4 + "| " + " | ".join(["shuffle3@1.0 " * 4, "shuffle3@1.0 " * 8, "shuffle3@1.0 " * 4]),
     "lacks its channel scale"),
    ("shuffle3@0.3 " * 4 + "| " + " | ".join(["shuffle3@1.0 " * 4, "shuffle3@1.0 " * 8, "shuffle3@1.0 " * 4]),
     r"channel scale '0.3'.*valid: 0.2, 0.4"),
])
def test_bad_strings(bad: str, match: str) -> None:
    with pytest.raises(ArchError, match=match):
        tiny(True).parse(bad)


def test_bad_strings_without_channels_and_bad_archs() -> None:
    space = tiny(False)
    text = space.format(space.sample(random.Random(1)))
    with pytest.raises(ArchError, match="channels=False; drop '@1.0'"):
        space.parse(text.replace(" ", "@1.0 ", 1))
    with pytest.raises(ArchError, match="expected 20 block indices"):
        space.from_reference([0] * 19)
    with pytest.raises(ArchError, match="channels=False"):
        space.from_reference([0] * 20, [1.0] * 20)
    with pytest.raises(ArchError, match="option 'conv' is not valid for decision 'b03_op'"):
        space.make({**dict(space.sample(random.Random(2)).choices), "b03_op": "conv"})
    with pytest.raises(ArchError, match="expected a shufflenet architecture string"):
        space.parse(3)  # type: ignore[arg-type]


def test_channel_split_is_the_reference_shuffle() -> None:
    """The reference's reshape / permute form gives the even and the odd channels."""
    x = torch.randn(2, 8, 3, 3)
    n, c, h, w = x.shape
    ref = x.reshape(n * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
    even, odd = channel_split(x)
    assert torch.equal(even, ref[0]) and torch.equal(odd, ref[1])


@pytest.mark.parametrize("block_cls", [ShuffleBlock, XceptionBlock])
@pytest.mark.parametrize("project", [False, True])
def test_sliced_block_equals_a_narrow_block(block_cls: type, project: bool) -> None:
    """Slicing the first ``mid`` channels of a wide block computes what a block of width ``mid`` does."""
    kw = {"kernel_size": 5} if block_cls is ShuffleBlock else {}
    c_in, stride = (8, 2) if project else (16, 1)
    torch.manual_seed(0)
    wide = block_cls(c_in, 16, 12, stride=stride, project=project, **kw)
    narrow = block_cls(c_in, 16, 5, stride=stride, project=project, **kw)
    scramble_bn(wide)
    sliced = {k: v[tuple(slice(0, n) for n in narrow.state_dict()[k].shape)] for k, v in wide.state_dict().items()}
    narrow.load_state_dict(sliced)
    x = torch.randn(3, c_in, 6, 6)
    first_mid = 0 if block_cls is ShuffleBlock else 1  # the first layer producing the mid channels
    rest_before = wide.main[first_mid][1].running_mean[5:].clone()  # type: ignore[index]
    for train in (False, True):
        wide.train(train)
        narrow.train(train)
        assert torch.allclose(wide(Sliced(x, 5)), narrow(x), atol=1e-6)
    # training mode updated exactly the slice of the wide block's running statistics
    bn_wide, bn_narrow = wide.main[first_mid][1], narrow.main[first_mid][1]  # type: ignore[index]
    assert torch.allclose(bn_wide.running_mean[:5], bn_narrow.running_mean, atol=1e-6)
    assert torch.equal(bn_wide.running_mean[5:], rest_before)  # the channels outside the slice kept theirs
    with pytest.raises(ConfigError, match="outside 1..12"):
        wide(Sliced(x, 13))


@pytest.mark.parametrize("channels, affine", [(False, False), (True, False), (True, True)])
def test_standalone_with_subnet_weights_equals_the_supernet_path(channels: bool, affine: bool) -> None:
    space = tiny(channels)
    torch.manual_seed(1)
    net = space.supernet(num_classes=10, in_channels=1, affine=affine)
    scramble_bn(net)
    rng = random.Random(4)
    archs = [space.sample(rng) for _ in range(2)]
    if channels:  # a path with every width below the allocated one: all slicing exercised
        archs.append(space.make({d: (o if d.endswith("_op") else "0.6") for d, o in archs[0].choices}))
    x = torch.randn(4, 1, 8, 8)
    for arch in archs:
        sub = space.build(arch, num_classes=10, in_channels=1)
        sub.load_state_dict(net.subnet_state_dict(arch))  # strict
        net.eval()
        sub.eval()
        assert torch.allclose(net(x, net.path_for(arch)), sub(x), atol=1e-5)
    assert set(net.choices()) == set(space.decisions())


def test_supernet_shares_the_widest_weights_and_rejects_width_mixtures() -> None:
    space = tiny(True)
    net = space.supernet(num_classes=10, in_channels=1)
    block = net.blocks["b05"].candidates["shuffle3"]  # 40 channels: base 20, allocated 2.0 x 20
    assert block.mid_channels == 40 and block.main[0][0].weight.shape[0] == 40
    path = net.path_for(space.sample(random.Random(0)))
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ArchError, match="b00_ch must select one channel scale by name"):
        net(x, {**path, "b00_ch": torch.ones(len(CHANNEL_SCALES)) / len(CHANNEL_SCALES)})
    with pytest.raises(ArchError, match="lacks choice keys"):
        net(x, {k: v for k, v in path.items() if k != "b03_ch"})
    with pytest.raises(ArchError, match="unknown option 'conv'"):
        net(x, {**path, "b03_op": "conv"})
    # a soft mixture over the ops of a block (at its sliced width) runs through Choice
    mixed = {**path, "b02_op": torch.tensor([0.25, 0.25, 0.25, 0.25])}
    assert net(x, mixed).shape == (2, 10)


def test_sampling_is_valid_and_covers_every_option() -> None:
    space = tiny(True)
    rng = random.Random(7)
    archs = [space.sample(rng) for _ in range(200)]
    assert all(space.is_valid(a) for a in archs)
    for d, options in space.decisions().items():
        assert {a[d] for a in archs} == set(options), d
    child = space.mutate(archs[0], rng)
    assert sum(a != b for (_, a), (_, b) in zip(child.choices, archs[0].choices)) == 1
