"""Crash-safe checkpoints that load without unpickling code, and RNG snapshots.

A checkpoint is a ``dict`` of tensors and plain values written with :func:`torch.save` and
read back with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects, so
a checkpoint from elsewhere cannot run code. Writes go to a temporary file in the target
directory that is fsynced and then renamed over the target with :func:`os.replace`: a crash
or a full disk mid-write leaves the previous checkpoint intact, never a truncated one.

Every checkpoint carries ``state["meta"]`` (format version, architecture, recipe...);
:func:`load_checkpoint` compares it with what the caller expects so that a run never resumes
from another run's weights.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from nasforge.errors import CheckpointError

#: Version of the checkpoint layout written by :func:`nasforge.train.trainer.train`; bump it
#: when the keys or their meaning change so old files are refused with a clear message.
FORMAT_VERSION = 1


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it onto ``path``.

    The temporary file lives in the same directory because :func:`os.replace` is atomic only
    within one file system. On any exception the temporary file is removed and ``path`` is
    left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
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


def _fsync_dir(directory: Path) -> None:
    # The rename itself is only durable once the directory entry is flushed (POSIX); Windows
    # cannot open directories, where this is a no-op.
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same directory, fsync, rename).

    Args:
        path: target file; parent directories are created.
        state: tensors, numbers, strings, ``None`` and lists/tuples/dicts of those (what
            ``torch.load(weights_only=True)`` accepts).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    target = Path(path)
    with _interrupts_deferred(), atomic_write(target) as f:
        torch.save(dict(state), f)
    return target


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
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Args:
        path: the checkpoint file.
        expect: entries ``state["meta"]`` must contain with equal values (for example
            ``{"format_version": 1, "arch": "..."}``).
        map_location: where tensors are loaded (CPU by default; ``load_state_dict`` copies
            them onto the model's device).

    Raises:
        CheckpointError: the file is missing, unreadable, not a checkpoint dict, or its meta
            differs from ``expect`` (the message names the key, the file's value and the
            expected one).
    """
    src = Path(path)
    if not src.is_file():
        raise CheckpointError(f"checkpoint {src} does not exist")
    try:
        state = torch.load(src, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad files
        raise CheckpointError(f"checkpoint {src} is corrupt or not a torch checkpoint: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {src} holds a {type(state).__name__}, expected a dict")
    if expect:
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
    return state


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

