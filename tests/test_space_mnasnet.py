"""MnasNet's factorized hierarchical space (Tan et al., CVPR 2019, Section 4.1) and its RL search."""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

from nasforge import get_space
from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.experiment import SearchConfig, run_search
from nasforge.hardware.cost import count_flops, count_params
from nasforge.nn.blocks import MBConv, SqueezeExcite
from nasforge.searchers.mnasnet_ppo import MnasNetPPO
from nasforge.spaces.mnasnet import MNASNET_A1_BLOCKS, SKELETON, MnasLayer, MnasNetSpace, build_network

TINY = {"preset": "cifar", "width_mult": 0.25}

# tiny networks and the small LSTM run fastest on one thread (and do not wait for a busy second core)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _space(**kw) -> MnasNetSpace:
    space = get_space("mnasnet", **kw)
    assert isinstance(space, MnasNetSpace)
    return space


def _mobilenetv2(space: MnasNetSpace, **changes: str) -> Arch:
    """MobileNetV2 itself (dconv k3 first block, MBConv6 k3 after, SE 0, identity skips) plus ``changes``."""
    mapping = {}
    for i in range(1, 8):
        mapping.update({f"b{i}_op": "dconv" if i == 1 else "mbconv6", f"b{i}_k": "3", f"b{i}_se": "0",
                        f"b{i}_skip": "identity", f"b{i}_filters": "1.0", f"b{i}_layers": "0"})
    mapping.update(changes)
    return space.make(mapping)


def _macs(space: MnasNetSpace, arch: Arch, size: int, in_channels: int, num_classes: int = 10) -> int:
    """Multiply-adds of ``arch`` counted by hand from the decisions (convolutions, SE and classifier)."""

    def conv(h: int, c_in: int, c_out: int, k: int, s: int, groups: int = 1) -> tuple[int, int]:
        h_out = (h + 2 * (k // 2) - k) // s + 1
        return h_out, h_out * h_out * k * k * (c_in // groups) * c_out

    h, total = conv(size, in_channels, space.stem_channels, 3, space.stem_stride)
    c = space.stem_channels
    for b in space.blocks(arch):
        for j in range(b.layers):
            s, reduced = (b.stride if j == 0 else 1), max(1, int(c * 0.25))
            if b.op == "conv":
                h, m = conv(h, c, b.out_channels, b.kernel, s)
                total += m + (2 * b.out_channels * reduced if b.se else 0)
            else:
                hidden = c * {"dconv": 1, "mbconv3": 3, "mbconv6": 6}[b.op]
                total += h * h * c * hidden if hidden != c else 0
                h, m = conv(h, hidden, hidden, b.kernel, s, groups=hidden)
                total += m + (2 * hidden * reduced if b.se else 0) + h * h * hidden * b.out_channels
            c = b.out_channels
    return total + h * h * c * space.head_channels + space.head_channels * num_classes


# ---- the space's decisions -------------------------------------------------------------------
def test_decisions_are_six_per_block_with_the_papers_options():
    space = _space()
    decisions = space.decisions()
    assert list(decisions) == [f"b{i}_{d}" for i in range(1, 8) for d in ("op", "k", "se", "skip", "filters", "layers")]
    for i in range(1, 8):
        assert decisions[f"b{i}_op"] == ("conv", "dconv", "mbconv3", "mbconv6")
        assert decisions[f"b{i}_k"] == ("3", "5")
        assert decisions[f"b{i}_se"] == ("0", "0.25")
        assert decisions[f"b{i}_skip"] == ("pool", "identity", "none")
        assert decisions[f"b{i}_filters"] == ("0.75", "1.0", "1.25")
    # N_i in {-1, 0, +1} of MobileNetV2's layers, at least one layer: the one-layer blocks 1 and 7 lose -1
    assert [decisions[f"b{i}_layers"] for i in range(1, 8)] == [("0", "+1")] + [("-1", "0", "+1")] * 5 + [("0", "+1")]
    assert space.size() == 432**5 * 288**2  # 4 ops x 2 kernels x 2 SE x 3 skips x 3 filters x 3 (or 2) layer counts


def test_skeleton_widths_strides_and_presets():
    imagenet, cifar = _space(), _space(preset="cifar")
    assert [c for c, _, _ in SKELETON] == [16, 24, 32, 64, 96, 160, 320]
    assert imagenet.strides == (1, 2, 2, 2, 1, 2, 1) and imagenet.stem_stride == 2
    assert cifar.strides == (1, 1, 2, 2, 1, 2, 1) and cifar.stem_stride == 1
    # F_i = 0.75 / 1.0 / 1.25 x MobileNetV2's filters, exact at width 1
    assert imagenet.filters[2] == {"0.75": 24, "1.0": 32, "1.25": 40}
    assert imagenet.filters[6] == {"0.75": 240, "1.0": 320, "1.25": 400}
    assert (imagenet.stem_channels, imagenet.head_channels) == (32, 1280)


# ---- the factorization: every layer of a block follows the block's decisions ----------------
@pytest.mark.parametrize("seed", range(4))
def test_every_layer_of_a_block_has_the_blocks_op_kernel_se_and_width(seed):
    space = _space(preset="cifar")
    arch = space.sample(random.Random(seed))
    net = space.build(arch)
    c_in = space.stem_channels
    for i, (block, (_, n, _)) in enumerate(zip(net.blocks, SKELETON), start=1):
        op, k, se = arch[f"b{i}_op"], int(arch[f"b{i}_k"]), arch[f"b{i}_se"] == "0.25"
        width = space.filters[i - 1][arch[f"b{i}_filters"]]
        assert len(block) == n + int(arch[f"b{i}_layers"])
        for j, layer in enumerate(block):
            assert isinstance(layer, MnasLayer)
            convs = [m for m in layer.body.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
            assert len(convs) == 1 and convs[0].kernel_size == (k, k)
            assert convs[0].stride == ((space.strides[i - 1],) * 2 if j == 0 else (1, 1))
            if op == "conv":
                assert convs[0].groups == 1 and convs[0].out_channels == width
            else:
                assert isinstance(layer.body, MBConv) and convs[0].groups == convs[0].in_channels
                assert layer.body.expansion == {"dconv": 1, "mbconv3": 3, "mbconv6": 6}[op]
            ses = [m for m in layer.modules() if isinstance(m, SqueezeExcite)]
            assert len(ses) == int(se)
            if se:  # MnasNet's SE reduces from the layer's input width
                assert ses[0].reduce.out_channels == max(1, int(c_in * 0.25))
            c_in = width
        assert block(torch.zeros(1, _in(block[0]), 8, 8)).shape[1] == width


def _in(layer: MnasLayer) -> int:
    return next(m for m in layer.body.modules() if isinstance(m, nn.Conv2d)).in_channels


@pytest.mark.parametrize(("preset", "size"), [("cifar", 32), ("imagenet", 64)])
def test_hand_counted_multiply_adds_equal_the_built_networks(preset, size):
    """The network holds exactly the layers the decisions describe (every conv, SE and the head)."""
    space = _space(preset=preset, width_mult=0.5)
    for seed in range(3):
        arch = space.sample(random.Random(seed))
        assert count_flops(space.build(arch), (3, size, size)) // 2 == _macs(space, arch, size, 3)


# ---- skip ops ----------------------------------------------------------------------------------
def test_skip_ops_apply_where_shapes_allow():
    space = _space()
    x = torch.randn(2, 24, 8, 8)
    # block 2 at 24 filters, block 3 at 0.75 x 32 = 24: block 3's first layer keeps the width at stride 2
    for skip, first, rest in (("identity", "none", "identity"), ("pool", "pool", "pool"), ("none", "none", "none")):
        arch = _mobilenetv2(space, b3_filters="0.75", b3_skip=skip, b4_skip=skip)
        net = space.build(arch).eval()
        b3, b4 = net.blocks[2], net.blocks[3]
        assert [layer.skip for layer in b3] == [first, rest, rest]
        assert [layer.skip for layer in b4] == ["none"] + [rest] * 3  # 24 -> 64 filters: no skip on the first
        layer = b3[0]
        with torch.no_grad():
            expected = layer.body(x)
            if first == "pool":
                expected = expected + nn.functional.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)
            assert torch.allclose(layer(x), expected)
            y = torch.randn(2, 24, 4, 4)
            shortcut = {"identity": y, "pool": nn.functional.avg_pool2d(y, 3, 1, padding=1, count_include_pad=False),
                        "none": torch.zeros_like(y)}[rest]
            assert torch.allclose(b3[1](y), b3[1].body(y) + shortcut)
    # at the skeleton's own widths every block's first layer changes the width: no skip there
    net = space.build(_mobilenetv2(space, **{f"b{i}_skip": "pool" for i in range(1, 8)}))
    assert all(block[0].skip == "none" for block in net.blocks)


# ---- text ------------------------------------------------------------------------------------
def test_text_form_of_mobilenetv2():
    space = _space(preset="cifar")
    text = ("ds_r1_k3_s1_c16 | ir_r2_k3_s1_e6_c24 | ir_r3_k3_s2_e6_c32 | ir_r4_k3_s2_e6_c64 | ir_r3_k3_s1_e6_c96 | "
            "ir_r3_k3_s2_e6_c160 | ir_r1_k3_s1_e6_c320")
    assert space.format(_mobilenetv2(space)) == text
    assert space.parse(text) == _mobilenetv2(space)
    changed = _mobilenetv2(space, b2_op="conv", b2_k="5", b2_se="0.25", b2_skip="pool", b2_filters="1.25",
                           b2_layers="+1", b7_skip="none", b7_op="mbconv3")
    assert space.format(changed).split(" | ")[1] == "cn_r3_k5_s1_c30_se0.25_pool"
    assert space.format(changed).split(" | ")[6] == "ir_r1_k3_s1_e3_c320_noskip"


@pytest.mark.parametrize("kwargs", [{}, {"preset": "cifar"}, TINY, {"width_mult": 1.4}])
def test_format_parse_round_trip(kwargs):
    space = _space(**kwargs)
    rng = random.Random(0)
    for _ in range(40):
        arch = space.sample(rng)
        assert space.parse(space.format(arch)) == arch
        assert Arch.from_json(arch.to_json()) == arch


@pytest.mark.parametrize(
    ("edit", "words"),
    [(lambda t: t.rsplit(" | ", 1)[0], ["7 blocks"]),
     (lambda t: t.replace("ds_r1", "dw_r1"), ["cannot parse", "cn, ds or ir"]),
     (lambda t: t.replace("_e6_c24", "_c24"), ["_e3 or _e6"]),
     (lambda t: t.replace("_e6_c24", "_e4_c24"), ["_e3 or _e6"]),
     (lambda t: t.replace("ds_r1_k3_s1_c16", "ds_r1_k3_s1_e1_c16"), ["no _e"]),
     (lambda t: t.replace("ir_r2_k3_s1", "ir_r4_k3_s1"), ["4 layer", "1, 2, 3"]),
     (lambda t: t.replace("ds_r1", "ds_r0"), ["0 layer", "1, 2"]),
     (lambda t: t.replace("ir_r2_k3", "ir_r2_k7"), ["kernel 7", "3, 5"]),
     (lambda t: t.replace("ir_r2_k3_s1", "ir_r2_k3_s2"), ["stride 2", "s1"]),
     (lambda t: t.replace("c96", "c112"), ["112 filters", "72, 96, 120"]),
     (lambda t: t.replace("c96", "c96_se0.5"), ["cannot parse"])],
)
def test_bad_text_raises_arch_error_naming_the_valid_choices(edit, words):
    space = _space(preset="cifar")
    text = edit(space.format(_mobilenetv2(space)))
    with pytest.raises(ArchError) as err:
        space.parse(text)
    for w in words:
        assert w in str(err.value)


def test_bad_options_and_configs_raise_typed_errors():
    space = _space()
    with pytest.raises(ArchError, match="mbconv6"):
        space.make({**dict(_mobilenetv2(space)), "b1_op": "mbconv4"})
    with pytest.raises(ArchError, match="0, \\+1"):
        space.make({**dict(_mobilenetv2(space)), "b7_layers": "-1"})  # would remove MobileNetV2's one-layer block
    with pytest.raises(ConfigError, match="imagenet, cifar"):
        _space(preset="mobile")
    with pytest.raises(ConfigError, match="width_mult"):
        _space(width_mult=0)
    with pytest.raises(ConfigError, match="block 1.*distinct"):
        _space(width_mult=0.1)  # 16 x 0.1 x (0.75, 1, 1.25) rounds to 1, 2, 2
    with pytest.raises(ConfigError, match="dropout"):
        space.build(_mobilenetv2(space), dropout=1.5)
    with pytest.raises(ConfigError, match="C"):
        space.build(_mobilenetv2(space), C=8)
    with pytest.raises(ConfigError) as err:
        space.supernet()
    assert "multi-trial" in str(err.value) and "mnasnet_ppo" in str(err.value) and "nb201" in str(err.value)


# ---- networks ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "shape", "end"), [
    (TINY, (2, 3, 32, 32), 4), (TINY, (2, 1, 8, 8), 1), ({"width_mult": 0.25}, (2, 3, 64, 64), 2),
])
def test_sampled_architectures_build_and_run(kwargs, shape, end):
    space = _space(**kwargs)
    rng = random.Random(1)
    for _ in range(3):
        arch = space.sample(rng)
        net = space.build(arch, num_classes=7, in_channels=shape[1], dropout=0.2)
        x = torch.randn(*shape)
        assert net.blocks(net.stem(x)).shape[-1] == end  # total stride 8 (cifar) or 32 (imagenet)
        out = net(x)
        assert out.shape == (2, 7) and torch.isfinite(out).all()
        out.sum().backward()


def test_mnasnet_a1_is_not_in_the_space_but_its_network_has_the_published_size():
    """A1's block 5 has 112 filters (7/6 x 96); built from its blocks it has the published 3.9M
    parameters (3,887,038 in timm's mnasnet_a1) and 312M multiply-adds at 224x224."""
    space = _space()
    assert 112 not in space.filters[4].values()
    net = build_network(MNASNET_A1_BLOCKS, num_classes=1000)
    assert count_params(net) == 3_887_038
    assert count_flops(net, (3, 224, 224)) // 2 == pytest.approx(312e6, rel=0.005)
    # the nearest point of the space (block 5 at 0.75 x 96 = 72 or 1.25 x 96 = 120) brackets it
    a1_like = dict(_mobilenetv2(space))
    for i, b in enumerate(MNASNET_A1_BLOCKS, start=1):
        a1_like.update({f"b{i}_op": b.op, f"b{i}_k": str(b.kernel), f"b{i}_se": "0.25" if b.se else "0",
                        f"b{i}_skip": b.skip})
    a1_like.update(b3_filters="1.25", b4_filters="1.25", b5_layers="-1")
    small = count_params(space.build(space.make({**a1_like, "b5_filters": "0.75"}), num_classes=1000))
    large = count_params(space.build(space.make({**a1_like, "b5_filters": "1.25"}), num_classes=1000))
    assert small < 3_887_038 < large


# ---- the MnasNet RL search on this space ------------------------------------------------------
def test_ppo_controller_shifts_its_samples_toward_the_latency_target():
    """Constant accuracy, FLOP-based latency (hand-counted multiply-adds, checked above against the
    built networks): with the hard reward only models meeting T score fully, and the controller
    samples more of them as it learns. (Learning rate 0.01 instead of NASNet's 0.00035 keeps the
    test short; with 0.00035 the share also rises, more slowly.)"""
    space = _space(**TINY)
    lat = {}

    def latency(arch: Arch) -> float:
        if arch not in lat:
            lat[arch] = _macs(space, arch, 32, 3) / 1e6
        return lat[arch]

    uniform = sorted(latency(space.sample(random.Random(i))) for i in range(200))
    target = uniform[40]  # about 20% of uniform samples meet it
    s = MnasNetPPO(space, seed=0, target=target, mode="hard", latency_metric="mmacs", batch_size=8,
                   learning_rate=0.01, lstm_size=32)
    meets = []
    for _ in range(128):
        arch = s.ask()
        meets.append(latency(arch) <= target)
        s.tell(arch, 70.0, {"val_acc": 70.0, "mmacs": latency(arch)})
    first, last = sum(meets[:32]) / 32, sum(meets[-32:]) / 32
    assert s.updates == 16
    assert first < 0.5 and last >= 0.85


def test_mnasnet_ppo_search_with_the_train_evaluator_and_measured_latency(tmp_path):
    """End to end through the multi-trial loop: each model trained on digits, latency measured."""
    base = dict(method="mnasnet_ppo", space="mnasnet", space_kwargs=TINY, evaluator="train",
                method_kwargs={"target": 2.0, "latency_metric": "latency_ms", "batch_size": 2, "ppo_epochs": 2,
                               "lstm_size": 16},
                recipe_overrides={"epochs": 1, "batch_size": 50}, train_subset=100, final_train=False,
                out=str(tmp_path / "r"))
    out = run_search(SearchConfig(**base, trials=3), progress=False, log=lambda s: None)
    assert out.trials == 3
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    trials = results["trials"]
    space = _space(**TINY)
    for t in trials:
        space.parse(t["arch"])
        assert t["metrics"]["latency_ms"] > 0 and 0 <= t["metrics"]["val_acc"] <= 100
    costs = json.loads((tmp_path / "r" / "costs.json").read_text())  # measured once, reused on resume
    assert {t["arch"] for t in trials} <= set(costs)
    resumed = run_search(SearchConfig(**base, trials=4), progress=False, log=lambda s: None)
    assert resumed.resumed_trials == 3 and resumed.trials == 4
    again = json.loads((tmp_path / "r" / "results.json").read_text())["trials"]
    assert [t["arch"] for t in again[:3]] == [t["arch"] for t in trials]
