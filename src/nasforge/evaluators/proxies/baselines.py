"""Baseline proxies: parameter count and FLOPs (Abdelfattah et al., ICLR 2021, Table 1 baselines).

Abdelfattah, Mehrotra, Dudziak & Lane, "Zero-Cost Proxies for Lightweight NAS", ICLR 2021
compare every proxy to ``params`` and ``flops`` (reference ``foresight/pruners/measures/plain.py``
and the ``get_model_flops``-style counters); both correlate positively with NB201 accuracy, so
higher is better here too. Counts come from :mod:`nasforge.hardware.cost`:

    params = trainable parameters (auxiliary heads excluded, as ``count_params`` does)
    flops  = FLOPs of one forward pass for one input of ``inputs.shape[1:]`` (FlopCounterMode:
             2 per multiply-accumulate; eval mode)

Both are data-free; a network with no path from input to output still has parameters and
FLOPs (the ``none`` ops add none), so these are finite and positive for every NB201 cell.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from nasforge.evaluators.proxies.base import Proxy, eval_mode
from nasforge.hardware.cost import count_flops, count_params
from nasforge.registry import register


class Params(Proxy):
    """``params(net, inputs)``: the trainable parameter count (inputs unused beyond the checks)."""

    name = "params"
    paper = "Abdelfattah et al., 'Zero-Cost Proxies for Lightweight NAS', ICLR 2021 (baseline)"
    needs_data = False
    needs_labels = False

    def compute(self, net: nn.Module, inputs: Tensor, targets: Tensor | None, **opts: Any) -> float:
        return float(count_params(net))


class Flops(Proxy):
    """``flops(net, inputs)``: forward FLOPs for one input of ``inputs.shape[1:]``."""

    name = "flops"
    paper = "Abdelfattah et al., 'Zero-Cost Proxies for Lightweight NAS', ICLR 2021 (baseline)"
    needs_data = False
    needs_labels = False

    def compute(self, net: nn.Module, inputs: Tensor, targets: Tensor | None, **opts: Any) -> float:
        # count_flops restores only the top-level train flag; eval_mode restores every module's
        with eval_mode(net):
            return float(count_flops(net, tuple(inputs.shape[1:])))


params = register("proxy", "params")(Params())
flops = register("proxy", "flops")(Flops())
