"""nasforge: neural architecture search on PyTorch.

Public entry points (heavy modules are imported lazily):

* :func:`get_space` — a search space by name (``"nb201"``, ``"darts"``, ``"mobilenet"``).
* :func:`get_proxy` — a zero-cost proxy by name: ``score(net, inputs, targets=None) -> float``.
* :class:`Arch` — one architecture of a space.
"""

from __future__ import annotations

from typing import Any

from nasforge.arch import Arch
from nasforge.errors import NasforgeError

__version__ = "0.1.0"
__all__ = ["Arch", "NasforgeError", "get_proxy", "get_space", "list_proxies", "list_spaces", "__version__"]


def get_space(name: str, **kwargs: Any) -> Any:
    """Return the search space registered as ``name`` built with ``kwargs``.

    Raises:
        UnknownNameError: ``name`` is not a registered space (the message lists them).
    """
    from nasforge import registry

    return registry.get("space", name)(**kwargs)


def list_spaces() -> list[str]:
    from nasforge import registry

    return registry.names("space")


def get_proxy(name: str) -> Any:
    """Return the zero-cost proxy registered as ``name``: ``score(net, inputs, targets=None) -> float``.

    Raises:
        UnknownNameError: ``name`` is not a registered proxy (the message lists them).
    """
    from nasforge import registry

    return registry.get("proxy", name)


def list_proxies() -> list[str]:
    from nasforge import registry

    return registry.names("proxy")
