"""Gradient norm: the summed per-layer L2 norms of the loss gradient at initialisation.

Abdelfattah, Mehrotra, Dudziak & Lane, "Zero-Cost Proxies for Lightweight NAS", ICLR 2021
(the ``grad_norm`` baseline). Reference implementation: ``mohsaied/zero-cost-nas``
``foresight/pruners/measures/grad_norm.py``.

Formula: with ``L`` the mean cross-entropy of the minibatch (train mode, BN batch statistics),

    grad_norm = sum over Conv2d / Linear layers l of  || dL/dW_l ||_2

(the reference returns one Frobenius norm per layer weight and ``find_measures`` sums them).

No path from input to output: layers whose weight gets no gradient contribute 0 (the
reference's ``zeros_like``), so such a network scores ``0.0``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nasforge.evaluators.proxies.base import Proxy
from nasforge.evaluators.proxies.snip import weight_gradients
from nasforge.registry import register


class GradNorm(Proxy):
    """``grad_norm(net, inputs, targets)``: needs a labelled minibatch. No options."""

    name = "grad_norm"
    paper = "Abdelfattah et al., 'Zero-Cost Proxies for Lightweight NAS', ICLR 2021 (grad_norm)"
    needs_data = True
    needs_labels = True

    def compute(self, net: nn.Module, inputs: Tensor, targets: Tensor | None, **opts: Any) -> float:
        total = 0.0
        pairs = weight_gradients(net, inputs, targets)  # outside no_grad: it differentiates
        with torch.no_grad():
            for _, g in pairs:
                if g is not None:
                    total += float(torch.linalg.vector_norm(g))
        return total


grad_norm = register("proxy", "grad_norm")(GradNorm())
