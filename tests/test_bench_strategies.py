"""The strategy benchmark (``nasforge bench strategies``): its exact random-search expectation,
its protocol, its outputs, its input checks and its worker pool."""

from __future__ import annotations

import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasforge.bench.strategies import (
    RunResult,
    TableData,
    parse_method_options,
    random_search_expectation,
    run_benchmark,
    run_one,
    summarise,
)
from nasforge.cli import main
from nasforge.errors import BudgetError, ConfigError, UnknownNameError


def _tiny_table() -> TableData:
    # five cells, two of them tied on validation accuracy (with different test accuracies)
    vals = [(80.0, 81.0), (85.0, 86.0), (85.0, 90.0), (70.0, 75.0), (90.0, 91.0)]
    return TableData({f"cell{i}": {"val_acc": v, "test_acc": t} for i, (v, t) in enumerate(vals)})


def test_random_expectation_equals_enumeration_of_every_draw_sequence():
    table = _tiny_table()
    cells = list(table.rows.values())
    for n in (1, 2, 3, 4):
        total = 0.0
        for seq in itertools.product(range(len(cells)), repeat=n):
            best_val, best_test = -1.0, 0.0
            for i in seq:  # the benchmark's rule: strictly better validation replaces, ties keep the first
                if cells[i]["val_acc"] > best_val:
                    best_val, best_test = cells[i]["val_acc"], cells[i]["test_acc"]
            total += best_test
        assert random_search_expectation(table, [n])[n] == pytest.approx(total / len(cells) ** n, rel=1e-12)


def test_summary_statistics_and_welch_direction():
    table = _tiny_table()
    runs = [RunResult("random", s, [80.0 + s % 3] * 3, 0.003) for s in range(6)]
    runs += [RunResult("better", s, [85.0 + s % 2] * 3, 0.006) for s in range(6)]
    summary = summarise(table, runs, 3)
    better = summary["methods"]["better"]
    assert better["mean"] == pytest.approx(85.5)
    assert better["std"] == pytest.approx(statistics.stdev([85.0, 86.0] * 3))
    assert better["p_vs_random"] < 1e-3  # clearly better: one-sided p small
    assert better["ms_per_proposal"] == pytest.approx(2.0)
    assert summary["methods"]["random"]["p_vs_random"] is None
    flipped = summarise(table, [RunResult("random", r.seed, [90.0] * 3, 0.0) if r.method == "random" else r for r in runs], 3)
    assert flipped["methods"]["better"]["p_vs_random"] > 0.99  # worse than random: not "significant"


@pytest.fixture(scope="module")
def table_path(data_kit) -> Path:
    return data_kit / "nb201" / "nb201_table.csv.gz"


@pytest.fixture(scope="module")
def table(table_path) -> TableData:
    return TableData.load(table_path)


def test_run_one_reports_the_best_by_validation_cells_test_accuracy(table):
    r = run_one(table, "random", 3, 40, {})
    assert len(r.curve) == len(r.proposals) == 40
    best_val, expected = -1.0, []
    for key in r.proposals:
        m = table.rows[key]
        if m["val_acc"] > best_val:
            best_val, test = m["val_acc"], m["test_acc"]
        expected.append(test)
    assert r.curve == expected
    assert r.seconds > 0
    assert run_one(table, "random", 3, 40, {}).proposals == r.proposals  # seeded


def test_benchmark_writes_its_outputs_with_two_workers(table_path, tmp_path):
    summary = run_benchmark(table_path, ["random", "evolution"], seeds=4, queries=30, workers=2, out=tmp_path,
                            latency_metric="hwnb_pixel3_latency_ms", latency_target=6.0, log=lambda _: None)
    assert set(summary["methods"]) == {"random", "evolution"}
    assert summary["checkpoints"] == [10, 25, 30]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["methods"]["evolution"]["seeds"] == 4
    assert 0 < saved["methods"]["random"]["hv_ratio"] <= 1
    assert len(saved["methods"]["random"]["share_meeting_target_by_quarter"]) == 4
    assert (tmp_path / "curves.csv").read_text().count("\n") == 31
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "max |measured - exact|" in (tmp_path / "summary.md").read_text()


def test_bad_input_is_refused_before_any_work(table_path, tmp_path):
    with pytest.raises(BudgetError, match="queries"):
        run_benchmark(table_path, ["random"], queries=0, out=tmp_path / "a")
    with pytest.raises(BudgetError, match="seeds"):
        run_benchmark(table_path, ["random"], seeds=-1, out=tmp_path / "a")
    with pytest.raises(UnknownNameError, match="no_such_method"):
        run_benchmark(table_path, ["random", "no_such_method"], out=tmp_path / "a")
    with pytest.raises(ConfigError, match="not among the methods"):
        run_benchmark(table_path, ["random"], options={"evolution": {"population_size": 5}}, out=tmp_path / "a")
    with pytest.raises(ConfigError, match="hwnb_pixel3_latency_ms"):
        run_benchmark(table_path, ["random"], latency_metric="pixel9_latency", out=tmp_path / "a")
    with pytest.raises(BudgetError, match="population_size"):
        run_benchmark(table_path, ["evolution"], options={"evolution": {"population_size": 0}}, out=tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="METHOD:KEY=VALUE"):
        parse_method_options(["population_size=3"])
    assert parse_method_options(["evolution:population_size=5", "evolution:aging=false"]) == {
        "evolution": {"population_size": 5, "aging": False}}


def test_cli_prints_the_table(table_path, tmp_path, capsys):
    assert main(["bench", "strategies", "--table", str(table_path), "--methods", "random,nonaging_evolution",
                 "--seeds", "3", "--queries", "12", "--workers", "1", "--out", str(tmp_path),
                 "--method-opt", "nonaging_evolution:population_size=5"]) == 0
    out = capsys.readouterr().out
    assert "nonaging_evolution" in out and "random (exact)" in out and "@10" in out


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to list child processes")
def test_sigterm_stops_the_worker_pool(table_path, tmp_path):
    cmd = [sys.executable, "-m", "nasforge", "bench", "strategies", "--table", str(table_path), "--methods", "random",
           "--seeds", "100000", "--queries", "150", "--workers", "2", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.2)
            workers = _children(proc.pid)
        assert len(workers) >= 2, "the pool did not start"
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    time.sleep(0.5)
    alive = [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in (Path(f"/proc/{w}/stat").read_text().split()[2])]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived the parent"
