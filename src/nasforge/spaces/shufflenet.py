"""The ShuffleNetV2 block space of SPOS, with optional channel-number search.

Guo, Zhang, Mu, Heng, Liu, Wei & Sun, "Single Path One-Shot Neural Architecture Search with
Uniform Sampling", ECCV 2020; reference code ``megvii-model/SinglePathOneShot``
(``src/Supernet/network.py``, ``src/Supernet/blocks.py``, ``src/Evaluation/template/network.py``).

Backbone (``preset="imagenet"``, the reference's ``ShuffleNetV2_OneShot`` for 224x224 inputs):
3x3 conv stride 2 to 16 channels -> BN -> ReLU (no max pool); four stages of 4, 4, 8 and 4
choice blocks (20 in all) with 64, 160, 320 and 640 output channels, the first block of each
stage at stride 2 in the two-branch form, the others at stride 1 in the channel-split form
(:mod:`nasforge.nn.shuffle`); 1x1 conv to 1024 -> BN -> ReLU; global average pool; dropout 0.1;
linear classifier without bias. ``preset="cifar"`` (32x32 inputs) is the same network with the
stem and the first stage at stride 1 (its first block keeps the two-branch form to widen the
channels), so the total stride is 8 and a 32x32 input ends at 4x4 (the imagenet layout has total
stride 32: 224 -> 7). ``width_mult`` scales the stem and the stage widths, rounded to multiples
of 8 (MobileNetV2's rounding, so every split half stays even); the 1024-wide last conv is only
widened (``width_mult > 1``), never narrowed, as ShuffleNetV2 keeps 1024 up to its 1.5x model.

Decisions, per choice block ``bNN`` (``b00`` ... ``b19``, the reference's architecture index):

* ``bNN_op``: ``shuffle3``, ``shuffle5``, ``shuffle7`` or ``xception`` (the reference's block
  indices 0, 1, 2, 3: ShuffleNetV2 blocks with a 3x3 / 5x5 / 7x7 depthwise conv, and the
  Xception-like block of three 3x3 depthwise convs);
* ``bNN_ch`` (only with ``channels=True``): the scale of the block's main-branch (``mid``)
  channels, one of :data:`CHANNEL_SCALES` ``0.2, 0.4, ..., 2.0`` of the base ``out // 2``
  (the reference's ``base_mid_channels``). The block's mid width is ``floor(base * scale)``,
  computed exactly in tenths (at least 1). Without channel search every block uses scale 1.0.

Text form (:meth:`ShuffleNetSpace.format` / :meth:`ShuffleNetSpace.parse`): the four stages
separated by ``" | "``, each a space-separated list of its blocks; a block is its op, followed
by ``@`` and its channel scale when the space searches channels::

    shuffle7 shuffle5 shuffle3 shuffle5 | shuffle7 shuffle3 shuffle7 shuffle3 | ... | ...
    shuffle3@1.4 xception@0.6 ... | ...                                   (channels=True)

Supernet (:class:`ShuffleNetSupernet`): every block is a :class:`~nasforge.nn.choice.Choice`
keyed ``bNN_op`` over the four candidate blocks, each with its own weights. With channel
search each candidate is allocated at the largest scale's width and the sampled width is
sliced out of it (SPOS Section 3.4: all widths share the weights of the widest); the width
travels with the block input as :class:`~nasforge.nn.shuffle.Sliced`. The ``bNN_ch`` keys are
listed in ``supernet.choices()`` next to the ``bNN_op`` keys, so policies see them as
decisions with 10 options: :class:`~nasforge.policies.UniformPolicy` draws them uniformly with
the ops (it samples the space), and :class:`~nasforge.policies.FairPolicy` permutes their
options like any key. A width key's selection must be an option name: soft mixtures over
widths are not defined and raise :class:`~nasforge.errors.ArchError`.

Deviations from the reference (stated): the global pool is adaptive (the reference's
``AvgPool2d(7)`` is the same at 224x224); the supernet's BN layers are ``affine=False`` as the
reference's supernet (``supernet(affine=True)`` gives affine ones) while stand-alone networks
have affine BN as the reference's evaluation networks, and
:meth:`ShuffleNetSupernet.subnet_state_dict` gives them scale 1 and shift 0 so they compute
exactly what the supernet computes; the ``cifar`` preset and ``width_mult`` are not in the
paper. The channel scales 0.2 ... 2.0 (10 choices) follow this project's issue; the paper's
text was not checked here, and the reference's evaluation template lists 8 scales 0.2 ... 1.6
(``scale_list`` in ``src/Evaluation/template/network.py``); its released supernet searches
blocks only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.nn.blocks import make_divisible
from nasforge.nn.choice import Path, Supernet
from nasforge.nn.shuffle import ShuffleBlock, Sliced, XceptionBlock, conv_bn, init_spos_weights
from nasforge.registry import register
from nasforge.spaces.base import SearchSpace

#: choice blocks per stage (reference ``stage_repeats``)
STAGE_REPEATS: tuple[int, ...] = (4, 4, 8, 4)
#: output channels of the four stages (reference ``stage_out_channels[2:6]``)
STAGE_CHANNELS: tuple[int, ...] = (64, 160, 320, 640)
STEM_CHANNELS, LAST_CHANNELS = 16, 1024  # reference stage_out_channels[1] and [-1]
#: candidate blocks in the reference's order (architecture indices 0, 1, 2, 3)
OPS: tuple[str, ...] = ("shuffle3", "shuffle5", "shuffle7", "xception")
#: channel scales of the main-branch width (0.2 to 2.0 in steps of 0.2; see the module docstring)
CHANNEL_SCALES: tuple[str, ...] = tuple(f"{t / 10:.1f}" for t in range(2, 21, 2))
PRESETS: tuple[str, ...] = ("imagenet", "cifar")
DROPOUT = 0.1  # reference nn.Dropout(0.1) before the classifier

#: The published SPOS block-search network (reference README: 323M FLOPs, 3.5M parameters,
#: 25.6% top-1 error on ImageNet), as the reference's block indices per choice block; its
#: channel scales are all 1.0 (the reference's evaluation ``train.py``).
SPOS_BLOCK_SEARCH: tuple[int, ...] = (2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)


@dataclass(frozen=True)
class ChoiceBlock:
    """One choice block of the backbone."""

    name: str  # bNN
    stage: int  # 1-based
    index: int  # 0-based inside the stage
    in_channels: int
    out_channels: int
    stride: int
    project: bool  # the two-branch form (first block of a stage)

    @property
    def base_mid(self) -> int:
        """The main-branch width at scale 1.0 (reference ``base_mid_channels = outp // 2``)."""
        return self.out_channels // 2

    def mid(self, scale: str) -> int:
        """``floor(base_mid * scale)`` computed exactly (``scale`` is an option like ``"1.2"``), at least 1."""
        tenths = round(float(scale) * 10)
        return max(1, self.base_mid * tenths // 10)


def _tenths(scale: str) -> int:
    return round(float(scale) * 10)


@register("space", "shufflenet")
class ShuffleNetSpace(SearchSpace):
    """The SPOS ShuffleNetV2 space: an op per choice block (and a channel scale with ``channels``).

    Args:
        preset: ``"imagenet"`` (the reference, total stride 32) or ``"cifar"`` (stem and first
            stage at stride 1, total stride 8).
        width_mult: multiplier of the stem and stage widths (rounded to multiples of 8).
        channels: also search each block's main-branch channel scale (SPOS channel search).

    Raises:
        ConfigError: a value outside the choices above, or a width too small for the blocks.
    """

    name: ClassVar[str] = "shufflenet"
    paper: ClassVar[str] = (
        "Guo, Zhang, Mu, Heng, Liu, Wei & Sun. Single Path One-Shot Neural Architecture Search with "
        "Uniform Sampling. ECCV 2020"
    )

    def __init__(self, *, preset: str = "imagenet", width_mult: float = 1.0, channels: bool = False) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown shufflenet preset {preset!r}; valid: {', '.join(PRESETS)}")
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
            raise ConfigError(f"width_mult must be a positive number, got {width_mult!r}")
        if not isinstance(channels, bool):
            raise ConfigError(f"channels must be True or False, got {channels!r}")
        self.preset, self.width_mult, self.channels = preset, float(width_mult), channels
        self.stem_stride = 2 if preset == "imagenet" else 1
        self.stem_channels = make_divisible(STEM_CHANNELS * self.width_mult)
        self.stage_channels = tuple(make_divisible(c * self.width_mult) for c in STAGE_CHANNELS)
        self.last_channels = make_divisible(LAST_CHANNELS * self.width_mult) if self.width_mult > 1 else LAST_CHANNELS
        blocks: list[ChoiceBlock] = []
        c_in = self.stem_channels
        for si, (n, c) in enumerate(zip(STAGE_REPEATS, self.stage_channels), start=1):
            if c <= c_in:
                raise ConfigError(
                    f"width_mult={width_mult} gives stage {si} {c} channels after {c_in}: a stage must widen "
                    f"(its first block's main branch has out - in channels); use a larger width_mult"
                )
            for li in range(n):
                stride = 1 if li > 0 or (preset == "cifar" and si == 1) else 2
                blocks.append(ChoiceBlock(f"b{len(blocks):02d}", si, li, c_in, c, stride, li == 0))
                c_in = c
        self.blocks: tuple[ChoiceBlock, ...] = tuple(blocks)
        self._decisions: dict[str, tuple[str, ...]] = {}
        for b in self.blocks:
            self._decisions[f"{b.name}_op"] = OPS
            if channels:
                self._decisions[f"{b.name}_ch"] = CHANNEL_SCALES

    # ---- what the space is -------------------------------------------------------------
    def decisions(self) -> dict[str, tuple[str, ...]]:
        return dict(self._decisions)

    def config(self) -> dict[str, Any]:
        return {"preset": self.preset, "width_mult": self.width_mult, "channels": self.channels}

    def scale(self, arch: Arch, block: ChoiceBlock) -> str:
        """The channel scale of ``block`` in ``arch`` (``"1.0"`` without channel search)."""
        return arch[f"{block.name}_ch"] if self.channels else "1.0"

    def from_reference(self, blocks: Sequence[int], scales: Sequence[float] | None = None) -> Arch:
        """The Arch of the reference's encoding: 20 block indices (0..3) and, with ``channels``,
        20 channel scales (values such as 1.2; default all 1.0)."""
        if len(blocks) != len(self.blocks) or any(not isinstance(i, int) or not 0 <= i < len(OPS) for i in blocks):
            raise ArchError(f"expected {len(self.blocks)} block indices in 0..{len(OPS) - 1}, got {list(blocks)}")
        mapping = {f"{b.name}_op": OPS[i] for b, i in zip(self.blocks, blocks)}
        if scales is not None and not self.channels:
            raise ArchError("channel scales given but this space has channels=False")
        if self.channels:
            values = [1.0] * len(self.blocks) if scales is None else list(scales)
            if len(values) != len(self.blocks):
                raise ArchError(f"expected {len(self.blocks)} channel scales, got {len(values)}")
            mapping.update({f"{b.name}_ch": f"{float(s):.1f}" for b, s in zip(self.blocks, values)})
        return self.make(mapping)

    # ---- strings -----------------------------------------------------------------------
    def format(self, arch: Arch) -> str:
        self.validate(arch)
        stages = []
        for si in range(1, len(STAGE_REPEATS) + 1):
            tokens = [arch[f"{b.name}_op"] + (f"@{arch[b.name + '_ch']}" if self.channels else "")
                      for b in self.blocks if b.stage == si]
            stages.append(" ".join(tokens))
        return " | ".join(stages)

    def parse(self, text: str) -> Arch:
        if not isinstance(text, str):
            raise ArchError(f"expected a shufflenet architecture string, got {type(text).__name__}")
        parts = [p.split() for p in text.strip().split("|")]
        if len(parts) != len(STAGE_REPEATS):
            raise ArchError(f"expected {len(STAGE_REPEATS)} stages separated by ' | ', got {len(parts)} in {text!r}")
        mapping: dict[str, str] = {}
        for si, (tokens, n) in enumerate(zip(parts, STAGE_REPEATS), start=1):
            if len(tokens) != n:
                raise ArchError(f"stage {si} has {n} choice blocks, got {len(tokens)}: {' '.join(tokens)!r}")
            for block, tok in zip((b for b in self.blocks if b.stage == si), tokens):
                op, sep, scale = tok.partition("@")
                if op not in OPS:
                    raise ArchError(f"unknown block {op!r} in {tok!r} (stage {si}); valid: {', '.join(OPS)}")
                mapping[f"{block.name}_op"] = op
                if self.channels:
                    if not sep:
                        raise ArchError(f"{tok!r} (stage {si}) lacks its channel scale: write {op}@SCALE with "
                                        f"SCALE one of {', '.join(CHANNEL_SCALES)}")
                    if scale not in CHANNEL_SCALES:
                        raise ArchError(f"channel scale {scale!r} in {tok!r} is not searched; valid: "
                                        f"{', '.join(CHANNEL_SCALES)}")
                    mapping[f"{block.name}_ch"] = scale
                elif sep:
                    raise ArchError(f"{tok!r}: this space has channels=False; drop '@{scale}' "
                                    "(or use channels=True)")
        return self.make(mapping)

    # ---- networks ----------------------------------------------------------------------
    def _block(self, block: ChoiceBlock, op: str, mid: int, affine: bool) -> nn.Module:
        kwargs: dict[str, Any] = {"stride": block.stride, "project": block.project, "affine": affine}
        if op == "xception":
            return XceptionBlock(block.in_channels, block.out_channels, mid, **kwargs)
        return ShuffleBlock(block.in_channels, block.out_channels, mid, kernel_size=int(op[-1]), **kwargs)

    def build(
        self, arch: Arch, *, num_classes: int = 10, in_channels: int = 3, dropout: float = DROPOUT, **kwargs: Any,
    ) -> nn.Module:
        """The stand-alone network of ``arch`` (affine BN, as the reference's evaluation network)."""
        if kwargs:
            raise ConfigError(f"unknown shufflenet network option(s) {sorted(kwargs)}; valid: dropout")
        self.validate(arch)
        blocks = {b.name: self._block(b, arch[f"{b.name}_op"], b.mid(self.scale(arch, b)), True) for b in self.blocks}
        return ShuffleNetOneShot(self, blocks, num_classes=num_classes, in_channels=in_channels, dropout=dropout)

    def supernet(
        self, *, num_classes: int = 10, in_channels: int = 3, dropout: float = DROPOUT, affine: bool = False,
        **kwargs: Any,
    ) -> ShuffleNetSupernet:
        """The SPOS supernet; ``affine=False`` BN as the reference's supernet."""
        if kwargs:
            raise ConfigError(f"unknown shufflenet supernet option(s) {sorted(kwargs)}; valid: dropout, affine")
        if not isinstance(affine, bool):
            raise ConfigError(f"affine must be True or False, got {affine!r}")
        return ShuffleNetSupernet(self, num_classes=num_classes, in_channels=in_channels, dropout=dropout,
                                  affine=affine)


def _add_trunk(net: nn.Module, space: ShuffleNetSpace, num_classes: int, in_channels: int, dropout: float,
               affine: bool) -> None:
    """Give ``net`` the stem, last conv, dropout and classifier (same names in both networks)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be a number in [0, 1), got {dropout!r}")
    net.first_conv = conv_bn(in_channels, space.stem_channels, 3, space.stem_stride, affine=affine)
    net.conv_last = conv_bn(space.stage_channels[-1], space.last_channels, 1, affine=affine)
    net.dropout = nn.Dropout(float(dropout))
    net.classifier = nn.Linear(space.last_channels, num_classes, bias=False)


def _classify(net: ShuffleNetOneShot | ShuffleNetSupernet, x: torch.Tensor) -> torch.Tensor:
    """Last conv, global average pool, dropout, classifier."""
    x = net.conv_last(x).mean(dim=(2, 3))
    out: torch.Tensor = net.classifier(net.dropout(x))
    return out


class ShuffleNetOneShot(nn.Module):
    """A stand-alone network of the space (the reference's evaluation ``ShuffleNetV2_OneShot``)."""

    first_conv: nn.Sequential
    conv_last: nn.Sequential
    dropout: nn.Dropout
    classifier: nn.Linear

    def __init__(
        self, space: ShuffleNetSpace, blocks: Mapping[str, nn.Module], *, num_classes: int, in_channels: int,
        dropout: float,
    ) -> None:
        super().__init__()
        _add_trunk(self, space, num_classes, in_channels, dropout, affine=True)
        self.blocks = nn.ModuleDict(dict(blocks))
        init_spos_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks.values():
            x = block(x)
        return _classify(self, x)


class ShuffleNetSupernet(Supernet):
    """SPOS supernet of a :class:`ShuffleNetSpace`; ``forward(x, path)`` runs one path (or op mixtures).

    ``path`` maps ``bNN_op`` to a selection of :class:`~nasforge.nn.choice.Choice` and, with
    channel search, ``bNN_ch`` to a channel scale option (a name, never a mixture).
    """

    first_conv: nn.Sequential
    conv_last: nn.Sequential
    dropout: nn.Dropout
    classifier: nn.Linear

    def __init__(self, space: ShuffleNetSpace, *, num_classes: int, in_channels: int, dropout: float,
                 affine: bool) -> None:
        super().__init__()
        _add_trunk(self, space, num_classes, in_channels, dropout, affine)
        self.space, self.num_classes, self.in_channels = space, num_classes, in_channels
        widest = CHANNEL_SCALES[-1] if space.channels else "1.0"
        self.blocks = nn.ModuleDict({
            b.name: self.add_choice(f"{b.name}_op", {op: space._block(b, op, b.mid(widest), affine) for op in OPS})
            for b in space.blocks
        })
        if space.channels:
            for b in space.blocks:  # width keys: decisions the policies see, sliced inside the blocks (no Choice)
                self._choice_keys[f"{b.name}_ch"] = CHANNEL_SCALES
        init_spos_weights(self)

    def forward(self, x: torch.Tensor, path: Path) -> torch.Tensor:
        self.check_path(path)
        x = self.first_conv(x)
        for b in self.space.blocks:
            inp: torch.Tensor | Sliced = x
            if self.space.channels:
                scale = path[f"{b.name}_ch"]
                if not isinstance(scale, str) or scale not in CHANNEL_SCALES:
                    raise ArchError(f"{b.name}_ch must select one channel scale by name ({', '.join(CHANNEL_SCALES)}); "
                                    f"got {scale!r} (mixtures over widths are not supported)")
                inp = Sliced(x, b.mid(scale))
            x = self.blocks[b.name](inp, path[f"{b.name}_op"])
        return _classify(self, x)

    def path_for(self, arch: object) -> dict[str, str]:
        if not isinstance(arch, Arch):
            raise ArchError(f"expected an Arch of space shufflenet, got {type(arch).__name__}")
        self.space.validate(arch)
        return dict(arch.choices)

    def subnet_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Weights of ``arch``'s path under the key names of ``space.build(arch)``'s network.

        Each tensor is the leading slice of the supernet's (the first ``mid`` channels of every
        sliced dimension); a BN without scale and shift (``affine=False``) gives scale 1 and shift
        0. ``build(arch, ...).load_state_dict(supernet.subnet_state_dict(arch))`` (strict) gives a
        network that computes exactly what ``supernet(x, path_for(arch))`` does.
        """
        path = self.path_for(arch)
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in self.space.build(
                arch, num_classes=self.num_classes, in_channels=self.in_channels).state_dict().items()}
        own = self.state_dict()
        out: dict[str, torch.Tensor] = {}
        for key, shape in shapes.items():
            source = key
            if key.startswith("blocks."):  # blocks.<b>.<rest> <- blocks.<b>.candidates.<op>.<rest>
                _, name, rest = key.split(".", 2)
                source = f"blocks.{name}.candidates.{path[name + '_op']}.{rest}"
            if source in own:
                value = own[source][tuple(slice(0, n) for n in shape)]
            elif key.endswith(".weight"):  # affine=False BN: identity scale
                value = torch.ones(shape)
            else:
                value = torch.zeros(shape)
            out[key] = value.detach().clone()
        return out
