"""Data-set loaders by name: ``load_data("digits" | "cifar10" | "folder", root)``.

Each loader is registered under the ``"dataset"`` kind of :mod:`nasforge.registry` and has the
signature ``loader(root, image_size) -> ImageData``; a new layout is one more registered
function. Nothing here downloads anything: users point ``root`` at the copies they have.
"""

from __future__ import annotations

import os

from nasforge import registry
from nasforge.data.base import ImageData
from nasforge.data.cifar10 import load_cifar10
from nasforge.data.digits import load_digits
from nasforge.data.folder import load_folder
from nasforge.errors import require_positive

registry.register("dataset", "digits")(load_digits)
registry.register("dataset", "cifar10")(load_cifar10)
registry.register("dataset", "folder")(load_folder)


def load_data(
    name: str, root: str | os.PathLike[str] | None = None, *, image_size: int | None = None
) -> ImageData:
    """Load a data set by name.

    Args:
        name: ``"digits"`` (scikit-learn's 8x8 digits, built in: needs no ``root``),
            ``"cifar10"`` (official python batches under ``root``) or ``"folder"``
            (``root/{train,test}/<class>/*.jpg``).
        root: directory of the data (ignored by ``digits``).
        image_size: side of the square images the items are resized to (defaults: digits 8,
            cifar10 32, folder 32).

    Returns:
        the :class:`ImageData`.

    Raises:
        UnknownNameError: ``name`` is not a registered loader (the message lists them).
        BudgetError: ``image_size`` is not positive.
        DataError: the files under ``root`` are missing or not in the expected layout.
    """
    loader = registry.get("dataset", name)
    if image_size is not None:
        require_positive("image_size", image_size)
    data: ImageData = loader(None if root is None else os.fspath(root), image_size)
    return data
