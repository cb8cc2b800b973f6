"""ShuffleNetV2 choice blocks of SPOS, with weight-sharing channel slicing.

Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform Sampling", ECCV 2020;
reference code ``megvii-model/SinglePathOneShot`` (``src/Supernet/blocks.py``); the blocks are
those of Ma et al., "ShuffleNet V2", ECCV 2018.

* :class:`ShuffleBlock` — the reference's ``Shufflenet`` (ksize 3, 5 or 7): main branch 1x1
  conv -> BN -> ReLU -> kxk depthwise (stride) -> BN -> 1x1 conv -> BN -> ReLU;
* :class:`XceptionBlock` — the reference's ``Shuffle_Xception``: main branch three times
  (3x3 depthwise -> BN -> 1x1 conv -> BN -> ReLU), the first depthwise carrying the stride.

Both come in the reference's two forms. *Split form* (stride 1, input width = output width):
:func:`channel_split` sends the even input channels to the identity half and the odd ones to the
main branch (the reference's ``channel_shuffle``: together with the concatenation this is
ShuffleNetV2's channel split + channel shuffle); the output is ``cat(identity half, main(odd
half))``. *Two-branch form* (the first block of a stage): the whole input goes through both the
projection branch (kxk depthwise (stride) -> BN -> 1x1 conv -> BN -> ReLU; 3x3 for Xception)
and the main branch, whose output widths are ``in`` and ``out - in``. The reference uses the
two-branch form exactly when the stride is 2; here it is chosen by ``project`` so that a stage's
first block can widen the channels at stride 1 (the CIFAR preset of
:mod:`nasforge.spaces.shufflenet`).

Channel search (SPOS Section 3.4): the ``mid`` channels of the main branch are allocated at the
largest width; a forward pass given a :class:`Sliced` input ``(x, mid)`` uses only the first
``mid`` of them: the first 1x1 conv's first ``mid`` filters, the depthwise convs' first ``mid``
channels and BN entries, the following 1x1 convs' first ``mid`` input channels. So every width
shares the weights of the widest one, and the gradient of every weight outside the slice is
exactly zero. A plain tensor input uses the whole allocated width. Carrying the width with the
input (rather than as a module attribute) keeps the block stateless and lets
:class:`~nasforge.nn.choice.Choice` call its candidates unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nasforge.errors import ConfigError


class Sliced(NamedTuple):
    """A block input with the number of main-branch ``mid`` channels to use (the first ``mid``)."""

    x: torch.Tensor
    mid: int


def channel_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(even channels, odd channels) of ``x``: the reference's ``channel_shuffle`` of SPOS.

    The reference reshapes ``[N, C, H, W]`` to ``[N * C / 2, 2, H * W]``, swaps the first two
    axes and takes the two halves: that is exactly the even and the odd channels.
    """
    return x[:, 0::2], x[:, 1::2]


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, *, depthwise: bool = False,
    relu: bool = True, affine: bool = True,
) -> nn.Sequential:
    """Conv (no bias, padding ``k // 2``) -> BN -> optional ReLU (the reference's layer triple).

    ``affine=False`` gives the reference supernet's BN without scale and shift.
    """
    groups = in_channels if depthwise else 1
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels, affine=affine),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


def _batch_norm_slice(bn: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn`` applied to the first ``x.shape[1]`` of its channels (as ``_BatchNorm.forward`` runs).

    The running statistics of the slice are updated in place (they are views of the buffers);
    the momentum rule, ``momentum=None`` (cumulative average) included, is torch's.
    """
    n = x.shape[1]
    factor = 0.0
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    mean: torch.Tensor | None = None
    var: torch.Tensor | None = None
    if bn.running_mean is not None and bn.running_var is not None and (not bn.training or bn.track_running_stats):
        mean, var = bn.running_mean[:n], bn.running_var[:n]
    return F.batch_norm(
        x, mean, var, bn.weight[:n] if bn.weight is not None else None, bn.bias[:n] if bn.bias is not None else None,
        bn.training or bn.running_mean is None, factor, bn.eps,
    )


def run_layer(layer: nn.Module, x: torch.Tensor, out_channels: int | None = None) -> torch.Tensor:
    """``layer`` (from :func:`conv_bn`) on ``x``, sliced to ``x``'s channels and ``out_channels``.

    A depthwise conv uses its first ``x.shape[1]`` channels; a dense conv its first
    ``out_channels`` filters (all when ``None``) over its first ``x.shape[1]`` input channels.
    At the full width this is exactly ``layer(x)``.
    """
    conv, bn, *rest = layer.children()
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, _BatchNorm):
        raise TypeError(f"run_layer needs a conv_bn layer (Conv2d, BatchNorm2d[, ReLU]), got {layer}")
    c_in = x.shape[1]
    depthwise = conv.groups > 1
    c_out = c_in if depthwise else (conv.out_channels if out_channels is None else out_channels)
    if c_in == conv.in_channels and c_out == conv.out_channels:
        return layer(x)
    weight = conv.weight[:c_in] if depthwise else conv.weight[:c_out, :c_in]
    y = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, c_in if depthwise else 1)
    y = _batch_norm_slice(bn, y)
    for module in rest:
        y = module(y)
    return y


class _TwoBranchBlock(nn.Module):
    """The shared frame of both blocks: split form or two-branch form, optional slicing."""

    main: nn.ModuleList
    proj: nn.Sequential | None

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, stride: int, project: bool) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"stride must be 1 or 2, got {stride!r}")
        if not project and (stride != 1 or in_channels != out_channels or in_channels % 2):
            raise ConfigError(
                f"the split form needs stride 1 and an even width kept ({in_channels} -> {out_channels}, "
                f"stride {stride}); use project=True"
            )
        if mid_channels < 1:
            raise ConfigError(f"mid_channels must be >= 1, got {mid_channels}")
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid_channels
        self.stride, self.project = stride, project
        # the main branch sees half of the input in the split form, all of it in the two-branch form
        self.branch_in = in_channels if project else in_channels // 2
        self.branch_out = out_channels - self.branch_in
        if self.branch_out < 1:
            raise ConfigError(f"out_channels ({out_channels}) must exceed the projected {self.branch_in} channels")

    def forward(self, inp: torch.Tensor | Sliced) -> torch.Tensor:
        x, mid = (inp.x, inp.mid) if isinstance(inp, Sliced) else (inp, self.mid_channels)
        if not 1 <= mid <= self.mid_channels:
            raise ConfigError(f"mid channels {mid} outside 1..{self.mid_channels} (the allocated width)")
        if self.proj is None:
            keep, x_main = channel_split(x)
            return torch.cat((keep, self._main(x_main, mid)), 1)
        x_proj = run_layer(self.proj[1], run_layer(self.proj[0], x))
        return torch.cat((x_proj, self._main(x, mid)), 1)

    def _main(self, x: torch.Tensor, mid: int) -> torch.Tensor:
        raise NotImplementedError


def _projection(in_channels: int, kernel_size: int, stride: int, affine: bool) -> nn.Sequential:
    """The two-branch form's projection: kxk depthwise (stride) -> BN -> 1x1 conv -> BN -> ReLU."""
    return nn.Sequential(
        conv_bn(in_channels, in_channels, kernel_size, stride, depthwise=True, relu=False, affine=affine),
        conv_bn(in_channels, in_channels, 1, affine=affine),
    )


class ShuffleBlock(_TwoBranchBlock):
    """ShuffleNetV2 block with a ``kernel_size`` depthwise conv (the reference's ``Shufflenet``).

    Args:
        in_channels: input width of the block (the whole tensor).
        out_channels: output width.
        mid_channels: main-branch width (the largest one when channels are sliced).
        kernel_size: 3, 5 or 7 (also the projection's depthwise kernel, as the reference).
        stride: 1 or 2 (the main branch's depthwise conv and the projection carry it).
        project: the two-branch form (the first block of a stage); else the split form.
        affine: BN with scale and shift (the reference's supernet has none).
    """

    def __init__(
        self, in_channels: int, out_channels: int, mid_channels: int, *, kernel_size: int, stride: int = 1,
        project: bool = False, affine: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, mid_channels, stride, project)
        if kernel_size not in (3, 5, 7):
            raise ConfigError(f"kernel_size must be 3, 5 or 7, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.main = nn.ModuleList([
            conv_bn(self.branch_in, mid_channels, 1, affine=affine),
            conv_bn(mid_channels, mid_channels, kernel_size, stride, depthwise=True, relu=False, affine=affine),
            conv_bn(mid_channels, self.branch_out, 1, affine=affine),
        ])
        self.proj = _projection(in_channels, kernel_size, stride, affine) if project else None

    def _main(self, x: torch.Tensor, mid: int) -> torch.Tensor:
        pw1, dw, pw2 = self.main
        return run_layer(pw2, run_layer(dw, run_layer(pw1, x, mid)))


class XceptionBlock(_TwoBranchBlock):
    """ShuffleNetV2 Xception block (the reference's ``Shuffle_Xception``): three 3x3 depthwise convs.

    Arguments as :class:`ShuffleBlock` (the kernel is always 3).
    """

    def __init__(
        self, in_channels: int, out_channels: int, mid_channels: int, *, stride: int = 1, project: bool = False,
        affine: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, mid_channels, stride, project)
        self.kernel_size = 3
        c, m = self.branch_in, mid_channels
        self.main = nn.ModuleList([
            conv_bn(c, c, 3, stride, depthwise=True, relu=False, affine=affine),
            conv_bn(c, m, 1, affine=affine),
            conv_bn(m, m, 3, depthwise=True, relu=False, affine=affine),
            conv_bn(m, m, 1, affine=affine),
            conv_bn(m, m, 3, depthwise=True, relu=False, affine=affine),
            conv_bn(m, self.branch_out, 1, affine=affine),
        ])
        self.proj = _projection(in_channels, 3, stride, affine) if project else None

    def _main(self, x: torch.Tensor, mid: int) -> torch.Tensor:
        dw1, pw1, dw2, pw2, dw3, pw3 = self.main
        x = run_layer(pw1, run_layer(dw1, x), mid)
        x = run_layer(pw2, run_layer(dw2, x), mid)
        return run_layer(pw3, run_layer(dw3, x))


def init_spos_weights(net: nn.Module) -> None:
    """The reference's ``_initialize_weights``: convs N(0, 1 / fan-in per group) (N(0, 0.01) for the
    ``first_conv``), BN scale 1 and shift 1e-4, linear layers N(0, 0.01), biases 0."""
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            std = 0.01 if "first" in name else 1.0 / m.weight.shape[1]
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _BatchNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 1e-4)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
