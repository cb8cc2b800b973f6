"""The ask/tell contract of multi-trial searchers (Optuna style).

Call order, for each trial::

    arch = searcher.ask()              # the next architecture to evaluate
    f = searcher.fidelity()            # the share of the full evaluation budget for it (1.0 by default)
    result = evaluator(arch)           # trained for f * epochs, looked up, scored ...
    searcher.tell(arch, fitness, result.metrics)

``fitness`` is a float to *maximise* (the search loop turns the user's objective into it and
gives ``-inf`` to a trial that failed or broke a constraint); ``metrics`` is everything the
evaluator and the cost model measured (accuracies, params, flops, latencies), for searchers
whose reward uses more than the fitness (MnasNet's ACC x (LAT/T)^w, NSGA-II's objectives).

A searcher keeps no state that the study does not hold: given its seed and the sequence of
``tell`` calls it is deterministic. That is how a study resumes: the loop rebuilds the searcher
and replays each finished trial as ``ask()`` (which must return the recorded Arch, at the
recorded fidelity) followed by ``tell(arch, fitness, metrics)``. Searchers therefore draw all
randomness from ``self.rng`` (or from a ``torch.Generator`` seeded from it, see
:func:`torch_generator`), and learned models (controllers, predictors) are refitted from the
told trials, never kept in a side file.

Class attributes a searcher sets to tell the loop and the conformance suite what it is:

* ``no_repeats``: it never proposes an architecture it proposed before (until the space is
  exhausted, when it may say so with :class:`~nasforge.errors.BudgetError`);
* ``multi_fidelity``: it asks for reduced budgets (Hyperband, BOHB); the loop builds it with
  ``min_fidelity=1.0`` for evaluators without a budget knob (the table, proxies);
* ``multi_objective``: it takes ``objectives`` (a tuple of ``(metric, sign)``) from the loop and
  reads them from ``metrics`` (NSGA-II);
* ``uses_fitness``: False for a searcher that learns from its own reward computed from the
  metrics (MnasNet's ACC x (LAT/T)^w): the loop then refuses ``--objective`` settings it would ignore;
* ``concurrent_asks``: False for a searcher that needs each proposal's result before the next
  ask (successive halving fills its rungs in order); several workers of a study then run its
  trials one at a time. True (the default) lets workers hold several proposals at once, told
  in any order, as the asynchronous searches of the papers did (Regularized Evolution, NAS-RL);
* ``smoke_options``: small settings for fast smoke runs (tests, ``nasforge bench strategies --smoke``).
"""

from __future__ import annotations

import abc
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from nasforge.arch import Arch
from nasforge.spaces.base import SearchSpace

if TYPE_CHECKING:
    import torch


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
    no_repeats: ClassVar[bool] = False
    multi_fidelity: ClassVar[bool] = False
    multi_objective: ClassVar[bool] = False
    uses_fitness: ClassVar[bool] = True
    concurrent_asks: ClassVar[bool] = True
    smoke_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, space: SearchSpace, *, seed: int = 0) -> None:
        self.check_space(space)
        self.space = space
        self.seed = seed
        self.rng = random.Random(seed)

    @classmethod  # noqa: B027 (an optional hook, not abstract)
    def check_space(cls, space: SearchSpace) -> None:
        """Raise :class:`~nasforge.errors.ConfigError` if this method cannot search ``space``
        (say why and which spaces it supports). The default accepts every space."""

    @abc.abstractmethod
    def ask(self) -> Arch:
        """Propose the next architecture to evaluate."""

    def fidelity(self) -> float:
        """Share in (0, 1] of the full evaluation budget at which the last ``ask()`` is evaluated."""
        return 1.0

    @abc.abstractmethod
    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        """Report the fitness (higher is better; ``-inf`` for a failed or infeasible trial) and
        the measured metrics of an Arch returned by :meth:`ask`."""

    def required_metrics(self) -> tuple[str, ...]:
        """Metrics besides the fitness that :meth:`tell` reads (the loop checks the evaluator or
        the cost model provides them before the search starts)."""
        return ()

    @classmethod
    def options(cls) -> dict[str, Any]:
        """Method-specific keyword arguments and their defaults (for ``--help`` and configs)."""
        return {}


def torch_generator(rng: random.Random) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``rng``: torch randomness that replays with the searcher."""
    import torch

    return torch.Generator().manual_seed(rng.getrandbits(63))
