"""The NAS-Bench-201 cell search space.

Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture Search",
ICLR 2020. Reference implementation: ``D-X-Y/AutoDL-Projects`` (``xautodl``), namely
``models/cell_infers/tiny_network.py`` (``TinyNetwork``), ``models/cell_infers/cells.py``
(``InferCell``), ``models/cell_operations.py`` (``ResNetBasicblock``, ``OPS``) and
``models/cell_searchs/genotypes.py`` (``Structure.str2structure``, the cell string).

A cell is a DAG on 4 nodes; every edge ``i -> j`` (``i < j``) carries one of 5 operations, so
there are ``5 ** 6 = 15,625`` cells, all valid. The network stacks the same cell ``3 * N`` times
in three stages of ``C``, ``2C``, ``4C`` channels separated by ResNet basic reduction blocks.

Decision names are ``edge_<to>_<from>`` in the official edge order (0->1), (0->2), (1->2),
(0->3), (1->3), (2->3), and options are in the official op order, so
:meth:`~nasforge.spaces.base.SearchSpace.encode_sequence` gives the benchmark's ``op_e`` codes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.nn.choice import Choice, Path, Supernet, sum_edges
from nasforge.nn.ops import NB201_OPS, ReLUConvBN
from nasforge.registry import register
from nasforge.spaces.base import ComplexityStage, SearchSpace

#: The 5 operations in the official order (index = the benchmark's ``op_e`` code).
OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

#: ``(to, from)`` node pairs in the official edge order.
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))

#: Decision names, one per edge, in canonical order.
EDGE_NAMES: tuple[str, ...] = tuple(f"edge_{to}_{frm}" for to, frm in EDGES)

_INDEX = re.compile(r"[0-9]+")
_NUM_NODES = 4  # input node 0 plus 3 intermediate nodes; node 3 is the cell output


def _edge_name(to: int, frm: int) -> str:
    return f"edge_{to}_{frm}"


def _check_partial(C: int, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"partial_channels must be an int >= 1, got {k!r}")
    if C % k:
        raise ConfigError(f"partial_channels={k} must divide the supernet width C={C}")


def _check_net_args(num_classes: int, in_channels: int, C: int, N: int, extra: Mapping[str, Any]) -> None:
    if extra:
        raise ConfigError(
            f"unknown nb201 network option(s) {sorted(extra)}; valid: num_classes, in_channels, C, N"
        )
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels), ("C", C), ("N", N)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"nb201 network option {label} must be a positive int, got {value!r}")


# ---- networks ------------------------------------------------------------------------------
class ResNetBasicBlock(nn.Module):
    """The reduction block between NB201 stages (xautodl ``ResNetBasicblock``, stride 2).

    ``conv_b(conv_a(x)) + downsample(x)`` with ``downsample = AvgPool2d(2, 2) -> Conv1x1``.
    """

    def __init__(self, C_in: int, C_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        # ceil_mode keeps the shortcut the same size as conv_a's output on odd inputs (xautodl only
        # ever sees even sizes, where ceil_mode changes nothing), so any input >= 8x8 works.
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0, ceil_mode=True),
            nn.Conv2d(C_in, C_out, kernel_size=1, stride=1, padding=0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.downsample(x)


class NB201Cell(nn.Module):
    """One fixed NB201 cell (xautodl ``InferCell`` at stride 1, ``C`` channels in and out).

    Edges whose op is ``none`` are dropped (they only ever add zeros); a node with no remaining
    input is a zero tensor, which later edges still process exactly as the reference does
    (its ``Zero`` op returns ``x * 0``), so outputs equal the supernet's on the same path.
    Module names are ``edges.<decision>`` so :meth:`NB201Supernet.subnet_state_dict` maps onto
    this cell by dropping ``candidates.<op>.``.
    """

    def __init__(self, arch: Arch, C: int) -> None:
        super().__init__()
        self.edges = nn.ModuleDict()
        for to, frm in EDGES:
            op = arch[_edge_name(to, frm)]
            if op != "none":
                self.edges[_edge_name(to, frm)] = NB201_OPS[op](C, C, 1, True, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for to in range(1, _NUM_NODES):
            out: torch.Tensor | None = None
            for frm in range(to):
                name = _edge_name(to, frm)
                if name in self.edges:
                    y = self.edges[name](nodes[frm])
                    out = y if out is None else out + y
            nodes.append(torch.zeros_like(x) if out is None else out)
        return nodes[-1]


def _skeleton(
    make_cell: Callable[[int], nn.Module], *, num_classes: int, in_channels: int, C: int, N: int
) -> tuple[nn.Sequential, nn.ModuleList, nn.Sequential, nn.Linear]:
    """The TinyNetwork layout: stem, 3 stages of ``N`` cells joined by 2 reductions, head.

    One function for the stand-alone network and the supernet so that both get the same module
    names (``stem``, ``cells.<k>``, ``lastact``, ``classifier``), hence matching state-dict keys.
    """
    stem = nn.Sequential(nn.Conv2d(in_channels, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C))
    cells = nn.ModuleList()
    C_prev = C
    for stage, C_curr in enumerate((C, 2 * C, 4 * C)):
        if stage > 0:
            cells.append(ResNetBasicBlock(C_prev, C_curr))
        for _ in range(N):
            cells.append(make_cell(C_curr))
        C_prev = C_curr
    lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=False))
    return stem, cells, lastact, nn.Linear(C_prev, num_classes)


class TinyNetwork(nn.Module):
    """The stand-alone NB201 network of one cell (xautodl ``TinyNetwork``); ``forward`` gives logits.

    With ``C=16, N=5, num_classes=10`` its parameter count (every parameter: BN affine and the
    classifier included, as NB201's ``count_parameters_in_MB``) equals the table's ``params_mb``.
    """

    def __init__(self, arch: Arch, *, num_classes: int = 10, in_channels: int = 3, C: int = 16, N: int = 5) -> None:
        super().__init__()
        self.arch_str = NB201Space().format(arch)
        self.stem, self.cells, self.lastact, self.classifier = _skeleton(
            lambda c: NB201Cell(arch, c), num_classes=num_classes, in_channels=in_channels, C=C, N=N
        )
        self.global_pooling = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.stem(x)
        for cell in self.cells:
            feature = cell(feature)
        return self.classifier(self.global_pooling(self.lastact(feature)).flatten(1))

    def extra_repr(self) -> str:
        return f"arch={self.arch_str}"


class NB201SearchCell(nn.Module):
    """A supernet cell: one :class:`~nasforge.nn.choice.Choice` over the 5 ops on every edge.

    Like xautodl ``NAS201SearchCell`` but the selection comes from the explicit ``path``.
    """

    def __init__(self, edges: Mapping[str, Choice]) -> None:
        super().__init__()
        self.edges = nn.ModuleDict(dict(edges))

    def forward(self, x: torch.Tensor, path: Path) -> torch.Tensor:
        nodes = [x]
        for to in range(1, _NUM_NODES):
            names = [_edge_name(to, frm) for frm in range(to)]
            nodes.append(sum_edges((self.edges[n], nodes[frm], path[n]) for frm, n in enumerate(names)))
        return nodes[-1]


class NB201Supernet(Supernet):
    """Weight-sharing NB201 supernet: the TinyNetwork skeleton with a :class:`Choice` per edge.

    As in NB201 (one cell searched, repeated), every cell reads the same 6 path keys (the edge
    decisions); each cell owns its own candidate weights. ``forward(x, path)`` maps each edge
    name to an op name (single path) or to a 1-D weight tensor over :data:`OPS` (mixture;
    zero-weight ops are not run). Module names match :class:`TinyNetwork`'s, up to the
    ``candidates.<op>`` level of each :class:`Choice` (see :meth:`subnet_state_dict`).

    Args:
        num_classes, in_channels, C, N: as in :meth:`NB201Space.build`.
        affine, track_running_stats: BN settings of the candidate ops inside the cells (xautodl's
            DARTS/GDAS search on NB201 uses ``affine=False``); stem, reduction blocks and head keep
            ordinary BN. With both True (default) :meth:`subnet_state_dict` fills a stand-alone
            network completely.
        partial_channels: PC-DARTS ``K``: candidates see ``1/K`` of each cell's channels (the
            rest bypass them, see :class:`~nasforge.nn.choice.Choice`); 1 (default) is off.
        edge_ops: P-DARTS search-space approximation: edge name -> the operations kept on it
            (in :data:`OPS` order); edges not named keep all 5.
    """

    def __init__(
        self, *, num_classes: int = 10, in_channels: int = 3, C: int = 16, N: int = 5,
        affine: bool = True, track_running_stats: bool = True, partial_channels: int = 1,
        edge_ops: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        self._space = NB201Space()
        _check_partial(C, partial_channels)
        edge_ops = dict(edge_ops or {})
        unknown = sorted(set(edge_ops) - set(EDGE_NAMES))
        if unknown:
            raise ConfigError(f"edge_ops names unknown edges {unknown}; valid: {', '.join(EDGE_NAMES)}")
        for name, ops in edge_ops.items():
            if not ops or any(op not in OPS for op in ops) or len(set(ops)) != len(ops):
                raise ConfigError(f"edge_ops[{name!r}] = {list(ops)} must be a non-empty subset of {', '.join(OPS)}")

        def make_cell(c: int) -> NB201SearchCell:
            edges: dict[str, Choice] = {}
            k = partial_channels
            for name in EDGE_NAMES:
                kept = edge_ops.get(name, OPS)
                candidates = {
                    op: NB201_OPS[op](c // k, c // k, 1, affine, track_running_stats) for op in OPS if op in kept
                }
                # the key is recorded once (first cell); later cells share it but own new weights
                edges[name] = (
                    Choice(candidates, partial=k) if name in self._choice_keys
                    else self.add_choice(name, candidates, partial=k)
                )
            return NB201SearchCell(edges)

        self.stem, self.cells, self.lastact, self.classifier = _skeleton(
            make_cell, num_classes=num_classes, in_channels=in_channels, C=C, N=N
        )
        self.global_pooling = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor, path: Path) -> torch.Tensor:
        self.check_path(path)
        feature = self.stem(x)
        for cell in self.cells:
            feature = cell(feature, path) if isinstance(cell, NB201SearchCell) else cell(feature)
        return self.classifier(self.global_pooling(self.lastact(feature)).flatten(1))

    def path_for(self, arch: object) -> dict[str, str]:
        """The single path of ``arch`` (edge name -> op name)."""
        if not isinstance(arch, Arch):
            raise ArchError(f"expected an nb201 Arch, got {type(arch).__name__}")
        self._space.validate(arch)
        return dict(arch.choices)

    def edge_groups(self) -> list[list[str]]:
        """The edges entering nodes 1, 2 and 3 of the cell."""
        return [[_edge_name(to, frm) for frm in range(to)] for to in range(1, _NUM_NODES)]

    def subnet_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """State dict of ``build(arch)`` with the weights this supernet holds for ``arch``.

        The rule: outside cell edges keys are unchanged; in cell edges keep only the chosen op's
        entries and drop ``candidates.<op>.`` from their keys (``cells.3.edges.edge_2_1.candidates.nor_conv_3x3.1.weight``
        -> ``cells.3.edges.edge_2_1.1.weight``). Load it with ``net.load_state_dict(sd)``.
        """
        path = self.path_for(arch)
        out: dict[str, torch.Tensor] = {}
        for key, value in self.state_dict().items():
            parts = key.split(".")
            if len(parts) > 5 and parts[0] == "cells" and parts[2] == "edges" and parts[4] == "candidates":
                if parts[5] != path[parts[3]]:
                    continue
                parts = parts[:4] + parts[6:]
            out[".".join(parts)] = value
        return out


# ---- the space ------------------------------------------------------------------------------
@register("space", "nb201")
class NB201Space(SearchSpace):
    """NAS-Bench-201: 6 edges x 5 ops, every one of the 15,625 cells valid.

    The text form is the official cell string, e.g.
    ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|``
    (node groups separated by ``+``, each edge ``op~input_node``).
    """

    name = "nb201"
    paper = (
        "Dong & Yang, 'NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture "
        "Search', ICLR 2020"
    )

    def decisions(self) -> dict[str, tuple[str, ...]]:
        return {name: OPS for name in EDGE_NAMES}

    def complexity_stages(self) -> list[ComplexityStage]:
        """Growth by intermediate node (the order PNAS searches in): stage ``b`` = 1, 2, 3 fixes
        the ``b`` edges into node ``b``.

        A cell grown up to node ``b`` is the full cell truncated after node ``b``: nodes 1..b are
        computed exactly as in the full cell and the cell outputs node ``b``. In the fixed form,
        the ungrown edges into the output node 3 are ``skip_connect`` from node ``b`` and
        ``none`` from every other node, and the ungrown edges into the intermediate nodes
        ``b+1 .. 2`` are ``none`` (those nodes are zero and unused). So after stage 1 the cell is
        ``|op~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|`` (output = node 1), after
        stage 2 ``|op~0|+|op~0|op~1|+|none~0|none~1|skip_connect~2|`` (output = node 2).
        """
        stages = []
        for b in range(1, _NUM_NODES):
            filler: dict[str, str] = {}
            for to in range(b + 1, _NUM_NODES):
                for frm in range(to):
                    last = to == _NUM_NODES - 1 and frm == b
                    filler[_edge_name(to, frm)] = "skip_connect" if last else "none"
            stages.append(ComplexityStage(tuple(_edge_name(b, frm) for frm in range(b)), filler))
        return stages

    def format(self, arch: Arch) -> str:
        self.validate(arch)
        groups = []
        for to in range(1, _NUM_NODES):
            groups.append("|" + "|".join(f"{arch[_edge_name(to, frm)]}~{frm}" for frm in range(to)) + "|")
        return "+".join(groups)

    def parse(self, text: str) -> Arch:
        """Parse an official NB201 cell string; edges inside a node may come in any input order."""
        if not isinstance(text, str):
            raise ArchError(f"an NB201 cell string must be a str, got {type(text).__name__}")
        s = text.strip()
        groups = s.split("+")
        if len(groups) != _NUM_NODES - 1:
            raise ArchError(
                f"NB201 cell string must have {_NUM_NODES - 1} nodes separated by '+', "
                f"got {len(groups)} in {text!r}"
            )
        mapping: dict[str, str] = {}
        for to, raw in enumerate(groups, start=1):
            group = raw.strip()
            if len(group) < 2 or not (group.startswith("|") and group.endswith("|")):
                raise ArchError(f"node {to} of {text!r} must look like '|op~input|...|', got {group!r}")
            edges = group[1:-1].split("|")
            if len(edges) != to:
                raise ArchError(f"node {to} must have {to} input edge(s), got {len(edges)} in {group!r}")
            for edge in edges:
                op, sep, index = edge.strip().partition("~")
                op, index = op.strip(), index.strip()
                if not sep or not _INDEX.fullmatch(index):
                    raise ArchError(f"edge {edge!r} in node {to} of {text!r} must look like 'op~input_node'")
                frm = int(index)
                if frm >= to:
                    raise ArchError(
                        f"edge {edge!r}: node {to} can only take inputs 0..{to - 1}, got input node {frm}"
                    )
                if op not in OPS:
                    raise ArchError(f"unknown NB201 op {op!r} in edge {edge!r}; valid: {', '.join(OPS)}")
                name = _edge_name(to, frm)
                if name in mapping:
                    raise ArchError(f"node {to} takes input node {frm} twice in {group!r}")
                mapping[name] = op
        return self.make(mapping)

    def build(
        self, arch: Arch, *, num_classes: int = 10, in_channels: int = 3, C: int = 16, N: int = 5,
        **kwargs: Any,
    ) -> TinyNetwork:
        """The stand-alone NB201 network (xautodl ``TinyNetwork``) of ``arch``.

        Args:
            arch: an nb201 architecture.
            num_classes: classifier outputs (10 for the CIFAR-10 table).
            in_channels: input image channels.
            C: channels of the first stage (16 in the benchmark).
            N: cells per stage (5 in the benchmark).

        Raises:
            ArchError: ``arch`` is not an nb201 architecture.
            ConfigError: an unknown option or a non-positive size.
        """
        self.validate(arch)
        _check_net_args(num_classes, in_channels, C, N, kwargs)
        return TinyNetwork(arch, num_classes=num_classes, in_channels=in_channels, C=C, N=N)

    def supernet(
        self, *, num_classes: int = 10, in_channels: int = 3, C: int = 16, N: int = 5,
        affine: bool = True, track_running_stats: bool = True, partial_channels: int = 1,
        edge_ops: Mapping[str, Sequence[str]] | None = None, **kwargs: Any,
    ) -> NB201Supernet:
        """The NB201 weight-sharing supernet (see :class:`NB201Supernet`)."""
        _check_net_args(num_classes, in_channels, C, N, kwargs)
        return NB201Supernet(
            num_classes=num_classes, in_channels=in_channels, C=C, N=N,
            affine=affine, track_running_stats=track_running_stats, partial_channels=partial_channels,
            edge_ops=edge_ops,
        )

    def derive(self, weights: Mapping[str, Any]) -> Arch:
        """The cell of one-shot edge weights: the strongest op of every edge, ``none`` included.

        This is the rule of the NB201 paper's one-shot baselines (xautodl ``genotype()`` of
        DARTS, GDAS, SETN...: ``argmax`` over all 5 ops); ties go to the earlier op in
        :data:`OPS` order. ``weights`` maps each edge name to 5 numbers (logits or probabilities).
        """
        mapping: dict[str, str] = {}
        for name in EDGE_NAMES:
            if name not in weights:
                raise ArchError(f"derive needs weights for all {len(EDGE_NAMES)} edges; missing {name!r}")
            w = weights[name]
            values = [float(v) for v in (w.detach().flatten().tolist() if isinstance(w, torch.Tensor) else w)]
            if len(values) != len(OPS):
                raise ArchError(f"weights of {name} have {len(values)} entries; need {len(OPS)} ({', '.join(OPS)})")
            mapping[name] = OPS[max(range(len(OPS)), key=lambda i: (values[i], -i))]
        return self.make(mapping)
