"""Fisher: the diagonal-Fisher channel saliency of activations, summed.

Theis, Korshunova, Tejani & Huszár, "Faster gaze prediction with dense networks and Fisher
pruning", 2018; Turner, Crowley, O'Boyle, Storkey & Gray, "BlockSwap: Fisher-guided Block
Substitution for Network Compression on a Budget", ICLR 2020; as a NAS proxy: Abdelfattah et al.,
"Zero-Cost Proxies for Lightweight NAS", ICLR 2021. Reference implementation:
``mohsaied/zero-cost-nas`` ``foresight/pruners/measures/fisher.py``.

Formula (train mode, BN batch statistics, ``L`` the mean cross-entropy): for every Conv2d /
Linear layer ``l`` with output activation ``a`` (before BN) and ``g = dL/da``, for output channel
``k`` and sample ``n``

    g_nk   = sum over spatial positions of  a_nk * g_nk     (a_nk * g_nk for Linear)
    F_lk   = 0.5 * mean_n  g_nk^2

The reference ("channel" mode) broadcasts each ``F_lk`` to every weight of channel ``k``
(``reshape_elements``) before summing over all weights, so the single number is

    fisher = sum_l sum_k F_lk * (number of weights per output channel of layer l)

which is what is computed here. A layer called several times in one forward contributes once
per call (the reference keeps only the last activation; identical for the networks here,
which call each layer once).

No path from input to output: activations that cannot reach the loss get no gradient and
contribute 0; such a network scores ``0.0``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from nasforge.evaluators.proxies.base import (
    Proxy,
    call,
    cross_entropy,
    functional_state,
    hooks,
    prunable_layers,
    train_mode,
    weight_key,
)
from nasforge.registry import register


class Fisher(Proxy):
    """``fisher(net, inputs, targets)``: needs a labelled minibatch. No options."""

    name = "fisher"
    paper = (
        "Theis et al. 2018, 'Faster gaze prediction with dense networks and Fisher pruning'; "
        "Turner et al., 'BlockSwap', ICLR 2020"
    )
    needs_data = True
    needs_labels = True

    def compute(self, net: nn.Module, inputs: Tensor, targets: Tensor | None, **opts: Any) -> float:
        layers = prunable_layers(net)
        per_channel = {id(m): math.prod(m.weight.shape[1:]) for _, m in layers}
        total = [0.0]

        def on_grad(module: nn.Module, act: Tensor) -> Any:
            def hook(grad: Tensor) -> None:
                with torch.no_grad():
                    prod = act * grad.detach()
                    g_nk = prod.sum(dim=tuple(range(2, prod.dim()))) if prod.dim() > 2 else prod
                    f_k = g_nk.pow(2).mean(0).mul(0.5)
                    total[0] += float(f_k.sum()) * per_channel[id(module)]
            return hook

        def on_forward(module: nn.Module, inp: Any, out: Tensor) -> None:
            if isinstance(out, Tensor) and out.requires_grad:
                # The hook must hold a *detached* view: holding ``out`` itself makes a cycle
                # (tensor -> its hook -> closure -> tensor) that the garbage collector cannot
                # break through autograd's C++ hook table, leaking every activation (~100 MB
                # per NB201 network at batch 64).
                out.register_hook(on_grad(module, out.detach()))

        handles = [m.register_forward_hook(on_forward) for _, m in layers]
        with hooks(handles), train_mode(net):
            keys = {weight_key(n) for n, _ in layers}
            params, buffers = functional_state(net, grad_keys=keys)
            weights = [params[k] for k in sorted(keys) if k in params]
            loss = cross_entropy(call(net, params, buffers, inputs.detach().clone()), targets)
            if not loss.requires_grad or not weights:
                return 0.0
            # the activation hooks fire while the weight gradients are computed
            torch.autograd.grad(loss, weights, allow_unused=True)
        return total[0]


fisher = register("proxy", "fisher")(Fisher())
