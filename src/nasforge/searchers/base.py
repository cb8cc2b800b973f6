"""The ask/tell contract of multi-trial searchers (Optuna style).

Call order: ``arch = searcher.ask()``, evaluate it, ``searcher.tell(arch, fitness)``; repeat.
``fitness`` is a float to *maximise* (the search loop turns the user's objective into it).

A searcher keeps no state that the study does not hold: given its seed and the sequence of
``tell`` calls it is deterministic. That is how a study resumes: the loop rebuilds the searcher
and replays each finished trial as ``ask()`` (which must return the recorded Arch) followed by
``tell(arch, fitness)``. Searchers must therefore draw all randomness from ``self.rng``.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nasforge.arch import Arch
from nasforge.spaces.base import SearchSpace


@dataclass(frozen=True)
class Result:
    """What an evaluator returns for one Arch."""

    metrics: dict[str, float]  # e.g. val_acc (%), train_acc, params, flops
    cost: float = 0.0  # what the evaluation charged: seconds of training, or table queries
    info: dict[str, Any] = field(default_factory=dict)  # free-form extras (not used for search)


class Searcher(abc.ABC):
    """Base of multi-trial searchers.

    Subclasses set ``name`` and ``paper`` and implement :meth:`ask` and :meth:`tell`.
    """

    name: ClassVar[str]
    paper: ClassVar[str]

    def __init__(self, space: SearchSpace, *, seed: int = 0) -> None:
        self.space = space
        self.seed = seed
        self.rng = random.Random(seed)

    @abc.abstractmethod
    def ask(self) -> Arch:
        """Propose the next architecture to evaluate."""

    @abc.abstractmethod
    def tell(self, arch: Arch, fitness: float) -> None:
        """Report the fitness (higher is better) of an Arch returned by :meth:`ask`."""

    @classmethod
    def options(cls) -> dict[str, Any]:
        """Method-specific keyword arguments and their defaults (for ``--help`` and configs)."""
        return {}
