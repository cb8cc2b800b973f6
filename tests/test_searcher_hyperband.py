"""Hyperband: the paper's bracket schedule, successive-halving promotions, the min_fidelity=1 degenerate case."""

from __future__ import annotations

import hashlib
import math

import pytest
from tests._toy import ToySpace

from nasforge import get_space, registry
from nasforge.errors import BudgetError, ConfigError
from nasforge.searchers.hyperband import Hyperband, HyperbandScheduler
from nasforge.searchers.random_search import RandomSearch


def _score(space, arch) -> float:
    return int(hashlib.sha256(space.format(arch).encode()).hexdigest()[:8], 16) / 16**8


def _drive(searcher, steps, fitness):
    """(arch, fidelity, fitness) of ``steps`` ask/tell rounds."""
    out = []
    for _ in range(steps):
        arch = searcher.ask()
        fid = searcher.fidelity()
        f = fitness(arch, fid)
        searcher.tell(arch, f, {"val_acc": f})
        out.append((arch, fid, f))
    return out


def test_registered_as_multi_fidelity():
    assert registry.get("method", "hyperband") is Hyperband
    assert Hyperband.multi_fidelity and not Hyperband.no_repeats
    assert Hyperband.options() == {"eta": 3, "min_fidelity": 1 / 9}


def test_bracket_plans_match_the_paper():
    plan9 = HyperbandScheduler(lambda: None, eta=3, min_fidelity=1 / 9).iteration_plan()  # type: ignore[arg-type,return-value]
    assert [[n for n, _ in b] for b in plan9] == [[9, 3, 1], [5, 1], [3]]
    assert [[f for _, f in b] for b in plan9] == [[1 / 9, 1 / 3, 1.0], [1 / 3, 1.0], [1.0]]
    # Table 1 of the paper: R = 81, eta = 3
    plan81 = HyperbandScheduler(lambda: None, eta=3, min_fidelity=1 / 81).iteration_plan()  # type: ignore[arg-type,return-value]
    assert [[n for n, _ in b] for b in plan81] == [[81, 27, 9, 3, 1], [34, 11, 3, 1], [15, 5, 1], [8, 2], [5]]
    assert [[round(f * 81) for _, f in b] for b in plan81] == [
        [1, 3, 9, 27, 81], [3, 9, 27, 81], [9, 27, 81], [27, 81], [81]]
    # min_fidelity need not be a power of 1/eta: R = 10 -> s_max = 2, smallest rung 1/9
    assert HyperbandScheduler(lambda: None, eta=3, min_fidelity=0.1).s_max == 2  # type: ignore[arg-type,return-value]
    assert HyperbandScheduler(lambda: None, eta=2, min_fidelity=1 / 8).s_max == 3  # type: ignore[arg-type,return-value]


def test_ask_tell_follows_the_schedule_and_repeats_it():
    space = get_space("nb201")
    hb = Hyperband(space, seed=0, eta=3, min_fidelity=1 / 9)
    runs = _drive(hb, 22 + 9, lambda a, f: _score(space, a))
    fids = [f for _, f, _ in runs]
    assert fids == [1 / 9] * 9 + [1 / 3] * 3 + [1.0] + [1 / 3] * 5 + [1.0] + [1.0] * 3 + [1 / 9] * 9
    assert hb.scheduler.iteration == 1


def test_promotions_are_the_top_k_by_fitness():
    space = get_space("nb201")
    hb = Hyperband(space, seed=3, eta=3, min_fidelity=1 / 9)
    failed = []

    def fitness(arch, fid):
        if fid < 0.2 and len(failed) < 1 and _score(space, arch) > 0.5:
            failed.append(arch)  # a good configuration that fails at the first rung: it must not be promoted
            return -math.inf
        return _score(space, arch) + fid  # fidelity shifts every score alike within a rung

    runs = _drive(hb, 18, fitness)
    rung0 = runs[:9]
    top3 = sorted(rung0, key=lambda r: -r[2])[:3]
    assert failed and failed[0] not in [a for a, _, _ in top3]
    promoted = [a for a, _, _ in runs[9:12]]
    assert promoted == [a for a, _, _ in rung0 if a in {t[0] for t in top3}]  # top 3, in evaluation order
    assert runs[12][0] == max(runs[9:12], key=lambda r: r[2])[0]
    bracket1 = runs[13:18]
    assert all(f == 1 / 3 for _, f, _ in bracket1)
    assert not {a for a, _, _ in bracket1} & {a for a, _, _ in rung0}  # a new bracket draws new configurations


def test_ties_and_failures_rank_in_evaluation_order():
    calls = iter(range(100))
    space = ToySpace()
    archs = [space.decode_sequence([i % 3, (i // 3) % 3, i // 9]) for i in range(27)]
    sched = HyperbandScheduler(lambda: archs[next(calls)], eta=3, min_fidelity=1 / 9)
    scores = [1.0, 2.0, 2.0, -math.inf, 2.0, math.nan, 0.5, 2.0, 0.0]
    for f in scores:
        arch, fid = sched.next()
        assert sched.report(arch, f) == fid == 1 / 9
    assert [sched.next()[0] for _ in range(1)] == [archs[1]]
    assert sched._configs == [archs[1], archs[2], archs[4]]  # ties: first evaluated first


def test_min_fidelity_one_is_random_search_at_full_budget():
    space = get_space("nb201")
    hb = Hyperband(space, seed=5, min_fidelity=1.0)
    rs = RandomSearch(space, seed=5)
    assert hb.scheduler.s_max == 0
    runs = _drive(hb, 30, lambda a, f: _score(space, a))
    assert all(f == 1.0 for _, f, _ in runs)
    assert [a for a, _, _ in runs] == [rs.ask() for _ in range(30)]


def test_asking_again_without_a_tell():
    space = get_space("nb201")
    hb = Hyperband(space, seed=1, min_fidelity=1 / 3)  # brackets: 3 at 1/3 -> 1 at 1; 2 at 1
    a0 = hb.ask()
    a0b = hb.ask()  # the loop discarded a0 (a cost constraint): the slot gets a new configuration
    assert a0b != a0 and hb.fidelity() == 1 / 3
    hb.tell(a0b, 0.9)
    for f in (0.1, 0.2):
        hb.tell(hb.ask(), f)
    promoted = hb.ask()
    assert promoted == a0b and hb.fidelity() == 1.0
    nxt = hb.ask()  # a discarded promotion counts as failed; the next bracket starts
    assert hb.fidelity() == 1.0 and hb.scheduler.bracket == 0 and nxt != promoted
    hb.tell(space.sample(hb.rng), 1.0)  # not the pending proposal: ignored by the brackets
    assert hb.scheduler._pending is not None


def test_bad_options_raise_typed_errors():
    space = ToySpace()
    for eta in (1, 2.5, 0, True):
        with pytest.raises(ConfigError, match="eta"):
            Hyperband(space, eta=eta)
    for mf in (0, -0.1, 1.5, math.nan):
        with pytest.raises(BudgetError, match="min_fidelity"):
            Hyperband(space, min_fidelity=mf)
