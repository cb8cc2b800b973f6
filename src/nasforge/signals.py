"""SIGTERM as a stop request that a swallowed ``KeyboardInterrupt`` cannot lose.

Search processes and their worker processes turn SIGTERM into ``KeyboardInterrupt``
(:func:`raise_interrupt`), so that the running trial is recorded as interrupted and the run
resumes later. Python runs a signal handler between two bytecodes of the main thread, and that
may be inside a weakref callback or a ``__del__`` that the garbage collector is running, where an
exception cannot propagate: Python prints ``Exception ignored in ...`` and carries on. The stop
was then lost: a search whose parent got SIGTERM at such a moment ran all its remaining trials
(``tests/test_workers.py``, about one run in three on 2026-12-07). So the handler also records
the request, and the loops call :func:`check_stop` at safe points (before each trial, at each
training step), which raises ``KeyboardInterrupt`` again while a request is pending.
"""

from __future__ import annotations

import threading
from types import FrameType

_requested = threading.Event()


def raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    """A signal handler: record a stop request and raise ``KeyboardInterrupt``."""
    _requested.set()
    raise KeyboardInterrupt


def check_stop() -> None:
    """Raise ``KeyboardInterrupt`` if a stop was requested (the first raise may have been swallowed)."""
    if _requested.is_set():
        raise KeyboardInterrupt


def stop_requested() -> bool:
    return _requested.is_set()


def clear_stop() -> None:
    """Forget a handled stop request (a new search in the same process starts without one)."""
    _requested.clear()
