"""The DARTS / NASNet cell search space.

Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019, searching the
cell space of Zoph, Vasudevan, Shlens & Le, "Learning Transferable Architectures for Scalable
Image Recognition" (NASNet), CVPR 2018. Reference implementation: ``quark0/darts``, namely
``cnn/genotypes.py`` (``Genotype``, ``PRIMITIVES``, ``DARTS_V1``/``DARTS_V2``), ``cnn/model.py``
(``Cell``, ``AuxiliaryHeadCIFAR``, ``NetworkCIFAR``) and ``cnn/model_search.py`` (``MixedOp``,
the search ``Cell`` and ``Network``, ``Network.genotype``).

A network stacks *normal* and *reduction* cells. A cell has two inputs (node 0 = the output of
cell k-2, node 1 = that of cell k-1), four intermediate nodes 2..5 and outputs the channel
concatenation of nodes 2..5. Intermediate node ``i`` (0..3, cell node ``i + 2``) is the sum of
two operations, each applied to one of its predecessors 0..i+1.

How the space is modelled (the decisions, canonical order)::

    for cell in ("normal", "reduce"):
        for i in 0..3:
            {cell}_n{i}_in    the *unordered* pair of distinct inputs, as "a,b" with a < b
            {cell}_n{i}_op_a  the op on input a (the lower index)
            {cell}_n{i}_op_b  the op on input b (the higher index)

Ops are the 7 DARTS primitives other than ``none``: DARTS derives a genotype by keeping, for
every node, the two strongest *distinct* incoming edges and their strongest non-``none`` op, so
no published DARTS genotype contains ``none`` or two edges from one input. Pairs are unordered
because the node output ``op_a(x_a) + op_b(x_b)`` does not depend on their order; taking them
canonically (lower input first) makes every genotype exactly one :class:`~nasforge.arch.Arch`,
hence :meth:`SearchSpace.sample` is uniform over genotypes. Both cells concatenate nodes 2..5
(``range(2, 6)``), as in every genotype the DARTS search produces.

The text form is the reference ``Genotype`` namedtuple's ``repr``; see :meth:`DartsSpace.format`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.nn.choice import Choice, Path, Supernet, sum_edges
from nasforge.nn.ops import DARTS_OPS, FactorizedReduce, Identity, ReLUConvBN, drop_path
from nasforge.registry import register
from nasforge.spaces.base import SearchSpace

#: The 8 DARTS primitives in the reference order (``genotypes.PRIMITIVES``): the supernet's
#: candidate order, hence the order of mixture weights.
PRIMITIVES: tuple[str, ...] = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)

#: The ops a genotype may use (every primitive but ``none``), the options of ``*_op_*``.
OPS: tuple[str, ...] = PRIMITIVES[1:]

CELL_TYPES: tuple[str, ...] = ("normal", "reduce")
STEPS = 4  # intermediate nodes per cell
CONCAT: tuple[int, ...] = (2, 3, 4, 5)  # nodes whose outputs a cell concatenates

# Published genotypes in canonical form (format(parse(reference)) of each). The ones of the
# reference repositories (copied verbatim into tests/test_space_darts.py) list some pairs with
# the higher input first and write the concat as [2, 3, 4, 5]; parse accepts both.
#: DARTS first-order cell (quark0/darts ``genotypes.DARTS_V1``): 3,169,414 params at C=36, 20 layers
#: as counted here (the paper rounds it to 3.3M; our DARTS-V2 count equals the reference log exactly).
DARTS_V1 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
    "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('max_pool_3x3', 0), ('skip_connect', 2), ('avg_pool_3x3', 0), ('skip_connect', 2)], "
    "reduce_concat=range(2, 6))"
)
#: DARTS second-order cell (quark0/darts ``genotypes.DARTS_V2`` = ``DARTS``): the paper's 2.76% model.
DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 1), "
    "('skip_connect', 2), ('max_pool_3x3', 0), ('skip_connect', 2), ('max_pool_3x3', 1), ('skip_connect', 2)], "
    "reduce_concat=range(2, 6))"
)
#: P-DARTS (Chen et al., ICCV 2019; chenxin061/pdarts ``genotypes.PDARTS``).
PDARTS = (
    "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)], "
    "normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), "
    "('dil_conv_5x5', 2), ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('dil_conv_5x5', 3)], "
    "reduce_concat=range(2, 6))"
)
#: PC-DARTS searched on CIFAR-10 (Xu et al., ICLR 2020; yuhuixu1993/PC-DARTS ``PC_DARTS_cifar``).
PC_DARTS = (
    "Genotype(normal=[('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
    "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], "
    "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 1), "
    "('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], "
    "reduce_concat=range(2, 6))"
)
#: PC-DARTS searched on ImageNet (yuhuixu1993/PC-DARTS ``PC_DARTS_image``).
PC_DARTS_IMAGENET = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1), ('sep_conv_3x3', 0), ('skip_connect', 1), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('dil_conv_5x5', 4)], "
    "normal_concat=range(2, 6), reduce=[('sep_conv_3x3', 0), ('skip_connect', 1), ('max_pool_3x3', 1), "
    "('dil_conv_5x5', 2), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), ('sep_conv_5x5', 0), ('sep_conv_3x3', 3)], "
    "reduce_concat=range(2, 6))"
)
# NASNet-A and AmoebaNet-A (also in quark0/darts genotypes.py) are not members of this space:
# they have 5 nodes, ops outside PRIMITIVES (sep_conv_7x7, conv_7x1_1x7), repeated inputs and
# other concats, so they are left out.

#: Published genotypes by name (canonical strings).
GENOTYPES: dict[str, str] = {
    "DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "PDARTS": PDARTS,
    "PC_DARTS": PC_DARTS, "PC_DARTS_IMAGENET": PC_DARTS_IMAGENET,
}

Edge = tuple[str, int]  # (op, input node)


def _in_name(cell: str, i: int) -> str:
    return f"{cell}_n{i}_in"


def _pairs(i: int) -> tuple[str, ...]:
    """Options of ``*_n{i}_in``: distinct input pairs ``"a,b"`` (a < b) among nodes 0..i+1."""
    n = i + 2
    return tuple(f"{a},{b}" for a in range(n) for b in range(a + 1, n))


def edge_key(cell: str, node: int, inp: int) -> str:
    """Supernet choice key of the edge ``inp -> node`` (cell node numbering: 0, 1 inputs, 2..5)."""
    return f"{cell}_e{node}_{inp}"


#: The 28 supernet keys in the reference alpha row order (per cell type: node 2 from 0, 1; node 3...).
EDGE_KEYS: tuple[str, ...] = tuple(
    edge_key(cell, node, j) for cell in CELL_TYPES for node in range(2, 2 + STEPS) for j in range(node)
)


# ---- the space -----------------------------------------------------------------------------
_GENOTYPE = re.compile(
    r"""^\s*Genotype\s*\(\s*
        normal\s*=\s*(?P<normal>\[[^\[\]]*\])\s*,\s*
        normal_concat\s*=\s*(?P<normal_concat>range\s*\([^()]*\)|\[[^\[\]]*\])\s*,\s*
        reduce\s*=\s*(?P<reduce>\[[^\[\]]*\])\s*,\s*
        reduce_concat\s*=\s*(?P<reduce_concat>range\s*\([^()]*\)|\[[^\[\]]*\])\s*,?\s*
        \)\s*$""",
    re.VERBOSE,
)
_RANGE = re.compile(r"^range\s*\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)$")
_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


@register("space", "darts")
class DartsSpace(SearchSpace):
    """The DARTS cell space: a normal and a reduction cell of 4 two-input nodes (see module doc).

    ``size()`` is ``(1 * 3 * 6 * 10 * 7**8) ** 2`` (about 1.9e18), every combination valid.
    """

    name = "darts"
    paper = (
        "Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019 "
        "(cell space of Zoph et al., Learning Transferable Architectures for Scalable Image "
        "Recognition, CVPR 2018)"
    )

    def decisions(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for cell in CELL_TYPES:
            for i in range(STEPS):
                out[_in_name(cell, i)] = _pairs(i)
                out[f"{cell}_n{i}_op_a"] = OPS
                out[f"{cell}_n{i}_op_b"] = OPS
        return out

    # ---- genotype <-> Arch -------------------------------------------------------------
    def cell_edges(self, arch: Arch, cell: str) -> list[Edge]:
        """The 8 ``(op, input)`` pairs of ``cell`` ("normal" or "reduce"), canonical order.

        This is the reference ``Genotype.normal`` / ``Genotype.reduce`` list: pairs ``2i`` and
        ``2i + 1`` feed intermediate node ``i`` (cell node ``i + 2``), lower input first.
        """
        if cell not in CELL_TYPES:
            raise ArchError(f"unknown cell type {cell!r}; valid: {', '.join(CELL_TYPES)}")
        self.validate(arch)
        edges: list[Edge] = []
        for i in range(STEPS):
            a, b = (int(s) for s in arch[_in_name(cell, i)].split(","))
            edges.append((arch[f"{cell}_n{i}_op_a"], a))
            edges.append((arch[f"{cell}_n{i}_op_b"], b))
        return edges

    def from_edges(self, normal: Sequence[Edge], reduce: Sequence[Edge]) -> Arch:
        """Arch from two reference-style ``[(op, input), ...]`` lists of 8 pairs each.

        The two pairs of a node may come in either order. Raises :class:`ArchError` naming the
        cell and node for a wrong count, an unknown or ``none`` op, an input out of range or two
        edges from the same input.
        """
        mapping: dict[str, str] = {}
        for cell, edges in (("normal", normal), ("reduce", reduce)):
            edges = list(edges)
            if len(edges) != 2 * STEPS:
                raise ArchError(
                    f"{cell} cell has {len(edges)} (op, input) pairs; a DARTS cell needs exactly "
                    f"{2 * STEPS} (2 per node for {STEPS} nodes)"
                )
            for i in range(STEPS):
                node = i + 2
                checked: list[Edge] = []
                for edge in edges[2 * i: 2 * i + 2]:
                    if not (isinstance(edge, (tuple, list)) and len(edge) == 2):
                        raise ArchError(f"{cell} cell node {node}: expected an (op, input) pair, got {edge!r}")
                    op, inp = edge
                    if op == "none":
                        raise ArchError(
                            f"{cell} cell node {node}: op 'none' is not part of the DARTS space "
                            f"(DARTS never derives it); valid: {', '.join(OPS)}"
                        )
                    if not isinstance(op, str) or op not in OPS:
                        raise ArchError(f"{cell} cell node {node}: unknown op {op!r}; valid: {', '.join(OPS)}")
                    if isinstance(inp, bool) or not isinstance(inp, int) or not 0 <= inp < node:
                        raise ArchError(
                            f"{cell} cell node {node} (intermediate node {i}): input {inp!r} out of range; "
                            f"valid: 0..{node - 1}"
                        )
                    checked.append((op, inp))
                (op_x, x), (op_y, y) = checked
                if x == y:
                    raise ArchError(
                        f"{cell} cell node {node}: both edges come from input {x}; DARTS nodes take two "
                        f"distinct inputs"
                    )
                if x > y:  # canonical: lower input first
                    (op_x, x), (op_y, y) = (op_y, y), (op_x, x)
                mapping[_in_name(cell, i)] = f"{x},{y}"
                mapping[f"{cell}_n{i}_op_a"] = op_x
                mapping[f"{cell}_n{i}_op_b"] = op_y
        return self.make(mapping)

    def format(self, arch: Arch) -> str:
        """The reference ``repr`` of the ``Genotype`` namedtuple, concat as ``range(2, 6)``.

        Example: ``Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...],
        normal_concat=range(2, 6), reduce=[...], reduce_concat=range(2, 6))``.
        """
        parts = []
        for cell in CELL_TYPES:
            pairs = ", ".join(f"({op!r}, {inp})" for op, inp in self.cell_edges(arch, cell))
            parts.append(f"{cell}=[{pairs}], {cell}_concat=range(2, 6)")
        return f"Genotype({', '.join(parts)})"

    def parse(self, text: str) -> Arch:
        """Parse a ``Genotype(...)`` string as printed or written in the reference code.

        Accepts any whitespace, the concat as ``range(2, 6)`` or ``[2, 3, 4, 5]``, the pairs of
        a node in either order and trailing commas. Nothing is evaluated: a regular expression
        splits the fields and :func:`ast.literal_eval` reads the literal lists.
        """
        if not isinstance(text, str):
            raise ArchError(f"expected a Genotype string, got {type(text).__name__}")
        m = _GENOTYPE.match(text)
        if m is None:
            raise ArchError(
                f"not a DARTS genotype string: {text[:120]!r}; expected "
                "Genotype(normal=[(op, input), ...], normal_concat=range(2, 6), "
                "reduce=[...], reduce_concat=range(2, 6))"
            )
        cells: dict[str, list[Any]] = {}
        for cell in CELL_TYPES:
            _check_concat(cell, m.group(f"{cell}_concat"))
            try:
                value = ast.literal_eval(m.group(cell))
            except _LITERAL_ERRORS:
                raise ArchError(f"{cell} cell of the genotype is not a literal list: {m.group(cell)[:120]!r}") from None
            if not isinstance(value, list):
                raise ArchError(f"{cell} cell of the genotype must be a list of (op, input) pairs")
            cells[cell] = value
        return self.from_edges(cells["normal"], cells["reduce"])

    # ---- networks ----------------------------------------------------------------------
    def build(self, arch: Arch, *, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> NetworkCIFAR:
        """The DARTS evaluation network (reference ``model.NetworkCIFAR``).

        Keyword args (reference defaults for CIFAR-10 evaluation): ``C=36`` initial channels,
        ``layers=20`` cells, ``auxiliary=False`` (auxiliary head after cell ``2 * layers // 3``),
        ``stem_multiplier=3``. Set ``net.drop_path_prob`` before training as the reference does.
        """
        self.validate(arch)
        opts = _net_options(
            "build", kwargs, {"C": 36, "layers": 20, "stem_multiplier": 3}, num_classes, in_channels,
            flags={"auxiliary": False},
        )
        return NetworkCIFAR(
            self.cell_edges(arch, "normal"), self.cell_edges(arch, "reduce"),
            num_classes=num_classes, in_channels=in_channels, **opts,
        )

    def supernet(self, *, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> DartsSupernet:
        """The DARTS search network (reference ``model_search.Network``), see :class:`DartsSupernet`.

        Keyword args (reference search defaults): ``C=16``, ``layers=8``, ``steps=4``,
        ``multiplier=4``, ``stem_multiplier=3``, ``partial_channels=1`` (PC-DARTS ``K``), and
        ``edge_ops`` (P-DARTS search-space approximation: edge key -> the primitives kept on it;
        edges not named keep all 8).
        """
        edge_ops = kwargs.pop("edge_ops", None) if isinstance(kwargs, dict) else None
        kwargs = {k: v for k, v in kwargs.items() if k != "edge_ops"}
        opts = _net_options(
            "supernet", kwargs,
            {"C": 16, "layers": 8, "steps": 4, "multiplier": 4, "stem_multiplier": 3, "partial_channels": 1},
            num_classes, in_channels,
        )
        return DartsSupernet(num_classes=num_classes, in_channels=in_channels, edge_ops=edge_ops, **opts)

    def derive(self, weights: Mapping[str, Sequence[float] | torch.Tensor]) -> Arch:
        """The DARTS genotype of one-shot edge weights (see :func:`derive`)."""
        return derive(weights)


def _check_concat(cell: str, text: str) -> None:
    m = _RANGE.match(text)
    values: object
    if m is not None:
        values = list(range(int(m.group(1)), int(m.group(2))))
    else:
        try:
            values = ast.literal_eval(text)
        except _LITERAL_ERRORS:
            raise ArchError(f"{cell}_concat is not a list of node indices: {text!r}") from None
    if values != list(CONCAT):
        raise ArchError(
            f"{cell}_concat {text!r} is not supported; this space always concatenates nodes 2..5 "
            "(range(2, 6) or [2, 3, 4, 5])"
        )


def _net_options(
    what: str, kwargs: Mapping[str, Any], defaults: Mapping[str, int], num_classes: int, in_channels: int,
    flags: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    flags = dict(flags or {})
    valid = ["num_classes", "in_channels", *defaults, *flags]
    unknown = sorted(set(kwargs) - set(defaults) - set(flags))
    if unknown:
        raise ConfigError(f"unknown darts {what} option(s) {unknown}; valid: {', '.join(valid)}")
    opts: dict[str, Any] = {**defaults, **flags, **kwargs}
    for label in ("num_classes", "in_channels", *defaults):
        value = {"num_classes": num_classes, "in_channels": in_channels, **opts}[label]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"darts {what} option {label} must be a positive int, got {value!r}")
    for label in flags:
        if not isinstance(opts[label], bool):
            raise ConfigError(f"darts {what} option {label} must be a bool, got {opts[label]!r}")
    return opts


def _reduction_layers(layers: int) -> tuple[int, int]:
    """Cells that halve the resolution and double the channels (reference: layers//3, 2*layers//3)."""
    return layers // 3, 2 * layers // 3


# ---- stand-alone network --------------------------------------------------------------------
class Cell(nn.Module):
    """One fixed DARTS cell (reference ``model.Cell``).

    Inputs are preprocessed to ``C`` channels (``FactorizedReduce`` for ``s0`` when the previous
    cell halved the resolution, so both inputs match); in a reduction cell the ops reading the
    inputs 0 and 1 have stride 2. Output: the concat of nodes 2..5 (``4 * C`` channels).
    """

    def __init__(self, edges: Sequence[Edge], C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.preprocess0: nn.Module = (
            FactorizedReduce(C_prev_prev, C) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        )
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self.indices: tuple[int, ...] = tuple(inp for _, inp in edges)
        self.ops = nn.ModuleList(
            DARTS_OPS[op](C, C, 2 if reduction and inp < 2 else 1, True, True) for op, inp in edges
        )
        self.multiplier = len(CONCAT)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(len(self.ops) // 2):
            states.append(self._edge(2 * i, states, drop_prob) + self._edge(2 * i + 1, states, drop_prob))
        return torch.cat([states[i] for i in CONCAT], dim=1)

    def _edge(self, k: int, states: Sequence[torch.Tensor], drop_prob: float) -> torch.Tensor:
        op = self.ops[k]
        h: torch.Tensor = op(states[self.indices[k]])
        # as the reference: identities are never dropped (a dropped skip would remove the one
        # path that needs no learning)
        if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
            h = drop_path(h, drop_prob, True)
        return h


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier (reference ``model.AuxiliaryHeadCIFAR``; Szegedy et al. 2015).

    The reference assumes an 8x8 input, which ``AvgPool2d(5, stride=3)`` turns into 2x2 before
    a 2x2 conv. Here an ``AdaptiveAvgPool2d(2)`` follows that pool (a no-op on the reference's
    2x2), and the 5x5 pool is skipped on maps smaller than 5x5, so any input size works with the
    same parameters and the same result on 32x32 images. ReLUs are not in place (the reference's
    in-place ReLU rewrote the main path's tensor).
    """

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)
        self.resize = nn.AdaptiveAvgPool2d(2)
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        if min(x.shape[-2:]) >= 5:
            x = self.pool(x)
        x = self.features(self.resize(x))
        return self.classifier(x.flatten(1))


class NetworkCIFAR(nn.Module):
    """The DARTS evaluation network (reference ``model.NetworkCIFAR``).

    Stem conv3x3 to ``stem_multiplier * C`` channels + BN, ``layers`` cells (reductions at
    ``layers // 3`` and ``2 * layers // 3``, each doubling ``C``), global average pool, linear.
    ``forward(x)`` returns logits, or ``(logits, logits_aux)`` in training mode when built with
    ``auxiliary=True``. ``drop_path_prob`` (default 0) is read on every forward; the reference
    training script raises it linearly over epochs.
    """

    def __init__(
        self, normal: Sequence[Edge], reduce: Sequence[Edge], *, num_classes: int = 10, in_channels: int = 3,
        C: int = 36, layers: int = 20, auxiliary: bool = False, stem_multiplier: int = 3,
    ) -> None:
        super().__init__()
        self.layers = layers
        self.auxiliary = auxiliary
        self.drop_path_prob = 0.0
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reductions = _reduction_layers(layers)
        self._aux_after = 2 * layers // 3
        reduction_prev = False
        C_aux = C_prev
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            cell = Cell(reduce if reduction else normal, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self._aux_after:
                C_aux = C_prev
        if auxiliary:
            # named auxiliary_* so count_params leaves it out, as the reference's param count does
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self._aux_after and self.auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        if logits_aux is not None:
            return logits, logits_aux
        return logits


# ---- supernet ---------------------------------------------------------------------------------
def _mixed_candidates(C: int, stride: int, ops: Sequence[str] = PRIMITIVES) -> dict[str, nn.Module]:
    """The candidates of one edge as the reference ``MixedOp``: affine-free, pools + BN."""
    out: dict[str, nn.Module] = {}
    for op in ops:
        module = DARTS_OPS[op](C, C, stride, False, True)
        if "pool" in op:
            # the reference normalises pool outputs so their scale matches the (BN-ended) convs
            module = nn.Sequential(module, nn.BatchNorm2d(C, affine=False))
        out[op] = module
    return out


class SearchCell(nn.Module):
    """A supernet cell (reference ``model_search.Cell``): every node reads every predecessor.

    ``edges[edge_key(cell_type, node, j)]`` is the :class:`Choice` on edge ``j -> node``.
    """

    def __init__(self, cell_type: str, edges: Mapping[str, Choice], steps: int, multiplier: int,
                 C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.cell_type = cell_type
        self.reduction = reduction
        self.steps, self.multiplier = steps, multiplier
        self.preprocess0: nn.Module = (
            FactorizedReduce(C_prev_prev, C, affine=False) if reduction_prev
            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        )
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleDict(dict(edges))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, path: Path) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(2, 2 + self.steps):
            keys = [edge_key(self.cell_type, node, j) for j in range(node)]
            states.append(sum_edges((self.edges[k], states[j], path[k]) for j, k in enumerate(keys)))
        return torch.cat(states[-self.multiplier:], dim=1)


class DartsSupernet(Supernet):
    """Weight-sharing DARTS supernet (reference ``model_search.Network``, without the alphas).

    Every cell has all ``steps * (steps + 3) / 2`` edges (14 for 4 steps), each a
    :class:`~nasforge.nn.choice.Choice` over the 8 :data:`PRIMITIVES` (``none`` included), built
    as the reference ``MixedOp`` (``affine=False``, pools followed by an affine-free BN). As the
    reference's one ``alphas_normal`` / ``alphas_reduce`` pair, the path keys are shared by all
    cells of a type: ``normal_e{node}_{input}`` and ``reduce_e{node}_{input}`` with cell node
    numbering (inputs 0, 1; intermediate nodes 2..steps+1), listed in :data:`EDGE_KEYS` order.
    Each cell owns its own weights. ``forward(x, path)`` maps every key to an op name (single
    path) or a 1-D tensor of 8 weights in :data:`PRIMITIVES` order (zero weights are not run).
    Derive the DARTS genotype from the weights with :func:`derive`.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, C: int = 16, layers: int = 8,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3, partial_channels: int = 1,
                 edge_ops: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__()
        edge_ops = dict(edge_ops or {})
        for key, ops in edge_ops.items():
            bad = [op for op in ops if op not in PRIMITIVES]
            if bad or not ops:
                raise ConfigError(f"edge_ops[{key!r}] = {list(ops)} must be a non-empty subset of {', '.join(PRIMITIVES)}")
        if isinstance(partial_channels, bool) or not isinstance(partial_channels, int) or partial_channels < 1:
            raise ConfigError(f"partial_channels must be an int >= 1, got {partial_channels!r}")
        if C % partial_channels:
            raise ConfigError(f"partial_channels={partial_channels} must divide the supernet width C={C}")
        if multiplier > steps + 2:
            raise ConfigError(f"darts supernet multiplier {multiplier} exceeds the {steps + 2} nodes of a cell")
        self.steps, self.multiplier = steps, multiplier
        self._space = DartsSpace()
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reductions = _reduction_layers(layers)
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            cell_type = "reduce" if reduction else "normal"
            edges: dict[str, Choice] = {}
            for node in range(2, 2 + steps):
                for j in range(node):
                    key = edge_key(cell_type, node, j)
                    stride = 2 if reduction and j < 2 else 1
                    candidates = _mixed_candidates(C_curr // partial_channels, stride, edge_ops.get(key, PRIMITIVES))
                    # the key is recorded once (first cell of its type); later cells own new weights
                    edges[key] = (
                        Choice(candidates, partial=partial_channels, stride=stride) if key in self._choice_keys
                        else self.add_choice(key, candidates, partial=partial_channels, stride=stride)
                    )
            self.cells.append(SearchCell(cell_type, edges, steps, multiplier, C_prev_prev, C_prev, C_curr,
                                         reduction, reduction_prev))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        unknown = sorted(set(edge_ops) - set(self._choice_keys))
        if unknown:
            raise ConfigError(f"edge_ops names unknown edges {unknown[:5]}; valid: {', '.join(self._choice_keys)}")

    def forward(self, x: torch.Tensor, path: Path) -> torch.Tensor:
        self.check_path(path)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, path)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def edge_groups(self) -> list[list[str]]:
        """Per cell type and intermediate node, the keys of the edges entering it."""
        groups: dict[tuple[str, str], list[str]] = {}
        for key in self._choice_keys:  # keys are f"{cell}_e{node}_{input}" (see edge_key)
            cell, rest = key.split("_e", 1)
            groups.setdefault((cell, rest.split("_")[0]), []).append(key)
        return list(groups.values())

    def path_for(self, arch: object) -> dict[str, str]:
        """Single path of a genotype: chosen edges run their op, every other edge ``none``."""
        if not isinstance(arch, Arch):
            raise ArchError(f"expected a darts Arch, got {type(arch).__name__}")
        if (self.steps, self.multiplier) != (STEPS, len(CONCAT)):
            raise ConfigError(
                f"path_for needs a supernet with steps={STEPS}, multiplier={len(CONCAT)} (the genotype "
                f"space), this one has steps={self.steps}, multiplier={self.multiplier}"
            )
        path = dict.fromkeys(self._choice_keys, "none")
        for cell in CELL_TYPES:
            for k, (op, inp) in enumerate(self._space.cell_edges(arch, cell)):
                key = edge_key(cell, 2 + k // 2, inp)
                if key in path:  # a supernet too shallow to have a cell type lacks its keys
                    path[key] = op
        return path


def derive(weights: Mapping[str, Sequence[float] | torch.Tensor]) -> Arch:
    """The DARTS genotype of edge weights (reference ``model_search.Network.genotype``).

    For each node keep the two inputs whose strongest non-``none`` weight is largest, each with
    that op (ties go to the lower input / the earlier op, as the reference's stable sort and
    strict comparison). ``weights`` maps every key of :data:`EDGE_KEYS` to 8 weights in
    :data:`PRIMITIVES` order (softmaxed or not: only their order matters).
    """
    missing = [k for k in EDGE_KEYS if k not in weights]
    if missing:
        raise ArchError(f"derive needs weights for all {len(EDGE_KEYS)} edges; missing {missing[:5]}")
    cells: dict[str, list[Edge]] = {}
    for cell in CELL_TYPES:
        gene: list[Edge] = []
        for node in range(2, 2 + STEPS):
            best: list[tuple[float, int, str]] = []  # (strength, input, op)
            for j in range(node):
                w = weights[edge_key(cell, node, j)]
                values = [float(v) for v in (w.detach().flatten().tolist() if isinstance(w, torch.Tensor) else w)]
                if len(values) != len(PRIMITIVES):
                    raise ArchError(
                        f"weights of {edge_key(cell, node, j)} have {len(values)} entries; need "
                        f"{len(PRIMITIVES)} ({', '.join(PRIMITIVES)})"
                    )
                k = max(range(1, len(values)), key=lambda i: (values[i], -i))
                best.append((values[k], j, PRIMITIVES[k]))
            top = sorted(best, key=lambda t: -t[0])[:2]
            gene.extend((op, j) for _, j, op in top)
        cells[cell] = gene
    return DartsSpace().from_edges(cells["normal"], cells["reduce"])
