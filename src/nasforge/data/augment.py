"""Vectorised batch augmentation: random crop with padding, horizontal flip, cutout.

Applied to a whole normalised batch at once (on whatever device it lives on) instead of per
image in the loader, so augmentation is cheap, works with ``num_workers=0`` and is
reproducible from one :class:`torch.Generator`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nasforge.errors import ConfigError, DataError


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    # Draw on the generator's own device (a CPU generator cannot fill a CUDA tensor), then move.
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, high, (n,), generator=generator, device=gen_device).to(device)


def augment_batch(
    x: Tensor,
    *,
    generator: torch.Generator | None,
    crop_padding: int = 0,
    flip: bool = False,
    cutout: int = 0,
) -> Tensor:
    """Randomly crop, flip and cut out a batch of images; returns a new tensor.

    The three steps run in the order of the DARTS CIFAR pipeline (crop, flip, then cutout):

    * **crop**: pad each side by ``crop_padding`` zeros and cut a window of the original size
      at an offset drawn uniformly per image. Zero is zero *in the tensor's space*: on
      normalised images it is the mean colour, whereas torchvision's ``RandomCrop(padding=4)``
      pads the raw image with black before normalising (a small, documented difference).
    * **flip**: mirror each image left-right with probability 1/2.
    * **cutout** (DeVries & Taylor 2017, ``uoguelph-mlrg/Cutout``; DARTS ``utils.Cutout``): the
      centre ``(cy, cx)`` is uniform over all pixels and rows ``cy - cutout // 2 .. cy + cutout // 2 - 1``
      (clipped to the image), likewise columns, are set to zero; one square per image. As in
      the DARTS code, squares near the border are partly outside the image.

    Args:
        x: images ``[N, C, H, W]``.
        generator: source of randomness (``None``: the global torch RNG).
        crop_padding: padding of the random crop; 0 disables cropping.
        flip: enable random horizontal flips.
        cutout: side of the cutout square; 0 disables cutout.

    Returns:
        augmented images, same shape, dtype and device as ``x``.

    Raises:
        DataError: ``x`` is not 4-D.
        ConfigError: negative ``crop_padding`` or ``cutout``.
    """
    if x.dim() != 4:
        raise DataError(f"augment_batch needs images [N, C, H, W], got shape {tuple(x.shape)}")
    if crop_padding < 0:
        raise ConfigError(f"crop_padding must be >= 0, got {crop_padding!r}")
    if cutout < 0:
        raise ConfigError(f"cutout must be >= 0, got {cutout!r}")
    n, c, h, w = x.shape
    out = x
    if n == 0:
        return x.clone()
    if crop_padding > 0:
        p = crop_padding
        padded = F.pad(x, (p, p, p, p))
        hp, wp = h + 2 * p, w + 2 * p
        oy = _randint(2 * p + 1, n, generator, x.device)
        ox = _randint(2 * p + 1, n, generator, x.device)
        rows = oy[:, None, None] + torch.arange(h, device=x.device)[None, :, None]  # [N, H, 1]
        cols = ox[:, None, None] + torch.arange(w, device=x.device)[None, None, :]  # [N, 1, W]
        # One gather over the flattened padded planes: ~6x faster on CPU than advanced indexing.
        flat = (rows * wp + cols).view(n, 1, h * w).expand(n, c, h * w)
        out = padded.reshape(n, c, hp * wp).gather(2, flat).view(n, c, h, w)
    if flip:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        mask = (torch.rand(n, generator=generator, device=gen_device) < 0.5).to(x.device)
        out = out.clone() if out is x else out
        out[mask] = out[mask].flip(3)
    if cutout > 0:
        cy = _randint(h, n, generator, x.device)
        cx = _randint(w, n, generator, x.device)
        half = cutout // 2
        ys = torch.arange(h, device=x.device)[None, :]
        xs = torch.arange(w, device=x.device)[None, :]
        in_rows = (ys >= cy[:, None] - half) & (ys < cy[:, None] + half)  # [N, H]
        in_cols = (xs >= cx[:, None] - half) & (xs < cx[:, None] + half)  # [N, W]
        square = in_rows[:, :, None] & in_cols[:, None, :]
        out = out.masked_fill(square[:, None, :, :], 0.0)
    return out.contiguous() if out is not x else x.clone()
