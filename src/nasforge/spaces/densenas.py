"""The densely connected search space of DenseNAS (MBConv variant).

Paper: Fang, Sun, Zhang, Zhang, Liu & Wang, "Densely Connected Search Space for More Flexible
Neural Architecture Search", CVPR 2020 (arXiv:1906.09607). Reference code
``JaminFong/DenseNAS``: ``models/search_space_base.py`` (block layout, connections, betas),
``models/dropped_model.py`` (forward pass, chained cost), ``run_apis/derive_arch.py`` (Viterbi
path), ``configs/imagenet_search_cfg_mbv2.yaml`` (the layout used here).

Structure. A fixed stem (3x3 conv, stride 2 on ImageNet, to 16 channels) and a fixed MBConv1
k3 (16 -> 16) make *block 0*. Then come routing blocks of increasing width (the reference's
``net_scale``): widths ``24 | 32 40 48 | 56 64 72 | 96 112 128 | 160 176 192 | 320 352 384``
in stages 1..6 whose outputs are at 1/4, 1/8, 1/16, 1/16, 1/32, 1/32 of the input size; every
block of stages 1-5 has 3 stacked layers, the stage-6 blocks none. Last comes the *tail*: a
1x1 conv to 1984 channels, global pooling and the classifier. Each block ``i`` is connected to
the next ``M = connect`` blocks (the reference's ``adjoin_connect_nums``, 4), stopping at the
first one that is more than one stage further or whose feature map is not the same size or half
of it (``_create_output_list``); the tail is a block of its own stage after the last.

A block starts with one *head layer per incoming connection* (an MBConv that adapts width and
stride: stride 2 where the feature map halves) whose outputs are summed weighted by the
transition probabilities of the connections (reference ``HeadLayer``); then its stacked layers
follow (stride 1, same width), each a choice among MBConv ``k3/5/7 x e3/6`` and ``skip``
(``PRIMITIVES_stack``); a head is a choice among the MBConvs only (``PRIMITIVES_head``). The
tail's "heads" are the 1x1 convs, one per incoming block, without an op choice.

Decisions. ``b{i}_head`` for each searchable block ``i`` (1-based): its head op, or ``off`` when
the path does not visit block ``i`` (only offered when some connection jumps over ``i``);
``b{i}_l{j}``: the op of stacked layer ``j`` (``skip`` for every layer of a block that is not
visited, so an architecture has one canonical form). :meth:`DenseNasSpace.check` accepts only
paths whose consecutive visited blocks (from block 0 to the tail) are connected.

Text form: the visited blocks joined by ``" > "``, each ``b{i}:{head}`` followed by
``/{op},{op},...`` for blocks with stacked layers, e.g.
``b1:ir_k3_e3/ir_k5_e6,skip,skip > b3:ir_k3_e6/... > ... > b15:ir_k7_e6``.

Supernet. Heads are :class:`~nasforge.nn.choice.Choice` modules keyed ``b{t}_from{a}`` (the
connection ``a -> t``), stacked layers ``b{t}_l{j}``. A path gives a selection for each of those
keys and, under ``b{a}_out``, the transition weights of block ``a`` over its outgoing
connections (:meth:`DenseNasSupernet.transitions`; a tensor, or the name of one target). A head
edge with transition weight ``w`` runs as ``Choice(x, Mix(op_weights, w))`` and the edges into a
block are added with :func:`~nasforge.nn.choice.sum_edges`; edges of weight exactly 0 and blocks
no edge reaches are not run, so a one-hot path runs only its own blocks.

Deviations from the reference: heads, layers and the tail use nasforge's affine BatchNorm
(the reference's search supernet uses ``affine=False``); the tail width 1984 and all block widths
are scaled by ``width_mult`` (rounded to multiples of 8); ``preset="cifar"`` (not in the paper)
keeps the ImageNet layout with the stem and stage 1 at stride 1 so 32x32 inputs end at 4x4;
``blocks_per_stage`` and ``layers`` (not in the paper) shrink the space for quick runs and tests.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import nn

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.nn.blocks import ConvBNAct, MBConv, init_mobile_weights, make_divisible
from nasforge.nn.choice import Choice, Mix, Path, Selection, Supernet, sum_edges
from nasforge.registry import register
from nasforge.spaces.base import SearchSpace

#: (channels, stage, output stride on ImageNet, stacked layers) of block 0 and the routing blocks
#: (reference ``imagenet_search_cfg_mbv2.yaml``: ``chs``, ``stage``, ``fm_sizes`` 224 / stride, ``num_layers``).
IMAGENET_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (16, 0, 2, 0), (24, 1, 4, 3),
    (32, 2, 8, 3), (40, 2, 8, 3), (48, 2, 8, 3),
    (56, 3, 16, 3), (64, 3, 16, 3), (72, 3, 16, 3),
    (96, 4, 16, 3), (112, 4, 16, 3), (128, 4, 16, 3),
    (160, 5, 32, 3), (176, 5, 32, 3), (192, 5, 32, 3),
    (320, 6, 32, 0), (352, 6, 32, 0), (384, 6, 32, 0),
)
PRESETS: tuple[str, ...] = ("imagenet", "cifar")
STEM_CHANNELS = 16  # reference optim.init_dim (block 0's MBConv1 goes to head_dim = 16 = IMAGENET_BLOCKS[0])
TAIL_CHANNELS = 1984  # reference optim.last_dim
CONNECT = 4  # reference adjoin_connect_nums (4 for every stage)
OFF, SKIP, TAIL = "off", "skip", "tail"
TAIL_OP = "conv1x1"

_OP_RE = re.compile(r"ir_k(\d+)_e(\d+)")
_BLOCK_RE = re.compile(r"b(\d+):([A-Za-z0-9_]+)(?:/(.*))?")


@dataclass(frozen=True)
class DenseBlock:
    """Block 0, a routing block or the tail (``index == len(blocks) - 1``)."""

    index: int
    name: str  # "b{index}" or "tail"
    channels: int
    stage: int
    scale: int  # output stride relative to the input image
    layers: int  # stacked layers


@dataclass(frozen=True)
class Connection:
    """The edge ``source -> target`` (block indices); its head is the choice ``key``."""

    source: int
    target: int
    stride: int
    key: str  # "{target name}_from{source}"


def parse_op(option: str) -> tuple[int, int]:
    """(kernel, expansion) of an ``ir_k{k}_e{e}`` option."""
    m = _OP_RE.fullmatch(option)
    if m is None:
        raise ArchError(f"not an MBConv option: {option!r}")
    return int(m.group(1)), int(m.group(2))


def _int_tuple(what: str, values: Sequence[int]) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{what} must be a non-empty sequence of integers, got {values!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"{what} must be distinct positive integers, got {list(values)!r}")
    return tuple(values)


def _optional_int(what: str, value: object, low: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{what} must be None or an integer >= {low}, got {value!r}")
    return value


@register("space", "densenas")
class DenseNasSpace(SearchSpace):
    """DenseNAS' densely connected MBConv space (see the module docstring).

    Args:
        preset: ``"imagenet"`` (the reference layout, 224x224) or ``"cifar"`` (stem and stage 1
            at stride 1: total stride 8).
        width_mult: multiplier of every width (rounded to multiples of 8).
        kernels: depthwise kernels of the MBConv candidates (reference 3, 5, 7).
        expansions: expansion ratios of the MBConv candidates (reference 3, 6).
        connect: ``M``, how many following blocks each block connects to (reference 4).
        layers: stacked layers of every block that has some (None: the preset's 3).
        blocks_per_stage: keep only the first (narrowest) blocks of each stage (None: all).

    Raises:
        ConfigError: a value outside the choices above.
    """

    name: ClassVar[str] = "densenas"
    paper: ClassVar[str] = (
        "Fang, Sun, Zhang, Zhang, Liu & Wang. Densely Connected Search Space for More Flexible Neural "
        "Architecture Search. CVPR 2020"
    )

    def __init__(
        self, *, preset: str = "imagenet", width_mult: float = 1.0, kernels: Sequence[int] = (3, 5, 7),
        expansions: Sequence[int] = (3, 6), connect: int = CONNECT, layers: int | None = None,
        blocks_per_stage: int | None = None,
    ) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown densenas preset {preset!r}; valid: {', '.join(PRESETS)}")
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
            raise ConfigError(f"width_mult must be a positive number, got {width_mult!r}")
        self.kernels = _int_tuple("kernels", kernels)
        if any(k % 2 == 0 for k in self.kernels):
            raise ConfigError(f"kernels must be odd, got {list(self.kernels)}")
        self.expansions = _int_tuple("expansions", expansions)
        if isinstance(connect, bool) or not isinstance(connect, int) or connect < 1:
            raise ConfigError(f"connect (M) must be an integer >= 1, got {connect!r}")
        self.preset, self.width_mult, self.connect = preset, float(width_mult), connect
        self.layers = _optional_int("layers", layers, 0)
        self.blocks_per_stage = _optional_int("blocks_per_stage", blocks_per_stage, 1)
        self.stem_stride = 2 if preset == "imagenet" else 1
        self.stem_channels = self._ch(STEM_CHANNELS)
        self.tail_channels = self._ch(TAIL_CHANNELS)

        kept: list[tuple[int, int, int, int]] = []
        per_stage: dict[int, int] = {}
        for c, stage, scale, n in IMAGENET_BLOCKS:
            per_stage[stage] = per_stage.get(stage, 0) + 1
            if self.blocks_per_stage is not None and per_stage[stage] > self.blocks_per_stage:
                continue
            scale = scale if preset == "imagenet" else max(1, scale // 4)
            n = n if (self.layers is None or n == 0) else self.layers
            kept.append((self._ch(c), stage, scale, n))
        last_c, last_stage, last_scale, _ = kept[-1]
        blocks = [DenseBlock(i, f"b{i}", c, s, sc, n) for i, (c, s, sc, n) in enumerate(kept)]
        blocks.append(DenseBlock(len(kept), TAIL, self.tail_channels, last_stage + 1, last_scale, 0))
        self.blocks: tuple[DenseBlock, ...] = tuple(blocks)
        self.tail = len(kept)
        self.connections: tuple[Connection, ...] = tuple(self._connect())
        self.head_ops: tuple[str, ...] = tuple(f"ir_k{k}_e{e}" for k in self.kernels for e in self.expansions)
        self.stack_ops: tuple[str, ...] = self.head_ops + (SKIP,)
        self._decisions: dict[str, tuple[str, ...]] = {}
        for b in self.blocks[1:-1]:
            skippable = any(c.source < b.index < c.target for c in self.connections)
            self._decisions[f"{b.name}_head"] = ((OFF,) if skippable else ()) + self.head_ops
            for j in range(b.layers):
                self._decisions[f"{b.name}_l{j}"] = self.stack_ops

    def _ch(self, channels: int) -> int:
        return make_divisible(channels * self.width_mult)

    def _connect(self) -> list[Connection]:
        """The reference's ``_create_output_list``: next ``M`` blocks, at most one stage on, scale x1 or x2."""
        out = []
        for a in self.blocks[:-1]:
            for t in self.blocks[a.index + 1: a.index + 1 + self.connect]:
                ratio = t.scale / a.scale
                if t.stage - a.stage > 1 or ratio not in (1.0, 2.0):
                    break
                out.append(Connection(a.index, t.index, int(ratio), f"{t.name}_from{a.index}"))
        for b in self.blocks:
            if b.index > 0 and not any(c.target == b.index for c in out):
                raise ConfigError(f"densenas block {b.name} has no incoming connection (connect={self.connect})")
            if b.index < self.tail and not any(c.source == b.index for c in out):
                raise ConfigError(f"densenas block {b.name} has no outgoing connection (connect={self.connect})")
        return out

    # ---- structure -----------------------------------------------------------------------
    def incoming(self, target: int) -> list[Connection]:
        return [c for c in self.connections if c.target == target]

    def outgoing(self, source: int) -> list[Connection]:
        return [c for c in self.connections if c.source == source]

    def connection(self, source: int, target: int) -> Connection:
        for c in self.connections:
            if (c.source, c.target) == (source, target):
                return c
        valid = ", ".join(self.blocks[c.target].name for c in self.outgoing(source))
        raise ArchError(f"block b{source} is not connected to {self.blocks[target].name}; it connects to: {valid}")

    @staticmethod
    def transition_key(source: int) -> str:
        """Path key of block ``source``'s transition weights (over :meth:`outgoing`)."""
        return f"b{source}_out"

    def visited(self, arch: Arch) -> list[int]:
        """Block indices the path of ``arch`` visits, from 0 to the tail (not validated)."""
        return [0] + [b.index for b in self.blocks[1:-1] if arch[f"{b.name}_head"] != OFF] + [self.tail]

    def make_path(self, blocks: Sequence[int], ops: Mapping[str, str]) -> Arch:
        """The Arch visiting searchable ``blocks`` (ascending) with ``ops`` for their heads and layers.

        ``ops`` maps ``b{i}_head`` / ``b{i}_l{j}`` of the visited blocks to options; the decisions of
        the other blocks get ``off`` / ``skip``.
        """
        on = set(blocks)
        mapping: dict[str, str] = {}
        for b in self.blocks[1:-1]:
            mapping[f"{b.name}_head"] = ops[f"{b.name}_head"] if b.index in on else OFF
            for j in range(b.layers):
                mapping[f"{b.name}_l{j}"] = ops[f"{b.name}_l{j}"] if b.index in on else SKIP
        return self.make(mapping)

    # ---- the contract --------------------------------------------------------------------
    def decisions(self) -> dict[str, tuple[str, ...]]:
        return dict(self._decisions)

    def config(self) -> dict[str, Any]:
        return {"preset": self.preset, "width_mult": self.width_mult, "kernels": list(self.kernels),
                "expansions": list(self.expansions), "connect": self.connect, "layers": self.layers,
                "blocks_per_stage": self.blocks_per_stage}

    def size(self) -> int:
        """Exact number of architectures: over every path, the product of its blocks' op choices."""
        count = {self.tail: 1}
        for a in range(self.tail - 1, -1, -1):
            count[a] = sum(
                count[c.target] * (1 if c.target == self.tail else
                                   len(self.head_ops) * len(self.stack_ops) ** self.blocks[c.target].layers)
                for c in self.outgoing(a))
        return count[0]

    def check(self, arch: Arch) -> None:
        path = self.visited(arch)
        for a, t in zip(path, path[1:]):
            self.connection(a, t)  # raises naming the valid targets
        for b in self.blocks[1:-1]:
            if arch[f"{b.name}_head"] == OFF:
                bad = [f"{b.name}_l{j}" for j in range(b.layers) if arch[f"{b.name}_l{j}"] != SKIP]
                if bad:
                    raise ArchError(f"block {b.name} is not visited (head off) but its layers {bad} are not skip")

    def sample(self, rng: random.Random) -> Arch:
        """A random walk from block 0 to the tail (uniform over each block's connections), then
        uniform ops on the visited blocks (not the base class's per-decision uniform draw, which
        would almost never give a valid path)."""
        blocks, ops, cur = [], {}, 0
        while True:
            cur = rng.choice(self.outgoing(cur)).target
            if cur == self.tail:
                break
            blocks.append(cur)
            ops[f"b{cur}_head"] = rng.choice(self.head_ops)
            for j in range(self.blocks[cur].layers):
                ops[f"b{cur}_l{j}"] = rng.choice(self.stack_ops)
        return self.make_path(blocks, ops)

    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        """Change one decision; turning a block off resets its layers to ``skip`` and turning one
        on draws its layers uniformly; invalid paths are redrawn."""
        self.validate(arch)
        names = [d for d, opts in self._decisions.items() if len(opts) > 1]
        if not names:
            raise ArchError("space densenas has no decision with more than one option")
        for _ in range(10_000):
            d = rng.choice(names)
            option = rng.choice([o for o in self._decisions[d] if o != arch[d]])
            changes = {d: option}
            if d.endswith("_head"):
                block = self.blocks[int(d[1:-len("_head")])]
                for j in range(block.layers):
                    key = f"{block.name}_l{j}"
                    if option == OFF:
                        changes[key] = SKIP
                    elif arch[d] == OFF:
                        changes[key] = rng.choice(self.stack_ops)
            child = arch.replace(**changes)
            if self.is_valid(child):
                return child
        raise ArchError(f"could not mutate {self.format(arch)} into a valid architecture")

    def format(self, arch: Arch) -> str:
        self.validate(arch)
        parts = []
        for i in self.visited(arch)[1:-1]:
            b = self.blocks[i]
            text = f"{b.name}:{arch[f'{b.name}_head']}"
            if b.layers:
                text += "/" + ",".join(arch[f"{b.name}_l{j}"] for j in range(b.layers))
            parts.append(text)
        return " > ".join(parts)

    def parse(self, text: str) -> Arch:
        if not isinstance(text, str):
            raise ArchError(f"expected a densenas architecture string, got {type(text).__name__}")
        blocks: list[int] = []
        ops: dict[str, str] = {}
        for token in (t.strip() for t in text.split(">")):
            m = _BLOCK_RE.fullmatch(token)
            if m is None:
                raise ArchError(f"cannot parse {token!r}; expected b<i>:<head op>[/<op>,<op>,...] "
                                "(visited blocks joined by ' > ')")
            i = int(m.group(1))
            if not 1 <= i < self.tail:
                raise ArchError(f"{token!r}: block b{i} does not exist; searchable blocks are b1..b{self.tail - 1}")
            if blocks and i <= blocks[-1]:
                raise ArchError(f"{token!r}: blocks must be listed in increasing order (b{blocks[-1]} came before)")
            if m.group(2) not in self.head_ops:
                raise ArchError(f"{token!r}: head op {m.group(2)!r} is not valid; valid: {', '.join(self.head_ops)}")
            layer_ops = [] if m.group(3) is None else [o.strip() for o in m.group(3).split(",")]
            n = self.blocks[i].layers
            if len(layer_ops) != n:
                raise ArchError(f"{token!r}: block b{i} has {n} stacked layer(s), got {len(layer_ops)} op(s)")
            blocks.append(i)
            ops[f"b{i}_head"] = m.group(2)
            for j, o in enumerate(layer_ops):
                if o not in self.stack_ops:
                    raise ArchError(f"{token!r}: layer op {o!r} is not valid; valid: {', '.join(self.stack_ops)}")
                ops[f"b{i}_l{j}"] = o
        return self.make_path(blocks, ops)

    def derive(self, weights: Mapping[str, Any]) -> Arch:
        """The paper's decoding (reference ``derive_arch.py``): the path of largest product of
        transition probabilities (Viterbi over the ``b{a}_out`` entries of ``weights``), then the
        op of largest weight of every head and layer on it (first on ties)."""
        missing = [self.transition_key(a.index) for a in self.blocks[:-1] if self.transition_key(a.index) not in weights]
        if missing:
            raise ConfigError(f"densenas derives from op weights and transition weights; missing {missing[:4]} "
                              f"({len(missing)} transition key(s) b<i>_out)")
        path = viterbi_path(self, {self.transition_key(a.index): weights[self.transition_key(a.index)]
                                   for a in self.blocks[:-1]})
        ops: dict[str, str] = {}
        for a, t in zip(path, path[1:-1]):
            head = self.connection(a, t).key
            ops[f"b{t}_head"] = self.head_ops[_argmax(weights[head])]
            for j in range(self.blocks[t].layers):
                ops[f"b{t}_l{j}"] = self.stack_ops[_argmax(weights[f"b{t}_l{j}"])]
        return self.make_path(path[1:-1], ops)

    # ---- networks ------------------------------------------------------------------------
    def _op(self, option: str, c_in: int, c_out: int, stride: int) -> nn.Module:
        if option == SKIP:
            return nn.Identity()
        if option == TAIL_OP:
            return ConvBNAct(c_in, c_out, 1)
        k, e = parse_op(option)
        return MBConv(c_in, c_out, k, stride, e)

    def head_module(self, connection: Connection, option: str) -> nn.Module:
        """The head op ``option`` of ``connection`` (a 1x1 conv for the tail's)."""
        a, t = self.blocks[connection.source], self.blocks[connection.target]
        return self._op(option, a.channels, t.channels, connection.stride)

    def layer_module(self, block: int, option: str) -> nn.Module:
        c = self.blocks[block].channels
        return self._op(option, c, c, 1)

    def stem_module(self, in_channels: int) -> nn.Sequential:
        """Block 0: the stem conv and the fixed MBConv1 k3 (reference ``input_block``, ``head_block``)."""
        return nn.Sequential(ConvBNAct(in_channels, self.stem_channels, 3, self.stem_stride),
                             MBConv(self.stem_channels, self.blocks[0].channels, 3, 1, 1))

    def _check_net_args(self, num_classes: int, in_channels: int, dropout: float, extra: Mapping[str, Any]) -> None:
        if extra:
            raise ConfigError(f"unknown network option(s) {sorted(extra)}; valid: num_classes, in_channels, dropout")
        for what, v in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{what} must be a positive integer, got {v!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")

    def build(self, arch: Arch, *, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0,
              **kwargs: Any) -> DenseNasNet:
        """The stand-alone network of ``arch``: its visited blocks in a chain."""
        self.validate(arch)
        self._check_net_args(num_classes, in_channels, dropout, kwargs)
        return DenseNasNet(self, arch, num_classes=num_classes, in_channels=in_channels, dropout=float(dropout))

    def supernet(self, *, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0,
                 **kwargs: Any) -> DenseNasSupernet:
        self._check_net_args(num_classes, in_channels, dropout, kwargs)
        return DenseNasSupernet(self, num_classes=num_classes, in_channels=in_channels, dropout=float(dropout))


def _argmax(values: Any) -> int:
    t = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    return int(torch.argmax(t))


def viterbi_path(space: DenseNasSpace, transitions: Mapping[str, Any]) -> list[int]:
    """The block path (0 ... tail) of largest product of transition probabilities.

    ``transitions[b{a}_out]`` holds block ``a``'s probabilities over ``space.outgoing(a)``. As the
    reference ``derive_chs``, blocks are scored in order, each keeping its best predecessor; ties
    keep the first (lowest) predecessor.
    """
    best: dict[int, tuple[float, int]] = {0: (0.0, -1)}  # block -> (log prob, predecessor)
    for t in range(1, space.tail + 1):
        for c in space.incoming(t):
            if c.source not in best:
                continue
            probs = torch.as_tensor(transitions[space.transition_key(c.source)], dtype=torch.float64).detach().cpu()
            j = [o.target for o in space.outgoing(c.source)].index(t)
            p = float(probs[j])
            score = best[c.source][0] + (math.log(p) if p > 0 else -math.inf)
            if t not in best or score > best[t][0]:
                best[t] = (score, c.source)
    path, cur = [space.tail], space.tail
    while cur != 0:
        cur = best[cur][1]
        path.append(cur)
    return path[::-1]


class DenseNasNet(nn.Module):
    """Stand-alone network of one architecture: stem, the visited blocks in order, tail, classifier.

    Module names (``stem``, ``blocks.b{i}.head``, ``blocks.b{i}.l{j}``, ``tail``, ``classifier``) are
    what :meth:`DenseNasSupernet.subnet_state_dict` maps the supernet's weights onto.
    """

    def __init__(self, space: DenseNasSpace, arch: Arch, *, num_classes: int, in_channels: int, dropout: float) -> None:
        super().__init__()
        path = space.visited(arch)
        self.stem = space.stem_module(in_channels)
        self.blocks = nn.ModuleDict()
        for a, t in zip(path[:-2], path[1:-1]):
            b = space.blocks[t]
            mods: dict[str, nn.Module] = {"head": space.head_module(space.connection(a, t), arch[f"{b.name}_head"])}
            for j in range(b.layers):
                mods[f"l{j}"] = space.layer_module(t, arch[f"{b.name}_l{j}"])
            self.blocks[b.name] = nn.ModuleDict(mods)
        self.tail = space.head_module(space.connection(path[-2], space.tail), TAIL_OP)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(space.tail_channels, num_classes)
        init_mobile_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks.values():
            for layer in cast(nn.ModuleDict, block).values():
                x = layer(x)
        return self.classifier(self.dropout(self.pool(self.tail(x)).flatten(1)))


class DenseNasSupernet(Supernet):
    """Every block, every head of every connection and every stacked layer with its own weights.

    ``forward(x, path)``: ``path`` holds a selection for every key of :meth:`choices` (heads
    ``b{t}_from{a}``, layers ``b{t}_l{j}``) and the transition weights of every block under
    :meth:`transitions`' keys (see the module docstring).
    """

    def __init__(self, space: DenseNasSpace, *, num_classes: int, in_channels: int, dropout: float) -> None:
        super().__init__()
        self.space = space
        self.stem = space.stem_module(in_channels)
        self.heads = nn.ModuleDict()
        self.tails = nn.ModuleDict()
        for c in space.connections:
            if c.target == space.tail:
                # no op choice on the tail's 1x1 convs: a one-candidate Choice, used for the Mix only
                self.tails[c.key] = Choice({TAIL_OP: space.head_module(c, TAIL_OP)})
            else:
                self.heads[c.key] = self.add_choice(c.key, {o: space.head_module(c, o) for o in space.head_ops})
        self.layers = nn.ModuleDict({
            f"{b.name}_l{j}": self.add_choice(f"{b.name}_l{j}", {o: space.layer_module(b.index, o) for o in space.stack_ops})
            for b in space.blocks[1:-1] for j in range(b.layers)
        })
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(space.tail_channels, num_classes)
        init_mobile_weights(self)

    def transitions(self) -> dict[str, tuple[str, ...]]:
        """Path key ``b{a}_out`` -> the names of block ``a``'s targets (order of the weights)."""
        sp = self.space
        return {sp.transition_key(a.index): tuple(sp.blocks[c.target].name for c in sp.outgoing(a.index))
                for a in sp.blocks[:-1]}

    def _edge(self, path: Path, c: Any) -> tuple[nn.Module, Selection] | None:
        """The (choice, selection) of connection ``c`` under ``path``, or None if its weight is 0."""
        sp = self.space
        names = [sp.blocks[o.target].name for o in sp.outgoing(c.source)]
        trans = path[sp.transition_key(c.source)]
        j = names.index(sp.blocks[c.target].name)
        choice = cast(Choice, self.tails[c.key] if c.target == sp.tail else self.heads[c.key])
        op: Any = TAIL_OP if c.target == sp.tail else path[c.key]
        if isinstance(trans, str):
            if trans not in names:
                raise ArchError(f"transition {trans!r} of block b{c.source} is not valid; valid: {', '.join(names)}")
            return (choice, op) if trans == names[j] else None
        if not isinstance(trans, torch.Tensor) or trans.dim() != 1 or trans.numel() != len(names):
            raise ArchError(f"transition weights of block b{c.source} must be a 1-D tensor over {', '.join(names)}")
        if float(trans.detach()[j]) == 0.0:
            return None
        if not isinstance(op, (str, torch.Tensor)):
            raise ArchError(f"selection of {c.key} must be an op name or a weight tensor, got {type(op).__name__}")
        if isinstance(op, str):
            options = choice.options
            if op not in options:
                raise ArchError(f"unknown option {op!r} for {c.key}; valid: {', '.join(options)}")
            onehot = torch.zeros(len(options), dtype=trans.dtype, device=trans.device)
            onehot[options.index(op)] = 1.0
            op = onehot
        return choice, Mix(op, trans[j])

    def forward(self, x: torch.Tensor, path: Path) -> torch.Tensor:
        self.check_path(path)
        sp = self.space
        missing = [k for k in self.transitions() if k not in path]
        if missing:
            raise ArchError(f"path lacks transition keys {missing[:5]}")
        outputs = {0: self.stem(x)}
        for t in range(1, sp.tail + 1):
            edges = []
            for c in sp.incoming(t):
                if c.source in outputs:
                    edge = self._edge(path, c)
                    if edge is not None:
                        edges.append((edge[0], outputs[c.source], edge[1]))
            if not edges:
                if t == sp.tail:
                    raise ArchError("the path reaches no block connected to the tail")
                continue
            y = sum_edges(edges)
            for j in range(sp.blocks[t].layers):
                key = f"b{t}_l{j}"
                y = self.layers[key](y, path[key])
            outputs[t] = y
        return self.classifier(self.dropout(self.pool(outputs[sp.tail]).flatten(1)))

    def path_for(self, arch: object) -> dict[str, str]:
        """The one-hot path of ``arch``: op names on its blocks, each visited block's next block
        as its transition (keys off the path get their first option; they never run)."""
        if not isinstance(arch, Arch):
            raise ArchError(f"expected an Arch of space densenas, got {type(arch).__name__}")
        sp = self.space
        sp.validate(arch)
        path: dict[str, str] = {k: opts[0] for k, opts in self.choices().items()}
        for key, targets in self.transitions().items():
            path[key] = targets[0]
        visited = sp.visited(arch)
        for a, t in zip(visited, visited[1:]):
            path[sp.transition_key(a)] = sp.blocks[t].name
            if t != sp.tail:
                path[sp.connection(a, t).key] = arch[f"b{t}_head"]
                for j in range(sp.blocks[t].layers):
                    path[f"b{t}_l{j}"] = arch[f"b{t}_l{j}"]
        return path

    def subnet_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Weights of ``arch``'s path under the names of ``space.build(arch)``'s network (strict load)."""
        sp = self.space
        visited = sp.visited(arch)
        sp.validate(arch)
        used_heads = {sp.connection(a, t).key: t for a, t in zip(visited, visited[1:])}
        on = set(visited)
        out: dict[str, torch.Tensor] = {}
        for key, value in self.state_dict().items():
            top, _, rest = key.partition(".")
            if top in ("stem", "classifier"):
                out[key] = value.detach().clone()
                continue
            name, _, rest = rest.partition(".")  # rest: candidates.<option>.<param>
            _, option, param = rest.split(".", 2)
            if top == "tails" and name in used_heads:
                out[f"tail.{param}"] = value.detach().clone()
            elif top == "heads" and name in used_heads and option == arch[f"b{used_heads[name]}_head"]:
                out[f"blocks.b{used_heads[name]}.head.{param}"] = value.detach().clone()
            elif top == "layers":
                block, layer = name.split("_")
                if int(block[1:]) in on and option == arch[name]:
                    out[f"blocks.{block}.{layer}.{param}"] = value.detach().clone()
        return out
