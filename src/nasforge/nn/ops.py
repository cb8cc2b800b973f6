"""Primitive cell operations shared by the NAS-Bench-201 and DARTS/NASNet cell spaces.

Definitions follow the reference code of DARTS (Liu et al. 2019, ``quark0/darts``
``operations.py``) and NAS-Bench-201 (Dong & Yang 2020, ``D-X-Y/AutoDL-Projects``
``xautodl/models/cell_operations.py``). Every op maps ``(N, C_in, H, W)`` to
``(N, C_out, H/stride, W/stride)``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv -> BN (the NB201 ``nor_conv_kxk`` and the DARTS preprocessing op)."""

    def __init__(
        self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
        dilation: int = 1, affine: bool = True, track_running_stats: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise dilated conv -> pointwise conv -> BN (DARTS ``dil_conv_kxk``)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv(dilation=1) blocks (DARTS ``sep_conv_kxk``); stride on the first."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine),
        )


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` op: zeros of the output shape (no parameters, no data dependence)."""

    def __init__(self, C_out: int, stride: int) -> None:
        super().__init__()
        self.C_out, self.stride = C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        s = self.stride
        return x.new_zeros(n, self.C_out, (h + s - 1) // s, (w + s - 1) // s)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convs, concatenated (DARTS / NASNet)."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        y = self.conv_2(x[:, :, 1:, 1:]) if x.shape[-1] > 1 else self.conv_2(x)
        a = self.conv_1(x)
        if y.shape[-2:] != a.shape[-2:]:  # odd sizes: pad the offset branch back to a's size
            y = nn.functional.pad(y, (0, a.shape[-1] - y.shape[-1], 0, a.shape[-2] - y.shape[-2]))
        return self.bn(torch.cat([a, y], dim=1))


_REFERENCE_OPS = [0]  # > 0 inside reference_ops(): the fast pools run as PyTorch's plain pooling


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Run :class:`AvgPool3x3` / :class:`MaxPool3x3` as PyTorch's pooling ops inside the block.

    Used where the *operation* matters, not its speed: FLOP counting (``hardware.cost``, the
    SNAS / DSO-NAS op costs) counts pooling as pooling (0 FLOPs in ``FlopCounterMode``), not as
    the depthwise convolution the fast path runs. Nestable; values are the same either way.
    """
    _REFERENCE_OPS[0] += 1
    try:
        yield
    finally:
        _REFERENCE_OPS[0] -= 1


def _exporting() -> bool:
    return bool(
        _REFERENCE_OPS[0] > 0 or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
    )


@functools.lru_cache(maxsize=64)
def _inverse_counts(h: int, w: int, stride: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    ones = torch.ones(1, 1, h, w, dtype=dtype, device=device)
    # a padded 3x3 window sums 9 * mean over the window with zero padding = its number of real pixels
    counts = F.avg_pool2d(ones, 3, stride, 1, count_include_pad=True) * 9
    return counts.reciprocal()


class AvgPool3x3(nn.Module):
    """``nn.AvgPool2d(3, stride, padding=1, count_include_pad=False)``, computed faster.

    A depthwise convolution with a kernel of ones, times the reciprocal number of real (not
    padded) pixels in each window: the same values up to float rounding (1e-7). On CPU, in the
    default NCHW layout, PyTorch 2.13's ``avg_pool2d`` forward + backward is about 10x slower
    than this (64x16x32x32: 98 ms vs 7 ms on one thread; ``benchmarks/oneshot_speed.py``), and
    average pooling is on every edge of the NB201 and DARTS supernets.
    """

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _exporting():  # ONNX has AveragePool: export the plain op
            return F.avg_pool2d(x, 3, self.stride, 1, count_include_pad=False)
        c, h, w = x.shape[1:]
        kernel = x.new_ones(c, 1, 3, 3)
        out = F.conv2d(x, kernel, stride=self.stride, padding=1, groups=c)
        return out * _inverse_counts(h, w, self.stride, x.dtype, x.device)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, count_include_pad=False"


class MaxPool3x3(nn.Module):
    """``nn.MaxPool2d(3, stride, padding=1)`` run in channels-last layout (same values and gradients).

    PyTorch 2.13's CPU max pooling of NCHW tensors is several times slower than of channels-last
    ones; the two layout copies cost less than the difference.
    """

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.is_contiguous(memory_format=torch.channels_last) or _exporting():
            return F.max_pool2d(x, 3, self.stride, 1)
        out = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, self.stride, 1)
        return out.contiguous()

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


def _pool(kind: str, C_in: int, C_out: int, stride: int, affine: bool, track: bool) -> nn.Module:
    pool: nn.Module = AvgPool3x3(stride) if kind == "avg" else MaxPool3x3(stride)
    if C_in == C_out:
        return pool
    # NB201 POOLING: a 1x1 ReLUConvBN first when the channel count changes.
    return nn.Sequential(ReLUConvBN(C_in, C_out, 1, 1, 0, affine=affine, track_running_stats=track), pool)


def _skip(C_in: int, C_out: int, stride: int, affine: bool, track: bool) -> nn.Module:
    if stride == 1 and C_in == C_out:
        return Identity()
    return FactorizedReduce(C_in, C_out, affine=affine, track_running_stats=track)


OpFactory = Callable[[int, int, int, bool, bool], nn.Module]  # (C_in, C_out, stride, affine, track)

#: NAS-Bench-201 operations (``xautodl`` OPS, ``nas-bench-201`` search space).
NB201_OPS: dict[str, OpFactory] = {
    "none": lambda Ci, Co, s, a, t: Zero(Co, s),
    "skip_connect": _skip,
    "nor_conv_1x1": lambda Ci, Co, s, a, t: ReLUConvBN(Ci, Co, 1, s, 0, affine=a, track_running_stats=t),
    "nor_conv_3x3": lambda Ci, Co, s, a, t: ReLUConvBN(Ci, Co, 3, s, 1, affine=a, track_running_stats=t),
    "avg_pool_3x3": lambda Ci, Co, s, a, t: _pool("avg", Ci, Co, s, a, t),
}

#: The 8 DARTS operations (``quark0/darts`` ``operations.py``; C_in == C_out there).
DARTS_OPS: dict[str, OpFactory] = {
    "none": lambda Ci, Co, s, a, t: Zero(Co, s),
    "max_pool_3x3": lambda Ci, Co, s, a, t: _pool("max", Ci, Co, s, a, t),
    "avg_pool_3x3": lambda Ci, Co, s, a, t: _pool("avg", Ci, Co, s, a, t),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda Ci, Co, s, a, t: SepConv(Ci, Co, 3, s, 1, affine=a),
    "sep_conv_5x5": lambda Ci, Co, s, a, t: SepConv(Ci, Co, 5, s, 2, affine=a),
    "dil_conv_3x3": lambda Ci, Co, s, a, t: DilConv(Ci, Co, 3, s, 2, 2, affine=a),
    "dil_conv_5x5": lambda Ci, Co, s, a, t: DilConv(Ci, Co, 5, s, 4, 2, affine=a),
}


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Drop whole samples of a path with probability ``drop_prob`` (DARTS ``utils.drop_path``)."""
    if not training or drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask
