"""Shared set-up of the one-shot method tests: tiny supernets on the built-in digits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
