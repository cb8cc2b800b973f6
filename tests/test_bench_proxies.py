"""The NB201 proxy benchmark machinery: correlations, bootstrap CIs, rank vote, resumable scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nasforge.bench.proxies import correlate, load_scores, rank_vote, read_table, run_benchmark, score_cells


def _scores(values):
    return {i: {"index": i, "score": v, "seconds": 0.01} for i, v in enumerate(values)}


def test_correlation_of_a_monotone_proxy_is_one_and_of_its_reverse_minus_one():
    truth = {i: float(i) for i in range(50)}
    c = correlate("p", _scores([i ** 3 for i in range(50)]), truth, list(range(50)), bootstrap=50)
    assert c.spearman == pytest.approx(1.0) and c.kendall == pytest.approx(1.0)
    assert c.spearman_ci[0] == pytest.approx(1.0)
    r = correlate("p", _scores([-i for i in range(50)]), truth, list(range(50)), bootstrap=50)
    assert r.spearman == pytest.approx(-1.0)


def test_no_path_cells_rank_last_and_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    truth = {i: float(i) for i in range(200)}
    values = [i + rng.normal(0, 60) for i in range(200)]
    values[0] = "-inf"  # a cell with no path, stored as the JSONL file stores it
    c = correlate("p", _scores(values), truth, list(range(200)), bootstrap=200)
    assert c.spearman_ci[0] < c.spearman < c.spearman_ci[1]
    assert 0.3 < c.spearman < 0.9


def test_rank_vote_averages_ranks():
    a, b = _scores([1.0, 2.0, 3.0]), _scores([30.0, 10.0, 20.0])
    v = rank_vote([a, b], [0, 1, 2])
    assert [v[i]["score"] for i in range(3)] == [2.0, 1.5, 2.5]


def test_scoring_is_resumable_and_survives_a_torn_line(tmp_path, data_kit):
    rows = read_table(data_kit / "nb201" / "nb201_table.csv.gz")[:6]
    x = torch.randn(1, 3, 32, 32)
    small = {"C": 4, "N": 1}
    first = score_cells("params", rows[:3], x, None, tmp_path, progress=False, build_kwargs=small)
    path = tmp_path / "params.jsonl"
    with path.open("a") as f:
        f.write('{"index": 99, "sco')  # a kill in the middle of a write
    assert set(load_scores(path)) == {r["index"] for r in rows[:3]}
    again = score_cells("params", rows, x, None, tmp_path, progress=False, build_kwargs=small)
    assert set(again) == {r["index"] for r in rows} and all(again[i] == first[i] for i in first)
    good = []
    for line in path.read_text().splitlines():
        try:
            good.append(json.loads(line)["index"])
        except ValueError:
            assert line == '{"index": 99, "sco'  # only the torn line is unreadable
    assert sorted(good) == sorted(r["index"] for r in rows)  # every cell once: nothing scored twice


def test_benchmark_end_to_end_on_data_free_proxies(tmp_path, data_kit):
    rows = read_table(data_kit / "nb201" / "nb201_table.csv.gz")
    small = tmp_path / "table.csv"
    # a 60-cell slice of the real table keeps this fast
    import csv
    import gzip

    with gzip.open(data_kit / "nb201" / "nb201_table.csv.gz", "rt") as f:
        reader = csv.reader(f)
        header = next(reader)
        body = [r for _, r in zip(range(60), reader)]
    with small.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(body)
    assert len(rows) == 15625
    text = run_benchmark(small, None, tmp_path / "out", proxies=["params", "flops", "snip"], bootstrap=20,
                         progress=False, log=lambda s: None)
    assert "| params | 60 |" in text and "| flops | 60 |" in text
    assert "snip" not in text  # needs data, none given: skipped, not faked
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {s["proxy"] for s in summary} == {"params", "flops"}
    # on NB201, parameter count is a known, positively correlated baseline
    assert next(s for s in summary if s["proxy"] == "params")["spearman"] > 0.3
    # the report of a finished (or partial) run recomputes the same table without scoring
    again = run_benchmark(small, None, tmp_path / "out", proxies=["params", "flops"], bootstrap=20,
                          progress=False, report_only=True, log=lambda s: None)
    assert again.splitlines()[2:] == [line for line in text.splitlines()[2:]]


def test_parallel_scoring_gives_the_same_scores_as_serial(tmp_path, data_kit):
    rows = read_table(data_kit / "nb201" / "nb201_table.csv.gz")[:8]
    x = torch.randn(1, 3, 32, 32)
    small = {"C": 4, "N": 1}
    serial = score_cells("synflow", rows, x, None, tmp_path / "a", progress=False, build_kwargs=small)
    parallel = score_cells("synflow", rows, x, None, tmp_path / "b", progress=False, build_kwargs=small, workers=2)
    assert {i: r["score"] for i, r in serial.items()} == {i: r["score"] for i, r in parallel.items()}
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["synflow.w0.jsonl", "synflow.w1.jsonl"]
