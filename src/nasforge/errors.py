"""Typed errors. Every one names the bad value and, where there is a finite set, the valid ones.

All derive from :class:`NasforgeError` so the CLI can print a one-line message instead of a
traceback; each also derives from the matching built-in (``ValueError``, ``KeyError``...) so
ordinary ``except ValueError`` code keeps working.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class NasforgeError(Exception):
    """Base of every error nasforge raises on purpose."""


def _choices(valid: Iterable[object]) -> str:
    items = [str(v) for v in valid]
    if len(items) > 12:
        items = items[:12] + [f"... ({len(items) - 12} more)"]
    return ", ".join(items)


class UnknownNameError(NasforgeError, KeyError):
    """A name (space, method, op, proxy, data set...) that is not registered."""

    def __init__(self, kind: str, name: object, valid: Iterable[object]) -> None:
        self.kind, self.name, self.valid = kind, name, list(valid)
        super().__init__(f"unknown {kind} {name!r}; valid: {_choices(self.valid)}")

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0])


class ArchError(NasforgeError, ValueError):
    """An architecture (string, mapping or Arch) that is not a member of the space."""


class BudgetError(NasforgeError, ValueError):
    """A budget (trials, epochs, seconds, constraint) that cannot be met or is not positive."""


class DataError(NasforgeError, ValueError):
    """A data directory or file in the wrong layout, an empty class, a bad split."""


class ConfigError(NasforgeError, ValueError):
    """A bad option or config file value."""


class IncompatibleRunError(NasforgeError, ValueError):
    """A run directory that was created by a different, incompatible configuration."""


class CheckpointError(NasforgeError, ValueError):
    """A checkpoint that is corrupt, from another space/model, or from an incompatible version."""


class StorageError(NasforgeError, OSError):
    """An output file (a checkpoint...) could not be written; the message names the file, the
    operating system's reason and what was left in place. ``errno`` is the original error's."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class StorageFullError(StorageError):
    """A write failed because the disk, a quota or the file-size limit is full (ENOSPC, EDQUOT, EFBIG)."""


def require_positive(name: str, value: float | int) -> None:
    """Raise :class:`BudgetError` unless ``value`` > 0 (used for budgets, epochs, sizes)."""
    if not value > 0:
        raise BudgetError(f"{name} must be > 0, got {value!r}")


def require_choice(kind: str, value: object, valid: Iterable[object]) -> None:
    """Raise :class:`UnknownNameError` unless ``value`` is one of ``valid``."""
    valid = list(valid)
    if value not in valid:
        raise UnknownNameError(kind, value, valid)


def _bound(x: float) -> str:
    return f"{x:g}"


def check_int(name: str, value: object, *, low: int = 1, error: type[NasforgeError] = BudgetError) -> int:
    """``value`` as an int >= ``low``; else ``error`` (default :class:`BudgetError`) naming the option,
    the bad value and the valid range. Bools are rejected (``True`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise error(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_float(
    name: str, value: object, *, low: float = -math.inf, high: float = math.inf,
    low_open: bool = False, high_open: bool = False, error: type[NasforgeError] = ConfigError,
) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (each end closed unless
    ``low_open``/``high_open``; an infinite end is always open); else ``error`` (default
    :class:`ConfigError`) naming the option, the bad value and the interval. Bools, NaN and
    infinities are rejected."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo = "(" if low_open or math.isinf(low) else "["
        hi = ")" if high_open or math.isinf(high) else "]"
        raise error(f"{name} must be a finite number in {lo}{_bound(low)}, {_bound(high)}{hi}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_probability(name: str, value: object, *, low_open: bool = False,
                      error: type[NasforgeError] = ConfigError) -> float:
    """``value`` as a float in ``[0, 1]`` (``(0, 1]`` if ``low_open``); else ``error`` (default
    :class:`ConfigError`), as :func:`check_float`."""
    return check_float(name, value, low=0.0, high=1.0, low_open=low_open, error=error)
