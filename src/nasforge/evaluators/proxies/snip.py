"""SNIP: connection sensitivity at initialisation.

Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
ICLR 2019; as a NAS proxy: Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021.
Reference implementation: ``mohsaied/zero-cost-nas`` ``foresight/pruners/measures/snip.py``.

Formula: the reference multiplies every Conv2d/Linear weight by a mask ``c = 1`` and takes
``|dL/dc|`` at ``c = 1``, which equals ``|theta * dL/dtheta|``; with ``L`` the mean cross-entropy
of the minibatch (network in train mode, so BN uses batch statistics),

    snip = sum over the weights theta of every Conv2d / Linear layer of  |theta * dL/dtheta|

(the reference's per-weight scores summed, as its ``find_measures`` does). The gradient is taken
with respect to the weights directly instead of through a mask: the same numbers, and the
network's ``forward`` methods are not replaced.

No path from input to output: the weights on dead paths get zero gradient; a network whose
loss does not depend on any weight scores ``0.0``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nasforge.evaluators.proxies.base import (
    Proxy,
    call,
    cross_entropy,
    functional_state,
    prunable_layers,
    train_mode,
    weight_key,
)
from nasforge.registry import register


def weight_gradients(
    net: nn.Module, inputs: Tensor, targets: Tensor | None
) -> list[tuple[Tensor, Tensor | None]]:
    """``(theta, dL/dtheta)`` for every Conv2d/Linear weight; L is the mean cross-entropy.

    Runs in train mode on substitute tensors (``base.functional_state``): the network is unchanged.
    The gradient is ``None`` where the loss does not depend on the weight.
    """
    with train_mode(net):
        keys = [weight_key(n) for n, _ in prunable_layers(net)]
        params, buffers = functional_state(net, grad_keys=set(keys))
        weights = [params[k] for k in keys if k in params]
        loss = cross_entropy(call(net, params, buffers, inputs.detach().clone()), targets)
        if not loss.requires_grad or not weights:
            return [(w, None) for w in weights]
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
    return list(zip(weights, grads, strict=True))


class Snip(Proxy):
    """``snip(net, inputs, targets)``: needs a labelled minibatch. No options."""

    name = "snip"
    paper = "Lee et al., 'SNIP: Single-shot Network Pruning based on Connection Sensitivity', ICLR 2019"
    needs_data = True
    needs_labels = True

    def compute(self, net: nn.Module, inputs: Tensor, targets: Tensor | None, **opts: Any) -> float:
        total = 0.0
        pairs = weight_gradients(net, inputs, targets)  # outside no_grad: it differentiates
        with torch.no_grad():
            for w, g in pairs:
                if g is not None:
                    total += float(torch.sum(torch.abs(w * g)))
        return total


snip = register("proxy", "snip")(Snip())
