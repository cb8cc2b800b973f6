"""The shared frame of every weight-sharing (one-shot) method: data, checkpoints, results.

A method file (``nasforge/methods/<paper>.py``) builds its supernet, policy and optimizers and
runs its loop top to bottom; what every method needs in the same way lives here:

* :class:`OneShotContext` — what the caller gives a method: the space, supernet options, the
  train / validation splits, seed, device and run directory;
* :class:`SearchRun` — the checkpointed state: every module, optimizer and scheduler the
  method registers, the position (epoch, batch), the history, method scalars and the global
  RNG. :meth:`SearchRun.batches` yields ``(batch, train_batch, valid_batch)`` from a
  position-independent data order, so a search killed anywhere resumes at its last
  checkpoint and ends with the same architecture parameters as an uninterrupted run;
* :class:`OneShotMethod` — the registry record of a method (``nasforge search --method NAME``).

Data order: batch ``b`` of epoch ``e`` comes from ``make_loader(..., seed, epoch=e)`` (train)
and ``make_loader(..., seed + 1, epoch=e)`` (validation, cycled when shorter), and is augmented
(random crop with padding and horizontal flip, as the DARTS search) with a generator seeded by
``(seed, e, b)``; nothing depends on how often loaders were iterated before.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError, require_choice
from nasforge.nn.choice import Supernet
from nasforge.signals import check_stop
from nasforge.spaces.base import SearchSpace
from nasforge.train import distributed
from nasforge.train.checkpoint import (
    checkpoint_exists,
    get_rng_state,
    load_checkpoint_and_source,
    save_checkpoint,
    set_rng_state,
)

#: Layout version of one-shot search checkpoints; bump when keys or meanings change.
SEARCH_FORMAT_VERSION = 1
CHECKPOINT_NAME = "search.pt"


def config_dict(config: Any) -> dict[str, Any]:
    """A method config as plain JSON values (tuples become lists)."""
    return json_safe(dataclasses.asdict(config))


def json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    return value


def make_config(config_cls: Any, overrides: Mapping[str, Any], method: str) -> Any:
    """``config_cls(**overrides)`` with a :class:`ConfigError` naming unknown options."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown {method} option(s) {unknown}; valid: {', '.join(sorted(fields))}")
    return config_cls(**dict(overrides))


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` (config validation)."""
    if not condition:
        raise ConfigError(message)


def require_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BudgetError(f"{name} must be an int > 0, got {value!r}")


@dataclass
class OneShotContext:
    """What a one-shot method is given. Field comments say what each is."""

    space: SearchSpace  # the search space (its ``supernet`` and ``derive`` are used)
    train_set: Dataset[Any]  # weights are trained on it
    valid_set: Dataset[Any]  # architecture parameters are trained / candidates ranked on it
    num_classes: int
    input_shape: tuple[int, int, int]
    supernet_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. C, N (nb201); C, layers (darts)
    seed: int = 0
    device: str = "cpu"
    run_dir: Path | None = None  # checkpoints go to run_dir/search.pt (None: no checkpoints)
    checkpoint_every: int = 100  # steps between checkpoints (also one at every epoch end)
    max_batches_per_epoch: int | None = None  # a reduced budget: at most this many steps per epoch
    augment: bool = True  # random crop (padding 4 for 32x32 images) and flip, as the DARTS search
    channels_last: bool = False  # run convolutions in channels-last memory format (often faster on CPU)
    log: Callable[[str], None] = print
    progress: bool = False
    on_epoch: Callable[[dict[str, Any]], None] | None = None  # called with each epoch's history record (e.g. TensorBoard)

    def __post_init__(self) -> None:
        require_positive_int("checkpoint_every", self.checkpoint_every)
        if self.max_batches_per_epoch is not None:
            require_positive_int("max_batches_per_epoch", self.max_batches_per_epoch)

    def supernet(self, **overrides: Any) -> Supernet:
        """The space's supernet for this data (classes, channels) with the context's options."""
        kwargs = {**self.supernet_kwargs, **overrides}
        net = self.space.supernet(num_classes=self.num_classes, in_channels=self.input_shape[0], **kwargs)
        net.to(self.device)
        if self.channels_last:
            net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return net

    def fixed_valid_batches(self, n: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        """The first ``n`` validation batches in a fixed seeded order, not augmented (for ranking)."""
        return self._fixed_batches(self.valid_set, n, batch_size, self.seed + 2)

    def fixed_train_batches(self, n: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        """The first ``n`` training batches in a fixed seeded order (not the search's), not augmented.

        For BN recalibration (SPOS, FairNAS): fewer when the split is smaller than ``n`` batches.
        """
        return self._fixed_batches(self.train_set, n, batch_size, self.seed + 3)

    def _fixed_batches(self, dataset: Dataset[Any], n: int, batch_size: int, seed: int) -> list[tuple[Tensor, Tensor]]:
        from nasforge.data import make_loader

        require_positive_int("n", n)
        require_positive_int("batch_size", batch_size)
        out = []
        for x, y in make_loader(dataset, batch_size, shuffle=True, seed=seed, epoch=0):
            x = x.to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append((x, y.to(self.device)))
            if len(out) == n:
                break
        return out

    def open_run(self, method: str, config: Any, **state: Any) -> SearchRun:
        """A :class:`SearchRun` tracking ``state`` (modules, optimizers, schedulers by name), resumed if possible."""
        meta = {
            "format_version": SEARCH_FORMAT_VERSION,
            "method": method,
            "space": self.space.name,
            "space_config": json_safe(self.space.config()),
            "supernet_kwargs": json_safe(self.supernet_kwargs),
            "config": config_dict(config),
            "seed": int(self.seed),
            "max_batches_per_epoch": self.max_batches_per_epoch,
            "train_size": len(self.train_set),  # type: ignore[arg-type]
            "valid_size": len(self.valid_set),  # type: ignore[arg-type]
        }
        run = SearchRun(self, meta, state)
        run.resume()
        if distributed.active() is not None:  # data parallel: every rank starts from rank 0's state
            distributed.check_same_step(run.step)
            distributed.broadcast_modules([obj for obj in run.state.values() if isinstance(obj, nn.Module)])
        return run


class SearchRun:
    """Checkpointed state and position of one search (see the module docstring).

    Attributes:
        epoch, batch: position of the next step (batch within the epoch).
        step: steps done in all.
        history: one record per finished epoch.
        scalars: method state that is not a tensor module (e.g. a reward baseline).
        resumed: whether this run continued from a checkpoint.
    """

    def __init__(self, ctx: OneShotContext, meta: dict[str, Any], state: Mapping[str, Any]) -> None:
        self.ctx, self.meta = ctx, meta
        self.state = dict(state)
        for name, obj in self.state.items():
            if not hasattr(obj, "state_dict") or not hasattr(obj, "load_state_dict"):
                raise ConfigError(f"search state {name!r} ({type(obj).__name__}) has no state_dict")
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.scalars: dict[str, Any] = {}
        self.resumed = False
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._t0 = self._created = time.perf_counter()
        self.path = ctx.run_dir / CHECKPOINT_NAME if ctx.run_dir is not None else None

    def seconds(self) -> float:
        """Wall time since this object was created (this process's part of the search)."""
        return time.perf_counter() - self._created

    # ---- checkpoints ---------------------------------------------------------------------
    def resume(self) -> None:
        if self.path is None or not checkpoint_exists(self.path):
            return
        # A bad search.pt falls back to search.prev.pt with a line naming both (checkpoint.py).
        ckpt, source = load_checkpoint_and_source(self.path, expect=self.meta, log_fn=self.ctx.log)
        missing = [name for name in self.state if name not in ckpt["state"]]
        if missing:
            raise ConfigError(f"checkpoint {source} lacks search state {missing}")
        for name, obj in self.state.items():
            obj.load_state_dict(ckpt["state"][name])
        self.epoch, self.batch, self.step = int(ckpt["epoch"]), int(ckpt["batch"]), int(ckpt["step"])
        self.history = list(ckpt["history"])
        self.scalars = dict(ckpt["scalars"])
        self._sums, self._counts = dict(ckpt["sums"]), dict(ckpt["counts"])
        set_rng_state(ckpt["rng"])
        self.resumed = True
        self.ctx.log(f"resuming the search from {source} at epoch {self.epoch}, batch {self.batch}")

    def save(self) -> None:
        if self.path is None or not distributed.is_main():  # data parallel: rank 0 writes
            return
        save_checkpoint(self.path, {
            "meta": self.meta,
            "state": {name: obj.state_dict() for name, obj in self.state.items()},
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "history": self.history, "scalars": self.scalars,
            "sums": self._sums, "counts": self._counts,
            "rng": get_rng_state(),
        })

    # ---- the loop ------------------------------------------------------------------------
    def epochs(self, total: int) -> Iterator[int]:
        """Epochs ``self.epoch .. total - 1`` (after a resume, from the checkpointed one)."""
        require_positive_int("epochs", total)
        while self.epoch < total:
            yield self.epoch

    def steps_per_epoch(self, batch_size: int) -> int:
        n = len(self.ctx.train_set) // batch_size  # type: ignore[arg-type]
        if n == 0:
            raise BudgetError(
                f"batch_size {batch_size} exceeds the {len(self.ctx.train_set)} training images"  # type: ignore[arg-type]
            )
        if self.ctx.max_batches_per_epoch is not None:
            n = min(n, self.ctx.max_batches_per_epoch)
        return n

    def batches(self, batch_size: int) -> Iterator[tuple[int, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]]:
        """``(b, train_batch, valid_batch)`` for the remaining batches of the current epoch.

        Call :meth:`step_done` after each step; batches already done (before a resume) are
        skipped without being augmented. The validation loader is cycled when shorter.
        """
        for b, train, valid in self._batches(batch_size, with_valid=True):
            if valid is None:  # pragma: no cover - with_valid=True always pairs one
                raise RuntimeError("no validation batch")
            yield b, train, valid

    def train_batches(self, batch_size: int) -> Iterator[tuple[int, tuple[Tensor, Tensor]]]:
        """Like :meth:`batches` without validation batches (single-level training)."""
        for b, train, _ in self._batches(batch_size, with_valid=False):
            yield b, train

    def valid_batches(self, batch_size: int, *, first: int) -> Iterator[tuple[int, tuple[Tensor, Tensor]]]:
        """The current epoch's validation batches as steps ``first, first + 1, ...`` (a phase of its own).

        For methods that train the weights on the training split and then the architecture on the
        validation split within one epoch (FBNet): ``first`` is the number of steps before this
        phase. At most ``max_batches_per_epoch`` batches; steps already done are skipped, as in
        :meth:`batches`, and each batch is augmented with the generator of its step.
        """
        from nasforge.data import augment_batch, make_loader
        from nasforge.data.loaders import epoch_seed

        ctx, epoch = self.ctx, self.epoch
        n = len(ctx.valid_set) // batch_size  # type: ignore[arg-type]
        if n == 0:
            raise BudgetError(f"batch_size {batch_size} exceeds the {len(ctx.valid_set)} validation images")  # type: ignore[arg-type]
        if ctx.max_batches_per_epoch is not None:
            n = min(n, ctx.max_batches_per_epoch)
        loader = make_loader(ctx.valid_set, batch_size, shuffle=True, seed=ctx.seed + 1, epoch=epoch, drop_last=True)
        for i, (x, y) in enumerate(loader):
            if i >= n:
                break
            b = first + i
            if b < self.batch:
                continue
            gen = torch.Generator().manual_seed(epoch_seed(ctx.seed, epoch * 1_000_003 + b + 1))
            yield b, self._prepare(x, y, gen, augment_batch)

    def _batches(
        self, batch_size: int, *, with_valid: bool
    ) -> Iterator[tuple[int, tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]]:
        from nasforge.data import augment_batch, make_loader
        from nasforge.data.loaders import epoch_seed

        ctx, epoch = self.ctx, self.epoch
        n = self.steps_per_epoch(batch_size)
        train_loader = make_loader(ctx.train_set, batch_size, shuffle=True, seed=ctx.seed, epoch=epoch, drop_last=True)
        valid_iter: Iterator[Any] | None = None
        valid_loader = None
        if with_valid:
            if len(ctx.valid_set) < batch_size:  # type: ignore[arg-type]
                raise BudgetError(f"batch_size {batch_size} exceeds the {len(ctx.valid_set)} validation images")  # type: ignore[arg-type]
            valid_loader = make_loader(ctx.valid_set, batch_size, shuffle=True, seed=ctx.seed + 1, epoch=epoch, drop_last=True)
            valid_iter = iter(valid_loader)
        for b, (x, y) in enumerate(train_loader):
            if b >= n:
                break
            check_stop()  # a SIGTERM whose KeyboardInterrupt was swallowed (nasforge.signals)
            v = None
            if valid_iter is not None and valid_loader is not None:
                try:
                    v = next(valid_iter)
                except StopIteration:
                    valid_iter = iter(valid_loader)
                    v = next(valid_iter)
            if b < self.batch:
                continue
            gen = torch.Generator().manual_seed(epoch_seed(ctx.seed, epoch * 1_000_003 + b + 1))
            train_batch = self._prepare(x, y, gen, augment_batch)
            valid_batch = self._prepare(v[0], v[1], gen, augment_batch) if v is not None else None
            yield b, train_batch, valid_batch

    def _prepare(self, x: Tensor, y: Tensor, gen: torch.Generator, augment_batch: Any) -> tuple[Tensor, Tensor]:
        ctx = self.ctx
        if ctx.augment:
            x = augment_batch(x, generator=gen, crop_padding=4 if x.shape[-1] >= 32 else 0, flip=x.shape[-1] >= 32)
        x, y = x.to(ctx.device), y.to(ctx.device)
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def step_done(self, **metrics: float) -> None:
        """Record one finished step's metrics (averaged per epoch); checkpoint every N steps."""
        for k, v in metrics.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
            self._counts[k] = self._counts.get(k, 0) + 1
        self.batch += 1
        self.step += 1
        if self.step % self.ctx.checkpoint_every == 0:
            self.save()

    def epoch_done(self, **record: Any) -> dict[str, Any]:
        """Close the epoch: averages of the step metrics plus ``record``; checkpoint; log a line."""
        means = {k: self._sums[k] / self._counts[k] for k in self._sums}
        entry = {"epoch": self.epoch, **means, **json_safe(record), "seconds": time.perf_counter() - self._t0}
        self.history.append(entry)
        self.epoch, self.batch = self.epoch + 1, 0
        self._sums, self._counts = {}, {}
        self._t0 = time.perf_counter()
        self.save()
        shown = ", ".join(f"{k} {v:.4g}" for k, v in means.items())
        self.ctx.log(f"epoch {entry['epoch']}: {shown}" + (f"; {record['arch']}" if "arch" in record else ""))
        if self.ctx.on_epoch is not None:  # after the checkpoint: a crash here loses a point, never repeats one
            self.ctx.on_epoch(dict(entry))
        return entry


@dataclass
class OneShotResult:
    """What a one-shot method returns."""

    arch: Arch  # the derived architecture
    strengths: dict[str, list[float]]  # final per-key candidate strengths (what derive read)
    history: list[dict[str, Any]]  # per-epoch records (losses, accuracies, derived arch, schedule values)
    seconds: float  # wall time of this call (a resumed run counts only its own part)
    info: dict[str, Any] = field(default_factory=dict)  # method-specific extras (e.g. ranked samples)


@dataclass(frozen=True)
class OneShotMethod:
    """Registry record of a one-shot method: ``search(ctx, config) -> OneShotResult``."""

    name: str
    paper: str
    config_cls: type
    search: Callable[[OneShotContext, Any], OneShotResult]
    spaces: tuple[str, ...] = ("nb201", "darts")
    data_parallel: bool = False  # runs data-parallel (torchrun): its steps all go through train/bilevel.py

    def options(self) -> dict[str, Any]:
        """The method's options with their defaults (its Config's fields)."""
        return config_dict(self.config_cls())

    def __call__(self, ctx: OneShotContext, **options: Any) -> OneShotResult:
        require_choice(f"space for {self.name}", ctx.space.name, self.spaces)
        if distributed.active() is not None and not self.data_parallel:
            from nasforge import registry

            able = [n for n in registry.names("method") if getattr(registry.get("method", n), "data_parallel", False)]
            raise ConfigError(
                f"{self.name} does not run data-parallel (torchrun, {distributed.SIMULATE_ENV}); methods that do: "
                f"{', '.join(able)}"
            )
        config = make_config(self.config_cls, options, self.name)
        seed_everything(ctx.seed)  # supernet and policy initialisation depend on the seed only
        return self.search(ctx, config)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def path_accuracy(supernet: nn.Module, path: Mapping[str, Any], batches: list[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy (%) of ``supernet`` along ``path`` on ``batches`` (shared weights, no update).

    The supernet stays in its current mode: with ``track_running_stats=False`` BN uses the
    batch statistics either way, as the NB201 one-shot baselines rank candidates.
    """
    correct, n = 0, 0
    for x, y in batches:
        correct += int((supernet(x, path).argmax(1) == y).sum())
        n += int(y.numel())
    return 100.0 * correct / max(n, 1)


def strengths_lists(strengths: Mapping[str, Tensor]) -> dict[str, list[float]]:
    return {k: [float(v) for v in t.detach().flatten().tolist()] for k, t in strengths.items()}


def accuracy(logits: Tensor, y: Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == y).float().mean())


# ---- pieces several methods configure the same way ----------------------------------------


def check_sgd(cfg: Any) -> None:
    """Validate the weight-optimizer fields ``epochs, batch_size, lr, lr_min, momentum, weight_decay, grad_clip``."""
    require_positive_int("epochs", cfg.epochs)
    require_positive_int("batch_size", cfg.batch_size)
    require(_finite(cfg.lr) and cfg.lr > 0, f"lr must be > 0, got {cfg.lr!r}")
    require(_finite(cfg.lr_min) and 0 <= cfg.lr_min <= cfg.lr, f"lr_min must be in [0, lr={cfg.lr}], got {cfg.lr_min!r}")
    require(_finite(cfg.momentum) and 0 <= cfg.momentum < 1, f"momentum must be in [0, 1), got {cfg.momentum!r}")
    require(_finite(cfg.weight_decay) and cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay!r}")
    clip = getattr(cfg, "grad_clip", None)
    require(clip is None or (_finite(clip) and clip > 0), f"grad_clip must be > 0 or None, got {clip!r}")


def check_adam(cfg: Any) -> None:
    """Validate ``arch_lr, arch_betas, arch_weight_decay``."""
    require(_finite(cfg.arch_lr) and cfg.arch_lr > 0, f"arch_lr must be > 0, got {cfg.arch_lr!r}")
    betas = tuple(cfg.arch_betas)
    require(len(betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in betas), f"arch_betas must be two numbers in [0, 1), got {cfg.arch_betas!r}")
    require(_finite(cfg.arch_weight_decay) and cfg.arch_weight_decay >= 0, f"arch_weight_decay must be >= 0, got {cfg.arch_weight_decay!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sgd_cosine(net: nn.Module, cfg: Any) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """The weight optimizer of the DARTS family: SGD + cosine annealing over ``cfg.epochs`` (stepped per epoch)."""
    opt = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        nesterov=bool(getattr(cfg, "nesterov", False)) and cfg.momentum > 0,
    )
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr_min)


def derived(ctx: OneShotContext, strengths: Mapping[str, Tensor]) -> str:
    """The space's derivation of ``strengths`` as text (for history records)."""
    return ctx.space.format(ctx.space.derive(strengths))


def result(ctx: OneShotContext, run: SearchRun, strengths: Mapping[str, Tensor], **info: Any) -> OneShotResult:
    """The final :class:`OneShotResult` of a search whose architecture is derived from ``strengths``."""
    return OneShotResult(
        arch=ctx.space.derive(strengths), strengths=strengths_lists(strengths), history=list(run.history),
        seconds=run.seconds(), info=json_safe(info),
    )
