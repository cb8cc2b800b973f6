"""The layer-wise MobileNet (MBConv chain) space of ProxylessNAS, FBNet, MnasNet and Single-Path NAS.

Papers: Cai, Zhu & Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task and
Hardware", ICLR 2019 (reference code ``mit-han-lab/proxylessnas``); Wu et al., "FBNet",
CVPR 2019; Tan et al., "MnasNet", CVPR 2019; Stamoulis et al., "Single-Path NAS", 2019;
Howard et al., "Searching for MobileNetV3", ICCV 2019 (SE and h-swish options). Block strings
follow timm's EfficientNet builder (``timm/models/_efficientnet_builder.py``).

Backbone (``preset="proxyless"``, the ProxylessNAS-mobile search backbone for 224x224
ImageNet): stem conv 3x3 stride 2 to 32 channels; a fixed MBConv1 k3 to 16 channels; six
searchable stages given as (out channels, searchable layers, first stride)
``(24,4,2) (40,4,2) (80,4,2) (96,4,1) (192,4,2) (320,1,1)``; 1x1 conv to 1280; global
average pool; dropout; linear classifier. ``preset="cifar"`` is the same network with the
stem and the first searchable stage at stride 1 (as in the usual CIFAR MobileNetV2), so the
total stride is 8 and a 32x32 input ends at 4x4. Channels are scaled by ``width_mult`` and
rounded to multiples of 8 (MobileNetV2 ``_make_divisible``); the 1280-wide head is only ever
widened, never narrowed (MobileNetV2 / ProxylessNAS).

Decisions: one per searchable layer, named ``s{stage}_l{layer}`` with stages counted from 1
(stage 0 is the fixed MBConv1) and layers from 0. Options are ``ir_k{k}_e{e}`` for every
kernel in ``kernels`` and expansion in ``expansions``, plus ``skip`` (identity; ProxylessNAS's
zero op on a residual layer, FBNet's "skip") on every layer except the first of a stage, whose
stride or channel change has no identity. Squeeze-and-excitation: ``se=False`` (none,
ProxylessNAS / FBNet), ``se=True`` (on every searchable block, MnasNet style, not a decision)
or ``se="search"`` (each ``ir_k{k}_e{e}`` option also exists as ``ir_k{k}_e{e}_se``).

Text form (:meth:`MobileNetSpace.format` / :meth:`MobileNetSpace.parse`)::

    arch   := stage ( " | " stage )*          exactly one stage per searchable stage
    stage  := group ( " " group )*            the groups' repeats sum to the stage's layers
    group  := block | skip
    block  := "ir" [ "_r" R ] "_k" K "_s" S "_e" E "_c" C [ "_se0.25" ]
    skip   := "skip" [ "_r" R ]

``R`` (default 1) repeats the block; as in timm, only the group's first layer has stride
``S``, the others stride 1. ``S`` must be the backbone stride at that position (the stage
stride for the group that opens a stage, 1 otherwise) and ``C`` the stage's actual (width
scaled) channel count; ``_se0.25`` must be present exactly when the block has SE. ``format``
writes every run of equal consecutive layers as one group, e.g. for the ProxylessNAS backbone
``ir_r1_k5_s2_e3_c24 ir_r1_k3_s1_e3_c24 skip_r2 | ir_r4_k3_s2_e6_c40 | ...``; ``parse``
accepts any grouping (``r1`` per layer too) and the result round-trips:
``parse(format(a)) == a``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.nn.blocks import ACTIVATIONS, ConvBNAct, MBConv, init_mobile_weights, make_divisible
from nasforge.nn.choice import Path, Supernet
from nasforge.registry import register
from nasforge.spaces.base import ComplexityStage, SearchSpace

#: (out channels, searchable layers, first stride) of the six searchable stages (ProxylessNAS).
PROXYLESS_STAGES: tuple[tuple[int, int, int], ...] = (
    (24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1),
)
PRESETS: tuple[str, ...] = ("proxyless", "cifar")
SE_MODES: tuple[object, ...] = (False, True, "search")
STEM_CHANNELS, FIRST_CHANNELS, HEAD_CHANNELS = 32, 16, 1280

#: ProxylessNAS-Mobile as released (the ``proxyless_mobile`` net config of
#: ``mit-han-lab/proxylessnas``, as re-implemented in ``osmr/imgclsmob``; with its own widths it
#: has exactly the published 4,080,512 parameters and 320M MACs), expressed as decisions of this space. The released network has 32
#: channels in its first searched stage where this backbone has 24, so built here it is slightly
#: smaller than the published 4.08M parameters / 320M MACs (see the tests for the figures).
PROXYLESSNAS_MOBILE: dict[str, str] = {
    "s1_l0": "ir_k5_e3", "s1_l1": "ir_k3_e3", "s1_l2": "skip", "s1_l3": "skip",
    "s2_l0": "ir_k7_e3", "s2_l1": "ir_k3_e3", "s2_l2": "ir_k5_e3", "s2_l3": "ir_k5_e3",
    "s3_l0": "ir_k7_e6", "s3_l1": "ir_k5_e3", "s3_l2": "ir_k5_e3", "s3_l3": "ir_k5_e3",
    "s4_l0": "ir_k5_e6", "s4_l1": "ir_k5_e3", "s4_l2": "ir_k5_e3", "s4_l3": "ir_k5_e3",
    "s5_l0": "ir_k7_e6", "s5_l1": "ir_k7_e6", "s5_l2": "ir_k7_e3", "s5_l3": "ir_k7_e3",
    "s6_l0": "ir_k7_e6",
}

_OPTION_RE = re.compile(r"ir_k(\d+)_e(\d+)(?:_g(\d+))?(_se)?")
_BLOCK_RE = re.compile(r"ir(?:_r(\d+))?_k(\d+)_s(\d+)_e(\d+)_c(\d+)(?:_g(\d+))?(_se0\.25)?")
_SKIP_RE = re.compile(r"skip(?:_r(\d+))?")
_GRAMMAR = "ir[_rR]_kK_sS_eE_cC[_g2][_se0.25] or skip[_rR]"
#: Groups of the 1x1 convolutions of FBNet's group-convolution blocks (``k3_e1_g2``, ``k5_e1_g2``).
FBNET_GROUPS = 2


@dataclass(frozen=True)
class Layer:
    """One searchable layer of the backbone (what the decision ``name`` chooses a block for)."""

    name: str  # decision name s{stage}_l{layer}
    stage: int  # 1-based stage index
    index: int  # 0-based layer index inside the stage
    in_channels: int
    out_channels: int
    stride: int


def _parse_option(option: str) -> tuple[int, int, bool]:
    """(kernel, expansion, se) of an ``ir_k{k}_e{e}[_g{g}][_se]`` option name."""
    m = _OPTION_RE.fullmatch(option)
    if m is None:
        raise ArchError(f"not an MBConv option: {option!r}")
    return int(m.group(1)), int(m.group(2)), m.group(4) is not None


def option_groups(option: str) -> int:
    """Groups of the 1x1 convolutions of an ``ir_...`` option (1 unless it ends in ``_g{g}[_se]``)."""
    m = _OPTION_RE.fullmatch(option)
    if m is None:
        raise ArchError(f"not an MBConv option: {option!r}")
    return int(m.group(3)) if m.group(3) else 1


@register("space", "mobilenet")
class MobileNetSpace(SearchSpace):
    """Layer-wise MBConv chain: each searchable layer picks kernel, expansion (and SE) or skip.

    Args:
        preset: ``"proxyless"`` (ImageNet backbone, total stride 32) or ``"cifar"`` (stem and
            first stage at stride 1, total stride 8: 32x32 inputs end at 4x4).
        width_mult: channel multiplier; channels are rounded to multiples of 8.
        kernels: depthwise kernel sizes to search (odd).
        expansions: expansion ratios to search.
        allow_skip: offer ``skip`` on every layer that is not the first of its stage.
        se: ``False``, ``True`` (SE on every searchable block) or ``"search"`` (SE per layer).
        activation: ``"relu"`` (MnasNet), ``"relu6"`` (MobileNetV2 / ProxylessNAS, default) or
            ``"hswish"`` (MobileNetV3; used everywhere here, and it makes the SE gate hard).
        group_conv: also offer FBNet's group-convolution blocks ``ir_k{k}_e1_g2`` for every kernel
            (expansion 1, both 1x1 convs in 2 groups, channel shuffle after the first; Wu et al.
            2019, Table 1); needs 1 in ``expansions``. Left out of :meth:`config` while False, so
            tables and runs written before the option keep matching.

    Raises:
        ConfigError: a value outside the choices above.
    """

    name: ClassVar[str] = "mobilenet"
    paper: ClassVar[str] = (
        "Cai, Zhu & Han. ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware. "
        "ICLR 2019 (also FBNet, Wu et al. CVPR 2019; MnasNet, Tan et al. CVPR 2019; Single-Path NAS, "
        "Stamoulis et al. 2019; MobileNetV3, Howard et al. ICCV 2019)"
    )

    def __init__(
        self, *, preset: str = "proxyless", width_mult: float = 1.0, kernels: Sequence[int] = (3, 5, 7),
        expansions: Sequence[int] = (3, 6), allow_skip: bool = True, se: bool | str = False,
        activation: str = "relu6", group_conv: bool = False,
    ) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown mobilenet preset {preset!r}; valid: {', '.join(PRESETS)}")
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
            raise ConfigError(f"width_mult must be a positive number, got {width_mult!r}")
        self.kernels = self._int_tuple("kernels", kernels)
        bad_k = [k for k in self.kernels if k < 1 or k % 2 == 0]
        if bad_k:
            raise ConfigError(f"kernels must be positive odd integers, got {bad_k}")
        self.expansions = self._int_tuple("expansions", expansions)
        bad_e = [e for e in self.expansions if e < 1]
        if bad_e:
            raise ConfigError(f"expansions must be integers >= 1, got {bad_e}")
        if not isinstance(allow_skip, bool):
            raise ConfigError(f"allow_skip must be True or False, got {allow_skip!r}")
        if not (se is True or se is False or se == "search"):
            raise ConfigError(f"se must be one of {', '.join(map(repr, SE_MODES))}; got {se!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if not isinstance(group_conv, bool):
            raise ConfigError(f"group_conv must be True or False, got {group_conv!r}")
        if group_conv and 1 not in self.expansions:
            raise ConfigError(
                f"group_conv=True adds FBNet's expansion-1 group blocks; expansions {list(self.expansions)} has no 1"
            )
        self.group_conv = group_conv
        self.preset, self.width_mult = preset, float(width_mult)
        self.allow_skip, self.se, self.activation = allow_skip, se, activation

        # Backbone strides: the CIFAR variant removes the first two downsamplings (stem, stage 1).
        self.stem_stride = 2 if preset == "proxyless" else 1
        self.stages: tuple[tuple[int, int, int], ...] = tuple(
            (self._ch(c), n, 1 if (preset == "cifar" and i == 0) else s)
            for i, (c, n, s) in enumerate(PROXYLESS_STAGES)
        )
        self.stem_channels = self._ch(STEM_CHANNELS)
        self.first_channels = self._ch(FIRST_CHANNELS)
        self.head_channels = self._ch(HEAD_CHANNELS) if self.width_mult > 1.0 else HEAD_CHANNELS
        layers, c_in = [], self.first_channels
        for si, (c, n, s) in enumerate(self.stages, start=1):
            for li in range(n):
                layers.append(Layer(f"s{si}_l{li}", si, li, c_in, c, s if li == 0 else 1))
                c_in = c
        self.layers: tuple[Layer, ...] = tuple(layers)

        blocks = []
        for k in self.kernels:
            for e in self.expansions:
                variants = [f"ir_k{k}_e{e}"] + ([f"ir_k{k}_e{e}_g{FBNET_GROUPS}"] if group_conv and e == 1 else [])
                for v in variants:
                    blocks.append(v)
                    if se == "search":
                        blocks.append(f"{v}_se")
        self._decisions = {
            layer.name: tuple(blocks) + (("skip",) if allow_skip and layer.index > 0 else ())
            for layer in self.layers
        }

    @staticmethod
    def _int_tuple(what: str, values: Sequence[int]) -> tuple[int, ...]:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"{what} must be a non-empty sequence of integers, got {values!r}")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise ConfigError(f"{what} must be integers, got {list(values)!r}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{what} has duplicates: {list(values)!r}")
        return tuple(values)

    def _ch(self, channels: int) -> int:
        return make_divisible(channels * self.width_mult)

    # ---- what the space is -------------------------------------------------------------
    def decisions(self) -> dict[str, tuple[str, ...]]:
        return dict(self._decisions)

    def complexity_stages(self) -> list[ComplexityStage] | None:
        """Growth in depth (the order PNAS searches in): stage ``d`` = 1, 2, ... fixes layer
        ``d - 1`` of every network stage that has that many layers; ungrown layers are ``skip``.

        After stage ``d`` every network stage has its first ``d`` layers (at most its depth) and
        skips the others: the network at depth ``d`` per stage, as in Once-for-All's elastic
        depth, which keeps the first layers of each stage. The first layer of a stage has no
        ``skip`` (it changes stride or width), so it is grown in stage 1. None (no order) when
        the space has ``allow_skip=False``: an ungrown layer would have no identity option.
        """
        if not self.allow_skip:
            return None
        depth = max(layer.index for layer in self.layers) + 1
        stages = []
        for d in range(depth):
            grows = tuple(layer.name for layer in self.layers if layer.index == d)
            filler = {layer.name: "skip" for layer in self.layers if layer.index > d}
            stages.append(ComplexityStage(grows, filler))
        return stages

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "preset": self.preset, "width_mult": self.width_mult, "kernels": list(self.kernels),
            "expansions": list(self.expansions), "allow_skip": self.allow_skip, "se": self.se,
            "activation": self.activation,
        }
        if self.group_conv:
            config["group_conv"] = True
        return config

    def _has_se(self, option: str) -> bool:
        return self.se is True or option.endswith("_se")

    # ---- strings -----------------------------------------------------------------------
    def format(self, arch: Arch) -> str:
        self.validate(arch)
        stages = []
        for si, (c, n, _) in enumerate(self.stages, start=1):
            layers = [layer for layer in self.layers if layer.stage == si]
            groups: list[str] = []
            i = 0
            while i < n:
                option = arch[layers[i].name]
                r = 1
                while i + r < n and arch[layers[i + r].name] == option:
                    r += 1
                if option == "skip":
                    groups.append(f"skip_r{r}")
                else:
                    k, e, _ = _parse_option(option)
                    g = option_groups(option)
                    se = "_se0.25" if self._has_se(option) else ""
                    gs = f"_g{g}" if g > 1 else ""
                    groups.append(f"ir_r{r}_k{k}_s{layers[i].stride}_e{e}_c{c}{gs}{se}")
                i += r
            stages.append(" ".join(groups))
        return " | ".join(stages)

    def parse(self, text: str) -> Arch:
        if not isinstance(text, str):
            raise ArchError(f"expected a mobilenet architecture string, got {type(text).__name__}")
        parts = [p.strip() for p in text.strip().split("|")]
        if len(parts) != len(self.stages):
            raise ArchError(
                f"expected {len(self.stages)} stages separated by ' | ', got {len(parts)} in {text!r}"
            )
        mapping: dict[str, str] = {}
        for si, (part, (c, n, _)) in enumerate(zip(parts, self.stages), start=1):
            layers = [layer for layer in self.layers if layer.stage == si]
            tokens = part.split()
            if not tokens:
                raise ArchError(f"stage {si} is empty; it needs {n} layer(s)")
            pos = 0
            for tok in tokens:
                option, r = self._parse_group(tok, si, c, layers, pos)
                if pos + r > n:
                    raise ArchError(
                        f"stage {si} has {n} searchable layer(s) but {part!r} describes more "
                        f"(at {tok!r})"
                    )
                for j in range(pos, pos + r):
                    mapping[layers[j].name] = option
                pos += r
            if pos != n:
                raise ArchError(f"stage {si} has {n} searchable layer(s) but {part!r} describes {pos}")
        return self.make(mapping)

    def _parse_group(self, tok: str, si: int, c: int, layers: list[Layer], pos: int) -> tuple[str, int]:
        """(option, repeats) of one group token at layer ``pos`` of stage ``si``; validates it."""
        m_skip = _SKIP_RE.fullmatch(tok)
        if m_skip is not None:
            r = self._repeats(tok, m_skip.group(1))
            if not self.allow_skip:
                raise ArchError(f"{tok!r}: this space has allow_skip=False; use an ir_... block")
            if pos == 0:
                raise ArchError(
                    f"{tok!r} cannot open stage {si}: its first layer changes stride or channels, "
                    f"so it needs an ir_... block"
                )
            return "skip", r
        m = _BLOCK_RE.fullmatch(tok)
        if m is None:
            raise ArchError(f"cannot parse block {tok!r} in stage {si}; expected {_GRAMMAR}")
        r = self._repeats(tok, m.group(1))
        k, s, e, c_text, se_tok = int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)), m.group(7)
        g = int(m.group(6)) if m.group(6) else 1
        if g != 1 and not (self.group_conv and g == FBNET_GROUPS and e == 1):
            offered = f"only _g{FBNET_GROUPS} with e1" if self.group_conv else "none (group_conv=False)"
            raise ArchError(f"{tok!r}: group convolution g{g} is not searched; offered: {offered}")
        if k not in self.kernels:
            raise ArchError(f"kernel {k} in {tok!r} is not searched; valid: {', '.join(map(str, self.kernels))}")
        if e not in self.expansions:
            raise ArchError(
                f"expansion {e} in {tok!r} is not searched; valid: {', '.join(map(str, self.expansions))}"
            )
        if pos < len(layers) and s != layers[pos].stride:
            raise ArchError(
                f"{tok!r} at stage {si} layer {pos} has stride {s}; the {self.preset} backbone "
                f"expects s{layers[pos].stride} there"
            )
        if c_text != c:
            raise ArchError(f"{tok!r} in stage {si} has {c_text} channels; this space expects c{c}")
        has_se = se_tok is not None
        if self.se is True and not has_se:
            raise ArchError(f"{tok!r}: this space has se=True, every block needs _se0.25")
        if self.se is False and has_se:
            raise ArchError(f"{tok!r}: this space has se=False; drop _se0.25 (or use se='search')")
        gs = f"_g{g}" if g > 1 else ""
        return f"ir_k{k}_e{e}{gs}" + ("_se" if has_se and self.se == "search" else ""), r

    @staticmethod
    def _repeats(tok: str, text: str | None) -> int:
        r = 1 if text is None else int(text)
        if r < 1:
            raise ArchError(f"repeat count must be >= 1 in {tok!r}")
        return r

    # ---- networks ----------------------------------------------------------------------
    def _block(self, layer: Layer, option: str) -> nn.Module:
        if option == "skip":
            # Only offered where in == out and stride 1 (never on a stage's first layer).
            return nn.Identity()
        k, e, _ = _parse_option(option)
        return MBConv(layer.in_channels, layer.out_channels, k, layer.stride, e,
                      activation=self.activation, se=self._has_se(option), groups=option_groups(option))

    def _check_net_args(self, num_classes: int, in_channels: int, dropout: float, extra: Mapping[str, Any]) -> None:
        if extra:
            raise ConfigError(f"unknown network option(s) {sorted(extra)}; valid: num_classes, in_channels, dropout")
        for what, v in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{what} must be a positive integer, got {v!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")

    def build(
        self, arch: Arch, *, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0, **kwargs: Any,
    ) -> MobileNet:
        """The stand-alone network of ``arch`` (skipped layers are identities without weights)."""
        self.validate(arch)
        self._check_net_args(num_classes, in_channels, dropout, kwargs)
        blocks = {layer.name: self._block(layer, arch[layer.name]) for layer in self.layers}
        return MobileNet(self, blocks, num_classes=num_classes, in_channels=in_channels, dropout=dropout)

    def supernet(
        self, *, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0, **kwargs: Any,
    ) -> MobileNetSupernet:
        """Multi-path supernet: every candidate of every layer with its own weights (ProxylessNAS)."""
        self._check_net_args(num_classes, in_channels, dropout, kwargs)
        return MobileNetSupernet(self, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


class _Backbone(nn.Module):
    """Fixed parts shared by the stand-alone network and the supernet (same module names)."""

    def __init__(self, space: MobileNetSpace, num_classes: int, in_channels: int, dropout: float) -> None:
        super().__init__()
        act = space.activation
        self.stem = ConvBNAct(in_channels, space.stem_channels, 3, space.stem_stride, activation=act)
        # ProxylessNAS's fixed first block: MBConv1 k3, no shortcut (the channel count changes).
        self.first = MBConv(space.stem_channels, space.first_channels, 3, 1, 1, activation=act)
        self.head = ConvBNAct(space.stages[-1][0], space.head_channels, 1, activation=act)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(space.head_channels, num_classes)

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(x)).flatten(1)
        return self.classifier(self.dropout(x))


class MobileNet(_Backbone):
    """Stand-alone network of one :class:`MobileNetSpace` architecture; ``forward(x)`` -> logits.

    ``layers`` maps each decision name to its block (``nn.Identity`` for ``skip``), the key
    layout :meth:`MobileNetSupernet.subnet_state_dict` produces.
    """

    def __init__(self, space: MobileNetSpace, blocks: Mapping[str, nn.Module], *, num_classes: int,
                 in_channels: int, dropout: float) -> None:
        super().__init__(space, num_classes, in_channels, dropout)
        self.layers = nn.ModuleDict(dict(blocks))
        init_mobile_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(self.stem(x))
        for block in self.layers.values():
            x = block(x)
        return self._classify(x)


class MobileNetSupernet(Supernet):
    """ProxylessNAS-style multi-path supernet of a :class:`MobileNetSpace`.

    Every searchable layer is a :class:`~nasforge.nn.choice.Choice` keyed by its decision name
    over all of its options, each candidate with separate weights (ProxylessNAS / FBNet).
    Weight-sharing superkernels (Single-Path NAS, one kxk kernel whose centre is the smaller
    kernels) are a separate module that comes later.

    ``skip`` is the identity. Each MBConv candidate carries its own shortcut where the layer
    has one, so for a mixture with weights summing to one, ``sum_i w_i (x + f_i(x))`` equals
    ProxylessNAS's ``x + sum_i w_i f_i(x)`` (shortcut outside the mixed op).
    """

    def __init__(self, space: MobileNetSpace, *, num_classes: int, in_channels: int, dropout: float) -> None:
        super().__init__()
        self.space = space
        self.backbone = _Backbone(space, num_classes, in_channels, dropout)
        self.layers = nn.ModuleDict({
            layer.name: self.add_choice(
                layer.name, {option: space._block(layer, option) for option in space.decisions()[layer.name]}
            )
            for layer in space.layers
        })
        init_mobile_weights(self)

    def forward(self, x: torch.Tensor, path: Path) -> torch.Tensor:
        self.check_path(path)
        x = self.backbone.first(self.backbone.stem(x))
        for key, choice in self.layers.items():
            x = choice(x, path[key])
        return self.backbone._classify(x)

    def path_for(self, arch: object) -> dict[str, str]:
        if not isinstance(arch, Arch):
            raise ArchError(f"expected an Arch of space mobilenet, got {type(arch).__name__}")
        self.space.validate(arch)
        return dict(arch.choices)

    def subnet_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Weights of ``arch``'s path under the key names of ``space.build(arch)``'s network.

        ``build(arch, ...).load_state_dict(supernet.subnet_state_dict(arch))`` (strict) gives a
        stand-alone network that computes exactly what ``supernet(x, path_for(arch))`` does.
        """
        path = self.path_for(arch)
        out: dict[str, torch.Tensor] = {}
        for key, value in self.state_dict().items():
            if key.startswith("backbone."):
                out[key[len("backbone."):]] = value.detach().clone()
                continue
            # layers.<decision>.candidates.<option>.<rest> -> layers.<decision>.<rest>
            _, decision, _, option, rest = key.split(".", 4)
            if option == path[decision]:
                out[f"layers.{decision}.{rest}"] = value.detach().clone()
        return out
