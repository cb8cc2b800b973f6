"""Image folders: the ``ImageFolder`` layout of ImageNet and most custom data sets.

Layout::

    root/train/<class>/**/*.{jpg,jpeg,png,bmp,webp}
    root/test/<class>/**/*.{jpg,...}        (``root/val/`` is accepted when ``test/`` is absent)

Classes are the sorted sub-directory names of ``train/``; ``test/`` must have the same set.
Extensions match case-insensitively; hidden files and directories (``.DS_Store``, macOS
``._x.jpg`` resource forks, ``.ipynb_checkpoints``) are skipped. Images are decoded lazily with
Pillow, converted to RGB and resized (bilinear) to a square.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from nasforge.data.base import ImageData, Item
from nasforge.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TEST_DIRS = ("test", "val")
STATS_MAX_IMAGES = 1000  # images sampled (seed 0) to estimate the per-channel mean/std
LAYOUT = "ROOT/{train,test}/<class>/*.{" + ",".join(e[1:] for e in IMAGE_EXTENSIONS) + "}"


def _visible(path: Path, top: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(top).parts)


def _class_dirs(split_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(split_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _images_in(class_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in class_dir.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and _visible(p, class_dir) and p.is_file()
    )


def scan_split(
    split_dir: Path, classes: Sequence[str] | None = None
) -> tuple[list[str], list[tuple[Path, int]]]:
    """List ``(path, label)`` of every image under ``split_dir/<class>/``.

    Args:
        split_dir: ``root/train`` or ``root/test``.
        classes: the class names the split must have (the train classes); ``None`` takes the
            sorted sub-directory names.

    Returns:
        ``(class_names, samples)`` with samples sorted by class, then path.

    Raises:
        DataError: no class directories, a class set different from ``classes``, or a class
            without images.
    """
    found = _class_dirs(split_dir)
    if not found:
        raise DataError(f"{split_dir} has no class directories; expected layout {LAYOUT}")
    names = sorted(found)
    if classes is not None and names != list(classes):
        only_here = sorted(set(names) - set(classes))
        missing = sorted(set(classes) - set(names))
        raise DataError(
            f"{split_dir} does not have the train classes: missing {missing}, not in train {only_here}"
        )
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        images = _images_in(found[name])
        if not images:
            raise DataError(
                f"class {name!r} in {split_dir} has no images (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                f"any case)"
            )
        samples.extend((p, label) for p in images)
    return names, samples


def _decode(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.array(rgb, dtype=np.uint8)  # a copy: asarray of a PIL image is read-only
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot decode image {path}: {e}") from e


class ImageFolderDataset(Dataset[Item]):
    """Images decoded from files on access, resized and normalised.

    Args:
        samples: ``(path, label)`` pairs.
        image_size: side of the square the images are resized to.
        mean: per-channel mean of pixel values scaled to [0, 1].
        std: per-channel standard deviation, same scale.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.paths = [p for p, _ in samples]
        self.labels = torch.tensor([y for _, y in samples], dtype=torch.int64)
        self.image_size = int(image_size)
        self._mean = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        x: Tensor = torch.from_numpy(_decode(self.paths[index], self.image_size)).permute(2, 0, 1)
        return (x.to(torch.float32).div_(255.0) - self._mean) / self._std, int(self.labels[index])

    def __repr__(self) -> str:
        return f"ImageFolderDataset(n={len(self)}, size={self.image_size})"


def pixel_stats(
    paths: Sequence[Path], image_size: int, *, max_images: int = STATS_MAX_IMAGES, seed: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of pixel values in [0, 1].

    Computed over at most ``max_images`` images drawn without replacement with
    ``numpy.random.default_rng(seed)`` (all of them when there are fewer), after resizing to
    ``image_size``: decoding a whole large folder just for two numbers would dominate loading.
    A channel with zero spread gets std 1 so normalising never divides by zero.
    """
    n = len(paths)
    pick = (
        np.arange(n)
        if n <= max_images
        else np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))
    )
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for i in pick:
        x = _decode(paths[int(i)], image_size).reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += x.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return tuple(float(m) for m in mean), tuple(
        float(s) if s > 1e-6 and math.isfinite(s) else 1.0 for s in std
    )


def load_folder(root: str | Path | None, image_size: int | None = None) -> ImageData:
    """Load an image-folder data set (see the module docstring for the layout).

    Mean/std are estimated from up to 1,000 train images (seeded sample, see
    :func:`pixel_stats`); every image is decoded lazily afterwards.

    Args:
        root: directory holding ``train/`` and ``test/`` (or ``val/``).
        image_size: side of the square images; default 32.

    Raises:
        DataError: ``root``, ``train/`` or ``test/`` missing, no class directories, an empty
            class, class sets that differ between train and test, an undecodable image.
    """
    if root is None:
        raise DataError(f"folder needs a root directory (layout {LAYOUT}); none was given")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist; expected layout {LAYOUT}")
    train_dir = base / "train"
    if not train_dir.is_dir():
        raise DataError(f"missing {train_dir}; expected layout {LAYOUT}")
    test_dir = next((base / d for d in TEST_DIRS if (base / d).is_dir()), None)
    if test_dir is None:
        raise DataError(f"missing {base / 'test'} (or {base / 'val'}); expected layout {LAYOUT}")
    size = 32 if image_size is None else int(image_size)
    classes, train_samples = scan_split(train_dir)
    _, test_samples = scan_split(test_dir, classes)
    mean, std = pixel_stats([p for p, _ in train_samples], size)
    return ImageData(
        name="folder",
        train=ImageFolderDataset(train_samples, size, mean, std),
        test=ImageFolderDataset(test_samples, size, mean, std),
        num_classes=len(classes),
        in_channels=3,
        image_size=size,
        class_names=classes,
        mean=mean,
        std=std,
    )
