"""Architecture encodings for model-based searchers (predictors need fixed-length vectors).

Two encodings, both returned as ``float32`` numpy vectors:

* **one-hot** (every space): :meth:`SearchSpace.encode_onehot`, one block per decision.
* **path encoding** (White, Neiswanger & Savani, "BANANAS: Bayesian Optimization with Neural
  Architectures for Neural Architecture Search", AAAI 2021, Section 3; reference code
  ``naszilla/bananas``): one binary feature per possible *input -> output path* of the cell,
  named by the sequence of operations along it; a feature is 1 when the cell has that path.
  Two cells that compute the same function through the same paths get the same vector (the
  paper's point: the encoding is invariant to how the graph is written down).

  - ``nb201``: the cell DAG has 4 nodes; the 4 possible input -> output routes are
    0->3, 0->1->3, 0->2->3 and 0->1->2->3 (:data:`NB201_ROUTES`). An edge whose op is ``none``
    does not exist, so a route through it is not a path; the other 4 ops name the path, giving
    ``4 + 4**2 + 4**3 = 84`` features (:data:`NB201_PATH_DIM`). A cell whose every route
    crosses a ``none`` edge (it outputs zeros) encodes to all zeros. (The reference code,
    ``nas_bench_201/cell.py``, instead treats ``none`` as a fifth op name and so always sets
    4 of 155 features; we follow the paper's definition of a path: a sequence of edges.)
  - ``darts``: each cell (normal, reduce) has two inputs (``c_{k-2}``, ``c_{k-1}``) and outputs
    the concatenation of its 4 intermediate nodes, so every path from an input to any
    intermediate node is an input -> output path. Paths have 1 to 4 ops out of the 7 DARTS
    ops (``none`` is not in this space), so there are ``7 + 7**2 + 7**3 + 7**4 = 2800``
    features per (cell, input) and ``4 * 2800 = 11200`` in all (:data:`DARTS_PATH_DIM`),
    the layout of the reference ``darts/arch.py`` without its ``none`` op.
  - other spaces have no path encoding; :func:`encode` falls back to one-hot for them.

Indexing: paths of length ``L`` start at offset ``sum(n**l for l < L)`` and a path with op
indices ``(o_1, ..., o_L)`` sits at ``offset + sum(o_i * n**(L - i))`` (first op most significant).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nasforge.arch import Arch
from nasforge.errors import ConfigError
from nasforge.spaces.base import SearchSpace

#: Encoding kinds accepted by :func:`encode`.
ENCODINGS: tuple[str, ...] = ("path", "onehot")

#: The NB201 ops that can be on a path (every op but ``none``), in the official order.
NB201_PATH_OPS: tuple[str, ...] = ("skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: The 4 input -> output routes of an NB201 cell, as the edge decisions they cross.
NB201_ROUTES: tuple[tuple[str, ...], ...] = (
    ("edge_3_0",),
    ("edge_1_0", "edge_3_1"),
    ("edge_2_0", "edge_3_2"),
    ("edge_1_0", "edge_2_1", "edge_3_2"),
)
NB201_PATH_DIM = sum(len(NB201_PATH_OPS) ** n for n in range(1, 4))  # 84

#: The DARTS ops (the space has no ``none``), in the reference ``PRIMITIVES`` order.
DARTS_PATH_OPS: tuple[str, ...] = (
    "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)
_DARTS_STEPS = 4
_DARTS_PER_INPUT = sum(len(DARTS_PATH_OPS) ** n for n in range(1, _DARTS_STEPS + 1))  # 2800
DARTS_PATH_DIM = 4 * _DARTS_PER_INPUT  # (normal, reduce) x (input 0, input 1)


def path_index(ops: Sequence[str], vocabulary: Sequence[str]) -> int:
    """Index of the path with op sequence ``ops`` among all paths over ``vocabulary`` (module doc)."""
    n = len(vocabulary)
    offset = sum(n**length for length in range(1, len(ops)))  # paths shorter than this one
    digits = 0
    for op in ops:
        digits = digits * n + vocabulary.index(op)
    return offset + digits


def nb201_paths(arch: Arch) -> list[tuple[str, ...]]:
    """The op sequences of the input -> output paths of an NB201 cell (routes without ``none``)."""
    paths = []
    for route in NB201_ROUTES:
        ops = tuple(arch[edge] for edge in route)
        if "none" not in ops:
            paths.append(ops)
    return paths


def nb201_path_encoding(arch: Arch) -> np.ndarray:
    """Binary vector of length :data:`NB201_PATH_DIM`: 1 for each path of :func:`nb201_paths`."""
    out = np.zeros(NB201_PATH_DIM, dtype=np.float32)
    for ops in nb201_paths(arch):
        out[path_index(ops, NB201_PATH_OPS)] = 1.0
    return out


def darts_paths(arch: Arch) -> dict[tuple[str, int], set[tuple[str, ...]]]:
    """The input -> output paths of both DARTS cells: ``(cell, input node) -> {op sequences}``.

    Node ``i`` (cell node ``i + 2``) takes inputs ``a, b`` (decision ``{cell}_n{i}_in``) with ops
    ``{cell}_n{i}_op_a`` / ``_op_b``; every path into an intermediate node is an output path.
    """
    out: dict[tuple[str, int], set[tuple[str, ...]]] = {}
    for cell in ("normal", "reduce"):
        # paths into each cell node: list of (input node, op sequence); nodes 0, 1 are the inputs
        into: list[list[tuple[int, tuple[str, ...]]]] = [[(0, ())], [(1, ())]]
        for i in range(_DARTS_STEPS):
            a, b = (int(s) for s in arch[f"{cell}_n{i}_in"].split(","))
            node_paths: list[tuple[int, tuple[str, ...]]] = []
            for src, op in ((a, arch[f"{cell}_n{i}_op_a"]), (b, arch[f"{cell}_n{i}_op_b"])):
                node_paths.extend((root, seq + (op,)) for root, seq in into[src])
            into.append(node_paths)
        for root in (0, 1):
            out[(cell, root)] = {seq for node in into[2:] for r, seq in node if r == root}
    return out


def darts_path_encoding(arch: Arch) -> np.ndarray:
    """Binary vector of length :data:`DARTS_PATH_DIM`, blocks (normal, c_{k-2}), (normal, c_{k-1}),
    (reduce, c_{k-2}), (reduce, c_{k-1}) of 2800 path features each."""
    out = np.zeros(DARTS_PATH_DIM, dtype=np.float32)
    paths = darts_paths(arch)
    for block, key in enumerate((("normal", 0), ("normal", 1), ("reduce", 0), ("reduce", 1))):
        for seq in paths[key]:
            out[block * _DARTS_PER_INPUT + path_index(seq, DARTS_PATH_OPS)] = 1.0
    return out


def has_path_encoding(space: SearchSpace) -> bool:
    """Whether :func:`encode` gives ``space`` a real path encoding (nb201, darts) or falls back."""
    return space.name in ("nb201", "darts")


def check_encoding(kind: str) -> None:
    """Raise :class:`ConfigError` unless ``kind`` is one of :data:`ENCODINGS`."""
    if kind not in ENCODINGS:
        raise ConfigError(f"encoding must be one of {', '.join(ENCODINGS)}, got {kind!r}")


def encode(space: SearchSpace, arch: Arch, kind: str = "path") -> np.ndarray:
    """The ``float32`` feature vector of ``arch``: ``kind="path"`` (one-hot where the space has no
    path encoding) or ``"onehot"``. All vectors of one space and kind have the same length."""
    check_encoding(kind)
    space.validate(arch)
    if kind == "path" and space.name == "nb201":
        return nb201_path_encoding(arch)
    if kind == "path" and space.name == "darts":
        return darts_path_encoding(arch)
    return np.asarray(space.encode_onehot(arch), dtype=np.float32)


def encode_batch(space: SearchSpace, archs: Sequence[Arch], kind: str = "path") -> np.ndarray:
    """``[len(archs), dim]`` matrix of :func:`encode` rows (``dim`` from an arbitrary sample if empty)."""
    if not archs:
        import random

        dim = encode(space, space.sample(random.Random(0)), kind).shape[0]
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack([encode(space, a, kind) for a in archs])
