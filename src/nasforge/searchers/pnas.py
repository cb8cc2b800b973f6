"""Progressive Neural Architecture Search (PNAS): a beam search in order of complexity, ranked by a surrogate.

Liu, Zoph, Neumann, Shlens, Hua, Li, Fei-Fei, Yuille, Huang & Murphy, "Progressive Neural
Architecture Search", ECCV 2018, Algorithm 1. There is no official code; the unofficial
``titu1994/progressive-neural-architecture-search`` was read to understand it, nothing is copied.

The paper grows cells one block at a time. Here a space states its order of complexity with
:meth:`~nasforge.spaces.base.SearchSpace.complexity_stages`: stage ``b`` fixes some decisions,
and the decisions of later stages take the space's *filler* options, so a structure grown up to
stage ``b`` is a complete, valid, smaller architecture of the space (nb201: the cell truncated
after intermediate node ``b``; mobilenet: ``b`` layers per network stage, the rest ``skip``).
Spaces without such an order (darts) are refused by :meth:`PNAS.check_space`.

Algorithm 1 as implemented (``K`` = ``beam_size``):

1. ``S_1``: every structure of stage 1 (all of them if there are at most ``K``, as the paper
   trains all 136 one-block cells; else ``K`` uniform samples, as the surrogate knows nothing
   yet), proposed in a random order.
2. When every structure of the current stage ``S_b`` has been proposed: fit the surrogate on all
   told trials; expand every structure of ``S_b`` by all options of stage ``b + 1``'s decisions
   (``expand-cell``); rank the expansions never proposed before by the surrogate's prediction
   and propose the top ``K`` (``S_{b+1}``). Repeat until the last stage.
3. After the last stage, while the budget lasts (the loop decides; the paper stops): refit the
   surrogate and propose the ``K`` best-predicted unproposed expansions of the last stage's
   parents (the complete architectures that grow from ``S_{B-1}``), again and again. When that
   pool is used up it becomes ``max_candidates`` uniform samples of the space.

Every structure of a stage is expanded, the failed ones too (Algorithm 1 expands all of
``S_{b-1}``); a failed trial (fitness ``-inf``) is a surrogate training point at the worst told
fitness. Ties in the ranking go to the earlier candidate in enumeration order.

The surrogate (the paper's MLP-ensemble predictor, on one-hot features): ``ensemble_size`` = 5
MLPs, each trained on a different 4/5 of the told trials (the paper's ensemble of 5 predictors,
each trained on 4/5 of the data); each MLP has two hidden ReLU layers of ``hidden`` = 100 units
(the paper's predictor size); the input is ``space.encode_onehot`` of the complete architecture;
targets are the told fitness standardised (mean 0, std 1); the loss is L1 (as in the paper);
``epochs`` = 100 full-batch Adam steps at learning rate ``lr`` = 0.01; weights are drawn from a
``torch.Generator`` seeded from ``self.rng`` (PyTorch's default uniform fan-in range). The
prediction is the ensemble mean.

Defaults: the paper's beam ``K = 256`` serves 1,160 trained models over 5 blocks; for the
150-query benchmark runs ``beam_size`` is 32 (nb201: 5 + 32 + 32 = 69 models reach the full
cell, and the other 81 queries continue step 3 over the 4,000 expansions of the 32 two-node
cells). Chosen on the NB201 table (CIFAR-10 test accuracy of the best-by-validation cell after
150 queries, seeds 0-19): K = 10: 94.05, 20: 94.00, 32: 94.27, 64: 93.83 (random search about
93.7). ``max_candidates`` (10,000) bounds the expansions scored per stage: larger sets are
uniformly subsampled (mobilenet: K x 7^5 expansions per depth stage). ``hidden`` 100 and
``ensemble_size`` 5 are the paper's; ``epochs`` 100 full-batch steps keep a fit to a few tenths of a second.

Deviations from the paper:

- The predictor is refitted from scratch on all told trials at every stage (the paper fine-tunes
  it on the new stage's results); the MLP reads one-hot features of the complete architecture
  instead of the paper's token embeddings averaged over blocks; no LSTM variant.
- Complexity stages are the space's (above), not cell blocks; stage 1 is sampled when larger
  than ``K``; expansion sets over ``max_candidates`` are subsampled.
- Step 3 (searching on after the last stage) is not in the paper, which stops at ``B`` blocks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError, check_float, check_int
from nasforge.registry import register
from nasforge.searchers.base import Searcher, torch_generator
from nasforge.spaces.base import ComplexityStage, SearchSpace

_SUPPORTED = "nb201, mobilenet (with allow_skip=True)"


def checked_stages(space: SearchSpace) -> list[ComplexityStage]:
    """``space.complexity_stages()`` after checking it is a well-formed order; ConfigError if not."""
    stages = space.complexity_stages()
    if not stages:
        raise ConfigError(
            f"pnas grows architectures in the space's order of complexity, and space {space.name!r} "
            f"(config {space.config()}) defines none (SearchSpace.complexity_stages); pnas supports {_SUPPORTED}"
        )
    decisions = space.decisions()
    seen: list[str] = []
    for b, stage in enumerate(stages):
        seen.extend(stage.grows)
        later = [d for s in stages[b + 1:] for d in s.grows]
        if not stage.grows or sorted(stage.filler) != sorted(later):
            raise ConfigError(
                f"complexity stage {b + 1} of {space.name} must grow at least one decision and fill exactly "
                f"the decisions of later stages {later}, got grows={list(stage.grows)}, filler={sorted(stage.filler)}"
            )
        bad = {d: o for d, o in stage.filler.items() if o not in decisions.get(d, ())}
        if bad:
            raise ConfigError(f"complexity stage {b + 1} of {space.name} fills with invalid options {bad}")
    if sorted(seen) != sorted(decisions):
        raise ConfigError(
            f"the complexity stages of {space.name} must grow every decision exactly once; they grow {seen}"
        )
    return stages


class MLPEnsemble:
    """``size`` MLPs (2 hidden ReLU layers) trained at once, each on its own 4/5 of the data, L1 loss."""

    def __init__(self, inputs: int, hidden: int, size: int, generator: torch.Generator) -> None:
        def uniform(*shape: int, fan_in: int) -> torch.Tensor:
            bound = 1.0 / math.sqrt(fan_in)
            return (torch.rand(*shape, generator=generator) * 2 - 1) * bound

        self.params = [
            uniform(size, inputs, hidden, fan_in=inputs), uniform(size, 1, hidden, fan_in=inputs),
            uniform(size, hidden, hidden, fan_in=hidden), uniform(size, 1, hidden, fan_in=hidden),
            uniform(size, hidden, 1, fan_in=hidden), uniform(size, 1, 1, fan_in=hidden),
        ]
        for p in self.params:
            p.requires_grad_(True)
        self.size, self.generator = size, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions ``(size, N)`` of every member for ``x`` ``(N, inputs)``."""
        w1, b1, w2, b2, w3, b3 = self.params
        h = torch.relu(torch.matmul(x, w1) + b1)  # (size, N, hidden)
        h = torch.relu(torch.bmm(h, w2) + b2)
        return (torch.bmm(h, w3) + b3).squeeze(-1)

    def fit(self, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
        """Full-batch Adam on the L1 loss; member ``e`` leaves out fold ``e`` of a random 5-way split."""
        n = x.shape[0]
        weights = torch.ones(self.size, n)
        if self.size > 1 and n > 1:
            folds = torch.randperm(n, generator=self.generator) % self.size
            weights = (folds.unsqueeze(0) != torch.arange(self.size).unsqueeze(1)).float()
            weights[weights.sum(dim=1) == 0] = 1.0  # a member left with no data trains on all
        weights = weights / weights.sum(dim=1, keepdim=True)
        optimizer = torch.optim.Adam(self.params, lr=lr)
        for _ in range(epochs):
            loss = ((self.forward(x) - y).abs() * weights).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).mean(dim=0)


@register("method", "pnas")
class PNAS(Searcher):
    """Progressive NAS (see the module docstring for the algorithm and its defaults).

    Args:
        space: a space with an order of complexity (``complexity_stages``): nb201, mobilenet.
        seed: seed of ``self.rng``, the only source of randomness.
        beam_size: K, structures kept per stage (paper 256; 32 for 150-query budgets).
        ensemble_size: MLPs in the surrogate (paper 5).
        hidden: units of each of the MLPs' two hidden layers (paper 100).
        epochs: full-batch Adam steps per surrogate fit.
        lr: Adam learning rate (paper 0.01).
        max_candidates: most expansions scored per stage (larger sets are subsampled).

    Raises:
        ConfigError: a space without an order of complexity, or a model option out of range.
        BudgetError: ``beam_size`` or ``max_candidates`` below 1.
    """

    name: ClassVar[str] = "pnas"
    paper: ClassVar[str] = (
        "Liu, Zoph, Neumann, Shlens, Hua, Li, Fei-Fei, Yuille, Huang & Murphy, Progressive Neural "
        "Architecture Search, ECCV 2018"
    )
    no_repeats: ClassVar[bool] = True
    smoke_options: ClassVar[dict[str, Any]] = {"beam_size": 3, "hidden": 16, "epochs": 20, "max_candidates": 300}

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, beam_size: int = 32, ensemble_size: int = 5, hidden: int = 100,
        epochs: int = 100, lr: float = 0.01, max_candidates: int = 10_000,
    ) -> None:
        super().__init__(space, seed=seed)
        self.beam_size = check_int("beam_size", beam_size)
        self.ensemble_size = check_int("ensemble_size", ensemble_size, error=ConfigError)
        self.hidden = check_int("hidden", hidden, error=ConfigError)
        self.epochs = check_int("epochs", epochs, error=ConfigError)
        self.max_candidates = check_int("max_candidates", max_candidates)
        self.lr = check_float("lr", lr, low=0.0, low_open=True)
        self.stages = checked_stages(space)

        decisions = space.decisions()
        self._names = list(decisions)
        self._options = [decisions[d] for d in self._names]
        self._position = {d: i for i, d in enumerate(self._names)}
        sizes = np.array([len(o) for o in self._options])
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self._width = int(sizes.sum())
        self.generator = torch_generator(self.rng)
        self.np_rng = np.random.default_rng(self.rng.getrandbits(63))

        self.history: list[tuple[Arch, float]] = []
        self._proposed: set[tuple[int, ...]] = set()
        self._queue: list[Arch] = []
        self.stage = -1  # index of the stage whose structures are being proposed (-1: not started)
        self.current: list[tuple[int, ...]] = []  # S_b as option-index sequences
        self.parents: list[tuple[int, ...]] = []  # S_{b-1}: the structures S_b grew from
        self.fits = 0

    @classmethod
    def check_space(cls, space: SearchSpace) -> None:
        checked_stages(space)

    @classmethod
    def options(cls) -> dict[str, Any]:
        return {"beam_size": 32, "ensemble_size": 5, "hidden": 100, "epochs": 100, "lr": 0.01, "max_candidates": 10_000}

    # ---- encodings ----------------------------------------------------------------------
    def sequence(self, arch: Arch) -> tuple[int, ...]:
        """Option indices of ``arch``, an Arch of the space (not validated; see ``fit_surrogate``)."""
        return self.space.indices_of(arch)

    def arch_of(self, seq: Sequence[int]) -> Arch:
        """The (unvalidated) Arch of an option-index row; callers test it with ``is_valid``."""
        return self.space.arch_from_indices(seq)

    def features(self, seqs: np.ndarray) -> torch.Tensor:
        """One-hot rows (the layout of ``space.encode_onehot``) of option-index sequences."""
        x = np.zeros((seqs.shape[0], self._width), dtype=np.float32)
        rows = np.repeat(np.arange(seqs.shape[0]), seqs.shape[1])
        x[rows, (seqs + self._offsets).ravel()] = 1.0
        return torch.from_numpy(x)

    # ---- growth -------------------------------------------------------------------------
    def expand(self, parents: Sequence[tuple[int, ...]], stage: int) -> np.ndarray:
        """Every structure of ``parents`` grown by all options of ``stage``, later decisions filled.

        Rows in enumeration order (parent, then options); over ``max_candidates`` rows, a uniform
        subsample (distinct rows, sorted). Proposed ones are removed.
        """
        spec = self.stages[stage]
        grow = [self._position[d] for d in spec.grows]
        base = np.array(parents if parents else [[0] * len(self._names)], dtype=np.int64)
        for d, option in spec.filler.items():
            base[:, self._position[d]] = self._options[self._position[d]].index(option)
        counts = [len(self._options[i]) for i in grow]
        total = base.shape[0] * math.prod(counts)
        if total <= self.max_candidates:
            combos = np.array(list(itertools.product(*(range(c) for c in counts))), dtype=np.int64)
            out = np.repeat(base, combos.shape[0], axis=0)
            out[:, grow] = np.tile(combos, (base.shape[0], 1))
        else:
            out = base[self.np_rng.integers(0, base.shape[0], self.max_candidates)]
            out[:, grow] = np.stack([self.np_rng.integers(0, c, self.max_candidates) for c in counts], axis=1)
            out = np.unique(out, axis=0)
        keep = [i for i, row in enumerate(map(tuple, out.tolist())) if row not in self._proposed]
        return out[keep]

    def _uniform_pool(self) -> np.ndarray:
        seqs = {self.sequence(self.space.sample(self.rng)) for _ in range(self.max_candidates)}
        rows = sorted(s for s in seqs if s not in self._proposed)
        return np.array(rows, dtype=np.int64).reshape(len(rows), len(self._names))

    def fit_surrogate(self) -> MLPEnsemble:
        """The MLP ensemble fitted on every told trial (failed trials at the worst told fitness)."""
        finite = [f for _, f in self.history if math.isfinite(f)]
        worst = min(finite, default=0.0)
        y = np.array([f if math.isfinite(f) else worst for _, f in self.history], dtype=np.float64)
        std = y.std()
        y = (y - y.mean()) / (std if std > 0 else 1.0)
        x = self.features(np.array([self.space.encode_sequence(a) for a, _ in self.history], dtype=np.int64))  # validated
        model = MLPEnsemble(self._width, self.hidden, self.ensemble_size, self.generator)
        model.fit(x, torch.tensor(y, dtype=torch.float32), self.epochs, self.lr)
        self.fits += 1
        return model

    def top(self, candidates: np.ndarray, k: int) -> list[tuple[int, ...]]:
        """The ``k`` candidates the surrogate fitted now predicts best (valid ones only)."""
        if candidates.shape[0] == 0:
            return []
        if self.history:
            scores = self.fit_surrogate().predict(self.features(candidates)).numpy()
            order = np.argsort(-scores, kind="stable")
        else:  # nothing told (asks ahead of tells): no model, keep the enumeration order
            order = np.arange(candidates.shape[0])
        out: list[tuple[int, ...]] = []
        for i in order.tolist():
            row = tuple(candidates[i].tolist())
            if self.space.is_valid(self.arch_of(row)):
                out.append(row)
                if len(out) == k:
                    break
        return out

    def _next_batch(self) -> list[tuple[int, ...]]:
        last = len(self.stages) - 1
        if self.stage < 0:  # S_1: all of stage 1 if at most K, else K uniform samples, shuffled
            self.stage, self.parents = 0, []
            pool = [tuple(r) for r in self.expand([], 0).tolist()]
            self.rng.shuffle(pool)
            self.current = []
            for row in pool:
                if self.space.is_valid(self.arch_of(row)):
                    self.current.append(row)
                    if len(self.current) == self.beam_size:
                        break
            return self.current
        if self.stage < last:  # S_{b+1} = top-K(expand(S_b))
            self.parents, self.stage = self.current, self.stage + 1
            self.current = self.top(self.expand(self.parents, self.stage), self.beam_size)
            return self.current
        # after the last stage: the best unproposed complete expansions of S_{B-1}
        batch = self.top(self.expand(self.parents, last), self.beam_size)
        if not batch:
            batch = self.top(self._uniform_pool(), self.beam_size)
        return batch

    def ask(self) -> Arch:
        for _ in range(len(self.stages) + 2):
            if self._queue:
                break
            self._queue = [self.arch_of(r) for r in self._next_batch() if r not in self._proposed]
        if not self._queue:
            raise BudgetError(
                f"pnas found no unproposed architecture of {self.space.name} "
                f"({len(self._proposed)} proposed; the space may be exhausted)"
            )
        arch = self._queue.pop(0)
        self._proposed.add(self.sequence(arch))
        return arch

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        self.history.append((arch, float(fitness)))
