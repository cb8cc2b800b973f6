"""ProxylessNAS: binarized path gates, two-path architecture gradients, latency-aware loss.

Cai, Zhu & Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware",
ICLR 2019. Reference implementation ``mit-han-lab/proxylessnas``: ``search/modules/mix_op.py``
(``MixedEdge``: ``binarize``, ``set_arch_param_grad``, ``rescale_updated_arch_param``),
``search/nas_manager.py`` (``ArchSearchRunManager.warm_up`` / ``train`` / ``gradient_step`` /
``rl_update_step``, ``GradientArchSearchConfig.add_regularization_loss``,
``RLArchSearchConfig.calculate_reward``) and ``search/imagenet_arch_search.py`` (defaults).

Algorithm, as implemented (:class:`~nasforge.policies.binary_gate.BinaryGatePolicy` holds the
logits ``alpha`` of every layer and draws the paths):

1. **warm-up** (``warmup_epochs``): weight steps only. Each step draws one candidate per layer
   from ``softmax(alpha)`` (the binary gate) and runs and trains only that path
   (:func:`~nasforge.train.bilevel.weight_step`): memory O(1) in the number of candidates. SGD
   (Nesterov), learning rate cosine from ``warmup_lr`` to 0 over the warm-up steps, label
   smoothing; as the reference's ``warm_up``.
2. **joint training** (``epochs``): the same weight step on every training batch (learning rate
   cosine from ``lr`` to ``lr_min`` per step over the joint epochs); after every
   ``arch_update_every``-th batch, ``arch_update_steps`` architecture steps on validation batches
   (none in the joint epochs before ``arch_start_epoch``: the reference skips its first epoch).

   * ``mode="two"`` (the paper's Section 3.2.1 and the reference's ``grad_binary_mode two``):
     per layer two distinct candidates are drawn from ``softmax(alpha)``, one made active with
     the probabilities ``softmax`` restricted to the pair; both run on the validation batch
     through :class:`~nasforge.nn.choice.Gates` (gate 1 and 0). The loss is the cross-entropy,
     combined with the expected latency (``expected_latency(table, softmax(alpha))``, see
     :mod:`nasforge.hardware.lut`) by :class:`~nasforge.hardware.objectives.ProxylessLoss`
     (``mul#log`` or ``add#linear``, around ``latency_target``). The gate gradients ``dL/dg``
     of the two candidates become ``dL/dalpha_i = sum_j dL/dg_j p~_j (delta_ij - p~_i)``
     (``p~``: softmax over the pair), added to the latency term's direct gradient; one Adam
     step; then the two updated logits are shifted by ``log sum exp(new) - log sum exp(old)``
     so the probabilities of the other candidates are unchanged.
   * ``mode="reinforce"`` (the paper's Section 3.2.2, reference ``rl_update_step``): each
     architecture step draws ``rl_batch_size`` single paths, scores each on the validation batch
     (top-1 accuracy in [0, 1], no gradient), reward ``ACC x (LAT / T) ** -w`` with LAT the
     table's prediction of the path (:class:`~nasforge.hardware.objectives.MnasNetReward` with
     both exponents ``-rl_tradeoff``: the reference's ``acc * (ref / lat) ** 0.1``), a moving
     average baseline (:func:`nasforge.searchers._controller.decayed_baseline` over the mean
     reward, started at the first mean), and one Adam step on
     ``-mean_j (r_j - b) * log p(path_j)``. The updates are spread evenly over each epoch,
     ``rl_updates_per_epoch`` of them (the reference's ``get_update_schedule``).

3. The final architecture is the argmax of ``alpha`` in every layer (the reference's
   ``convert_to_normal_net``; on nb201 the space's rule, which is the same argmax).

Latency: ``latency_table`` is a table of this machine built by ``nasforge hardware build-lut``
for the same space options and input shape (refused otherwise, with each difference named),
and then ``latency_target`` (the reference's ``ref_value``, in ``latency_unit``: ``ms``, or ``us``
for sub-millisecond networks, since ``mul#log`` takes ``log LAT``) is required.
**Without a table the search optimises the cross-entropy alone** (reward = accuracy in mode
``reinforce``): the reference's ``target_hardware=None``, its script default. No FLOPs-based
fallback is offered, so a search never silently optimises a proxy of latency; a target given
without a table is refused.

Defaults are the reference script's ImageNet search (each field names its source). Deviations,
stated explicitly:

* The reference script's default architecture gradient is ``full_v2`` (every candidate's gate
  gradient from recomputed outputs); the paper's memory argument and this method use ``two``.
  ``full`` / ``full_v2`` are not offered.
* Arch and weight steps draw from the policy's own seeded generator (resumable), not numpy's.
* ``skip`` of the mobilenet space is the identity of the whole block; the reference's
  candidate is a zero op inside a block whose shortcut remains. The gate gradients differ by
  the same term for both sampled candidates, which the pair formula cancels (its weights sum to
  zero over the pair), so the logit update is the same. But the reference sets the layer's whole
  logit gradient (latency term included) to None when the active candidate is its zero op; here
  such a layer is updated like any other.
* The architecture step's batch is the validation split's next batch at ``batch_size``
  (reference: ``grad_data_batch=None`` -> the training batch size); the cross-entropy of the
  architecture step has no label smoothing (the reference's ``criterion``).
* The REINFORCE baseline: the reference moves it by ``0.99`` of the gap to the batch mean
  (``b += 0.99 (mean - b)``), i.e. ``b <- 0.01 b + 0.99 mean``: ``rl_baseline_decay=0.01`` in
  the shared helper's ``b <- decay b + (1 - decay) mean`` form.
* Latency of a REINFORCE sample is the table's prediction (the reference's ``fast=True``
  estimator), never a measurement.
* Learning rates are set per step from the position (epoch, batch), so a resume continues them
  exactly; no weight decay exemptions (the reference's ``no_decay_keys`` default is none too).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nasforge.hardware.lut import LatencyTable, expected_latency, load_lut
from nasforge.hardware.objectives import MnasNetReward, ProxylessLoss
from nasforge.nn.choice import Supernet
from nasforge.policies.binary_gate import BinaryGatePolicy, log_prob_of, pair_alpha_grad, rescale_pair
from nasforge.registry import register
from nasforge.searchers._controller import batch_advantages, decayed_baseline
from nasforge.train.bilevel import check_finite, weight_step
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotMethod,
    OneShotResult,
    SearchRun,
    accuracy,
    check_adam,
    check_sgd,
    json_safe,
    require,
    require_positive_int,
    strengths_lists,
)

MODES = ("two", "reinforce")
#: latency unit -> its number per millisecond (tables are in ms)
UNITS = {"ms": 1.0, "us": 1000.0}


@dataclass(frozen=True)
class ProxylessConfig:
    """ProxylessNAS hyper-parameters (``imagenet_arch_search.py`` defaults unless said otherwise)."""

    epochs: int = 120  # joint (weights + architecture) epochs after the warm-up (--n_epochs 120)
    warmup_epochs: int = 40  # weight-only epochs first (--warmup_epochs 40)
    batch_size: int = 256  # training batch, and the architecture step's batch (--train_batch_size; grad_data_batch None)
    lr: float = 0.025  # initial SGD learning rate of the joint phase, cosine per step (--init_lr, --lr_schedule_type cosine)
    lr_min: float = 0.0  # end of the joint cosine schedule (the reference's cosine ends at 0)
    warmup_lr: float = 0.05  # initial learning rate of the warm-up cosine (warm_up: lr_max = 0.05)
    momentum: float = 0.9  # SGD momentum (--momentum 0.9)
    nesterov: bool = True  # Nesterov momentum (opt_param nesterov = not --no_nesterov)
    weight_decay: float = 4e-5  # SGD weight decay (--weight_decay 4e-5)
    label_smoothing: float = 0.1  # weight steps' cross-entropy smoothing (--label_smoothing 0.1)
    grad_clip: float | None = None  # max gradient norm of a weight step (reference: none)
    mode: str = "two"  # architecture update: "two" (two-path gate gradients) or "reinforce" (--arch_algo rl)
    arch_lr: float = 1e-3  # Adam learning rate of alpha (--arch_lr 1e-3)
    arch_betas: tuple[float, float] = (0.0, 0.999)  # Adam betas of alpha (--arch_adam_beta1 0, --arch_adam_beta2 0.999)
    arch_eps: float = 1e-8  # Adam eps of alpha (--arch_adam_eps 1e-8)
    arch_weight_decay: float = 0.0  # Adam weight decay of alpha (--arch_weight_decay 0)
    init_scale: float = 1e-3  # alpha starts at init_scale * N(0, 1) (--arch_init_type normal, --arch_init_ratio 1e-3)
    arch_update_every: int = 5  # mode two: architecture steps after every N-th batch (--grad_update_arch_param_every 5)
    arch_update_steps: int = 1  # mode two: architecture steps each time (--grad_update_steps 1)
    arch_start_epoch: int = 1  # first joint epoch with architecture steps (nas_manager.train: "if epoch > 0")
    latency_table: str | None = None  # table of `nasforge hardware build-lut`; None: no latency term (target_hardware None)
    latency_target: float | None = None  # reference latency in latency_unit, required with a table (ref_value; mobile: 80 ms)
    latency_unit: str = "ms"  # unit of latencies in the loss and reward: "ms" or "us" (mul#log needs LAT > 1 in it)
    latency_loss: str = "mul#log"  # "mul#log" or "add#linear" (--grad_reg_loss_type mul#log)
    loss_alpha: float = 0.2  # mul#log: alpha (--grad_reg_loss_alpha 0.2)
    loss_beta: float = 0.3  # mul#log: beta (--grad_reg_loss_beta 0.3)
    loss_lambda: float = 0.1  # add#linear: lambda (--grad_reg_loss_lambda 0.1)
    rl_batch_size: int = 10  # reinforce: paths sampled per architecture step (--rl_batch_size 10)
    rl_updates_per_epoch: int = 300  # reinforce: architecture steps per epoch, spread evenly (--rl_update_steps_per_epoch)
    rl_baseline_decay: float = 0.01  # reinforce: b <- decay b + (1-decay) mean (reference: b += 0.99 (mean - b))
    rl_tradeoff: float = 0.1  # reinforce: w of ACC x (T / LAT) ** w (--rl_tradeoff_ratio 0.1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch_betas", tuple(self.arch_betas))
        check_sgd(self)
        check_adam(self)
        require(self.latency_unit in UNITS, f"latency_unit must be one of {', '.join(UNITS)}, got {self.latency_unit!r}")
        require(self.mode in MODES, f"proxylessnas mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        require(isinstance(self.warmup_epochs, int) and not isinstance(self.warmup_epochs, bool)
                and self.warmup_epochs >= 0, f"warmup_epochs must be an int >= 0, got {self.warmup_epochs!r}")
        require(isinstance(self.arch_start_epoch, int) and not isinstance(self.arch_start_epoch, bool)
                and self.arch_start_epoch >= 0, f"arch_start_epoch must be an int >= 0, got {self.arch_start_epoch!r}")
        for name in ("arch_update_every", "arch_update_steps", "rl_batch_size", "rl_updates_per_epoch"):
            require_positive_int(name, getattr(self, name))
        for name in ("warmup_lr", "arch_eps", "init_scale", "rl_tradeoff"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                    f"{name} must be a finite number >= 0, got {value!r}")
        require(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        require(0 <= self.rl_baseline_decay < 1, f"rl_baseline_decay must be in [0, 1), got {self.rl_baseline_decay!r}")
        if self.latency_table is None:
            require(self.latency_target is None,
                    "latency_target needs a latency_table (build one with `nasforge hardware build-lut`); without a "
                    "table proxylessnas optimises the cross-entropy alone")
        else:
            require(self.latency_target is not None,
                    f"latency_table {self.latency_table} needs latency_target (the reference latency in ms, the "
                    "reference's ref_value)")
            self.latency_objective()  # a bad form or target fails before anything runs

    def latency_objective(self) -> ProxylessLoss | None:
        """The latency-regularised loss, or None without a table."""
        if self.latency_target is None:
            return None
        return ProxylessLoss(self.latency_target, self.latency_loss, alpha=self.loss_alpha, beta=self.loss_beta,
                             lambda_=self.loss_lambda)


def cosine_lr(base: float, low: float, step: int, total: int) -> float:
    """``low + (base - low) (1 + cos(pi step / total)) / 2`` (the reference's per-batch cosine)."""
    return low + 0.5 * (base - low) * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def arch_schedule(n_batches: int, cfg: ProxylessConfig) -> dict[int, int]:
    """Batch index -> architecture steps after it (the reference's ``get_update_schedule``)."""
    if cfg.mode == "two":
        return {i: cfg.arch_update_steps for i in range(n_batches) if (i + 1) % cfg.arch_update_every == 0}
    k = min(cfg.rl_updates_per_epoch, n_batches)  # the reference's get_split_list: k near-equal segments
    sizes = [n_batches // k + (1 if i < n_batches % k else 0) for i in range(k)]
    ends, total = [], 0
    for s in sizes:
        total += s
        ends.append(total - 1)
    return dict.fromkeys(ends, 1)


def two_path_step(
    supernet: Supernet, policy: BinaryGatePolicy, batch: tuple[torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer, *, objective: ProxylessLoss | None, table: LatencyTable | None, where: str,
    scale: float = 1.0,
) -> dict[str, float]:
    """One two-path architecture step (see the module docstring); returns its metrics.

    ``scale`` converts the table's milliseconds to the objective's unit.
    """
    pairs = policy.sample_pairs()
    path, gates = policy.gated_path(pairs)
    x, y = batch
    logits = supernet(x, path)
    ce = F.cross_entropy(logits, y)
    metrics = {"arch_ce": float(ce.detach()), "arch_acc": accuracy(logits.detach(), y)}
    loss = ce
    if objective is not None and table is not None:
        lat = expected_latency(table, policy.probs())
        loss = objective.loss(ce, lat * scale)  # type: ignore[assignment]
        metrics["expected_latency_ms"] = float(lat.detach())
    metrics["arch_loss"] = check_finite(loss, where)
    keys = list(policy.choices)
    alphas = [policy.logits[k] for k in keys]
    grads = torch.autograd.grad(loss, [*alphas, *(gates[k] for k in keys)], allow_unused=True)
    old: dict[str, list[float]] = {}
    for i, (key, alpha) in enumerate(zip(keys, alphas)):
        direct, gate_grad = grads[i], grads[len(keys) + i]
        grad = torch.zeros_like(alpha) if direct is None else direct.detach().clone()
        pair = pairs[key].pair
        if gate_grad is not None and pair[0] != pair[1]:
            grad += pair_alpha_grad(alpha, pair, gate_grad)
        alpha.grad = grad
        old[key] = [float(alpha.detach()[j]) for j in pair]
    optimizer.step()
    for key, alpha in zip(keys, alphas):
        pair = pairs[key].pair
        if pair[0] != pair[1]:
            rescale_pair(alpha, pair, old[key])
    return metrics


def reinforce_step(
    ctx: OneShotContext, run: SearchRun, supernet: Supernet, policy: BinaryGatePolicy,
    batch: tuple[torch.Tensor, torch.Tensor], optimizer: torch.optim.Optimizer, cfg: ProxylessConfig, *,
    table: LatencyTable | None, where: str,
) -> dict[str, float]:
    """One REINFORCE step on ``alpha`` (see the module docstring); returns its metrics."""
    x, y = batch
    reward_of = None if table is None or cfg.latency_target is None else MnasNetReward(
        cfg.latency_target, alpha=-cfg.rl_tradeoff, beta=-cfg.rl_tradeoff)
    samples, rewards, lats = [], [], []
    for _ in range(cfg.rl_batch_size):
        indices = policy.sample_indices()
        path = {k: policy.choices[k][i] for k, i in indices.items()}
        with torch.no_grad():
            acc = accuracy(supernet(x, path), y) / 100.0
        if reward_of is not None and table is not None:
            lat = table.predict(ctx.space.make(path))
            lats.append(lat)
            rewards.append(reward_of.reward(acc, lat * UNITS[cfg.latency_unit]))
        else:
            rewards.append(acc)
        samples.append(indices)
    mean = sum(rewards) / len(rewards)
    previous = run.scalars.get("rl_baseline")
    baseline = mean if previous is None else decayed_baseline(float(previous), cfg.rl_baseline_decay, [mean])
    _, adv = batch_advantages(baseline, rewards)
    loss = -torch.stack([a * log_prob_of(policy, s) for a, s in zip(adv, samples)]).mean()
    check_finite(loss, where)
    alphas = list(policy.parameters())
    for alpha, grad in zip(alphas, torch.autograd.grad(loss, alphas, allow_unused=True)):
        alpha.grad = torch.zeros_like(alpha) if grad is None else grad.detach()
    optimizer.step()
    run.scalars["rl_baseline"] = baseline
    metrics = {"reward": mean, "rl_baseline": baseline}
    if lats:
        metrics["sampled_latency_ms"] = sum(lats) / len(lats)
    return metrics


def derive(ctx: OneShotContext, policy: BinaryGatePolicy) -> Any:
    """argmax ``alpha`` per layer: on spaces whose choice keys are their decisions directly, else the space's rule."""
    if set(policy.choices) == set(ctx.space.decisions()):
        return ctx.space.make(policy.argmax_path())
    return ctx.space.derive(policy.strengths())


def search(ctx: OneShotContext, cfg: ProxylessConfig) -> OneShotResult:
    table = None
    if cfg.latency_table is not None:
        table = load_lut(cfg.latency_table, space=ctx.space, input_shape=ctx.input_shape, num_classes=ctx.num_classes)
    objective = cfg.latency_objective()
    supernet: Supernet = ctx.supernet()
    policy = BinaryGatePolicy(supernet.choices(), init_scale=cfg.init_scale, seed=ctx.seed).to(ctx.device)
    w_opt = torch.optim.SGD(supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                            nesterov=cfg.nesterov and cfg.momentum > 0)
    a_opt = torch.optim.Adam(policy.parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas, eps=cfg.arch_eps,
                             weight_decay=cfg.arch_weight_decay)
    run = ctx.open_run("proxylessnas", cfg, supernet=supernet, policy=policy, w_opt=w_opt, a_opt=a_opt)
    loss_fn = functools.partial(F.cross_entropy, label_smoothing=cfg.label_smoothing)
    n = run.steps_per_epoch(cfg.batch_size)

    supernet.train()
    for epoch in run.epochs(cfg.warmup_epochs + cfg.epochs):
        warm = epoch < cfg.warmup_epochs
        joint = epoch - cfg.warmup_epochs
        schedule = {} if warm or joint < cfg.arch_start_epoch else arch_schedule(n, cfg)
        lr = 0.0
        for b, train, valid in run.batches(cfg.batch_size):
            where = f"epoch {epoch} batch {b}"
            if warm:
                lr = cosine_lr(cfg.warmup_lr, 0.0, epoch * n + b, cfg.warmup_epochs * n)
            else:
                lr = cosine_lr(cfg.lr, cfg.lr_min, joint * n + b, cfg.epochs * n)
            for group in w_opt.param_groups:
                group["lr"] = lr
            t_loss, t_logits = weight_step(supernet, policy.sample_path(), train, w_opt, loss_fn=loss_fn,
                                           grad_clip=cfg.grad_clip, where=f"{where} weight")
            metrics: dict[str, float] = {"train_loss": t_loss, "train_acc": accuracy(t_logits, train[1])}
            for _ in range(schedule.get(b, 0)):
                if cfg.mode == "two":
                    metrics.update(two_path_step(supernet, policy, valid, a_opt, objective=objective, table=table,
                                                 where=f"{where} arch", scale=UNITS[cfg.latency_unit]))
                else:
                    metrics.update(reinforce_step(ctx, run, supernet, policy, valid, a_opt, cfg, table=table,
                                                  where=f"{where} arch"))
            run.step_done(**metrics)
        record: dict[str, Any] = {"phase": "warmup" if warm else "joint", "lr": lr,
                                  "arch": ctx.space.format(derive(ctx, policy))}
        if table is not None:
            with torch.no_grad():
                record["expected_latency_ms_end"] = float(expected_latency(table, policy.probs()))
            record["predicted_latency_ms"] = table.predict(derive(ctx, policy))
        run.epoch_done(**record)

    arch = derive(ctx, policy)
    info: dict[str, Any] = {"mode": cfg.mode, "latency_table": cfg.latency_table, "latency_target": cfg.latency_target,
                            "rl_baseline": run.scalars.get("rl_baseline")}
    if table is not None:
        info["predicted_latency_ms"] = table.predict(arch)
        with torch.no_grad():
            info["expected_latency_ms"] = float(expected_latency(table, policy.probs()))
    return OneShotResult(arch=arch, strengths=strengths_lists(policy.strengths()), history=list(run.history),
                         seconds=run.seconds(), info=json_safe(info))


proxylessnas = register("method", "proxylessnas")(OneShotMethod(
    name="proxylessnas",
    paper="Cai, Zhu & Han, 'ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware', ICLR 2019",
    config_cls=ProxylessConfig,
    search=search,
    spaces=("mobilenet", "nb201"),
))
