"""TensorBoard scalars of a run (``--tensorboard``): one-shot search epochs and final training.

:func:`tensorboard_logger` gives a callback ``log(record)`` that writes every numeric field of a
per-epoch history record (``train_loss``, ``valid_acc``, ``lr``, ``tau`` ...; ``epoch`` is the
step) with :class:`torch.utils.tensorboard.SummaryWriter` under a log directory, or ``None``
when logging is off. Under ``torch.distributed`` only rank 0 writes, so a data-parallel run
gives one set of curves. Nested numeric fields (e.g. a dict of per-block values) are written
as ``field/key``; text fields (the derived architecture) are skipped.

TensorBoard itself is optional (``pip install tensorboard``, extra ``nasforge[tensorboard]``);
asking for it without the package raises :class:`~nasforge.errors.ConfigError` before any
training starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError

EpochCallback = Callable[[dict[str, Any]], None]

#: Fields of a history record that are not curves.
_NOT_SCALARS = frozenset({"epoch", "seconds"})


def is_rank_zero() -> bool:
    """Whether this process writes run-level outputs: always, unless torch.distributed is
    initialised and this is not rank 0."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def require_tensorboard() -> None:
    """Raise :class:`ConfigError` unless the ``tensorboard`` package (needed by SummaryWriter) is installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install tensorboard "
            "(or pip install 'nasforge[tensorboard]')"
        ) from None


def scalar_items(record: Mapping[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """``(tag, value)`` for every finite number in ``record`` (nested mappings as ``prefix/key``)."""
    out: list[tuple[str, float]] = []
    for key, value in record.items():
        if not prefix and key in _NOT_SCALARS:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(scalar_items(value, prefix=f"{tag}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append((tag, float(value)))
    return out


class TensorBoardLogger:
    """Writes history records as scalars; the step of a record is its ``epoch`` field.

    Args:
        log_dir: the event-file directory (created on first use).
    """

    def __init__(self, log_dir: str | Path) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self._step = 0

    def __call__(self, record: dict[str, Any]) -> None:
        epoch = record.get("epoch")
        step = int(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else self._step
        step = max(step, self._step)  # a method whose stages restart their epoch count continues the axis
        for tag, value in scalar_items(record):
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # one record per epoch: flushing keeps the curves current at no real cost
        self._step = step + 1

    def close(self) -> None:
        self.writer.close()


def tensorboard_logger(log_dir: str | Path, enabled: bool) -> TensorBoardLogger | None:
    """A :class:`TensorBoardLogger` for ``log_dir`` when ``enabled`` and this process is rank 0, else None.

    Raises:
        ConfigError: ``enabled`` but the ``tensorboard`` package is missing.
    """
    if not enabled:
        return None
    require_tensorboard()
    if not is_rank_zero():
        return None
    return TensorBoardLogger(log_dir)
