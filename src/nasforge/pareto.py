"""Pareto tools: dominance, non-dominated sorting, crowding distance, Pareto fronts, 2-D hypervolume.

Pure functions on numbers (numpy only, no torch), shared by the multi-objective searchers
(:mod:`nasforge.searchers.nsga2`, :mod:`nasforge.searchers.pareto_wrapper`), the search loop,
the reports and the benchmarks.

Conventions:

* An *objective* is a ``(metric, sign)`` pair: ``+1`` maximises the metric, ``-1`` minimises
  it (``("val_acc", 1)``, ``("params", -1)``). :func:`check_objectives` validates a tuple of them.
* The array functions (:func:`non_dominated_sort`, :func:`pareto_ranks`,
  :func:`crowding_distance`, :func:`hypervolume_2d`) take *oriented* values, an ``(n, m)``
  array in which every column is to be **maximised** (the metric times its sign, see
  :func:`orient`). NaN counts as ``-inf``: the worst value, so a failed trial is dominated by
  every point that is better in some objective.
* ``a`` dominates ``b`` when ``a >= b`` in every objective and ``a > b`` in at least one
  (Deb et al., NSGA-II, IEEE TEC 2002). Equal points do not dominate each other: duplicates
  share a front.

Non-dominated sorting returns the fronts of Deb's fast non-dominated sort (front 0 is the
Pareto front; front k is the Pareto front of what remains without fronts 0..k-1), from the
all-pairs dominance matrix, computed in row chunks so memory stays O(n): each point's row is
computed once to count its dominators and once more when its front is removed.

The crowding distance is Deb's (Section III-B of the paper): per objective, sort the front,
give both boundary points an infinite distance and every other point the gap between its two
neighbours divided by the objective's range, summed over objectives. Rules for the corner
cases, which the paper leaves open: ties in an objective are sorted by index (so of two equal
boundary points the one with the lower index is the boundary); the range is that of the
*finite* values; a gap between a finite and an infinite neighbour counts as a whole range (1),
a gap between two equal infinities as 0; an objective with zero range adds 0 to interior
points. Fronts of one or two points are all boundary (infinite distance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nasforge.errors import ConfigError

Objectives = tuple[tuple[str, int], ...]


def check_objectives(objectives: Any) -> Objectives:
    """Validate ``((metric, sign), ...)``: at least one objective, distinct metric names, signs +1/-1.

    Returns them as a tuple of ``(str, int)`` tuples; raises :class:`ConfigError` naming the bad entry.
    """
    try:
        items = list(objectives)
    except TypeError:
        raise ConfigError(f"objectives must be a sequence of (metric, sign) pairs, got {objectives!r}") from None
    if not items:
        raise ConfigError("objectives must hold at least one (metric, sign) pair, got none")
    out: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2:
            raise ConfigError(f"each objective is a (metric, sign) pair, got {item!r}")
        metric, sign = item
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"objective metric must be a non-empty string, got {metric!r}")
        if isinstance(sign, bool) or sign not in (1, -1):
            raise ConfigError(f"objective sign of {metric!r} must be +1 (maximise) or -1 (minimise), got {sign!r}")
        out.append((metric, int(sign)))
    names = [m for m, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"objective metrics must be distinct, got {names}")
    return tuple(out)


def objective_vector(metrics: Mapping[str, float] | None, objectives: Objectives, *, failed: bool = False) -> tuple[float, ...]:
    """Oriented values (``sign * metric``, to maximise) of one trial.

    A failed trial (``failed=True``, e.g. fitness ``-inf``) gets ``-inf`` everywhere, whatever its
    metrics say; NaN counts as ``-inf``. A metric missing from a trial that did not fail raises
    :class:`ConfigError` (the evaluator or cost model does not produce it).
    """
    if failed:
        return tuple(-math.inf for _ in objectives)
    out = []
    for metric, sign in objectives:
        if metrics is None or metric not in metrics:
            have = sorted(metrics) if metrics is not None else "no metrics"
            raise ConfigError(f"objective metric {metric!r} is missing from the trial's metrics (got {have})")
        v = sign * float(metrics[metric])
        out.append(-math.inf if math.isnan(v) else v)
    return tuple(out)


def orient(points: Sequence[Mapping[str, float]], objectives: Objectives) -> np.ndarray:
    """``(n, m)`` array of ``sign * metric`` per point and objective; missing or NaN values give ``-inf``."""
    objectives = check_objectives(objectives)
    out = np.full((len(points), len(objectives)), -np.inf)
    for i, p in enumerate(points):
        for j, (metric, sign) in enumerate(objectives):
            v = p.get(metric)
            if v is not None and not math.isnan(float(v)):
                out[i, j] = sign * float(v)
    return out


def _as_values(values: Any) -> np.ndarray:
    v = np.array(values, dtype=float)
    if v.ndim == 1 and v.size == 0:
        v = v.reshape(0, 1)
    if v.ndim != 2:
        raise ConfigError(f"expected an (n, m) array of objective values, got shape {v.shape}")
    v[np.isnan(v)] = -np.inf
    return v


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True if ``a`` is at least as good as ``b`` in every (maximised) objective and better in one."""
    x = _as_values([a, b])
    return bool(np.all(x[0] >= x[1]) and np.any(x[0] > x[1]))


_CHUNK = 256  # rows of the dominance matrix computed at once (memory: _CHUNK x n x m booleans)


def _dominated_by(v: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """How many of the points ``v[rows]`` dominate each point of ``v`` (length n)."""
    count = np.zeros(v.shape[0], dtype=np.int64)
    for start in range(0, rows.size, _CHUNK):
        a = v[rows[start:start + _CHUNK]]
        ge = np.ones((a.shape[0], v.shape[0]), dtype=bool)
        gt = np.zeros_like(ge)
        for j in range(v.shape[1]):  # column by column: numpy reduces a length-m last axis slowly
            ge &= a[:, j, None] >= v[None, :, j]
            gt |= a[:, j, None] > v[None, :, j]
        count += (ge & gt).sum(axis=0)
    return count


def _first_front(v: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the non-dominated rows of ``v``, by a sweep in lexicographically
    descending order: a point can only be dominated by points before it, and if it is dominated
    at all then some point of the front dominates it, so it is compared with the front found so
    far only (fast when the front is small, as for the 15,625 NB201 cells)."""
    order = np.lexsort(tuple(-v[:, j] for j in reversed(range(v.shape[1]))))
    front: list[int] = []
    kept = np.empty((len(order), v.shape[1]))
    for k in order:
        p = v[k]
        f = kept[:len(front)]
        if not bool(np.any(np.all(f >= p, axis=1) & np.any(f > p, axis=1))):
            kept[len(front)] = p
            front.append(int(k))
    return np.sort(np.array(front, dtype=np.int64))


def first_front(values: Any) -> list[int]:
    """Indices (ascending) of the non-dominated rows of ``(n, m)`` oriented values (front 0 only,
    faster than :func:`non_dominated_sort` when the front is small)."""
    v = _as_values(values)
    return _first_front(v).tolist() if v.shape[0] else []


def front_of_told(
    told: Sequence[tuple[Any, Sequence[float], Mapping[str, float]]], n_objectives: int,
) -> list[tuple[Any, dict[str, float]]]:
    """The Pareto-optimal ``(key, metrics)`` among ``(key, oriented values, metrics)`` records
    (failed ones already left out), each key once, in record order: what a multi-objective
    searcher reports as its front."""
    values = np.array([v for _, v, _ in told], dtype=float).reshape(len(told), n_objectives)
    out: list[tuple[Any, dict[str, float]]] = []
    seen: set[Any] = set()
    for i in first_front(values):
        key, _, metrics = told[i]
        if key not in seen:
            seen.add(key)
            out.append((key, dict(metrics)))
    return out


def non_dominated_sort(values: Any) -> list[list[int]]:
    """Fronts of Deb's fast non-dominated sort: lists of point indices (ascending), best front first.

    ``values``: ``(n, m)`` oriented objective values (every column maximised; NaN is ``-inf``).
    """
    v = _as_values(values)
    n = v.shape[0]
    fronts: list[list[int]] = []
    count = _dominated_by(v, np.arange(n))  # how many points dominate each point
    remaining = np.ones(n, dtype=bool)
    while remaining.any():
        front = np.flatnonzero(remaining & (count == 0))
        fronts.append(front.tolist())
        remaining[front] = False
        count -= _dominated_by(v, front)
    return fronts


def pareto_ranks(values: Any) -> np.ndarray:
    """Front number of each point (0 = non-dominated), from :func:`non_dominated_sort`."""
    v = _as_values(values)
    ranks = np.zeros(v.shape[0], dtype=int)
    for r, front in enumerate(non_dominated_sort(v)):
        ranks[front] = r
    return ranks


def crowding_distance(values: Any) -> np.ndarray:
    """Deb's crowding distance of each point of one front (see the module docstring for corner cases)."""
    v = _as_values(values)
    n, m = v.shape
    dist = np.zeros(n)
    if n <= 2:
        dist[:] = np.inf
        return dist
    index = np.arange(n)
    for j in range(m):
        order = np.lexsort((index, v[:, j]))  # ascending by value, ties by index
        col = v[order, j]
        dist[order[0]] = dist[order[-1]] = np.inf
        finite = col[np.isfinite(col)]
        span = float(finite.max() - finite.min()) if finite.size else 0.0
        with np.errstate(invalid="ignore"):
            gaps = col[2:] - col[:-2]
        contrib = np.where(np.isnan(gaps), 0.0, np.where(np.isinf(gaps), 1.0, gaps / span if span > 0 else 0.0))
        dist[order[1:-1]] += contrib
    return dist


def pareto_front(points: Sequence[Mapping[str, float]], objectives: Objectives) -> list[int]:
    """Indices (ascending) of the non-dominated points among metric mappings under ``objectives``.

    A missing or NaN metric counts as the worst value. Equal points are all kept.
    """
    return first_front(orient(points, objectives))


def hypervolume_2d(values: Any, reference: Sequence[float]) -> float:
    """Area dominated by 2-D oriented (maximised) points and dominating ``reference``.

    The union over points ``p`` of the boxes ``[reference, p]``; points not strictly better than
    the reference in both objectives (including ``-inf``/NaN ones) add nothing.
    """
    v = _as_values(values)
    if v.shape[0] and v.shape[1] != 2:
        raise ConfigError(f"hypervolume_2d needs 2 objectives, got {v.shape[1]}")
    ref = np.asarray(reference, dtype=float)
    if ref.shape != (2,) or not np.all(np.isfinite(ref)):
        raise ConfigError(f"the hypervolume reference point must be 2 finite numbers, got {list(reference)!r}")
    v = v[np.all(v > ref, axis=1)]
    if v.shape[0] == 0:
        return 0.0
    order = np.lexsort((-v[:, 1], -v[:, 0]))  # x descending, then y descending
    area, y_top = 0.0, float(ref[1])
    for x, y in v[order]:
        if y > y_top:
            area += (float(x) - float(ref[0])) * (float(y) - y_top)
            y_top = float(y)
    return area


def hypervolume(
    points: Sequence[Mapping[str, float]], objectives: Objectives, reference: Mapping[str, float] | Sequence[float],
) -> float:
    """Hypervolume of metric mappings under two ``(metric, sign)`` objectives.

    ``reference`` is in the metrics' own units (a mapping metric -> value, or values in the order
    of ``objectives``), e.g. ``{"val_acc": 0.0, "params": 5e6}`` for ``(("val_acc", 1), ("params", -1))``:
    the area of accuracy above 0 and parameters below 5M dominated by the points.
    """
    objectives = check_objectives(objectives)
    if len(objectives) != 2:
        raise ConfigError(f"hypervolume is implemented for 2 objectives, got {len(objectives)}: {objectives}")
    if isinstance(reference, Mapping):
        missing = [m for m, _ in objectives if m not in reference]
        if missing:
            raise ConfigError(f"the hypervolume reference lacks {missing}; it has {sorted(reference)}")
        raw = [float(reference[m]) for m, _ in objectives]
    else:
        raw = [float(r) for r in reference]
        if len(raw) != 2:
            raise ConfigError(f"the hypervolume reference needs 2 values, got {raw}")
    ref = [sign * r for r, (_, sign) in zip(raw, objectives)]
    return hypervolume_2d(orient(points, objectives), ref)
