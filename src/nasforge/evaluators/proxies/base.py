"""Shared machinery of the zero-cost proxies: the :class:`Proxy` base, stateless evaluation, errors.

Every proxy is an instance of a :class:`Proxy` subclass registered under kind ``"proxy"``;
``nasforge.get_proxy(name)`` returns that instance, and calling it scores a network::

    score = proxy(net, inputs, targets=None, *, seed=0, **opts) -> float

Attributes every proxy carries: ``name``, ``paper``, ``needs_data`` (False: only the shape of
``inputs`` matters), ``needs_labels``, ``higher_is_better`` (always True) and ``options`` (the
keyword options it accepts with their defaults; anything else raises :class:`ConfigError`).

How the network is left untouched: proxies never write to the network's tensors. They run it
with :func:`torch.func.functional_call` on *substitute* tensors — detached (or replaced, e.g.
``|theta|`` or Gaussian draws) parameters and *cloned* buffers — so BatchNorm running
statistics are updated on the clones only, gradients are taken with
:func:`torch.autograd.grad` (no ``.grad`` field is written), and ``requires_grad`` of the real
parameters is never changed. The only things changed temporarily are module train/eval flags,
forward hooks and (synflow) BatchNorm modules swapped for identities; all are restored in
``finally`` blocks. This avoids a ``copy.deepcopy`` of the network per call, which matters when a
proxy scores all 15,625 NAS-Bench-201 cells.

Randomness: the call runs inside :func:`torch.random.fork_rng` seeded with ``seed``, so the score
depends only on ``(net, inputs, targets, seed, opts)`` and the global RNG state is the same
afterwards as before.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasforge.errors import ConfigError, NasforgeError

__all__ = [
    "Proxy", "ProxyError", "Params", "prunable_layers", "functional_state", "call", "train_mode",
    "eval_mode", "swapped_modules", "hooks", "weight_key", "cross_entropy", "finite_or",
]

#: Substitute parameters/buffers handed to :func:`torch.func.functional_call`.
Params = dict[str, Tensor]


class ProxyError(NasforgeError, ValueError):
    """A network or input a proxy cannot score (e.g. NASWOT without ReLU, Zen without BatchNorm)."""


class Proxy(abc.ABC):
    """Base of every zero-cost proxy: argument checks, seeding, then :meth:`compute`.

    Subclasses set the class attributes and implement :meth:`compute`; ``__call__`` is the
    public entry point and is the same for all proxies.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    needs_data: ClassVar[bool]
    needs_labels: ClassVar[bool]
    higher_is_better: ClassVar[bool] = True
    #: accepted keyword options and their defaults
    options: ClassVar[Mapping[str, Any]] = {}

    def __call__(
        self, net: nn.Module, inputs: Tensor, targets: Tensor | None = None, *, seed: int = 0, **opts: Any
    ) -> float:
        """Score ``net`` (see the module docstring of the proxy for the formula).

        Args:
            net: the network; ``net(x)`` returns logits (or a tuple whose first item is logits).
            inputs: a minibatch ``[N, ...]``; data-free proxies use only its shape, dtype, device.
            targets: int64 class labels ``[N]``; required when ``needs_labels``.
            seed: seed of every random draw the proxy makes.
            **opts: proxy options (``self.options`` lists them with defaults).

        Returns:
            the score as a Python float (higher is better); ``-inf`` or ``0.0`` for networks whose
            output does not depend on the input, as each proxy documents; never NaN.

        Raises:
            ProxyError: bad inputs/targets, or a network the proxy cannot score.
            ConfigError: an unknown option.
        """
        if not isinstance(net, nn.Module):
            raise ProxyError(f"{self.name}: net must be an nn.Module, got {type(net).__name__}")
        if not isinstance(inputs, Tensor) or inputs.dim() < 2 or inputs.shape[0] < 1:
            shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ProxyError(f"{self.name}: inputs must be a tensor [N, ...] with N >= 1, got {shape}")
        if self.needs_labels:
            if targets is None:
                raise ProxyError(f"{self.name} needs labels: pass targets (int64 class indices of shape [N])")
            if not isinstance(targets, Tensor) or targets.shape != inputs.shape[:1]:
                got = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
                raise ProxyError(f"{self.name}: targets must have shape [{inputs.shape[0]}], got {got}")
        unknown = sorted(set(opts) - set(self.options))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} for proxy {self.name!r}; valid: {', '.join(self.options) or 'none'}"
            )
        merged = {**self.options, **opts}
        devices = [inputs.device.index or 0] if inputs.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            value = float(self.compute(net, inputs, targets, **merged))
        if math.isnan(value):  # a proxy's own edge cases must be handled before this point
            raise ProxyError(f"{self.name} produced NaN on this network; this is a bug in the proxy")
        return value

    @abc.abstractmethod
    def compute(self, net: nn.Module, inputs: Tensor, targets: Tensor | None, **opts: Any) -> float:
        """The proxy's formula; called seeded, with checked arguments and all options filled in."""

    def __repr__(self) -> str:
        return f"<proxy {self.name!r}: {self.paper}>"


# ---- helpers ------------------------------------------------------------------------------------
def prunable_layers(net: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """``(module name, module)`` of every ``nn.Conv2d`` and ``nn.Linear``.

    These are the layers zero-cost-nas (``foresight/pruners/p_utils.get_layer_metric_array``)
    scores; per-weight proxies sum over their ``weight`` tensors only (not biases, not BN).
    """
    return [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def weight_key(module_name: str) -> str:
    """The parameter name of a layer's ``weight`` in ``net.named_parameters()``."""
    return f"{module_name}.weight" if module_name else "weight"


def functional_state(
    net: nn.Module, *, dtype: torch.dtype | None = None, grad_keys: set[str] | None = None,
) -> tuple[Params, Params]:
    """Substitute parameters and buffers that leave ``net``'s own tensors untouched.

    Parameters are detached (no copy unless ``dtype`` changes them); those named in
    ``grad_keys`` (all when None) get ``requires_grad``. Buffers are cloned so BatchNorm in
    train mode updates the clones, not the network's running statistics.
    """
    params: Params = {}
    for key, p in net.named_parameters():
        t = p.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if grad_keys is None or key in grad_keys:
            t.requires_grad_(True)  # a new leaf: the real parameter's flag is not touched
        params[key] = t
    buffers: Params = {}
    for key, b in net.named_buffers():
        t = b.detach().clone()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        buffers[key] = t
    return params, buffers


def call(net: nn.Module, params: Params, buffers: Params, x: Tensor) -> Tensor:
    """``net(x)`` with substitute tensors; the first item when the net returns a tuple (aux heads)."""
    out = torch.func.functional_call(net, (params, buffers), (x,), strict=False)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, Tensor):
        raise ProxyError(f"the network must return a tensor (or a tuple starting with one), got {type(out).__name__}")
    return out


@contextlib.contextmanager
def _mode(net: nn.Module, training: bool) -> Iterator[None]:
    # ``training`` is a plain attribute in the module's __dict__; writing it there directly
    # skips nn.Module.__setattr__ and the recursive ``train()`` (a hot path for synflow on NB201)
    modules = list(net.modules())
    flags = [m.training for m in modules]
    for m in modules:
        m.__dict__["training"] = training
    try:
        yield
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.__dict__["training"] = flag


def train_mode(net: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Every module in train mode (BN uses batch statistics, as zero-cost-nas's copies do); restored after."""
    return _mode(net, True)


def eval_mode(net: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Every module in eval mode; each module's own flag is restored after."""
    return _mode(net, False)


@contextlib.contextmanager
def swapped_modules(
    net: nn.Module, match: Callable[[nn.Module], bool], make: Callable[[nn.Module], nn.Module]
) -> Iterator[int]:
    """Temporarily replace every submodule for which ``match`` holds by ``make(module)``.

    Yields how many were replaced; the originals are put back in ``finally`` (same objects, so
    their tensors and flags are untouched).
    """
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(net.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and match(child):
                swaps.append((parent, child_name, child))
    try:
        for parent, child_name, child in swaps:
            parent._modules[child_name] = make(child)
        yield len(swaps)
    finally:
        for parent, child_name, child in swaps:
            parent._modules[child_name] = child


@contextlib.contextmanager
def hooks(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    """Remove the given hook handles on exit (the list may be filled inside the block)."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def cross_entropy(logits: Tensor, targets: Tensor | None) -> Tensor:
    """The loss zero-cost-nas uses for its gradient proxies (``nn.CrossEntropyLoss``, mean)."""
    if targets is None:  # guarded by Proxy.__call__ for proxies that need labels
        raise ProxyError("this proxy needs targets")
    if logits.dim() != 2:
        raise ProxyError(f"the network must output logits [N, classes], got shape {tuple(logits.shape)}")
    n_cls = logits.shape[1]
    t = targets.to(device=logits.device, dtype=torch.long)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_cls):
        raise ProxyError(f"targets must be class indices in 0..{n_cls - 1}, got range {int(t.min())}..{int(t.max())}")
    return F.cross_entropy(logits, t)


def finite_or(value: float, fallback: float) -> float:
    """``value`` unless it is NaN, else ``fallback`` (documented per proxy)."""
    return fallback if math.isnan(value) else value
