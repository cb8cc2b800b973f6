"""Durable trial records on Optuna's storage layer.

We do not write a database layer: a nasforge study is an Optuna study whose trials carry the
architecture (``user_attrs["arch"]``, the space's canonical text) and the evaluator's metrics
(``user_attrs["metrics"]``, ``user_attrs["cost"]``); the trial value is the fitness. Any
SQLAlchemy URL Optuna accepts works (``sqlite:///run/study.db`` by default,
``postgresql://...``), so studies survive crashes and can be inspected with Optuna's tools.

Several workers (processes on one machine or on several) may drive one study. The study is
then an **event log**: each trial records the position of its ask (``user_attrs["ask_seq"]``)
and of its tell (``user_attrs["tell_seq"]``) in one order that all workers share (the study lock,
:mod:`nasforge.study.lock`, serialises the two moments). Every worker rebuilds the searcher by
replaying that order, so N workers drive one logical searcher, and a single worker's log is the
plain ask, tell, ask, tell... of a sequential search (see :mod:`nasforge.study.worker`).

Crash safety: a trial is written when it starts (RUNNING) and again when it finishes
(COMPLETE, or FAIL with its ``fail_reason``) inside Optuna's transactions. A running trial
carries its worker (host, process id and start time) and, on relational storages, Optuna's
heartbeat. :meth:`Study.reap_dead` marks FAIL (``interrupted``) the running trials whose process
is gone (same host) or whose heartbeat is older than the grace period (any host); their
architectures are evaluated again by the next free worker. A live worker's trial is never
taken over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.exc import SQLAlchemyError

from nasforge.errors import ConfigError
from nasforge.study.lock import FileLock, PostgresAdvisoryLock, lock_for

# Optuna logs every trial at INFO; the search loop has its own progress bar.
optuna.logging.set_verbosity(optuna.logging.WARNING)
# We use Optuna's heartbeats with ask/tell on purpose (the worker runs the heartbeat thread).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", message=r"Argument ``(heartbeat_interval|grace_period)`` is an experimental feature")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialRecord:
    number: int  # Optuna trial number (includes failed/interrupted trials)
    arch: str  # canonical architecture text
    fitness: float
    metrics: dict[str, float]
    cost: float
    fidelity: float = 1.0  # share of the full evaluation budget (multi-fidelity searchers)


_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^/@:]*:)([^/@]*)(@)")


def redact_url(url: str) -> str:
    """``url`` with its password (``scheme://user:PASSWORD@host``) replaced by ``***``.

    What nasforge writes to logs, errors, ``config.json`` and ``results.json`` for a storage URL.
    """
    return _PASSWORD.sub(r"\1***\3", str(url))


class Study:
    """A named study in an Optuna storage.

    Args:
        storage: SQLAlchemy URL, or a path to a SQLite file.
        name: study name inside the storage.
        heartbeat_seconds: interval of the running trials' heartbeats; a trial whose heartbeat is
            older than ``3 * heartbeat_seconds`` belongs to a dead worker.
        lock_dir: where the lock file of a storage without its own lock lives (the run directory).
    """

    def __init__(self, storage: str | Path, name: str = "nasforge", *, heartbeat_seconds: int = 10,
                 lock_dir: Path | None = None) -> None:
        url = str(storage)
        if "://" not in url:
            url = f"sqlite:///{Path(url).resolve()}"
        self.url = url  # with its password, for Optuna only
        self.public_url = redact_url(url)  # what may be shown or stored
        if isinstance(heartbeat_seconds, bool) or not isinstance(heartbeat_seconds, int) or heartbeat_seconds < 1:
            raise ConfigError(f"heartbeat_seconds must be a positive integer, got {heartbeat_seconds!r}")
        self.heartbeat_seconds = heartbeat_seconds
        self.grace_seconds = 3 * heartbeat_seconds
        try:
            self._lock: FileLock | PostgresAdvisoryLock = lock_for(url, name, lock_dir)
            with self._lock():  # workers starting together must not create the tables twice
                self._study = self._open(url, name)
        except (ImportError, ValueError, SQLAlchemyError) as e:  # bad URL, missing driver, server down
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            shown = first.replace(url, self.public_url)
            match = _PASSWORD.match(url)
            if match and match.group(2):  # drivers may quote the password on its own
                shown = shown.replace(match.group(2), "***")
            raise ConfigError(f"cannot open study storage {self.public_url!r}: {shown}") from e
        self.name = name
        self.worker = worker_identity()

    def _open(self, url: str, name: str) -> optuna.Study:
        backend: Any = url
        if url.startswith(("sqlite", "postgresql", "mysql")):
            backend = optuna.storages.RDBStorage(
                url, heartbeat_interval=self.heartbeat_seconds, grace_period=self.grace_seconds,
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
            if url.startswith("sqlite"):
                _sqlite_wal(backend.engine)
        return optuna.create_study(
            storage=backend, study_name=name, direction="maximize", load_if_exists=True,
            # nasforge's searchers propose; Optuna's default TPE sampler would read every trial at each ask
            sampler=optuna.samplers.RandomSampler(),
        )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the study lock (re-entrant): one worker at a time asks or tells."""
        with self._lock():
            yield

    def close(self) -> None:
        if isinstance(self._lock, PostgresAdvisoryLock):
            self._lock.close()

    # ---- trials ------------------------------------------------------------------------------
    def trials(self) -> list[optuna.trial.FrozenTrial]:
        """Every trial, fresh from the storage (not copied: read, do not modify)."""
        return self._study.get_trials(deepcopy=False)

    def reap_dead(self) -> int:
        """Mark FAIL (``interrupted``) the running trials of dead workers; return how many.

        Dead: the trial's process no longer runs on this host (or is a zombie, or another process
        now has its id), its Optuna heartbeat (first recorded when it starts) is older than the grace period,
        or it carries no worker record at all (written before workers were recorded, by a
        process that has since stopped). This process's own running
        trials are never reaped.
        """
        storage: Any = self._study._storage
        stale: set[int] = set()
        if optuna.storages._heartbeat.is_heartbeat_enabled(storage):
            stale = set(storage._get_stale_trial_ids(self._study._study_id))
        n = 0
        for t in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            worker = t.user_attrs.get("worker")
            if worker == self.worker:
                continue
            if isinstance(worker, dict) and worker.get("host") == self.worker["host"]:
                dead = t._trial_id in stale or not _process_alive(int(worker.get("pid", -1)), worker.get("start"))
            elif isinstance(worker, dict):
                dead = t._trial_id in stale
            else:
                dead = True
            if dead and self._mark_interrupted(t._trial_id):
                n += 1
        return n

    def recover_interrupted(self) -> int:
        """Alias of :meth:`reap_dead` (the name of earlier versions)."""
        return self.reap_dead()

    def _mark_interrupted(self, trial_id: int) -> bool:
        storage = self._study._storage
        try:
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            return bool(storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL))
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker reaped it first
            return False

    def completed(self) -> list[TrialRecord]:
        """Finished trials in trial-number order."""
        out = []
        for t in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            out.append(
                TrialRecord(
                    number=t.number,
                    arch=str(t.user_attrs["arch"]),
                    fitness=float(t.value if t.value is not None else float("nan")),
                    metrics={k: float(v) for k, v in t.user_attrs.get("metrics", {}).items()},
                    cost=float(t.user_attrs.get("cost", 0.0)),
                    fidelity=float(t.user_attrs.get("fidelity", 1.0)),
                )
            )
        return sorted(out, key=lambda r: r.number)

    def failed(self) -> list[dict[str, Any]]:
        """Trials whose evaluation failed (raised, ran out of memory, went NaN), with the reason."""
        out = []
        for t in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
            if "fail_reason" in t.user_attrs and "arch" in t.user_attrs and not t.user_attrs.get("interrupted"):
                out.append({"trial": t.number, "arch": t.user_attrs["arch"], "reason": t.user_attrs["fail_reason"],
                            "fidelity": float(t.user_attrs.get("fidelity", 1.0))})
        return sorted(out, key=lambda r: r["trial"])

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self._study.get_trials(deepcopy=False):
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out

    def start(self, arch_text: str, fidelity: float = 1.0, *, ask_seq: int | None = None,
              retry_of: int | None = None) -> optuna.trial.Trial:
        """Record a new RUNNING trial of ``arch_text``; ``ask_seq`` (written last) makes it an
        ask event of the study's log, ``retry_of`` names the dead trial it evaluates again."""
        trial = self._study.ask()
        storage: Any = self._study._storage
        if optuna.storages._heartbeat.is_heartbeat_enabled(storage):
            storage.record_heartbeat(trial._trial_id)  # a worker that dies now is seen as dead
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("arch", arch_text)
        if fidelity != 1.0:
            trial.set_user_attr("fidelity", float(fidelity))
        if retry_of is not None:
            trial.set_user_attr("retry_of", int(retry_of))
        if ask_seq is not None:
            trial.set_user_attr("ask_seq", int(ask_seq))
        return trial

    def state(self, trial: optuna.trial.Trial) -> optuna.trial.TrialState:
        """The stored state of ``trial`` (another worker may have marked it dead)."""
        return self._study._storage.get_trial(trial._trial_id).state

    def heartbeat(self, trial: optuna.trial.Trial) -> Any:
        """A context manager that keeps ``trial``'s Optuna heartbeat going (no-op without one)."""
        return optuna.storages._heartbeat.get_heartbeat_thread(trial._trial_id, self._study._storage)

    def finish(self, trial: optuna.trial.Trial, fitness: float, metrics: dict[str, float], cost: float,
               *, tell_seq: int | None = None) -> None:
        trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items()})
        trial.set_user_attr("cost", float(cost))
        if tell_seq is not None:
            trial.set_user_attr("tell_seq", int(tell_seq))
        self._study.tell(trial, fitness)

    def fail(self, trial: optuna.trial.Trial, reason: str, *, tell_seq: int | None = None,
             metrics: dict[str, float] | None = None) -> None:
        """Record ``trial`` failed. With ``tell_seq`` the failure is a result the searcher is told
        (fitness ``-inf``); without, the trial was interrupted and its architecture runs again."""
        trial.set_user_attr("fail_reason", reason)
        if metrics:
            trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items()})
        if tell_seq is not None:
            trial.set_user_attr("tell_seq", int(tell_seq))
        else:
            trial.set_user_attr("interrupted", True)
        self._study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def set_attr(self, key: str, value: Any) -> None:
        self._study.set_user_attr(key, value)

    def attrs(self) -> dict[str, Any]:
        return dict(self._study.user_attrs)


def _sqlite_wal(engine: Any) -> None:
    """SQLite in write-ahead-log mode: a commit costs no fsync of the whole database (a killed
    process still loses nothing committed; only a power cut may lose the last commits), readers do
    not block the writer, and a busy database is waited for instead of failing at once. Worker
    processes then share one study.db (on a local file system: WAL does not work over NFS)."""
    import sqlalchemy

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened before the listener get the pragmas when reopened


def worker_identity() -> dict[str, Any]:
    """This process as a running trial records it: host name, process id, process start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of process ``pid`` on Linux, else None; None too
    for a zombie (a dead process its parent has not waited for yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields 3.. of proc(5), after the command name
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _process_alive(pid: int, start: Any) -> bool:
    """Whether process ``pid`` runs and is the same process (same start time, where known)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    now = _process_start(pid)
    if start is None:  # recorded where /proc is missing: the signal check is all there is
        return now is not None or not Path("/proc").is_dir()
    return now == start  # None: gone since os.kill, or a zombie
