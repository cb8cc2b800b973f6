"""One lock per study, held by the worker that reads or writes the study's event order.

Workers of a study serialise two short moments: asking the searcher for the next architecture
(and recording it), and telling it a result (and recording that). Evaluations run outside the
lock. Which lock depends on where the study lives:

* **PostgreSQL**: a session-level advisory lock (``pg_advisory_lock``) keyed by the study name,
  held on its own connection. Workers on several machines share it; the server releases it when
  a worker's connection dies, so a killed worker never leaves the study locked.
* **SQLite** (and any other storage): an exclusive ``fcntl`` lock on a file beside the database
  (``study.db.lock``) or in the run directory. Processes of one machine share it; the kernel
  releases it when a process dies. SQLite studies are one-machine studies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if missing); re-entrant within one object."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._depth = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self._depth == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._fd is not None:
                fd, self._fd = self._fd, None
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


class PostgresAdvisoryLock:
    """``pg_advisory_lock(key)`` on a dedicated connection; ``key`` is derived from the study name."""

    def __init__(self, url: str, name: str) -> None:
        import sqlalchemy

        self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        # a signed 64-bit key from the study name (the same on every worker)
        self._key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        self._conn: Any = None
        self._depth = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        import sqlalchemy

        if self._depth == 0:
            if self._conn is None:
                self._conn = self._engine.connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            self._conn.commit()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                self._conn.commit()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._engine.dispose()


def lock_for(url: str, name: str, lock_dir: Path | None) -> FileLock | PostgresAdvisoryLock:
    """The lock of the study ``name`` in the storage ``url`` (see the module docstring)."""
    if url.startswith("postgresql"):
        return PostgresAdvisoryLock(url, name)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        return FileLock(path.with_name(path.name + ".lock"))
    digest = hashlib.sha256(f"{url}\0{name}".encode()).hexdigest()[:16]
    return FileLock((lock_dir or Path(tempfile.gettempdir())) / f".nasforge-study-{digest}.lock")
