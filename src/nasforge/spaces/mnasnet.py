"""MnasNet's factorized hierarchical search space (seven blocks on the MobileNetV2 skeleton).

Paper: Tan, Chen, Pang, Vasudevan, Sandler, Howard & Le, "MnasNet: Platform-Aware Neural
Architecture Search for Mobile", CVPR 2019, Section 4.1 and Figure 4. The search code is not
public; the found models are in ``tensorflow/tpu`` ``models/official/mnasnet``
(``mnasnet_models.py``, block strings of MnasNet-A1, B1 ...) and in timm
(``timm/models/efficientnet.py``, ``_gen_mnasnet_a1``), whose block-string syntax the text form
below follows. Searched by the multi-trial MnasNet controller ``mnasnet_ppo``
(:mod:`nasforge.searchers.mnasnet_ppo`): every sampled model is trained on its own.

The space as implemented
------------------------
The network is stem -> seven blocks -> head. The skeleton is MobileNetV2 (Sandler et al.,
CVPR 2018, Table 2): stem 3x3 conv stride 2 to 32 channels; blocks given as (filters, layers,
stride) ``(16,1,1) (24,2,2) (32,3,2) (64,4,2) (96,3,1) (160,3,2) (320,1,1)``; head 1x1 conv to
1280, global average pool, dropout, linear classifier. Every block ``i`` (1-based) has its own
sub-space (the factorization), six decisions:

* ``b{i}_op`` -- ConvOp: ``conv`` (regular kxk conv -> BN -> ReLU), ``dconv`` (depthwise
  separable: depthwise kxk -> BN -> ReLU -> 1x1 -> BN, MnasNet-A1's "SepConv", timm ``ds``),
  ``mbconv3`` / ``mbconv6`` (MobileNetV2 inverted bottleneck with expansion 3 / 6, timm ``ir``).
* ``b{i}_k`` -- KernelSize ``3`` or ``5``.
* ``b{i}_se`` -- SERatio ``0`` or ``0.25``.
* ``b{i}_skip`` -- SkipOp ``pool``, ``identity`` (residual) or ``none``.
* ``b{i}_filters`` -- output filter size F_i relative to the skeleton: ``0.75``, ``1.0``, ``1.25``.
* ``b{i}_layers`` -- number of layers N_i relative to the skeleton: ``-1``, ``0``, ``+1``, keeping
  at least one layer (blocks 1 and 7 have one layer in MobileNetV2, so they offer ``0``, ``+1``).

All N_i layers of a block share its op, kernel, SE and skip and have F_i output filters; the
first layer has the block's stride (and the previous block's width as input), the others
stride 1. A search space of ``4 * 2 * 2 * 3 * 3 * 3 = 432`` options per block (five blocks with
three layer options, two with two).

Layer details (as in the TensorFlow MnasNet models, ``mnasnet_model.py``): ReLU everywhere;
squeeze-and-excitation after the depthwise conv (after the conv for ``conv``), reducing to
``max(1, int(input_filters * 0.25))`` channels with a sigmoid gate; the MBConv projection and the
``dconv`` pointwise conv are linear (BN, no activation).

Skip rule (where shapes allow): ``identity`` adds ``x`` to the layer's output on every layer with
stride 1 and as many input as output channels; ``pool`` adds a 3x3 average pool of ``x``
(padding 1, stride = the layer's stride, padding not counted) on every layer with as many input
as output channels, at any stride; on the other layers (in practice the first layer of a block,
which changes the width) the layer has no skip. ``none`` never adds a skip.

Presets: ``"imagenet"`` is the network above for 224x224 inputs (total stride 32).
``"cifar"`` (32x32) puts the stem and block 2 at stride 1, as the usual CIFAR MobileNetV2, so the
total stride is 8 and a 32x32 input ends at 4x4 (the same choice as ``mobilenet``'s cifar preset).
``width_mult`` scales every block's filters; the stem is ``make_divisible(32 * width_mult)`` and
the 1280-wide head is only ever widened (MobileNetV2).

Text form (:meth:`MnasNetSpace.format` / :meth:`MnasNetSpace.parse`): one timm-style block string
per block, separated by ``" | "``::

    block := OP "_r" R "_k" K "_s" S [ "_e" E ] "_c" C [ "_se0.25" ] [ "_noskip" | "_pool" ]

``OP`` is ``cn`` (conv), ``ds`` (dconv) or ``ir`` (MBConv, with ``_e3`` / ``_e6``; ``cn`` and ``ds``
take no ``_e``); ``R`` the block's actual layer count, ``S`` the preset's block stride, ``C`` the
actual output channels (width scaled); no suffix means the identity residual (timm's default),
``_noskip`` none and ``_pool`` the pooling skip. MobileNetV2 itself (at the cifar preset) reads
``ds_r1_k3_s1_c16 | ir_r2_k3_s1_e6_c24 | ir_r3_k3_s2_e6_c32 | ...``. ``parse(format(a)) == a``.

Deviations from the paper, and what could not be checked:

* The ConvOp, KernelSize, SERatio and SkipOp lists were checked against a quotation of Section
  4.1 (a paper summary), not the paper's own text. The paper lists "mobile inverted bottleneck
  conv" without expansion ratios; the two ratios 3 and 6 are the ones of its found models (A1,
  B1 use MBConv3 and MBConv6) and give the 432 options per block of the paper's search-space
  size example (not checked against the text).
* A skip is added to the layer's output as it is (after the ReLU of a ``conv`` layer, after the
  linear projection of the others); the paper does not say where the sum is taken.
* The option sets of N_i ({0, +1, -1}) and F_i ({0.75, 1.0, 1.25}) are Section 4.1's as recalled;
  not checked against the paper's text in this session. The paper does not say whether a
  one-layer block may be removed (N_i = 0); here every block keeps at least one layer.
* The paper does not define the pooling skip, nor where an identity skip is impossible; the
  rule above is ours. Nor does it give a channel rounding: F_i is rounded to the nearest integer
  (not to multiples of 8 as in MobileNetV2, which would merge 0.75 and 1.0 on the 16- and
  24-filter blocks); at width 1 every F_i is exact. A ``width_mult`` at which two filter options
  of a block round to the same width is refused (the text form would be ambiguous).
* SE on a regular ``conv`` layer (after its activation) is our placement (not in the paper).
* MnasNet-A1 is NOT a point of this space: its fifth block has 112 filters, 7/6 of
  MobileNetV2's 96, not one of 72 / 96 / 120 (MnasNet-B1's sixth block, 192 = 1.2 x 160, is not
  either). :data:`MNASNET_A1_BLOCKS` gives A1's blocks in this module's network terms instead,
  so :func:`build_network` can be checked against its published 3.9M parameters.
* No weight-sharing supernet: MnasNet trains every sampled model (multi-trial); see
  :meth:`MnasNetSpace.supernet`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.nn.blocks import ConvBNAct, MBConv, SqueezeExcite, init_mobile_weights, make_divisible
from nasforge.nn.choice import Supernet
from nasforge.registry import register
from nasforge.spaces.base import SearchSpace

#: MobileNetV2's (filters, layers, stride) of the seven blocks (Sandler et al. 2018, Table 2).
SKELETON: tuple[tuple[int, int, int], ...] = (
    (16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280  # MobileNetV2 / MnasNet stem and head widths
PRESETS: tuple[str, ...] = ("imagenet", "cifar")

# Per-block option sets (Section 4.1; see the module docstring for what is checked).
CONV_OPS: tuple[str, ...] = ("conv", "dconv", "mbconv3", "mbconv6")
KERNELS: tuple[str, ...] = ("3", "5")
SE_RATIOS: tuple[str, ...] = ("0", "0.25")
SKIP_OPS: tuple[str, ...] = ("pool", "identity", "none")
FILTER_RATIOS: tuple[str, ...] = ("0.75", "1.0", "1.25")
LAYER_DELTAS: tuple[str, ...] = ("-1", "0", "+1")
SE_RATIO = 0.25  # squeeze-and-excitation ratio of the "0.25" option (reduction from the input width)

_EXPANSION = {"conv": 1, "dconv": 1, "mbconv3": 3, "mbconv6": 6}
_OP_TOKEN = {"conv": "cn", "dconv": "ds", "mbconv3": "ir", "mbconv6": "ir"}
_SKIP_SUFFIX = {"identity": "", "none": "_noskip", "pool": "_pool"}
_BLOCK_RE = re.compile(
    r"(?P<op>cn|ds|ir)_r(?P<r>\d+)_k(?P<k>\d+)_s(?P<s>\d+)(?:_e(?P<e>\d+))?_c(?P<c>\d+)"
    r"(?P<se>_se0\.25)?(?P<skip>_noskip|_pool)?"
)
_GRAMMAR = "OP_rR_kK_sS[_eE]_cC[_se0.25][_noskip|_pool] with OP cn, ds or ir (ir needs _e3 or _e6)"


@dataclass(frozen=True)
class BlockSpec:
    """One block of a MnasNet-style network, as :func:`build_network` builds it.

    Attributes:
        op: one of :data:`CONV_OPS`.
        kernel: kernel size of the (depthwise) convolution.
        se: squeeze-and-excitation on every layer of the block.
        skip: one of :data:`SKIP_OPS` (applied where shapes allow, see the module docstring).
        out_channels: output filters of every layer.
        layers: number of layers (>= 1).
        stride: stride of the first layer.
    """

    op: str
    kernel: int
    se: bool
    skip: str
    out_channels: int
    layers: int
    stride: int


#: MnasNet-A1 (``tensorflow/tpu`` ``mnasnet_models.py`` ``mnasnet_a1``; timm ``_gen_mnasnet_a1``) in
#: this module's network terms, for ImageNet (stem stride 2). Not an Arch of the space: block 5's
#: 112 filters are not 0.75 / 1.0 / 1.25 x 96. Built with 1000 classes it has the published 3.9M
#: parameters (see tests/test_space_mnasnet.py).
MNASNET_A1_BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec("dconv", 3, False, "none", 16, 1, 1),
    BlockSpec("mbconv6", 3, False, "identity", 24, 2, 2),
    BlockSpec("mbconv3", 5, True, "identity", 40, 3, 2),
    BlockSpec("mbconv6", 3, False, "identity", 80, 4, 2),
    BlockSpec("mbconv6", 3, True, "identity", 112, 2, 1),
    BlockSpec("mbconv6", 5, True, "identity", 160, 3, 2),
    BlockSpec("mbconv6", 3, False, "identity", 320, 1, 1),
)


def skip_kind(skip: str, in_channels: int, out_channels: int, stride: int) -> str:
    """The skip a layer actually gets: ``skip`` where shapes allow it, else ``"none"``.

    ``identity`` needs stride 1 and ``in_channels == out_channels``; ``pool`` only equal widths.
    """
    if skip == "identity" and stride == 1 and in_channels == out_channels:
        return "identity"
    if skip == "pool" and in_channels == out_channels:
        return "pool"
    return "none"


class MnasLayer(nn.Module):
    """One layer of a block: ``body(x)`` plus the skip (``shortcut(x)``) where it applies.

    ``body`` is a :class:`~nasforge.nn.blocks.MBConv` without its own residual (``dconv`` is its
    expansion-1 form) or, for ``conv``, ``ConvBNAct`` followed by SE; ``shortcut`` is ``None``
    (no skip), ``nn.Identity`` or a 3x3 ``nn.AvgPool2d``. ``skip`` records which one it is.
    """

    def __init__(self, op: str, in_channels: int, out_channels: int, kernel: int, stride: int, se: bool,
                 skip: str) -> None:
        super().__init__()
        reduced = max(1, int(in_channels * SE_RATIO))  # MnasNet: from the layer's input width
        self.body: nn.Module
        if op == "conv":
            conv = ConvBNAct(in_channels, out_channels, kernel, stride, activation="relu")
            self.body = nn.Sequential(conv, SqueezeExcite(out_channels, reduced) if se else nn.Identity())
        else:
            mb = MBConv(in_channels, out_channels, kernel, stride, _EXPANSION[op], activation="relu", residual=False)
            if se:  # MBConv's own SE reduces from the expanded width (MobileNetV3); MnasNet's from the input
                mb.se = SqueezeExcite(in_channels * _EXPANSION[op], reduced)
            self.body = mb
        self.skip = skip_kind(skip, in_channels, out_channels, stride)
        self.shortcut: nn.Module | None = {
            "identity": nn.Identity(),
            "pool": nn.AvgPool2d(3, stride, padding=1, count_include_pad=False),
            "none": None,
        }[self.skip]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y if self.shortcut is None else y + self.shortcut(x)


class MnasNetwork(nn.Module):
    """Stand-alone MnasNet-style network: stem, blocks of :class:`MnasLayer`, head; ``forward(x)`` -> logits.

    ``blocks[i][j]`` is layer ``j`` of block ``i + 1``.
    """

    def __init__(self, blocks: Sequence[BlockSpec], *, stem_channels: int, stem_stride: int, head_channels: int,
                 num_classes: int, in_channels: int, dropout: float) -> None:
        super().__init__()
        self.stem = ConvBNAct(in_channels, stem_channels, 3, stem_stride, activation="relu")
        stages, c_in = [], stem_channels
        for b in blocks:
            layers = []
            for j in range(b.layers):
                layers.append(MnasLayer(b.op, c_in, b.out_channels, b.kernel, b.stride if j == 0 else 1, b.se, b.skip))
                c_in = b.out_channels
            stages.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*stages)
        self.head = ConvBNAct(c_in, head_channels, 1, activation="relu")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head_channels, num_classes)
        init_mobile_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(self.blocks(self.stem(x)))).flatten(1)
        return self.classifier(self.dropout(x))


def build_network(blocks: Sequence[BlockSpec], *, num_classes: int = 1000, in_channels: int = 3,
                  dropout: float = 0.0, stem_channels: int = STEM_CHANNELS, stem_stride: int = 2,
                  head_channels: int = HEAD_CHANNELS) -> MnasNetwork:
    """A :class:`MnasNetwork` from explicit blocks (e.g. :data:`MNASNET_A1_BLOCKS`); no space checks."""
    return MnasNetwork(blocks, stem_channels=stem_channels, stem_stride=stem_stride, head_channels=head_channels,
                       num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register("space", "mnasnet")
class MnasNetSpace(SearchSpace):
    """MnasNet's factorized hierarchical space: per block ConvOp, kernel, SE, skip, F_i and N_i.

    Args:
        preset: ``"imagenet"`` (224x224, stem stride 2, total stride 32; the paper) or ``"cifar"``
            (32x32: stem and block 2 at stride 1, total stride 8).
        width_mult: multiplier of every block's filters (> 0); the three filter options of each
            block must stay distinct after rounding.

    Raises:
        ConfigError: an unknown preset or a width multiplier that is not a positive number or
            makes two filter options of a block equal.
    """

    name: ClassVar[str] = "mnasnet"
    paper: ClassVar[str] = (
        "Tan, Chen, Pang, Vasudevan, Sandler, Howard & Le. MnasNet: Platform-Aware Neural Architecture "
        "Search for Mobile. CVPR 2019"
    )

    def __init__(self, *, preset: str = "imagenet", width_mult: float = 1.0) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown mnasnet preset {preset!r}; valid: {', '.join(PRESETS)}")
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
            raise ConfigError(f"width_mult must be a positive number, got {width_mult!r}")
        self.preset, self.width_mult = preset, float(width_mult)
        self.stem_stride = 2 if preset == "imagenet" else 1
        self.strides = tuple(1 if (preset == "cifar" and i == 1) else s for i, (_, _, s) in enumerate(SKELETON))
        self.stem_channels = make_divisible(STEM_CHANNELS * self.width_mult)
        self.head_channels = make_divisible(HEAD_CHANNELS * self.width_mult) if self.width_mult > 1.0 else HEAD_CHANNELS
        #: block index (0-based) -> filter option -> output channels
        self.filters: tuple[dict[str, int], ...] = tuple(
            {r: max(1, int(c * float(r) * self.width_mult + 0.5)) for r in FILTER_RATIOS} for c, _, _ in SKELETON
        )
        for i, widths in enumerate(self.filters, start=1):
            if len(set(widths.values())) < len(widths):
                raise ConfigError(
                    f"width_mult={width_mult!r} is too small: block {i}'s filter options {FILTER_RATIOS} all need a "
                    f"distinct width but give {list(widths.values())}; use a larger width_mult"
                )
        decisions: dict[str, tuple[str, ...]] = {}
        for i, (_, n, _) in enumerate(SKELETON, start=1):
            decisions[f"b{i}_op"] = CONV_OPS
            decisions[f"b{i}_k"] = KERNELS
            decisions[f"b{i}_se"] = SE_RATIOS
            decisions[f"b{i}_skip"] = SKIP_OPS
            decisions[f"b{i}_filters"] = FILTER_RATIOS
            decisions[f"b{i}_layers"] = tuple(d for d in LAYER_DELTAS if n + int(d) >= 1)
        self._decisions = decisions

    # ---- what the space is -------------------------------------------------------------
    def decisions(self) -> dict[str, tuple[str, ...]]:
        return dict(self._decisions)

    def config(self) -> dict[str, Any]:
        return {"preset": self.preset, "width_mult": self.width_mult}

    def blocks(self, arch: Arch) -> tuple[BlockSpec, ...]:
        """The seven :class:`BlockSpec` of ``arch`` (stride, widths and layer counts resolved)."""
        self.validate(arch)
        return tuple(
            BlockSpec(
                op=arch[f"b{i}_op"], kernel=int(arch[f"b{i}_k"]), se=arch[f"b{i}_se"] != "0",
                skip=arch[f"b{i}_skip"], out_channels=self.filters[i - 1][arch[f"b{i}_filters"]],
                layers=n + int(arch[f"b{i}_layers"]), stride=self.strides[i - 1],
            )
            for i, (_, n, _) in enumerate(SKELETON, start=1)
        )

    # ---- strings -----------------------------------------------------------------------
    def format(self, arch: Arch) -> str:
        parts = []
        for b in self.blocks(arch):
            e = f"_e{_EXPANSION[b.op]}" if b.op.startswith("mbconv") else ""
            se = "_se0.25" if b.se else ""
            parts.append(f"{_OP_TOKEN[b.op]}_r{b.layers}_k{b.kernel}_s{b.stride}{e}_c{b.out_channels}{se}"
                         f"{_SKIP_SUFFIX[b.skip]}")
        return " | ".join(parts)

    def parse(self, text: str) -> Arch:
        if not isinstance(text, str):
            raise ArchError(f"expected a mnasnet architecture string, got {type(text).__name__}")
        parts = [p.strip() for p in text.strip().split("|")]
        if len(parts) != len(SKELETON):
            raise ArchError(f"expected {len(SKELETON)} blocks separated by ' | ', got {len(parts)} in {text!r}")
        mapping: dict[str, str] = {}
        for i, part in enumerate(parts, start=1):
            mapping.update(self._parse_block(i, part))
        return self.make(mapping)

    def _parse_block(self, i: int, tok: str) -> dict[str, str]:
        """The six decisions of block ``i`` (1-based) from its block string; validates it."""
        m = _BLOCK_RE.fullmatch(tok)
        if m is None:
            raise ArchError(f"cannot parse block {i} {tok!r}; expected {_GRAMMAR}")
        op_tok, e_text = m.group("op"), m.group("e")
        if op_tok == "ir":
            if e_text not in ("3", "6"):
                raise ArchError(f"block {i} {tok!r}: an ir (MBConv) block needs _e3 or _e6, got "
                                f"{'no _e' if e_text is None else '_e' + e_text}")
            op = f"mbconv{e_text}"
        else:
            if e_text is not None:
                raise ArchError(f"block {i} {tok!r}: {op_tok} blocks take no _e (only ir has an expansion)")
            op = "conv" if op_tok == "cn" else "dconv"
        _, n, _ = SKELETON[i - 1]
        r, k, s, c = (int(m.group(g)) for g in ("r", "k", "s", "c"))
        layers = {str(n + int(d)): d for d in self._decisions[f"b{i}_layers"]}
        if str(r) not in layers:
            raise ArchError(f"block {i} {tok!r} has {r} layer(s); valid: {', '.join(layers)} (MobileNetV2 has {n})")
        if str(k) not in KERNELS:
            raise ArchError(f"block {i} {tok!r}: kernel {k} is not searched; valid: {', '.join(KERNELS)}")
        if s != self.strides[i - 1]:
            raise ArchError(f"block {i} {tok!r} has stride {s}; the {self.preset} preset has s{self.strides[i - 1]} there")
        widths = {str(w): ratio for ratio, w in self.filters[i - 1].items()}
        if str(c) not in widths:
            raise ArchError(f"block {i} {tok!r} has {c} filters; valid at width_mult {self.width_mult:g}: "
                            f"{', '.join(widths)} (x {', '.join(FILTER_RATIOS)} of MobileNetV2's)")
        skip = {"": "identity", "_noskip": "none", "_pool": "pool"}[m.group("skip") or ""]
        return {f"b{i}_op": op, f"b{i}_k": str(k), f"b{i}_se": "0.25" if m.group("se") else "0",
                f"b{i}_skip": skip, f"b{i}_filters": widths[str(c)], f"b{i}_layers": layers[str(r)]}

    # ---- networks ----------------------------------------------------------------------
    def build(
        self, arch: Arch, *, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0, **kwargs: Any,
    ) -> MnasNetwork:
        """The stand-alone network of ``arch`` (the paper's trains each with dropout 0.2: pass it)."""
        blocks = self.blocks(arch)
        if kwargs:
            raise ConfigError(f"unknown network option(s) {sorted(kwargs)}; valid: num_classes, in_channels, dropout")
        for what, v in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{what} must be a positive integer, got {v!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
        return build_network(blocks, num_classes=num_classes, in_channels=in_channels, dropout=float(dropout),
                             stem_channels=self.stem_channels, stem_stride=self.stem_stride,
                             head_channels=self.head_channels)

    def supernet(self, *, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> Supernet:
        """Always raises: MnasNet has no weight-sharing supernet.

        Raises:
            ConfigError: MnasNet trains every sampled model on its own (multi-trial, Section 4.2).
        """
        raise ConfigError(
            "mnasnet has no supernet: MnasNet trains every sampled model on its own (multi-trial); search it "
            "with a multi-trial method such as mnasnet_ppo and --evaluator train. One-shot (weight-sharing) "
            "methods need a space with a supernet: nb201, darts, mobilenet, shufflenet or densenas"
        )
