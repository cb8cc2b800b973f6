"""Data-parallel one-shot search: torch.distributed under ``torchrun``, and its one-process twin.

``torchrun --standalone --nproc_per_node 2 -m nasforge search --method darts ...`` starts one
process per rank; :func:`setup` (called by the one-shot path of
:func:`nasforge.experiment.run_search`) sees ``WORLD_SIZE > 1`` and joins the process group
(``gloo`` on CPU, ``nccl`` on CUDA, each rank on its ``cuda:LOCAL_RANK``). Then:

* every rank reads the same global batch (same data order and augmentation, see
  :mod:`nasforge.train.oneshot`) and the steps of :mod:`nasforge.train.bilevel` run the forward
  and backward of the rank's shard only: shard ``r`` of a batch of ``B`` examples is rows
  ``r*B/W .. (r+1)*B/W - 1`` (``B`` must be divisible by ``W``), weighted by ``(B/W) / B`` in the
  loss, so the gradients summed over ranks (one all-reduce of a flat buffer per step) are the
  gradient of the mean loss over the global batch. The global batch size, the number of steps
  and the learning rates are those of the one-process run; gradient clipping and the optimizers
  see the summed gradient, so the weights and architecture parameters stay identical on every
  rank. The returned loss is the global one and the logits are gathered, so the history is the
  one-process run's;
* random draws (Gumbel noise, uniform paths) come from generators seeded identically on every
  rank and consumed identically, so every rank draws the same path; the parameters are
  broadcast from rank 0 once at the start (as ``DistributedDataParallel`` does), and at the end
  :func:`agree` checks that every rank derived the same architecture;
* only rank 0 writes checkpoints, ``results.json`` and logs and runs the final training; the
  other ranks leave after the search's last collective, and the process group is destroyed.

What "equal to the single-process run" means. Batch normalisation with batch statistics sees
only a rank's shard, so a 2-rank run normalises each half of a batch on its own, which a
one-process run over whole batches does not do. The one-process twin of a ``W``-rank run
computes each global batch as the same ``W`` shards in turn (BN per shard, the loss weighted as
above, the gradients accumulated): set ``NASFORGE_SIMULATE_RANKS=W`` for a plain
``nasforge search`` (or use :func:`simulate`). Its architecture parameters, derived
architecture and history equal the ``W``-rank run's to float rounding (the order of the
gradient sums differs); ``tests/test_distributed.py`` checks this for DARTS and GDAS. Running
BN statistics (``track_running_stats=True``, e.g. the NB201 stem) are each rank's own, updated
from its shards only, and rank 0's are saved: the supported methods never read them (they
search in training mode and derive from their architecture parameters), and the final network
is retrained.

Methods whose steps all go through :func:`~nasforge.train.bilevel.weight_step_pieces`,
:func:`~nasforge.train.bilevel.arch_step` and :func:`~nasforge.train.bilevel.unrolled_arch_grads`,
draw identical random numbers on every rank and derive from architecture parameters are marked
``data_parallel=True`` in their registry record: ``darts`` (both orders), ``pc_darts`` and
``gdas``. The others refuse a data-parallel run with a :class:`~nasforge.errors.ConfigError`:
SNAS, P-DARTS, DSO-NAS, ENAS and SMASH compute some gradients outside those steps, and the
ranking methods (RSPS, One-Shot) rank candidates in evaluation mode, where the per-rank running
BN statistics would make ranks (and the one-process twin) disagree.

A search may resume with another number of ranks (the checkpoint does not depend on it); from
that point BN sees other shards, so it no longer equals an uninterrupted run.

The single-process path is untouched: with no sharding active, :func:`active` returns ``None``
and the steps run as before.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nasforge.errors import ConfigError, NasforgeError

#: Environment variable that makes a one-process run compute every batch as this many shards.
SIMULATE_ENV = "NASFORGE_SIMULATE_RANKS"

Batch = tuple[Tensor, Tensor]


class RanksDisagreeError(NasforgeError, RuntimeError):
    """Ranks of a data-parallel search ended with different architectures."""


@dataclass(frozen=True)
class Sharding:
    """How this process computes each global batch.

    Attributes:
        world_size: shards per global batch (ranks, or simulated ranks).
        rank: this process's rank (0 when simulated).
        backend: the torch.distributed backend, or ``None`` when one process computes all shards.
    """

    world_size: int
    rank: int
    backend: str | None

    @property
    def local(self) -> range:
        """The shards this process computes: its own, or all of them when simulated."""
        return range(self.rank, self.rank + 1) if self.backend is not None else range(self.world_size)

    @property
    def multiprocess(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_active: Sharding | None = None
_owns_group = False


def active() -> Sharding | None:
    """The sharding in force (set by :func:`setup` or :func:`simulate`), or ``None``."""
    return _active


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset)."""
    return _env_int("WORLD_SIZE", 1)


def env_rank() -> int:
    """``RANK`` as torchrun sets it (0 when unset)."""
    return _env_int("RANK", 0)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {text!r}") from None


def is_main() -> bool:
    """Whether this process writes the run directory: rank 0 of the active sharding, else ``RANK == 0``."""
    return _active.is_main if _active is not None else env_rank() == 0


def setup(device: str) -> tuple[Sharding | None, str]:
    """Start data parallelism from the environment; returns ``(sharding, this rank's device)``.

    ``WORLD_SIZE > 1`` (torchrun): join the process group from the ``env://`` variables (unless
    the caller already did), ``nccl`` for a CUDA device, ``gloo`` otherwise; a bare ``cuda``
    device becomes ``cuda:LOCAL_RANK``. Otherwise ``NASFORGE_SIMULATE_RANKS=W`` simulates ``W``
    ranks in this process. Otherwise nothing is set up: ``(None, device)``. Pair with
    :func:`shutdown`.
    """
    global _active, _owns_group
    world = env_world_size()
    if world > 1:
        import torch.distributed as dist

        cuda = device.startswith("cuda")
        if cuda:
            if device == "cuda":
                device = f"cuda:{_env_int('LOCAL_RANK', 0)}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
            _owns_group = True
        _active = Sharding(world_size=dist.get_world_size(), rank=dist.get_rank(), backend=str(dist.get_backend()))
        return _active, device
    simulated = _env_int(SIMULATE_ENV, 1)
    if simulated < 1:
        raise ConfigError(f"{SIMULATE_ENV} must be an integer >= 1, got {simulated}")
    _active = Sharding(world_size=simulated, rank=0, backend=None) if simulated > 1 else None
    return _active, device


def shutdown() -> None:
    """End what :func:`setup` started: destroy the process group if it created it."""
    global _active, _owns_group
    if _owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            # Leave together: a rank that tears its gloo group down while the other is still in it can
            # abort ("terminate called without an active exception"). Bounded, so a rank whose partner
            # died does not wait forever.
            with contextlib.suppress(Exception):
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
                else:
                    dist.barrier()
            dist.destroy_process_group()
    _active, _owns_group = None, False


@contextlib.contextmanager
def simulate(world_size: int) -> Iterator[Sharding]:
    """Compute every batch as ``world_size`` shards in this process (the twin of a ``world_size``-rank run)."""
    global _active
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"simulated world size must be an int >= 1, got {world_size!r}")
    if _active is not None:
        raise ConfigError("a sharding is already active")
    _active = Sharding(world_size=world_size, rank=0, backend=None)
    try:
        yield _active
    finally:
        _active = None


# ---- what the steps use ------------------------------------------------------------------------


def local_shards(batch: Batch, sharding: Sharding) -> list[tuple[Batch, float]]:
    """This process's shards of ``batch`` with their loss weights (shard size / global batch size)."""
    x, y = batch
    n = int(y.shape[0])
    if n % sharding.world_size:
        raise ConfigError(
            f"a batch of {n} examples cannot be split evenly between {sharding.world_size} ranks; "
            f"use a batch_size divisible by {sharding.world_size}"
        )
    xs, ys = x.tensor_split(sharding.world_size), y.tensor_split(sharding.world_size)
    return [((xs[i], ys[i]), 1.0 / sharding.world_size) for i in sharding.local]


def sum_across_ranks(
    grads: Sequence[Tensor | None], like: Sequence[Tensor], values: Sequence[float] = (),
) -> tuple[list[Tensor | None], list[float]]:
    """Sum ``grads`` (``None``: no gradient here) and ``values`` over the ranks in one all-reduce.

    A tensor that has a gradient on some rank gets the sum (``None`` counting as zero); one
    with no gradient anywhere stays ``None``. Without a process group (simulated or none) the
    inputs are returned: the shards were already summed in this process.
    """
    if _active is None or not _active.multiprocess:
        return list(grads), list(values)
    import torch.distributed as dist

    dtype = like[0].dtype if like else torch.float32
    for t in like:
        dtype = torch.promote_types(dtype, t.dtype)
    device = like[0].device if like else torch.device("cpu")
    parts = [(g if g is not None else torch.zeros_like(t)).reshape(-1).to(dtype) for g, t in zip(grads, like)]
    present = torch.tensor([g is not None for g in grads], dtype=dtype, device=device)
    flat = torch.cat([*parts, present, torch.tensor(list(values), dtype=dtype, device=device)])
    dist.all_reduce(flat)
    sizes = [t.numel() for t in like]
    head = sum(sizes)
    had = flat[head:head + len(like)].tolist()
    out: list[Tensor | None] = []
    for t, chunk, n_had in zip(like, flat[:head].split(sizes), had):
        out.append(chunk.view_as(t).to(t.dtype) if n_had > 0 else None)
    head += len(like)
    return out, [float(v) for v in flat[head:head + len(values)]]


def gather_rows(local: Sequence[Tensor]) -> Tensor:
    """The rows of every shard in rank order: this process's shards concatenated, then all-gathered."""
    mine = local[0] if len(local) == 1 else torch.cat(list(local))
    if _active is None or not _active.multiprocess:
        return mine
    import torch.distributed as dist

    pieces = [torch.empty_like(mine) for _ in range(_active.world_size)]
    dist.all_gather(pieces, mine.contiguous())
    return torch.cat(pieces)


def broadcast_modules(modules: Sequence[nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every rank (a no-op without a process group)."""
    if _active is None or not _active.multiprocess:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)


def check_same_step(step: int) -> None:
    """Fail unless every rank stands at ``step`` (e.g. resumed from the same checkpoint)."""
    if _active is None or not _active.multiprocess:
        return
    import torch.distributed as dist

    steps: list[object] = [None] * _active.world_size
    dist.all_gather_object(steps, int(step))
    if len(set(steps)) != 1:
        raise ConfigError(
            f"ranks start the search at different steps {steps}: every rank must see the same run directory "
            "(rank 0 writes the checkpoints)"
        )


def agree(arch: str, strengths: dict[str, list[float]]) -> dict[str, object]:
    """Check that every rank derived ``arch``; a record for ``results.json`` (a collective: call on every rank)."""
    if _active is None:
        return {}
    record: dict[str, object] = {"world_size": _active.world_size, "backend": _active.backend or "simulated"}
    if not _active.multiprocess:
        return record
    import torch.distributed as dist

    gathered: list[object] = [None] * _active.world_size
    dist.all_gather_object(gathered, (arch, strengths))
    everyone: list[tuple[str, dict[str, list[float]]]] = gathered  # type: ignore[assignment]
    archs = [a for a, _ in everyone]
    if len(set(archs)) != 1:
        raise RanksDisagreeError(f"ranks derived different architectures: {archs}")
    diff = 0.0
    for _, other in everyone:
        for key, values in strengths.items():
            diff = max([diff, *(abs(a - b) for a, b in zip(values, other[key]))])
    record.update(rank_archs=archs, max_strength_diff_across_ranks=diff)
    return record
