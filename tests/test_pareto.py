"""nasforge.pareto against brute force: dominance, fronts, crowding distance, hypervolume."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from nasforge import pareto
from nasforge.errors import ConfigError
from nasforge.pareto import (
    check_objectives,
    crowding_distance,
    dominates,
    first_front,
    hypervolume,
    hypervolume_2d,
    non_dominated_sort,
    objective_vector,
    pareto_front,
    pareto_ranks,
)

INF = math.inf


def _dom(a, b) -> bool:
    a = [-INF if math.isnan(x) else x for x in a]
    b = [-INF if math.isnan(x) else x for x in b]
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def _brute_ranks(points) -> list[int]:
    """Front of each point = length of the longest dominance chain above it (independent of peeling)."""
    n = len(points)
    ranks: list[int | None] = [None] * n

    def rank(i: int) -> int:
        if ranks[i] is None:
            ranks[i] = max((rank(j) + 1 for j in range(n) if _dom(points[j], points[i])), default=0)
        return ranks[i]  # type: ignore[return-value]

    return [rank(i) for i in range(n)]


def _random_points(rng: random.Random, n: int, m: int) -> list[list[float]]:
    """Small integer grids (many ties and duplicates), some -inf and NaN."""
    pts = []
    for _ in range(n):
        p = [float(rng.randint(0, 4)) for _ in range(m)]
        if rng.random() < 0.1:
            p[rng.randrange(m)] = -INF
        if rng.random() < 0.05:
            p[rng.randrange(m)] = math.nan
        if rng.random() < 0.05:
            p = [-INF] * m  # a failed trial
        pts.append(p)
    return pts


@pytest.mark.parametrize("m", [1, 2, 3])
def test_non_dominated_sort_matches_brute_force(m):
    rng = random.Random(m)
    for trial in range(30):
        pts = _random_points(rng, rng.randint(1, 40), m)
        fronts = non_dominated_sort(pts)
        assert sorted(i for f in fronts for i in f) == list(range(len(pts)))
        assert all(f == sorted(f) and f for f in fronts)
        brute = _brute_ranks(pts)
        assert pareto_ranks(pts).tolist() == brute, (trial, pts)
        assert first_front(pts) == [i for i in range(len(pts)) if brute[i] == 0]


def test_chunked_dominance_counts_agree(monkeypatch):
    rng = random.Random(7)
    pts = _random_points(rng, 60, 2)
    expected = pareto_ranks(pts).tolist()
    monkeypatch.setattr(pareto, "_CHUNK", 7)  # several chunks, the last one partial
    assert pareto_ranks(pts).tolist() == expected == _brute_ranks(pts)


def test_dominance_ties_and_infinities():
    assert dominates([1, 2], [1, 1]) and not dominates([1, 1], [1, 1])
    assert not dominates([2, 0], [1, 1]) and not dominates([1, 1], [2, 0])
    assert dominates([0, 0], [-INF, -INF]) and not dominates([-INF, -INF], [-INF, -INF])
    assert dominates([0, 0], [math.nan, 0])  # NaN is the worst value
    assert non_dominated_sort([[1, 1], [1, 1], [0, 0]]) == [[0, 1], [2]]  # equal points share a front
    assert non_dominated_sort([]) == [] and first_front([]) == []


def test_pareto_front_of_metric_mappings_uses_signs():
    pts = [
        {"acc": 90, "params": 3e6},
        {"acc": 92, "params": 5e6},
        {"acc": 91, "params": 6e6},  # dominated by #1 (worse acc, more params)
        {"acc": 85, "params": 1e6},
        {"acc": 80, "params": 2e6},  # dominated by #3
        {"acc": 99},  # missing params: the worst value, yet the best accuracy keeps it on the front
    ]
    assert pareto_front(pts, (("acc", 1), ("params", -1))) == [0, 1, 3, 5]
    assert pareto_front(pts, (("acc", -1), ("params", 1))) == [0, 2, 4]  # the reverse trade-off


def test_crowding_distance_by_hand():
    d = crowding_distance([[1, 5], [2, 3], [4, 1]])
    assert d[0] == d[2] == INF
    assert d[1] == pytest.approx((4 - 1) / 3 + (5 - 1) / 4)
    d = crowding_distance([[0, 10], [1, 8], [3, 7], [6, 0]])
    assert d[0] == d[3] == INF
    assert d[1] == pytest.approx((3 - 0) / 6 + (10 - 7) / 10)
    assert d[2] == pytest.approx((6 - 1) / 6 + (8 - 0) / 10)
    assert crowding_distance([[1, 2], [2, 1]]).tolist() == [INF, INF]
    # a gap to an infinite neighbour counts as a whole range; the range is that of finite values
    d = crowding_distance([[-INF, 5], [3, 2], [1, 4]])
    assert d[0] == d[1] == INF and d[2] == pytest.approx(1.0 + (5 - 2) / 3)
    # equal values: the lower index is the boundary, a zero range adds nothing
    d = crowding_distance([[1, 3], [1, 2], [1, 1]])
    assert d[0] == d[2] == INF and d[1] == pytest.approx(0 + (3 - 1) / 2)


def test_crowding_distance_is_order_independent_without_ties():
    rng = np.random.default_rng(0)
    v = rng.random((12, 3))
    perm = rng.permutation(12)
    assert np.allclose(crowding_distance(v)[perm], crowding_distance(v[perm]))


def _brute_hv(points, ref) -> int:
    """Unit cells covered by the boxes [ref, p] (exact for integer coordinates)."""
    cells = set()
    for x, y in points:
        for cx, cy in itertools.product(range(ref[0], x), range(ref[1], y)):
            cells.add((cx, cy))
    return len(cells)


def test_hypervolume_2d_known_fronts_and_brute_force():
    assert hypervolume_2d([[1, 3], [2, 2], [3, 1]], [0, 0]) == pytest.approx(6.0)
    assert hypervolume_2d([[2, 2]], [0, 0]) == pytest.approx(4.0)
    assert hypervolume_2d([[2, 2], [1, 1]], [0, 0]) == pytest.approx(4.0)  # a dominated point adds nothing
    assert hypervolume_2d([[2, 2], [-1, 5], [3, 0]], [0, 0]) == pytest.approx(4.0)  # not beyond the reference
    assert hypervolume_2d([[-INF, 3], [math.nan, 1]], [0, 0]) == 0.0
    assert hypervolume_2d(np.empty((0, 2)), [0, 0]) == 0.0
    rng = random.Random(3)
    for _ in range(40):
        pts = [(rng.randint(-2, 8), rng.randint(-2, 8)) for _ in range(rng.randint(1, 12))]
        ref = (rng.randint(-3, 1), rng.randint(-3, 1))
        assert hypervolume_2d(pts, ref) == pytest.approx(_brute_hv(pts, ref))


def test_hypervolume_of_metrics_with_signs_and_reference():
    pts = [{"acc": 90.0, "params": 3.0}, {"acc": 80.0, "params": 1.0}, {"acc": 95.0, "params": 6.0}]
    objs = (("acc", 1), ("params", -1))
    # reference acc 0, params 5: the third point uses more than 5 and adds nothing
    expected = 90 * (5 - 3) + 80 * (3 - 1)
    assert hypervolume(pts, objs, {"acc": 0.0, "params": 5.0}) == pytest.approx(expected)
    assert hypervolume(pts, objs, [0.0, 5.0]) == pytest.approx(expected)
    with pytest.raises(ConfigError, match="params"):
        hypervolume(pts, objs, {"acc": 0.0})
    with pytest.raises(ConfigError, match="2 objectives"):
        hypervolume(pts, (("acc", 1),), [0.0])


def test_objectives_are_checked():
    assert check_objectives([("val_acc", 1), ["params", -1]]) == (("val_acc", 1), ("params", -1))
    for bad in [(), [("a", 2)], [("a", 1), ("a", -1)], [("a",)], "val_acc", [("", 1)], [("a", True)], 3]:
        with pytest.raises(ConfigError):
            check_objectives(bad)


def test_objective_vector_orients_and_fails_loudly():
    objs = (("val_acc", 1), ("params", -1))
    assert objective_vector({"val_acc": 90.0, "params": 2e6}, objs) == (90.0, -2e6)
    assert objective_vector({"val_acc": math.nan, "params": 2e6}, objs) == (-INF, -2e6)
    assert objective_vector(None, objs, failed=True) == (-INF, -INF)
    with pytest.raises(ConfigError, match="params"):
        objective_vector({"val_acc": 90.0}, objs)


def test_pareto_wrapper_front_is_the_brute_force_front_of_what_it_was_told():
    import math

    from nasforge import get_space
    from nasforge.searchers.evolution import RegularizedEvolution
    from nasforge.searchers.pareto_wrapper import ParetoWrapper

    space = get_space("nb201")
    w = ParetoWrapper(RegularizedEvolution(space, seed=0), (("val_acc", 1), ("params", -1)))
    told = []
    for i in range(40):
        a = w.ask()
        m = {"val_acc": float((i * 37) % 23), "params": float((i * 11) % 17)}
        w.tell(a, -math.inf if i % 9 == 8 else m["val_acc"], m)
        if i % 9 != 8:
            told.append((a, m))
    front = w.front()
    def dominated(m):
        return any(o["val_acc"] >= m["val_acc"] and o["params"] <= m["params"]
                   and (o["val_acc"] > m["val_acc"] or o["params"] < m["params"]) for _, o in told)
    expected = []
    for a, m in told:
        if not dominated(m) and a not in [x for x, _ in expected]:
            expected.append((a, m))
    assert front == expected
