"""ENAS: an RL controller that samples child models of a weight-sharing supernet.

Pham, Guan, Zoph, Le & Dean, "Efficient Neural Architecture Search via Parameter Sharing",
ICML 2018. Reference implementation ``melodyguan/enas`` (micro search:
``scripts/cifar10_micro_search.sh``, ``src/cifar10/main.py``, ``src/cifar10/micro_controller.py``,
``src/utils.py``). NAS-Bench-201's baseline: xautodl ``exps/NAS-Bench-201-algos/ENAS.py`` with
``configs/nas-benchmark/algos/ENAS.config`` and ``scripts-search/NAS-Bench-201-algos/ENAS.sh``.

Algorithm (as implemented), every epoch:

1. shared weights: one pass over the training split; every batch runs the single path of an
   architecture sampled from the controller (no controller gradient) and takes one SGD step
   (Nesterov momentum, gradient-norm clip, cosine learning rate with warm restarts per epoch);
2. controller: ``controller_steps`` Adam updates, each the mean REINFORCE gradient of
   ``controller_num_aggregate`` samples. A sample's reward is its accuracy (a fraction) on the
   next batch of a shuffled, non-augmented validation stream under the shared weights (supernet
   in eval mode, no update), plus ``entropy_weight`` times its entropy (``entropy_mode="reward"``,
   entropy detached, as both references). Per sample the baseline moves first,
   ``b <- b - (1 - baseline_decay) * (b - reward)``, then ``loss = -log_prob * (reward - b)``;

then derive: draw ``derive_samples`` architectures from the trained controller, measure each
on the same ``derive_batches`` fixed validation batches under the shared weights (eval mode)
and return the best (ties: the earlier sample). The ranked list is in ``info["samples"]``.

The controller is :class:`~nasforge.policies.controller.ControllerPolicy` (sequence scheme on
nb201 as xautodl, ENAS micro scheme on darts). ``strengths`` of the result is the one-hot path
of the returned architecture, so ``space.derive(strengths)`` gives it back; the controller's
own argmax preferences are in ``info["greedy_arch"]`` / ``info["greedy_probabilities"]`` and
each epoch's record holds its greedy architecture.

Defaults are the reference's CIFAR-10 micro search (``cifar10_micro_search.sh`` flags and the
``main.py`` defaults it leaves): 150 epochs, batch 160, SGD lr 0.05 -> 0.0005 with warm restarts
``T_0 = 10, T_mul = 2``, Nesterov momentum 0.9, L2 1e-4 (``l2_reg * sum(w^2)``: weight decay
2e-4); controller LSTM 64 x 1 layer, no temperature, tanh constant 1.10 (ops: 1.10 / 2.5), Adam
3.5e-3 with ``beta1 = 0``, ``eps = 1e-3``, 30 updates of 10 samples per epoch, baseline decay
0.99, entropy weight 1e-4. The NAS-Bench-201 protocol (xautodl) is :data:`NB201_PROTOCOL`
(``enas(ctx, **NB201_PROTOCOL)``): 310 epochs, batch 128, weight decay 2.5e-4; LSTM 32 x 2,
temperature 5, tanh constant 2.5 (also on ops), Adam 1e-3, 50 updates of 20 samples, controller
gradient clip 5. The ENAS paper text quotes temperature 5 and tanh constant 2.5 (the NB201
values); the released micro-search script uses the values above.

Deviations (stated explicitly):

* the supernet is the space's (DARTS or NB201 search network), not ENAS's micro child
  (which has 5 nodes, 5 ops, auxiliary head, drop-path and dropout); no drop-path or dropout;
* darts: a node's two inputs are distinct (the second input is drawn with the first masked
  out) and the reference's hand-set op prior is not used (see ``policies/controller.py``);
* the first reward initialises the baseline (as xautodl; the TF reference starts it at 0,
  which with decay 0.99 reinforces every early sample). The baseline is then updated after
  every sample as in the TF reference; xautodl only carries it between epochs;
* rewards use non-augmented validation batches (TF ``build_valid_rl(shuffle=False)``; xautodl
  applies the training augmentation to them);
* the weight schedule is cosine with warm restarts stepped per epoch (TF ``lr_cosine``); for
  the NB201 protocol the same, whereas xautodl's cosine ``T_max=10`` over 310 epochs rises back
  smoothly instead of restarting;
* the weight gradient is clipped to global norm ``grad_clip`` (xautodl; the TF code intends a
  per-tensor clip at 5 but appends the unclipped gradients);
* derivation measures every sample on the same fixed batches (the references give each sample
  the next validation batch) and measures duplicates once; xautodl additionally picks the best
  of 10 samples every epoch, here each epoch records the controller's greedy architecture.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.arch import Arch
from nasforge.errors import BudgetError
from nasforge.policies.controller import ControllerPolicy
from nasforge.registry import register
from nasforge.train.bilevel import Batch, check_finite, weight_step
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotMethod,
    OneShotResult,
    accuracy,
    check_sgd,
    require,
    require_positive_int,
)
from nasforge.train.sampled import rank_architectures, selected_result

ENTROPY_MODES = ("reward", "loss")

#: xautodl's NAS-Bench-201 ENAS run (ENAS.config, ENAS.sh, search_model_enas_utils.Controller defaults).
NB201_PROTOCOL: dict[str, Any] = {
    "epochs": 310, "batch_size": 128, "weight_decay": 2.5e-4,
    "controller_steps": 50, "controller_num_aggregate": 20, "controller_lr": 1e-3, "controller_grad_clip": 5.0,
    "lstm_size": 32, "lstm_layers": 2, "temperature": 5.0, "tanh_constant": 2.5, "op_tanh_reduce": 1.0,
}


@dataclass(frozen=True)
class EnasConfig:
    """ENAS hyper-parameters: ENAS micro-search defaults (``cifar10_micro_search.sh`` / ``main.py``); NB201 in brackets."""

    epochs: int = 150  # search epochs (--num_epochs=150) [NB201 ENAS.config: 310]
    batch_size: int = 160  # weight, reward and derivation batch size (--batch_size=160) [128]
    lr: float = 0.05  # SGD lr at the start of every cosine cycle (--child_lr_max=0.05) [LR 0.05]
    lr_min: float = 0.0005  # cosine floor (--child_lr_min=0.0005) [eta_min 0.0005]
    lr_T0: int | None = 10  # epochs of the first cosine cycle (--child_lr_T_0=10); None: one cosine over all epochs
    lr_T_mul: int = 2  # each restart multiplies the cycle length (--child_lr_T_mul=2)
    momentum: float = 0.9  # SGD momentum (utils.get_train_ops: MomentumOptimizer(lr, 0.9)) [0.9]
    nesterov: bool = True  # Nesterov momentum (use_nesterov=True) [nesterov 1]
    weight_decay: float = 2e-4  # --child_l2_reg=1e-4 on sum(w^2), i.e. a 2e-4 * w gradient [decay 2.5e-4]
    grad_clip: float | None = 5.0  # max global norm of a weight gradient (child_grad_bound=5.0) [clip 5]
    controller_steps: int = 30  # controller updates per epoch (--controller_train_steps=30) [50]
    controller_num_aggregate: int = 10  # samples averaged per update (--controller_num_aggregate=10) [20]
    controller_lr: float = 3.5e-3  # Adam lr (--controller_lr=0.0035) [controller_lr 0.001]
    controller_betas: tuple[float, float] = (0.0, 0.999)  # Adam betas (AdamOptimizer(beta1=0.0)) [(0, 0.999)]
    controller_eps: float = 1e-3  # Adam epsilon (AdamOptimizer(epsilon=1e-3)) [controller_eps 0.001]
    controller_grad_clip: float | None = None  # max controller gradient norm (micro: clip_mode None) [5.0]
    baseline_decay: float = 0.99  # EMA decay of the reward baseline (main.py controller_bl_dec) [0.99]
    entropy_weight: float = 1e-4  # entropy bonus (--controller_entropy_weight=0.0001) [0.0001]
    entropy_mode: str = "reward"  # "reward": reward += w * H, H detached (both references); "loss": loss -= w * H
    lstm_size: int = 64  # controller LSTM / embedding size (main.py: lstm_size=64) [32]
    lstm_layers: int = 1  # stacked LSTM layers (main.py: lstm_num_layers=1) [2]
    temperature: float | None = None  # logits / temperature; None: not applied (micro script sets none) [5.0]
    tanh_constant: float | None = 1.10  # logits -> c * tanh(logits) (--controller_tanh_constant=1.10) [2.5]
    op_tanh_reduce: float = 2.5  # op logits use tanh_constant / op_tanh_reduce (--controller_op_tanh_reduce=2.5) [1]
    derive_samples: int = 100  # architectures drawn after the search (xautodl --controller_num_samples 100)
    derive_batches: int = 1  # fixed validation batches each is measured on (paper: "a single minibatch")

    def __post_init__(self) -> None:
        check_sgd(self)
        if self.lr_T0 is not None:
            require_positive_int("lr_T0", self.lr_T0)
        require(_int_at_least(self.lr_T_mul, 1), f"lr_T_mul must be an int >= 1, got {self.lr_T_mul!r}")
        require(isinstance(self.nesterov, bool), f"nesterov must be a bool, got {self.nesterov!r}")
        require_positive_int("controller_steps", self.controller_steps)
        require_positive_int("controller_num_aggregate", self.controller_num_aggregate)
        require(_finite(self.controller_lr) and self.controller_lr > 0, f"controller_lr must be > 0, got {self.controller_lr!r}")
        betas = tuple(self.controller_betas)
        require(len(betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in betas),
                f"controller_betas must be two numbers in [0, 1), got {self.controller_betas!r}")
        require(_finite(self.controller_eps) and self.controller_eps > 0, f"controller_eps must be > 0, got {self.controller_eps!r}")
        clip = self.controller_grad_clip
        require(clip is None or (_finite(clip) and clip > 0), f"controller_grad_clip must be > 0 or None, got {clip!r}")
        require(_finite(self.baseline_decay) and 0 <= self.baseline_decay < 1,
                f"baseline_decay must be in [0, 1), got {self.baseline_decay!r}")
        require(_finite(self.entropy_weight) and self.entropy_weight >= 0,
                f"entropy_weight must be >= 0, got {self.entropy_weight!r}")
        require(self.entropy_mode in ENTROPY_MODES,
                f"entropy_mode must be one of {', '.join(ENTROPY_MODES)}, got {self.entropy_mode!r}")
        require(_int_at_least(self.lstm_size, 1), f"lstm_size must be an int > 0, got {self.lstm_size!r}")
        require(_int_at_least(self.lstm_layers, 1), f"lstm_layers must be an int > 0, got {self.lstm_layers!r}")
        for name in ("temperature", "tanh_constant"):
            value = getattr(self, name)
            require(value is None or (_finite(value) and value > 0), f"{name} must be > 0 or None, got {value!r}")
        require(_finite(self.op_tanh_reduce) and self.op_tanh_reduce > 0,
                f"op_tanh_reduce must be > 0, got {self.op_tanh_reduce!r}")
        require_positive_int("derive_samples", self.derive_samples)
        require_positive_int("derive_batches", self.derive_batches)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


# ---- pieces ---------------------------------------------------------------------------------
@torch.no_grad()
def batch_accuracy(supernet: nn.Module, path: dict[str, str], batch: Batch) -> float:
    """Fraction of ``batch`` that ``supernet`` classifies right along ``path`` (the ENAS reward; no update)."""
    x, y = batch
    return float((supernet(x, path).argmax(1) == y).float().mean())


def controller_step(
    controller: ControllerPolicy, reward_fn: Callable[[Arch], float], optimizer: torch.optim.Optimizer,
    baseline: float | None, *, num_aggregate: int, baseline_decay: float, entropy_weight: float,
    entropy_mode: str = "reward", grad_clip: float | None = None, where: str = "controller step",
) -> tuple[float, dict[str, float]]:
    """One REINFORCE update of ``controller`` from ``num_aggregate`` samples; returns ``(baseline, means)``.

    For each sample, in order: ``r = reward_fn(arch)`` (+ ``entropy_weight * H`` in ``"reward"``
    mode, ``H`` detached), ``b = r`` if there is no baseline yet else
    ``b - (1 - baseline_decay) * (b - r)``, and the loss ``-log_prob * (r - b)`` (minus
    ``entropy_weight * H`` in ``"loss"`` mode) divided by ``num_aggregate`` is backpropagated.
    Then the summed (mean) gradient is clipped to ``grad_clip`` and ``optimizer`` steps once.
    ``means``: the averages of the step's ``valid_acc`` (%), ``reward``, ``entropy`` and ``controller_loss``.
    """
    require_positive_int("num_aggregate", num_aggregate)
    optimizer.zero_grad(set_to_none=True)
    sums = {"valid_acc": 0.0, "reward": 0.0, "entropy": 0.0, "controller_loss": 0.0}
    for _ in range(num_aggregate):
        sample = controller.sample()
        acc = float(reward_fn(sample.arch))
        entropy = float(sample.entropy.detach())
        reward = acc + entropy_weight * entropy if entropy_mode == "reward" else acc
        baseline = reward if baseline is None else baseline - (1.0 - baseline_decay) * (baseline - reward)
        loss = -sample.log_prob * (reward - baseline)
        if entropy_mode == "loss":
            loss = loss - entropy_weight * sample.entropy
        value = check_finite(loss, where)
        (loss / num_aggregate).backward()
        for key, v in (("valid_acc", 100.0 * acc), ("reward", reward), ("entropy", entropy), ("controller_loss", value)):
            sums[key] += v
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(list(controller.parameters()), grad_clip)
    optimizer.step()
    final = baseline if baseline is not None else 0.0  # always set: num_aggregate >= 1 samples ran
    return final, {k: v / num_aggregate for k, v in sums.items()}


def reward_batches(ctx: OneShotContext, batch_size: int, epoch: int, total: int, skip: int = 0) -> Iterator[Batch]:
    """The validation batches of epoch ``epoch``'s controller phase, from number ``skip`` on.

    A shuffled, non-augmented stream (TF ``build_valid_rl``), cycled as often as ``total``
    batches need; its order depends only on ``(seed, epoch)`` (so a resumed phase continues
    it), never on the global RNG. Seeds ``ctx.seed + 3``: not the train (seed), validation
    (seed + 1) or ranking (seed + 2) orders.
    """
    from nasforge.data import make_loader

    per_cycle = len(ctx.valid_set) // batch_size  # type: ignore[arg-type]
    if per_cycle == 0:
        raise BudgetError(f"batch_size {batch_size} exceeds the {len(ctx.valid_set)} validation images")  # type: ignore[arg-type]
    cycles = -(-total // per_cycle)  # per epoch, so (epoch, cycle) -> one loader epoch index
    cycle, offset = divmod(skip, per_cycle)
    while True:
        loader = make_loader(ctx.valid_set, batch_size, shuffle=True, seed=ctx.seed + 3, epoch=epoch * cycles + cycle,
                             drop_last=True)
        for x, y in itertools.islice(loader, offset, None):
            x = x.to(ctx.device)
            if ctx.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(ctx.device)
        cycle, offset = cycle + 1, 0


def reward_fn(supernet: Any, batches: Iterator[Batch]) -> Callable[[Arch], float]:
    """``arch -> batch_accuracy`` of its single path on the next of ``batches``."""

    def reward(arch: Arch) -> float:
        return batch_accuracy(supernet, supernet.path_for(arch), next(batches))

    return reward


def weight_schedule(optimizer: torch.optim.Optimizer, cfg: EnasConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine with warm restarts (``T_0 = lr_T0``, ``T_mult = lr_T_mul``), or one cosine over the epochs."""
    if cfg.lr_T0 is None:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.lr_min)
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=cfg.lr_T0, T_mult=cfg.lr_T_mul,
                                                                eta_min=cfg.lr_min)


# ---- the search -----------------------------------------------------------------------------
def search(ctx: OneShotContext, cfg: EnasConfig) -> OneShotResult:
    supernet = ctx.supernet()
    # The controller stays on the CPU: a sample is ~50 sequential tiny LSTM steps (launch-bound on an
    # accelerator), and its architecture stream then does not depend on the device.
    controller = ControllerPolicy(
        ctx.space, supernet, lstm_size=cfg.lstm_size, lstm_layers=cfg.lstm_layers, temperature=cfg.temperature,
        tanh_constant=cfg.tanh_constant, op_tanh_reduce=cfg.op_tanh_reduce, seed=ctx.seed,
    )
    w_opt = torch.optim.SGD(supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                            nesterov=cfg.nesterov and cfg.momentum > 0)
    scheduler = weight_schedule(w_opt, cfg)
    c_opt = torch.optim.Adam(controller.parameters(), lr=cfg.controller_lr, betas=cfg.controller_betas,
                             eps=cfg.controller_eps)
    run = ctx.open_run("enas", cfg, supernet=supernet, controller=controller, w_opt=w_opt, c_opt=c_opt,
                       scheduler=scheduler)
    weight_steps = run.steps_per_epoch(cfg.batch_size)
    samples_per_epoch = cfg.controller_steps * cfg.controller_num_aggregate

    for epoch in run.epochs(cfg.epochs):
        lr = scheduler.get_last_lr()[0]
        # (1) shared weights, one sampled child model per batch
        supernet.train()
        for b, train in run.train_batches(cfg.batch_size):
            with torch.no_grad():
                path = controller()
            loss, logits = weight_step(supernet, path, train, w_opt, loss_fn=F.cross_entropy,
                                       grad_clip=cfg.grad_clip, where=f"epoch {epoch} batch {b} weight")
            run.step_done(train_loss=loss, train_acc=accuracy(logits, train[1]))
        # (2) controller; run.batch counts this epoch's steps of both phases (a resume may land in this one)
        supernet.eval()
        done = run.batch - weight_steps
        reward = reward_fn(supernet, reward_batches(
            ctx, cfg.batch_size, epoch, samples_per_epoch, skip=done * cfg.controller_num_aggregate,
        ))
        for s in range(done, cfg.controller_steps):
            baseline, metrics = controller_step(
                controller, reward, c_opt, run.scalars.get("baseline"), num_aggregate=cfg.controller_num_aggregate,
                baseline_decay=cfg.baseline_decay, entropy_weight=cfg.entropy_weight, entropy_mode=cfg.entropy_mode,
                grad_clip=cfg.controller_grad_clip, where=f"epoch {epoch} controller step {s}",
            )
            run.scalars["baseline"] = baseline
            run.step_done(**metrics)
        scheduler.step()
        run.epoch_done(lr=lr, baseline=run.scalars.get("baseline"),
                       arch=ctx.space.format(_greedy(controller)))

    # (3) derive: the best of derive_samples controller samples on fixed validation batches
    supernet.eval()
    batches = ctx.fixed_valid_batches(cfg.derive_batches, cfg.batch_size)
    with torch.no_grad():
        drawn = [controller.sample() for _ in range(cfg.derive_samples)]
    log_probs: dict[Arch, float] = {}
    for sample in drawn:
        log_probs.setdefault(sample.arch, float(sample.log_prob))
    ranking = rank_architectures(supernet, [s.arch for s in drawn], batches)
    best, best_acc = ranking[0]
    ctx.log(f"enas: best of {cfg.derive_samples} controller samples: {ctx.space.format(best)} ({best_acc:.2f}%)")
    records = [{"arch": ctx.space.format(a), "valid_acc": acc, "log_prob": log_probs[a]} for a, acc in ranking]
    return selected_result(
        ctx, run, supernet, best, valid_accuracy=best_acc, samples=records, baseline=run.scalars.get("baseline"),
        greedy_arch=ctx.space.format(_greedy(controller)), greedy_probabilities=controller.greedy_probabilities(),
    )


def _greedy(controller: ControllerPolicy) -> Arch:
    with torch.no_grad():
        return controller.sample(greedy=True).arch


enas = register("method", "enas")(OneShotMethod(
    name="enas",
    paper="Pham, Guan, Zoph, Le & Dean, 'Efficient Neural Architecture Search via Parameter Sharing', ICML 2018",
    config_cls=EnasConfig,
    search=search,
))

