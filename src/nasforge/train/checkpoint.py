"""Crash-safe checkpoints that load without unpickling code, and RNG snapshots.

A checkpoint is a ``dict`` of tensors and plain values written with :func:`torch.save` and
read back with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects, so
a checkpoint from elsewhere cannot run code.

Guarantees of :func:`save_checkpoint` / :func:`load_checkpoint`:

* **Atomic, two kept.** A write goes to a temporary file in the target directory that is
  fsynced; then the current file becomes the previous one (``search.pt`` ->
  ``search.prev.pt``) and the temporary file becomes the current one, each step an
  :func:`os.replace`. A process killed at any moment leaves at least one complete checkpoint
  (between the two renames only the previous one exists, and it is used).
* **Corruption detected.** After torch's zip payload each file carries a 48-byte integrity
  record (payload length, SHA-256, magic; ``torch.load`` ignores it). On load a truncated,
  overwritten or empty current file is detected, a line names the bad file and the previous
  one that is used instead, and the bad file is moved aside to ``<name>.corrupt``; if both are
  bad, :class:`~nasforge.errors.CheckpointError` names both. Files written before the record
  existed still load (without the checksum).
* **Another run's checkpoint is refused, never skipped.** Every checkpoint carries
  ``state["meta"]`` (format version, architecture, recipe...); a mismatch with what the caller
  expects is an error, not a reason to fall back.
* **Disk full.** A write that fails (ENOSPC, a quota, the file-size limit, any ``OSError``)
  raises :class:`~nasforge.errors.StorageFullError` / :class:`~nasforge.errors.StorageError`
  naming the file; the last good checkpoints are untouched and the temporary file is removed.
  Temporary files of writers that were killed are removed by the next successful write.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import hashlib
import logging
import os
import random
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
import torch
from torch import nn

from nasforge.errors import CheckpointError, StorageError, StorageFullError

#: Version of the checkpoint layout written by :func:`nasforge.train.trainer.train`; bump it
#: when the keys or their meaning change so old files are refused with a clear message.
FORMAT_VERSION = 1

log = logging.getLogger(__name__)

#: The integrity record after the payload: payload length (8 bytes, little endian), the
#: payload's SHA-256 (32 bytes), then this magic (8 bytes).
TRAILER_MAGIC = b"NFCKPT01"
TRAILER_SIZE = 8 + 32 + len(TRAILER_MAGIC)
#: Errors that mean "no room": disk full, quota exceeded, file-size limit (RLIMIT_FSIZE).
_FULL = {errno_codes.ENOSPC, errno_codes.EFBIG} | ({errno_codes.EDQUOT} if hasattr(errno_codes, "EDQUOT") else set())


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it onto ``path``.

    The temporary file lives in the same directory because :func:`os.replace` is atomic only
    within one file system. On any exception the temporary file is removed and ``path`` is
    left as it was; temporary files of ``path`` left by killed writers are removed after success.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp")
    # mkstemp creates owner-only files; checkpoints and exported models are ordinary outputs.
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    remove_stale_temp_files(target)


def _fsync_dir(directory: Path) -> None:
    # The rename itself is only durable once the directory entry is flushed (POSIX); Windows
    # cannot open directories, where this is a no-op.
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def previous_path(path: str | os.PathLike[str]) -> Path:
    """Where the previous good checkpoint of ``path`` is kept: ``search.pt`` -> ``search.prev.pt``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def checkpoint_exists(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` or its previous checkpoint exists (a run killed between the two renames
    of a save has only the previous one, and must resume from it)."""
    return Path(path).is_file() or previous_path(path).is_file()


class _HashingWriter:
    """File wrapper for :func:`torch.save` that hashes and counts what passes through and keeps
    the first ``OSError`` (torch's zip writer turns it into an unrelated ``RuntimeError``)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            n = self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise
        self.sha.update(data)
        self.size += len(data)
        return n

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(
    path: str | os.PathLike[str], state: Mapping[str, Any], *, keep_previous: bool = True
) -> Path:
    """Write ``state`` to ``path`` atomically, keeping the current file as the previous one.

    Steps: write the payload and its integrity record to a temporary file in the same
    directory and fsync it; rename the current ``path`` (if complete) onto
    :func:`previous_path`; rename the temporary file onto ``path``; fsync the directory. See
    the module docstring for what a kill or a full disk leaves behind.

    Args:
        path: target file; parent directories are created.
        state: tensors, numbers, strings, ``None`` and lists/tuples/dicts of those (what
            ``torch.load(weights_only=True)`` accepts).
        keep_previous: keep the replaced file as ``<stem>.prev<suffix>``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        StorageFullError: no space left (ENOSPC), quota (EDQUOT) or file-size limit (EFBIG).
        StorageError: any other ``OSError`` while writing or renaming.
    """
    target = Path(path)
    with _interrupts_deferred():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp")
        except OSError as e:
            raise _storage_error(target, e) from e
        writer: _HashingWriter | None = None
        try:
            with contextlib.suppress(OSError):  # mkstemp makes owner-only files; these are ordinary outputs
                os.chmod(tmp, 0o644)
            with os.fdopen(fd, "wb") as f:
                writer = _HashingWriter(f)
                torch.save(dict(state), writer)  # type: ignore[arg-type]
                f.write(writer.size.to_bytes(8, "little") + writer.sha.digest() + TRAILER_MAGIC)
                f.flush()
                os.fsync(f.fileno())
            if keep_previous and _complete(target):
                os.replace(target, previous_path(target))
            os.replace(tmp, target)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            cause = writer.error if writer is not None and writer.error is not None else e
            if isinstance(cause, OSError):
                raise _storage_error(target, cause) from cause
            raise
        _fsync_dir(target.parent)
        remove_stale_temp_files(target)
    return target


def _storage_error(target: Path, e: OSError) -> StorageError:
    kept = [str(p) for p in (target, previous_path(target)) if p.is_file()]
    left = f"the last good checkpoint(s) {', '.join(kept)} are left in place" if kept else "no earlier checkpoint exists"
    reason = e.strerror or str(e)
    if e.errno in _FULL:
        what = "the file-size limit was reached" if e.errno == errno_codes.EFBIG else "the disk is full"
        return StorageFullError(
            f"cannot write checkpoint {target}: {what} ({reason}); {left}; free space and rerun the same command to resume",
            errno=e.errno,
        )
    return StorageError(f"cannot write checkpoint {target}: {reason}; {left}", errno=e.errno)


def _complete(path: Path) -> bool:
    """Cheap check that ``path`` is a whole checkpoint: its integrity record is present and the
    recorded length matches the file (the checksum itself is only verified on load)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < TRAILER_SIZE:
                return False
            f.seek(size - TRAILER_SIZE)
            trailer = f.read(TRAILER_SIZE)
    except OSError:
        return False
    return trailer.endswith(TRAILER_MAGIC) and int.from_bytes(trailer[:8], "little") == size - TRAILER_SIZE


def remove_stale_temp_files(target: Path) -> None:
    """Remove temporary files of ``target`` whose writer process is gone (killed mid-write)."""
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        pid_text = tmp.name[len(target.name) + 2:].split(".", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else (EPERM); Windows: no signal 0
        return True
    return True


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM back while a checkpoint is written, deliver them after.

    A KeyboardInterrupt raised inside ``torch.save``'s zip writer surfaces as a RuntimeError
    from the writer's clean-up ("unexpected pos ..."), so Ctrl-C at that moment ended the run
    with an unrelated error instead of the resumable interrupt (the file itself was safe: the
    write goes to a temporary file). The handlers are swapped for ones that only record the
    signal (a signal mask would not do: torch's threads may take the signal); afterwards the
    original handlers are back and each recorded signal is raised again. Only the main thread
    can set handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not None:  # None: a handler set outside Python, which cannot be restored
            previous[sig] = signal.signal(sig, lambda s, _frame: pending.append(s))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in pending:
            signal.raise_signal(signum)  # the original handler runs now: KeyboardInterrupt, or exit


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    expect: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
    fallback: bool = True,
    log_fn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    The same as :func:`load_checkpoint_and_source` without the file that was used.
    """
    return load_checkpoint_and_source(path, expect=expect, map_location=map_location, fallback=fallback,
                                      log_fn=log_fn)[0]


def load_checkpoint_and_source(
    path: str | os.PathLike[str],
    *,
    expect: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
    fallback: bool = True,
    log_fn: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Read the newest good checkpoint of ``path``; return it and the file it came from.

    If ``path`` is missing, truncated or corrupt and ``fallback`` is set, the previous
    checkpoint (:func:`previous_path`) is used; a line naming both files goes to ``log_fn``
    (default: this module's logger, level WARNING) and the bad file is renamed to
    ``<name>.corrupt`` so the next save does not keep it as the "previous" one.

    Args:
        path: the checkpoint file.
        expect: entries ``state["meta"]`` must contain with equal values (for example
            ``{"format_version": 1, "arch": "..."}``). A mismatch is an error, never a
            reason to fall back: the file belongs to another run.
        map_location: where tensors are loaded (CPU by default; ``load_state_dict`` copies
            them onto the model's device).
        fallback: use the previous checkpoint when the current one is bad.
        log_fn: where the fallback line goes.

    Raises:
        CheckpointError: no checkpoint exists; the current one is bad and the previous is
            missing or bad too (the message names both and why); the file is not a checkpoint
            dict; or its meta differs from ``expect`` (the message names the key, the file's
            value and the expected one).
    """
    src = Path(path)
    prev = previous_path(src)
    has_prev = fallback and prev.is_file()
    if not src.is_file() and not has_prev:
        raise CheckpointError(f"checkpoint {src} does not exist")
    problem = "is missing (a save was interrupted between its two renames)"
    if src.is_file():
        try:
            state = _read(src, map_location)
        except _BadFile as bad:
            if not has_prev:
                raise CheckpointError(f"checkpoint {src} {bad}") from None
            problem = str(bad)
        else:
            _check_meta(src, state, expect)
            return state, src
    try:
        state = _read(prev, map_location)
    except _BadFile as bad:
        raise CheckpointError(
            f"no good checkpoint: {src} {problem}, and the previous one {prev} {bad}"
        ) from None
    _check_meta(prev, state, expect)
    note = f"checkpoint {src} {problem}; using the previous good checkpoint {prev}"
    if src.is_file():
        with contextlib.suppress(OSError):
            os.replace(src, src.with_name(src.name + ".corrupt"))
            note += f" (the bad file is kept as {src.name}.corrupt)"
    (log_fn or log.warning)(note)
    return state, prev


class _BadFile(Exception):
    """Why a checkpoint file cannot be used (the text follows the file's name)."""


def _read(src: Path, map_location: str | torch.device) -> dict[str, Any]:
    try:
        with open(src, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise _BadFile("is empty (0 bytes)")
            f.seek(max(size - TRAILER_SIZE, 0))
            trailer = f.read(TRAILER_SIZE)
            if size >= TRAILER_SIZE and trailer.endswith(TRAILER_MAGIC):
                length = int.from_bytes(trailer[:8], "little")
                if length != size - TRAILER_SIZE:
                    raise _BadFile(f"is truncated or damaged: its record says {length + TRAILER_SIZE} bytes, "
                                   f"the file has {size}")
                f.seek(0)
                sha = hashlib.sha256()
                left = length
                while left:
                    chunk = f.read(min(left, 1 << 22))
                    if not chunk:
                        raise _BadFile("changed while being read")
                    sha.update(chunk)
                    left -= len(chunk)
                if sha.digest() != trailer[8:40]:
                    raise _BadFile("is corrupt: its SHA-256 does not match the one recorded when it was written")
            elif not _ends_like_zip(f, size):
                # No record: a file written before records existed is a bare zip archive; one that
                # does not end like one was cut inside its record or earlier.
                raise _BadFile(f"is truncated or damaged: no integrity record at its end ({size} bytes)")
            f.seek(0)
            try:
                state = torch.load(f, map_location=map_location, weights_only=True)
            except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad files
                raise _BadFile(f"is corrupt, truncated or not a torch checkpoint: {e}") from None
    except OSError as e:
        raise _BadFile(f"cannot be read: {e}") from None
    if not isinstance(state, dict):
        raise _BadFile(f"holds a {type(state).__name__}, expected a dict")
    return state


def _ends_like_zip(f: BinaryIO, size: int) -> bool:
    """Whether the file ends with a zip end-of-central-directory record (torch writes no zip
    comment, so it is the last 22 bytes)."""
    if size < 22:
        return False
    f.seek(size - 22)
    return f.read(4) == b"PK\x05\x06"


def _check_meta(src: Path, state: dict[str, Any], expect: Mapping[str, Any] | None) -> None:
    if not expect:
        return
    meta = state.get("meta")
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {src} has no meta record; expected {dict(expect)}")
    for key, want in expect.items():
        if key not in meta:
            raise CheckpointError(f"checkpoint {src} has no meta {key!r}; expected {want!r}")
        if meta[key] != want:
            raise CheckpointError(
                f"checkpoint {src} does not match this run: meta {key!r} is {meta[key]!r} "
                f"in the file, expected {want!r}"
            )


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Any], *, source: object) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with a :class:`CheckpointError` on mismatch.

    Args:
        model: the network to fill.
        state_dict: parameter and buffer tensors by name.
        source: where the weights came from (a path), named in the error message.

    Raises:
        CheckpointError: missing or unexpected keys (listed) or tensors of the wrong shape.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {source} do not fit the model: missing keys {_short(missing)}, "
            f"unexpected keys {_short(unexpected)}"
        )
    wrong = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise CheckpointError(f"weights in {source} do not fit the model: shape mismatch {_short(wrong)}")
    model.load_state_dict(dict(state_dict), strict=True)


def _short(items: list[str], n: int = 8) -> str:
    if len(items) <= n:
        return str(items)
    return f"{items[:n]} ... ({len(items) - n} more)"


# ---- RNG snapshots --------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """Snapshot of Python's ``random``, NumPy's global and torch's CPU (+ CUDA) generators.

    Everything is converted to tensors, ints, floats, lists and dicts so the snapshot survives
    ``torch.load(weights_only=True)`` (NumPy's state holds an ndarray, which would not).
    """
    version, internal, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss_next": gauss_next},
        "numpy": {
            "name": str(np_name),
            # uint32 words fit in int64 exactly.
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore a snapshot taken by :func:`get_rng_state`.

    The CUDA part is restored only when CUDA is available with the same device count, so a
    checkpoint written on a GPU machine still resumes on a CPU one (CPU results then differ
    only where CUDA randomness was used).

    Raises:
        CheckpointError: the snapshot lacks a part or has the wrong form.
    """
    try:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss_next"]))
        npst = state["numpy"]
        keys = np.asarray(torch.as_tensor(npst["keys"]).numpy(), dtype=np.uint32)
        np.random.set_state(
            (str(npst["name"]), keys, int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"]))
        )
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"RNG state in checkpoint is malformed: {e!r}") from None
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)

