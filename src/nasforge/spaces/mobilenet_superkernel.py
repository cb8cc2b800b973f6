"""The Single-Path NAS superkernel supernet of a :class:`~nasforge.spaces.mobilenet.MobileNetSpace`.

Stamoulis et al., "Single-Path NAS: Designing Hardware-Efficient ConvNets in less than 4 Hours",
ECML-PKDD 2019 (arXiv:1904.02877); reference ``dstamoulis/single-path-nas``
(``nas-search/singlepath_supernet.py``, ``supernet_macro.py``).

Where the ProxylessNAS-style supernet of the space (``MobileNetSpace.supernet``) holds every
candidate of a layer with its own weights, this one holds **one** :class:`SuperkernelMBConv`
per searchable layer: the largest kernel and expansion, whose subsets are the smaller
candidates (see :mod:`nasforge.nn.superkernel`), ``skip`` decided by a threshold on layers that
offer it. Stem, fixed first block and head are the space's (:class:`~nasforge.spaces.mobilenet._Backbone`,
same module names as the stand-alone :class:`~nasforge.spaces.mobilenet.MobileNet`).

The space must search exactly two kernels and two expansions (the paper: kernels 3 and 5,
expansions 3 and 6: ``--space-opt kernels=[3,5] --space-opt expansions=[3,6]``) without
squeeze-and-excitation. :meth:`SuperkernelMobileNet.arch` reads the current decisions as an
Arch of the space and :meth:`SuperkernelMobileNet.subnet_state_dict` gives weights that
``space.build(arch)`` loads strictly, so that the stand-alone network computes exactly what the
superkernel network computes at the current thresholds.

Difference from the reference's macro-architecture: the reference keeps its last layer
(``k3 e6`` to 320 channels) fixed; here every searchable layer of the space is a superkernel,
the 320-channel one included (it has no ``skip``, being the first layer of its stage).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.nn.blocks import init_mobile_weights
from nasforge.nn.superkernel import LayerIndicators, SuperkernelMBConv
from nasforge.spaces.mobilenet import MobileNetSpace, _Backbone

Indicators = dict[str, LayerIndicators]


def check_superkernel_space(space: Any) -> MobileNetSpace:
    """``space`` if it is a mobilenet space a superkernel supernet can encode, else :class:`ConfigError`."""
    if not isinstance(space, MobileNetSpace):
        raise ConfigError(f"the Single-Path NAS superkernel supernet needs the mobilenet space; got "
                          f"{getattr(space, 'name', type(space).__name__)!r}")
    hint = "e.g. --space-opt kernels=[3,5] --space-opt expansions=[3,6] (the paper's)"
    if len(space.kernels) != 2:
        raise ConfigError(f"a superkernel encodes exactly two kernel sizes; the space has kernels={list(space.kernels)}: {hint}")
    if len(space.expansions) != 2:
        raise ConfigError(
            f"a superkernel encodes exactly two expansions; the space has expansions={list(space.expansions)}: {hint}"
        )
    if space.se is not False:
        raise ConfigError(f"the superkernel supernet has no squeeze-and-excitation; the space has se={space.se!r}; valid: se=False")
    return space


class SuperkernelMobileNet(_Backbone):
    """Single-path supernet: the space's backbone with one :class:`SuperkernelMBConv` per searchable layer.

    ``forward(x, indicators)`` runs the network at the given per-layer indicators (as returned
    by :meth:`indicators`, possibly with dropout), or at the current hard decisions when
    ``indicators`` is ``None``.

    Args:
        space: a mobilenet space with two kernels, two expansions and no SE.
        num_classes, in_channels, dropout: as ``space.build``.
        squared_norm: decide on squared norms (paper) instead of norms (reference).
    """

    def __init__(self, space: MobileNetSpace, *, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0,
                 squared_norm: bool = False, **kwargs: Any) -> None:
        check_superkernel_space(space)
        space._check_net_args(num_classes, in_channels, dropout, kwargs)
        super().__init__(space, num_classes, in_channels, dropout)
        self.space = space
        kernels = (min(space.kernels), max(space.kernels))
        expansions = (min(space.expansions), max(space.expansions))
        decisions = space.decisions()
        self.layers = nn.ModuleDict({
            layer.name: SuperkernelMBConv(
                layer.in_channels, layer.out_channels, layer.stride, kernels=kernels, expansions=expansions,
                allow_skip="skip" in decisions[layer.name], activation=space.activation, squared_norm=squared_norm,
            )
            for layer in space.layers
        })
        init_mobile_weights(self)

    def blocks(self) -> dict[str, SuperkernelMBConv]:
        return {name: block for name, block in self.layers.items() if isinstance(block, SuperkernelMBConv)}

    def forward(self, x: Tensor, indicators: Mapping[str, LayerIndicators] | None = None) -> Tensor:
        x = self.first(self.stem(x))
        for name, block in self.blocks().items():
            x = block(x, None if indicators is None else indicators[name])
        return self._classify(x)

    # ---- decisions ---------------------------------------------------------------------------
    def indicators(self, keep: float | None = None) -> Indicators:
        """Per layer, the relaxed indicators at the current weights and thresholds (dropout with ``keep``)."""
        return {name: block.indicators(keep) for name, block in self.blocks().items()}

    def threshold_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name.rsplit(".", 1)[-1].startswith("t_")]

    def thresholds(self) -> dict[str, dict[str, float]]:
        return {name: block.thresholds() for name, block in self.blocks().items()}

    def norms(self) -> dict[str, dict[str, float]]:
        """Per layer, the norms compared with the thresholds (at the current hard kernel decision)."""
        with torch.no_grad():
            return {name: {k: float(v) for k, v in block.norms().items()} for name, block in self.blocks().items()}

    def arch(self, indicators: Mapping[str, LayerIndicators] | None = None) -> Arch:
        """The architecture of the space that the (hard) indicators select."""
        with torch.no_grad():
            ind = indicators if indicators is not None else self.indicators()
            return self.space.make({name: block.option(ind[name]) for name, block in self.blocks().items()})

    # ---- what selected_result and the stand-alone network need ---------------------------------
    def choices(self) -> dict[str, tuple[str, ...]]:
        """The space's decisions (the keys and options a derived architecture has)."""
        return {k: tuple(v) for k, v in self.space.decisions().items()}

    def path_for(self, arch: object) -> dict[str, str]:
        if not isinstance(arch, Arch):
            raise ArchError(f"expected an Arch of space mobilenet, got {type(arch).__name__}")
        self.space.validate(arch)
        return dict(arch.choices)

    def subnet_state_dict(self, arch: Arch | None = None) -> dict[str, Tensor]:
        """Weights of ``arch`` (default: the current decisions) under the key names of ``space.build(arch)``.

        ``space.build(arch).load_state_dict(...)`` (strict) gives the stand-alone network that
        computes what this network computes at hard indicators selecting ``arch``.
        """
        arch = self.arch() if arch is None else arch
        path = self.path_for(arch)
        out: dict[str, Tensor] = {}
        for key, value in self.state_dict().items():
            if not key.startswith("layers."):
                out[key] = value.detach().clone()
        for name, block in self.blocks().items():
            for key, value in block.standalone_state_dict(path[name]).items():
                out[f"layers.{name}.{key}"] = value
        return out
