"""A study worker: ask, evaluate, tell, against a study that other workers share.

The study is an event log (see :mod:`nasforge.study.store`): each ask and each tell has a
position in one order. A worker keeps its own searcher and brings it up to date by replaying
the events it has not seen (an ask event: ``ask()`` must give back the recorded architecture and
fidelity; a tell event: ``tell(arch, fitness, metrics)``). Under the study lock it then appends
its own event, so every worker's searcher is the same logical searcher, wherever the events
came from. A single worker writes ask, tell, ask, tell... which replays to the sequential search
exactly: a search killed at any moment and resumed ends as the uninterrupted one does.

One round of the loop::

    with lock: reap dead workers' trials; catch up; pick the task; record it (RUNNING)
    evaluate (outside the lock, with a heartbeat)
    with lock: catch up; record the result with the next position; tell the searcher

Tasks, in order of preference: evaluate again the architecture of a trial whose worker died
(up to ``max_retries`` times, then it is told as failed); ask the searcher for a new one (when
fewer than ``trials`` results are in or pending); otherwise wait for the running ones. A
searcher whose ``concurrent_asks`` is False (successive halving needs each rung's results
before the next proposal) has at most one pending trial: other workers wait.

An evaluation that raises (an error, running out of memory) or whose objective is NaN is
recorded FAIL with its reason and told to the searcher as fitness ``-inf``; the search goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from nasforge.arch import Arch
from nasforge.errors import IncompatibleRunError, NasforgeError
from nasforge.signals import check_stop
from nasforge.study.store import Study

if TYPE_CHECKING:  # the study layer sits below the searchers: it only drives one
    from nasforge.searchers.base import Searcher

COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                           optuna.trial.TrialState.RUNNING)


class TrialFailed(Exception):  # noqa: N818 (a result, not a programming error)
    """Raised by an evaluation whose result is a failure (e.g. a NaN objective); the message is the reason."""

    def __init__(self, reason: str, metrics: dict[str, float] | None = None) -> None:
        super().__init__(reason)
        self.metrics = dict(metrics or {})


@dataclass(frozen=True)
class Outcome:
    """What an evaluation gives: the fitness to maximise, the metrics, the cost charged."""

    fitness: float
    metrics: dict[str, float]
    cost: float = 0.0


@dataclass
class Slot:
    """One ask event and what became of it."""

    seq: int
    arch: str
    fidelity: float
    told: optuna.trial.FrozenTrial | None = None
    running: list[optuna.trial.FrozenTrial] = field(default_factory=list)
    deaths: int = 0  # trials of this ask whose worker died (reaped; not those stopped by Ctrl-C / SIGTERM)
    last: int = -1  # number of its latest trial


@dataclass
class Log:
    """The study read as events: ``events`` sorted by position, ``("ask" | "tell", seq, slot)``."""

    slots: dict[int, Slot]
    events: list[tuple[str, int, Slot]]
    next_seq: int

    @property
    def told(self) -> int:
        return sum(1 for s in self.slots.values() if s.told is not None)

    def pending(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.told is None]

    def orphans(self) -> list[Slot]:
        """Asks with no result and nobody evaluating them (their workers died), oldest first."""
        return sorted((s for s in self.slots.values() if s.told is None and not s.running), key=lambda s: s.seq)


def is_told(t: optuna.trial.FrozenTrial) -> bool:
    """A trial whose result the searcher was told: finished, or failed by its evaluation."""
    if "tell_seq" not in t.user_attrs:
        return False
    if t.state == COMPLETE:
        return True
    return t.state == FAIL and "fail_reason" in t.user_attrs and not t.user_attrs.get("interrupted", False)


def read_log(trials: list[optuna.trial.FrozenTrial]) -> Log:
    """The event log of a study's trials.

    Trials written before the log existed (finished, without positions) come first, as the
    sequential ask, tell pairs they were, in trial-number order.
    """
    slots: dict[int, Slot] = {}
    legacy = sorted((t for t in trials if t.state == COMPLETE and "ask_seq" not in t.user_attrs and "arch" in t.user_attrs),
                    key=lambda t: t.number)
    events: list[tuple[str, int, Slot]] = []
    for i, t in enumerate(legacy):
        slot = Slot(2 * i, str(t.user_attrs["arch"]), float(t.user_attrs.get("fidelity", 1.0)), told=t, last=t.number)
        slots[slot.seq] = slot
        events += [("ask", 2 * i, slot), ("tell", 2 * i + 1, slot)]
    next_seq = 2 * len(legacy)
    for t in sorted(trials, key=lambda t: t.number):
        if "ask_seq" not in t.user_attrs:
            continue
        seq = int(t.user_attrs["ask_seq"])
        if seq in slots:
            slot = slots[seq]
        else:
            slot = slots[seq] = Slot(seq, str(t.user_attrs["arch"]), float(t.user_attrs.get("fidelity", 1.0)))
            events.append(("ask", seq, slot))
        slot.last = max(slot.last, t.number)
        next_seq = max(next_seq, seq + 1)
        if t.state == RUNNING:
            slot.running.append(t)
        elif is_told(t) and slot.told is None:
            slot.told = t
            tell = int(t.user_attrs["tell_seq"])
            events.append(("tell", tell, slot))
            next_seq = max(next_seq, tell + 1)
        elif t.state == FAIL and "fail_reason" not in t.user_attrs:
            slot.deaths += 1  # reaped: its worker died (a Ctrl-C records a reason and is not counted)
    events.sort(key=lambda e: e[1])
    return Log(slots, events, next_seq)


def told_fitness(t: optuna.trial.FrozenTrial) -> float:
    return float(t.value) if t.state == COMPLETE and t.value is not None else -math.inf


def told_metrics(t: optuna.trial.FrozenTrial) -> dict[str, float]:
    return {k: float(v) for k, v in t.user_attrs.get("metrics", {}).items()}


@dataclass
class WorkerStats:
    evaluated: int = 0  # evaluations this worker finished (results and failures)
    failed: int = 0  # of which failed
    retried: int = 0  # evaluations of a dead worker's architecture
    waited_seconds: float = 0.0


class StudyWorker:
    """Drives ``searcher`` against ``study`` until ``trials`` results are in (see module docstring).

    Args:
        study: the shared study.
        searcher: a fresh searcher (seeded as every other worker's).
        format_arch: the space's canonical text of an Arch.
        ask: ``searcher.ask`` with the loop's feasibility filter (proposals breaking a cost
            constraint are dropped before evaluation); called under the study lock.
        evaluate: ``(arch, fidelity) -> Outcome``; raises :class:`TrialFailed` for a failed result
            and anything else for an error (recorded failed, unless it is a
            :class:`~nasforge.errors.NasforgeError`, which stops the worker: a configuration fault
            fails every trial alike).
        trials: results to reach.
        max_retries: times an architecture is evaluated again after its worker died.
        poll_seconds: wait between looks at the study while other workers run the last trials.
        on_progress: called with the number of results in, whenever this worker looks.
    """

    def __init__(
        self, study: Study, searcher: Searcher, *, format_arch: Callable[[Arch], str], ask: Callable[[], Arch],
        evaluate: Callable[[Arch, float], Outcome], trials: int, max_retries: int = 3, poll_seconds: float = 1.0,
        on_progress: Callable[[int], None] | None = None, log: Callable[[str], None] = print,
    ) -> None:
        self.study, self.searcher, self.format_arch = study, searcher, format_arch
        self._ask, self._evaluate = ask, evaluate
        self.trials, self.max_retries, self.poll_seconds = trials, max_retries, poll_seconds
        self.on_progress, self.log = on_progress, log
        self.applied = -1  # position of the last event this searcher has seen
        self.archs: dict[int, Arch] = {}  # ask position -> the Arch the searcher proposed there
        self.concurrent = bool(getattr(searcher, "concurrent_asks", True))
        self.stats = WorkerStats()

    # ---- the event log -------------------------------------------------------------------------
    def sync(self) -> Log:
        """Reap dead workers' trials, read the log, and replay the events this searcher has not seen.

        Call it with the study lock held."""
        trials = self.study.trials()
        if any(t.state == RUNNING and t.user_attrs.get("worker") != self.study.worker for t in trials):
            if self.study.reap_dead():  # some belonged to dead workers: read again
                trials = self.study.trials()
        log = read_log(trials)
        for kind, seq, slot in log.events:
            if seq <= self.applied:
                continue
            if kind == "ask":
                self._replay_ask(slot)
            else:
                assert slot.told is not None
                self.searcher.tell(self.archs[slot.seq], told_fitness(slot.told), told_metrics(slot.told))
            self.applied = seq
        if self.on_progress is not None:
            self.on_progress(log.told)
        return log

    def _replay_ask(self, slot: Slot) -> None:
        arch = self._ask()
        text, fidelity = self.format_arch(arch), self.searcher.fidelity()
        if text != slot.arch or fidelity != slot.fidelity:
            raise IncompatibleRunError(
                f"replaying the study's ask #{slot.seq}: the searcher now proposes {text} at fidelity {fidelity:g} "
                f"but the study recorded {slot.arch} at {slot.fidelity:g}; the study in {self.study.public_url} "
                "was made by different code or options"
            )
        self.archs[slot.seq] = arch

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> Log:
        """Work until ``trials`` results are in; return the final log."""
        while True:
            check_stop()  # a SIGTERM whose KeyboardInterrupt was swallowed (nasforge.signals)
            with self.study.lock():
                log = self.sync()
                if log.told >= self.trials:
                    return log
                task = self._next_task(log)
            if task is None:
                t0 = time.perf_counter()
                time.sleep(self.poll_seconds)
                self.stats.waited_seconds += time.perf_counter() - t0
                continue
            trial, seq, arch, fidelity = task
            self._run_trial(trial, seq, arch, fidelity)

    def _next_task(self, log: Log) -> tuple[optuna.trial.Trial, int, Arch, float] | None:
        """Record the next trial (under the lock) and return it, or None to wait."""
        for slot in log.orphans():
            if slot.deaths > self.max_retries:
                self._abandon(slot)
                return None  # look again: the log changed
            self.stats.retried += 1
            self.log(f"trial {slot.last} did not finish (interrupted, or its worker died); evaluating {slot.arch} "
                     f"again ({slot.deaths} worker death(s) so far, at most {self.max_retries} retried)")
            trial = self.study.start(slot.arch, slot.fidelity, ask_seq=slot.seq, retry_of=slot.last)
            return trial, slot.seq, self.archs[slot.seq], slot.fidelity
        pending = log.pending()
        if log.told + len(pending) >= self.trials or (pending and not self.concurrent):
            return None
        seq = log.next_seq
        arch = self._ask()
        fidelity = self.searcher.fidelity()
        trial = self.study.start(self.format_arch(arch), fidelity, ask_seq=seq)
        self.archs[seq] = arch
        self.applied = seq
        return trial, seq, arch, fidelity

    def _abandon(self, slot: Slot) -> None:
        reason = f"abandoned: its worker died {slot.deaths} times (max_retries={self.max_retries})"
        self.log(f"{slot.arch}: {reason}")
        trial = self.study.start(slot.arch, slot.fidelity, ask_seq=slot.seq, retry_of=slot.last)
        self._record(trial, self.archs[slot.seq], None, TrialFailed(reason), read_log(self.study.trials()))

    def _run_trial(self, trial: optuna.trial.Trial, seq: int, arch: Arch, fidelity: float) -> None:
        failure: TrialFailed | None = None
        outcome: Outcome | None = None
        try:
            with self.study.heartbeat(trial):
                outcome = self._evaluate(arch, fidelity)
        except TrialFailed as e:
            failure = e
        except KeyboardInterrupt:
            self.study.fail(trial, "interrupted")
            raise
        except NasforgeError as e:  # a configuration fault: every trial would fail alike
            self.study.fail(trial, f"{type(e).__name__}: {e}")
            raise
        except Exception as e:  # noqa: BLE001 (an error, out of memory...: recorded, the search goes on)
            failure = TrialFailed(f"{type(e).__name__}: {e}")
            _free_accelerator_memory()
        with self.study.lock():
            log = self.sync()
            if self.study.state(trial) != RUNNING:  # reaped while it ran: our heartbeat was lost
                self.log(f"trial {trial.number} was marked dead while it ran (heartbeat lost); its result is dropped "
                         "and the architecture is evaluated again")
                return
            self._record(trial, arch, outcome, failure, log)

    def _record(self, trial: optuna.trial.Trial, arch: Arch, outcome: Outcome | None, failure: TrialFailed | None,
                log: Log) -> None:
        """Write the result at the log's next position and tell the searcher (study lock held)."""
        tell_seq = log.next_seq
        if failure is not None:
            self.study.fail(trial, str(failure), tell_seq=tell_seq, metrics=failure.metrics)
            self.stats.failed += 1
            self.log(f"trial {trial.number} ({self.format_arch(arch)}) failed: {failure}")
            self.searcher.tell(arch, -math.inf, failure.metrics)
        else:
            assert outcome is not None
            self.study.finish(trial, outcome.fitness, outcome.metrics, outcome.cost, tell_seq=tell_seq)
            self.searcher.tell(arch, outcome.fitness, outcome.metrics)
        self.stats.evaluated += 1
        self.applied = tell_seq
        if self.on_progress is not None:
            self.on_progress(log.told + 1)


def _free_accelerator_memory() -> None:
    """After a failed trial (possibly out of memory), give cached accelerator memory back."""
    import sys

    torch: Any = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
