"""Deterministic train/valid splits (class-balanced by default) and the NB201 cifar10-valid split."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from nasforge.data.base import Item, labels_of
from nasforge.errors import DataError

if TYPE_CHECKING:
    from nasforge.data.base import ImageData


def split_indices(
    labels: Tensor, n_valid: int, *, seed: int = 0, stratified: bool = True
) -> tuple[list[int], list[int]]:
    """Split positions ``0 .. len(labels) - 1`` into sorted, disjoint train and valid lists.

    When ``stratified``, every class gives the valid part ``count * n_valid / N`` items rounded
    by largest remainder (so the total is exactly ``n_valid`` and each class is within one item
    of its exact share); the items are picked by a permutation drawn per class, in class order,
    from ``numpy.random.default_rng(seed)``. Otherwise one permutation of all items is cut.

    Args:
        labels: int labels ``[N]``.
        n_valid: items in the valid part, ``1 .. N - 1``.
        seed: seed of the permutation(s).
        stratified: keep class proportions in both parts.

    Returns:
        ``(train_positions, valid_positions)``, each sorted ascending.

    Raises:
        DataError: ``n_valid`` leaves one part empty.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64).reshape(-1)
    n = int(y.shape[0])
    if not 1 <= n_valid <= n - 1:
        raise DataError(f"cannot split {n} items into a non-empty train part and {n_valid} valid items")
    rng = np.random.default_rng(seed)
    if not stratified:
        perm = rng.permutation(n)
        return sorted(perm[n_valid:].tolist()), sorted(perm[:n_valid].tolist())
    classes, counts = np.unique(y, return_counts=True)
    # Integer largest-remainder rounding: exact shares, no float ties that differ across platforms.
    base = counts * n_valid // n
    remainder = counts * n_valid % n
    extra = n_valid - int(base.sum())
    order = sorted(range(len(classes)), key=lambda k: (-int(remainder[k]), k))
    take = base.copy()
    for k in order[:extra]:
        take[k] += 1
    in_valid = np.zeros(n, dtype=bool)
    for k, c in enumerate(classes):
        members = np.flatnonzero(y == c)
        in_valid[rng.permutation(members)[: int(take[k])]] = True
    return np.flatnonzero(~in_valid).tolist(), np.flatnonzero(in_valid).tolist()


def split_train_valid(
    dataset: Dataset[Item], valid_fraction: float = 0.5, *, seed: int = 0, stratified: bool = True
) -> tuple[Subset[Item], Subset[Item]]:
    """Split a data set into disjoint train and valid subsets, deterministically per ``seed``.

    Used by the bi-level methods (DARTS, GDAS, ...) that update weights on one half of the
    training data and architecture parameters on the other. See :func:`split_indices` for the
    rounding; labels come from :func:`labels_of`, so no image is decoded.

    Args:
        dataset: the training set to split.
        valid_fraction: share of items in the valid part, strictly between 0 and 1.
        seed: the same seed always gives the same split.
        stratified: keep the class proportions in both parts (each class within one item).

    Returns:
        ``(train_subset, valid_subset)`` of ``dataset``.

    Raises:
        DataError: ``valid_fraction`` not in (0, 1) or a part would be empty.
    """
    if not (isinstance(valid_fraction, (int, float)) and 0.0 < valid_fraction < 1.0):
        raise DataError(f"valid_fraction must be strictly between 0 and 1, got {valid_fraction!r}")
    labels = labels_of(dataset)
    n_valid = int(math.floor(len(labels) * valid_fraction + 0.5))
    train, valid = split_indices(labels, n_valid, seed=seed, stratified=stratified)
    return Subset(dataset, train), Subset(dataset, valid)


def nb201_cifar10_valid_split(data: ImageData) -> tuple[Subset[Item], Subset[Item]]:
    """NAS-Bench-201's "cifar10-valid" setting: 25,000 train / 25,000 valid of CIFAR-10 train.

    NAS-Bench-201 (Dong & Yang, ICLR 2020) trains each cell on half of the CIFAR-10 training
    set and reports accuracy on the other half. The official halves are an index list
    (``cifar-split.txt`` in AutoDL-Projects) tied to the official batch order; this function
    does **not** reproduce that list. It draws a deterministic stratified split with seed 0,
    2,500 images per class on each side, which has the same sizes and class balance.

    Args:
        data: a loaded CIFAR-10 (``load_data("cifar10", root)``).

    Returns:
        ``(train_25k, valid_25k)`` subsets of ``data.train``.

    Raises:
        DataError: ``data.train`` is not a 50,000-image, 10-class set with 5,000 per class.
    """
    labels = labels_of(data.train)
    counts = torch.bincount(labels, minlength=10).tolist() if len(labels) else []
    if data.num_classes != 10 or len(labels) != 50_000 or counts != [5_000] * 10:
        raise DataError(
            f"the NB201 cifar10-valid split needs the full CIFAR-10 training set (50,000 images, 10 classes "
            f"of 5,000); got {data.name!r} with {len(labels)} images, {data.num_classes} classes, "
            f"class counts {counts}"
        )
    return split_train_valid(data.train, 0.5, seed=0, stratified=True)
