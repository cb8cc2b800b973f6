"""Training recipes: every hyper-parameter of a from-scratch training run in one frozen record.

The presets reproduce the papers' published settings:

* ``"nb201"`` — NAS-Bench-201 (Dong & Yang, ICLR 2020; ``D-X-Y/AutoDL-Projects``,
  ``configs/nas-benchmark/hyper-opts/200E.config``): SGD with Nesterov momentum 0.9, learning
  rate 0.1 annealed by a cosine to 0, weight decay 5e-4, batch 256, 200 epochs, random crop
  (padding 4) and horizontal flip.
* ``"darts"`` — the DARTS retraining of the final cell network (Liu et al., ICLR 2019;
  ``quark0/darts`` ``cnn/train.py``): SGD momentum 0.9 (no Nesterov), learning rate 0.025 cosine
  to 0, weight decay 3e-4, batch 96, 600 epochs, cutout 16, auxiliary head weight 0.4, drop-path
  probability raised linearly from 0 to 0.2 over the epochs, gradient-norm clip 5, crop + flip.
* ``"quick"`` — a short run for small data (the built-in 8x8 digits, smoke tests): learning
  rate 0.05 with Nesterov, weight decay 5e-4, batch 64, 10 epochs, no augmentation.

Use :func:`get_recipe` with keyword overrides (``get_recipe("darts", epochs=20)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nasforge.errors import BudgetError, ConfigError, UnknownNameError


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one training run (see the module docstring for the presets).

    Raises:
        BudgetError: a non-positive epoch count, batch size or batch cap.
        ConfigError: any other value outside its valid range.
    """

    epochs: int = 10  # full passes over the training set; the cosine schedule spans them all
    batch_size: int = 64  # training mini-batch size
    lr: float = 0.05  # initial learning rate of SGD
    lr_min: float = 0.0  # learning rate reached at the end of the cosine schedule (eta_min)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # Nesterov momentum (NB201 uses it, DARTS does not)
    weight_decay: float = 5e-4  # L2 penalty applied by SGD to every parameter, as both papers do
    label_smoothing: float = 0.0  # smoothing of the cross-entropy targets (0 = plain CE)
    crop_padding: int = 0  # random-crop padding in pixels (0 = no cropping; CIFAR recipes use 4)
    flip: bool = False  # random horizontal flips
    cutout: int = 0  # side of the cutout square (DeVries & Taylor 2017; 0 = off, DARTS uses 16)
    auxiliary_weight: float = 0.0  # weight of the auxiliary-head loss when the net returns (logits, aux)
    drop_path_prob: float = 0.0  # final drop-path probability, reached linearly over the epochs (DARTS)
    grad_clip: float | None = None  # max global gradient norm (None = no clipping; DARTS uses 5)
    max_batches_per_epoch: int | None = None  # budget cap on batches per epoch (None = full epoch)
    eval_batch_size: int = 256  # batch size of evaluation passes (memory only, not results)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            _require_int(name, getattr(self, name), budget=True)
        if self.max_batches_per_epoch is not None:
            _require_int("max_batches_per_epoch", self.max_batches_per_epoch, budget=True)
        for name in ("crop_padding", "cutout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
        for name in ("nesterov", "flip"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not _is_real(self.lr) or not self.lr > 0:
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not _is_real(self.lr_min) or not 0 <= self.lr_min <= self.lr:
            raise ConfigError(f"lr_min must be in [0, lr={self.lr}], got {self.lr_min!r}")
        _require_range("momentum", self.momentum, 0.0, 1.0, upper_open=True)
        _require_range("label_smoothing", self.label_smoothing, 0.0, 1.0, upper_open=False)
        _require_range("drop_path_prob", self.drop_path_prob, 0.0, 1.0, upper_open=False)
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not _is_real(self.auxiliary_weight) or self.auxiliary_weight < 0:
            raise ConfigError(f"auxiliary_weight must be a number >= 0, got {self.auxiliary_weight!r}")
        if self.grad_clip is not None and (not _is_real(self.grad_clip) or not self.grad_clip > 0):
            raise ConfigError(f"grad_clip must be a number > 0 or None, got {self.grad_clip!r}")
        if self.nesterov and self.momentum == 0:
            # torch.optim.SGD refuses this combination; say so before a run starts.
            raise ConfigError("nesterov=True needs momentum > 0, got momentum=0")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict of every field (inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recipe:
        """Recipe from a dict; missing fields take the defaults.

        Raises:
            ConfigError: an unknown key (the message lists the valid fields) or a bad value.
        """
        _check_fields(d)
        return cls(**dict(d))


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_int(name: str, value: object, *, budget: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise (BudgetError if budget else ConfigError)(f"{name} must be > 0, got {value!r}")


def _require_range(name: str, value: object, lo: float, hi: float, *, upper_open: bool) -> None:
    if _is_real(value):
        v = float(value)  # type: ignore[arg-type]
        if lo <= v and (v < hi if upper_open else v <= hi):
            return
    bracket = ")" if upper_open else "]"
    raise ConfigError(f"{name} must be in [{lo}, {hi}{bracket}, got {value!r}")


def _check_fields(d: Mapping[str, Any]) -> None:
    fields = [f.name for f in dataclasses.fields(Recipe)]
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"unknown recipe field(s) {unknown}; valid: {', '.join(fields)}")


RECIPES: dict[str, Recipe] = {
    # Dong & Yang 2020, NAS-Bench-201 training of every cell (AutoDL-Projects 200E.config).
    "nb201": Recipe(
        epochs=200, batch_size=256, lr=0.1, lr_min=0.0, momentum=0.9, nesterov=True,
        weight_decay=5e-4, crop_padding=4, flip=True,
    ),
    # Liu et al. 2019, DARTS cnn/train.py defaults for retraining the discovered cell.
    "darts": Recipe(
        epochs=600, batch_size=96, lr=0.025, lr_min=0.0, momentum=0.9, nesterov=False,
        weight_decay=3e-4, crop_padding=4, flip=True, cutout=16, auxiliary_weight=0.4,
        drop_path_prob=0.2, grad_clip=5.0,
    ),
    # Small data (8x8 digits) and smoke tests: a few epochs, no augmentation.
    "quick": Recipe(
        epochs=10, batch_size=64, lr=0.05, lr_min=0.0, momentum=0.9, nesterov=True, weight_decay=5e-4,
    ),
}


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """The preset ``name`` with some fields replaced (validated again).

    Args:
        name: one of :data:`RECIPES` (``"nb201"``, ``"darts"``, ``"quick"``).
        **overrides: field values to change, e.g. ``epochs=5``.

    Raises:
        UnknownNameError: ``name`` is not a preset (the message lists them).
        ConfigError: an override names no field (the message lists the fields) or a bad value.
        BudgetError: an override sets a non-positive budget.
    """
    if name not in RECIPES:
        raise UnknownNameError("recipe", name, sorted(RECIPES))
    _check_fields(overrides)
    return dataclasses.replace(RECIPES[name], **overrides)
