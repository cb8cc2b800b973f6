"""Checkpoint faults: truncated, overwritten and empty files, both copies bad, a full disk.

The last two good checkpoints are kept (``search.pt`` and ``search.prev.pt``); a bad current
file is detected (its length and SHA-256 are recorded after torch's payload) and the previous
one is used, with a line naming both. A write that runs out of space raises a typed error and
leaves the good files as they were. The full disk is real, in a child process:

* ``RLIMIT_FSIZE`` (unprivileged, works everywhere on Linux/macOS): the kernel fails the write
  that would pass the limit with EFBIG (SIGXFSZ ignored, so the process is not killed);
* a 256 KiB tmpfs mounted inside ``unshare --user --map-root-user --mount`` (skipped where user
  namespaces are not allowed): the kernel fails the write with ENOSPC, a real full disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nasforge.errors import CheckpointError, StorageError, StorageFullError
from nasforge.train import get_recipe
from nasforge.train.checkpoint import (
    TRAILER_SIZE,
    checkpoint_exists,
    load_checkpoint,
    load_checkpoint_and_source,
    previous_path,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]


def _two(tmp_path: Path) -> Path:
    """``ck.pt`` holding version 2 and ``ck.prev.pt`` holding version 1."""
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"meta": {"run": "a"}, "version": 1, "w": torch.arange(1000.0)})
    save_checkpoint(path, {"meta": {"run": "a"}, "version": 2, "w": torch.arange(1000.0) * 2})
    assert sorted(os.listdir(tmp_path)) == ["ck.prev.pt", "ck.pt"]
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path: Path) -> None:
    """Same length, new content: only the checksum can tell (torch does not check its CRCs)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle: middle + 64] = os.urandom(64)
    path.write_bytes(bytes(data))


def _all_random(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_truncate, _random_bytes, _all_random, _empty],
                         ids=["truncated", "random-bytes-inside", "random-file", "zero-length"])
def test_a_bad_current_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, damage: Any) -> None:
    path = _two(tmp_path)
    damage(path)
    lines: list[str] = []
    state, source = load_checkpoint_and_source(path, expect={"run": "a"}, log_fn=lines.append)
    assert source == previous_path(path) and state["version"] == 1
    assert torch.equal(state["w"], torch.arange(1000.0))
    assert len(lines) == 1 and str(path) in lines[0] and str(previous_path(path)) in lines[0]
    assert "using the previous good checkpoint" in lines[0]
    # The bad file is moved aside, so the next save does not keep it as the "previous" one.
    assert (tmp_path / "ck.pt.corrupt").is_file() and not path.exists()
    save_checkpoint(path, {"meta": {"run": "a"}, "version": 3})
    assert load_checkpoint(previous_path(path))["version"] == 1
    assert load_checkpoint(path)["version"] == 3


def test_truncation_anywhere_is_detected(tmp_path: Path) -> None:
    path = _two(tmp_path)
    data = path.read_bytes()
    for cut in (1, 100, len(data) // 3, len(data) - TRAILER_SIZE - 1, len(data) - 1):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"cut{cut}.pt"):
            load_checkpoint(bad, fallback=False)
    # Cut exactly before the integrity record: the payload is whole, and loads.
    whole = tmp_path / "payload.pt"
    whole.write_bytes(data[: len(data) - TRAILER_SIZE])
    assert load_checkpoint(whole)["version"] == 2


def test_both_bad_names_both_files(tmp_path: Path) -> None:
    path = _two(tmp_path)
    _truncate(path)
    _empty(previous_path(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expect={"run": "a"})
    msg = str(info.value)
    assert str(path) in msg and str(previous_path(path)) in msg
    assert "truncated" in msg and "empty" in msg
    assert path.exists()  # nothing renamed when nothing usable was found


def test_only_the_previous_exists_after_a_kill_between_the_two_renames(tmp_path: Path) -> None:
    path = _two(tmp_path)
    path.unlink()
    assert checkpoint_exists(path)
    lines: list[str] = []
    assert load_checkpoint(path, log_fn=lines.append)["version"] == 1
    assert "is missing" in lines[0]


def test_another_runs_checkpoint_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    path = _two(tmp_path)
    save_checkpoint(path, {"meta": {"run": "b"}, "version": 9})  # a good file of another run
    with pytest.raises(CheckpointError, match="meta 'run' is 'b' in the file, expected 'a'"):
        load_checkpoint(path, expect={"run": "a"})
    # A bad current file whose fallback belongs to another run: still refused.
    _truncate(path)
    save_previous = previous_path(path)
    torch_state = load_checkpoint(save_previous)
    assert torch_state["version"] == 2
    with pytest.raises(CheckpointError, match="meta 'run' is 'a' in the file, expected 'b'"):
        load_checkpoint(path, expect={"run": "b"})


def test_files_without_the_integrity_record_still_load(tmp_path: Path) -> None:
    old = tmp_path / "old.pt"
    torch.save({"meta": {"run": "a"}, "version": 0}, old)  # as written before the record existed
    assert load_checkpoint(old, expect={"run": "a"})["version"] == 0
    save_checkpoint(old, {"meta": {"run": "a"}, "version": 1})  # unverifiable, so not kept as previous
    assert not previous_path(old).exists() and load_checkpoint(old)["version"] == 1


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".ck.pt.{dead.stdout.strip()}.abcdefgh.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".ck.pt.{os.getppid()}.abcdefgh.tmp"  # a live process's write in progress
    live.write_bytes(b"in progress")
    save_checkpoint(tmp_path / "ck.pt", {"x": 1})
    assert not stale.exists() and live.exists()


# ---- resumed runs use the fallback --------------------------------------------------------


def test_a_resumed_one_shot_search_uses_the_previous_checkpoint(splits: Any, tmp_path: Path) -> None:
    from _oneshot import make_ctx
    from nasforge.methods.darts import darts

    full = darts(make_ctx(splits, max_batches_per_epoch=4), epochs=2, batch_size=16)
    run_dir = tmp_path / "run"
    darts(make_ctx(splits, run_dir=run_dir, max_batches_per_epoch=4, checkpoint_every=3), epochs=2, batch_size=16)
    prev = torch.load(run_dir / "search.prev.pt", weights_only=True)
    assert (prev["epoch"], prev["batch"]) == (1, 2)  # step 6: epoch 1, 2 batches done (search.pt: the end)
    _random_bytes(run_dir / "search.pt")
    logs: list[str] = []
    ctx = make_ctx(splits, run_dir=run_dir, max_batches_per_epoch=4, checkpoint_every=3)
    ctx.log = logs.append
    resumed = darts(ctx, epochs=2, batch_size=16)
    assert any("search.pt is corrupt" in m and "search.prev.pt" in m for m in logs), logs
    assert any(f"resuming the search from {run_dir / 'search.prev.pt'} at epoch 1, batch 2" in m for m in logs)
    assert resumed.strengths == full.strengths and resumed.arch == full.arch


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def test_a_resumed_final_training_uses_the_previous_checkpoint(tmp_path: Path, caplog: Any) -> None:
    from nasforge.data import load_data
    from nasforge.train import train

    data = load_data("digits", None)
    recipe = get_recipe("quick", epochs=3, max_batches_per_epoch=4)
    straight = _net(0)
    full = train(straight, data.train, recipe, eval_set=data.test, checkpoint_dir=tmp_path / "a", seed=1)
    assert load_checkpoint(tmp_path / "a" / "last.prev.pt")["epoch"] == 1
    _truncate(tmp_path / "a" / "last.pt")
    resumed_net = _net(5)
    with caplog.at_level("WARNING", logger="nasforge.train.checkpoint"):
        again = train(resumed_net, data.train, recipe, eval_set=data.test, checkpoint_dir=tmp_path / "a", seed=1)
    assert "last.pt" in caplog.text and "using the previous good checkpoint" in caplog.text
    assert again.resumed_from == 2  # epoch 2 ran again from the epoch-1 checkpoint
    a, b = straight.state_dict(), resumed_net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.final == full.final


# ---- a full disk, for real -------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    import torch
    from nasforge.errors import StorageFullError
    from nasforge.train.checkpoint import save_checkpoint
    path = sys.argv[1]
    save_checkpoint(path, {"meta": {"run": "a"}, "version": 1, "w": torch.zeros(1000)})
    save_checkpoint(path, {"meta": {"run": "a"}, "version": 2, "w": torch.ones(1000)})
    if sys.argv[2] == "rlimit":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    try:
        save_checkpoint(path, {"meta": {"run": "a"}, "version": 3, "w": torch.ones(1_000_000)})  # 4 MB
    except StorageFullError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e), "errno": e.errno,
                          "is_oserror": isinstance(e, OSError)}))
    else:
        print(json.dumps({"error": None}))
""")


def _check_full_disk_left_the_good_state(run_dir: Path, result: dict[str, Any], reason: str) -> None:
    path = run_dir / "ck.pt"
    assert result["error"] == "StorageFullError" and result["is_oserror"], result
    assert str(path) in result["message"] and reason in result["message"]
    assert "left in place" in result["message"] and str(previous_path(path)) in result["message"]
    assert sorted(os.listdir(run_dir)) == ["ck.prev.pt", "ck.pt"]  # no temporary file left behind
    assert load_checkpoint(path, expect={"run": "a"})["version"] == 2
    assert load_checkpoint(previous_path(path))["version"] == 1


def test_file_size_limit_mid_write_leaves_the_good_checkpoints(tmp_path: Path) -> None:
    """RLIMIT_FSIZE: the kernel refuses the write that crosses 64 KiB with EFBIG."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = subprocess.run([sys.executable, "-c", CHILD, str(run_dir / "ck.pt"), "rlimit"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    _check_full_disk_left_the_good_state(run_dir, json.loads(out.stdout.strip().splitlines()[-1]),
                                         "file-size limit was reached")


def test_a_full_tmpfs_leaves_the_good_checkpoints(tmp_path: Path) -> None:
    """A real ENOSPC: a 256 KiB tmpfs in a private mount namespace (unprivileged user namespace)."""
    unshare = shutil.which("unshare")
    if unshare is None or sys.platform != "linux":
        pytest.skip("needs util-linux unshare on Linux")
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces not allowed here: {probe.stderr.decode().strip()}")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs {run_dir} && "
              f"{sys.executable} -c \"$CHILD\" {run_dir / 'ck.pt'} tmpfs && "
              f"ls -A {run_dir} && mkdir -p {tmp_path / 'copy'} && cp {run_dir}/* {tmp_path / 'copy'}/")
    out = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "CHILD": CHILD})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[0])
    assert result["errno"] == 28 and "the disk is full" in result["message"], result
    assert sorted(lines[1:]) == ["ck.prev.pt", "ck.pt"]  # inside the namespace: no temporary file
    copy = tmp_path / "copy"
    assert load_checkpoint(copy / "ck.pt", expect={"run": "a"})["version"] == 2
    assert load_checkpoint(copy / "ck.prev.pt")["version"] == 1
    assert str(run_dir / "ck.pt") in result["message"]


def test_other_write_errors_are_typed_too(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    path = _two(tmp_path)
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="cannot write checkpoint .*ck.pt: Permission denied") as info:
            save_checkpoint(path, {"version": 3})
        assert not isinstance(info.value, StorageFullError)
    finally:
        tmp_path.chmod(0o700)
    assert load_checkpoint(path)["version"] == 2


def test_a_search_stopped_by_a_full_disk_says_so_in_one_line(tmp_path: Path) -> None:
    """The CLI, SIGKILLed after its first checkpoints, resumed under RLIMIT_FSIZE: exit 2, one
    line naming the file and the good checkpoints, which stay as they were."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nasforge", "search", "--space", "nb201", "--method", "darts",
           "--supernet-opt", "C=4", "--supernet-opt", "N=1", "--supernet-opt", "affine=false",
           "--supernet-opt", "track_running_stats=false", "--method-opt", "batch_size=16",
           "--epochs", "3", "--max-batches-per-epoch", "8", "--checkpoint-every", "2", "--no-final-train",
           "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    prev = out / "search" / "search.prev.pt"
    deadline = time.time() + 120
    while not prev.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the search finished before the kill")
    good = {p: load_checkpoint(out / "search" / p)["step"] for p in ("search.pt", "search.prev.pt")}
    size = (out / "search" / "search.pt").stat().st_size

    def limit() -> None:  # runs in the child before exec; an ignored signal stays ignored
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY))

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT, preexec_fn=limit)
    assert again.returncode == 2, again.stderr
    last = again.stderr.strip().splitlines()[-1]
    assert "file-size limit was reached" in last and str(out / "search" / "search.pt") in last, again.stderr
    assert "left in place" in last and "Traceback" not in again.stderr
    assert {p: load_checkpoint(out / "search" / p)["step"] for p in good} == good
    assert not list((out / "search").glob(".*.tmp"))
