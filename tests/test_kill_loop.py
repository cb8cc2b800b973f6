"""The kill loop's short version: real searches SIGKILLed at random moments and resumed.

``benchmarks/kill_loop.py`` (the long version, 50+ kills per mode, figures in
docs/benchmarks.md) kills a real ``nasforge search`` process group, resumes it with the same
command, and compares the result with an uninterrupted run. Here: 5 kills per mode on a small
budget (about 40 s a mode on two cores).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _kill_loop() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kill_loop", ROOT / "benchmarks" / "kill_loop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_loop"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGKILL are POSIX")
def test_a_multi_trial_search_killed_5_times_loses_and_repeats_no_trial(tmp_path: Path) -> None:
    kl = _kill_loop()
    row = kl.run_mode("multi", tmp_path, kills=5, size="short", seed=1, log=lambda s: None)
    assert row["kills"] == 5 and row["resumes"] == 5, row
    assert row["study_opens"], row["study_open_error"]
    assert row["lost"] == 0 and row["duplicated"] == 0 and row["mismatched_positions"] == []
    assert row["complete"] == row["complete_uninterrupted"] == 16
    assert row["running_left"] == 0
    assert row["final"] == row["final_uninterrupted"] and row["equal"], row


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGKILL are POSIX")
def test_a_one_shot_search_killed_5_times_ends_as_the_uninterrupted_one(tmp_path: Path) -> None:
    kl = _kill_loop()
    row = kl.run_mode("oneshot", tmp_path, kills=5, size="short", seed=1, log=lambda s: None)
    assert row["kills"] == 5 and row["resumes"] == 5, row
    assert row["same_arch"] and row["steps"] == row["steps_uninterrupted"] == 30
    assert row["max_strength_diff"] <= 1e-6 and row["max_state_diff"] <= 1e-6 and row["max_loss_diff"] <= 1e-6
    assert row["equal"], row
    # Temporary files of killed checkpoint writes are cleaned up by the next successful write.
    assert not [t for t in row["temp_files_left"] if ".pt." in t]


def test_the_benchmark_stops_its_children_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM to the benchmark kills the search's process group too (no orphan keeps running)."""
    import signal
    import subprocess
    import time

    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "kill_loop.py"), "--mode", "oneshot",
                             "--kills", "50", "--size", "short", "--work", str(work), "--out", str(tmp_path / "res")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (work / "oneshot" / "killed.log").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    children = _searches_under(work)
    assert children, "no search process was started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "child process groups killed" in err
    time.sleep(0.2)
    assert not _searches_under(work), "a search outlived the benchmark"


def _searches_under(work: Path) -> list[int]:
    """PIDs of live ``nasforge search`` processes whose --out lies under ``work``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if b"search" in cmdline and any(str(work).encode() in part for part in cmdline) and state != "Z":
            pids.append(int(entry.name))
    return pids
