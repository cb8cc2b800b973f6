"""Extra worker processes of ``nasforge search --workers N`` on one machine.

The parent process is worker 0; :class:`WorkerPool` starts workers 1..N-1 as fresh Python
processes (``python -m nasforge.study.pool``, the config on their standard input, so a storage
password never shows in the process list) that join the same study and leave when the study has
its results. They stay in the parent's process group: a signal to the group reaches every
worker. SIGTERM or Ctrl-C to the parent alone also stops them (SIGTERM, then SIGKILL after
``grace`` seconds); a worker that gets SIGTERM records its running trial as interrupted and
exits, and the trial is evaluated again by a live worker or on resume.
"""

from __future__ import annotations

import importlib
import json
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from nasforge.errors import NasforgeError
from nasforge.signals import raise_interrupt


def child_main() -> int:
    """A worker process: read ``{"target": "module:function", "cfg": {...}, "index": i, "token": t}``
    from stdin, run ``function(cfg, index, token)``."""
    signal.signal(signal.SIGTERM, raise_interrupt)
    job = json.loads(sys.stdin.read())
    module, _, name = str(job["target"]).partition(":")
    if not module.startswith("nasforge."):
        print(f"refusing to run {job['target']!r}: not a nasforge function", file=sys.stderr)
        return 2
    target = getattr(importlib.import_module(module), name)
    index = int(job["index"])
    try:
        target(job["cfg"], index, str(job["token"]))
    except KeyboardInterrupt:
        return 130
    except NasforgeError as e:
        print(f"[worker {index}] error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


class WorkerPool:
    """``n`` processes running ``target(cfg, index, token)`` for index 1..n, for the life of a ``with`` block.

    Args:
        target: ``"module:function"`` of a nasforge function.
        cfg: its first argument (JSON-serialisable).
        n: processes to start.
    """

    def __init__(self, target: str, cfg: dict[str, Any], n: int, *,
                 log: Callable[[str], None] = print, grace: float = 30.0) -> None:
        self.target, self.cfg, self.n, self.log, self.grace = target, cfg, n, log, grace
        self.procs: list[subprocess.Popen[bytes]] = []
        self._previous: Any = None
        self.token = secrets.token_hex(8)  # names this pool's workers (e.g. in readiness marks)

    def __enter__(self) -> WorkerPool:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, raise_interrupt)
        try:
            for i in range(1, self.n + 1):
                p = subprocess.Popen([sys.executable, "-m", "nasforge.study.pool"], stdin=subprocess.PIPE)
                self.procs.append(p)
                assert p.stdin is not None
                p.stdin.write(json.dumps({"target": self.target, "cfg": self.cfg, "index": i, "token": self.token}).encode())
                p.stdin.close()
        except BaseException:
            self.stop()
            self._restore()
            raise
        self.log(f"{self.n + 1} workers on this machine (this process and {self.n} more)")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                for p in self.procs:  # the study is complete: they leave at their next look
                    try:
                        p.wait(self.grace + 60.0)
                    except subprocess.TimeoutExpired:
                        break
            self.stop()
            bad = [(i + 1, p.returncode) for i, p in enumerate(self.procs) if p.returncode not in (0, 130, -15)]
            if bad and exc_type is None:
                self.log(f"worker(s) ended with errors: {', '.join(f'worker {i} exit {c}' for i, c in bad)}")
        finally:
            self._restore()

    def alive(self) -> int:
        """Workers still running."""
        return sum(1 for p in self.procs if p.poll() is None)

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def stop(self) -> None:
        """SIGTERM to the live workers, SIGKILL to those still alive after the grace period."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(self.grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    sys.exit(child_main())
