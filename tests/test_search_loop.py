"""The multi-trial search loop's contract with searchers: metrics, fidelity, objectives, checks.

Everything that can be wrong with a search's configuration is refused with a typed error before
the run directory is written; infeasible searches say how many trials each limit rejected.
"""

from __future__ import annotations

import json

import pytest

from nasforge.cli import main
from nasforge.errors import BudgetError, ConfigError
from nasforge.experiment import SearchConfig, run_search


@pytest.fixture(scope="module")
def table(data_kit) -> str:
    return str(data_kit / "nb201" / "nb201_table.csv.gz")


def _run(**kw):
    return run_search(SearchConfig(**kw), progress=False, log=lambda s: None)


@pytest.mark.parametrize("bad,match", [
    ({"objective": "cifar100_test_acc"}, "objective needs the metric 'cifar100_test_acc'"),
    ({"constraints": ["pixel9_latency_ms<=5"]}, "constraint needs the metric 'pixel9_latency_ms'"),
    ({"objective": "val_acc,min:val_acc"}, "names a metric twice"),
    ({"objective": "val_acc,,"}, None),  # empty parts are ignored: this one is fine
])
def test_metrics_nobody_reports_are_refused_before_the_run_dir_is_written(tmp_path, table, bad, match):
    out = tmp_path / "run"
    kw = {"evaluator": "table", "table": table, "trials": 3, "out": str(out), **bad}
    if match is None:
        _run(**kw)
        assert (out / "results.json").is_file()
        return
    with pytest.raises(ConfigError, match=match) as err:
        _run(**kw)
    assert "valid:" in str(err.value) or "twice" in str(err.value)
    assert not out.exists()


def test_the_train_evaluator_metrics_are_known_in_advance(tmp_path):
    with pytest.raises(ConfigError, match="hwnb_pixel3_latency_ms.*valid: .*val_acc"):
        _run(space="nb201", objective="min:hwnb_pixel3_latency_ms", out=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_an_unmet_evaluator_constraint_says_how_many_trials_it_broke(tmp_path, table):
    with pytest.raises(BudgetError, match=r"5 trials; 5 broke hwnb_pixel3_latency_ms<=0.1"):
        _run(evaluator="table", table=table, trials=5, constraints=["hwnb_pixel3_latency_ms<=0.1"],
             out=str(tmp_path / "r"))


def test_an_unmet_cost_constraint_says_how_many_proposals_it_rejected(tmp_path, table, monkeypatch):
    import nasforge.experiment

    monkeypatch.setattr(nasforge.experiment, "_MAX_INFEASIBLE", 25)  # each rejection builds a network
    with pytest.raises(BudgetError, match=r"rejected: 25 by params<=1\b"):
        _run(evaluator="table", table=table, trials=2, constraints=["params<=1"], method="random",
             out=str(tmp_path / "r"))


def test_several_objectives_give_a_pareto_front_that_show_prints(tmp_path, table, capsys):
    out = tmp_path / "run"
    _run(evaluator="table", table=table, trials=40, method="evolution",
         objective="val_acc,min:hwnb_pixel3_latency_ms", out=str(out))
    res = json.loads((out / "results.json").read_text())
    assert res["objectives"] == ["max:val_acc", "min:hwnb_pixel3_latency_ms"]
    front = res["pareto_front"]
    assert front and front == sorted(front, key=lambda t: -t["val_acc"])
    points = [(t["metrics"]["val_acc"], t["metrics"]["hwnb_pixel3_latency_ms"]) for t in res["trials"]]
    for t in front:  # nothing recorded dominates a front member ...
        a, lat = t["val_acc"], t["hwnb_pixel3_latency_ms"]
        assert not any(pa >= a and pl <= lat and (pa > a or pl < lat) for pa, pl in points)
    on_front = {t["trial"] for t in front}
    for tr in res["trials"]:  # ... and every other trial is dominated by a front member
        if tr["number"] not in on_front:
            a, lat = tr["metrics"]["val_acc"], tr["metrics"]["hwnb_pixel3_latency_ms"]
            assert any(f["val_acc"] >= a and f["hwnb_pixel3_latency_ms"] <= lat for f in front)
    assert main(["show", str(out)]) == 0
    assert "Pareto front (max:val_acc, min:hwnb_pixel3_latency_ms)" in capsys.readouterr().out


def test_hyperband_trains_each_rung_for_its_share_of_the_epochs_and_resumes(tmp_path):
    """Multi-fidelity on the train evaluator: the fidelity is recorded per trial, the trial trains
    round(epochs * fidelity) epochs, the best comes from the highest fidelity, and a rerun replays."""
    out = tmp_path / "hb"
    kw = dict(space="nb201", method="hyperband", method_kwargs={"eta": 3, "min_fidelity": 1 / 3},
              build_kwargs={"C": 4, "N": 1}, recipe_overrides={"epochs": 3, "batch_size": 50}, train_subset=100, trials=4,
              final_train=False, out=str(out))
    _run(**kw)
    res = json.loads((out / "results.json").read_text())
    from nasforge.study import Study

    records = Study(out / "study.db").completed()
    # bracket s=1 of R=3: three configurations at 1/3 (one epoch), then the best of them at 1 (three epochs)
    assert [round(r.fidelity, 4) for r in records] == [0.3333, 0.3333, 0.3333, 1.0]
    promoted = max(records[:3], key=lambda r: r.fitness)
    assert records[3].arch == promoted.arch
    assert res["best"]["arch"] == records[3].arch  # full fidelity wins over the cheap rungs
    kw["trials"] = 5
    _run(**kw)  # resume: four trials replayed (ask gives back the arch at the recorded fidelity), one more runs
    assert len(Study(out / "study.db").completed()) == 5


def test_multi_fidelity_searchers_run_at_full_fidelity_on_the_table(tmp_path, table):
    logs: list[str] = []
    run_search(SearchConfig(evaluator="table", table=table, method="hyperband", trials=5, out=str(tmp_path / "r")),
               progress=False, log=logs.append)
    assert any("full fidelity" in line for line in logs)
    with pytest.raises(ConfigError, match="full fidelity only"):
        _run(evaluator="table", table=table, method="bohb", method_kwargs={"min_fidelity": 0.1}, trials=5,
             out=str(tmp_path / "r2"))
    assert not (tmp_path / "r2").exists()


def test_a_method_that_cannot_search_the_space_is_refused_before_the_run_dir(tmp_path):
    with pytest.raises(ConfigError, match="pnas .*darts.*pnas supports nb201"):
        _run(space="darts", method="pnas", out=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("method,options,match", [
    ("evolution", {"population_size": 0}, "population_size"),
    ("bananas", {"k": 0}, "k"),
    ("hyperband", {"eta": 1}, "eta"),
    ("mnasnet_ppo", {}, "target"),
    ("mnasnet_ppo", {"target": 5, "latency_metric": "pixel9_ms"}, "pixel9_ms"),
    ("evolution", {"bogus": 1}, r"unknown option\(s\) \['bogus'\].*valid: aging, population_size, sample_size"),
    ("bananas", {"k": "ten"}, "bad option for method 'bananas'|k"),
])
def test_bad_method_options_are_refused_before_the_run_dir(tmp_path, table, method, options, match):
    from nasforge.errors import NasforgeError

    with pytest.raises(NasforgeError, match=match):
        _run(evaluator="table", table=table, method=method, method_kwargs=options, out=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_a_searcher_that_reads_measured_latency_gets_it_from_the_cost_model(tmp_path):
    """MnasNet's reward on measured CPU latency: the proxy evaluator does not report latency_ms,
    so the loop measures it (once per architecture, kept in costs.json) and tells it."""
    out = tmp_path / "r"
    _run(method="mnasnet_ppo", method_kwargs={"target": 5.0, "latency_metric": "latency_ms", "accuracy_metric": "synflow",
                                              "batch_size": 2},
         evaluator="proxy", proxy="synflow", build_kwargs={"C": 4, "N": 1}, trials=3, final_train=False, out=str(out))
    res = json.loads((out / "results.json").read_text())
    assert all(t["metrics"]["latency_ms"] > 0 for t in res["trials"])
    assert len(json.loads((out / "costs.json").read_text())) >= 1


def test_options_that_would_be_ignored_or_contradict_are_refused(tmp_path, table):
    with pytest.raises(ConfigError, match="optimises its own reward"):
        _run(evaluator="table", table=table, method="mnasnet_ppo", method_kwargs={"target": 10.0},
             objective="min:params", out=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="disagrees with --objective"):
        _run(evaluator="table", table=table, method="nsga2", objective="val_acc,min:params",
             method_kwargs={"objectives": [["val_acc", 1], ["hwnb_pixel3_latency_ms", -1]]}, out=str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_nan_objective_is_a_failed_trial_and_best_prefers_feasible_trials():
    import math

    from nasforge.experiment import _fitness, _rank, parse_constraint
    from nasforge.study import TrialRecord

    assert _fitness({"val_loss": math.nan}, ("val_loss", -1), []) == -math.inf
    assert _fitness({"val_acc": 50.0, "lat": 9.0}, ("val_acc", 1), [parse_constraint("lat<=5")]) == -math.inf
    cheap_ok = TrialRecord(0, "a", 80.0, {}, 1.0, fidelity=1 / 3)
    full_bad = TrialRecord(1, "b", -math.inf, {}, 1.0, fidelity=1.0)
    full_ok = TrialRecord(2, "c", 70.0, {}, 1.0, fidelity=1.0)
    assert max([cheap_ok, full_bad], key=_rank) is cheap_ok  # an infeasible full training is never "best"
    assert max([cheap_ok, full_bad, full_ok], key=_rank) is full_ok  # full fidelity beats a cheap rung


def test_metaqnn_never_rewards_a_failure_above_a_real_trial():
    import math

    from nasforge import get_space
    from nasforge.searchers.metaqnn import MetaQNN

    q = MetaQNN(get_space("nb201"), seed=0, reward_scale=1.0)
    assert q.reward(-math.inf) == 0.0  # accuracies: the reference's 0
    a = q.ask()
    q.tell(a, -3.0)  # e.g. a min: objective or the Pareto wrapper's scalar
    assert q.reward(-math.inf) == -3.0 < 0.0


def test_rungs_that_round_to_the_same_epochs_are_reported(tmp_path):
    from nasforge.experiment import _warn_collapsed_rungs

    said: list[str] = []
    _warn_collapsed_rungs(SearchConfig(method="hyperband", recipe_overrides={"epochs": 3}),
                          {"eta": 3, "min_fidelity": 1 / 9}, said.append)
    assert said and "[1, 1, 3]" in said[0]
    said.clear()
    _warn_collapsed_rungs(SearchConfig(method="hyperband", recipe_overrides={"epochs": 9}),
                          {"eta": 3, "min_fidelity": 1 / 9}, said.append)
    assert said == []
