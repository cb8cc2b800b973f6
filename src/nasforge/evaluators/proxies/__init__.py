"""Zero-cost proxies: score an untrained network from one minibatch (or none) in one pass.

Each proxy is a :class:`~nasforge.evaluators.proxies.base.Proxy` instance registered under kind
``"proxy"``; get one with ``nasforge.get_proxy(name)`` and call it::

    score = nasforge.get_proxy("synflow")(net, inputs, targets=None, seed=0)

Registered names: ``zen``, ``synflow``, ``naswot``, ``snip``, ``grasp``, ``fisher``, ``jacob_cov``,
``grad_norm``, ``params``, ``flops``. Every proxy leaves the network exactly as it was (weights,
buffers, modes, ``requires_grad``), is deterministic under ``seed`` and restores the global RNG.
"""

from __future__ import annotations

from nasforge.evaluators.proxies import (  # noqa: F401  (imported so they register)
    baselines,
    fisher,
    grad_norm,
    grasp,
    jacob_cov,
    naswot,
    snip,
    synflow,
    zen,
)
from nasforge.evaluators.proxies.base import Proxy, ProxyError

__all__ = ["Proxy", "ProxyError"]
