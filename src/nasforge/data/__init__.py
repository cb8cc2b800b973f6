"""Image-classification data: the built-in digits, CIFAR-10 batches, image folders, splits.

Start with :func:`load_data`; :func:`split_train_valid` and :func:`nb201_cifar10_valid_split`
make search splits, :func:`make_loader` gives batches whose order depends only on
``(seed, epoch)``, and :func:`augment_batch` crops, flips and cuts out whole batches.
"""

from __future__ import annotations

from nasforge.data.augment import augment_batch
from nasforge.data.base import ImageData, labels_of
from nasforge.data.datasets import load_data
from nasforge.data.loaders import make_loader
from nasforge.data.splits import nb201_cifar10_valid_split, split_train_valid

__all__ = [
    "ImageData",
    "augment_batch",
    "labels_of",
    "load_data",
    "make_loader",
    "nb201_cifar10_valid_split",
    "split_train_valid",
]
