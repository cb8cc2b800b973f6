"""MnasNet: platform-aware search with a PPO-trained LSTM controller.

Tan, Chen, Pang, Vasudevan, Sandler, Howard & Le, "MnasNet: Platform-Aware Neural
Architecture Search for Mobile", CVPR 2019. The search code is not public (the repository
``tensorflow/tpu`` ``models/official/mnasnet`` has only the found models); MnasNet uses "the
same RNN controller as NASNet" trained with Proximal Policy Optimization (Section 4.2), so the
controller and its constants come from NASNet (Zoph, Vasudevan, Shlens & Le, "Learning
Transferable Architectures for Scalable Image Recognition", CVPR 2018, Appendix A) and the
PPO constants from Schulman, Wolski, Dhariwal, Radford & Klimov, "Proximal Policy Optimization
Algorithms", arXiv 2017.

Algorithm as implemented:

* **Reward** (MnasNet Eq. 2): ``R(m) = ACC(m) * (LAT(m) / T) ** w`` with ``w = alpha`` if
  ``LAT(m) <= T`` else ``beta``; ``mode="soft"``: ``alpha = beta = -0.07`` (the paper's default,
  Section 3); ``mode="hard"``: ``alpha = 0, beta = -1`` (the hard constraint of Figure 2);
  computed by :class:`nasforge.hardware.objectives.MnasNetReward`. ``ACC`` is ``metrics[accuracy_metric]`` (default ``val_acc``) and ``LAT`` is
  ``metrics[latency_metric]`` (default ``hwnb_pixel3_latency_ms``; any metric the evaluator or
  cost model reports: a table latency, ``latency_ms``, ``flops``); both are declared in
  :meth:`MnasNetPPO.required_metrics`, and the fitness is *not* used except to recognise a
  failed trial (fitness ``-inf`` or NaN), whose reward is 0. The search loop's ``--objective``
  therefore plays no part in what the controller learns (it only picks the reported best trial),
  so the loop refuses an explicit ``--objective`` or several objectives with this method
  (``uses_fitness = False``). ``target`` (T) has no default: it
  depends on the device and the metric's unit (the paper's 75 ms on a Pixel 1 for ImageNet
  models is meaningless for NAS-Bench-201 cells), so it must be given.
* **Controller**: :class:`~nasforge.searchers._controller.LSTMController`, the NAS-RL/NASNet
  LSTM (the same class as ``nas_rl``) with NASNet's settings: one layer of 100 hidden units,
  parameters uniform in ``[-0.1, 0.1]``; one softmax per decision of ``space.decisions()`` in
  canonical order.
* **Update**: after every ``batch_size`` told trials, PPO with the clipped surrogate objective
  ``L = mean_k min(rho_k A_k, clip(rho_k, 1 - eps, 1 + eps) A_k) + c H`` with ``eps = 0.2``,
  ``rho_k = P(a_k) / P_old(a_k)`` (sequence probabilities) and ``H`` the mean summed entropy with
  weight ``c = 1e-5`` (NASNet's "entropy penalty" weight, used as a bonus), maximised for
  ``ppo_epochs = 10`` full-batch Adam steps at learning rate 0.00035 (NASNet's PPO learning
  rate). ``P_old`` is the controller as it was when the batch was completed, which is the
  sampling policy when ``ask`` and ``tell`` alternate (the controller only changes in updates).
* **Advantage**: ``A_k = R_k - b`` with ``b`` an exponential moving average of previous rewards,
  weight 0.95 (NASNet, Appendix A), updated per architecture in told order after the update;
  before the first batch it starts at the first batch's mean reward (unstated in the papers).

Where the batch size and epochs come from: MnasNet gives no controller hyper-parameters beyond
"PPO" and the 8K sampled models; NASNet gives the learning rate, entropy weight, baseline and
initialisation but not the batch. ``batch_size = 8`` follows the m = 8 of NAS-RL (Zoph & Le,
ICLR 2017); ``clip = 0.2`` and ``ppo_epochs = 10`` are Schulman et al.'s MuJoCo settings
(Table 3; full-batch here since the batch is small).

Deviations: one synchronous controller instead of NASNet's distributed workqueue; the search
space is the one given: the paper's factorized hierarchical space exists as ``mnasnet``
(:mod:`nasforge.spaces.mnasnet`, seven blocks on MobileNetV2 with per-block ConvOp, kernel, SE,
skip, filters and layers; ``--space mnasnet --space-opt preset=cifar`` for 32x32 data), and with
``latency_metric="latency_ms"`` the search loop measures each model's latency on this machine
(the paper's LAT is measured on a Pixel 1 phone); no proxy-task training inside the method (the
evaluator's business).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from nasforge.arch import Arch
from nasforge.errors import ConfigError, check_float, check_int
from nasforge.hardware.objectives import MnasNetReward
from nasforge.registry import register
from nasforge.searchers._controller import LSTMController, batch_advantages, decayed_baseline, sample_arch
from nasforge.searchers.base import Searcher, torch_generator
from nasforge.spaces.base import SearchSpace

#: ``mode -> (alpha, beta)`` of the reward exponent (MnasNet Section 3 and Figure 2).
MODES: dict[str, tuple[float, float]] = MnasNetReward.MODES


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      clip: float) -> torch.Tensor:
    """PPO's clipped surrogate ``mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A))``, ``rho = exp(logp - old)``
    (Schulman et al. 2017, Eq. 7): to be maximised."""
    ratio = torch.exp(logp - old_logp)
    return torch.minimum(ratio * advantages, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages).mean()


@register("method", "mnasnet_ppo")
class MnasNetPPO(Searcher):
    """MnasNet search: LSTM controller, PPO, reward ``ACC * (LAT / T) ** w``.

    Args:
        space: any search space.
        seed: seed of ``self.rng`` (controller initialisation and sampling derive from it).
        target: T, the latency target in the unit of ``latency_metric`` (required, > 0).
        latency_metric: the metric read as LAT (default ``hwnb_pixel3_latency_ms``).
        accuracy_metric: the metric read as ACC (default ``val_acc``).
        mode: ``"soft"`` (alpha = beta = -0.07) or ``"hard"`` (alpha = 0, beta = -1).
        batch_size: architectures per PPO update (8, NAS-RL's m).
        ppo_epochs: Adam steps per batch (10, Schulman et al.).
        clip: the PPO clipping epsilon, in (0, 1) (0.2, Schulman et al.).
        learning_rate: Adam learning rate (NASNet: 0.00035).
        baseline_decay: decay of the moving-average baseline (NASNet: 0.95), in [0, 1).
        entropy_weight: weight of the entropy bonus (NASNet: 1e-5), >= 0.
        lstm_size: hidden units per LSTM layer (NASNet: 100).
        lstm_layers: LSTM layers (NASNet: 1).
        init_range: uniform initialisation range (NASNet: 0.1).

    Raises:
        ConfigError: a missing or non-positive target, an unknown mode, an empty metric name, or
            a rate, decay or range outside its interval; in :meth:`tell`, a successful trial
            whose metrics lack ACC or LAT or give a non-finite ACC or a non-positive LAT.
        BudgetError: a non-positive integer size.
    """

    name: ClassVar[str] = "mnasnet_ppo"
    paper: ClassVar[str] = (
        "Tan, Chen, Pang, Vasudevan, Sandler, Howard & Le, MnasNet: Platform-Aware Neural Architecture "
        "Search for Mobile, CVPR 2019"
    )
    uses_fitness: ClassVar[bool] = False  # the reward is ACC x (LAT/T)^w from the metrics
    smoke_options: ClassVar[dict[str, Any]] = {"target": 5.0, "batch_size": 4, "ppo_epochs": 2, "lstm_size": 16}

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, target: float | None = None,
        latency_metric: str = "hwnb_pixel3_latency_ms", accuracy_metric: str = "val_acc", mode: str = "soft",
        batch_size: int = 8, ppo_epochs: int = 10, clip: float = 0.2, learning_rate: float = 3.5e-4,
        baseline_decay: float = 0.95, entropy_weight: float = 1e-5, lstm_size: int = 100, lstm_layers: int = 1,
        init_range: float = 0.1,
    ) -> None:
        super().__init__(space, seed=seed)
        if target is None:
            raise ConfigError(
                f"mnasnet_ppo needs target=T, the latency target in the unit of {latency_metric!r} (> 0): "
                "MnasNet's reward ACC x (LAT/T)^w has no device-independent default"
            )
        #: ACC x (LAT/T)^w as an object (nasforge.hardware.objectives); it checks target and mode
        self.mnasnet_reward = MnasNetReward.from_mode(target, mode)
        self.target = self.mnasnet_reward.target
        for what, metric in (("latency_metric", latency_metric), ("accuracy_metric", accuracy_metric)):
            if not isinstance(metric, str) or not metric:
                raise ConfigError(f"{what} must be a non-empty metric name, got {metric!r}")
        self.mode = mode
        self.alpha, self.beta = self.mnasnet_reward.alpha, self.mnasnet_reward.beta
        self.latency_metric, self.accuracy_metric = latency_metric, accuracy_metric
        self.batch_size = check_int("batch_size", batch_size)
        self.ppo_epochs = check_int("ppo_epochs", ppo_epochs)
        self.clip = check_float("clip", clip, low=0.0, high=1.0, low_open=True, high_open=True)
        self.learning_rate = check_float("learning_rate", learning_rate, low=0.0, low_open=True)
        self.baseline_decay = check_float("baseline_decay", baseline_decay, low=0.0, high=1.0, high_open=True)
        self.entropy_weight = check_float("entropy_weight", entropy_weight, low=0.0)
        self._gen = torch_generator(self.rng)
        self.controller = LSTMController.for_space(space, lstm_size=lstm_size, lstm_layers=lstm_layers,
                                                   init_range=init_range, generator=self._gen)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.learning_rate)
        self.baseline: float | None = None
        self.updates = 0
        self._batch: list[tuple[list[int], float]] = []  # (actions, reward) told since the last update

    @classmethod
    def options(cls) -> dict[str, Any]:
        # target: required (device-specific); soft mode alpha = beta = -0.07: MnasNet Section 3;
        # lr 0.00035, entropy 1e-5, baseline 0.95, 1x100 LSTM, init +-0.1: NASNet Appendix A;
        # clip 0.2, 10 epochs: Schulman et al. 2017; batch 8: NAS-RL's m.
        return {"target": None, "latency_metric": "hwnb_pixel3_latency_ms", "accuracy_metric": "val_acc",
                "mode": "soft", "batch_size": 8, "ppo_epochs": 10, "clip": 0.2, "learning_rate": 3.5e-4,
                "baseline_decay": 0.95, "entropy_weight": 1e-5, "lstm_size": 100, "lstm_layers": 1,
                "init_range": 0.1}

    def required_metrics(self) -> tuple[str, ...]:
        return (self.accuracy_metric, self.latency_metric)

    def reward(self, fitness: float, metrics: Mapping[str, float] | None) -> float:
        """MnasNet's ``ACC * (LAT / T) ** w`` (0 for a failed trial)."""
        if not math.isfinite(float(fitness)):
            return 0.0
        metrics = metrics or {}
        missing = [m for m in self.required_metrics() if m not in metrics]
        if missing:
            raise ConfigError(
                f"mnasnet_ppo reads metrics {list(self.required_metrics())}, but the trial reported no "
                f"{missing}; reported: {sorted(metrics)}"
            )
        acc, lat = float(metrics[self.accuracy_metric]), float(metrics[self.latency_metric])
        if not math.isfinite(acc):
            raise ConfigError(f"accuracy metric {self.accuracy_metric!r} must be finite, got {acc!r}")
        if not (math.isfinite(lat) and lat > 0):
            raise ConfigError(f"latency metric {self.latency_metric!r} must be finite and > 0, got {lat!r}")
        return self.mnasnet_reward.reward(acc, lat)

    def ask(self) -> Arch:
        arch, _ = sample_arch(self.space, lambda: self.controller.sample(self._gen), what="the MnasNet controller")
        return arch

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        self._batch.append((self.space.encode_sequence(arch), self.reward(fitness, metrics)))
        if len(self._batch) >= self.batch_size:
            batch, self._batch = self._batch, []
            self._update(batch)

    def _update(self, batch: list[tuple[list[int], float]]) -> None:
        rewards = [r for _, r in batch]
        self.baseline, advantages = batch_advantages(self.baseline, rewards)
        actions = torch.tensor([a for a, _ in batch], dtype=torch.long)
        with torch.no_grad():
            old_logp, _ = self.controller.log_prob(actions)
        for _ in range(self.ppo_epochs):
            logp, entropy = self.controller.log_prob(actions)
            loss = -clipped_surrogate(logp, old_logp, advantages, self.clip) - self.entropy_weight * entropy.mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.updates += 1
        self.baseline = decayed_baseline(self.baseline, self.baseline_decay, rewards)
