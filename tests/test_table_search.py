"""Searchers on the real NAS-Bench-201 table (the data kit): the literature's ordering holds."""

from __future__ import annotations

import json
import statistics

import pytest

from nasforge import get_space
from nasforge.errors import ConfigError, DataError
from nasforge.evaluators.table import NB201Table, best_test_after
from nasforge.experiment import SearchConfig, run_search
from nasforge.searchers.evolution import RegularizedEvolution
from nasforge.searchers.random_search import RandomSearch


@pytest.fixture(scope="module")
def table(data_kit):
    return NB201Table(get_space("nb201"), data_kit / "nb201" / "nb201_table.csv.gz")


def test_table_holds_every_cell_and_the_known_optimum(table):
    assert len(table) == 15625
    arch, acc = table.best("test_acc")
    assert acc == pytest.approx(94.37, abs=0.01)
    assert table.best("val_acc")[1] == pytest.approx(91.61, abs=0.01)
    space = get_space("nb201")
    r = table(space.parse(arch))
    assert r.cost == 1.0 and r.metrics["test_acc"] == acc and r.metrics["params"] > 0


def _search(table, cls, seed, queries, **kw):
    return best_test_after(table, cls(table.space, seed=seed, **kw), queries)


def test_regularized_evolution_beats_random_search_on_nb201(table):
    """NB201 paper (Dong & Yang 2020, Table 5): REA 93.92 vs RS 93.70 C10 test. We check the order."""
    seeds = range(20)
    rea = [_search(table, RegularizedEvolution, s, 150, population_size=10, sample_size=3) for s in seeds]
    rs = [_search(table, RandomSearch, s, 150) for s in seeds]
    assert statistics.mean(rea) > statistics.mean(rs)
    assert statistics.mean(rea) > 93.0


def test_table_search_end_to_end_with_latency_constraint(tmp_path, data_kit):
    cfg = SearchConfig(space="nb201", method="evolution", evaluator="table",
                       table=str(data_kit / "nb201" / "nb201_table.csv.gz"), trials=40,
                       constraints=["hwnb_pixel3_latency_ms<=6"], out=str(tmp_path / "run"))
    out = run_search(cfg, progress=False, log=lambda s: None)
    res = json.loads((out.run_dir / "results.json").read_text())
    assert len(res["trials"]) == 40
    assert res["best"]["metrics"]["hwnb_pixel3_latency_ms"] <= 6
    assert res["final"] is None  # table searches do not retrain by default


def test_table_rejects_other_spaces_and_missing_files(tmp_path, data_kit):
    with pytest.raises(DataError, match="only the 'nb201' space"):
        NB201Table(get_space("darts"), data_kit / "nb201" / "nb201_table.csv.gz")
    with pytest.raises(DataError, match="not found"):
        NB201Table(get_space("nb201"), tmp_path / "missing.csv")


def test_naswot_style_protocol_reports_the_winners_table_accuracy(tmp_path, data_kit):
    """Mellor et al.'s protocol: sample N at random, keep the best proxy score, look the winner up."""
    table = str(data_kit / "nb201" / "nb201_table.csv.gz")
    cfg = SearchConfig(space="nb201", method="random", evaluator="proxy", proxy="synflow", trials=6,
                       build_kwargs={"C": 4, "N": 1}, table=table, final_train=False, out=str(tmp_path / "run"))
    out = run_search(cfg, progress=False, log=lambda s: None)
    res = json.loads((out.run_dir / "results.json").read_text())
    best = res["best"]
    assert best["metrics"]["synflow"] == max(t["metrics"]["synflow"] for t in res["trials"])
    looked_up = NB201Table(get_space("nb201"), table)(get_space("nb201").parse(best["arch"])).metrics
    assert best["table"]["test_acc"] == looked_up["test_acc"]
    with pytest.raises(ConfigError, match="needs space 'nb201'"):
        run_search(SearchConfig(space="darts", evaluator="proxy", proxy="params", table=table,
                                out=str(tmp_path / "d")), progress=False, log=lambda s: None)
