"""Kill loop (issue 11): SIGKILL a real ``nasforge search`` at random moments, resume, compare.

Each mode runs ``python -m nasforge search ...`` as a child in its own process group, SIGKILLs
the whole group after a random delay, starts the same command again (a resume), and repeats
until ``--kills`` kills have landed; then the run is left to finish. The same search runs
uninterrupted in another directory (at the same time, on the other core), and the two are
compared:

* ``multi`` — multi-trial regularized evolution over NB201 cells, every candidate trained for
  one epoch on the built-in digits (the ``train`` evaluator, ~0.5 s a trial on one core, so kills
  land inside trials), then a final training with a checkpoint every epoch (kills land inside
  ``final/last.pt`` writes). Checked: the study opens with Optuna; the COMPLETE trials'
  (architecture, fitness) equal the uninterrupted run's position by position; none lost, none
  duplicated (a multiset comparison, and per ask position where the study records one); the
  best architecture and the final test accuracy equal.
* ``oneshot`` — DARTS on a tiny NB201 supernet with a checkpoint after every step (281 KB, so
  many kills land inside a write). Checked: the derived architecture, the final architecture
  strengths and every tensor of the final search state (architecture parameters, supernet
  weights, optimizer moments) equal the uninterrupted run's within ``--tol``, and the per-epoch
  losses too. A resume restores the RNG state and data position, so equality is exact in
  practice; the tolerance only guards against a different BLAS path.

Counted per kill: a RUNNING trial in the study (killed mid-trial), a new ``.NAME.PID.*.tmp``
file next to a checkpoint (killed mid-checkpoint-write), no progress since the previous kill
(killed during start-up or replay). Results go to ``benchmarks/results/kill_loop/`` (JSON).

    .venv/bin/python benchmarks/kill_loop.py --kills 50            # both modes, the long run
    .venv/bin/python benchmarks/kill_loop.py --mode oneshot --kills 5 --size short

SIGTERM / SIGINT (Ctrl-C) kill every child process group and exit (143 / 130).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "kill_loop"

#: Child processes (each the leader of its own process group) still running.
_CHILDREN: set[subprocess.Popen[bytes]] = set()


@dataclasses.dataclass(frozen=True)
class Settings:
    """The search a mode runs and how its kills are timed.

    A share ``startup_share`` of the kills is timed from the child's start, uniform in
    ``(0.2, startup_max)`` seconds: they land in start-up, replay or the first steps. The rest
    are timed from the child's first write of its progress file in this life (``study.db`` for
    multi-trial, ``search/search.pt`` for one-shot: the search is working), uniform in
    ``(0, work_max)`` seconds: they land mid-trial, mid-step or mid-checkpoint-write. Of the
    work kills, a share ``write_share`` fires as soon as a checkpoint's temporary file appears
    in ``checkpoint_dir`` within twice that window (else at its end): a kill inside the write.
    """

    args: tuple[str, ...]
    progress_file: str
    checkpoint_dir: str  # where checkpoint temp files appear (``.NAME.PID.XXXX.tmp``)
    work_max: float
    startup_share: float = 0.2
    startup_max: float = 6.0
    write_share: float = 0.3  # share of work kills fired the moment a checkpoint temp file appears
    timeout: float = 1800.0  # for one uninterrupted life (the last one, and the straight run)


TINY_NB201 = ("--space", "nb201", "--build-opt", "C=4", "--build-opt", "N=1")
TINY_SUPERNET = ("--space", "nb201", "--supernet-opt", "C=4", "--supernet-opt", "N=1",
                 "--supernet-opt", "affine=false", "--supernet-opt", "track_running_stats=false")


def settings(mode: str, size: str) -> Settings:
    """The search of ``mode`` (``multi`` or ``oneshot``) at ``size`` (``long``: enough work for
    50+ kills with progress between them; ``short``: the test suite's few kills)."""
    if mode == "multi":
        trials, final_epochs, population = (300, 10, 8) if size == "long" else (16, 1, 4)
        args: tuple[str, ...] = (*TINY_NB201, "--method", "evolution", "--method-opt", f"population_size={population}",
                "--method-opt", "sample_size=3", "--evaluator", "train", "--epochs", "1",
                "--trials", str(trials), "--final-epochs", str(final_epochs), "--seed", "0")
        # The first trial of a life takes ~2.5 s (warm-up), later ones 0.3-0.5 s on one core;
        # 300 trials leave room for ~4 trials a life over 50 lives.
        return Settings(args, "study.db", "final", work_max=2.5) if size == "long" else \
            Settings(args, "study.db", "final", work_max=2.0, startup_share=0.4, startup_max=4.0, write_share=0.0)
    if mode == "oneshot":
        epochs, batches = (20, 40) if size == "long" else (2, 15)
        args = (*TINY_SUPERNET, "--method", "darts", "--method-opt", "batch_size=16", "--epochs", str(epochs),
                "--max-batches-per-epoch", str(batches), "--checkpoint-every", "1", "--no-final-train",
                "--seed", "0")
        return Settings(args, "search/search.pt", "search", work_max=1.5) if size == "long" else \
            Settings(args, "search/search.pt", "search", work_max=0.8, startup_share=0.4, startup_max=4.0)
    raise ValueError(f"unknown mode {mode!r}; valid: multi, oneshot")


def search_command(out: Path, s: Settings, *, python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "nasforge", "search", *s.args, "--out", str(out), "--no-progress"]
    if "--max-retries" in _search_help(python):  # killed trials are re-run: never run out of retries
        cmd += ["--max-retries", "1000"]
    return cmd


_HELP: dict[str, str] = {}


def _search_help(python: str) -> str:
    if python not in _HELP:
        _HELP[python] = subprocess.run([python, "-m", "nasforge", "search", "--help"], capture_output=True,
                                       text=True, env=_env(), cwd=ROOT, timeout=300).stdout
    return _HELP[python]


def _env() -> dict[str, str]:
    # One thread per process: the kill loop and the uninterrupted run share two cores, and the
    # same thread count on both sides keeps float reductions in the same order.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ---- child processes -----------------------------------------------------------------------


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group (so a kill takes its whole tree), output to ``log``."""
    with open(log, "ab") as f:
        f.write(f"\n==== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=_env(),
                                start_new_session=True)
    _CHILDREN.add(proc)
    return proc


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``proc``'s process group and reap ``proc``."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _CHILDREN.discard(proc)


def wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise RuntimeError(f"{proc.args!r} ran past {timeout:.0f} s") from None
    _CHILDREN.discard(proc)
    return rc


def install_signal_handlers() -> None:
    """SIGTERM / SIGINT: kill every child process group, then exit (128 + the signal)."""

    def stop(signum: int, _frame: Any) -> None:
        for proc in list(_CHILDREN):
            kill_group(proc)
        print(f"\nkill loop stopped by signal {signum}; child process groups killed", file=sys.stderr)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


# ---- what a run directory holds ------------------------------------------------------------


def temp_files(out: Path) -> set[str]:
    """Temporary files of atomic writes (``.NAME.PID.XXXX.tmp``) under ``out``, relative paths."""
    if not out.exists():
        return set()
    return {str(p.relative_to(out)) for p in out.rglob(".*.tmp")}


def study_trials(db: Path) -> list[dict[str, Any]]:
    """Every trial of the SQLite study ``db``: number, state, value, user attributes (raw SQL,
    read-only, so it also works while another process holds the study)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("select trial_id, number, state from trials order by number").fetchall()
        attrs: dict[int, dict[str, Any]] = {}
        for tid, key, value in con.execute("select trial_id, key, value_json from trial_user_attributes"):
            attrs.setdefault(tid, {})[key] = json.loads(value)
        values = dict(con.execute("select trial_id, value from trial_values where objective = 0").fetchall())
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        con.close()
    return [{"number": n, "state": state, "value": values.get(tid), "attrs": attrs.get(tid, {})}
            for tid, n, state in rows]


def completed(db: Path) -> list[dict[str, Any]]:
    return [t for t in study_trials(db) if t["state"] == "COMPLETE"]


def study_opens(db: Path) -> tuple[bool, int, str]:
    """Open the study with Optuna itself: (ok, number of trials, error text)."""
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = f"sqlite:///{db}"
        names = optuna.study.get_all_study_names(storage=url)
        n = sum(len(optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)) for name in names)
        return True, n, ""
    except Exception as e:  # report, do not crash the benchmark
        return False, 0, f"{type(e).__name__}: {e}"


def progress(mode: str, out: Path) -> int:
    """Finished work so far: COMPLETE trials (multi) or search steps in the checkpoint (oneshot)."""
    if mode == "multi":
        return len(completed(out / "study.db"))
    for name in ("search.pt", "search.prev.pt"):
        try:
            from nasforge.train.checkpoint import load_checkpoint

            return int(load_checkpoint(out / "search" / name, fallback=False)["step"])
        except Exception:
            continue
    return 0


# ---- the loop ------------------------------------------------------------------------------


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _checkpoint_temp(directory: Path) -> bool:
    try:
        return any(e.name.startswith(".") and e.name.endswith(".tmp") and ".pt." in e.name
                   for e in os.scandir(directory))
    except FileNotFoundError:
        return False


def kill_moment(proc: subprocess.Popen[bytes], out: Path, s: Settings, rng: random.Random) -> str | None:
    """Wait for this life's kill moment (see :class:`Settings`); return how it was timed
    (``"startup"``, ``"work"`` or ``"write"``), or None when the child ended first."""
    t0 = time.monotonic()
    how = "startup" if rng.random() < s.startup_share else "write" if rng.random() < s.write_share else "work"
    delay = (rng.uniform(0.2, s.startup_max) if how == "startup" else 2 * s.work_max if how == "write"
             else rng.uniform(0.0, s.work_max))
    progress_file, checkpoints = out / s.progress_file, out / s.checkpoint_dir
    before = _mtime(progress_file)
    anchor = t0 if how == "startup" else None
    while True:
        if proc.poll() is not None:
            return None
        now = time.monotonic()
        if anchor is None and _mtime(progress_file) != before:
            anchor = now
        if how == "write" and anchor is not None and _checkpoint_temp(checkpoints):
            return "write"
        if anchor is not None and now >= anchor + delay:
            return "work" if how == "write" else how
        if now - t0 > s.timeout:
            raise RuntimeError(f"{proc.args!r} made no progress in {s.timeout:.0f} s")
        time.sleep(0.005)


def kill_loop(mode: str, out: Path, s: Settings, kills: int, rng: random.Random, *,
              log: Any = print) -> dict[str, Any]:
    """Run ``mode``'s search in ``out``, SIGKILL it ``kills`` times at random moments, resuming
    each time, then let it finish. Returns the counts (see the module docstring)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = search_command(out, s)
    logfile = out.parent / f"{out.name}.log"
    counts: dict[str, Any] = {"kills": 0, "starts": 0, "timed_from_start": 0, "timed_by_write": 0, "mid_trial": 0, "mid_checkpoint_write": 0,
              "mid_other_write": 0, "no_progress": 0, "finished_before_kill": 0}
    seen_tmp: set[str] = set()
    seen_running: set[int] = set()
    last_progress = 0
    t0 = time.perf_counter()
    while True:
        proc = start(cmd, logfile)
        counts["starts"] += 1
        if counts["kills"] >= kills:
            rc = wait(proc, s.timeout)
            if rc != 0:
                raise RuntimeError(f"{mode}: the final resume exited with {rc}; see {logfile}")
            break
        how = kill_moment(proc, out, s, rng)
        if how is None:  # ended on its own before the kill
            rc = wait(proc, 60)
            if rc != 0:
                raise RuntimeError(f"{mode}: a resume exited with {rc} (not killed); see {logfile}")
            counts["finished_before_kill"] += 1
            break
        kill_group(proc)
        counts["kills"] += 1
        counts["timed_from_start"] += how == "startup"
        counts["timed_by_write"] += how == "write"
        tmp = temp_files(out) - seen_tmp
        seen_tmp |= tmp
        if any(".pt." in Path(name).name for name in tmp):
            counts["mid_checkpoint_write"] += 1
        elif tmp:
            counts["mid_other_write"] += 1
        running = {t["number"] for t in study_trials(out / "study.db") if t["state"] == "RUNNING"}
        if running - seen_running:  # a trial this life started (not one left by an earlier kill)
            counts["mid_trial"] += 1
        seen_running |= running
        now = progress(mode, out)
        if now == last_progress:
            counts["no_progress"] += 1
        last_progress = now
        if counts["kills"] % 10 == 0:
            log(f"  {mode}: {counts['kills']} kills, progress {now}, {time.perf_counter() - t0:.0f} s")
    counts["resumes"] = counts["starts"] - 1
    counts["seconds"] = round(time.perf_counter() - t0, 1)
    counts["final_progress"] = progress(mode, out)
    counts["temp_files_seen"] = len(seen_tmp)
    counts["temp_files_left"] = sorted(temp_files(out))
    return counts


def compare_multi(killed: Path, straight: Path) -> dict[str, Any]:
    a, b = completed(killed / "study.db"), completed(straight / "study.db")

    def records(ts: Iterable[dict[str, Any]]) -> list[tuple[str, float]]:
        return [(str(t["attrs"].get("arch")), float(t["value"])) for t in ts]

    ra, rb = records(a), records(b)
    lost = sum((Counter(rb) - Counter(ra)).values())
    duplicated = sum((Counter(ra) - Counter(rb)).values())
    # Per ask position, where the study records one: more than one COMPLETE trial is a duplicate.
    per_ask = Counter(t["attrs"]["ask_seq"] for t in a if "ask_seq" in t["attrs"])
    duplicated_positions = sum(n - 1 for n in per_ask.values() if n > 1)
    mismatched = [i for i, (x, y) in enumerate(zip(ra, rb, strict=False)) if x[0] != y[0] or not _close(x[1], y[1], 0)]
    ok, n_open, err = study_opens(killed / "study.db")
    res_a = json.loads((killed / "results.json").read_text())
    res_b = json.loads((straight / "results.json").read_text())
    final_a, final_b = ({k: (r.get("final") or {}).get(k) for k in ("arch", "test_acc", "test_loss")}
                        for r in (res_a, res_b))
    all_a = study_trials(killed / "study.db")
    same = ra == rb and res_a["best"]["arch"] == res_b["best"]["arch"] and final_a == final_b
    return {
        "study_opens": ok, "study_open_error": err, "trials_in_study": n_open,
        "complete": len(ra), "complete_uninterrupted": len(rb),
        "failed_or_interrupted": sum(t["state"] == "FAIL" for t in all_a),
        "running_left": sum(t["state"] == "RUNNING" for t in all_a),
        "retries": sum("retry_of" in t["attrs"] for t in all_a),
        "lost": lost, "duplicated": duplicated + duplicated_positions, "mismatched_positions": mismatched[:20],
        "best": res_a["best"]["arch"], "best_uninterrupted": res_b["best"]["arch"],
        "final": final_a, "final_uninterrupted": final_b,
        "equal": bool(same and lost == 0 and duplicated + duplicated_positions == 0),
    }


def compare_oneshot(killed: Path, straight: Path, tol: float) -> dict[str, Any]:

    from nasforge.train.checkpoint import load_checkpoint

    res_a = json.loads((killed / "results.json").read_text())
    res_b = json.loads((straight / "results.json").read_text())
    strengths = max((abs(x - y) for k in res_b["strengths"] for x, y in
                     zip(res_a["strengths"].get(k, []), res_b["strengths"][k], strict=True)), default=math.inf)
    if res_a["strengths"].keys() != res_b["strengths"].keys():
        strengths = math.inf
    losses = max((abs(float(ha[k]) - float(hb[k])) for ha, hb in zip(res_a["history"], res_b["history"], strict=True)
                  for k in ("train_loss", "valid_loss") if k in hb), default=0.0)
    sa = load_checkpoint(killed / "search" / "search.pt")
    sb = load_checkpoint(straight / "search" / "search.pt")
    state_diff = 0.0
    for name, part in sb["state"].items():
        for key, vb in _tensors(part):
            va = dict(_tensors(sa["state"][name])).get(key)
            if va is None or va.shape != vb.shape:
                state_diff = math.inf
            else:
                state_diff = max(state_diff, float((va.double() - vb.double()).abs().max()) if vb.numel() else 0.0)
    same_arch = res_a["best"]["arch"] == res_b["best"]["arch"]
    return {
        "arch": res_a["best"]["arch"], "arch_uninterrupted": res_b["best"]["arch"], "same_arch": same_arch,
        "steps": int(sa["step"]), "steps_uninterrupted": int(sb["step"]),
        "max_strength_diff": strengths, "max_loss_diff": losses, "max_state_diff": state_diff,
        "history_epochs": len(res_a["history"]),
        "equal": bool(same_arch and strengths <= tol and losses <= tol and state_diff <= tol
                      and len(res_a["history"]) == len(res_b["history"])),
    }


def _tensors(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in _tensors(v, f"{prefix}/{k}")]
    if isinstance(obj, (list, tuple)):
        return [kv for i, v in enumerate(obj) for kv in _tensors(v, f"{prefix}/{i}")]
    return []


def _close(x: float, y: float, tol: float) -> bool:
    return x == y or abs(x - y) <= tol


def run_mode(mode: str, work: Path, *, kills: int, size: str, seed: int, tol: float = 1e-6,
             log: Any = print) -> dict[str, Any]:
    """The kill loop of ``mode`` in ``work/killed`` and the uninterrupted run in ``work/straight``
    (started first, running alongside); returns counts, comparison and wall time."""
    s = settings(mode, size)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    straight = start(search_command(work / "straight", s), work / "straight.log")
    try:
        counts = kill_loop(mode, work / "killed", s, kills, random.Random(seed), log=log)
        rc = wait(straight, s.timeout)
    finally:
        if straight in _CHILDREN:
            kill_group(straight)
    if rc != 0:
        raise RuntimeError(f"{mode}: the uninterrupted run exited with {rc}; see {work / 'straight.log'}")
    check = compare_multi(work / "killed", work / "straight") if mode == "multi" else \
        compare_oneshot(work / "killed", work / "straight", tol)
    return {"mode": mode, "size": size, "seed": seed, "command": " ".join(search_command(Path("OUT"), s)),
            **counts, **check, "wall_seconds": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict[str, Any]]) -> str:
    head = ["mode", "kills", "resumes", "mid-trial", "mid-ckpt-write", "no progress", "trials lost",
            "duplicated", "equal", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        multi = r["mode"] == "multi"
        cells = [r["mode"], r["kills"], r["resumes"], r["mid_trial"] if multi else "-", r["mid_checkpoint_write"],
                 r["no_progress"], r["lost"] if multi else "-", r["duplicated"] if multi else "-",
                 "yes" if r["equal"] else "NO", r["wall_seconds"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["multi", "oneshot", "both"], default="both")
    p.add_argument("--kills", type=int, default=50, help="SIGKILLs per mode (default 50)")
    p.add_argument("--size", choices=["long", "short"], default="long", help="search budget (default long)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    p.add_argument("--tol", type=float, default=1e-6, help="one-shot: max abs difference of strengths/state")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"where the JSON goes (default {RESULTS})")
    args = p.parse_args(argv)
    install_signal_handlers()
    modes = ["multi", "oneshot"] if args.mode == "both" else [args.mode]
    rows = []
    with tempfile.TemporaryDirectory(prefix="kill_loop.") as scratch:
        work = args.work or Path(scratch)
        for mode in modes:
            print(f"{mode}: {args.kills} kills ({args.size}) in {work / mode}", flush=True)
            row = run_mode(mode, work / mode, kills=args.kills, size=args.size, seed=args.seed, tol=args.tol)
            rows.append(row)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{mode}_{args.size}.json").write_text(json.dumps(row, indent=2, sort_keys=True) + "\n")
            print(table([row]), flush=True)
    print()
    print(table(rows))
    return 0 if all(r["equal"] and r["kills"] >= args.kills for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
