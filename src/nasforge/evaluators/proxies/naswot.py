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
reached (``visited_backwards``). Here a forward and backward pass of ``sum(output)`` on the
first two inputs marks which ReLU calls the backward pass reaches (reachability is a property of
the graph, not of the values), then one gradient-free forward pass of the whole batch records
the codes; if the two passes make a different number of ReLU calls (data-dependent control
flow), the whole batch is run with gradients instead. The reference runs forward, backward,
then a second forward, all on the whole batch; the score is the same. The network runs in train
mode (BN batch statistics), as the reference's freshly built networks do. Labels are not used.

Speed: ``(1 - c)(1 - c)^T = U - r_i - r_j + c c^T`` with ``r`` the row sums of ``c`` and ``U``
its number of units, so each layer costs one ``N x U x N`` product instead of two.

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


def _code_gram(c: Tensor) -> Tensor:
    """``c @ c.T`` of a 0/1 code matrix ``[N, units]``, exactly.

    On CPU an int8 matrix product with int32 output (``torch._int_mm``, VNNI) reads the bool
    codes in place and is about 3x faster than converting them to float32 and multiplying.
    torch 2.13's CPU ``_int_mm`` returns wrong values when the inner size is 1 (checked in the
    tests), so narrow layers, other devices and builds without it take the float32 route, which is
    exact below 2**24 units a layer.
    """
    if c.device.type == "cpu" and c.shape[1] >= 16 and hasattr(torch, "_int_mm"):
        i8 = c.to(torch.bool).view(torch.int8)
        return torch._int_mm(i8, i8.T)
    f = c.to(torch.float32)
    return f @ f.T


def naswot_kernel(codes: list[Tensor]) -> Tensor:
    """``K_H`` from per-layer binary codes ``[N, units]`` (exposed for tests)."""
    n = codes[0].shape[0]
    K = torch.zeros((n, n), dtype=torch.float64, device=codes[0].device)
    for c in codes:
        same_on = _code_gram(c.contiguous()).to(torch.float64)  # c_i . c_j, exact integers
        r = same_on.diagonal()  # c_i . c_i = number of active units of input i
        # c_i.c_j + (1 - c_i).(1 - c_j) = 2 c_i.c_j - r_i - r_j + units: integers, exact in float64
        K += 2.0 * same_on - r[:, None] - r[None, :] + float(c.shape[1])
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
        reached = self._reached_calls(net, relus, inputs[:2])
        calls: list[Tensor] = []

        def record(module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
            calls.append(inp[0].detach().flatten(1) > 0)

        handles = [m.register_forward_hook(record) for m in relus]
        with hooks(handles), train_mode(net), torch.no_grad():
            params, buffers = functional_state(net, grad_keys=set())
            call(net, params, buffers, inputs.detach())
        if len(calls) != len(reached):  # control flow depends on the data: mark on the whole batch
            reached = self._reached_calls(net, relus, inputs)
        codes = [code for code, hit in zip(calls, reached, strict=True) if hit]
        if not codes:
            return float("-inf")  # no ReLU between input and output: every code is empty
        _, logabsdet = torch.linalg.slogdet(naswot_kernel(codes))
        return float(logabsdet)

    @staticmethod
    def _reached_calls(net: nn.Module, relus: list[nn.Module], inputs: Tensor) -> list[bool]:
        """For each ReLU call of a forward pass, whether ``d sum(output) / d input`` reaches it."""
        visited: list[list[bool]] = []

        def mark(module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
            flag = [False]
            visited.append(flag)
            if isinstance(out, Tensor) and out.requires_grad:
                out.register_hook(lambda grad: flag.__setitem__(0, True))

        handles = [m.register_forward_hook(mark) for m in relus]
        with hooks(handles), train_mode(net):
            params, buffers = functional_state(net, grad_keys=set())
            x = inputs.detach().clone().requires_grad_(True)
            y = call(net, params, buffers, x)
            if y.requires_grad:
                # the reference counts only ReLUs its backward pass reached (visited_backwards)
                torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y), allow_unused=True)
        return [flag[0] for flag in visited]


naswot = register("proxy", "naswot")(Naswot())
