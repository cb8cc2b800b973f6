"""Several workers, one study: the event log, dead workers, failed trials, real worker processes.

Worker processes are real (``--workers N`` spawns them; a dead worker is a process that really
exited); studies live in SQLite and, when ``bash scripts/test.sh`` started one, a real PostgreSQL
server. Evaluations use the NB201 table so that trials take milliseconds and workers race for
the study lock as often as possible.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest

from conftest import POSTGRES
from nasforge import get_space, registry
from nasforge.errors import BudgetError, IncompatibleRunError
from nasforge.evaluators.train import TrainEvaluator
from nasforge.experiment import SearchConfig, open_study, run_search
from nasforge.searchers.base import Result
from nasforge.study import Study
from nasforge.study.worker import Outcome, StudyWorker, read_log

import _toy  # noqa: F401  (registers the toy_test space)


@pytest.fixture(scope="module")
def table(data_kit) -> str:
    return str(data_kit / "nb201" / "nb201_table.csv.gz")


def _quiet(_message: str) -> None:
    pass


def _told(study: Study) -> list[optuna.trial.FrozenTrial]:
    """Trials whose result the searcher was told, in log order."""
    log = read_log(study.trials())
    return [slot.told for kind, _, slot in log.events if kind == "tell"]


# ---- the event log ----------------------------------------------------------------------------


def _searcher(method: str, space, seed: int = 0):
    return registry.get("method", method)(space, seed=seed)


def _worker(study: Study, space, searcher, trials: int, fitness=lambda text: float(len(set(text)))) -> StudyWorker:
    return StudyWorker(study, searcher, format_arch=space.format, ask=searcher.ask,
                       evaluate=lambda arch, f: Outcome(fitness(space.format(arch)), {"val_acc": 1.0}),
                       trials=trials, log=_quiet)


def test_two_interleaved_workers_drive_one_logical_searcher(tmp_path):
    """Workers ask and tell in an interleaved order; a fresh searcher replaying the log (what
    any new worker does) reaches the same proposals, and the log is gap-free."""
    space = get_space("nb201")
    study = Study(tmp_path / "study.db")
    a = _worker(study, space, _searcher("evolution", space), 8)
    b = _worker(Study(tmp_path / "study.db"), space, _searcher("evolution", space), 8)
    # a asks, b asks, b tells, a tells, ... by hand, through the same steps the loop takes
    for _ in range(4):
        with a.study.lock():
            task_a = a._next_task(a.sync())
        with b.study.lock():
            task_b = b._next_task(b.sync())
        assert task_a is not None and task_b is not None
        b._run_trial(*task_b)
        a._run_trial(*task_a)
    log = read_log(study.trials())
    assert log.told == 8 and sorted(seq for _, seq, _ in log.events) == list(range(16))
    order = [kind for kind, _, _ in log.events]
    assert order[:4] == ["ask", "ask", "tell", "tell"]  # not the sequential ask, tell
    fresh = _worker(Study(tmp_path / "study.db"), space, _searcher("evolution", space), 8)
    with fresh.study.lock():
        fresh.sync()  # raises IncompatibleRunError if any replayed ask disagreed
    assert fresh.applied == 15
    with b.study.lock():
        b.sync()  # b has not seen a's last result yet
    assert repr(fresh.searcher.population) == repr(a.searcher.population) == repr(b.searcher.population)


def test_a_log_from_another_searcher_is_refused(tmp_path):
    space = get_space("nb201")
    study = Study(tmp_path / "study.db")
    _worker(study, space, _searcher("random", space), 3).run()
    other = _searcher("random", space, seed=1)
    with pytest.raises(IncompatibleRunError, match="replaying the study's ask #0"):
        with study.lock():
            _worker(study, space, other, 3).sync()


def test_an_architecture_whose_workers_keep_dying_is_abandoned_after_max_retries(tmp_path):
    """Its slot is told as failed ("abandoned") once the reaped trials exceed max_retries; the
    search goes on. A Ctrl-C (a recorded reason) does not count as a death."""
    space = get_space("nb201")
    study = Study(tmp_path / "study.db")
    first = space.format(_searcher("random", space).ask())  # what the search's first ask is
    for i in range(3):  # three workers died while evaluating it, one run was stopped with Ctrl-C
        t = study.start(first, ask_seq=0, retry_of=None if i == 0 else i - 1)
        study._mark_interrupted(t._trial_id)
    study.fail(study.start(first, ask_seq=0), "interrupted")
    assert read_log(study.trials()).slots[0].deaths == 3
    logs: list[str] = []
    worker = StudyWorker(study, _searcher("random", space), format_arch=space.format, ask=lambda: worker.searcher.ask(),
                         evaluate=lambda arch, f: Outcome(1.0, {}), trials=3, max_retries=2, log=logs.append)
    worker.run()
    slot = read_log(study.trials()).slots[0]
    assert slot.told is not None and slot.told.state == optuna.trial.TrialState.FAIL
    assert slot.told.user_attrs["fail_reason"] == "abandoned: its worker died 3 times (max_retries=2)"
    assert read_log(study.trials()).told == 3 and any("abandoned" in line for line in logs)


# ---- dead and live workers --------------------------------------------------------------------

_START_AND_DIE = """
import os, sys, time
from nasforge.study import Study
s = Study(sys.argv[1], name=sys.argv[2], heartbeat_seconds=1)
t = s.start("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", ask_seq=0)
with s.heartbeat(t):
    print("running", flush=True)
    time.sleep(float(sys.argv[3]))
os._exit(9)
"""


def test_a_live_workers_trial_is_never_taken_over_and_a_dead_ones_is(storage):
    name = f"t-{uuid.uuid4().hex}"
    proc = subprocess.Popen([sys.executable, "-c", _START_AND_DIE, storage, name, "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "running"
        study = Study(storage, name=name, heartbeat_seconds=1)
        time.sleep(4)  # longer than the grace period: the live worker's heartbeat keeps its trial
        assert study.reap_dead() == 0
        assert study.counts() == {"RUNNING": 1}
    finally:
        proc.kill()
        proc.wait()
    assert study.reap_dead() == 1  # same host, process gone: at once, no grace period needed
    trial = study.trials()[0]
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["interrupted"] is True
    assert read_log(study.trials()).orphans()[0].seq == 0


def test_a_dead_worker_on_another_host_is_found_by_its_stale_heartbeat(storage):
    name = f"t-{uuid.uuid4().hex}"
    study = Study(storage, name=name, heartbeat_seconds=1)
    trial = study.start("x", ask_seq=0)  # heartbeat recorded at start
    # as written by a worker on another machine (its process cannot be looked up from here)
    study._study._storage.set_trial_user_attr(trial._trial_id, "worker", {"host": "elsewhere", "pid": 1, "start": 1})
    observer = Study(storage, name=name, heartbeat_seconds=1)
    assert observer.reap_dead() == 0  # heartbeat fresh
    time.sleep(4.5)  # grace period is 3 s: the heartbeat is now stale
    assert observer.reap_dead() == 1


# ---- failures are results ----------------------------------------------------------------------


def test_trials_that_raise_or_go_nan_are_recorded_failed_and_the_search_goes_on(tmp_path, monkeypatch):
    real_call = TrainEvaluator.__call__

    def flaky(self, arch):
        text = "-".join(arch.values())
        if text.startswith("c"):
            raise MemoryError("out of memory (simulated by the test's evaluator)")
        if text.startswith("b"):
            return Result({"val_acc": math.nan, "train_acc": math.nan, "val_loss": math.nan, "train_loss": math.nan})
        return real_call(self, arch)

    monkeypatch.setattr(TrainEvaluator, "__call__", flaky)
    cfg = SearchConfig(space="toy_test", method="random", data="digits", trials=8, recipe_overrides={"epochs": 1},
                       final_train=False, train_subset=200, out=str(tmp_path / "run"))
    logs: list[str] = []
    outcome = run_search(cfg, progress=False, log=logs.append)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    reasons = Counter(f["reason"].split(":")[0] for f in res["failed"])
    assert set(reasons) == {"MemoryError", "the objective val_acc is NaN (diverged training?)"}
    assert len(res["trials"]) + len(res["failed"]) == 8 == outcome.trials
    assert all(f["arch"][0] in "bc" for f in res["failed"]) and all(t["arch"][0] == "a" for t in res["trials"])
    assert any("failed: MemoryError" in line for line in logs)
    # resuming replays the failures as told results (fitness -inf): nothing runs again
    monkeypatch.setattr(TrainEvaluator, "__call__", real_call)
    again = run_search(cfg, progress=False, log=_quiet)
    assert again.resumed_trials == 8 and json.loads((tmp_path / "run" / "results.json").read_text())["failed"] == res["failed"]


def test_when_every_trial_fails_the_error_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(TrainEvaluator, "__call__", lambda self, arch: (_ for _ in ()).throw(RuntimeError("CUDA error")))
    cfg = SearchConfig(space="toy_test", method="random", data="digits", trials=3, final_train=False,
                       out=str(tmp_path / "run"))
    with pytest.raises(BudgetError, match="3 failed, e.g. RuntimeError: CUDA error"):
        run_search(cfg, progress=False, log=_quiet)


# ---- real worker processes -------------------------------------------------------------------


def _check_log(study: Study, trials: int, no_repeats: bool) -> list[optuna.trial.FrozenTrial]:
    told = _told(study)
    log = read_log(study.trials())
    assert log.told == trials and not log.pending()
    slots = Counter(int(t.user_attrs["ask_seq"]) for t in told)
    assert max(slots.values()) == 1  # each ask told once: nothing duplicated
    positions = sorted(seq for _, seq, _ in log.events)
    assert positions == list(range(2 * trials))  # nothing lost, no position used twice
    if no_repeats:
        archs = [t.user_attrs["arch"] for t in told]
        assert len(set(archs)) == len(archs)
    return told


N_SHARED = 12


@pytest.mark.parametrize("method,no_repeats", [("evolution", False), ("bananas", True), ("hyperband", False)])
def test_worker_processes_share_one_study(tmp_path, method, no_repeats):
    """Trials train tiny networks (about a second each), so every worker gets some."""
    opts = dict(registry.get("method", method).smoke_options) if method == "bananas" else {}
    cfg = SearchConfig(method=method, method_kwargs=opts, space="nb201", build_kwargs={"C": 4, "N": 1},
                       train_subset=200, recipe_overrides={"epochs": 3 if method == "hyperband" else 1, "batch_size": 32},
                       trials=N_SHARED, workers=3, final_train=False, out=str(tmp_path / "run"))
    run_search(cfg, progress=False, log=_quiet)
    study = open_study(cfg)
    told = _check_log(study, N_SHARED, no_repeats)
    pids = {t.user_attrs["worker"]["pid"] for t in told}
    if method != "hyperband":
        assert len(pids) >= 2, f"only {pids} evaluated trials"
    else:  # successive halving: one pending trial at a time, whoever runs it
        log = read_log(study.trials())
        kinds = [kind for kind, _, _ in log.events]
        assert kinds == ["ask", "tell"] * N_SHARED
    # the log replays: resuming with one worker finds every result and runs nothing
    again = run_search(SearchConfig(**{**cfg.to_dict(), "workers": 1}), progress=False, log=_quiet)
    assert again.resumed_trials == N_SHARED


@pytest.mark.skipif(not POSTGRES, reason="NASFORGE_TEST_POSTGRES is not set (bash scripts/test.sh starts a PostgreSQL server)")
def test_four_workers_on_postgres(tmp_path, table):
    cfg = SearchConfig(method="evolution", evaluator="table", table=table, trials=40, workers=4, storage=POSTGRES,
                       study_name=f"w-{uuid.uuid4().hex}", out=str(tmp_path / "run"))
    run_search(cfg, progress=False, log=_quiet)
    study = open_study(cfg)
    told = _check_log(study, 40, no_repeats=False)
    assert len({t.user_attrs["worker"]["pid"] for t in told}) >= 2


def test_a_second_machine_joins_with_the_same_study_name(tmp_path, table):
    """Two `nasforge search` commands with their own run directories and one storage + study
    name (as on two machines) share the trials."""
    db = tmp_path / "shared.db"
    base = SearchConfig(method="random", evaluator="table", table=table, trials=30, storage=f"sqlite:///{db}",
                        study_name="shared")
    other = subprocess.Popen(
        [sys.executable, "-m", "nasforge", "search", "--method", "random", "--evaluator", "table", "--table", table,
         "--trials", "30", "--storage", f"sqlite:///{db}", "--study-name", "shared", "--out", str(tmp_path / "m2"),
         "--no-progress"], stdout=subprocess.DEVNULL)
    run_search(SearchConfig(**{**base.to_dict(), "out": str(tmp_path / "m1")}), progress=False, log=_quiet)
    assert other.wait(timeout=120) == 0
    study = open_study(SearchConfig(**{**base.to_dict(), "out": str(tmp_path / "m1")}))
    _check_log(study, 30, no_repeats=False)
    a = json.loads((tmp_path / "m1" / "results.json").read_text())
    b = json.loads((tmp_path / "m2" / "results.json").read_text())
    assert a["best"] == b["best"] and len(a["trials"]) == 30


def _worker_pids(db: Path) -> tuple[set[int], int]:
    """(the worker pids the study's trials record, how many trials there are), read straight from
    SQLite (read-only, no study lock, so polling does not slow the workers down)."""
    import sqlite3

    if not db.exists():
        return set(), 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            rows = con.execute("SELECT value_json FROM trial_user_attributes WHERE key = 'worker'").fetchall()
            (n,) = con.execute("SELECT COUNT(*) FROM trials").fetchone()
        finally:
            con.close()
    except sqlite3.Error:  # tables not created yet
        return set(), 0
    return {json.loads(v).get("pid") for (v,) in rows}, int(n)


def test_sigterm_stops_every_worker_and_the_run_resumes(tmp_path, table):
    """SIGTERM to the parent alone stops it and its worker, each records its trial as interrupted,
    and the rerun completes the search. (Until 2026-12-07 the parent's KeyboardInterrupt was now
    and then raised inside a weakref callback of the garbage collector, which Python ignores, and
    the search ran on to its end: ``nasforge.signals``.)"""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nasforge", "search", "--method", "random", "--evaluator", "train", "--space", "nb201",
           "--build-opt", "C=4", "--build-opt", "N=1", "--train-subset", "800", "--epochs", "12", "--trials", "40",
           "--workers", "2", "--no-final-train", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # both workers are evaluating, or the search is under way (the second
        time.sleep(0.2)           # worker may still be catching up: it must be stopped all the same)
        pids, trials = _worker_pids(out / "study.db")
        if len(pids) >= 2 or trials >= 6:
            break
    proc.terminate()  # SIGTERM to the parent only: it must stop its worker
    output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, output
    survivors = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-g", str(proc.pid)], capture_output=True,
                               text=True).stdout.strip()
    assert survivors == "", f"workers left running: {survivors}"
    assert "Rerun the same command to resume" in output
    study = Study(out / "study.db")
    assert study.counts().get("RUNNING", 0) == 0  # each worker recorded its trial as interrupted
    assert len(study.completed()) < 40  # the signal landed mid-search
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=300)
    _check_log(study, 40, no_repeats=False)


def test_ray_executor_runs_trials_as_ray_tasks(tmp_path, table):
    pytest.importorskip("ray")
    cfg = SearchConfig(method="evolution", evaluator="table", table=table, trials=12, workers=2, executor="ray",
                       out=str(tmp_path / "run"))
    logs: list[str] = []
    run_search(cfg, progress=False, log=logs.append)
    assert any(line.startswith("Ray: 1 node(s)") for line in logs)
    study = open_study(cfg)
    _check_log(study, 12, no_repeats=False)
    # evaluated in Ray worker processes: the trial records the search process as its worker, the
    # metrics came back from the task; the log replays in a fresh local run
    again = run_search(SearchConfig(**{**cfg.to_dict(), "executor": "local", "workers": 1}), progress=False, log=_quiet)
    assert again.resumed_trials == 12


def test_a_killed_worker_process_loses_nothing_its_trial_runs_again(tmp_path):
    """SIGKILL one of two worker processes while it trains: the other reaps its trial at once
    (same host, process gone), evaluates the architecture again, and the search completes with
    every ask told exactly once."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nasforge", "search", "--method", "evolution", "--space", "nb201", "--build-opt", "C=4",
           "--build-opt", "N=1", "--train-subset", "400", "--epochs", "2", "--trials", "10", "--workers", "2",
           "--no-final-train", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    deadline = time.time() + 120
    while victim is None and time.time() < deadline:
        time.sleep(0.1)
        if not (out / "study.db").exists():
            continue
        for t in Study(out / "study.db").trials():
            pid = t.user_attrs.get("worker", {}).get("pid")
            if t.state == optuna.trial.TrialState.RUNNING and pid not in (None, proc.pid):
                victim = (pid, t.number, t.user_attrs["arch"])
    assert victim is not None, "the second worker never started a trial"
    os.kill(victim[0], 9)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    study = Study(out / "study.db")
    told = _check_log(study, 10, no_repeats=False)
    dead = [t for t in study.trials() if t.number == victim[1]][0]
    assert dead.state == optuna.trial.TrialState.FAIL and dead.user_attrs["interrupted"] is True
    retry = [t for t in told if t.user_attrs.get("retry_of") == victim[1]]
    assert len(retry) == 1 and retry[0].user_attrs["arch"] == victim[2]
    assert "did not finish (interrupted, or its worker died); evaluating" in output


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed interrupt
def test_a_sigterm_swallowed_by_a_weakref_callback_still_stops_the_loop():
    """Python drops an exception raised inside a weakref callback ("Exception ignored in ...");
    a SIGTERM handled there must still stop the search at its next safe point."""
    import gc
    import weakref

    from nasforge import signals

    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, lambda _r: signals.raise_interrupt(15, None))  # the handler runs during collection
    try:
        del thing
        gc.collect()  # the KeyboardInterrupt is printed and ignored, as in the failing runs
        assert ref() is None and signals.stop_requested()
        with pytest.raises(KeyboardInterrupt):
            signals.check_stop()  # the worker loop and the training loops call this
    finally:
        signals.clear_stop()
    signals.check_stop()  # nothing pending any more
