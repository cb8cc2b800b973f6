"""NAS-RL: an LSTM controller trained with REINFORCE.

Zoph & Le, "Neural Architecture Search with Reinforcement Learning", ICLR 2017. There is no
official code release; the description below follows the paper (Sections 3.1-3.2 and 4.1),
with the unstated constants taken from its successor NASNet (Zoph, Vasudevan, Shlens & Le,
"Learning Transferable Architectures for Scalable Image Recognition", CVPR 2018, Appendix A).

Algorithm as implemented:

* **Controller** (:class:`~nasforge.searchers._controller.LSTMController`): a 2-layer LSTM with
  35 hidden units per layer (paper, 4.1) emits one decision per step over
  ``space.decisions()`` in canonical order; each step has its own softmax classifier and the
  embedding of the option taken is the next input (paper, 3.1 and Figure 2). Parameters start
  uniform in ``[-0.08, 0.08]`` (paper, 4.1).
* **Sampling**: ``ask()`` draws a sequence from the controller with a ``torch.Generator`` seeded
  from ``self.rng``. Spaces with structural rules are handled by rejection (see
  :mod:`nasforge.searchers._controller`); in nb201, darts and mobilenet every sequence is valid.
* **Reward**: ``R = fitness ** reward_power`` with ``reward_power = 3`` (paper, 4.1: "the
  maximum validation accuracy of the last 5 epochs cubed"; the max-over-epochs is the
  evaluator's business). The power keeps the sign (``sign(f) |f|^p``) so negative fitnesses
  stay ordered. Only the reward's shape matters, not its unit (percent or fraction): Adam's
  step is invariant to a constant scale of the gradient.
* **Update** (REINFORCE with a baseline, paper 3.2): after every ``batch_size = 8`` told trials
  (the paper's m = 8 child networks per controller replica, 4.1), one Adam step (learning rate
  0.0006, paper 4.1) on ``-(1/m) sum_k (R_k - b) log P(a_k)``, where ``log P(a_k)`` is the
  summed log-probability of the k-th decision sequence under the current controller.
* **Baseline** ``b``: an exponential moving average of previous rewards (paper 3.2), updated
  once per architecture in told order, ``b <- d b + (1 - d) R``, with ``d = 0.95`` (not given
  by the paper; NASNet, Appendix A, uses "an exponential moving average of previous rewards
  with a weight of 0.95"). The advantages of a batch use ``b`` as it was *before* the batch.
  Before the first batch there are no previous rewards: ``b`` starts at the mean reward of the
  first batch (the paper does not say; this centres the first update).
* **Failed trials** (fitness ``-inf`` or NaN): reward = the worst finite reward told so far,
  this batch included (a failed child is treated as the worst network seen, never better).
  While no finite reward has been told, failed trials are left out of the update.

Deviations from the paper: one synchronous controller instead of 100 asynchronous replicas
behind a parameter server (the m = 8 batch is kept); no growth of the number of layers during
search (the sequence length is fixed by the space); the skip-connection anchor/attention
mechanism of the paper's 3.3 is not used: decisions are those of the space (for darts, input
pairs are a single categorical decision), each a plain softmax. The learned first input and
the baseline's starting value are choices of this implementation (unstated in the paper).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from nasforge.arch import Arch
from nasforge.errors import check_float, check_int
from nasforge.registry import register
from nasforge.searchers._controller import LSTMController, batch_advantages, decayed_baseline, sample_arch
from nasforge.searchers.base import Searcher, torch_generator
from nasforge.spaces.base import SearchSpace


@register("method", "nas_rl")
class NASRL(Searcher):
    """NAS-RL (Zoph & Le 2017): LSTM controller + REINFORCE with a moving-average baseline.

    Args:
        space: any search space.
        seed: seed of ``self.rng`` (controller initialisation and sampling derive from it).
        batch_size: m, architectures per controller update (paper: 8).
        learning_rate: Adam learning rate (paper: 0.0006).
        baseline_decay: decay of the moving-average baseline (NASNet: 0.95), in [0, 1).
        reward_power: the reward is ``fitness ** reward_power`` (paper: 3, accuracy cubed); > 0.
        lstm_size: hidden units per LSTM layer (paper: 35).
        lstm_layers: LSTM layers (paper: 2).
        init_range: uniform initialisation range (paper: 0.08).

    Raises:
        BudgetError: a non-positive integer size.
        ConfigError: a rate, decay, power or range outside its interval.
    """

    name: ClassVar[str] = "nas_rl"
    paper: ClassVar[str] = (
        "Zoph & Le, Neural Architecture Search with Reinforcement Learning, ICLR 2017"
    )
    smoke_options: ClassVar[dict[str, Any]] = {"batch_size": 4, "lstm_size": 16}

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, batch_size: int = 8, learning_rate: float = 6e-4,
        baseline_decay: float = 0.95, reward_power: float = 3.0, lstm_size: int = 35, lstm_layers: int = 2,
        init_range: float = 0.08,
    ) -> None:
        super().__init__(space, seed=seed)
        self.batch_size = check_int("batch_size", batch_size)
        self.learning_rate = check_float("learning_rate", learning_rate, low=0.0, low_open=True)
        self.baseline_decay = check_float("baseline_decay", baseline_decay, low=0.0, high=1.0, high_open=True)
        self.reward_power = check_float("reward_power", reward_power, low=0.0, low_open=True)
        self._gen = torch_generator(self.rng)
        self.controller = LSTMController.for_space(space, lstm_size=lstm_size, lstm_layers=lstm_layers,
                                                   init_range=init_range, generator=self._gen)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.learning_rate)
        self.baseline: float | None = None
        self.worst_reward: float | None = None
        self.updates = 0
        self._batch: list[tuple[list[int], float]] = []  # (actions, fitness) told since the last update

    @classmethod
    def options(cls) -> dict[str, Any]:
        # m = 8, Adam lr 0.0006, 2x35 LSTM, init +-0.08, accuracy cubed: Zoph & Le 2017, 4.1;
        # baseline decay 0.95: NASNet (Zoph et al. 2018), Appendix A.
        return {"batch_size": 8, "learning_rate": 6e-4, "baseline_decay": 0.95, "reward_power": 3.0,
                "lstm_size": 35, "lstm_layers": 2, "init_range": 0.08}

    def ask(self) -> Arch:
        arch, _ = sample_arch(self.space, lambda: self.controller.sample(self._gen), what="the NAS-RL controller")
        return arch

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        self._batch.append((self.space.encode_sequence(arch), float(fitness)))
        if len(self._batch) >= self.batch_size:
            batch, self._batch = self._batch, []
            self._update(batch)

    def reward(self, fitness: float) -> float | None:
        """The reward of a finite fitness (``sign(f) |f|^p``); None for a failed trial."""
        if not math.isfinite(fitness):
            return None
        return math.copysign(abs(fitness) ** self.reward_power, fitness)

    def _update(self, batch: list[tuple[list[int], float]]) -> None:
        raw = [(actions, self.reward(f)) for actions, f in batch]
        finite = [r for _, r in raw if r is not None]
        if finite:
            worst = min(finite)
            self.worst_reward = worst if self.worst_reward is None else min(self.worst_reward, worst)
        if self.worst_reward is None:
            return  # nothing but failures so far: nothing to learn from
        fill = self.worst_reward
        used = [(a, fill if r is None else r) for a, r in raw]
        rewards = [r for _, r in used]
        self.baseline, advantages = batch_advantages(self.baseline, rewards)
        actions = torch.tensor([a for a, _ in used], dtype=torch.long)
        logp, _ = self.controller.log_prob(actions)
        loss = -(advantages * logp).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        self.baseline = decayed_baseline(self.baseline, self.baseline_decay, rewards)
