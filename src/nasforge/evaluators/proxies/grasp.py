"""GraSP: gradient signal preservation, ``-theta * (H g)`` summed.

Wang, Zhang & Grosse, "Picking Winning Tickets Before Training by Preserving Gradient Flow",
ICLR 2020; as a NAS proxy: Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021.
Reference implementation: ``mohsaied/zero-cost-nas`` ``foresight/pruners/measures/grasp.py``.

Formula (reference settings ``T = 1``, ``num_iters = 1``; train mode, BN batch statistics): let
``W`` be the Conv2d / Linear weights and ``L(W) = CE(f_W(x) / T, y)``.

1. ``g = dL/dW`` (summed over ``num_iters`` passes, detached);
2. ``z = sum_l <g_l, dL/dW_l>`` with the second gradient kept differentiable, so
   ``dz/dW = H g`` (Hessian-gradient product);
3. ``grasp = sum over all weights of  -theta * (H g)``.

The score is a signed sum (the reference sums the signed per-weight values too), and larger
is better as in zero-cost-nas's NB201 correlations.

No path from input to output: no weight gets a gradient, ``z`` does not depend on the weights,
and the score is ``0.0`` (the reference would fail on ``z.backward()`` there).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nasforge.errors import ConfigError
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


class Grasp(Proxy):
    """``grasp(net, inputs, targets)``: needs a labelled minibatch.

    Options:
        T: softmax temperature (reference 1).
        num_iters: passes accumulated into ``g`` (reference 1).
    """

    name = "grasp"
    paper = "Wang et al., 'Picking Winning Tickets Before Training by Preserving Gradient Flow', ICLR 2020"
    needs_data = True
    needs_labels = True
    options = {"T": 1.0, "num_iters": 1}

    def compute(self, net: nn.Module, inputs: Tensor, targets: Tensor | None, **opts: Any) -> float:
        T, num_iters = float(opts["T"]), int(opts["num_iters"])
        if not T > 0 or num_iters < 1:
            raise ConfigError(f"grasp needs T > 0 and num_iters >= 1, got T={T!r}, num_iters={num_iters!r}")
        x = inputs.detach().clone()
        with train_mode(net):
            keys = [weight_key(n) for n, _ in prunable_layers(net)]
            params, buffers = functional_state(net, grad_keys=set(keys))
            weights = [params[k] for k in keys if k in params]
            if not weights:
                return 0.0
            g: list[Tensor | None] = [None] * len(weights)
            for _ in range(num_iters):
                loss = cross_entropy(call(net, params, buffers, x) / T, targets)
                if not loss.requires_grad:
                    return 0.0
                for i, gi in enumerate(torch.autograd.grad(loss, weights, allow_unused=True)):
                    if gi is not None:
                        prev = g[i]
                        g[i] = gi.detach() if prev is None else prev + gi.detach()
            loss = cross_entropy(call(net, params, buffers, x) / T, targets)
            grad_f = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
            terms = [
                (gw * gf).sum() for gw, gf in zip(g, grad_f, strict=True) if gw is not None and gf is not None
            ]
            if not terms:
                return 0.0
            z = torch.stack(terms).sum()
            if not z.requires_grad:
                return 0.0
            hg = torch.autograd.grad(z, weights, allow_unused=True)
        with torch.no_grad():
            return sum(float(torch.sum(-w.detach() * h)) for w, h in zip(weights, hg, strict=True) if h is not None)


grasp = register("proxy", "grasp")(Grasp())
