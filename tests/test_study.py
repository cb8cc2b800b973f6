"""Study storage on every backend: SQLite (always) and a real PostgreSQL server (when started).

`bash scripts/test.sh` starts a throw-away PostgreSQL server (scripts/postgres.sh) and sets
NASFORGE_TEST_POSTGRES; without it the PostgreSQL cases skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from nasforge.errors import ConfigError
from nasforge.experiment import SearchConfig, run_search
from nasforge.study import Study

import _toy  # noqa: F401  (registers the toy_test space)


def test_trials_round_trip_and_interrupted_trials_are_recovered(storage):
    name = f"t-{uuid.uuid4().hex}"
    s = Study(storage, name=name)
    t0 = s.start("a-b-c")
    s.finish(t0, 91.5, {"val_acc": 91.5, "params": 1234.0}, cost=2.5)
    t1 = s.start("c-c-c")
    s.fail(t1, "boom")
    # a process that dies with a trial RUNNING (os._exit: no clean-up runs)
    code = ("import os, sys; from nasforge.study import Study; "
            "Study(sys.argv[1], name=sys.argv[2]).start('b-b-b'); os._exit(9)")
    assert subprocess.run([sys.executable, "-c", code, storage, name]).returncode == 9
    again = Study(storage, name=name)  # a new process opens the same study
    assert again.recover_interrupted() == 1
    assert again.recover_interrupted() == 0
    done = again.completed()
    assert [(r.arch, r.fitness, r.metrics, r.cost) for r in done] == [
        ("a-b-c", 91.5, {"val_acc": 91.5, "params": 1234.0}, 2.5)
    ]
    assert again.counts() == {"COMPLETE": 1, "FAIL": 2}


def test_studies_with_different_names_do_not_mix(storage):
    a, b = Study(storage, name=f"a-{uuid.uuid4().hex}"), Study(storage, name=f"b-{uuid.uuid4().hex}")
    a.finish(a.start("a-a-a"), 1.0, {}, 0.0)
    assert b.completed() == [] and len(a.completed()) == 1


def test_search_resumes_from_external_storage(storage, tmp_path):
    def cfg(trials: int) -> SearchConfig:
        return SearchConfig(space="toy_test", method="evolution", method_kwargs={"population_size": 3, "sample_size": 2},
                            data="digits", trials=trials, recipe_overrides={"epochs": 1}, final_train=False,
                            out=str(tmp_path / "run"),
                            storage=storage)

    run_search(cfg(3), progress=False, log=lambda s: None)
    out = run_search(cfg(5), progress=False, log=lambda s: None)
    assert out.resumed_trials == 3 and out.trials == 5
    res = json.loads((out.run_dir / "results.json").read_text())
    assert len(res["trials"]) == 5 and res["study"]["counts"] == {"COMPLETE": 5}


def test_bad_storage_url_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot open study storage 'nosuchdb://x'"):
        Study("nosuchdb://x")


def test_storage_password_is_never_shown_or_stored(tmp_path):
    """A storage URL's password stays out of errors, config.json and logs (issue 11, security)."""
    from nasforge.study.store import redact_url

    assert redact_url("postgresql+psycopg2://nas:s3cr%40t@db:5432/studies") == "postgresql+psycopg2://nas:***@db:5432/studies"
    assert redact_url("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"
    assert redact_url("postgresql://nas@db/studies") == "postgresql://nas@db/studies"
    url = "postgresql+psycopg2://nas:topsecret@127.0.0.1:1/none"  # nothing listens on port 1
    cfg = SearchConfig(space="toy_test", method="random", data="digits", trials=1, recipe_overrides={"epochs": 1},
                       final_train=False, out=str(tmp_path / "run"), storage=url)
    lines: list[str] = []
    with pytest.raises(ConfigError) as err:
        run_search(cfg, progress=False, log=lines.append)
    assert "topsecret" not in str(err.value) and "nas:***@127.0.0.1" in str(err.value)
    written = (tmp_path / "run" / "config.json").read_text()
    assert "topsecret" not in written and "nas:***@" in written
    assert not any("topsecret" in line for line in lines)
