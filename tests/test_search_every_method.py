"""Every registered multi-trial method through the real search loop (`run_search`), with each
evaluator: the table, a zero-cost proxy and training. A search extended after it stopped (the
resume path: the study is replayed into a fresh searcher) proposes exactly what an
uninterrupted search proposes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nasforge import registry
from nasforge.experiment import SearchConfig, run_search
from nasforge.train.oneshot import OneShotMethod

MULTI_TRIAL = [n for n in registry.names("method") if not isinstance(registry.get("method", n), OneShotMethod)
               and n != "zennas"]  # zennas searches the zennas space (tests/test_searcher_zennas.py)


def _kwargs(name: str, evaluator: str = "table") -> dict[str, Any]:
    kw = dict(registry.get("method", name).smoke_options)
    if evaluator != "train":
        kw.pop("min_fidelity", None)  # the loop runs multi-fidelity methods at full fidelity there
    if name == "mnasnet_ppo":
        kw.update(target=10.0, latency_metric="hwnb_pixel3_latency_ms")
    return kw


def _archs(out) -> list[str]:
    return [t["arch"] for t in json.loads((out / "results.json").read_text())["trials"]]


@pytest.mark.parametrize("name", MULTI_TRIAL)
def test_table_search_resumes_to_the_uninterrupted_sequence(name, tmp_path, data_kit):
    table = str(data_kit / "nb201" / "nb201_table.csv.gz")
    base = dict(method=name, method_kwargs=_kwargs(name), evaluator="table", table=table, seed=2)
    run_search(SearchConfig(**base, trials=12, out=str(tmp_path / "whole")), progress=False, log=lambda s: None)
    run_search(SearchConfig(**base, trials=5, out=str(tmp_path / "parts")), progress=False, log=lambda s: None)
    run_search(SearchConfig(**base, trials=12, out=str(tmp_path / "parts")), progress=False, log=lambda s: None)
    whole = _archs(tmp_path / "whole")
    assert len(whole) == 12
    assert _archs(tmp_path / "parts") == whole


@pytest.mark.parametrize("name", MULTI_TRIAL)
def test_proxy_search_runs(name, tmp_path):
    kw = _kwargs(name)
    objective = None
    if name == "mnasnet_ppo":  # its reward reads an accuracy and a latency: use the proxy and FLOPs
        kw.update(accuracy_metric="synflow", latency_metric="flops", target=5e6)
    cfg = SearchConfig(method=name, method_kwargs=kw, evaluator="proxy", proxy="synflow", objective=objective,
                       build_kwargs={"C": 4, "N": 1}, trials=4, final_train=False, out=str(tmp_path / "r"))
    out = run_search(cfg, progress=False, log=lambda s: None)
    assert out.trials == 4


@pytest.mark.parametrize("name", ["bananas", "reinforce", "nsga2", "bohb"])
def test_train_search_runs(name, tmp_path):
    cfg = SearchConfig(method=name, method_kwargs=_kwargs(name, "train"), build_kwargs={"C": 4, "N": 1},
                       recipe_overrides={"epochs": 1, "batch_size": 50}, train_subset=100, trials=3,
                       final_train=False, out=str(tmp_path / "r"))
    out = run_search(cfg, progress=False, log=lambda s: None)
    assert out.trials == 3 and 0 <= out.best_metrics["val_acc"] <= 100
