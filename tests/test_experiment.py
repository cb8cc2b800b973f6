"""The search loop: durable trials, resumption by replay, run-directory checks, constraints."""

from __future__ import annotations

import json
import sqlite3

import pytest

from nasforge.errors import BudgetError, ConfigError, IncompatibleRunError, UnknownNameError
from nasforge.evaluators.train import TrainEvaluator
from nasforge.experiment import (
    SearchConfig,
    SearchInterrupted,
    parse_constraint,
    parse_objective,
    run_search,
)

import _toy  # noqa: F401  (registers the toy_test space)


def _cfg(tmp_path, **kw) -> SearchConfig:
    base = dict(space="toy_test", method="evolution", method_kwargs={"population_size": 3, "sample_size": 2},
                data="digits", trials=6, recipe="quick", recipe_overrides={"epochs": 1},
                final_train=False, out=str(tmp_path / "run"), seed=0)
    base.update(kw)
    return SearchConfig(**base)


def _trials(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    return [(t["arch"], round(t["fitness"], 6)) for t in res["trials"]]


def test_search_records_every_trial_and_writes_results(tmp_path):
    out = run_search(_cfg(tmp_path), progress=False, log=lambda s: None)
    assert out.trials == 6
    res = json.loads((out.run_dir / "results.json").read_text())
    assert len(res["trials"]) == 6
    assert res["best"]["fitness"] == max(t["fitness"] for t in res["trials"])
    for t in res["trials"]:
        assert 0.0 <= t["metrics"]["val_acc"] <= 100.0 and t["metrics"]["params"] > 0 and t["metrics"]["flops"] > 0
    assert json.loads((out.run_dir / "config.json").read_text())["trials"] == 6
    # the study is a real Optuna SQLite database
    con = sqlite3.connect(out.run_dir / "study.db")
    assert con.execute("select count(*) from trials where state='COMPLETE'").fetchone()[0] == 6


def test_interrupted_search_resumes_without_losing_or_repeating_trials(tmp_path, monkeypatch):
    straight = run_search(_cfg(tmp_path / "a"), progress=False, log=lambda s: None)
    expected = _trials(straight.run_dir)

    real_call = TrainEvaluator.__call__
    calls = {"n": 0}

    def flaky(self, arch):
        calls["n"] += 1
        if calls["n"] == 4:  # Ctrl-C while the 4th trial trains
            raise KeyboardInterrupt
        return real_call(self, arch)

    monkeypatch.setattr(TrainEvaluator, "__call__", flaky)
    cfg = _cfg(tmp_path / "b")
    with pytest.raises(SearchInterrupted, match="3 finished trial"):
        run_search(cfg, progress=False, log=lambda s: None)
    monkeypatch.setattr(TrainEvaluator, "__call__", real_call)
    logs: list[str] = []
    resumed = run_search(cfg, progress=False, log=logs.append)
    assert any("3 finished trial(s) kept" in line for line in logs)
    assert resumed.resumed_trials == 3
    # same trials, same order, same fitness as the uninterrupted run; the interrupted one is FAIL
    assert _trials(resumed.run_dir) == expected
    res = json.loads((resumed.run_dir / "results.json").read_text())
    assert res["study"]["counts"] == {"COMPLETE": 6, "FAIL": 1}


def test_more_trials_extend_a_finished_search(tmp_path):
    run_search(_cfg(tmp_path, trials=4), progress=False, log=lambda s: None)
    out = run_search(_cfg(tmp_path, trials=6), progress=False, log=lambda s: None)
    assert out.resumed_trials == 4 and out.trials == 6


def test_incompatible_run_directory_is_refused_and_left_intact(tmp_path):
    run_search(_cfg(tmp_path, trials=3), progress=False, log=lambda s: None)
    db = (tmp_path / "run" / "study.db").read_bytes()
    cfg_text = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(IncompatibleRunError, match="seed=0.*seed=1"):
        run_search(_cfg(tmp_path, seed=1), progress=False, log=lambda s: None)
    assert (tmp_path / "run" / "study.db").read_bytes() == db
    assert (tmp_path / "run" / "config.json").read_text() == cfg_text


def test_cost_constraint_excludes_large_architectures(tmp_path):
    # toy widths a=4, b=8, c=16: with params <= 1,200 the c-c-c network (>3k params) cannot appear
    out = run_search(_cfg(tmp_path, method="random", method_kwargs={}, constraints=["params<=1200"]), progress=False, log=lambda s: None)
    res = json.loads((out.run_dir / "results.json").read_text())
    assert all(t["metrics"]["params"] <= 1200 for t in res["trials"])


def test_impossible_constraint_is_a_budget_error(tmp_path):
    with pytest.raises(BudgetError, match="params<=10"):
        run_search(_cfg(tmp_path, constraints=["params<=10"]), progress=False, log=lambda s: None)


@pytest.mark.parametrize(
    "kw,err,match",
    [
        ({"trials": 0}, BudgetError, "trials must be a positive integer, got 0"),
        ({"method": "nope"}, UnknownNameError, "unknown method 'nope'.*evolution"),
        ({"space": "nope"}, UnknownNameError, "unknown space 'nope'.*nb201"),
        ({"evaluator": "table"}, ConfigError, "needs --table"),
        ({"objective": "val acc"}, ConfigError, "bad objective"),
        ({"constraints": ["params<<3"]}, ConfigError, "bad constraint"),
        ({"valid_fraction": 1.5}, ConfigError, "valid_fraction"),
    ],
)
def test_bad_search_options(tmp_path, kw, err, match):
    with pytest.raises(err, match=match):
        run_search(_cfg(tmp_path, **kw), progress=False, log=lambda s: None)
    assert not (tmp_path / "run").exists()  # nothing written for a refused config


def test_objective_and_constraint_parsing():
    assert parse_objective("val_acc") == ("val_acc", 1)
    assert parse_objective("params") == ("params", -1)
    assert parse_objective("max:params") == ("params", 1)
    c = parse_constraint("params <= 1.5M")
    assert (c.metric, c.op, c.bound) == ("params", "<=", 1.5e6) and c.ok(1e6) and not c.ok(2e6)
    assert parse_constraint("hwnb_pixel3_latency_ms<3").bound == 3.0
    with pytest.raises(BudgetError, match="never be met"):
        parse_constraint("flops<=0")


def test_proxy_search_scores_untrained_networks_and_retrains_the_best(tmp_path):
    cfg = SearchConfig(space="nb201", method="random", evaluator="proxy", proxy="synflow", data="digits", trials=5,
                       build_kwargs={"C": 4, "N": 1}, final_overrides={"epochs": 1}, out=str(tmp_path / "run"))
    assert cfg.resolved_objective() == "max:synflow"
    out = run_search(cfg, progress=False, log=lambda s: None)
    res = json.loads((out.run_dir / "results.json").read_text())
    scores = [t["metrics"]["synflow"] for t in res["trials"]]
    assert res["best"]["metrics"]["synflow"] == max(scores)
    assert res["final"] is not None and res["final"]["arch"] == res["best"]["arch"]


def test_proxy_evaluator_needs_a_known_proxy(tmp_path):
    with pytest.raises(ConfigError, match="needs --proxy"):
        run_search(_cfg(tmp_path, evaluator="proxy"), progress=False, log=lambda s: None)
    with pytest.raises(UnknownNameError, match="unknown proxy 'zen2'"):
        run_search(_cfg(tmp_path, evaluator="proxy", proxy="zen2"), progress=False, log=lambda s: None)


def test_latency_constraint_is_measured_once_and_reused_on_resume(tmp_path, monkeypatch):
    import nasforge.hardware.latency as latency

    cfg = _cfg(tmp_path, method="random", method_kwargs={}, trials=3, constraints=["latency_ms<=10000"])
    run_search(cfg, progress=False, log=lambda s: None)
    costs = json.loads((tmp_path / "run" / "costs.json").read_text())
    assert costs and all(c["latency_ms"] > 0 for c in costs.values())
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert all(t["metrics"]["latency_ms"] > 0 for t in res["trials"])

    def no_remeasure(*a, **k):
        raise AssertionError("a resumed search must reuse the measured latencies")

    monkeypatch.setattr(latency, "measure_latency_ms", no_remeasure)
    cfg.trials = 3
    out = run_search(cfg, progress=False, log=lambda s: None)  # replays 3 trials from the cache
    assert out.resumed_trials == 3


def test_latency_options_choose_how_the_loop_measures(tmp_path, monkeypatch):
    """--latency-opt: the loop reads the statistic it is told from a LatencySpec measurement;
    without options it measures as before, and the empty option is not in config.json."""
    import nasforge.hardware.latency as latency

    seen = []
    real = latency.measure

    def spy(net, shape, spec=None):
        m = real(net, shape, spec)
        seen.append(m)
        return m

    monkeypatch.setattr(latency, "measure", spy)
    cfg = _cfg(tmp_path, method="random", method_kwargs={}, trials=2, constraints=["latency_ms<=10000"],
               latency_kwargs={"statistic": "min", "repeats": 7, "warmup": 1})
    run_search(cfg, progress=False, log=lambda s: None)
    costs = json.loads((tmp_path / "run" / "costs.json").read_text())
    assert seen and all(m.repeats == 7 and m.warmup == 1 and m.threads == 1 for m in seen)
    assert sorted(c["latency_ms"] for c in costs.values()) == sorted(m.min_ms for m in seen)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["latency_kwargs"] == cfg.latency_kwargs

    other = _cfg(tmp_path, method="random", method_kwargs={}, trials=1, out=str(tmp_path / "plain"))
    run_search(other, progress=False, log=lambda s: None)
    assert "latency_kwargs" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    with pytest.raises(IncompatibleRunError, match="latency_kwargs"):  # another way of measuring is another search
        run_search(_cfg(tmp_path, method="random", method_kwargs={}, trials=2, constraints=["latency_ms<=10000"],
                        latency_kwargs={"statistic": "median"}), progress=False, log=lambda s: None)


def test_latency_options_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown latency option\(s\) \['repeat'\]; valid: statistic, backend"):
        run_search(_cfg(tmp_path, latency_kwargs={"repeat": 5}), progress=False, log=lambda s: None)
    with pytest.raises(UnknownNameError, match="unknown latency statistic 'mean'; valid: median, min"):
        run_search(_cfg(tmp_path, latency_kwargs={"statistic": "mean"}), progress=False, log=lambda s: None)
    with pytest.raises(UnknownNameError, match="unknown latency backend 'tvm'"):
        run_search(_cfg(tmp_path, latency_kwargs={"backend": "tvm"}), progress=False, log=lambda s: None)
    assert not (tmp_path / "run").exists()  # nothing was created


def test_loop_latency_isolated_rebuilds_the_network_in_a_fresh_process():
    import random

    import nasforge
    from nasforge.hardware.latency import LoopLatency, NetworkRecipe

    space = nasforge.get_space("nb201")
    arch = space.sample(random.Random(0))
    net = space.build(arch, C=4, N=1)
    loop = LoopLatency.from_options({"isolated": True, "repeats": 5, "warmup": 1, "statistic": "min"})
    ms = loop.measure_ms(net, (3, 16, 16), NetworkRecipe.of(space, arch, C=4, N=1))
    assert 0 < ms < 10_000
    with pytest.raises(ConfigError, match="pass its NetworkRecipe"):
        loop.measure_ms(net, (3, 16, 16))
    assert LoopLatency.from_options({}).spec is None  # no options: measure_latency_ms, as before


def test_measure_latency_is_positive_and_checks_arguments():
    from torch import nn

    from nasforge.hardware.latency import measure_latency_ms

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    assert measure_latency_ms(net, (1, 8, 8), repeats=3) > 0
    assert net.training  # mode restored
    with pytest.raises(BudgetError, match="repeats"):
        measure_latency_ms(net, (1, 8, 8), repeats=0)
