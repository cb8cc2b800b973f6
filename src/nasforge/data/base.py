"""The loaded-data-set record and the in-memory image data sets behind it.

Every loader returns an :class:`ImageData`. Items of its ``train`` / ``test`` data sets are
``(image, label)`` with ``image`` a normalised float32 tensor ``[C, H, W]`` and ``label`` an
``int``. In-memory data sets expose their labels as an int64 tensor ``labels`` so splits and
class counts never have to decode images (see :func:`labels_of`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from nasforge.errors import DataError

Item = tuple[Tensor, int]


@dataclass
class ImageData:
    """A loaded image-classification data set.

    Attributes:
        name: registry name of the loader (``"digits"``, ``"cifar10"``, ``"folder"``).
        train: training items ``(float32 [C, H, W] normalised, int label)``.
        test: test items, same form.
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        in_channels: image channels (1 for digits, 3 otherwise).
        image_size: side of the square images (H == W).
        class_names: class ``i`` is ``class_names[i]``.
        mean: per-channel mean subtracted before dividing by ``std``.
        std: per-channel standard deviation.
    """

    name: str
    train: Dataset[Item] = field(repr=False)
    test: Dataset[Item] = field(repr=False)
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, what a network built for this data expects."""
        return (self.in_channels, self.image_size, self.image_size)


def _check_images(images: Tensor, labels: Tensor, stats: int | None) -> None:
    if images.dim() != 4 or images.shape[2] != images.shape[3]:
        raise DataError(f"images must be [N, C, S, S], got shape {tuple(images.shape)}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"need one label per image: {images.shape[0]} images, labels of shape {tuple(labels.shape)}"
        )
    if stats is not None and stats != images.shape[1]:
        raise DataError(f"mean/std have {stats} channels but the images have {images.shape[1]}")


class TensorImageDataset(Dataset[Item]):
    """Images already converted to normalised float32, all in memory (small data sets).

    Args:
        images: float32 ``[N, C, S, S]``, already normalised.
        labels: int64 ``[N]``.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        _check_images(images, labels, None)
        self.images = images.to(torch.float32).contiguous()
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> Item:
        return self.images[index], int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        # DataLoader calls this with a whole batch of indices: one gather instead of N.
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return list(zip(self.images[idx].unbind(0), self.labels[idx].tolist()))

    def __repr__(self) -> str:
        return f"TensorImageDataset(n={len(self)}, shape={tuple(self.images.shape[1:])})"


class UInt8ImageDataset(Dataset[Item]):
    """uint8 images in memory, converted to normalised float32 only when an item is read.

    Storing uint8 keeps CIFAR-10's 60,000 images at 184 MB instead of 737 MB as float32.

    Args:
        images: uint8 ``[N, C, S, S]``.
        labels: int64 ``[N]``.
        mean: per-channel mean of the pixel values scaled to [0, 1].
        std: per-channel standard deviation, same scale.
        image_size: resize (bilinear) to this side when reading; ``None`` keeps ``S``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8:
            raise DataError(f"images must be uint8, got {images.dtype}")
        _check_images(images, labels, len(mean))
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.image_size = image_size if image_size is not None else int(images.shape[-1])
        c = int(images.shape[1])
        self._mean = torch.tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1)
        self._std = torch.tensor(list(std), dtype=torch.float32).view(1, c, 1, 1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _convert(self, raw: Tensor) -> Tensor:
        x = raw.to(torch.float32).div_(255.0)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return (x - self._mean) / self._std

    def __getitem__(self, index: int) -> Item:
        return self._convert(self.images[index : index + 1])[0], int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return list(zip(self._convert(self.images[idx]).unbind(0), self.labels[idx].tolist()))

    def __repr__(self) -> str:
        return (
            f"UInt8ImageDataset(n={len(self)}, shape={tuple(self.images.shape[1:])}, size={self.image_size})"
        )


def labels_of(dataset: Dataset[Item]) -> Tensor:
    """All labels of ``dataset`` as an int64 tensor, in item order, without decoding images.

    Uses a ``labels`` (nasforge) or ``targets`` (torchvision) attribute when present and looks
    through :class:`~torch.utils.data.Subset` (nested ones too); anything else falls back to
    reading every item, which is slow for lazily decoded data sets.

    Args:
        dataset: a map-style data set of ``(image, label)`` items.

    Returns:
        int64 tensor ``[len(dataset)]``.
    """
    if isinstance(dataset, Subset):
        parent = labels_of(dataset.dataset)
        return parent[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    for attr in ("labels", "targets"):
        found = getattr(dataset, attr, None)
        if found is not None:
            return torch.as_tensor(found, dtype=torch.int64).reshape(-1)
    n = len(dataset)  # type: ignore[arg-type]
    return torch.tensor([int(dataset[i][1]) for i in range(n)], dtype=torch.int64)
