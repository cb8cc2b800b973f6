"""BANANAS: Bayesian optimisation with an ensemble of neural predictors on the path encoding.

White, Neiswanger & Savani, "BANANAS: Bayesian Optimization with Neural Architectures for
Neural Architecture Search", AAAI 2021 (arXiv:1910.11858). Reference implementation:
``naszilla/bananas`` (``nas_algorithms.bananas``, ``meta_neural_net.py``,
``acquisition_functions.py``, ``data.get_candidates``, ``params.py``); NASLib's
``optimizers/discrete/bananas`` is a second one.

The algorithm as implemented (one *iteration* proposes ``k`` architectures):

1. The first ``num_init`` proposals are uniform samples of the space (distinct).
2. Then, whenever the queue of proposals is empty:

   a. encode every told architecture with a finite fitness (the path encoding where the space
      has one, nb201 and darts; one-hot otherwise: see :mod:`nasforge.searchers._encodings`);
   b. train an ensemble of ``num_ensemble`` feed-forward nets (``num_layers`` hidden layers
      of ``layer_width`` ReLU units, Adam with learning rate ``lr``, mean absolute error,
      ``epochs`` passes in mini-batches of ``batch_size``; each member from its own random
      initialisation; :class:`nasforge.searchers._surrogates.MLPEnsemble`) to predict the
      fitness from the encoding;
   c. build the candidate pool by *mutation*: go through the told architectures from the best
      down (at most ``num_arches_to_mutate * patience_factor`` of them) and draw
      ``num_candidates // num_arches_to_mutate`` mutations (``space.mutate``: one decision
      changed) of each, keeping those never proposed before and not yet in the pool, until the
      pool holds at least ``num_candidates`` (reference ``get_candidates``: the size is checked
      between parents, so it may end a little larger);
   d. score the pool with the acquisition function on the ensemble's predictions
      (``acquisition``): ``"its"`` independent Thompson sampling, the paper's choice: one draw
      per candidate from ``N(mean, std)`` of the members' predictions; ``"ei"`` expected
      improvement over the best told fitness with the ensemble mean and std as a Gaussian;
      ``"ucb"`` ``mean + 0.5 * std`` (the reference's ``explore_factor``);
   e. queue the ``k`` best-scoring candidates; the next ``k`` asks return them in that order.

So the ensemble is retrained once per ``k`` proposals, on the trials told by then (asks that
run ahead of tells are fine: the model uses what has been told). Proposals are never repeated
(``no_repeats``): the pool excludes every architecture proposed before.

Defaults and their sources: ``num_init=10``, ``k=10``, ``num_ensemble=5``,
``acquisition="its"``, mutation acquisition optimisation, ``num_candidates=100``,
``num_arches_to_mutate=1``, ``patience_factor=5``: the reference's ``bananas(...)`` and
``get_candidates(...)`` signatures, matching the paper's Section 5 setup. Net: ``num_layers=10``,
``layer_width=20``, ``lr=0.01``, ``batch_size=32``, MAE loss: the paper and the reference's
``params.py`` (``meta_neuralnet_params`` for ``nasbench_201``); ``epochs=150``: that same
entry (the ``MetaNeuralnet.fit`` default is 200). Adam's ``beta2=0.99`` and ``epsilon=1e-7``
are the reference's Keras settings.

Deviations from the paper / reference:

* Path encoding of NB201: a path that crosses a ``none`` edge does not exist (the paper's
  definition), so the encoding has 84 features and a cell without any input -> output path is
  all zeros; the reference code treats ``none`` as an op name (155 features). No truncation
  (the reference's ``trunc_path`` with ``cutoff=40`` is for NAS-Bench-101, whose full encoding
  is much longer); the DARTS encoding is the full 11,200-feature one.
* Mutations change exactly one decision (``space.mutate``; NASLib's NB201 mutation); the
  reference's NB201 mutation changes each of the 6 ops with probability 1/4 and may return
  the parent unchanged (then filtered as a duplicate).
* Failed trials (fitness ``-inf`` or NaN) are left out of the predictor's training set (the
  reference has no failures); they still count as proposed, so they are not proposed again.
  If no trial has a finite fitness yet, the next proposal is a uniform sample.
* Targets are standardised before training (the reference trains on the raw validation loss
  in percent); this keeps ``lr=0.01`` meaningful for any fitness scale.
* EI uses the ensemble's std as is (the reference divides it by an ``ei_calibration_factor``
  of 5; ITS, the default, uses it as is in both).
* If the mutation pool holds fewer than ``k`` architectures (a tiny space, or neighbourhoods
  of the best ones all evaluated), it is topped up with uniform samples never proposed.
* The nets are trained in numpy (:mod:`nasforge.searchers._surrogates` says why), seeded from
  ``self.rng``; the reference uses Keras.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError, check_float, check_int
from nasforge.registry import register
from nasforge.searchers._batches import BatchProposer, EncodingCache, sample_unseen
from nasforge.searchers._encodings import check_encoding
from nasforge.searchers._surrogates import MLPEnsemble, expected_improvement, single_threaded_blas
from nasforge.searchers.base import Searcher
from nasforge.spaces.base import SearchSpace

ACQUISITIONS: tuple[str, ...] = ("its", "ei", "ucb")
UCB_EXPLORE = 0.5  # the reference's explore_factor


def acquisition_scores(
    predictions: np.ndarray, kind: str, *, best: float, rng: np.random.Generator,
) -> np.ndarray:
    """Acquisition values (higher is better) of candidates from ensemble ``predictions``
    ``[members, candidates]`` of a fitness to maximise.

    ``"its"``: one draw per candidate from ``N(mean, std)`` (independent Thompson sampling);
    ``"ei"``: ``E[max(f - best, 0)]`` for ``f ~ N(mean, std)``; ``"ucb"``: ``mean + 0.5 * std``.
    ``std`` is the members' population standard deviation.
    """
    mean = predictions.mean(axis=0)
    std = predictions.std(axis=0)
    if kind == "its":
        return np.asarray(rng.normal(mean, std), dtype=np.float64)
    if kind == "ei":
        return expected_improvement(mean, std, best)
    if kind == "ucb":
        return np.asarray(mean + UCB_EXPLORE * std, dtype=np.float64)
    raise ConfigError(f"acquisition must be one of {', '.join(ACQUISITIONS)}, got {kind!r}")


@register("method", "bananas")
class Bananas(Searcher):
    name: ClassVar[str] = "bananas"
    paper: ClassVar[str] = (
        "White, Neiswanger & Savani, BANANAS: Bayesian Optimization with Neural Architectures for "
        "Neural Architecture Search, AAAI 2021"
    )
    no_repeats: ClassVar[bool] = True
    smoke_options: ClassVar[dict[str, Any]] = {
        "num_init": 4, "k": 4, "num_ensemble": 2, "num_layers": 2, "layer_width": 8, "epochs": 3,
        "num_candidates": 20,
    }

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, num_init: int = 10, k: int = 10, num_ensemble: int = 5,
        num_layers: int = 10, layer_width: int = 20, lr: float = 0.01, epochs: int = 150, batch_size: int = 32,
        num_candidates: int = 100, num_arches_to_mutate: int = 1, patience_factor: int = 5,
        acquisition: str = "its", encoding: str = "path",
    ) -> None:
        super().__init__(space, seed=seed)
        self.num_init = check_int("num_init", num_init)
        self.k = check_int("k", k)
        self.num_ensemble = check_int("num_ensemble", num_ensemble)
        self.num_layers = check_int("num_layers", num_layers)
        self.layer_width = check_int("layer_width", layer_width)
        self.epochs = check_int("epochs", epochs)
        self.batch_size = check_int("batch_size", batch_size)
        self.num_candidates = check_int("num_candidates", num_candidates)
        self.num_arches_to_mutate = check_int("num_arches_to_mutate", num_arches_to_mutate)
        self.patience_factor = check_int("patience_factor", patience_factor)
        if self.num_arches_to_mutate > self.num_candidates:
            raise BudgetError(
                f"num_arches_to_mutate must be in [1, num_candidates={num_candidates}], got {num_arches_to_mutate}"
            )
        self.lr = check_float("lr", lr, low=0.0, low_open=True)
        if acquisition not in ACQUISITIONS:
            raise ConfigError(f"acquisition must be one of {', '.join(ACQUISITIONS)}, got {acquisition!r}")
        self.acquisition = acquisition
        check_encoding(encoding)
        self.encoding = encoding
        self.batches = BatchProposer(space, self.rng, self.num_init)
        self.proposed = self.batches.proposed  # every architecture asked (or told), never proposed again
        self.history: list[tuple[Arch, float]] = []  # told trials, in order
        self.fits = 0  # ensemble trainings so far (one per iteration)
        self._code = EncodingCache(space, encoding)

    @classmethod
    def options(cls) -> dict[str, Any]:
        # reference bananas()/get_candidates()/params.py (nasbench_201 entry); see the module docstring
        return {
            "num_init": 10, "k": 10, "num_ensemble": 5, "num_layers": 10, "layer_width": 20, "lr": 0.01,
            "epochs": 150, "batch_size": 32, "num_candidates": 100, "num_arches_to_mutate": 1,
            "patience_factor": 5, "acquisition": "its", "encoding": "path",
        }

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

    # ---- one iteration -------------------------------------------------------------------
    def training_set(self) -> list[tuple[Arch, float]]:
        """The told trials the predictor learns from: those with a finite fitness."""
        return [(a, f) for a, f in self.history if math.isfinite(f)]

    def candidates(self, data: list[tuple[Arch, float]]) -> list[Arch]:
        """The mutation pool of step 2c (module docstring) from the finite told trials ``data``."""
        ranked = [a for a, _ in sorted(data, key=lambda t: -t[1])]  # stable: ties in tell order
        parents = ranked[: self.num_arches_to_mutate * self.patience_factor]
        seen = set(self.proposed)
        pool: list[Arch] = []
        per_parent = self.num_candidates // self.num_arches_to_mutate
        for parent in parents:
            if len(pool) >= self.num_candidates:
                break
            for _ in range(per_parent):
                child = self.space.mutate(parent, self.rng)
                if child not in seen:
                    seen.add(child)
                    pool.append(child)
        while len(pool) < self.k:
            try:
                child = sample_unseen(self.space, self.rng, seen)
            except BudgetError:
                break
            seen.add(child)
            pool.append(child)
        return pool

    def _next_batch(self) -> list[Arch]:
        self._code.keep_only({a for a, _ in self.history})  # the last iteration's candidates go
        data = self.training_set()
        if not data:  # nothing to learn from yet (every trial failed)
            return [sample_unseen(self.space, self.rng, self.proposed)]
        pool = self.candidates(data)
        if not pool:
            raise BudgetError(f"every architecture of {self.space.name} has been proposed")
        x = np.stack([self._code(a) for a, _ in data])
        y = np.array([f for _, f in data], dtype=np.float64)
        np_rng = np.random.default_rng(self.rng.getrandbits(63))
        ensemble = MLPEnsemble(
            x.shape[1], members=self.num_ensemble, layers=self.num_layers, width=self.layer_width, lr=self.lr,
            epochs=self.epochs, batch_size=self.batch_size, rng=np_rng,
        )
        with single_threaded_blas():
            ensemble.fit(x, y)
            predictions = ensemble.predict(np.stack([self._code(a) for a in pool]))
        self.fits += 1
        scores = acquisition_scores(predictions, self.acquisition, best=float(y.max()), rng=np_rng)
        order = np.argsort(-scores, kind="stable")
        return [pool[i] for i in order[: self.k]]
