"""Shared set-up of the one-shot method tests: tiny supernets on the built-in digits."""

from __future__ import annotations

from typing import Any

import nasforge
from nasforge.train.oneshot import OneShotContext

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
