"""Shared set-up of the one-shot method tests: tiny supernets on the built-in digits."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import nasforge
from nasforge.train.oneshot import OneShotContext, SearchRun

#: Supernet options of the tiny test networks, per space.
NETS: dict[str, dict[str, Any]] = {
    "nb201": {"C": 4, "N": 1, "affine": False, "track_running_stats": False},
    "darts": {"C": 4, "layers": 3},
}


def make_ctx(splits: tuple[Any, Any], space: str = "nb201", **kwargs: Any) -> OneShotContext:
    """A quiet context over ``splits`` (the ``splits`` fixture) with 2 batches per epoch by default."""
    train, valid = splits
    kwargs.setdefault("max_batches_per_epoch", 2)
    return OneShotContext(
        space=nasforge.get_space(space), train_set=train, valid_set=valid, num_classes=10, input_shape=(1, 8, 8),
        supernet_kwargs=NETS[space], log=lambda _: None, **kwargs,
    )


class Killed(Exception):
    """A simulated kill of a one-shot search (raised by :func:`killed_after`)."""


@contextlib.contextmanager
def killed_after(monkeypatch: pytest.MonkeyPatch, steps: int) -> Iterator[None]:
    """The search run in the block dies right after its ``steps``-th step is done (that step's
    checkpoint, if one is due, is written first); the block must end with that kill."""
    done = SearchRun.step_done
    count = {"n": 0}

    def step_done(self: SearchRun, **metrics: float) -> None:
        done(self, **metrics)
        count["n"] += 1
        if count["n"] == steps:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(SearchRun, "step_done", step_done)
        with pytest.raises(Killed):
            yield


def quick_table(space: Any, shape: tuple[int, ...], path: Path) -> Path:
    """A real latency table of ``space`` measured on this machine, built fast (one thread, 3 passes)."""
    import torch

    from nasforge.hardware.latency import LatencySpec
    from nasforge.hardware.lut import build_lut

    threads = torch.get_num_threads()
    try:
        build_lut(space, shape, LatencySpec(backend="torch", threads=1, warmup=1, repeats=3), path,
                  fit_networks=2, progress=False)
    finally:
        torch.set_num_threads(threads)
    return path


def synthetic_table(table: Path, name: str, latencies: Mapping[str, float], constant: float) -> Path:
    """``table`` with every block's statistics set to ``latencies[option]`` and the constant to
    ``constant`` (scale 1), written beside it as ``name``: hand-computable predictions."""
    doc = json.loads(table.read_text())
    for entry in doc["entries"].values():
        for stat in ("median_ms", "min_ms", "p25_ms", "p75_ms", "max_ms"):
            entry[stat] = latencies[entry["option"]]
    doc["constant_ms"], doc["scale"] = constant, 1.0
    path = table.parent / name
    path.write_text(json.dumps(doc))
    return path
