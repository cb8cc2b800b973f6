"""Training from scratch: recipes (paper presets), the resumable loop, crash-safe checkpoints.

``train(model, train_set, get_recipe("nb201", epochs=5), eval_set=..., checkpoint_dir=...)``
trains a network and resumes from ``checkpoint_dir/last.pt`` if it exists; :func:`evaluate`
measures loss and accuracy.
"""

from __future__ import annotations

from nasforge.train.checkpoint import (
    FORMAT_VERSION,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from nasforge.train.recipes import RECIPES, Recipe, get_recipe
from nasforge.train.trainer import TrainingDivergedError, TrainResult, evaluate, train

__all__ = [
    "FORMAT_VERSION",
    "RECIPES",
    "Recipe",
    "TrainResult",
    "TrainingDivergedError",
    "evaluate",
    "get_recipe",
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
    "train",
]
