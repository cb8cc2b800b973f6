"""NASWOT: how distinct the ReLU activation patterns of a minibatch are.

Mellor, Turner, Storkey & Crowley, "Neural Architecture Search without Training", ICML 2021.
Reference implementation: ``BayesWatch/nas-without-training`` (the v2 / ICML code,
``score_networks.py``: ``counting_forward_hook`` and ``hooklogdet``).

Formula: for every ReLU unit, ``c = 1[input > 0]`` over a minibatch of N inputs (the binary
code of each input is the concatenation over all ReLU calls). With ``N_A`` the number of ReLU
units, the kernel

    K_H[i, j] = N_A - Hamming(c_i, c_j) = sum_layers ( c_i . c_j + (1 - c_i) . (1 - c_j) )

and ``naswot = log |det K_H|`` (``slogdet``; the sign is ignored as in the reference).

ReLU units: every call of a module whose class name contains ``ReLU`` (the reference's rule:
``'ReLU' in str(type(module))``, so ReLU6/LeakyReLU count, functional ``F.relu`` calls do not)
*that lies on a path to the output*: the reference only counts ReLU modules its backward pass
reached (``visited_backwards``); here one forward pass records the codes and one backward pass
of ``sum(output)`` to the input marks the calls it reaches (the reference runs forward,
backward, then a second forward). The network runs in train mode (BN batch statistics), as the
reference's freshly built networks do. Labels are not used.

No path from input to output: every ReLU sees the same input for every sample, all codes are
equal (or no ReLU is reached), ``K_H`` has rank <= 1 and the score is ``-inf`` (the reference
also gives ``-inf``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nasforge.evaluators.proxies.base import Proxy, ProxyError, call, functional_state, hooks, train_mode
from nasforge.registry import register


def relu_modules(net: nn.Module) -> list[nn.Module]:
    """The modules NASWOT hooks (class name contains ``ReLU``)."""
    return [m for m in net.modules() if "ReLU" in type(m).__name__]


def naswot_kernel(codes: list[Tensor]) -> Tensor:
    """``K_H`` from per-layer binary codes ``[N, units]`` (exposed for tests)."""
    n = codes[0].shape[0]
    K = torch.zeros((n, n), dtype=torch.float64, device=codes[0].device)
    for c in codes:
        c = c.to(torch.float32)  # 0/1 dot products are exact in float32 below 2**24 units a layer
        K += (c @ c.T + (1.0 - c) @ (1.0 - c).T).to(torch.float64)
    return K


class Naswot(Proxy):
    """``naswot(net, inputs)``: needs data, not labels. No options.

    Raises:
        ProxyError: the network has no ReLU module.
    """

    name = "naswot"
    paper = "Mellor et al., 'Neural Architecture Search without Training', ICML 2021"
    needs_data = True
    needs_labels = False

    def compute(self, net: nn.Module, inputs: Tensor, targets: Tensor | None, **opts: Any) -> float:
        relus = relu_modules(net)
        if not relus:
            raise ProxyError(
                f"naswot needs ReLU activations (modules whose class name contains 'ReLU'); "
                f"{type(net).__name__} has none"
            )
        calls: list[tuple[Tensor, list[bool]]] = []  # (binary code, [reached by the backward pass])

        def record(module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
            visited = [False]
            calls.append(((inp[0].detach().flatten(1) > 0), visited))
            if isinstance(out, Tensor) and out.requires_grad:
                out.register_hook(lambda grad: visited.__setitem__(0, True))

        handles = [m.register_forward_hook(record) for m in relus]
        with hooks(handles), train_mode(net):
            params, buffers = functional_state(net, grad_keys=set())
            x = inputs.detach().clone().requires_grad_(True)
            y = call(net, params, buffers, x)
            if y.requires_grad:
                # the reference counts only ReLUs its backward pass reached (visited_backwards)
                torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y), allow_unused=True)
        codes = [code for code, visited in calls if visited[0]]
        if not codes:
            return float("-inf")  # no ReLU between input and output: every code is empty
        _, logabsdet = torch.linalg.slogdet(naswot_kernel(codes))
        return float(logabsdet)


naswot = register("proxy", "naswot")(Naswot())
