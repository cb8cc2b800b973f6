"""Train one network from scratch with a :class:`~nasforge.train.recipes.Recipe`; resumable.

The loop follows the DARTS retraining script (Liu et al. 2019, ``quark0/darts``
``cnn/train.py``) and the NAS-Bench-201 recipe (Dong & Yang 2020, ``AutoDL-Projects``
``procedures/funcs_nasbench.py``): SGD with momentum and weight decay, a cosine learning-rate
schedule stepped once per epoch, label-smoothed cross-entropy, batch augmentation, an optional
auxiliary-head loss, a linearly increasing drop-path probability and gradient-norm clipping.

Resumption is exact: the data order of an epoch depends only on ``(seed, epoch)`` (see
:func:`nasforge.data.make_loader`), augmentation draws from a generator seeded the same way,
and the checkpoint holds the model, optimizer, scheduler and global RNG states. A run
interrupted after any checkpointed epoch and started again with the same arguments ends with
bit-identical weights and history (on CPU; on GPU up to the device's own nondeterminism).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from nasforge.errors import BudgetError, ConfigError, NasforgeError
from nasforge.signals import check_stop
from nasforge.train.checkpoint import (
    FORMAT_VERSION,
    checkpoint_exists,
    get_rng_state,
    load_checkpoint_and_source,
    load_state_dict_strict,
    save_checkpoint,
    set_rng_state,
)
from nasforge.train.recipes import Recipe

CHECKPOINT_NAME = "last.pt"

# Mixed into the (seed, epoch) stream so augmentation never shares draws with the data order.
_AUGMENT_SALT = 0xA06_0E17


class TrainingDivergedError(NasforgeError, RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is left on disk."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        history: one record per epoch (this call's and, after a resume, the earlier ones):
            ``epoch`` (0-based), ``lr`` (used in that epoch), ``train_loss`` (the optimised
            objective, auxiliary term included, as DARTS reports it), ``train_acc`` (%),
            ``eval_loss`` / ``eval_acc`` (``None`` without an ``eval_set``), ``seconds``.
        final: evaluation metrics after the last epoch (``{"loss", "acc"}``; empty without
            an ``eval_set``).
        seconds: wall time of this call.
        resumed_from: epochs already completed in the checkpoint this call resumed from
            (equivalently the first epoch this call trained); ``None`` for a fresh start.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_from: int | None = None


def _logits_and_aux(out: Any) -> tuple[Tensor, Tensor | None]:
    # DARTS NetworkCIFAR returns (logits, logits_aux) and logits_aux is None in eval mode.
    if isinstance(out, (tuple, list)):
        logits = out[0]
        aux = out[1] if len(out) > 1 else None
        return logits, aux
    return out, None


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset[Any], *, batch_size: int = 256, device: str | torch.device = "cpu") -> dict[str, float]:
    """Mean cross-entropy (no smoothing) and top-1 accuracy of ``model`` on ``dataset``.

    The model runs in eval mode (BN running statistics, no dropout) and is returned to its
    previous mode afterwards; the global RNGs are not touched.

    Args:
        model: a classifier; ``forward`` returns logits or ``(logits, aux)``.
        dataset: ``(image, label)`` items.
        batch_size: evaluation batch size.
        device: where the model runs (it is moved there).

    Returns:
        ``{"loss": mean CE, "acc": accuracy in %}``.
    """
    from nasforge.data import make_loader

    was_training = model.training
    model.to(device).eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    try:
        for x, y in make_loader(dataset, batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            logits, _ = _logits_and_aux(model(x))
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            n += int(y.numel())
    finally:
        model.train(was_training)
    return {"loss": float(loss_sum) / n, "acc": 100.0 * float(correct) / n}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _augment_generator(seed: int, epoch: int) -> torch.Generator:
    from nasforge.data.loaders import epoch_seed

    return torch.Generator().manual_seed(epoch_seed(seed, epoch) ^ _AUGMENT_SALT)


def train(
    model: nn.Module,
    train_set: Dataset[Any],
    recipe: Recipe,
    *,
    eval_set: Dataset[Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    meta: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train_set`` with ``recipe``; resume from a checkpoint if one exists.

    Per epoch ``e`` (0-based): set ``model.drop_path_prob = recipe.drop_path_prob * e / epochs``
    when the model has that attribute (DARTS ``train.py``); run SGD over the batches of
    ``make_loader(train_set, seed=seed, epoch=e)`` (at most ``max_batches_per_epoch``),
    augmenting each batch; evaluate on ``eval_set``; step the cosine schedule; write
    ``checkpoint_dir/last.pt`` every ``checkpoint_every`` epochs and after the last; call
    ``on_epoch(record)``.

    Args:
        model: the network; ``forward`` returns logits or, in training, ``(logits, aux)``
            whose auxiliary loss is added with weight ``recipe.auxiliary_weight``.
        train_set: ``(image, label)`` items.
        recipe: hyper-parameters.
        eval_set: evaluated after every epoch when given.
        checkpoint_dir: where ``last.pt`` lives; ``None`` disables checkpoints and resuming.
        checkpoint_every: epochs between checkpoints (the last epoch is always saved).
        meta: identifying values saved with the checkpoint and required to match on resume
            (for example ``{"arch": ..., "space": ...}``); the recipe, seed and checkpoint
            format version are always added.
        seed: seeds the global RNGs on a fresh start, the data order and augmentation.
        device: where to train.
        progress: show a tqdm bar per epoch.
        on_epoch: called with each epoch's history record after its checkpoint is written.

    Returns:
        a :class:`TrainResult`.

    Raises:
        CheckpointError: the existing checkpoint belongs to another run, or it and the previous
            one (``last.prev.pt``) are both corrupt.
        StorageError: a checkpoint could not be written (``StorageFullError``: disk full).
        TrainingDivergedError: the loss became non-finite (names the epoch and batch).
        BudgetError: ``checkpoint_every`` is not positive.
    """
    from nasforge.data import augment_batch, make_loader

    start = time.perf_counter()
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"recipe must be a Recipe (see nasforge.train.get_recipe), got {type(recipe).__name__}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every <= 0:
        raise BudgetError(f"checkpoint_every must be an int > 0, got {checkpoint_every!r}")
    n_train = len(train_set)  # type: ignore[arg-type]
    full_meta: dict[str, Any] = {
        **(meta or {}),
        "format_version": FORMAT_VERSION,
        "recipe": recipe.to_dict(),
        "seed": int(seed),
    }

    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
        nesterov=recipe.nesterov, weight_decay=recipe.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs, eta_min=recipe.lr_min)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    history: list[dict[str, Any]] = []
    first_epoch = 0
    resumed_from: int | None = None
    if ckpt_path is not None and checkpoint_exists(ckpt_path):
        # A bad last.pt falls back to last.prev.pt with a warning naming both (checkpoint.py).
        state, source = load_checkpoint_and_source(ckpt_path, expect=full_meta)
        load_state_dict_strict(model, state["model"], source=source)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        history = list(state["history"])
        first_epoch = int(state["epoch"]) + 1
        resumed_from = first_epoch
    else:
        _seed_everything(seed)

    augment = recipe.crop_padding > 0 or recipe.flip or recipe.cutout > 0
    # A training batch of one image breaks BatchNorm; drop a last batch of exactly one.
    drop_last = n_train > 1 and n_train % recipe.batch_size == 1

    for epoch in range(first_epoch, recipe.epochs):
        epoch_start = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        if hasattr(model, "drop_path_prob"):
            model.drop_path_prob = recipe.drop_path_prob * epoch / recipe.epochs  # type: ignore[assignment]
        model.train()
        loader = make_loader(train_set, recipe.batch_size, shuffle=True, seed=seed, epoch=epoch, drop_last=drop_last)
        n_batches = len(loader)
        if recipe.max_batches_per_epoch is not None:
            n_batches = min(n_batches, recipe.max_batches_per_epoch)
        gen = _augment_generator(seed, epoch)
        batches: Iterable[Any] = loader
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(loader, total=n_batches, desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False)

        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for batch, (x, y) in enumerate(batches):
            if batch >= n_batches:
                break
            check_stop()  # a SIGTERM whose KeyboardInterrupt was swallowed (nasforge.signals)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if augment:
                x = augment_batch(x, generator=gen, crop_padding=recipe.crop_padding, flip=recipe.flip, cutout=recipe.cutout)
            optimizer.zero_grad(set_to_none=True)
            logits, aux = _logits_and_aux(model(x))
            loss = criterion(logits, y)
            if aux is not None and recipe.auxiliary_weight > 0:
                loss = loss + recipe.auxiliary_weight * criterion(aux, y)
            loss_value = float(loss.detach())  # one host sync per batch, needed to name the batch
            if not math.isfinite(loss_value):
                where = f"; the last good checkpoint is {ckpt_path}" if ckpt_path is not None and ckpt_path.exists() else ""
                raise TrainingDivergedError(
                    f"training diverged: loss is {loss_value} at epoch {epoch} batch {batch} "
                    f"(lr {lr:g}){where}; try a smaller lr or grad_clip"
                )
            loss.backward()
            if recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            n = int(y.numel())
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(1) == y).sum()
            seen += n
        if progress:
            batches.close()  # type: ignore[attr-defined]
        scheduler.step()

        record: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": float(loss_sum) / max(seen, 1),
            "train_acc": 100.0 * float(correct) / max(seen, 1),
            "eval_loss": None,
            "eval_acc": None,
        }
        if eval_set is not None:
            metrics = evaluate(model, eval_set, batch_size=recipe.eval_batch_size, device=device)
            record["eval_loss"], record["eval_acc"] = metrics["loss"], metrics["acc"]
        record["seconds"] = time.perf_counter() - epoch_start
        history.append(record)

        last = epoch == recipe.epochs - 1
        if ckpt_path is not None and ((epoch + 1) % checkpoint_every == 0 or last):
            save_checkpoint(
                ckpt_path,
                {
                    "meta": full_meta,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": get_rng_state(),
                    "history": history,
                },
            )
        if on_epoch is not None:
            on_epoch(dict(record))

    final: dict[str, float] = {}
    if history and history[-1]["eval_loss"] is not None:
        final = {"loss": float(history[-1]["eval_loss"]), "acc": float(history[-1]["eval_acc"])}
    return TrainResult(history=history, final=final, seconds=time.perf_counter() - start, resumed_from=resumed_from)
