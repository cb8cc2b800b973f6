"""Jacobian covariance: how decorrelated the input Jacobians of a minibatch are.

Mellor, Turner, Storkey & Crowley, "Neural Architecture Search without Training", arXiv
2006.04647 v1 (2020; the ICML 2021 version replaced this score by NASWOT, see ``naswot.py``);
as used by Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021. Reference
implementation: ``mohsaied/zero-cost-nas`` ``foresight/pruners/measures/jacob_cov.py``.

Formula (train mode, BN batch statistics): ``J_n = d(sum_c f(x)_{n,c}) / dx_n`` flattened (the
reference backpropagates ``ones_like(output)``), ``Sigma = corrcoef(J)`` (N x N), ``v`` its
eigenvalues, ``k = 1e-5``:

    jacob_cov = -sum_i ( log(v_i + k) + 1 / (v_i + k) )

Departures: eigenvalues come from ``eigvalsh`` (Sigma is symmetric) in float64 and are clipped
at 0, because rounding can make a zero eigenvalue slightly negative and the reference's
``np.linalg.eig`` then gives NaN or complex values.

No path from input to output (or any sample whose Jacobian is constant, so its correlation is
undefined and the reference returns NaN): the score is ``-inf``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nasforge.evaluators.proxies.base import Proxy, call, functional_state, train_mode
from nasforge.registry import register


def jacob_cov_score(jacobians: Tensor, k: float = 1e-5) -> float:
    """The score of per-sample Jacobians ``[N, D]`` (exposed for tests); -inf if a row is constant."""
    j = jacobians.detach().to(torch.float64).flatten(1)
    if j.shape[0] < 2:
        return float("-inf")
    centred = j - j.mean(dim=1, keepdim=True)
    if bool((centred.abs().amax(dim=1) == 0).any()):
        return float("-inf")
    corr = torch.corrcoef(j)
    v = torch.linalg.eigvalsh(corr).clamp_min(0.0)
    return float(-torch.sum(torch.log(v + k) + 1.0 / (v + k)))


class JacobCov(Proxy):
    """``jacob_cov(net, inputs)``: needs data (N >= 2), not labels.

    Options:
        k: the regulariser added to the eigenvalues (reference 1e-5).
    """

    name = "jacob_cov"
    paper = "Mellor et al., 'Neural Architecture Search without Training', arXiv 2006.04647v1, 2020"
    needs_data = True
    needs_labels = False
    options = {"k": 1e-5}

    def compute(self, net: nn.Module, inputs: Tensor, targets: Tensor | None, **opts: Any) -> float:
        with train_mode(net):
            params, buffers = functional_state(net, grad_keys=set())
            x = inputs.detach().clone().requires_grad_(True)
            y = call(net, params, buffers, x)
            if not y.requires_grad:
                return float("-inf")
            (jac,) = torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y), allow_unused=True)
        if jac is None:
            return float("-inf")
        return jacob_cov_score(jac, float(opts["k"]))


jacob_cov = register("proxy", "jacob_cov")(JacobCov())
