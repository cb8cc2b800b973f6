"""SynFlow: synaptic saliency of a linearised network, data-free.

Tanaka, Kunin, Yamins & Ganguli, "Pruning neural networks without any data by iteratively
conserving synaptic flow", NeurIPS 2020; used as a NAS proxy by Abdelfattah, Mehrotra, Dudziak &
Lane, "Zero-Cost Proxies for Lightweight NAS", ICLR 2021. Reference implementation:
``mohsaied/zero-cost-nas`` (``SamsungLabs/zero-cost-nas``), ``foresight/pruners/measures/synflow.py``.

Formula: replace every parameter by its absolute value (the network becomes a positive,
"linearised" function), feed a single all-ones input ``1`` of the input's shape in double
precision, and let ``R = sum(f_{|theta|}(1))``. Then

    synflow = sum over the weights theta of every Conv2d / Linear layer of  |theta * dR/dtheta|

(biases and BN parameters are not scored, as in the reference's ``get_layer_metric_array``).

BatchNorm: the reference registers ``synflow`` with ``bn=False``, i.e. it scores a copy of the
network rebuilt *without* BatchNorm layers (``get_prunable_copy(bn=False)``, NB201's
``nasbench2`` model takes ``use_bn``); ``synflow_bn`` keeps BN. Here every BatchNorm module is
swapped for an identity while scoring (``bn=False``, the default) and put back afterwards; with
``bn=True`` BN stays, in train mode as in the reference's copies.

How the network is left unchanged: no sign saving/restoring is needed because the network's
own tensors are never written — ``|theta|`` in float64 are fresh tensors passed through
:func:`torch.func.functional_call` (see ``base.py``). This is also cheaper than the reference's
in-place ``abs_`` + ``mul_(sign)`` round trip over every state-dict entry.

Departure: with ``bn=False`` the network is run in eval mode (the reference leaves its copy in
train mode). Without BN this only changes dropout-like layers, which then do not make the score
random.

Networks whose output does not depend on any weight through a path from the input (an NB201
cell whose every route contains ``none``): every path to the output carries a zero, the
gradient of every weight that lies on a path is zero, and the score is exactly ``0.0``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from nasforge.evaluators.proxies.base import (
    Params,
    Proxy,
    call,
    eval_mode,
    prunable_layers,
    swapped_modules,
    train_mode,
    weight_key,
)
from nasforge.registry import register


class Synflow(Proxy):
    """``synflow(net, inputs)``: data-free; only ``inputs.shape[1:]`` is used.

    Options:
        bn: keep BatchNorm (the reference's ``synflow_bn``); default False (``synflow``).
    """

    name = "synflow"
    paper = (
        "Tanaka et al., 'Pruning neural networks without any data by iteratively conserving synaptic "
        "flow', NeurIPS 2020; Abdelfattah et al., 'Zero-Cost Proxies for Lightweight NAS', ICLR 2021"
    )
    needs_data = False
    needs_labels = False
    options = {"bn": False}

    def compute(self, net: nn.Module, inputs: Tensor, targets: Tensor | None, **opts: Any) -> float:
        keep_bn = bool(opts["bn"])
        mode = train_mode(net) if keep_bn else eval_mode(net)
        with mode, swapped_modules(
            net, lambda m: not keep_bn and isinstance(m, _BatchNorm), lambda m: nn.Identity()
        ):
            weight_keys = {weight_key(n) for n, _ in prunable_layers(net)}
            with torch.no_grad():
                named = list(net.named_parameters())
                # copy=True: a float64 parameter must not be abs'ed in place
                values = [p.detach().to(torch.float64, copy=True) for _, p in named]
                torch._foreach_abs_(values)
                params: Params = {k: v for (k, _), v in zip(named, values, strict=True)}
                buffers: Params = {
                    k: b.detach().to(torch.float64, copy=True) if b.is_floating_point() else b.detach().clone()
                    for k, b in net.named_buffers()
                }
            weights = [v for (k, _), v in zip(named, values, strict=True) if k in weight_keys]
            for w in weights:
                w.requires_grad_(True)
            x = torch.ones((1, *inputs.shape[1:]), dtype=torch.float64, device=inputs.device)
            total = call(net, params, buffers, x).sum()
            if not total.requires_grad or not weights:
                return 0.0
            grads = torch.autograd.grad(total, weights, allow_unused=True)
            pairs = [(w, g) for w, g in zip(weights, grads, strict=True) if g is not None]
            if not pairs:
                return 0.0
            with torch.no_grad():
                prods = torch._foreach_mul([w for w, _ in pairs], [g for _, g in pairs])
                torch._foreach_abs_(prods)
                score = torch.stack([t.sum() for t in prods]).sum()
        return float(score)


synflow = register("proxy", "synflow")(Synflow())
