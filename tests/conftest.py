"""Shared fixtures. ``data_kit``: the real-data kit (``../shared/data`` or $NASFORGE_DATA_KIT)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

KIT_ENV = "NASFORGE_DATA_KIT"
DEFAULT_KIT = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_kit() -> Path:
    """The data kit directory; skips the test when it is absent."""
    kit = Path(os.environ[KIT_ENV]) if os.environ.get(KIT_ENV) else DEFAULT_KIT
    if not kit.is_dir():
        pytest.skip(f"data kit not found at {kit} (set ${KIT_ENV} to its path)")
    return kit


@pytest.fixture(scope="session")
def splits() -> tuple[Any, Any]:
    """The built-in digits training set split 50/50 (train, validation), as the one-shot tests use it."""
    from nasforge.data import load_data, split_train_valid

    data = load_data("digits", None)
    return split_train_valid(data.train, 0.5, seed=0)


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test, as the strategy benchmark runs searchers: the small
    LSTMs and MLPs of model-based searchers are fastest on one thread, and on a busy machine
    their multi-threaded kernels would wait for a second core. The old count is restored."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


POSTGRES = os.environ.get("NASFORGE_TEST_POSTGRES")  # set by scripts/test.sh, which starts a server


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request, tmp_path) -> str:
    """A study storage: an SQLite file, and a real PostgreSQL server when one was started."""
    if request.param == "sqlite":
        return str(tmp_path / "study.db")
    if not POSTGRES:
        pytest.skip("NASFORGE_TEST_POSTGRES is not set (bash scripts/test.sh starts a PostgreSQL server)")
    return POSTGRES
