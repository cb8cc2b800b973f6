"""Child processes of benchmark scripts that stop with the script.

:func:`run` is ``subprocess.run(cmd, capture_output=True, text=True, ...)`` for a child started
in its own process group; while it runs, SIGTERM / SIGINT to the script kill that whole group
(torchrun's ranks, a peer library's workers) and then end the script as the signal would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from types import FrameType
from typing import Any


def run(cmd: list[str], *, timeout: float | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    previous: dict[int, Any] = {}

    def stop(signum: int, _frame: FrameType | None) -> None:
        _kill_group(proc)
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, _frame)
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, stop)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
