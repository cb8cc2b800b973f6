"""ChamNet-style search: a Gaussian-process accuracy predictor driving constrained evolution.

Dai et al., "ChamNet: Towards Efficient Network Design through Platform-Aware Model
Adaptation", CVPR 2019 (arXiv:1812.08934). ChamNet builds a Gaussian-process (GP) accuracy
predictor from trained architectures (sampled iteratively with Bayesian optimisation) and a
resource predictor (an operator latency look-up table, or a GP for energy), then runs a
genetic algorithm over the predictors to find the architecture of highest predicted accuracy
whose predicted cost meets the constraint. No official code was released; this is an
online, ask/tell version of that loop written from the paper.

The algorithm as implemented (one *iteration* proposes ``k`` architectures):

1. The first ``num_init`` proposals are uniform samples of the space (distinct).
2. Then, whenever the queue of proposals is empty:

   a. fit the **accuracy GP** to the told trials with a finite fitness: one-hot encoding
      (``encoding``; ``"path"`` is also accepted, see :mod:`nasforge.searchers._encodings`),
      kernel ``Constant * Matern(nu=2.5) + White`` on normalised targets, hyper-parameters by
      maximum marginal likelihood (scikit-learn, one L-BFGS-B run from the default
      hyper-parameters, ``random_state`` drawn from ``self.rng``;
      :func:`nasforge.searchers._surrogates.fit_gp`);
   b. if ``cost_limit`` is set, fit the **cost GP** (same kernel) to ``log(cost)`` of every
      told trial whose metrics carry ``cost_metric`` (failed trials too: their cost was still
      measured). ChamNet reads latency from a look-up table; a searcher only sees the metrics
      it is told, so the cost of an unevaluated architecture is predicted (its posterior mean)
      and a told architecture uses its measured cost. An architecture is *feasible* when that
      cost is ``<= cost_limit``. With ``cost_limit=None`` every architecture is feasible (and no
      cost is read);
   c. run the **genetic algorithm** on the predictor: the initial population holds the best
      told architectures (up to half of ``population_size``) and uniform samples for the rest;
      each of ``generations`` generations keeps the top ``parent_fraction`` of the population
      as parents (ranked feasible first, then by score) and breeds ``population_size``
      children, each by uniform crossover of two distinct parents with probability
      ``crossover_prob`` (a decision from either parent with equal chance; an invalid or
      parent-identical child is mutated instead) or by mutation of one parent
      (``space.mutate``: one decision changed); the next population is the best
      ``population_size`` of parents and children (elitist);
   d. queue the ``k`` best-ranked architectures among all those the GA scored that were never
      proposed (feasible first, then by score; topped up with uniform unseen samples if fewer).

   The GA itself is :func:`nasforge.searchers._genetic.genetic_search` (shared with the
   ChamNet method, :mod:`nasforge.methods.chamnet`).

The score is the acquisition on the accuracy GP's posterior ``N(mean, std)``: ``"mean"``
(default: ChamNet's GA maximises the predicted accuracy), ``"ei"`` (expected improvement over
the best told fitness: the criterion of the BO sampling ChamNet builds its predictor with) or
``"ucb"`` (``mean + 2 * std``).

``required_metrics()`` is ``(cost_metric,)`` when a ``cost_limit`` is set, else empty.

Defaults and their sources: GP with a Matern kernel and marginal-likelihood fitting: the
paper's predictor. ``num_init=10`` and ``k=10``: not given by the paper for this setting; set
equal to BANANAS's so that the two predictor-based searchers share a protocol.
``population_size=100``, ``generations=10``, ``parent_fraction=0.25``, ``crossover_prob=0.5``:
the paper does not list its GA's settings; these are conventional values chosen so that one
iteration scores a few thousand architectures in tens of milliseconds.
``cost_metric="params"``, ``cost_limit=None``: the search is unconstrained unless asked.

Deviations from the paper:

* Online: the predictor is refitted every ``k`` proposals from the told trials, and the GA's
  proposals are themselves the next training points (ChamNet builds its predictor once, then
  searches it).
* The cost is predicted by a GP on the told metrics instead of a latency look-up table, and
  the constraint is a hard limit on the predicted cost (the GA ranks feasible first).
* Architectures are one-hot encoded (ChamNet's spaces are vectors of numeric block
  hyper-parameters, used directly).
* Failed trials (fitness ``-inf`` or NaN) are left out of the accuracy GP (documented
  choice); they still count as proposed, so they are not proposed again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError, check_float, check_int, check_probability
from nasforge.registry import register
from nasforge.searchers._batches import BatchProposer, EncodingCache, sample_unseen
from nasforge.searchers._encodings import check_encoding
from nasforge.searchers._genetic import crossover, genetic_search
from nasforge.searchers._surrogates import expected_improvement, fit_gp, single_threaded_blas
from nasforge.searchers.base import Searcher
from nasforge.spaces.base import SearchSpace

__all__ = ["GPEvolution", "crossover"]  # crossover lives in _genetic; kept importable from here

ACQUISITIONS: tuple[str, ...] = ("mean", "ei", "ucb")
UCB_BETA = 2.0


@register("method", "gp_evolution")
class GPEvolution(Searcher):
    name: ClassVar[str] = "gp_evolution"
    paper: ClassVar[str] = (
        "Dai et al., ChamNet: Towards Efficient Network Design through Platform-Aware Model Adaptation, CVPR 2019"
    )
    no_repeats: ClassVar[bool] = True
    smoke_options: ClassVar[dict[str, Any]] = {"num_init": 4, "k": 4, "population_size": 12, "generations": 2}

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, num_init: int = 10, k: int = 10, population_size: int = 100,
        generations: int = 10, parent_fraction: float = 0.25, crossover_prob: float = 0.5,
        acquisition: str = "mean", cost_metric: str = "params", cost_limit: float | None = None,
        encoding: str = "onehot",
    ) -> None:
        super().__init__(space, seed=seed)
        self.num_init = check_int("num_init", num_init)
        self.k = check_int("k", k)
        self.population_size = check_int("population_size", population_size)
        self.generations = check_int("generations", generations)
        self.parent_fraction = check_probability("parent_fraction", parent_fraction, low_open=True)
        self.crossover_prob = check_probability("crossover_prob", crossover_prob)
        if acquisition not in ACQUISITIONS:
            raise ConfigError(f"acquisition must be one of {', '.join(ACQUISITIONS)}, got {acquisition!r}")
        self.acquisition = acquisition
        if not isinstance(cost_metric, str) or not cost_metric:
            raise ConfigError(f"cost_metric must be a metric name (e.g. 'params', 'flops'), got {cost_metric!r}")
        self.cost_metric = cost_metric
        self.cost_limit = None if cost_limit is None else check_float("cost_limit", cost_limit, low=0.0, low_open=True)
        check_encoding(encoding)
        self.encoding = encoding
        self.batches = BatchProposer(space, self.rng, self.num_init)
        self.proposed = self.batches.proposed  # every architecture asked (or told), never proposed again
        self.history: list[tuple[Arch, float]] = []  # told (arch, fitness), in order
        self.costs: dict[Arch, float] = {}  # told measured costs
        self.fits = 0  # predictor fits so far (one per iteration)
        self._code = EncodingCache(space, encoding)

    @classmethod
    def options(cls) -> dict[str, Any]:
        # see the module docstring for where each default comes from
        return {
            "num_init": 10, "k": 10, "population_size": 100, "generations": 10, "parent_fraction": 0.25,
            "crossover_prob": 0.5, "acquisition": "mean", "cost_metric": "params", "cost_limit": None,
            "encoding": "onehot",
        }

    def required_metrics(self) -> tuple[str, ...]:
        return () if self.cost_limit is None else (self.cost_metric,)

    # ---- ask / tell -----------------------------------------------------------------------
    def ask(self) -> Arch:
        return self.batches.ask(self._next_batch)

    @property
    def queue(self) -> list[Arch]:
        """This iteration's remaining proposals."""
        return self.batches.queue

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        self.batches.told(arch)
        self.history.append((arch, float(fitness)))
        if self.cost_limit is not None and metrics is not None and self.cost_metric in metrics:
            cost = float(metrics[self.cost_metric])
            if math.isfinite(cost):
                self.costs[arch] = cost

    # ---- predictors ----------------------------------------------------------------------
    def _encode(self, archs: list[Arch]) -> np.ndarray:
        return np.stack([self._code(a) for a in archs])

    def training_set(self) -> list[tuple[Arch, float]]:
        """The told trials the accuracy GP learns from: those with a finite fitness."""
        return [(a, f) for a, f in self.history if math.isfinite(f)]

    def _scorer(self, data: list[tuple[Arch, float]], seed: int) -> Any:
        """``score(archs) -> (feasible bool array, score array)`` from GPs fitted with ``seed``."""
        acc_gp = fit_gp(self._encode([a for a, _ in data]), np.array([f for _, f in data]), random_state=seed)
        best = max(f for _, f in data)
        cost_gp = None
        log_cost = False
        if self.cost_limit is not None and self.costs:
            told = list(self.costs)
            values = np.array([self.costs[a] for a in told])
            log_cost = bool(np.all(values > 0))
            target = np.log(values) if log_cost else values
            cost_gp = fit_gp(self._encode(told), target, random_state=seed)

        def score(archs: list[Arch]) -> tuple[np.ndarray, np.ndarray]:
            x = self._encode(archs)
            mean, std = acc_gp.predict(x, return_std=True)
            if self.acquisition == "mean":
                s = mean
            elif self.acquisition == "ucb":
                s = mean + UCB_BETA * std
            else:
                s = expected_improvement(mean, std, best)
            feasible = np.ones(len(archs), dtype=bool)
            if self.cost_limit is not None:
                # measured cost when told, else the cost GP's prediction; unknown (no cost told yet): feasible
                cost = np.full(len(archs), -math.inf)
                if cost_gp is not None:
                    pred = cost_gp.predict(x)
                    cost = np.exp(pred) if log_cost else pred
                for i, a in enumerate(archs):
                    if a in self.costs:
                        cost[i] = self.costs[a]
                feasible = cost <= self.cost_limit
            return feasible, np.asarray(s, dtype=np.float64)

        return score

    def predicted_cost_feasible(self, archs: list[Arch]) -> np.ndarray:
        """Feasibility of ``archs`` under the told costs (fits the GPs afresh, without touching
        ``self.rng``: for inspection and tests)."""
        with single_threaded_blas():
            return np.asarray(self._scorer(self.training_set(), 0)(archs)[0])

    # ---- one iteration -------------------------------------------------------------------
    def evolve(self, data: list[tuple[Arch, float]]) -> tuple[list[Arch], dict[Arch, tuple[bool, float]]]:
        """The GA of step 2c (:func:`nasforge.searchers._genetic.genetic_search`); returns every
        architecture it scored, ranked, and their ``(feasible, score)``."""
        score = self._scorer(data, self.rng.getrandbits(31))
        told = [a for a, _ in sorted(data, key=lambda t: -t[1])][: self.population_size // 2]
        return genetic_search(
            self.space, score, self.rng, seeds=told, population_size=self.population_size,
            generations=self.generations, parent_fraction=self.parent_fraction, crossover_prob=self.crossover_prob,
        )

    def _next_batch(self) -> list[Arch]:
        self._code.keep_only({a for a, _ in self.history})  # the last iteration's candidates go
        data = self.training_set()
        if len(data) < 2:  # a GP needs data to rank anything: sample
            return [sample_unseen(self.space, self.rng, self.proposed)]
        with single_threaded_blas():
            ranked, _ = self.evolve(data)
        self.fits += 1
        batch = [a for a in ranked if a not in self.proposed][: self.k]
        seen = self.proposed | set(batch)
        while len(batch) < self.k:
            try:
                extra = sample_unseen(self.space, self.rng, seen)
            except BudgetError:
                break
            batch.append(extra)
            seen.add(extra)
        if not batch:
            raise BudgetError(f"every architecture of {self.space.name} has been proposed")
        return batch
