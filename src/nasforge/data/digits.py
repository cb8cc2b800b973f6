"""The embedded default data set: scikit-learn's 8x8 handwritten digits (no download, no files).

1,797 grey images of 10 digits (UCI "Optical Recognition of Handwritten Digits"), pixel values
0..16. Scaled to [0, 1], split once (stratified, seed 0) into 1,437 train / 360 test, and
normalised with the mean and standard deviation of the train part. Small enough to keep as
float32 in memory and to train a tiny network on in seconds, which is what tests and quick
demos need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nasforge.data.base import ImageData, TensorImageDataset
from nasforge.data.splits import split_indices

DIGITS_TEST_SIZE = 360  # 1,797 - 360 = 1,437 train: about a 80/20 split


def load_digits(root: object = None, image_size: int | None = None) -> ImageData:
    """Load the 8x8 digits bundled with scikit-learn.

    Args:
        root: ignored (the data ships inside scikit-learn); accepted so every loader has the
            same signature.
        image_size: resize (bilinear, before normalising) to this side; default 8.

    Returns:
        :class:`ImageData` with 1,437 train and 360 test images ``[1, S, S]``.
    """
    from sklearn.datasets import load_digits as sk_load_digits  # heavy: import on use

    bunch = sk_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # [N, 1, 8, 8]
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    size = 8 if image_size is None else int(image_size)
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    train_idx, test_idx = split_indices(labels, DIGITS_TEST_SIZE, seed=0, stratified=True)
    tr, te = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    mean = float(images[tr].mean())
    std = float(images[tr].std())
    norm = (images - mean) / std
    return ImageData(
        name="digits",
        train=TensorImageDataset(norm[tr], labels[tr]),
        test=TensorImageDataset(norm[te], labels[te]),
        num_classes=10,
        in_channels=1,
        image_size=size,
        class_names=[str(d) for d in range(10)],
        mean=(mean,),
        std=(std,),
    )
