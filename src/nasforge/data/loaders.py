"""Data loaders whose order is a pure function of ``(seed, epoch)``.

A search that is stopped and resumed at an epoch boundary must see exactly the batches it
would have seen without the interruption, so the shuffle order is derived from
``(seed, epoch)`` alone, never from the global torch RNG or from how often a loader was
iterated before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nasforge.data.base import Item
from nasforge.errors import ConfigError, DataError, require_positive


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``(seed, epoch)``; nearby pairs give unrelated streams (SeedSequence)."""
    for name, value in (("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


class SeededSampler(Sampler[int]):
    """Indices ``0 .. n - 1`` in a permutation fixed by ``(seed, epoch)``, or in order.

    Iterating twice gives the same order; call :meth:`set_epoch` (or build a new loader with
    :func:`make_loader`) to move to another epoch's order.

    Args:
        n: number of items.
        seed: run seed.
        epoch: epoch number (0-based).
        shuffle: permute (True) or keep the natural order (False).
    """

    def __init__(self, n: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = int(n), seed, shuffle
        self.epoch = epoch
        epoch_seed(seed, epoch)  # validate now, not at the first iteration

    def set_epoch(self, epoch: int) -> None:
        """Switch to the order of ``epoch``."""
        epoch_seed(self.seed, epoch)
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(
    dataset: Dataset[Item],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader[Item]:
    """A DataLoader whose batch order depends only on ``(seed, epoch)``.

    The loader also gets its own generator seeded from ``(seed, epoch)`` so that iterating it
    neither reads nor advances the global torch RNG (DataLoader otherwise draws its worker base
    seed from it, which would make later random draws depend on how many loaders ran).

    Args:
        dataset: a map-style data set.
        batch_size: items per batch, > 0.
        shuffle: permute the items (training) or keep their order (evaluation).
        seed: run seed.
        epoch: epoch number; the same ``(seed, epoch)`` always gives the same batches.
        drop_last: drop the last incomplete batch.
        num_workers: worker processes (0 loads in the calling process).

    Returns:
        a :class:`torch.utils.data.DataLoader`.

    Raises:
        BudgetError: ``batch_size`` is not positive.
        ConfigError: negative ``seed``, ``epoch`` or ``num_workers``.
        DataError: the data set is empty.
    """
    require_positive("batch_size", batch_size)
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers!r}")
    n = len(dataset) if isinstance(dataset, Sized) else 0
    if n == 0:
        raise DataError("cannot make a loader over an empty data set")
    sampler = SeededSampler(n, seed=seed, epoch=epoch, shuffle=shuffle)
    base = torch.Generator().manual_seed(epoch_seed(seed, epoch) ^ 0x5EED)
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=base,
    )
