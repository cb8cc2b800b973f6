"""Mobile building blocks: MBConv (inverted residual), squeeze-and-excitation, h-swish.

The blocks of the layer-wise mobile spaces (ProxylessNAS, FBNet, MnasNet, Single-Path NAS):

* :class:`MBConv` — the inverted residual with linear bottleneck of MobileNetV2 (Sandler et
  al., CVPR 2018): 1x1 expand -> BN -> act -> depthwise kxk -> BN -> act -> [SE] -> 1x1
  project -> BN, plus the identity shortcut when stride is 1 and the channel count is kept.
  Layout as in ProxylessNAS's ``MBInvertedConvLayer`` (``mit-han-lab/proxylessnas``) and
  timm's ``InvertedResidual`` (``timm/models/_efficientnet_blocks.py``).
* :class:`SqueezeExcite` — channel attention of MnasNet (Tan et al., CVPR 2019) in the
  MobileNetV3 form (Howard et al., ICCV 2019): the reduction width is
  ``make_divisible(expanded_channels * 0.25)``; the gate is a hard sigmoid when the network
  uses h-swish (MobileNetV3) and a plain sigmoid otherwise (MnasNet).
* :class:`HSwish` / :class:`HSigmoid` — ``x * relu6(x + 3) / 6`` and ``relu6(x + 3) / 6``
  (MobileNetV3); computed with ``torch.nn.functional.hardswish`` / ``hardsigmoid``, which are
  exactly these formulas and export to ONNX as single operators.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nasforge.errors import ConfigError

#: Activation names accepted by :func:`make_activation` (MobileNetV2: relu6; MnasNet: relu;
#: MobileNetV3: hswish).
ACTIVATIONS: tuple[str, ...] = ("relu", "relu6", "hswish")

#: Squeeze-and-excitation reduction ratio (relative to the expanded width, MobileNetV3).
SE_RATIO = 0.25


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% down.

    The channel rounding of MobileNetV2 (``_make_divisible`` in the TensorFlow slim and
    torchvision code) that every width multiplier in the mobile spaces goes through.
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # rounding down by more than 10% would shrink the layer too much
        rounded += divisor
    return rounded


class HSwish(nn.Module):
    """h-swish ``x * relu6(x + 3) / 6`` (MobileNetV3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardswish(x)


class HSigmoid(nn.Module):
    """Hard sigmoid ``relu6(x + 3) / 6`` (the MobileNetV3 SE gate)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardsigmoid(x)


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` in :data:`ACTIVATIONS`.

    Raises:
        ConfigError: ``name`` is not one of :data:`ACTIVATIONS`.
    """
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "relu6":
        return nn.ReLU6(inplace=False)
    if name == "hswish":
        return HSwish()
    raise ConfigError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")


class ConvBNAct(nn.Sequential):
    """Conv (no bias, 'same' padding) -> BN -> optional activation.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size; padding is ``kernel_size // 2``.
        stride: convolution stride.
        groups: convolution groups (``in_channels`` for a depthwise conv).
        activation: a name from :data:`ACTIVATIONS`, or ``None`` for a linear layer (the
            MBConv projection is linear, as in MobileNetV2).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
        groups: int = 1, activation: str | None = "relu6",
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation is not None:
            layers.append(make_activation(activation))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> gate -> scale.

    Args:
        channels: channels of the tensor being re-weighted (the expanded width in MBConv).
        reduced: width of the bottleneck (``make_divisible(channels * SE_RATIO)``).
        hard_gate: use the hard sigmoid (MobileNetV3) instead of the sigmoid (MnasNet).
    """

    def __init__(self, channels: int, reduced: int, hard_gate: bool = False) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = nn.ReLU(inplace=False)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate: nn.Module = HSigmoid() if hard_gate else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = self.expand(self.act(self.reduce(s)))
        return x * self.gate(s)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle (Zhang et al., CVPR 2018): ``(N, g*c, H, W)`` -> interleave the ``g`` groups."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2 / ProxylessNAS ``MBConv{e}`` with a kxk depthwise).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size (odd).
        stride: depthwise stride.
        expansion: expansion ratio ``e``; the 1x1 expansion conv is left out when ``e == 1``
            (MobileNetV2's first block, ProxylessNAS ``MBConv1``).
        activation: a name from :data:`ACTIVATIONS`.
        se: insert :class:`SqueezeExcite` after the depthwise conv (MnasNet / MobileNetV3).
        residual: add the identity shortcut; ``None`` means "when ``stride == 1`` and
            ``in_channels == out_channels``". Pass ``False`` to force a plain block.
        groups: groups of the two 1x1 convolutions (FBNet's ``k3_e1_g2`` / ``k5_e1_g2`` blocks,
            Wu et al. CVPR 2019, Table 1). With ``groups > 1`` the 1x1 expansion conv is always
            present (also at ``e == 1``) and its output is channel-shuffled with ``groups``
            groups before the depthwise conv, as the FBNet authors' ``IRFBlock``
            (``facebookresearch/maskrcnn-benchmark`` ``fbnet_builder.py``, ``shuffle_type="mid"``).

    Submodule names (``expand``, ``shuffle``, ``depthwise``, ``se``, ``project``) are stable: the
    mobile supernet relies on them to map its weights onto stand-alone networks.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
        expansion: int = 6, activation: str = "relu6", se: bool = False, residual: bool | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"MBConv kernel_size must be a positive odd integer, got {kernel_size!r}")
        if expansion < 1:
            raise ConfigError(f"MBConv expansion must be >= 1, got {expansion!r}")
        if stride not in (1, 2):
            raise ConfigError(f"MBConv stride must be 1 or 2, got {stride!r}")
        hidden = in_channels * expansion
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or any(
            c % groups for c in (in_channels, hidden, out_channels)
        ):
            raise ConfigError(
                f"MBConv groups must be a positive integer dividing the channels {in_channels} -> {hidden} -> "
                f"{out_channels}, got {groups!r}"
            )
        self.groups = groups
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.expansion = kernel_size, stride, expansion
        can_add = stride == 1 and in_channels == out_channels
        if residual and not can_add:
            raise ConfigError(
                f"MBConv residual needs stride 1 and in == out channels, got stride {stride}, "
                f"{in_channels} -> {out_channels}"
            )
        self.use_residual = can_add if residual is None else residual
        self.expand: nn.Module = (
            ConvBNAct(in_channels, hidden, 1, groups=groups, activation=activation)
            if expansion != 1 or groups > 1 else nn.Identity()
        )
        self.shuffle: nn.Module = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, activation=activation)
        self.se: nn.Module = (
            SqueezeExcite(hidden, make_divisible(hidden * SE_RATIO), hard_gate=activation == "hswish")
            if se else nn.Identity()
        )
        self.project = ConvBNAct(hidden, out_channels, 1, groups=groups, activation=None)  # linear bottleneck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.shuffle(self.expand(x)))))
        return x + y if self.use_residual else y


def init_mobile_weights(net: nn.Module) -> None:
    """MobileNetV2 initialisation (torchvision): He fan-out convs, unit BN, N(0, 0.01) linear."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
