"""Few-shot per-op latency models for NAS-Bench-201 cells.

In the spirit of nn-Meter (Zhang et al., MobiSys 2021: latency = sum of per-kernel latencies)
and HELP (Lee et al., NeurIPS 2021: a device's latency predictor from a handful of
measurements): the latency of the NB201 network of a cell is modelled as

    latency(cell) = c + sum over edges e of w[e, op_e]

with ``w[e, none] = 0`` (``none`` computes nothing), fitted on ``N`` measured cells. Two
parameterisations:

- ``per_edge=False`` (shared): one weight per op, the same on every edge (1 + 4 parameters);
- ``per_edge=True``: one weight per (edge, op) pair (1 + 24 parameters).

With ``effective=True`` an op that lies on no input -> output path of the cell counts as
``none``: its output never reaches the cell output. (Our networks, like xautodl's, still
compute such ops; whether a device's measurements do is a property of the measured runtime,
which the benchmark ``benchmarks/nb201_latency_predictors.py`` checks.)

The weights are fitted by least squares with non-negative op weights (SciPy's NNLS; the
constant is free), optionally with a ridge penalty. :meth:`NB201LatencyModel.expected_latency`
is the model's exact expectation under independent per-edge op distributions, differentiable in
the probabilities (what FBNet / ProxylessNAS-style one-shot methods add to their loss).

Nothing here reads the data kit; :func:`table_latencies` takes an already loaded
:class:`~nasforge.evaluators.table.NB201Table`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nasforge.arch import Arch
from nasforge.errors import ArchError, BudgetError, ConfigError, DataError, UnknownNameError, check_float
from nasforge.spaces.nb201 import EDGE_NAMES, EDGES, OPS

if TYPE_CHECKING:
    from nasforge.evaluators.table import NB201Table

__all__ = [
    "NB201LatencyModel",
    "FewShotScore",
    "design_matrix",
    "effective_mask",
    "encode_cells",
    "few_shot_score",
    "fit",
    "latency_columns",
    "num_parameters",
    "table_latencies",
]

NUM_EDGES = len(EDGES)  # 6
NUM_OPS = len(OPS)  # 5, index 0 is 'none'
#: The table's op-code columns, in the official edge order (same order as EDGES).
OP_CODE_COLUMNS: tuple[str, ...] = tuple(f"op_e{frm}{to}" for to, frm in EDGES)
_LATENCY_SUFFIX = "_latency_ms"

CellLike = Arch | str | Sequence[int] | Sequence[str]


# ---- cells as op codes ---------------------------------------------------------------------
def _encode_one(cell: Any) -> list[int]:
    if isinstance(cell, Arch):
        from nasforge.spaces.nb201 import NB201Space

        arch = NB201Space().validate(cell)
        return [OPS.index(arch[d]) for d in EDGE_NAMES]
    if isinstance(cell, str):
        from nasforge.spaces.nb201 import NB201Space

        return _encode_one(NB201Space().parse(cell))
    seq = list(cell)
    if len(seq) != NUM_EDGES:
        raise ArchError(f"an NB201 cell has {NUM_EDGES} edges, got {len(seq)} ops: {seq!r}")
    out = []
    for op in seq:
        if isinstance(op, str):
            if op not in OPS:
                raise UnknownNameError("NB201 op", op, OPS)
            out.append(OPS.index(op))
        elif isinstance(op, (int, np.integer)) and not isinstance(op, bool) and 0 <= int(op) < NUM_OPS:
            out.append(int(op))
        else:
            raise ArchError(f"NB201 op codes are integers 0..{NUM_OPS - 1} ({', '.join(OPS)}), got {op!r}")
    return out


def encode_cells(cells: Iterable[CellLike] | np.ndarray) -> np.ndarray:
    """Cells as an ``(n, 6)`` int array of op codes (index into :data:`~nasforge.spaces.nb201.OPS`,
    edges in the official order). A cell is an :class:`Arch` of the ``nb201`` space, an official
    cell string, or 6 op names or codes; an int array of shape ``(n, 6)`` is checked and kept."""
    if isinstance(cells, np.ndarray) and cells.dtype.kind in "iu":
        if cells.ndim != 2 or cells.shape[1] != NUM_EDGES:
            raise ArchError(f"op-code array must have shape (n, {NUM_EDGES}), got {cells.shape}")
        if cells.size and (cells.min() < 0 or cells.max() >= NUM_OPS):
            raise ArchError(f"NB201 op codes are integers 0..{NUM_OPS - 1}, got {cells.min()}..{cells.max()}")
        return cells.astype(np.int64)
    rows = [_encode_one(c) for c in cells]
    return np.array(rows, dtype=np.int64).reshape(len(rows), NUM_EDGES)


def _reachability(active: np.ndarray) -> np.ndarray:
    """``active``: ``(n, 6)`` bool (edge carries a non-``none`` op) -> ``(n, 6)`` bool: the edge lies
    on a path from the cell input (node 0) to its output (node 3)."""
    n = active.shape[0]
    from_input = np.zeros((n, 4), dtype=bool)  # node reachable from node 0
    from_input[:, 0] = True
    for k, (to, frm) in enumerate(EDGES):  # EDGES is topologically ordered by 'to'
        from_input[:, to] |= from_input[:, frm] & active[:, k]
    to_output = np.zeros((n, 4), dtype=bool)  # node reaches node 3
    to_output[:, 3] = True
    for k in sorted(range(NUM_EDGES), key=lambda k: -EDGES[k][1]):  # by decreasing 'from'
        to, frm = EDGES[k]
        to_output[:, frm] |= to_output[:, to] & active[:, k]
    mask = np.zeros_like(active)
    for k, (to, frm) in enumerate(EDGES):
        mask[:, k] = active[:, k] & from_input[:, frm] & to_output[:, to]
    return mask


def effective_mask(cells: Iterable[CellLike] | np.ndarray) -> np.ndarray:
    """``(n, 6)`` bool: which edges carry an op on some input -> output path (an op elsewhere feeds
    a node that never reaches the output, or reads a node that is always zero)."""
    codes = encode_cells(cells)
    return _reachability(codes != 0)


def num_parameters(*, per_edge: bool) -> int:
    """Fitted parameters of a model: the constant plus 24 (per edge) or 4 (shared) op weights."""
    return 1 + (NUM_EDGES if per_edge else 1) * (NUM_OPS - 1)


def design_matrix(cells: Iterable[CellLike] | np.ndarray, *, per_edge: bool, effective: bool) -> np.ndarray:
    """The features of the op weights, ``(n, num_parameters - 1)`` float: per-edge one-hots of the
    non-``none`` ops (edge-major), or the count of each non-``none`` op in the cell. With
    ``effective``, ops on no input -> output path are left out."""
    codes = encode_cells(cells)
    keep = _reachability(codes != 0) if effective else codes != 0
    onehot = np.zeros((codes.shape[0], NUM_EDGES, NUM_OPS), dtype=np.float64)
    np.put_along_axis(onehot, codes[:, :, None], 1.0, axis=2)
    onehot *= keep[:, :, None]
    onehot = onehot[:, :, 1:]
    return onehot.reshape(codes.shape[0], -1) if per_edge else onehot.sum(axis=1)


# ---- the model -----------------------------------------------------------------------------
@dataclass(frozen=True)
class NB201LatencyModel:
    """``latency = intercept + sum_e weights[e, op_e]`` (ms, or whatever unit it was fitted in).

    ``weights`` is ``(6, 5)``: rows are edges in the official order, columns ops in
    :data:`~nasforge.spaces.nb201.OPS` order; column 0 (``none``) is 0, and with
    ``per_edge=False`` all rows are equal. With ``effective``, edges on no input -> output path
    contribute nothing.
    """

    intercept: float
    weights: np.ndarray
    per_edge: bool = False
    effective: bool = False

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        if w.shape != (NUM_EDGES, NUM_OPS):
            raise ConfigError(f"weights must have shape ({NUM_EDGES}, {NUM_OPS}), got {w.shape}")
        object.__setattr__(self, "weights", w)

    def predict_many(self, cells: Iterable[CellLike] | np.ndarray) -> np.ndarray:
        """Predicted latency of each cell, ``(n,)``."""
        codes = encode_cells(cells)
        per_edge = self.weights[np.arange(NUM_EDGES)[None, :], codes]  # (n, 6)
        if self.effective:
            per_edge = per_edge * _reachability(codes != 0)
        return self.intercept + per_edge.sum(axis=1)

    def predict(self, cell: CellLike) -> float:
        """Predicted latency of one cell."""
        return float(self.predict_many([cell])[0])

    def expected_latency(self, probs: torch.Tensor) -> torch.Tensor:
        """The expected predicted latency when edge ``e`` takes op ``k`` with probability
        ``probs[..., e, k]``, edges independent: differentiable in ``probs`` (shape ``(..., 6, 5)``,
        ops in :data:`~nasforge.spaces.nb201.OPS` order; rows need not be normalised, each row is
        used as given). Without ``effective`` it is ``intercept + sum(probs * weights)``, whose
        gradient is ``weights``; with it, each edge's term is weighted by the probability that the
        edge is on an input -> output path given that it is not ``none`` (exact, over the 2**5
        none-patterns of the other edges)."""
        if probs.shape[-2:] != (NUM_EDGES, NUM_OPS):
            raise ConfigError(f"probs must have shape (..., {NUM_EDGES}, {NUM_OPS}), got {tuple(probs.shape)}")
        w = torch.as_tensor(self.weights, dtype=probs.dtype, device=probs.device)
        per_edge = (probs * w).sum(dim=-1)  # (..., 6): expected weight, none contributing 0
        if self.effective:
            per_edge = per_edge * _on_path_probability(1.0 - probs[..., 0])
        return self.intercept + per_edge.sum(dim=-1)

    def op_weights(self) -> dict[str, float] | list[dict[str, float]]:
        """The weights by op name: one dict (shared) or one per edge (``per_edge``)."""
        rows = [{op: float(v) for op, v in zip(OPS, row)} for row in self.weights]
        return rows if self.per_edge else rows[0]

    def to_dict(self) -> dict[str, Any]:
        return {"intercept": self.intercept, "weights": self.weights.tolist(), "per_edge": self.per_edge,
                "effective": self.effective, "ops": list(OPS), "edges": [f"{frm}->{to}" for to, frm in EDGES]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NB201LatencyModel:
        return cls(float(d["intercept"]), np.array(d["weights"], dtype=np.float64), bool(d["per_edge"]),
                   bool(d["effective"]))


_PATTERNS = np.array(list(itertools.product((0, 1), repeat=NUM_EDGES)), dtype=bool)  # (64, 6)
_PATTERN_ON_PATH = _reachability(_PATTERNS)  # (64, 6)


def _on_path_probability(q: torch.Tensor) -> torch.Tensor:
    """``q[..., e]`` = P(edge e is not ``none``) -> ``P(edge e on an input -> output path | e not none)``,
    ``(..., 6)``, summing over the none-patterns of the other edges (no division by ``q``)."""
    m = torch.as_tensor(_PATTERNS, dtype=q.dtype, device=q.device)  # (64, 6)
    on = torch.as_tensor(_PATTERN_ON_PATH, dtype=q.dtype, device=q.device)
    qe = q.unsqueeze(-2)  # (..., 1, 6)
    factor = m * qe + (1 - m) * (1 - qe)  # (..., 64, 6): P(edge f in pattern state)
    eye = torch.eye(NUM_EDGES, dtype=torch.bool, device=q.device)
    others = torch.where(eye, torch.ones((), dtype=q.dtype, device=q.device), factor.unsqueeze(-2))
    prob_others = others.prod(dim=-1)  # (..., 64, 6): product over f != e
    return (on * prob_others).sum(dim=-2)


def fit(
    cells: Iterable[CellLike] | np.ndarray, latencies: Sequence[float] | np.ndarray, *, per_edge: bool = False,
    effective: bool = False, alpha: float = 0.0, nonnegative: bool = True,
) -> NB201LatencyModel:
    """Fit a per-op latency model on measured cells (least squares on the latencies).

    Args:
        cells: the measured cells (see :func:`encode_cells`).
        latencies: their latencies, one positive finite number per cell.
        per_edge: one weight per (edge, op) instead of one per op.
        effective: ops on no input -> output path count as ``none``.
        alpha: ridge penalty ``alpha * ||v / s||^2``, ``s`` the mean latency (so ``alpha`` does not
            depend on the unit). ``v`` is the op weights of a shared model, and for a per-edge
            model the deviations ``w[e, op] - w_shared[op]`` from shared op weights fitted
            jointly: the ridge shrinks a per-edge model toward the shared one, never the constant.
            With ``alpha=0`` at least :func:`num_parameters` cells are needed.
        nonnegative: the shared op weights are >= 0 (NNLS); the constant and per-edge deviations
            are free in sign.

    Raises:
        DataError: mismatched lengths, no cells, non-finite latencies.
        BudgetError: fewer cells than parameters with ``alpha=0``.
    """
    codes = encode_cells(cells)
    y = np.asarray(latencies, dtype=np.float64).reshape(-1)
    if codes.shape[0] != y.shape[0]:
        raise DataError(f"got {codes.shape[0]} cells but {y.shape[0]} latencies")
    if y.size == 0:
        raise DataError("no measured cells to fit a latency model on")
    if not np.all(np.isfinite(y)):
        raise DataError(f"latencies must be finite numbers, got {y[~np.isfinite(y)][:3].tolist()}")
    alpha = check_float("alpha", alpha, low=0.0)
    p = num_parameters(per_edge=per_edge)
    if alpha == 0.0 and y.size < p:
        kind = "per-edge" if per_edge else "shared-op"
        raise BudgetError(
            f"{y.size} cells cannot determine the {p} parameters of the {kind} latency model without "
            f"regularisation: measure at least {p} cells, or pass alpha > 0 (ridge)"
        )
    # blocks of columns: (features, sign-free, ridge-penalised). A per-edge model is the shared
    # model plus per-(edge, op) deviations; the ridge shrinks the deviations toward the shared
    # op weights (not toward 0), which is what makes it usable with fewer cells than parameters.
    n = y.size
    shared = design_matrix(codes, per_edge=False, effective=effective)
    blocks: list[tuple[np.ndarray, bool, bool]] = [(np.ones((n, 1)), True, False), (shared, not nonnegative, not per_edge)]
    if per_edge:
        blocks.append((design_matrix(codes, per_edge=True, effective=effective), True, True))
    scale = float(np.mean(np.abs(y))) or 1.0
    sol = _penalised_least_squares(blocks, y / scale, alpha, nonnegative) * scale
    c, w_shared = sol[0], sol[1:NUM_OPS]
    weights = np.zeros((NUM_EDGES, NUM_OPS))
    weights[:, 1:] = w_shared[None, :]
    if per_edge:
        weights[:, 1:] += sol[NUM_OPS:].reshape(NUM_EDGES, NUM_OPS - 1)
    return NB201LatencyModel(float(c), weights, per_edge, effective)


def _penalised_least_squares(
    blocks: Sequence[tuple[np.ndarray, bool, bool]], b: np.ndarray, alpha: float, nonnegative: bool
) -> np.ndarray:
    """``argmin ||A x - b||^2 + alpha ||x_penalised||^2`` with ``A`` the blocks side by side; with
    ``nonnegative``, the coefficients of blocks not marked sign-free are >= 0 (NNLS, a sign-free
    column entering as the difference of two non-negative ones)."""
    cols, penalised, free = [], [], []
    for X, is_free, is_penalised in blocks:
        cols.append(X)
        penalised += [is_penalised] * X.shape[1]
        free += [is_free] * X.shape[1]
    A = np.concatenate(cols, axis=1)
    k = A.shape[1]
    pen = np.flatnonzero(penalised)
    if alpha > 0 and pen.size:
        rows = np.zeros((pen.size, k))
        rows[np.arange(pen.size), pen] = math.sqrt(alpha)
        A = np.concatenate([A, rows])
        b = np.concatenate([b, np.zeros(pen.size)])
    if not nonnegative:
        return np.linalg.lstsq(A, b, rcond=None)[0]
    from scipy.optimize import nnls

    neg = np.flatnonzero(free)
    sol, _ = nnls(np.concatenate([A, -A[:, neg]], axis=1), b, maxiter=50 * (k + neg.size))
    x = sol[:k].copy()
    x[neg] -= sol[k:]
    return x


# ---- the NB201 table's device latencies ----------------------------------------------------
def latency_columns(table: NB201Table) -> tuple[str, ...]:
    """The table's device-latency columns (``*_latency_ms``: HW-NAS-Bench's ``hwnb_*`` and HELP's
    ``help_*`` in the data kit), sorted."""
    names: set[str] = set()
    for row in table.rows.values():
        names.update(k for k in row if k.endswith(_LATENCY_SUFFIX))
        break
    return tuple(sorted(names))


def table_latencies(table: NB201Table, device: str) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, latencies)`` of every cell of ``table`` that has a latency in column ``device``
    (the full column name, or the name without ``_latency_ms``): ``(n, 6)`` op codes and ``(n,)``.

    Raises:
        UnknownNameError: ``device`` is not a latency column; the message lists the valid ones.
    """
    valid = latency_columns(table)
    column = device if device in valid else device + _LATENCY_SUFFIX
    if column not in valid:
        raise UnknownNameError("device latency column", device, valid)
    keys = [k for k, r in table.rows.items() if column in r]
    first = table.rows[keys[0]] if keys else {}
    if all(c in first for c in OP_CODE_COLUMNS):
        codes = np.array([[int(table.rows[k][c]) for c in OP_CODE_COLUMNS] for k in keys], dtype=np.int64)
        codes = encode_cells(codes)
    else:
        codes = encode_cells(keys)
    return codes, np.array([table.rows[k][column] for k in keys], dtype=np.float64)


@dataclass(frozen=True)
class FewShotScore:
    """Rank agreement of a model fitted on ``n_train`` cells with the held-out cells' latencies."""

    n_train: int
    n_test: int
    spearman: float
    kendall: float
    model: NB201LatencyModel


def few_shot_score(
    codes: np.ndarray, latencies: np.ndarray, n: int, *, seed: int, **fit_kwargs: Any
) -> FewShotScore:
    """Fit on ``n`` cells drawn at random (``numpy.random.default_rng(seed)``) from ``codes`` and
    score the predictions on all the other cells: Spearman rho and Kendall tau (tau-b).

    Raises:
        BudgetError: ``n`` < 1 or ``n`` leaves no cell to evaluate on (``n >= len(codes)``).
    """
    from scipy.stats import kendalltau, spearmanr

    total = int(np.asarray(latencies).shape[0])
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise BudgetError(f"the number of training cells must be an integer >= 1, got {n!r}")
    if n >= total:
        raise BudgetError(
            f"cannot draw {n} training cells and keep any to evaluate on: the table has {total} cells "
            f"(use n <= {total - 1})"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(total)
    train, test = order[:n], order[n:]
    model = fit(codes[train], latencies[train], **fit_kwargs)
    pred = model.predict_many(codes[test])
    truth = latencies[test]
    rho = float(spearmanr(pred, truth).statistic)
    tau = float(kendalltau(pred, truth).statistic)
    return FewShotScore(int(n), int(test.size), rho, tau, model)
