"""Training evaluator: build the candidate, train it from scratch for a budget, validate.

The standard multi-trial estimator (NAS-RL, NASNet, Regularized Evolution all train each
child). Every candidate starts from the same seed (common random numbers), so differences in
fitness come from the architecture, not from the initialisation lottery.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch.utils.data import Dataset

from nasforge.arch import Arch
from nasforge.errors import BudgetError
from nasforge.hardware.cost import measure
from nasforge.searchers.base import Result
from nasforge.spaces.base import SearchSpace
from nasforge.train.recipes import Recipe
from nasforge.train.trainer import evaluate, train


class TrainEvaluator:
    """``evaluator(arch, fidelity=1.0) -> Result`` with metrics val_acc (%), val_loss, train_acc (%),
    params, flops, macs.

    ``fidelity`` (multi-fidelity searchers: Hyperband, BOHB) trains ``round(epochs * fidelity)``
    epochs (at least one) with the recipe's schedule spanning those epochs, a fresh run per budget
    as in the BOHB paper's experiments (no warm start from a lower budget).
    """

    supports_fidelity = True
    METRICS = ("val_acc", "val_loss", "train_acc", "params", "flops", "macs")

    def __init__(
        self,
        space: SearchSpace,
        train_set: Dataset[Any],
        valid_set: Dataset[Any],
        *,
        recipe: Recipe,
        input_shape: tuple[int, int, int],
        num_classes: int,
        build_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        self.space, self.train_set, self.valid_set = space, train_set, valid_set
        self.recipe, self.input_shape, self.num_classes = recipe, input_shape, num_classes
        self.build_kwargs = dict(build_kwargs or {})
        self.seed, self.device = seed, device

    def build(self, arch: Arch) -> torch.nn.Module:
        torch.manual_seed(self.seed)
        return self.space.build(
            arch, num_classes=self.num_classes, in_channels=self.input_shape[0], **self.build_kwargs
        )

    def epochs_at(self, fidelity: float) -> int:
        """Epochs of a training at ``fidelity`` (a share in (0, 1] of the recipe's epochs)."""
        if not 0.0 < fidelity <= 1.0:
            raise BudgetError(f"fidelity must be in (0, 1], got {fidelity!r}")
        return max(1, round(self.recipe.epochs * fidelity))

    def __call__(self, arch: Arch, fidelity: float = 1.0) -> Result:
        start = time.perf_counter()
        recipe = self.recipe
        if fidelity != 1.0:
            recipe = dataclasses.replace(recipe, epochs=self.epochs_at(fidelity))
        net = self.build(arch)
        cost = measure(net, self.input_shape)
        # Validate once, after training: only the final accuracy is the trial's fitness, and a
        # validation pass per epoch would cost the search about a third more time.
        result = train(net, self.train_set, recipe, seed=self.seed, device=self.device)
        val = evaluate(net, self.valid_set, batch_size=recipe.eval_batch_size, device=self.device)
        metrics = {
            "val_acc": float(val["acc"]),
            "val_loss": float(val["loss"]),
            "train_acc": float(result.history[-1]["train_acc"]),
            **cost.as_dict(),
        }
        return Result(metrics=metrics, cost=time.perf_counter() - start, info={"epochs": recipe.epochs})
