"""Zen-score: expressivity of the pre-pooling feature map under a small input perturbation.

Lin, Wang, Sun, Chen, Sun, Qian, Li & Jin, "Zen-NAS: A Zero-Shot NAS for High-Performance Image
Recognition", ICCV 2021. Reference implementation: ``idstcv/ZenNAS``
``ZeroShotProxy/compute_zen_score.py`` (``network_weight_gaussian_init``, ``compute_nas_score``).

Formula, per repeat (network in train mode, so BN normalises with batch statistics):

1. Gaussian re-initialisation (of substitute tensors; the network keeps its own weights):
   every Conv2d / Linear weight ~ N(0, 1), their biases 0, every BatchNorm/GroupNorm weight 1
   and bias 0 (other parameters keep their values);
2. ``x ~ N(0, 1)`` and ``eps ~ N(0, 1)`` of the shape of ``inputs`` (drawn in this order,
   before the weights); ``F(.)`` the feature map before global average pooling;
3. ``Delta = mean_n sum_{c,h,w} |F(x)_n - F(x + alpha * eps)_n|`` with ``alpha = 0.01``;
4. ``zen = log(Delta) + sum over BN layers i of log( sqrt( mean_c sigma_{i,c}^2 ) )``

and the result is the mean over ``repeat`` draws. ``repeat`` defaults to 1, the value the
reference's evolutionary search (``evolution_search.py``) uses; its stand-alone script defaults
to 32.

Pre-GAP features, found in this order:

* a method ``net.forward_pre_gap(x)`` if the network defines one (the reference's
  ``forward_pre_GAP`` protocol);
* else the *input* of the last ``nn.AdaptiveAvgPool2d`` with output size 1 in
  ``net.named_modules()`` order, captured with a forward pre-hook (the rest of the forward is
  skipped). This is ``lastact``'s output for NB201 ``TinyNetwork``, the last cell's output for
  DARTS ``NetworkCIFAR`` (its auxiliary head pools to 2x2, so it is not picked) and the head
  conv's output for ``MobileNet``;
* else the network's output (e.g. a plain ``nn.Sequential`` without global pooling).

Departure from the reference: ``sigma_{i,c}^2`` is the mini-batch variance (unbiased, as
PyTorch stores running variances) of BN layer ``i``'s input on the unperturbed pass, i.e. the
paper's definition and what ``running_var`` would hold with momentum 1. The reference reads
``running_var`` after the two forward passes with the layer's own momentum (0.1 by default),
which, for a freshly built network, blends in the initial value 1 and shifts the score by about
``0.5 * log(0.19)`` per BN layer — an artefact that depends on the number of BN layers. Pass
``bn_stats="running"`` to get the reference's value (running statistics reset to mean 0,
variance 1 in the copies, as in a freshly built network).

Raises ProxyError if the network has no BatchNorm layer (the score's BN correction is
undefined). No path from input to output: ``Delta = 0`` and the score is ``-inf``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from nasforge.errors import ConfigError
from nasforge.evaluators.proxies.base import Params, Proxy, ProxyError, hooks, train_mode
from nasforge.registry import register


class _Stop(Exception):
    """Raised by the feature hook to skip the classifier after the pre-GAP features are captured."""


class _PreGap(nn.Module):
    """Calls ``net.forward_pre_gap`` through ``forward`` so functional_call can run it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net.forward_pre_gap(x)  # type: ignore[operator]
        return out


def global_pool(net: nn.Module) -> nn.Module | None:
    """The last ``AdaptiveAvgPool2d`` with output size 1 (the global pooling), or None."""
    found = None
    for m in net.modules():
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            found = m
    return found


def channel_variance(x: Tensor) -> Tensor:
    """Unbiased per-channel variance (dim 1) in float64, by the two-pass formula.

    The mean is taken in the input's precision and the centred squares are summed with a float64
    accumulator: within 1e-8 (relative) of converting ``x`` to float64 first, and about 3x faster
    on CPU than that or than ``Tensor.var`` over dims (0, 2, 3), whose strided reduction is slow.
    """
    dims = [d for d in range(x.dim()) if d != 1]
    centred = x - x.mean(dim=dims, keepdim=True)
    count = x.numel() // x.shape[1]
    return (centred * centred).sum(dim=dims, dtype=torch.float64) / max(count - 1, 1)


def _gaussian_params(net: nn.Module) -> Params:
    params: Params = {key: p.detach() for key, p in net.named_parameters()}
    for mname, m in net.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            params[prefix + "weight"] = torch.randn_like(m.weight)
            if m.bias is not None:
                params[prefix + "bias"] = torch.zeros_like(m.bias)
        elif isinstance(m, (_BatchNorm, nn.GroupNorm)) and m.weight is not None:
            params[prefix + "weight"] = torch.ones_like(m.weight)
            if m.bias is not None:
                params[prefix + "bias"] = torch.zeros_like(m.bias)
    return params


class Zen(Proxy):
    """``zen(net, inputs)``: data-free; only ``inputs.shape`` (batch included) is used.

    Options:
        repeat: number of random draws averaged (reference search: 1).
        alpha: perturbation size (reference ``mixup_gamma`` 0.01).
        bn_stats: ``"batch"`` (paper, default) or ``"running"`` (reference's running_var).

    Raises:
        ProxyError: the network has no BatchNorm layer.
    """

    name = "zen"
    paper = "Lin et al., 'Zen-NAS: A Zero-Shot NAS for High-Performance Image Recognition', ICCV 2021"
    needs_data = False
    needs_labels = False
    options = {"repeat": 1, "alpha": 0.01, "bn_stats": "batch"}

    def compute(self, net: nn.Module, inputs: Tensor, targets: Tensor | None, **opts: Any) -> float:
        repeat, alpha, bn_stats = int(opts["repeat"]), float(opts["alpha"]), opts["bn_stats"]
        if repeat < 1:
            raise ConfigError(f"zen option repeat must be >= 1, got {repeat!r}")
        if bn_stats not in ("batch", "running"):
            raise ConfigError(f"zen option bn_stats must be one of batch, running; got {bn_stats!r}")
        bns = [(n, m) for n, m in net.named_modules() if isinstance(m, _BatchNorm)]
        if not bns:
            raise ProxyError(
                f"zen needs BatchNorm layers (the score adds their log standard deviations); "
                f"{type(net).__name__} has none"
            )
        scores = [self._once(net, inputs, bns, alpha, bn_stats) for _ in range(repeat)]
        return float(sum(scores) / len(scores))

    def _once(
        self, net: nn.Module, inputs: Tensor, bns: list[tuple[str, _BatchNorm]], alpha: float, bn_stats: str
    ) -> float:
        captured: list[Tensor] = []
        variances: dict[int, Tensor] = {}
        record = [True]  # batch statistics are taken on the unperturbed pass only

        def bn_hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            if record[0]:
                variances[id(module)] = channel_variance(args[0].detach())

        handles = [m.register_forward_pre_hook(bn_hook) for _, m in bns]
        pool = None if hasattr(net, "forward_pre_gap") else global_pool(net)
        if pool is not None:
            def pool_hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
                captured.append(args[0])
                raise _Stop

            handles.append(pool.register_forward_pre_hook(pool_hook))
        runner: nn.Module = _PreGap(net) if hasattr(net, "forward_pre_gap") else net
        prefix = "net." if runner is not net else ""

        with hooks(handles), train_mode(net), torch.no_grad():
            # inputs first, then weights (module order): the draws of x, eps and of the feature
            # extractor's weights do not depend on the classifier behind the pooling
            x = torch.randn(inputs.shape, dtype=inputs.dtype, device=inputs.device)
            eps = torch.randn(inputs.shape, dtype=inputs.dtype, device=inputs.device)
            params = _gaussian_params(net)
            buffers: Params = {key: b.detach().clone() for key, b in net.named_buffers()}
            if bn_stats == "running":
                for name, m in bns:
                    if getattr(m, "running_var", None) is not None:
                        buffers[f"{name}.running_var" if name else "running_var"].fill_(1.0)
                        buffers[f"{name}.running_mean" if name else "running_mean"].zero_()
            state = ({prefix + k: v for k, v in params.items()}, {prefix + k: v for k, v in buffers.items()})

            def features(inp: Tensor) -> Tensor:
                captured.clear()
                try:
                    out = torch.func.functional_call(runner, state, (inp,), strict=False)
                except _Stop:
                    return captured[0]
                return out[0] if isinstance(out, (tuple, list)) else out

            f1 = features(x).to(torch.float64)
            record[0] = False
            f2 = features(x + alpha * eps).to(torch.float64)

        delta = float((f1 - f2).abs().flatten(1).sum(dim=1).mean())
        log_bn = 0.0
        for name, m in bns:
            if bn_stats == "running":
                key = f"{name}.running_var" if name else "running_var"
                if key not in buffers:
                    continue  # track_running_stats=False: no running variance to read
                var = float(buffers[key].to(torch.float64).mean())
            elif id(m) in variances:
                var = float(variances[id(m)].mean())
            else:
                continue  # a BN layer the forward pass did not reach (e.g. an unused head)
            log_bn += 0.5 * math.log(var) if var > 0 else float("-inf")
        if delta <= 0:
            return float("-inf")
        return math.log(delta) + log_bn
zen = register("proxy", "zen")(Zen())
