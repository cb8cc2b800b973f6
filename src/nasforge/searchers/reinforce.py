"""REINFORCE with independent per-decision logits: the NAS-Bench-201 RL baseline.

Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture Search",
ICLR 2020, Section 5 (the "REINFORCE" baseline, after Williams, "Simple statistical
gradient-following algorithms for connectionist reinforcement learning", Machine Learning
1992). Reference implementation: xautodl / D-X-Y/AutoDL-Projects
``exps/NAS-Bench-201-algos/reinforce.py`` (``Policy``, ``ExponentialMovingAverage``,
``select_action``) with ``scripts-search/NAS-Bench-201-algos/REINFORCE.sh``, and its NATS-Bench
successor ``exps/NATS-algos/reinforce.py``.

Algorithm as implemented (one architecture, one evaluation, one update per trial):

* **Policy**: one learnable logit vector per decision of ``space.decisions()`` (for nb201, one
  per edge over the 5 ops: the reference ``arch_parameters``), initialised as
  ``1e-3 * N(0, 1)`` (reference) from a generator seeded from ``self.rng``. The decisions are
  independent: ``P(arch) = prod_d softmax(logits_d)[a_d]``. Decisions with fewer options than the
  largest are padded with masked (``-inf``) logits.
* **Sampling**: ``ask()`` draws each decision from its softmax (reference ``select_action``).
  Spaces with structural rules are handled by rejection (see :mod:`nasforge.searchers._controller`).
* **Baseline**: the reference ``ExponentialMovingAverage`` with momentum ``ema_momentum = 0.9``
  (REINFORCE.sh; the NATS-Bench script's default): a bias-corrected EMA,
  ``num <- m num + (1 - m) R``, ``den <- m den + (1 - m)``, ``b = num / den``. As in the
  reference, the baseline is updated with the trial's reward *before* the advantage
  ``R - b`` is computed (so the first trial's advantage is 0).
* **Update**: one Adam step (``learning_rate = 0.01``) on ``-log P(arch) * (R - b)`` per told
  trial. The reward ``R`` is the fitness itself (the reference uses the validation accuracy,
  in percent, unscaled).
* **Failed trials** (fitness ``-inf`` or NaN; the reference has none): reward = the worst finite
  reward told before it; while no finite reward has been told, a failed trial is skipped (no
  baseline update, no step).

Default learning rate: the reference scripts take it on the command line. The NATS-Bench run
commands (``exps/NATS-algos/reinforce.py`` header) and the NB201 learning-rate grid's smallest
value (``hps/GRID-RL.sh``: 0.01 ... 0.5) use 0.01, the value kept here; the example in
REINFORCE.sh's header comment shows 0.001.

Deviations from the reference: none in the update. The reference's search ends on a time
budget and reports the best sampled architecture; here the study loop owns the budget and the
incumbent. Any space is accepted (the reference is nb201-only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from nasforge.arch import Arch
from nasforge.errors import check_float
from nasforge.registry import register
from nasforge.searchers._controller import log_softmax, sample_arch
from nasforge.searchers.base import Searcher, torch_generator
from nasforge.spaces.base import SearchSpace


@register("method", "reinforce")
class Reinforce(Searcher):
    """REINFORCE over independent per-decision logits (NAS-Bench-201 baseline).

    Args:
        space: any search space.
        seed: seed of ``self.rng`` (logit initialisation and sampling derive from it).
        learning_rate: Adam learning rate (reference runs: 0.01), > 0.
        ema_momentum: momentum of the bias-corrected moving-average baseline (reference: 0.9),
            in [0, 1).

    Raises:
        ConfigError: a learning rate or momentum outside its interval.
    """

    name: ClassVar[str] = "reinforce"
    paper: ClassVar[str] = (
        "Dong & Yang, NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture Search, "
        "ICLR 2020 (REINFORCE: Williams, Machine Learning 1992)"
    )

    def __init__(self, space: SearchSpace, *, seed: int = 0, learning_rate: float = 0.01,
                 ema_momentum: float = 0.9) -> None:
        super().__init__(space, seed=seed)
        self.learning_rate = check_float("learning_rate", learning_rate, low=0.0, low_open=True)
        self.ema_momentum = check_float("ema_momentum", ema_momentum, low=0.0, high=1.0, high_open=True)
        self._gen = torch_generator(self.rng)
        sizes = [len(opts) for opts in space.decisions().values()]
        width = max(sizes)
        self.logits = torch.nn.Parameter(1e-3 * torch.randn(len(sizes), width, generator=self._gen))
        mask = torch.zeros(len(sizes), width)
        for d, k in enumerate(sizes):
            mask[d, k:] = -math.inf
        self._mask = mask
        self.optimizer = torch.optim.Adam([self.logits], lr=self.learning_rate)
        self._ema_num = 0.0
        self._ema_den = 0.0
        self.worst_reward: float | None = None

    @classmethod
    def options(cls) -> dict[str, Any]:
        # learning rate 0.01 (NATS-Bench run commands, NB201 lr grid), EMA momentum 0.9 (REINFORCE.sh).
        return {"learning_rate": 0.01, "ema_momentum": 0.9}

    def probabilities(self) -> torch.Tensor:
        """``[decisions, max options]`` softmax of the logits (padding columns are 0), detached."""
        with torch.no_grad():
            return log_softmax(self.logits + self._mask).exp()

    @property
    def baseline(self) -> float | None:
        """The moving-average baseline (None before the first reward)."""
        return self._ema_num / self._ema_den if self._ema_den > 0 else None

    def _draw(self) -> list[int]:
        with torch.no_grad():
            return [int(i) for i in torch.multinomial(self.probabilities(), 1, generator=self._gen)[:, 0]]

    def ask(self) -> Arch:
        arch, _ = sample_arch(self.space, self._draw, what="the REINFORCE policy")
        return arch

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        actions = self.space.encode_sequence(arch)
        reward = float(fitness)
        if math.isfinite(reward):
            self.worst_reward = reward if self.worst_reward is None else min(self.worst_reward, reward)
        elif self.worst_reward is None:
            return  # a failure before any finite reward: nothing to compare it with
        else:
            reward = self.worst_reward
        m = self.ema_momentum
        self._ema_num = m * self._ema_num + (1.0 - m) * reward
        self._ema_den = m * self._ema_den + (1.0 - m)
        advantage = reward - self._ema_num / self._ema_den
        log_probs = log_softmax(self.logits + self._mask)
        idx = torch.tensor(actions, dtype=torch.long)
        logp = log_probs[torch.arange(len(actions)), idx].sum()
        loss = -logp * advantage
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
