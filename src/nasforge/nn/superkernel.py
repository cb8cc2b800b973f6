"""The Single-Path NAS superkernel: one MBConv layer whose weights encode every kernel and expansion.

Stamoulis, Ding, Wang, Lymberopoulos, Priyantha, Liu & Marculescu, "Single-Path NAS: Designing
Hardware-Efficient ConvNets in less than 4 Hours", ECML-PKDD 2019 (arXiv:1904.02877); reference
code ``dstamoulis/single-path-nas`` (TensorFlow), ``nas-search/superkernel.py``
(``DepthwiseConv2DMasked``, ``Indicator``).

A :class:`SuperkernelMBConv` is an MBConv (1x1 expand -> BN -> act -> depthwise -> BN -> act ->
1x1 project -> BN, identity shortcut where stride is 1 and the width is kept) built at the
*largest* kernel ``K`` and the *largest* expansion ``E``. The smaller candidates live inside it:

* the ``k x k`` kernel (``k < K``) is the centre of the ``K x K`` depthwise kernel; the outer
  ring ``w_{K\\k}`` is used iff ``||w_{K\\k}|| >= t_kernel``::

      w_k = w_{k x k} + 1(||w_{K\\k}|| - t_kernel) * w_{K\\k}

* expansion ``e < E`` is the first ``e * C_in`` of the ``E * C_in`` expanded channels; the
  second part (channels ``e * C_in .. E * C_in``) is used iff ``||w_k[second]|| >= t_large`` and
  the layer runs at all iff ``||w_k[first]|| >= t_small`` (else it is dropped: ``skip``, only on
  layers that have a shortcut; elsewhere the first part is always used). As in the reference,
  these two norms are taken of ``w_k``, the depthwise kernel *after* the kernel decision.

``1(.)`` is the reference's relaxed indicator (``Indicator`` in ``superkernel.py``): its value is
the hard step ``1(x >= 0)`` and its gradient that of ``sigmoid(x)`` (straight-through:
``stop_gradient(1(x >= 0) - sigmoid(x)) + sigmoid(x)``), so the thresholds and the kernel
weights receive gradients through the norms. The thresholds are trainable parameters
initialised to zero (reference: ``initializer='zeros'``), so a fresh layer is ``ir_kK_eE``.

Norm: the reference uses ``tf.norm`` (the L2 norm, not squared); the paper's equations write the
squared norm. ``squared_norm=False`` (default) follows the reference, ``True`` the paper; both
give the same decision for a correspondingly rescaled threshold.

Deviation from paper and reference, stated explicitly: both apply the channel indicators to the
depthwise *kernel* (``d_small * (w[first] + d_large * w[second])``). A zeroed kernel channel
still passes BN's shift (and its activation) on to the projection, so the masked supernet is not
exactly the smaller network. Here the indicators gate *activations* instead: ``d_large``
multiplies the second part of the depthwise output after BN and activation, and ``d_small``
multiplies the whole residual branch. The decision rule, the indicator relaxation and the
kernel masking of the kernel-size decision are those of the reference; with hard indicators the
layer computes exactly what the stand-alone ``MBConv`` of the selected option computes (with
the weights :meth:`SuperkernelMBConv.standalone_state_dict` extracts), and ``skip`` is exactly
the identity.

Indicator dropout (reference ``nas_utils.build_dropout_rate``): during the search's warm-up the
reference passes every indicator through ``tf.nn.dropout`` with keep probability 0.6 (kept
values are scaled by ``1 / 0.6``); :meth:`SuperkernelMBConv.indicators` does the same with
``keep=0.6`` (``None``: no dropout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasforge.errors import ConfigError
from nasforge.nn.blocks import ConvBNAct


def relaxed_indicator(x: Tensor) -> Tensor:
    """``1(x >= 0)`` in value, ``sigmoid(x)`` in gradient (the reference's ``Indicator``)."""
    soft = torch.sigmoid(x)
    return ((x >= 0).to(x.dtype) - soft).detach() + soft


@dataclass(frozen=True)
class LayerIndicators:
    """The three decisions of one superkernel layer as (relaxed) indicator values (0-d tensors).

    ``kernel``: use the outer ring (the large kernel); ``large``: use the second part of the
    expanded channels (the large expansion); ``small``: run the layer at all (``None`` on layers
    without ``skip``, where it is always 1).
    """

    kernel: Tensor
    large: Tensor
    small: Tensor | None

    def hard(self) -> tuple[bool, bool, bool]:
        """``(kernel, large, small)`` as booleans (the decision the values encode)."""
        small = True if self.small is None else bool(self.small.detach() != 0)
        return bool(self.kernel.detach() != 0), bool(self.large.detach() != 0), small


class SuperkernelMBConv(nn.Module):
    """One searchable MBConv layer of Single-Path NAS (see the module docstring).

    Args:
        in_channels, out_channels, stride: the layer's shape (as :class:`~nasforge.nn.blocks.MBConv`).
        kernels: ``(k, K)``, the small and the large depthwise kernel (odd, ``k < K``).
        expansions: ``(e, E)``, the small and the large expansion ratio (``1 <= e < E``).
        allow_skip: offer ``skip`` (needs stride 1 and ``in_channels == out_channels``).
        activation: a name from :data:`~nasforge.nn.blocks.ACTIVATIONS`.
        squared_norm: decide on squared norms (paper) instead of norms (reference).

    Submodule names (``expand``, ``depthwise``, ``project``) are those of ``MBConv``; the
    thresholds are the parameters ``t_kernel``, ``t_large`` and (with ``allow_skip``) ``t_small``.

    Raises:
        ConfigError: kernels or expansions not ordered as above, or ``skip`` where the layer
            has no shortcut.
    """

    inner_mask: Tensor  # 1 on the centre k x k of the K x K kernel (a buffer)

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, *, kernels: tuple[int, int] = (3, 5),
        expansions: tuple[int, int] = (3, 6), allow_skip: bool = False, activation: str = "relu6",
        squared_norm: bool = False,
    ) -> None:
        super().__init__()
        k, big_k = kernels
        e, big_e = expansions
        if not (0 < k < big_k and k % 2 == 1 and big_k % 2 == 1):
            raise ConfigError(f"superkernel kernels must be two odd sizes (small, large) with small < large, got {kernels!r}")
        if not 1 <= e < big_e:
            raise ConfigError(f"superkernel expansions must be (small, large) with 1 <= small < large, got {expansions!r}")
        if stride not in (1, 2):
            raise ConfigError(f"superkernel stride must be 1 or 2, got {stride!r}")
        self.has_shortcut = stride == 1 and in_channels == out_channels
        if allow_skip and not self.has_shortcut:
            raise ConfigError(
                f"skip needs stride 1 and in == out channels; this layer has stride {stride}, {in_channels} -> {out_channels}"
            )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernels, self.expansions = (k, big_k), (e, big_e)
        self.allow_skip, self.activation, self.squared_norm = allow_skip, activation, squared_norm
        self.hidden, self.hidden_small = in_channels * big_e, in_channels * e
        self.expand = ConvBNAct(in_channels, self.hidden, 1, activation=activation)
        self.depthwise = ConvBNAct(self.hidden, self.hidden, big_k, stride, groups=self.hidden, activation=activation)
        self.project = ConvBNAct(self.hidden, out_channels, 1, activation=None)
        inner = torch.zeros(1, 1, big_k, big_k)
        lo = (big_k - k) // 2
        inner[..., lo:lo + k, lo:lo + k] = 1.0
        self.register_buffer("inner_mask", inner, persistent=False)
        self.t_kernel = nn.Parameter(torch.zeros(()))
        self.t_large = nn.Parameter(torch.zeros(()))
        self.t_small = nn.Parameter(torch.zeros(())) if allow_skip else None

    # ---- the decisions ---------------------------------------------------------------------
    @property
    def depthwise_weight(self) -> Tensor:
        return cast(nn.Conv2d, self.depthwise[0]).weight

    def _norm(self, w: Tensor) -> Tensor:
        sq = (w * w).sum()
        return sq if self.squared_norm else torch.sqrt(sq)

    def _kernel_parts(self) -> tuple[Tensor, Tensor]:
        """``(centre, ring)`` of the depthwise kernel (each the full ``K x K`` shape, the other part zero)."""
        w = self.depthwise_weight
        centre = w * self.inner_mask
        return centre, w - centre

    @torch.no_grad()
    def norms(self, kernel_indicator: Tensor | None = None) -> dict[str, Tensor]:
        """The norms the decisions compare with the thresholds (``kernel``, ``large``, ``small``; no gradient).

        The two channel norms are of ``w_k`` (the kernel after the kernel decision
        ``kernel_indicator``; the hard decision at the current threshold when ``None``).
        """
        centre, ring = self._kernel_parts()
        n_kernel = self._norm(ring)
        if kernel_indicator is None:
            kernel_indicator = relaxed_indicator(n_kernel - self.t_kernel)
        w_k = centre + kernel_indicator * ring
        return {
            "kernel": n_kernel,
            "large": self._norm(w_k[self.hidden_small:]),
            "small": self._norm(w_k[: self.hidden_small]),
        }

    def indicators(self, keep: float | None = None) -> LayerIndicators:
        """The relaxed indicators at the current weights and thresholds.

        Args:
            keep: indicator dropout keep probability (reference warm-up: 0.6); ``None``: none.
                Dropped indicators are 0, kept ones are scaled by ``1 / keep`` (``tf.nn.dropout``).
        """
        def drop(d: Tensor) -> Tensor:
            return d if keep is None else F.dropout(d, p=1.0 - keep, training=True)

        centre, ring = self._kernel_parts()
        d_kernel = drop(relaxed_indicator(self._norm(ring) - self.t_kernel))
        w_k = centre + d_kernel * ring
        d_large = drop(relaxed_indicator(self._norm(w_k[self.hidden_small:]) - self.t_large))
        d_small = None
        if self.t_small is not None:
            d_small = drop(relaxed_indicator(self._norm(w_k[: self.hidden_small]) - self.t_small))
        return LayerIndicators(d_kernel, d_large, d_small)

    def option(self, indicators: LayerIndicators | None = None) -> str:
        """The mobilenet option the (hard) indicators select: ``ir_k{k}_e{e}`` or ``skip``."""
        kernel, large, small = (indicators or self.indicators()).hard()
        if not small:
            return "skip"
        return f"ir_k{self.kernels[1] if kernel else self.kernels[0]}_e{self.expansions[1] if large else self.expansions[0]}"

    def thresholds(self) -> dict[str, float]:
        out = {"kernel": float(self.t_kernel.detach()), "large": float(self.t_large.detach())}
        if self.t_small is not None:
            out["small"] = float(self.t_small.detach())
        return out

    # ---- the network -----------------------------------------------------------------------
    def forward(self, x: Tensor, indicators: LayerIndicators | None = None) -> Tensor:
        """The layer at ``indicators`` (the current hard decisions when ``None``)."""
        ind = indicators if indicators is not None else self.indicators()
        centre, ring = self._kernel_parts()
        w_k = centre + ind.kernel * ring
        conv = cast(nn.Conv2d, self.depthwise[0])
        h = self.expand(x)
        h = F.conv2d(h, w_k, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        for m in list(self.depthwise)[1:]:  # BN, activation
            h = m(h)
        h = torch.cat([h[:, : self.hidden_small], ind.large * h[:, self.hidden_small:]], dim=1)
        y = self.project(h)
        if ind.small is not None:
            y = ind.small * y
        return x + y if self.has_shortcut else y

    def standalone_state_dict(self, option: str) -> dict[str, Tensor]:
        """This layer's weights for ``option`` under the key names of ``MBConv`` (``{}`` for ``skip``).

        The stand-alone ``MBConv(in, out, k, stride, e)`` loading them (strict) computes what this
        layer computes at hard indicators that select ``option``.
        """
        if option == "skip":
            if not self.allow_skip:
                raise ConfigError("this superkernel layer has no skip option")
            return {}
        valid = [f"ir_k{k}_e{e}" for k in self.kernels for e in self.expansions]
        if option not in valid:
            raise ConfigError(f"unknown superkernel option {option!r}; valid: {', '.join(valid)}" +
                              (", skip" if self.allow_skip else ""))
        k = int(option.split("_")[1][1:])
        e = int(option.split("_")[2][1:])
        c = self.in_channels * e
        lo = (self.kernels[1] - k) // 2
        out: dict[str, Tensor] = {}
        for key, value in self.state_dict().items():
            if key.startswith("t_"):
                continue
            part, _, name = key.partition(".")
            v = value.detach()
            if part == "expand" and v.dim() > 0:
                v = v[:c]  # expanded output channels (conv rows, BN entries)
            elif part == "depthwise" and v.dim() > 0:
                v = v[:c]
                if v.dim() == 4:
                    v = v[:, :, lo:lo + k, lo:lo + k]  # the centre k x k
            elif part == "project" and name == "0.weight":
                v = v[:, :c]  # input columns of the projection
            out[key] = v.clone()
        return out
