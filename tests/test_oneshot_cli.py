"""One-shot methods from `nasforge search`: a real process killed with SIGINT resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nasforge.cli import main
from nasforge.errors import ConfigError
from nasforge.experiment import SearchConfig, run_search

TINY = ["--supernet-opt", "C=4", "--supernet-opt", "N=1", "--supernet-opt", "affine=false",
        "--supernet-opt", "track_running_stats=false", "--method-opt", "batch_size=16"]


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nasforge", "search", "--space", "nb201", "--method", "darts", *TINY,
            "--epochs", "3", "--max-batches-per-epoch", "12", "--checkpoint-every", "4", "--no-final-train",
            "--out", str(out), "--no-progress", *extra]


def test_sigint_mid_search_then_rerun_gives_the_uninterrupted_alphas(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    full = subprocess.run(_cmd(tmp_path / "full"), capture_output=True, text=True, env=env, timeout=300)
    assert full.returncode == 0, full.stderr
    out = tmp_path / "cut"
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ckpt = out / "search" / "search.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("search finished before the interrupt landed")
    assert proc.returncode == 130, err
    assert "Rerun the same command to resume" in err
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] < 36  # stopped before the end
    again = subprocess.run(_cmd(out), capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming the search" in again.stdout
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert a["strengths"] == b["strengths"] and a["best"]["arch"] == b["best"]["arch"]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_one_shot_search_with_table_lookup_and_show(tmp_path: Path, data_kit: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    table = data_kit / "nb201" / "nb201_table.csv.gz"
    out = tmp_path / "run"
    assert main(["search", "--space", "nb201", "--method", "darts", *TINY, "--epochs", "2", "--max-batches-per-epoch", "3",
                 "--table", str(table), "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["method_kind"] == "one-shot" and res["final"] is None  # --table: no retraining by default
    assert 0 < res["best"]["table"]["test_acc"] < 100
    assert all("table_test_acc" in h for h in res["history"])
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "darts (one-shot) on nb201" in shown and res["best"]["arch"] in shown


def test_one_shot_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not apply to the one-shot method 'darts'"):
        SearchConfig(method="darts", evaluator="proxy", proxy="synflow", out=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="unknown darts option"):
        run_search(SearchConfig(method="darts", method_kwargs={"epoch": 3}, out=str(tmp_path / "x")), progress=False,
                   log=lambda s: None)


def test_methods_command_lists_one_shot_methods(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "darts" in out and "one-shot" in out and "multi-trial" in out
