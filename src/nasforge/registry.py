"""Name -> code registries filled by decorators (timm style): nothing else lives here.

Registered objects are looked up by name with :func:`get`, which raises
:class:`~nasforge.errors.UnknownNameError` naming the valid choices. Modules that register
things are imported lazily by :func:`_load` so ``import nasforge`` stays light.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, TypeVar

from nasforge.errors import UnknownNameError

T = TypeVar("T")

# kind -> name -> object
_REGISTRIES: dict[str, dict[str, Any]] = {"space": {}, "method": {}, "proxy": {}, "dataset": {}}

# kind -> modules that register entries of that kind (imported on first lookup)
_PROVIDERS: dict[str, tuple[str, ...]] = {
    "space": (
        "nasforge.spaces.nb201", "nasforge.spaces.darts", "nasforge.spaces.mobilenet",
        "nasforge.spaces.randwire", "nasforge.spaces.zennas", "nasforge.spaces.shufflenet",
        "nasforge.spaces.mnasnet", "nasforge.spaces.densenas",
    ),
    "method": (
        "nasforge.searchers.*",  # every public module of the package (one file per searcher)
        "nasforge.methods.darts", "nasforge.methods.dso_nas", "nasforge.methods.gdas", "nasforge.methods.smash",
        "nasforge.methods.enas", "nasforge.methods.one_shot", "nasforge.methods.p_darts", "nasforge.methods.pc_darts",
        "nasforge.methods.rsps", "nasforge.methods.snas", "nasforge.methods.spos", "nasforge.methods.fairnas",
        "nasforge.methods.fbnet",
        "nasforge.methods.proxylessnas", "nasforge.methods.single_path_nas", "nasforge.methods.densenas",
        "nasforge.methods.chamnet",
    ),
    "proxy": ("nasforge.evaluators.proxies",),
    "dataset": ("nasforge.data.datasets",),
}


def register(kind: str, name: str | None = None) -> Callable[[T], T]:
    """Decorator: register ``obj`` under ``name`` (default: its ``name`` attribute or __name__)."""

    def deco(obj: T) -> T:
        key = name or getattr(obj, "name", None) or obj.__name__  # type: ignore[attr-defined]
        table = _REGISTRIES.setdefault(kind, {})
        if key in table and table[key] is not obj:
            raise ValueError(f"{kind} {key!r} registered twice")
        table[key] = obj
        return obj

    return deco


def _load(kind: str) -> None:
    for mod in _PROVIDERS.get(kind, ()):
        if mod.endswith(".*"):  # a package: import each module whose name does not start with "_"
            package = importlib.import_module(mod[:-2])
            for info in pkgutil.iter_modules(package.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{mod[:-2]}.{info.name}")
        else:
            importlib.import_module(mod)


def get(kind: str, name: str) -> Any:
    """Return the object registered as ``name`` of ``kind`` or raise UnknownNameError."""
    _load(kind)
    table = _REGISTRIES.get(kind, {})
    if name not in table:
        raise UnknownNameError(kind, name, sorted(table))
    return table[name]


def names(kind: str) -> list[str]:
    """Sorted registered names of ``kind``."""
    _load(kind)
    return sorted(_REGISTRIES.get(kind, {}))
