"""AlphaX-style Monte-Carlo tree search with a meta-DNN that predicts rollout accuracies.

Wang, Zhao, Jinnai, Tian & Fonseca, "AlphaX: eXploring Neural Architectures with Deep Neural
Networks and Monte Carlo Tree Search", arXiv:1805.07440, 2019 (AAAI 2020 as "Neural Architecture
Search using Deep Neural Networks and Monte Carlo Tree Search"). Reference implementation:
``linnanwang/AlphaX-NASBench101`` (``MCTS_metaDNN.py`` for the search, ``net_predictor.py`` for
the meta-DNN).

The tree
--------
A node is a partial architecture: the options of the first ``d`` decisions of the space, in
canonical order (the root has none). Its children are the options of decision ``d``; a node of
depth ``n`` (all decisions made) is a complete architecture, a leaf. Each node keeps a visit
count ``N`` and a total reward ``W``.

One ``ask`` is one MCTS iteration, and returns one new complete architecture:

1. **Selection.** From the root, while every available child of the node is in the tree, go to
   the child of largest UCT value (paper Eq. 1, the UCB1 rule of Kocsis & Szepesvari)::

       W(child) / N(child) + 2 c sqrt(2 ln N(node) / N(child))

   (a child that is in the tree but was never told, ``N = 0``, has value +inf; ties are broken
   uniformly). ``c = exploration`` defaults to 2.0, the ``Cp`` of the reference
   ``MCTS_metaDNN.py``, which writes the rule exactly so (``x_bar + 2 * Cp * sqrt(2 ln n / n_j)``).
   We could not check a value in the paper's text, so 2.0 comes from the code. With rewards in
   [0, 1] it explores broadly; on NAS-Bench-201 (150 queries, 20 seeds) ``exploration=0.5`` did
   marginally better (test 93.91 +- 0.21 against 93.80 +- 0.21), within the noise.
2. **Expansion.** At the first node with children not yet in the tree, one of those is chosen
   uniformly (the reference: all new children have UCT +inf, ties broken at random) and added
   with ``N = W = 0``.
3. **Meta-DNN assisted simulation.** A uniformly random rollout completes the new node into a
   complete architecture: that is the proposal, and its true reward ``Acc`` comes with ``tell``.
   ``predicted_rollouts`` (k, reference ``num_dyna_sim = 10``) more random rollouts from the new
   node are scored by the meta-DNN (an architecture already told counts with its true reward, as
   in the reference). The simulation result is ``Q_sim = (Acc + mean(Pred)) / 2`` (the
   reference's ``(acc + sim_acc) / 2``; the paper's "estimated reward to speed up the rollout").
   Until the meta-DNN has been fitted, ``Q_sim = Acc``.
4. **Backpropagation** (at ``tell``): every node on the path from the root to the new node gets
   ``N += 1`` and ``W += Q_sim``, so ``W / N`` is the running mean of the reference's ``x_bar``.

No architecture is proposed twice (``no_repeats``): a subtree all of whose completions were
proposed is *exhausted* and is skipped by selection, expansion and rollouts (the reference never
re-trains a network either: it looks a trained one up in its ``trained_networks`` memory). When
the whole space is exhausted ``ask`` raises :class:`~nasforge.errors.BudgetError`. An
architecture that was proposed but never told (the search loop found it infeasible) counts as
proposed. If ``ask`` is called again while the previous proposal is still pending (asked, not
told: the search loop discards a proposal that breaks a cost constraint and asks again), that
proposal counts as a failed trial: its path is backed up with the lowest reward seen so far (0
before any; averaged with its predicted rollouts as in step 3), as Hyperband counts a discarded
promotion as failed. Without this the expanded node would keep ``N = 0``, hence UCT +inf, and
every later selection would descend into it. It is not a told trial: it is not meta-DNN training
data and does not count towards ``refit_every``; a late ``tell`` of it changes no node.

The meta-DNN
------------
An MLP on the concatenated one-hot encoding of the decisions (``2 x hidden`` ReLU layers, linear
output) regresses the reward of every told finite trial, standardised; full-batch Adam,
``predictor_steps`` (100) steps at learning rate ``predictor_lr`` (1e-3), weights drawn from a
numpy generator seeded from ``self.rng`` (plain numpy on one BLAS thread: at this size faster and
steadier than torch). It is refitted from scratch on the told trials after every
``refit_every``-th tell (the reference's commented-out loop retrains every 5 iterations), first
once at least ``refit_every`` finite trials are known. Failed trials are not training data.

Rewards
-------
Reward = fitness / ``reward_scale``; the default (None) takes 100 if the first finite fitness told
exceeds 1 (accuracies in %), else 1, fixed from then on, so that rewards are accuracies in
[0, 1] as in the paper. A failed or infeasible trial (fitness ``-inf``) gets the lowest reward
seen so far (0 before any finite one): MCTS needs a number to back up, and the lowest reward
discourages the path without letting one failure dominate the averages.

Deviations from the paper
-------------------------
- The tree is over the space's decisions in canonical order (the paper's actions add a layer or
  an edge to a NASBench/NASNet graph; the terminal action is implicit here: depth ``n``).
- One MCTS iteration per ``ask``; the paper runs iterations asynchronously on many workers.
- The meta-DNN is smaller (2 x 64 units instead of 512-2048-2048-512), regresses standardised
  rewards with a linear output (the reference: sigmoid output, raw accuracy) and is trained
  full-batch for a fixed number of steps (the reference: 20 epochs, batch 128, Adam 2e-4).
- No transfer of weights between trained networks (the paper's transfer learning concerns
  training, which the evaluator does here).
- Rollouts that reach an architecture already told are not grafted into the tree as the
  reference's "dangling nodes"; a rollout never proposes such an architecture again.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from nasforge.arch import Arch
from nasforge.errors import BudgetError, check_float, check_int
from nasforge.registry import register
from nasforge.searchers._surrogates import single_threaded_blas
from nasforge.searchers.base import Searcher
from nasforge.spaces.base import SearchSpace

_MAX_RESTARTS = 1000  # MCTS iterations per ask that may end on an invalid architecture
_REJECTIONS = 200  # uniform rollout draws before enumerating the subtree
_ENUMERATE_LIMIT = 200_000  # largest subtree enumerated when rejection sampling fails


class _MetaDNN:
    """The accuracy predictor: an MLP on one-hot features, refitted from scratch by :meth:`fit`.

    Plain numpy (forward pass, back-propagation and Adam by hand) on one BLAS thread: at this size
    it is faster and steadier than torch on a loaded CPU, and its weights come from a seeded numpy
    generator.
    """

    def __init__(self, offsets: Sequence[int], width: int, hidden: int, steps: int, lr: float) -> None:
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.width, self.hidden, self.steps, self.lr = width, hidden, steps, lr
        self.params: list[np.ndarray] | None = None
        self.mean, self.std = 0.0, 1.0

    def features(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        idx = np.asarray(seqs, dtype=np.int64) + self.offsets
        x = np.zeros((len(seqs), self.width))
        np.put_along_axis(x, idx, 1.0, axis=1)
        return x

    @staticmethod
    def _forward(params: Sequence[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w1, b1, w2, b2, w3, b3 = params
        h1 = np.maximum(x @ w1 + b1, 0.0)
        h2 = np.maximum(h1 @ w2 + b2, 0.0)
        return h1, h2, (h2 @ w3 + b3)[:, 0]

    def fit(self, seqs: Sequence[Sequence[int]], rewards: Sequence[float], rng: np.random.Generator) -> None:
        """Fit the MSE regression of the standardised rewards with full-batch Adam (betas 0.9, 0.999)."""
        x = self.features(seqs)
        y = np.asarray(rewards, dtype=np.float64)
        self.mean = float(y.mean())
        std = float(y.std())
        self.std = std if std > 1e-8 else 1.0
        y = (y - self.mean) / self.std
        params: list[np.ndarray] = []
        for fan_in, fan_out in ((self.width, self.hidden), (self.hidden, self.hidden), (self.hidden, 1)):
            bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default initialisation range
            params.append(rng.uniform(-bound, bound, size=(fan_in, fan_out)))
            params.append(rng.uniform(-bound, bound, size=fan_out))
        with single_threaded_blas():
            self._adam(params, x, y)
        self.params = params

    def _adam(self, params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> None:
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        beta1, beta2, eps, n = 0.9, 0.999, 1e-8, len(y)
        for t in range(1, self.steps + 1):
            h1, h2, out = self._forward(params, x)
            g_out = (2.0 / n) * (out - y)[:, None]
            g_w3, g_b3 = h2.T @ g_out, g_out.sum(0)
            g_h2 = (g_out @ params[4].T) * (h2 > 0)
            g_w2, g_b2 = h1.T @ g_h2, g_h2.sum(0)
            g_h1 = (g_h2 @ params[2].T) * (h1 > 0)
            g_w1, g_b1 = x.T @ g_h1, g_h1.sum(0)
            c1, c2 = 1 - beta1**t, 1 - beta2**t
            for p, g, mp, vp in zip(params, (g_w1, g_b1, g_w2, g_b2, g_w3, g_b3), m, v):
                mp *= beta1
                mp += (1 - beta1) * g
                vp *= beta2
                vp += (1 - beta2) * g * g
                p -= self.lr * (mp / c1) / (np.sqrt(vp / c2) + eps)

    def predict(self, seqs: Sequence[Sequence[int]]) -> list[float]:
        if self.params is None:
            raise RuntimeError("the meta-DNN is not fitted")
        with single_threaded_blas():
            out = self._forward(self.params, self.features(seqs))[2] * self.std + self.mean
        return [float(val) for val in out]


@register("method", "mcts")
class AlphaXMCTS(Searcher):
    """AlphaX: UCT tree search over the decisions with meta-DNN assisted rollouts (module docstring).

    Args:
        space: the search space (any).
        seed: seed of ``self.rng``, the only source of randomness.
        exploration: c of the UCT rule ``W/N + 2c sqrt(2 ln N_parent / N)`` (reference ``Cp = 2``).
        predicted_rollouts: k, the rollouts scored by the meta-DNN per iteration (reference: 10).
        refit_every: the meta-DNN is refitted after every this many tells (reference: 5).
        predictor_hidden: units of each of the meta-DNN's two hidden layers.
        predictor_steps: full-batch Adam steps per refit.
        predictor_lr: Adam learning rate of the meta-DNN.
        reward_scale: reward = fitness / reward_scale; None: 100 if the first finite fitness
            exceeds 1, else 1.

    Raises:
        BudgetError: a count that is not a positive integer (``predicted_rollouts`` may be 0).
        ConfigError: a non-positive ``exploration``, ``predictor_lr`` or ``reward_scale``.
    """

    name: ClassVar[str] = "mcts"
    paper: ClassVar[str] = (
        "Wang, Zhao, Jinnai, Tian & Fonseca, AlphaX: eXploring Neural Architectures with Deep Neural "
        "Networks and Monte Carlo Tree Search, arXiv:1805.07440 2019 / AAAI 2020"
    )
    no_repeats: ClassVar[bool] = True
    smoke_options: ClassVar[dict[str, Any]] = {"refit_every": 4, "predictor_steps": 10, "predictor_hidden": 16}

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, exploration: float = 2.0, predicted_rollouts: int = 10,
        refit_every: int = 5, predictor_hidden: int = 64, predictor_steps: int = 100, predictor_lr: float = 1e-3,
        reward_scale: float | None = None,
    ) -> None:
        super().__init__(space, seed=seed)
        self.exploration = check_float("exploration", exploration, low=0.0)
        self.predicted_rollouts = check_int("predicted_rollouts", predicted_rollouts, low=0)
        self.refit_every = check_int("refit_every", refit_every)
        hidden = check_int("predictor_hidden", predictor_hidden)
        steps = check_int("predictor_steps", predictor_steps)
        lr = check_float("predictor_lr", predictor_lr, low=0.0, low_open=True)
        self.reward_scale = None if reward_scale is None else check_float("reward_scale", reward_scale, low=0.0, low_open=True)

        decisions = space.decisions()
        self._sizes = [len(opts) for opts in decisions.values()]
        n = len(self._sizes)
        # completions under a node of depth d: the product of the option counts of decisions d..n-1
        self._completions = [math.prod(self._sizes[d:]) for d in range(n + 1)]
        offsets = list(itertools.accumulate([0, *self._sizes[:-1]]))
        self.predictor = _MetaDNN(offsets, sum(self._sizes), hidden, steps, lr)
        self._fitted = False

        self.tree: dict[tuple[int, ...], list[float]] = {(): [0, 0.0]}  # node -> [N, W]
        self._asked_under: dict[tuple[int, ...], int] = {}  # node -> proposed completions under it
        self._dead: set[tuple[int, ...]] = set()  # nodes without a valid unproposed completion
        self._asked: set[tuple[int, ...]] = set()
        self._pending: dict[tuple[int, ...], tuple[tuple[int, ...], float | None]] = {}  # leaf -> (node, mean pred)
        self._last: tuple[int, ...] | None = None  # the leaf the latest ask returned
        self._told: dict[tuple[int, ...], float] = {}  # leaf -> reward
        self._scale: float | None = self.reward_scale
        self._lowest: float | None = None
        self._n_told = 0

    @classmethod
    def options(cls) -> dict[str, Any]:
        return {
            "exploration": 2.0,  # reference MCTS_metaDNN.py Cp
            "predicted_rollouts": 10,  # reference num_dyna_sim in create_new_node
            "refit_every": 5,  # reference (commented-out) env_train every 5 iterations
            "predictor_hidden": 64, "predictor_steps": 100, "predictor_lr": 1e-3,  # ours (see deviations)
            "reward_scale": None,
        }

    # ---- helpers -----------------------------------------------------------------------------
    def _exhausted(self, node: tuple[int, ...]) -> bool:
        return node in self._dead or self._asked_under.get(node, 0) >= self._completions[len(node)]

    def _mark_asked(self, seq: tuple[int, ...]) -> None:
        if seq in self._asked:
            return
        self._asked.add(seq)
        for d in range(len(seq) + 1):
            key = seq[:d]
            self._asked_under[key] = self._asked_under.get(key, 0) + 1

    def uct(self, parent: tuple[int, ...], child: tuple[int, ...]) -> float:
        """UCT value of ``child`` seen from ``parent`` (+inf for a child never backed up)."""
        n_child, w_child = self.tree[child]
        if n_child == 0:
            return math.inf
        n_parent = max(self.tree[parent][0], 1)
        return w_child / n_child + 2 * self.exploration * math.sqrt(2 * math.log(n_parent) / n_child)

    def _rollout(self, node: tuple[int, ...]) -> tuple[int, ...] | None:
        """A uniformly random valid completion of ``node`` that was never proposed, or None."""
        rng, depth = self.rng, len(node)
        for _ in range(_REJECTIONS):
            seq = node + tuple(rng.randrange(k) for k in self._sizes[depth:])
            if seq not in self._asked and self.space.is_valid(self.space.arch_from_indices(seq)):
                return seq
        if self._completions[depth] > _ENUMERATE_LIMIT:
            return None
        left = [
            node + rest for rest in itertools.product(*(range(k) for k in self._sizes[depth:]))
            if node + rest not in self._asked and self.space.is_valid(self.space.arch_from_indices(node + rest))
        ]
        return rng.choice(left) if left else None

    def _predicted(self, node: tuple[int, ...]) -> float | None:
        """Mean predicted reward of ``predicted_rollouts`` random completions of ``node``."""
        if not self._fitted or self.predicted_rollouts == 0:
            return None
        depth = len(node)
        seqs = [node + tuple(self.rng.randrange(k) for k in self._sizes[depth:]) for _ in range(self.predicted_rollouts)]
        unknown = [s for s in seqs if s not in self._told]
        preds = dict(zip(unknown, self.predictor.predict(unknown))) if unknown else {}
        return sum(self._told[s] if s in self._told else preds[s] for s in seqs) / len(seqs)

    # ---- ask / tell --------------------------------------------------------------------------
    def _backup(self, leaf: tuple[int, ...], acc: float) -> None:
        """Backpropagation of reward ``acc`` of the pending ``leaf`` (no-op if it is not pending)."""
        pending = self._pending.pop(leaf, None)
        if pending is None:
            return
        node, pred = pending
        q_sim = acc if pred is None else (acc + pred) / 2
        for d in range(len(node) + 1):  # the root ... the expanded node
            stats = self.tree[node[:d]]
            stats[0] += 1
            stats[1] += q_sim

    def ask(self) -> Arch:
        if self._last is not None:  # asked again without a tell: the proposal was discarded (failed)
            self._backup(self._last, self._reward(-math.inf))
            self._last = None
        n = len(self._sizes)
        for _ in range(_MAX_RESTARTS):
            if self._exhausted(()):
                break
            node: tuple[int, ...] = ()
            leaf: tuple[int, ...] | None = None
            while len(node) < n:
                children = [node + (a,) for a in range(self._sizes[len(node)])]
                avail = [c for c in children if not self._exhausted(c)]
                if not avail:
                    self._dead.add(node)
                    break
                new = [c for c in avail if c not in self.tree]
                if new:  # expansion, then the rollout from the new node
                    node = self.rng.choice(new)
                    self.tree[node] = [0, 0.0]
                    leaf = self._rollout(node)
                    if leaf is None:
                        self._dead.add(node)
                    break
                values = [self.uct(node, c) for c in avail]
                best = max(values)
                node = self.rng.choice([c for c, v in zip(avail, values) if v == best])
            else:  # an unproposed leaf already in the tree (never happens with told leaves)
                leaf = node if self.space.is_valid(self.space.arch_from_indices(node)) else None
                if leaf is None:
                    self._dead.add(node)
            if leaf is None:
                continue
            self._mark_asked(leaf)
            self._pending[leaf] = (node, self._predicted(node))
            self._last = leaf
            return self.space.arch_from_indices(leaf)
        raise BudgetError(
            f"mcts has proposed every valid architecture it can reach ({len(self._asked)} proposed, the "
            f"space {self.space.name} has at most {self.space.size()}); the space looks exhausted"
        )

    def _reward(self, fitness: float) -> float:
        if math.isfinite(fitness):
            if self._scale is None:
                self._scale = 100.0 if fitness > 1.0 else 1.0
            r = fitness / self._scale
            self._lowest = r if self._lowest is None else min(self._lowest, r)
            return r
        return self._lowest if self._lowest is not None else 0.0

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        seq = self.space.indices_of(self.space.validate(arch))
        fitness = float(fitness)
        if math.isnan(fitness):
            fitness = -math.inf
        acc = self._reward(fitness)
        self._mark_asked(seq)
        if math.isfinite(fitness):
            self._told.setdefault(seq, acc)
        self._backup(seq, acc)
        self._n_told += 1
        if self._n_told % self.refit_every == 0 and len(self._told) >= self.refit_every:
            seqs = list(self._told)
            self.predictor.fit(seqs, [self._told[s] for s in seqs], np.random.default_rng(self.rng.getrandbits(63)))
            self._fitted = True
