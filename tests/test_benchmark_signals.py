"""Benchmark worker pools stop their workers on SIGTERM and Ctrl-C (issue 11).

The proxy benchmark scores NB201 cells in a pool of spawned processes; the parent is signalled
and must not leave a worker running (an orphan keeps scoring and holds the terminal's pipes).
The strategy benchmark's pool has its own test in test_bench_strategies.py; the kill loop's in
test_kill_loop.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch

    from nasforge.bench.proxies import read_table, score_cells

    if __name__ == "__main__":
        rows = read_table(Path(sys.argv[1]))[:3000]
        score_cells("synflow", rows, torch.randn(1, 3, 32, 32), None, Path(sys.argv[2]), progress=False,
                    build_kwargs={"C": 4, "N": 1}, workers=2)
""")


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(p)
    return alive


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to list child processes")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_the_proxy_scoring_pool_stops_with_its_parent(tmp_path: Path, data_kit: Path, sig: int) -> None:
    script = tmp_path / "score.py"
    script.write_text(CHILD)
    log = open(tmp_path / "log.txt", "wb")
    proc = subprocess.Popen([sys.executable, str(script), str(data_kit / "nb201" / "nb201_table.csv.gz"),
                             str(tmp_path / "scores")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 90
        shards = [tmp_path / "scores" / f"synflow.w{k}.jsonl" for k in range(2)]
        while time.monotonic() < deadline and not all(p.exists() and p.stat().st_size for p in shards):
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()
        workers = _descendants(proc.pid)
        assert len(workers) >= 2, "the pool did not start"
        proc.send_signal(sig)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(workers), f"workers {_alive(workers)} outlived the parent"
        assert proc.returncode != 0
    finally:
        for p in _alive(_descendants(proc.pid)):
            subprocess.run(["kill", "-9", str(p)], check=False)
        if proc.poll() is None:
            proc.kill()
        log.close()


SCRIPT_WITH_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import _children

    print("started", flush=True)
    _children.run([sys.executable, "-c", "import subprocess, sys, time; "
                   "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"])
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_benchmark_children_die_with_the_script(sig):
    """benchmarks/_children.run (torchrun in ddp_oneshot.py, the peers in oneshot_speed.py): a
    signal to the script kills the child's whole process group, grandchildren included."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT_WITH_CHILD, str(bench)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    deadline = time.time() + 30
    while time.time() < deadline and len(_descendants(proc.pid)) < 2:
        time.sleep(0.1)
    family = _descendants(proc.pid)
    assert len(family) >= 2
    proc.send_signal(sig)
    proc.wait(timeout=30)
    time.sleep(0.5)
    assert _alive(family) == [], f"left running: {_alive(family)}"
