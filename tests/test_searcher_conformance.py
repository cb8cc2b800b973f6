"""One conformance suite for every registered multi-trial searcher (Optuna's sampler suite is the model).

Parametrized over the method registry, so a new searcher is tested for free. For each method and
each of the nb201, darts and mobilenet spaces it accepts:

* every proposal is a valid Arch of the space, at a fidelity in (0, 1];
* a run is deterministic under its seed, and another seed gives another run;
* resuming (a fresh searcher replaying the recorded trials: ask must give back the recorded
  architecture and fidelity, then tell) continues exactly as the uninterrupted run;
* failed trials (fitness -inf) are accepted;
* methods that forbid repeats never propose an architecture twice.

The landscape is synthetic but fixed (a hash of the architecture text), with every metric a
searcher declares in ``required_metrics`` supplied as a positive number.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest

from nasforge import get_space, registry
from nasforge.errors import ConfigError
from nasforge.train.oneshot import OneShotMethod

MULTI_TRIAL = [n for n in registry.names("method") if not isinstance(registry.get("method", n), OneShotMethod)]
SPACES = ("nb201", "darts", "mobilenet")
STEPS = 16  # trials per run
RESUME_AT = 7  # the kill happens after this many finished trials
OBJECTIVES = (("val_acc", 1), ("params", -1))


def _u(text: str, salt: str) -> float:
    """A fixed pseudo-random number in [0, 1) per (architecture, salt)."""
    return int(hashlib.sha256(f"{salt}:{text}".encode()).hexdigest()[:12], 16) / 16**12


def _evaluate(space, searcher, arch, step: int) -> tuple[float, dict[str, float]]:
    text = space.format(arch)
    metrics = {"val_acc": 50 + 45 * _u(text, "acc"), "params": 1e5 * (1 + _u(text, "params")),
               "flops": 1e7 * (1 + _u(text, "flops")), "latency_ms": 1 + 9 * _u(text, "lat")}
    for name in searcher.required_metrics():
        metrics.setdefault(name, 1 + 9 * _u(text, name))
    fitness = -math.inf if step % 5 == 4 else metrics["val_acc"]  # every fifth trial failed
    return fitness, metrics


def _make(name: str, space, seed: int):
    cls = registry.get("method", name)
    kwargs: dict[str, Any] = dict(cls.smoke_options)
    if cls.multi_objective:
        kwargs["objectives"] = OBJECTIVES
    return cls(space, seed=seed, **kwargs)


def _run(name: str, space, seed: int, replay: list[tuple] | None = None) -> list[tuple]:
    """STEPS trials as (arch, fidelity, fitness, metrics); ``replay`` records are replayed first."""
    searcher = _make(name, space, seed)
    records: list[tuple] = []
    for step in range(STEPS):
        arch = searcher.ask()
        fid = searcher.fidelity()
        if replay is not None and step < len(replay):
            assert (arch, fid) == replay[step][:2], f"replay diverged at trial {step}"
            _, _, fitness, metrics = replay[step]
        else:
            fitness, metrics = _evaluate(space, searcher, arch, step)
        searcher.tell(arch, fitness, dict(metrics))
        records.append((arch, fid, fitness, metrics))
    return records


def _space_or_skip(name: str, space_name: str):
    space = get_space(space_name)
    try:
        registry.get("method", name).check_space(space)
    except ConfigError as e:
        if space_name == "nb201":
            raise AssertionError(f"{name} must run on nb201: {e}") from None
        pytest.skip(f"{name} does not run on {space_name}: {e}")
    return space


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, str, int], list[tuple]]:
    return {}  # (method, space, seed) -> records, shared by the tests of this module


def _cached(runs, name: str, space, seed: int) -> list[tuple]:
    key = (name, space.name, seed)
    if key not in runs:
        runs[key] = _run(name, space, seed)
    return runs[key]


def test_every_multi_trial_method_is_listed_with_its_paper():
    for name in MULTI_TRIAL:
        cls = registry.get("method", name)
        assert cls.name == name and cls.paper, name
        assert isinstance(cls.options(), dict)


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("name", MULTI_TRIAL)
def test_proposals_are_valid_archs_at_a_valid_fidelity(runs, name, space_name):
    space = _space_or_skip(name, space_name)
    for arch, fid, _, _ in _cached(runs, name, space, 0):
        assert space.validate(arch) is arch
        assert 0.0 < fid <= 1.0


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("name", MULTI_TRIAL)
def test_deterministic_under_a_seed_and_resumes_by_replay(runs, name, space_name):
    space = _space_or_skip(name, space_name)
    first = _cached(runs, name, space, 0)
    resumed = _run(name, space, 0, replay=first[:RESUME_AT])
    assert [r[:2] for r in resumed] == [r[:2] for r in first]
    other = _cached(runs, name, space, 1)
    assert [r[0] for r in other] != [r[0] for r in first]


NO_REPEATS = [n for n in MULTI_TRIAL if registry.get("method", n).no_repeats]


def test_the_methods_that_forbid_repeats():
    assert {"bananas", "gp_evolution", "nao", "pnas", "metaqnn", "mcts"} <= set(NO_REPEATS)


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("name", NO_REPEATS)
def test_no_repeated_proposal_where_the_method_forbids_it(runs, name, space_name):
    space = _space_or_skip(name, space_name)
    archs = [r[0] for r in _cached(runs, name, space, 0)]
    assert len(set(archs)) == len(archs)


CONCURRENT = [n for n in MULTI_TRIAL if registry.get("method", n).concurrent_asks]


def test_the_methods_that_need_each_result_before_the_next_ask():
    assert set(MULTI_TRIAL) - set(CONCURRENT) == {"hyperband", "bohb"}


@pytest.mark.parametrize("name", CONCURRENT)
def test_several_pending_proposals_told_in_any_order(name):
    """As several workers use a searcher: up to 4 proposals pending at once, results told in a
    shuffled order. Every proposal is valid, nothing raises, and methods that forbid repeats
    never propose an architecture twice (pending ones included)."""
    import random

    space = get_space("nb201")
    searcher = _make(name, space, 0)
    order = random.Random(1)
    pending: list = []
    proposed: list = []
    for step in range(STEPS + 8):
        while len(pending) < 4:
            arch = searcher.ask()
            assert space.validate(arch) is arch
            pending.append(arch)
            proposed.append(arch)
        arch = pending.pop(order.randrange(len(pending)))
        fitness, metrics = _evaluate(space, searcher, arch, step)
        searcher.tell(arch, fitness, dict(metrics))
    if registry.get("method", name).no_repeats:
        assert len(set(proposed)) == len(proposed)
