"""The Zen-NAS search space: chains of ResNet-style or MBConv-style super blocks.

Paper: Lin, Wang, Sun, Chen, Sun, Qian, Li & Jin, "Zen-NAS: A Zero-Shot NAS for
High-Performance Image Recognition", ICCV 2021. Reference implementation ``idstcv/ZenNAS``:
``PlainNet/super_blocks.py`` (``SuperConvK3BNRELU`` / ``SuperConvK1BNRELU``),
``PlainNet/SuperResKXKX.py``, ``PlainNet/SuperResK1KXK1.py``, ``PlainNet/SuperResIDWEXKX.py``,
``PlainNet/basic_blocks.py`` (``ResBlock`` / ``ResBlockProj``), ``SearchSpace/search_space_XXBL.py``
and ``SearchSpace/search_space_IDW_fixfc.py`` (the mutation spaces) and the ``ZenNet/*.txt``
structure strings.

**Network.** A 3x3 conv-BN-ReLU stem, a chain of residual super blocks, a 1x1 conv-BN-ReLU
head, global average pooling and a linear classifier. A super block
``SuperRes<T>(in, out, stride, bottleneck, sub_layers)`` repeats ``sub_layers`` sub-layers;
only the first has the block's stride and input width:

- ``K{k}K{k}`` (``SuperResKXKX``): each sub-layer is one residual unit
  ``conv kxk(in -> bottleneck, stride) BN ReLU conv kxk(bottleneck -> out) BN``.
- ``K1K{k}K1`` (``SuperResK1KXK1``): each sub-layer is *two* residual units
  ``conv 1x1(-> bottleneck) BN ReLU conv kxk(bottleneck, stride) BN ReLU conv 1x1(-> out) BN``;
  the second unit has stride 1.
- ``IDWE{e}K{k}`` (``SuperResIDWEXKX``, the MBConv-style blocks of the FLOPs-constrained ImageNet
  ZenNets; e in 1, 2, 4, 6 and k in 3, 5, 7): each sub-layer is *two* inverted-residual units,
  ``conv 1x1(in -> m1) BN ReLU dwconv kxk(m1, stride) BN ReLU conv 1x1(m1 -> bottleneck) BN``
  then ``conv 1x1(bottleneck -> m2) BN ReLU dwconv kxk(m2) BN ReLU conv 1x1(m2 -> out) BN``, with
  ``m1 = bottleneck * e`` and ``m2 = out * e`` rounded to the nearest multiple of 8 (at least 8;
  the reference ``smart_round(x, base=8)``). So the bottleneck is the width *between* the two
  units, not a squeeze.

Every unit adds its shortcut and then applies ReLU (the MBConv-style units too, unlike
MobileNetV2's linear bottlenecks). As in the reference, the shortcut of a block's first unit is
always a projection (1x1 conv with bias, then BN; ``ResBlockProj``), even where the shape does
not change; the other units have identity shortcuts, or the same projection where their input
and output widths differ (``ResBlock``; only in ``IDW`` blocks whose bottleneck differs from
their out width). ``build(..., residual=False)`` drops all shortcuts: the reference computes the
Zen-score on this "no_reslink" network. BN layers use ``eps=1e-3`` (the reference ``MasterNet``).
Left out: the squeeze-and-excitation variant of the ``IDW`` blocks (the reference's ``use_se``,
which inserts ``SE(m)`` after each depthwise conv's ReLU): it is a flag of the whole network,
not part of the structure string, and the reference *searches* without it and switches it on
only for training the FLOPs-constrained ZenNets. Also left out: Swish (``basic_blocks.py`` has a
``Swish`` block and a ReLU-to-Swish helper, but neither the ``IDW`` blocks nor the ZenNet model
zoo use them).

**Discretisation.** The reference search mutates a variable-length block list: it replaces a
uniformly chosen block by one drawn uniformly from {the block types} x {out width x
2.5, 2, 1.5, 1.25, 1, 1/1.25, 1/1.5, 1/2, 1/2.5} x {bottleneck width x the same factors} x
{sub_layers + 0, +-1, +-2}, widths rounded to multiples of 8 in [8, 2048], the stride kept; and
it splits a block with ``sub_layers >= 6`` into two blocks of 3 sub-layers (the second with
stride 1), which is how blocks are added. The block types are those of one search-space file:
the six ResNet-style types of ``search_space_XXBL.py`` (the CIFAR and latency-constrained
ImageNet searches) or the twelve ``IDW`` types of ``search_space_IDW_fixfc.py`` (the
FLOPs-constrained ImageNet searches; that file also never mutates the head). Here the chain has a
fixed list of *slots*. Each downsampling position of the Zen-NAS initial structure (strides 1, 2,
2, 2 after a stride-1 stem for ``preset="cifar"``; 2, 2, 2, 2 after a stride-2 stem for
``preset="imagenet"``) opens a *stage* with one mandatory slot of that stride, followed by
``extra_slots`` optional stride-1 slots (the blocks that splitting inserts). Decisions, in
order:

- ``stem``: stem width (from ``widths``);
- per slot ``b{j}`` (``j`` counts slots from 0): ``b{j}_type`` from ``block_types`` (plus
  ``none`` on optional slots), ``b{j}_width`` (out width, from ``widths``), ``b{j}_btl``
  (bottleneck width, an *absolute* width from ``widths``: the published ZenNets have
  bottleneck/out ratios from 0.08 to 2, so a ratio set could not hold them), ``b{j}_depth``
  (sub_layers, from ``depths``);
- ``head``: width of the final 1x1 conv (from ``head_widths``).

``block_types`` defaults to the six ResNet-style types ``K3K3 K5K5 K7K7 K1K3K1 K1K5K1 K1K7K1``
for both presets; ``block_types=IDW_BLOCK_TYPES`` (any collection of names) gives the space of
the FLOPs-constrained ImageNet searches, and any subset or union of the eighteen types may be
chosen. The ``IDW`` types are opt-in because no reference search mixes the two families, and
because adding them to the default would change every default space's decisions, and so the
samples, mutations and encodings a given seed produces (existing structure strings would still
parse and build the same); an ``IDW``-only ``imagenet`` default would in addition refuse the
latency ZenNets.

Widths default to every multiple of 8 up to 512 (cifar) or 1024 (imagenet), the head widths to
every multiple of 8 up to 2048 or 4096, depths to 1..5 (the reference splits at 6). Structural
rules (:meth:`ZenNASSpace.check`): an absent (``none``) slot carries the first option of each of
its other decisions, and within a stage the present optional slots come first, so each
network has exactly one Arch.

:meth:`ZenNASSpace.mutate` follows the reference mutation rather than the base class's
one-decision change: it picks one unit (stem, a slot, the head) uniformly and redraws it from
the scaled-width / +-2-depth neighbourhood above, the widths snapped to the nearest option.
Deviations: optional slots may also be switched off (``none``) or on (the new block starts from
the preceding block's widths and depth, like a split), where the reference only ever adds
blocks by splitting; depth never exceeds ``depths`` instead of being split; the block type is
drawn uniformly (the reference's candidate lists over-weight the first types of a file); and
the head is mutated with ``IDW`` types too (``search_space_IDW_fixfc.py`` keeps it: pass
``head_widths=[2048]`` for that).

**Published networks.** The CIFAR ZenNets and the latency-constrained ImageNet ZenNets use the
ResNet-style blocks (constants ``ZENNET_*`` below). Every published ``IDW`` ZenNet
(``zennet_imagenet1k_flops{400,600,900}M_SE_res224``) is the SE variant (its model-zoo entry in
``ZenNet/__init__.py`` sets ``use_SE``), so no constant here claims to be one. Their structure
strings (``ZenNet/zennet_imagenet1k_flops*_res224.txt``) parse in ``preset="imagenet"`` with the
``IDW`` types and build those networks without SE; the tests compare them with the published
sizes: their MACs are 2-3% under the published FLOPs (which also count BN and SE terms); the
400M and 600M networks have the published 5.7M and 7.1M parameters *without* SE (7.5M and 11.3M
with it, so the published counts of those two seem to leave SE out), the 900M network has the
published 19.4M only with SE (13.3M without; the tests add the SE parameters by the
reference's formula).

**Text form** (the reference structure string, no spaces)::

    SuperConvK3BNRELU(3,stem,s,1) SuperRes<T>(in,out,s,bottleneck,sub_layers)... SuperConvK1BNRELU(in,head,1,1)

Absent slots are omitted; each block's ``in`` must be the previous block's ``out`` and its
stride the stride of the slot it lands in (a stage's blocks fill its slots in order). The stem's
input channels are written as 3 and not checked (the image channels are a ``build`` argument).
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.registry import register
from nasforge.spaces.base import _MAX_REJECTIONS, SearchSpace

#: ResNet-style block types (``search_space_XXBL.py``), the default ``block_types``: name ->
#: (kernel size, bottleneck family ``K1KXK1``?).
BLOCK_TYPES: dict[str, tuple[int, bool]] = {
    "K3K3": (3, False), "K5K5": (5, False), "K7K7": (7, False),
    "K1K3K1": (3, True), "K1K5K1": (5, True), "K1K7K1": (7, True),
}
#: MBConv-style block types ``SuperResIDWE{e}K{k}`` (``PlainNet/SuperResIDWEXKX.py``, in the order
#: of ``search_space_IDW_fixfc.py``): name -> (kernel size, expansion ratio).
IDW_BLOCK_TYPES: dict[str, tuple[int, int]] = {f"IDWE{e}K{k}": (k, e) for k in (3, 5, 7) for e in (1, 2, 4, 6)}
NONE = "none"
PRESETS: dict[str, dict[str, Any]] = {
    # stem stride, stage strides (the Zen-NAS initial structures of scripts/Zen_NAS_cifar_params1M.sh and
    # scripts/Zen_NAS_ImageNet_*.sh), default max width, default max head width, input resolution
    "cifar": {"stem_stride": 1, "strides": (1, 2, 2, 2), "max_width": 512, "max_head": 2048, "resolution": 32},
    "imagenet": {"stem_stride": 2, "strides": (2, 2, 2, 2), "max_width": 1024, "max_head": 4096, "resolution": 224},
}
#: Width scaling factors of the reference mutation (``get_select_student_channels_list``).
WIDTH_SCALES: tuple[float, ...] = (2.5, 2.0, 1.5, 1.25, 1.0, 1 / 1.25, 1 / 1.5, 1 / 2, 1 / 2.5)
#: Depth steps of the reference mutation (``get_select_student_sublayers_list``).
DEPTH_STEPS: tuple[int, ...] = (0, 1, 2, -1, -2)
BN_EPS = 1e-3  # the reference MasterNet sets every BN's eps to 1e-3

#: ZenNet for CIFAR under 1M parameters, ``ZenNet/zennet_cifar_model_size1M_res32.txt`` of the
#: reference (published 1.0M parameters, 162M FLOPs, 96.2% CIFAR-10). In ``preset="cifar"``.
ZENNET_CIFAR_1M = (
    "SuperConvK3BNRELU(3,88,1,1)SuperResK1K7K1(88,120,1,16,1)SuperResK1K7K1(120,192,2,16,3)"
    "SuperResK1K5K1(192,224,1,24,4)SuperResK1K5K1(224,96,2,24,2)SuperResK1K3K1(96,168,2,40,3)"
    "SuperResK1K3K1(168,112,1,48,3)SuperConvK1BNRELU(112,512,1,1)"
)
#: ZenNet for CIFAR under 0.5M parameters (``zennet_cifar_model_size05M_res32.txt``; published
#: 0.5M parameters, 140M FLOPs). In ``preset="cifar"``.
ZENNET_CIFAR_05M = (
    "SuperConvK3BNRELU(3,64,1,1)SuperResK1K5K1(64,168,1,16,3)SuperResK1K3K1(168,80,2,32,4)"
    "SuperResK1K5K1(80,112,2,16,3)SuperResK1K5K1(112,144,1,24,3)SuperResK1K3K1(144,32,2,40,1)"
    "SuperConvK1BNRELU(32,512,1,1)"
)
#: ZenNet for CIFAR under 2M parameters (``zennet_cifar_model_size2M_res32.txt``; published 2.0M
#: parameters, 487M FLOPs). Its second stage has four blocks: needs ``extra_slots >= 3``.
ZENNET_CIFAR_2M = (
    "SuperConvK3BNRELU(3,32,1,1)SuperResK1K5K1(32,120,1,40,1)SuperResK1K5K1(120,176,2,32,3)"
    "SuperResK1K7K1(176,272,1,24,3)SuperResK1K3K1(272,176,1,56,3)SuperResK1K3K1(176,176,1,64,4)"
    "SuperResK1K5K1(176,216,2,40,2)SuperResK1K3K1(216,72,2,56,2)SuperConvK1BNRELU(72,512,1,1)"
)
#: ZenNet-0.1ms for ImageNet (``zennet_imagenet1k_latency01ms_res224.txt``; published 30.1M
#: parameters, 1.7B FLOPs, 77.8% top-1). In ``preset="imagenet"``.
ZENNET_IMAGENET_01MS = (
    "SuperConvK3BNRELU(3,24,2,1)SuperResK3K3(24,32,2,64,1)SuperResK5K5(32,64,2,32,1)"
    "SuperResK5K5(64,168,2,96,1)SuperResK1K5K1(168,320,1,120,1)SuperResK1K5K1(320,640,2,304,3)"
    "SuperResK1K5K1(640,512,1,384,1)SuperConvK1BNRELU(512,2384,1,1)"
)

#: The small initial structures the reference search starts from (``init_plainnet.txt`` of
#: ``scripts/Zen_NAS_cifar_params1M.sh`` and ``scripts/Zen_NAS_ImageNet_latency0.1ms.sh``); pass one
#: as the searcher's ``initial_structure``. The ImageNet script's head reads
#: ``SuperConvK1BNRELU(256,512,1,1)`` after a 512-wide block (the reference re-wires input widths
#: when it mutates); here its input is the 512 it actually receives.
INITIAL_STRUCTURES: dict[str, str] = {
    "cifar": (
        "SuperConvK3BNRELU(3,8,1,1)SuperResK3K3(8,16,1,8,1)SuperResK3K3(16,32,2,16,1)"
        "SuperResK3K3(32,64,2,32,1)SuperResK3K3(64,64,2,32,1)SuperConvK1BNRELU(64,128,1,1)"
    ),
    "imagenet": (
        "SuperConvK3BNRELU(3,32,2,1)SuperResK3K3(32,64,2,32,1)SuperResK3K3(64,128,2,64,1)"
        "SuperResK3K3(128,256,2,128,1)SuperResK3K3(256,512,2,256,1)SuperConvK1BNRELU(512,512,1,1)"
    ),
}
#: The initial structure of the FLOPs-constrained ImageNet searches with ``IDW`` blocks
#: (``scripts/Zen_NAS_ImageNet_flops{400,600,800}M.sh``, which write it to
#: ``rescaled_initial_structure.txt``); the starting point of ``preset="imagenet"`` spaces that
#: cannot express ``INITIAL_STRUCTURES["imagenet"]`` (e.g. without ``K3K3`` blocks).
INITIAL_STRUCTURE_IDW = (
    "SuperConvK3BNRELU(3,8,2,1)SuperResIDWE6K3(8,32,2,8,1)SuperResIDWE6K3(32,48,2,32,1)"
    "SuperResIDWE6K3(48,96,2,48,1)SuperResIDWE6K3(96,128,2,96,1)SuperConvK1BNRELU(128,2048,1,1)"
)

_TOKEN_RE = re.compile(r"\s*([A-Za-z0-9_]+)\(([^()]*)\)\s*")
_GRAMMAR = "SuperConvK3BNRELU(3,C,S,1) SuperRes<T>(IN,OUT,S,BTL,D)... SuperConvK1BNRELU(IN,C,1,1)"


@dataclass(frozen=True)
class Slot:
    """One position of the chain: decisions ``{name}_type/_width/_btl/_depth``."""

    name: str  # b{j}
    stage: int  # 0-based stage index
    stride: int
    optional: bool  # True for the extra stride-1 slots (may be ``none``)


def _width_grid(what: str, values: Sequence[int] | None, max_default: int) -> tuple[int, ...]:
    if values is None:
        return tuple(range(8, max_default + 1, 8))
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{what} must be a non-empty sequence of positive integers, got {values!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ConfigError(f"{what} must be positive integers, got {list(values)!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{what} has duplicates: {list(values)!r}")
    return tuple(sorted(values))


def _block_types(values: Collection[str]) -> tuple[str, ...]:
    """``values`` checked against every known block type, in the order of the type tables."""
    valid = (*BLOCK_TYPES, *IDW_BLOCK_TYPES)
    if isinstance(values, (str, bytes)) or not isinstance(values, Collection) or not values:
        raise ConfigError(
            f"block_types must be a non-empty collection of block type names, got {values!r}; valid: {', '.join(valid)}"
        )
    values = list(values)
    bad = [v for v in values if v not in valid]
    if bad:
        raise ConfigError(f"unknown block_types {bad!r}; valid: {', '.join(valid)}")
    if len(set(values)) != len(values):
        raise ConfigError(f"block_types has duplicates: {values!r}")
    return tuple(t for t in valid if t in values)


@register("space", "zennas")
class ZenNASSpace(SearchSpace):
    """Zen-NAS residual chain space (see the module docstring for the discretisation).

    Args:
        preset: ``"cifar"`` (stride-1 stem and first stage, total stride 8: 32x32 ends at 4x4)
            or ``"imagenet"`` (stride-2 stem and stages, total stride 32).
        extra_slots: optional stride-1 slots after each stage's first block (>= 0).
        widths: stem / block / bottleneck widths (default: multiples of 8 up to 512 or 1024).
        head_widths: widths of the final 1x1 conv (default: multiples of 8 up to 2048 or 4096).
        depths: sub_layers per block (default 1..5).
        block_types: the block types ``b{j}_type`` draws from, any names of :data:`BLOCK_TYPES`
            and :data:`IDW_BLOCK_TYPES` (default: the six of :data:`BLOCK_TYPES`; see the module
            docstring for why the ``IDW`` types are opt-in). Kept in the order of those tables.

    Raises:
        ConfigError: a value outside the choices above.
    """

    name: ClassVar[str] = "zennas"
    paper: ClassVar[str] = (
        "Lin, Wang, Sun, Chen, Sun, Qian, Li & Jin. Zen-NAS: A Zero-Shot NAS for High-Performance "
        "Image Recognition. ICCV 2021"
    )

    def __init__(
        self, *, preset: str = "cifar", extra_slots: int = 1, widths: Sequence[int] | None = None,
        head_widths: Sequence[int] | None = None, depths: Sequence[int] = (1, 2, 3, 4, 5),
        block_types: Collection[str] = tuple(BLOCK_TYPES),
    ) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown zennas preset {preset!r}; valid: {', '.join(PRESETS)}")
        if isinstance(extra_slots, bool) or not isinstance(extra_slots, int) or extra_slots < 0:
            raise ConfigError(f"extra_slots must be an integer >= 0, got {extra_slots!r}")
        p = PRESETS[preset]
        self.preset, self.extra_slots = preset, extra_slots
        self.widths = _width_grid("widths", widths, p["max_width"])
        self.head_widths = _width_grid("head_widths", head_widths, p["max_head"])
        if depths is None:
            raise ConfigError("depths must be a non-empty sequence of positive integers, got None")
        self.depths = _width_grid("depths", depths, 0)
        self.block_types = _block_types(block_types)
        self.stem_stride: int = p["stem_stride"]
        self.resolution: int = p["resolution"]
        slots: list[Slot] = []
        for si, stride in enumerate(p["strides"]):
            for k in range(1 + extra_slots):
                slots.append(Slot(f"b{len(slots)}", si, stride if k == 0 else 1, k > 0))
        self.slots: tuple[Slot, ...] = tuple(slots)

        w, d = tuple(map(str, self.widths)), tuple(map(str, self.depths))
        decisions: dict[str, tuple[str, ...]] = {"stem": w}
        for slot in self.slots:
            decisions[f"{slot.name}_type"] = self.block_types + ((NONE,) if slot.optional else ())
            decisions[f"{slot.name}_width"] = w
            decisions[f"{slot.name}_btl"] = w
            decisions[f"{slot.name}_depth"] = d
        decisions["head"] = tuple(map(str, self.head_widths))
        self._decisions = decisions

    # ---- what the space is -------------------------------------------------------------
    def decisions(self) -> dict[str, tuple[str, ...]]:
        return dict(self._decisions)

    def config(self) -> dict[str, Any]:
        return {
            "preset": self.preset, "extra_slots": self.extra_slots, "widths": list(self.widths),
            "head_widths": list(self.head_widths), "depths": list(self.depths),
            "block_types": list(self.block_types),
        }

    def _absent_values(self, slot: Slot) -> dict[str, str]:
        """The canonical values an absent slot carries (first option of each decision)."""
        return {f"{slot.name}_{k}": self._decisions[f"{slot.name}_{k}"][0] for k in ("width", "btl", "depth")}

    def check(self, arch: Arch) -> None:
        gap_in_stage: dict[int, str] = {}
        for slot in self.slots:
            if arch[f"{slot.name}_type"] == NONE:
                gap_in_stage.setdefault(slot.stage, slot.name)
                for d, v in self._absent_values(slot).items():
                    if arch[d] != v:
                        raise ArchError(
                            f"slot {slot.name} is none, so {d} must be its canonical {v!r}, got {arch[d]!r}"
                        )
            elif slot.stage in gap_in_stage:
                raise ArchError(
                    f"slot {slot.name} holds a block after the empty slot {gap_in_stage[slot.stage]} of the same "
                    f"stage; optional slots are filled in order"
                )

    def _canonical(self, mapping: dict[str, str]) -> dict[str, str]:
        """Reset absent slots to canonical values and empty every slot after a gap in its stage."""
        gap: set[int] = set()
        for slot in self.slots:
            if slot.stage in gap:
                mapping[f"{slot.name}_type"] = NONE
            if mapping[f"{slot.name}_type"] == NONE:
                gap.add(slot.stage)
                mapping.update(self._absent_values(slot))
        return mapping

    # ---- sampling and mutation ---------------------------------------------------------
    def sample(self, rng: random.Random) -> Arch:
        """Each decision uniformly, then absent slots (and any slot after one) canonicalised.

        So with ``n`` block types an optional slot is present with probability n/(n+1), and the
        k-th optional slot of a stage with probability (n/(n+1))^k.
        """
        mapping = {d: rng.choice(opts) for d, opts in self._decisions.items()}
        return self.make(self._canonical(mapping))

    def _scaled(self, value: int, grid: tuple[int, ...]) -> list[int]:
        """Options nearest to ``value`` times each reference width scale (ties to the smaller)."""
        out: list[int] = []
        for f in WIDTH_SCALES:
            target = value * f
            best = min(grid, key=lambda g: (abs(g - target), g))
            if best not in out:
                out.append(best)
        return out

    def _redraw_unit(self, arch: Arch, unit: str, rng: random.Random) -> dict[str, str]:
        mapping = dict(arch.choices)
        if unit in ("stem", "head"):
            grid = self.widths if unit == "stem" else self.head_widths
            mapping[unit] = str(rng.choice(self._scaled(int(arch[unit]), grid)))
            return mapping
        slot = next(s for s in self.slots if s.name == unit)
        new_type = rng.choice(self._decisions[f"{unit}_type"])
        mapping[f"{unit}_type"] = new_type
        if new_type == NONE:
            return self._canonical(mapping)
        if arch[f"{unit}_type"] == NONE:
            # A block appearing in an empty slot starts from the block before it, as a split does.
            prev = self.slots[self.slots.index(slot) - 1]
            base = {k: arch[f"{prev.name}_{k}"] for k in ("width", "btl", "depth")}
        else:
            base = {k: arch[f"{unit}_{k}"] for k in ("width", "btl", "depth")}
        mapping[f"{unit}_width"] = str(rng.choice(self._scaled(int(base["width"]), self.widths)))
        mapping[f"{unit}_btl"] = str(rng.choice(self._scaled(int(base["btl"]), self.widths)))
        depths = []
        for step in DEPTH_STEPS:
            if int(base["depth"]) + step in self.depths and int(base["depth"]) + step not in depths:
                depths.append(int(base["depth"]) + step)
        mapping[f"{unit}_depth"] = str(rng.choice(depths or [int(base["depth"])]))
        return mapping

    def units(self) -> list[str]:
        """The mutation units: ``stem``, each slot name, ``head`` (the reference's block list)."""
        return ["stem", *(s.name for s in self.slots), "head"]

    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        """Zen-NAS mutation: one uniformly chosen unit is redrawn from its reference neighbourhood.

        The unit (stem, slot or head) is drawn uniformly; a slot gets a uniform block type (or
        ``none`` if optional), an out width and a bottleneck width each scaled by a uniform
        factor of :data:`WIDTH_SCALES` (snapped to the grid), and a depth changed by a uniform
        step of :data:`DEPTH_STEPS` (kept in ``depths``). Draws that give back ``arch`` or break
        the slot-order rule are redrawn.
        """
        self.validate(arch)
        units = self.units()
        for _ in range(_MAX_REJECTIONS):
            mapping = self._redraw_unit(arch, rng.choice(units), rng)
            child = Arch(self.name, tuple((d, mapping[d]) for d in self._decisions))
            if child != arch and self.is_valid(child):
                return child
        raise ArchError(f"could not mutate {self.format(arch)} into a different valid architecture")

    def neighbours(self, arch: Arch) -> list[Arch]:
        """Every valid Arch one decision away, switching a slot off resetting its other decisions."""
        self.validate(arch)
        out: list[Arch] = []
        seen = {arch}
        for d, opts in self._decisions.items():
            for o in opts:
                if o == arch[d]:
                    continue
                mapping = dict(arch.choices)
                mapping[d] = o
                if d.endswith("_type") and o == NONE:
                    mapping = self._canonical(mapping)
                child = Arch(self.name, tuple((k, mapping[k]) for k in self._decisions))
                if child not in seen and self.is_valid(child):
                    seen.add(child)
                    out.append(child)
        return out

    # ---- strings -----------------------------------------------------------------------
    def starting_point(self) -> Arch | None:
        """The reference's initial structure of this preset (:data:`INITIAL_STRUCTURES`); for
        ``preset="imagenet"`` spaces that cannot express it, that of the ``IDW`` searches
        (:data:`INITIAL_STRUCTURE_IDW`); None when the space's ``widths`` / ``head_widths`` /
        ``depths`` / ``block_types`` can express neither."""
        candidates = [INITIAL_STRUCTURES[self.preset]] + ([INITIAL_STRUCTURE_IDW] if self.preset == "imagenet" else [])
        for text in candidates:
            try:
                return self.parse(text)
            except ArchError:
                continue
        return None

    def blocks(self, arch: Arch) -> list[tuple[str, int, int, int, int, int]]:
        """Present blocks as ``(type, in, out, stride, bottleneck, sub_layers)`` in chain order."""
        self.validate(arch)
        out, c_in = [], int(arch["stem"])
        for slot in self.slots:
            t = arch[f"{slot.name}_type"]
            if t == NONE:
                continue
            c_out = int(arch[f"{slot.name}_width"])
            out.append((t, c_in, c_out, slot.stride, int(arch[f"{slot.name}_btl"]), int(arch[f"{slot.name}_depth"])))
            c_in = c_out
        return out

    def format(self, arch: Arch) -> str:
        blocks = self.blocks(arch)
        text = f"SuperConvK3BNRELU(3,{arch['stem']},{self.stem_stride},1)"
        for t, c_in, c_out, s, btl, depth in blocks:
            text += f"SuperRes{t}({c_in},{c_out},{s},{btl},{depth})"
        last = blocks[-1][2] if blocks else int(arch["stem"])
        return text + f"SuperConvK1BNRELU({last},{arch['head']},1,1)"

    def _tokens(self, text: str) -> list[tuple[str, list[int]]]:
        pos, tokens = 0, []
        while pos < len(text):
            m = _TOKEN_RE.match(text, pos)
            if m is None:
                raise ArchError(f"cannot parse zennas structure at {text[pos:pos + 40]!r}; expected {_GRAMMAR}")
            try:
                args = [int(a) for a in m.group(2).split(",")]
            except ValueError:
                raise ArchError(f"{m.group(0).strip()!r}: arguments must be integers") from None
            tokens.append((m.group(1), args))
            pos = m.end()
        if len(tokens) < 2:
            raise ArchError(f"a zennas structure needs a stem and a head; got {text!r} (grammar: {_GRAMMAR})")
        return tokens

    def _option(self, decision: str, value: int, where: str) -> str:
        opts = self._decisions[decision]
        if str(value) not in opts:
            raise ArchError(f"{where}: {decision} {value} is not an option of this space; valid: {', '.join(opts)}")
        return str(value)

    def parse(self, text: str) -> Arch:
        if not isinstance(text, str):
            raise ArchError(f"expected a zennas structure string, got {type(text).__name__}")
        tokens = self._tokens(text.strip())
        (stem_name, stem_args), (head_name, head_args) = tokens[0], tokens[-1]
        if stem_name != "SuperConvK3BNRELU" or len(stem_args) != 4:
            raise ArchError(f"the structure must start with SuperConvK3BNRELU(3,C,S,1), got {stem_name}{tuple(stem_args)}")
        if stem_args[2] != self.stem_stride or stem_args[3] != 1:
            raise ArchError(
                f"stem SuperConvK3BNRELU{tuple(stem_args)}: the {self.preset} preset needs stride "
                f"{self.stem_stride} and 1 sub-layer"
            )
        mapping: dict[str, str] = {"stem": self._option("stem", stem_args[1], "stem")}
        c_prev = stem_args[1]
        blocks = tokens[1:-1]
        slot_i = 0
        for bi, (name, args) in enumerate(blocks, start=1):
            where = f"block {bi} {name}{tuple(args)}"
            t = name[len("SuperRes"):] if name.startswith("SuperRes") else ""
            if t not in self.block_types:
                valid = ", ".join(f"SuperRes{b}" for b in self.block_types)
                known = t in BLOCK_TYPES or t in IDW_BLOCK_TYPES
                why = "block type not in this space's block_types" if known else "unknown block type"
                raise ArchError(f"{where}: {why}; valid: {valid}")
            if len(args) != 5:
                raise ArchError(f"{where}: needs 5 arguments (in, out, stride, bottleneck, sub_layers)")
            c_in, c_out, stride, btl, depth = args
            if c_in != c_prev:
                raise ArchError(f"{where}: input channels {c_in} != previous output channels {c_prev}")
            # Fill slots in order: skip (leave empty) optional slots until one with this stride.
            while slot_i < len(self.slots):
                slot = self.slots[slot_i]
                if slot.stride == stride:
                    break
                if not slot.optional:
                    raise ArchError(
                        f"{where}: stride {stride}, but slot {slot.name} (stage {slot.stage}) of the "
                        f"{self.preset} preset needs a stride-{slot.stride} block here (a stage holds at most "
                        f"{1 + self.extra_slots} blocks with extra_slots={self.extra_slots})"
                    )
                slot_i += 1
            else:
                raise ArchError(
                    f"{where}: more blocks than the space holds (stage strides {PRESETS[self.preset]['strides']}, "
                    f"{self.extra_slots} optional stride-1 slot(s) per stage)"
                )
            slot = self.slots[slot_i]
            mapping[f"{slot.name}_type"] = t
            mapping[f"{slot.name}_width"] = self._option(f"{slot.name}_width", c_out, where)
            mapping[f"{slot.name}_btl"] = self._option(f"{slot.name}_btl", btl, where)
            mapping[f"{slot.name}_depth"] = self._option(f"{slot.name}_depth", depth, where)
            c_prev = c_out
            slot_i += 1
        missing = [s.name for s in self.slots[slot_i:] if not s.optional]
        if missing:
            raise ArchError(f"the structure ends before mandatory slot(s) {', '.join(missing)} (one block per stage)")
        for slot in self.slots:
            if f"{slot.name}_type" not in mapping:
                mapping[f"{slot.name}_type"] = NONE
                mapping.update(self._absent_values(slot))
        if head_name != "SuperConvK1BNRELU" or len(head_args) != 4:
            raise ArchError(f"the structure must end with SuperConvK1BNRELU(IN,C,1,1), got {head_name}{tuple(head_args)}")
        if head_args[0] != c_prev or head_args[2:] != [1, 1]:
            raise ArchError(
                f"head SuperConvK1BNRELU{tuple(head_args)}: needs input channels {c_prev}, stride 1 and 1 sub-layer"
            )
        mapping["head"] = self._option("head", head_args[1], "head")
        return self.make(mapping)

    # ---- networks ----------------------------------------------------------------------
    def build(
        self, arch: Arch, *, num_classes: int = 10, in_channels: int = 3, residual: bool = True, **kwargs: Any,
    ) -> ZenNet:
        """The stand-alone network of ``arch``.

        Args:
            arch: an Arch of this space.
            num_classes: classifier outputs.
            in_channels: image channels.
            residual: ``False`` drops every shortcut (the reference's ``no_reslink``, the
                network its Zen-score is computed on).
        """
        self.validate(arch)
        if kwargs:
            raise ConfigError(f"unknown network option(s) {sorted(kwargs)}; valid: num_classes, in_channels, residual")
        for what, v in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{what} must be a positive integer, got {v!r}")
        if not isinstance(residual, bool):
            raise ConfigError(f"residual must be True or False, got {residual!r}")
        return ZenNet(
            int(arch["stem"]), self.stem_stride, self.blocks(arch), int(arch["head"]),
            num_classes=num_classes, in_channels=in_channels, residual=residual,
        )

    def supernet(self, *, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> Any:
        """Not available: Zen-NAS is zero-shot and trains no supernet.

        Raises:
            ConfigError: always.
        """
        raise ConfigError("zennas has no supernet: Zen-NAS is zero-shot (score candidates with get_proxy('zen'))")


# ---- modules ------------------------------------------------------------------------------------
def _conv_bn(
    c_in: int, c_out: int, k: int, stride: int = 1, relu: bool = True, groups: int = 1,
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=False))
    return layers


class ResUnit(nn.Module):
    """``relu(body(x) + shortcut(x))``; the shortcut is a projection, the identity or absent.

    The projection is the reference ``ResBlockProj``'s (and ``ResBlock``'s where the shape
    changes): a 1x1 conv *with* bias at the unit's stride, then BN.
    """

    def __init__(self, body: list[nn.Module], c_in: int, c_out: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)
        self.shortcut_kind = shortcut  # "proj", "identity" or "none"
        self.proj = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride), nn.BatchNorm2d(c_out, eps=BN_EPS))
            if shortcut == "proj" else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.proj is not None:
            y = y + self.proj(x)
        elif self.shortcut_kind == "identity":
            y = y + x
        return torch.relu(y)


def _shortcut(c_in: int, c_out: int, stride: int, first: bool, residual: bool) -> str:
    """A unit's shortcut kind: the reference ``ResBlockProj`` (a block's first unit) always
    projects, ``ResBlock`` (the others) only where the shape changes; none without ``residual``."""
    if not residual:
        return "none"
    return "proj" if first or stride > 1 or c_in != c_out else "identity"


def _round8(x: int) -> int:
    """The reference ``smart_round(x, base=8)``: the nearest multiple of 8 (Python ``round``), at least 8."""
    return max(8, round(x / 8) * 8)


def super_block(kind: str, c_in: int, c_out: int, stride: int, btl: int, depth: int, residual: bool) -> nn.Sequential:
    """A ``SuperRes<kind>`` block as in the reference: the stride is applied in its first sub-layer.

    Raises:
        ConfigError: ``kind`` is not in :data:`BLOCK_TYPES` or :data:`IDW_BLOCK_TYPES`.
    """
    if kind not in BLOCK_TYPES and kind not in IDW_BLOCK_TYPES:
        raise ConfigError(f"unknown zennas block type {kind!r}; valid: {', '.join((*BLOCK_TYPES, *IDW_BLOCK_TYPES))}")
    units: list[nn.Module] = []
    for i in range(depth):
        c, s = (c_in, stride) if i == 0 else (c_out, 1)
        if kind in IDW_BLOCK_TYPES:
            # SuperResIDWEXKX: two inverted-residual units, c -> btl (stride s) and btl -> c_out.
            k, e = IDW_BLOCK_TYPES[kind]
            m = _round8(btl * e)
            body = _conv_bn(c, m, 1) + _conv_bn(m, m, k, s, groups=m) + _conv_bn(m, btl, 1, relu=False)
            units.append(ResUnit(body, c, btl, s, _shortcut(c, btl, s, i == 0, residual)))
            m = _round8(c_out * e)
            body = _conv_bn(btl, m, 1) + _conv_bn(m, m, k, groups=m) + _conv_bn(m, c_out, 1, relu=False)
            units.append(ResUnit(body, btl, c_out, 1, _shortcut(btl, c_out, 1, False, residual)))
            continue
        k, bottleneck = BLOCK_TYPES[kind]
        if bottleneck:
            body = _conv_bn(c, btl, 1) + _conv_bn(btl, btl, k, s) + _conv_bn(btl, c_out, 1, relu=False)
            units.append(ResUnit(body, c, c_out, s, _shortcut(c, c_out, s, i == 0, residual)))
            body = _conv_bn(c_out, btl, 1) + _conv_bn(btl, btl, k) + _conv_bn(btl, c_out, 1, relu=False)
            units.append(ResUnit(body, c_out, c_out, 1, _shortcut(c_out, c_out, 1, False, residual)))
        else:
            body = _conv_bn(c, btl, k, s) + _conv_bn(btl, c_out, k, relu=False)
            units.append(ResUnit(body, c, c_out, s, _shortcut(c, c_out, s, i == 0, residual)))
    return nn.Sequential(*units)


class ZenNet(nn.Module):
    """A Zen-NAS network: stem, super blocks, 1x1 head, global average pool, linear classifier."""

    def __init__(
        self, stem: int, stem_stride: int, blocks: Sequence[tuple[str, int, int, int, int, int]], head: int, *,
        num_classes: int, in_channels: int, residual: bool,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, stem, 3, stem_stride))
        self.blocks = nn.Sequential(*(super_block(t, ci, co, s, b, d, residual) for t, ci, co, s, b, d in blocks))
        last = blocks[-1][2] if blocks else stem
        self.head = nn.Sequential(*_conv_bn(last, head, 1))
        self.classifier = nn.Linear(head, num_classes)

    def forward_pre_gap(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before global average pooling (the reference ``forward_pre_GAP``)."""
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_pre_gap(x).mean(dim=(2, 3)))


__all__: list[str] = [
    "BLOCK_TYPES", "IDW_BLOCK_TYPES", "INITIAL_STRUCTURES", "INITIAL_STRUCTURE_IDW", "PRESETS", "WIDTH_SCALES",
    "DEPTH_STEPS", "ZENNET_CIFAR_05M", "ZENNET_CIFAR_1M", "ZENNET_CIFAR_2M", "ZENNET_IMAGENET_01MS", "Slot",
    "ZenNASSpace", "ZenNet", "ResUnit", "super_block",
]
