"""FairNAS: strict-fairness supernet training, then NSGA-II selection over accuracy and cost.

Chu, Zhang & Xu, "FairNAS: Rethinking Evaluation Fairness of Weight Sharing Neural Architecture
Search", ICCV 2021 (arXiv 1907.01845). Reference code ``xiaomi-automl/FairNAS`` (released models
and their evaluation; the supernet training follows the paper's Algorithm 1).

Algorithm (as implemented):

1. supernet training with *strict fairness* (paper, Definition 2 and Algorithm 1): on every
   batch, :class:`~nasforge.policies.FairPolicy` draws for each layer a random permutation of its
   ``m`` candidates; model ``i`` runs the ``i``-th entry of every layer's permutation. The ``m``
   single-path models run forward and backward on the *same* batch one after the other, their
   gradients accumulate (summed, as repeated ``loss.backward()`` calls do), and then one
   optimizer step is taken (:func:`fair_step`). So every candidate of every layer gets exactly one
   gradient contribution per step, and all are updated together;
2. selection: NSGA-II (:class:`nasforge.searchers.nsga2.NSGA2`, the same ask/tell searcher as
   ``--method nsga2``: rank and crowding from :mod:`nasforge.pareto`) over validation accuracy
   (maximised) and the cost metrics in ``cost_objectives`` (minimised), for ``generations``
   generations of ``population_size``. Each candidate is scored with the weights it inherits from
   the supernet after BN recalibration
   (:class:`~nasforge.evaluators.supernet.SupernetEvaluator`); a candidate whose stand-alone
   network breaks a limit in ``constraints`` is not scored and is told as failed (dominated by
   every scored one). The result is the Pareto front of all scored candidates
   (``info["pareto_front"]``) and, from it, **the most accurate front member** (ties: the one
   scored first), which meets every limit since only candidates within the limits are scored.

Defaults (the paper's ImageNet setting as far as it could be checked; the paper text was not
available to this implementation, so values marked "not checked" come from memory of the paper
and secondary accounts): 150 epochs, batch 256, SGD lr 0.045 with cosine decay, momentum 0.9,
weight decay 4e-5 (not checked); NSGA-II with population 70 for 120 generations (not checked);
objectives accuracy and multiply-adds; BN recalibration on 20,000 training images (SPOS's
figure; not checked for FairNAS).

Deviations (stated explicitly):

* the paper's search space is MobileNetV2-like with 6 choices per layer (kernel 3/5/7 x
  expansion 3/6), which is the ``mobilenet`` space with ``--space-opt allow_skip=false``. With
  ``skip`` offered (the default space), layers have different numbers of choices; a step then
  runs ``m = max`` models and a layer with fewer choices fills the extra models from another
  permutation (each of its choices runs once or twice per step; see
  :mod:`nasforge.policies.fair`). On ``nb201`` every edge has 5 choices: strictly fair;
* NSGA-II's constraint handling: candidates breaking a limit are failures (worst in every
  objective), not Deb's constrained domination;
* the paper's reinforced mutation (MoreMNAS) and its choice of final models from the front by
  hand are replaced by NSGA-II's uniform crossover and one-decision mutation and the
  most-accurate rule above;
* candidates are scored on fixed validation batches (the same for every candidate), with BN
  statistics recomputed as the equal-weight average over fixed training batches;
* the search is resumable at every training checkpoint and after every NSGA-II generation (the
  searcher is rebuilt by replaying the recorded asks and tells).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasforge.errors import IncompatibleRunError
from nasforge.evaluators.supernet import (
    StandaloneCost,
    SupernetEvaluator,
    broken_limits,
    cost_limits,
    no_feasible_error,
)
from nasforge.hardware.objectives import COST_METRICS
from nasforge.nn.choice import Path
from nasforge.policies import FairPolicy
from nasforge.registry import register
from nasforge.searchers.nsga2 import NSGA2
from nasforge.train.bilevel import Batch, LossFn, check_finite
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotMethod,
    OneShotResult,
    accuracy,
    check_sgd,
    require,
    require_positive_int,
    sgd_cosine,
)
from nasforge.train.sampled import selected_result


@dataclass(frozen=True)
class FairNasConfig:
    """FairNAS hyper-parameters (sources and what was not checked: module docstring)."""

    epochs: int = 150  # supernet training epochs (paper, not checked)
    batch_size: int = 256  # training batch, the same for the m models of a step (paper, not checked)
    lr: float = 0.045  # initial SGD learning rate (paper, not checked)
    lr_min: float = 0.0  # cosine annealing floor
    momentum: float = 0.9  # SGD momentum (paper, not checked)
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 4e-5  # L2 weight decay (paper, not checked)
    grad_clip: float | None = None  # max norm of the accumulated gradient; None: off
    population_size: int = 70  # NSGA-II population (paper, not checked)
    generations: int = 120  # NSGA-II generations after the initial population (paper, not checked)
    crossover_prob: float = 0.9  # NSGA-II crossover probability (Deb et al.'s p_c)
    cost_objectives: tuple[str, ...] = ("macs",)  # cost metrics minimised next to accuracy (paper: multiply-adds)
    constraints: tuple[str, ...] = ()  # HardLimits checked before scoring, e.g. ("macs<=300M",)
    latency_table: str | None = None  # latency lookup table predicting latency_ms; None: measured
    bn_recal_images: int = 20000  # training images for BN recalibration per candidate; 0: none
    eval_batch_size: int | None = None  # images per recalibration / scoring batch; None: batch_size
    eval_batches: int | None = None  # validation batches each candidate is scored on; None: the whole split

    def __post_init__(self) -> None:
        for name in ("constraints", "cost_objectives"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(str(v) for v in value))
        check_sgd(self)
        require_positive_int("generations", self.generations)
        require(isinstance(self.population_size, int) and not isinstance(self.population_size, bool)
                and self.population_size >= 2, f"population_size must be an int >= 2, got {self.population_size!r}")
        require(0 <= self.crossover_prob <= 1, f"crossover_prob must be in [0, 1], got {self.crossover_prob!r}")
        require(len(self.cost_objectives) >= 1 and all(m in COST_METRICS for m in self.cost_objectives)
                and len(set(self.cost_objectives)) == len(self.cost_objectives),
                f"cost_objectives must be distinct metrics of {', '.join(COST_METRICS)}, got {list(self.cost_objectives)}")
        require(isinstance(self.bn_recal_images, int) and self.bn_recal_images >= 0,
                f"bn_recal_images must be an int >= 0, got {self.bn_recal_images!r}")
        if self.eval_batch_size is not None:
            require_positive_int("eval_batch_size", self.eval_batch_size)
        if self.eval_batches is not None:
            require_positive_int("eval_batches", self.eval_batches)
        cost_limits(self.constraints)


def fair_step(
    supernet: nn.Module, paths: Sequence[Path], batch: Batch, optimizer: torch.optim.Optimizer, *,
    loss_fn: LossFn, grad_clip: float | None, where: str,
) -> tuple[float, Tensor]:
    """One optimizer step on the gradients of ``paths`` accumulated on the same ``batch``.

    Each path runs forward and backward in turn (its graph is freed before the next); the
    gradients add up in ``.grad``; then the norm is clipped (if asked) and the optimizer steps
    once. Returns the mean loss over the paths and their logits, concatenated in path order.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = None
    x, y = batch
    losses, logits = [], []
    for i, path in enumerate(paths):
        out = supernet(x, path)
        loss = loss_fn(out, y)
        losses.append(check_finite(loss, f"{where} (model {i})"))
        loss.backward(inputs=params)  # accumulates into .grad
        logits.append(out.detach())
    if grad_clip is not None:
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
    optimizer.step()
    return sum(losses) / len(losses), torch.cat(logits)


def select(
    nsga: NSGA2, told: list[list[Any]], total: int, score: Callable[[Any], dict[str, float] | None],
    save_every: int, save: Callable[[], None], format_arch: Callable[[Any], str],
) -> None:
    """Replay ``told`` (``[arch text, fitness, metrics]``) into ``nsga``, then ask / score / tell up to ``total``.

    ``score(arch)`` returns the metrics, or ``None`` for a candidate breaking a limit (then
    ``told`` records its cost metrics and fitness ``-inf``). ``save`` runs after every
    ``save_every`` tells (a generation).
    """
    for text, fitness, metrics in told:
        arch = nsga.ask()
        if format_arch(arch) != text:
            raise IncompatibleRunError(f"fairnas: resumed selection proposes {format_arch(arch)}, the checkpoint "
                                       f"recorded {text}")
        nsga.tell(arch, float(fitness), metrics)
    while len(told) < total:
        arch = nsga.ask()
        metrics = score(arch)
        if "val_acc" in (metrics or {}):
            fitness = float(metrics["val_acc"])  # type: ignore[index]
        else:
            fitness = -math.inf
        nsga.tell(arch, fitness, metrics)
        told.append([format_arch(arch), fitness, dict(metrics or {})])
        if len(told) % save_every == 0 or len(told) == total:
            save()


def search(ctx: OneShotContext, cfg: FairNasConfig) -> OneShotResult:
    limits = cost_limits(cfg.constraints)
    supernet = ctx.supernet()
    policy = FairPolicy(supernet.choices(), seed=ctx.seed)
    w_opt, scheduler = sgd_cosine(supernet, cfg)
    run = ctx.open_run("fairnas", cfg, supernet=supernet, policy=policy, w_opt=w_opt, scheduler=scheduler)
    if not policy.strict:
        ctx.log(f"fairnas: layers have {sorted({len(v) for v in policy.choices.values()})} choices; each step runs "
                f"{policy.models_per_step} models, so choices of smaller layers run once or twice per step")

    # 1. strictly fair supernet training: m models per batch, gradients accumulated, one step
    supernet.train()
    for epoch in run.epochs(cfg.epochs):
        lr = scheduler.get_last_lr()[0]
        for b, train in run.train_batches(cfg.batch_size):
            paths = policy.paths()
            loss, logits = fair_step(
                supernet, paths, train, w_opt, loss_fn=F.cross_entropy, grad_clip=cfg.grad_clip,
                where=f"epoch {epoch} batch {b} weight",
            )
            run.step_done(train_loss=loss, train_acc=accuracy(logits, train[1].repeat(len(paths))))
        scheduler.step()
        run.epoch_done(lr=lr)

    # 2. NSGA-II over accuracy (inherited weights, BN recalibrated) and cost, under the limits
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    calibration = ctx.fixed_train_batches(math.ceil(cfg.bn_recal_images / eval_bs), eval_bs) if cfg.bn_recal_images else []
    n_valid = cfg.eval_batches or math.ceil(len(ctx.valid_set) / eval_bs)  # type: ignore[arg-type]
    evaluator = SupernetEvaluator(supernet, calibration=calibration, batches=ctx.fixed_valid_batches(n_valid, eval_bs))
    cost = StandaloneCost(ctx.space, input_shape=ctx.input_shape, num_classes=ctx.num_classes,
                          latency_table=cfg.latency_table)
    needed = set(cfg.cost_objectives) | {c.metric for c in limits}

    def score(arch: Any) -> dict[str, float] | None:
        metrics = cost(arch, needed)
        if broken_limits(limits, metrics):
            return metrics  # no val_acc: told as failed
        return {"val_acc": evaluator.accuracy(arch), **metrics}

    objectives = (("val_acc", 1),) + tuple((m, -1) for m in cfg.cost_objectives)
    nsga = NSGA2(ctx.space, seed=ctx.seed, objectives=objectives, population_size=cfg.population_size,
                 crossover_prob=cfg.crossover_prob)
    selection = run.scalars.setdefault("selection", {"told": []})
    total = cfg.population_size * (cfg.generations + 1)
    select(nsga, selection["told"], total, score, cfg.population_size, run.save, ctx.space.format)

    front = nsga.front()
    if not front:
        raise no_feasible_error("fairnas", limits, [m for _, _, m in selection["told"]])
    best_arch, best = max(front, key=lambda item: item[1]["val_acc"])  # max keeps the first of equals
    scored = sum(1 for _, f, _ in selection["told"] if f > -math.inf)
    ctx.log(f"fairnas: {len(front)} architectures on the Pareto front of {scored} scored; most accurate: "
            f"{ctx.space.format(best_arch)} ({best['val_acc']:.2f}%)")
    return selected_result(
        ctx, run, supernet, best_arch, valid_accuracy=best["val_acc"], metrics=best,
        objectives=[f"{'max' if s > 0 else 'min'}:{m}" for m, s in objectives], constraints=[str(c) for c in limits],
        selection_rule="most accurate member of the Pareto front", bn_recal_images=evaluator.calibration_images,
        pareto_front=[{"arch": ctx.space.format(a), **m} for a, m in front],
        scored=scored, rejected=len(selection["told"]) - scored, generations=cfg.generations,
        strict_fairness=policy.strict, models_per_step=policy.models_per_step,
    )


fairnas = register("method", "fairnas")(OneShotMethod(
    name="fairnas",
    paper="Chu, Zhang & Xu, 'FairNAS: Rethinking Evaluation Fairness of Weight Sharing Neural Architecture Search', "
          "ICCV 2021",
    config_cls=FairNasConfig,
    search=search,
    spaces=("mobilenet", "nb201"),
))
