"""SPOS: single-path one-shot supernet training with uniform sampling, then evolution under cost limits.

Guo, Zhang, Mu, Heng, Liu, Wei & Sun, "Single Path One-Shot Neural Architecture Search with
Uniform Sampling", ECCV 2020. Reference implementation ``megvii-model/SinglePathOneShot``
(``src/Supernet/train.py``, ``src/Search/search.py``, ``src/Search/tester.py``).

Algorithm (as implemented):

1. supernet training: for every batch an architecture is drawn uniformly from the space
   (:class:`~nasforge.policies.UniformPolicy`: each decision uniformly) and one SGD step is taken
   along its single path (:func:`~nasforge.train.bilevel.weight_step_pieces`): only the sampled
   candidates (and the fixed stem / head) get a gradient, the others are skipped by the optimizer.
   Cross-entropy with label smoothing, SGD with momentum, the learning rate decayed linearly per
   step to ``lr_min``, weight decay on the weights of convolutions and linear layers only (the
   reference's ``get_parameters`` puts biases and BN parameters in a group without decay);
2. evolution (reference ``search.py``), for ``iterations`` iterations: score every candidate of
   the population with the weights it inherits from the supernet after BN recalibration
   (:class:`~nasforge.evaluators.supernet.SupernetEvaluator`: running statistics recomputed on
   ``bn_recal_images`` training images along the candidate's path, then top-1 accuracy on the
   validation split); keep the ``top_k`` best of all scored candidates; the next population is
   ``mutation_num`` mutants (a top-k parent, each decision redrawn uniformly with probability
   ``mutation_prob``), ``crossover_num`` children of two top-k parents (each decision from either
   parent with probability 1/2) and uniform samples up to ``population_size``. A candidate enters
   a population only if it was never scored and its stand-alone network meets every limit in
   ``constraints`` (:class:`~nasforge.hardware.objectives.HardLimit` on ``params``, ``flops``,
   ``macs`` or ``latency_ms``), checked *before* it is scored, as the reference checks FLOPs;
   ``latency_ms`` comes from a lookup table (``latency_table``) or is measured. The result is the
   best scored candidate.

Defaults are the paper's / reference's ImageNet run: 120 epochs (150,000 iterations of batch
1,024 on 1.28M images), SGD lr 0.5 linearly decayed to 0, momentum 0.9, weight decay 4e-5, label
smoothing 0.1; evolution with population 50, 20 iterations, top-10, 25 mutants with probability
0.1, 25 crossovers; BN statistics recalibrated on 20,000 training images.

Scope and deviations (stated explicitly):

* spaces: the paper's ShuffleNetV2 block space ``shufflenet`` (:mod:`nasforge.spaces.shufflenet`;
  ``--space-opt channels=true`` adds the paper's channel-number search, each block's width sliced
  out of shared weights allocated at the largest width; ``--space-opt preset=cifar`` for 32x32
  inputs), and beyond the paper the ``mobilenet`` MBConv space and ``nb201`` cells. The paper's
  limit of 330M FLOPs counts multiply-adds (the reference's ``get_flops``), so it is
  ``constraints=("macs<=330M",)`` here, and it applies to the ImageNet layout
  (``preset=imagenet``, 3x224x224 inputs); the uniform draw covers the channel scales as well
  (every decision of the space uniformly and independently);
* with channel search, the optimizer's weight decay and momentum act on the whole allocated
  tensor of each sampled candidate (the gradient outside the sampled width is exactly zero);
  the paper does not say how the unsampled channels of a sampled block are treated;
* candidates are scored on fixed validation batches (``eval_batches``, default the whole split),
  the same for every candidate; the reference holds out 50,000 ImageNet training images;
* BN statistics are recomputed as the equal-weight average over the recalibration batches
  (``momentum=None``); the recalibration batches are a fixed seeded sample of the training split,
  not augmented, the same for every candidate, and fewer when the split is smaller;
* the reference rejects a candidate breaking the FLOPs limit; here any cost limit is accepted,
  and costs are those of the stand-alone network built by ``space.build`` (for ``nb201`` the
  benchmark network, C=16, N=5);
* a population that cannot be filled after ``100 x population_size`` draws goes on smaller; if
  no draw at all meets the limits, a ``BudgetError`` names the smallest value of each limited
  metric seen;
* the search is resumable at every training checkpoint and after every evolution iteration.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.arch import Arch
from nasforge.errors import BudgetError
from nasforge.evaluators.supernet import (
    StandaloneCost,
    SupernetEvaluator,
    broken_limits,
    cost_limits,
    no_feasible_error,
)
from nasforge.hardware.objectives import HardLimit
from nasforge.policies import UniformPolicy
from nasforge.registry import register
from nasforge.spaces.base import SearchSpace
from nasforge.train.bilevel import weight_step_pieces
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotMethod,
    OneShotResult,
    accuracy,
    check_sgd,
    require,
    require_positive_int,
)
from nasforge.train.sampled import selected_result

#: draws per population slot before a population is accepted short (strict limits)
DRAWS_PER_SLOT = 100


@dataclass(frozen=True)
class SposConfig:
    """SPOS hyper-parameters (paper / reference defaults; sources in the module docstring)."""

    epochs: int = 120  # supernet training epochs (reference: 150,000 iterations x 1,024 images ~ 120 ImageNet epochs)
    batch_size: int = 1024  # training batch (reference train.py)
    lr: float = 0.5  # initial SGD learning rate (reference)
    lr_min: float = 0.0  # learning rate reached linearly at the last step (reference: 1 - step / total)
    momentum: float = 0.9  # SGD momentum (reference)
    nesterov: bool = False  # Nesterov momentum (reference: no)
    weight_decay: float = 4e-5  # on conv / linear weights only, not biases or BN (reference get_parameters)
    grad_clip: float | None = None  # max gradient norm (reference: none)
    label_smoothing: float = 0.1  # cross-entropy label smoothing (reference CrossEntropyLabelSmooth(0.1))
    population_size: int = 50  # candidates per evolution iteration (paper: 50)
    iterations: int = 20  # evolution iterations (paper: 20)
    top_k: int = 10  # best candidates kept as parents (paper: 10)
    mutation_num: int = 25  # mutants per iteration (reference: 25)
    crossover_num: int = 25  # crossover children per iteration (reference: 25)
    mutation_prob: float = 0.1  # per-decision probability of a new uniform option in a mutant (paper: 0.1)
    constraints: tuple[str, ...] = ()  # HardLimits checked before scoring, e.g. ("flops<=330M",) (paper: FLOPs <= 330M)
    latency_table: str | None = None  # latency lookup table predicting latency_ms (nasforge hardware build-lut); None: measured
    bn_recal_images: int = 20000  # training images for BN recalibration per candidate (paper: 20,000); 0: none
    eval_batch_size: int | None = None  # images per recalibration / scoring batch; None: batch_size
    eval_batches: int | None = None  # validation batches each candidate is scored on; None: the whole split

    def __post_init__(self) -> None:
        if isinstance(self.constraints, str):
            object.__setattr__(self, "constraints", (self.constraints,))
        object.__setattr__(self, "constraints", tuple(str(c) for c in self.constraints))
        check_sgd(self)
        require(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        for name in ("population_size", "iterations", "top_k"):
            require_positive_int(name, getattr(self, name))
        for name in ("mutation_num", "crossover_num"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                    f"{name} must be an int >= 0, got {value!r}")
        require(self.mutation_num + self.crossover_num <= self.population_size,
                f"mutation_num + crossover_num ({self.mutation_num + self.crossover_num}) must be <= population_size "
                f"({self.population_size})")
        require(0 <= self.mutation_prob <= 1, f"mutation_prob must be in [0, 1], got {self.mutation_prob!r}")
        require(isinstance(self.bn_recal_images, int) and self.bn_recal_images >= 0,
                f"bn_recal_images must be an int >= 0, got {self.bn_recal_images!r}")
        if self.eval_batch_size is not None:
            require_positive_int("eval_batch_size", self.eval_batch_size)
        if self.eval_batches is not None:
            require_positive_int("eval_batches", self.eval_batches)
        cost_limits(self.constraints)  # a bad limit fails before anything runs


def sgd_no_decay_1d(net: nn.Module, cfg: Any) -> torch.optim.SGD:
    """SGD with weight decay on parameters of 2 or more dimensions only (SPOS reference ``get_parameters``)."""
    decay = [p for p in net.parameters() if p.dim() > 1]
    no_decay = [p for p in net.parameters() if p.dim() <= 1]
    groups: list[dict[str, Any]] = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, nesterov=bool(cfg.nesterov) and cfg.momentum > 0,
    )


def linear_decay(total_steps: int, lr: float, lr_min: float) -> Callable[[int], float]:
    """The LambdaLR factor of a learning rate going linearly from ``lr`` at step 0 to ``lr_min`` at ``total_steps``."""
    def factor(step: int) -> float:
        frac = min(step, total_steps) / total_steps
        return (lr_min + (lr - lr_min) * (1.0 - frac)) / lr
    return factor


def steps_per_epoch(ctx: OneShotContext, batch_size: int) -> int:
    """Training steps of one epoch (what :meth:`SearchRun.steps_per_epoch` will count)."""
    n = len(ctx.train_set) // batch_size  # type: ignore[arg-type]
    if n == 0:
        raise BudgetError(f"batch_size {batch_size} exceeds the {len(ctx.train_set)} training images")  # type: ignore[arg-type]
    return n if ctx.max_batches_per_epoch is None else min(n, ctx.max_batches_per_epoch)


# ---- evolution -----------------------------------------------------------------------------------


def mutate_each(space: SearchSpace, arch: Arch, rng: random.Random, prob: float) -> Arch:
    """``arch`` with each decision redrawn uniformly (possibly to the same option) with probability ``prob``."""
    options = space.decisions()
    return space.make({d: (rng.choice(list(options[d])) if rng.random() < prob else o) for d, o in arch.choices})


def crossover(space: SearchSpace, a: Arch, b: Arch, rng: random.Random) -> Arch:
    """Each decision from ``a`` or ``b`` with probability 1/2."""
    return space.make({d: (oa if rng.random() < 0.5 else ob) for (d, oa), (_, ob) in zip(a.choices, b.choices)})


class Evolution:
    """SPOS' evolutionary search over scored candidates; its whole state is :attr:`state` (JSON values).

    ``state``: ``iteration`` (next to run), ``population`` (texts to score in it), ``scored``
    (text -> metrics, in scoring order), ``rejected`` (text -> cost metrics of candidates that broke
    a limit), ``history`` (one record per finished iteration).
    """

    def __init__(
        self, space: SearchSpace, cfg: SposConfig, limits: tuple[HardLimit, ...], cost: StandaloneCost,
        seed: int, state: dict[str, Any] | None = None,
    ) -> None:
        self.space, self.cfg, self.limits, self.cost, self.seed = space, cfg, limits, cost, seed
        self.needed = {c.metric for c in limits}
        self.state = state if state is not None else {
            "iteration": 0, "population": None, "scored": {}, "rejected": {}, "history": [],
        }

    def rng(self, what: str) -> random.Random:
        """A generator for one phase, seeded by (seed, phase, iteration): a resume redraws the same."""
        return random.Random(f"spos:{self.seed}:{what}:{self.state['iteration']}")

    def costs(self, arch: Arch) -> dict[str, float]:
        return self.cost(arch, self.needed | {"params", "flops", "macs"})

    def admissible(self, arch: Arch, taken: list[str]) -> bool:
        """Never scored, not already taken for this population, and within every limit."""
        text = self.space.format(arch)
        if text in self.state["scored"] or text in self.state["rejected"] or text in taken:
            return False
        metrics = self.costs(arch)
        if broken_limits(self.limits, metrics):
            self.state["rejected"][text] = metrics
            return False
        taken.append(text)
        return True

    def top(self) -> list[tuple[str, dict[str, float]]]:
        """The ``top_k`` best scored candidates, best first (ties: scored earlier first)."""
        ranked = sorted(self.state["scored"].items(), key=lambda item: -item[1]["val_acc"])
        return ranked[: self.cfg.top_k]

    def fill_random(self, taken: list[str], rng: random.Random) -> None:
        for _ in range(DRAWS_PER_SLOT * self.cfg.population_size):
            if len(taken) >= self.cfg.population_size:
                return
            self.admissible(self.space.sample(rng), taken)

    def next_population(self) -> list[str]:
        cfg = self.cfg
        taken: list[str] = []
        parents = [self.space.parse(text) for text, _ in self.top()]
        rng = self.rng("children")
        if parents:
            for _ in range(10 * cfg.mutation_num):  # the reference's max_iters = 10 x the number wanted
                if len(taken) >= cfg.mutation_num:
                    break
                self.admissible(mutate_each(self.space, rng.choice(parents), rng, cfg.mutation_prob), taken)
            goal = len(taken) + cfg.crossover_num
            for _ in range(10 * cfg.crossover_num):
                if len(taken) >= goal:
                    break
                self.admissible(crossover(self.space, rng.choice(parents), rng.choice(parents), rng), taken)
        self.fill_random(taken, rng)
        return taken

    def run(self, score: Callable[[Arch], float], save: Callable[[], None], log: Callable[[str], None]) -> None:
        """The remaining iterations; ``save`` after each (``state`` is then complete)."""
        state, cfg = self.state, self.cfg
        if state["population"] is None:
            taken: list[str] = []
            self.fill_random(taken, self.rng("initial"))
            if not taken:
                raise no_feasible_error("spos", self.limits, list(self.state["rejected"].values()))
            state["population"] = taken
            save()
        while state["iteration"] < cfg.iterations:
            for text in state["population"]:
                if text not in state["scored"]:
                    state["scored"][text] = {"val_acc": score(self.space.parse(text)), **self.costs(self.space.parse(text))}
            top = self.top()
            record = {
                "iteration": state["iteration"], "scored": len(state["scored"]), "population": len(state["population"]),
                "rejected": len(state["rejected"]), "best_arch": top[0][0], "best_val_acc": top[0][1]["val_acc"],
                "top_k_mean_val_acc": sum(m["val_acc"] for _, m in top) / len(top),
            }
            state["history"].append(record)
            log(f"spos evolution {record['iteration']}: best {record['best_val_acc']:.2f}% of {record['scored']} "
                f"scored; {top[0][0]}")
            state["iteration"] += 1
            state["population"] = self.next_population() if state["iteration"] < cfg.iterations else []
            save()


def search(ctx: OneShotContext, cfg: SposConfig) -> OneShotResult:
    limits = cost_limits(cfg.constraints)
    supernet = ctx.supernet()
    policy = UniformPolicy(ctx.space, supernet, seed=ctx.seed)
    w_opt = sgd_no_decay_1d(supernet, cfg)
    total_steps = cfg.epochs * steps_per_epoch(ctx, cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(w_opt, linear_decay(total_steps, cfg.lr, cfg.lr_min))
    run = ctx.open_run("spos", cfg, supernet=supernet, policy=policy, w_opt=w_opt, scheduler=scheduler)
    loss_fn = functools.partial(F.cross_entropy, label_smoothing=cfg.label_smoothing)

    # 1. the supernet: one uniformly drawn single path per step
    supernet.train()
    for epoch in run.epochs(cfg.epochs):
        lr = scheduler.get_last_lr()[0]
        for b, train in run.train_batches(cfg.batch_size):
            path = policy()
            loss, logits = weight_step_pieces(
                supernet, [(path, train)], w_opt, loss_fn=loss_fn, grad_clip=cfg.grad_clip,
                where=f"epoch {epoch} batch {b} weight",
            )
            scheduler.step()  # per step, as the reference's LambdaLR
            run.step_done(train_loss=loss, train_acc=accuracy(logits, train[1]))
        run.epoch_done(lr=lr)

    # 2. evolution with inherited weights, BN recalibrated per candidate, under the cost limits
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    calibration = ctx.fixed_train_batches(math.ceil(cfg.bn_recal_images / eval_bs), eval_bs) if cfg.bn_recal_images else []
    n_valid = cfg.eval_batches or math.ceil(len(ctx.valid_set) / eval_bs)  # type: ignore[arg-type]
    evaluator = SupernetEvaluator(supernet, calibration=calibration, batches=ctx.fixed_valid_batches(n_valid, eval_bs))
    cost = StandaloneCost(ctx.space, input_shape=ctx.input_shape, num_classes=ctx.num_classes,
                          latency_table=cfg.latency_table)
    evolution = Evolution(ctx.space, cfg, limits, cost, ctx.seed, run.scalars.get("evolution"))
    run.scalars["evolution"] = evolution.state
    evolution.run(evaluator.accuracy, run.save, ctx.log)

    best_text, best = evolution.top()[0]
    best_arch = ctx.space.parse(best_text)
    ctx.log(f"spos: best of {len(evolution.state['scored'])} scored candidates: {best_text} ({best['val_acc']:.2f}%)")
    return selected_result(
        ctx, run, supernet, best_arch, valid_accuracy=best["val_acc"], metrics=best,
        constraints=[str(c) for c in limits], bn_recal_images=evaluator.calibration_images,
        evolution=evolution.state["history"],
        top_k=[{"arch": t, **m} for t, m in evolution.top()],
        scored=[{"arch": t, **m} for t, m in evolution.state["scored"].items()],
        rejected=len(evolution.state["rejected"]),
    )


spos = register("method", "spos")(OneShotMethod(
    name="spos",
    paper="Guo, Zhang, Mu, Heng, Liu, Wei & Sun, 'Single Path One-Shot Neural Architecture Search with Uniform "
          "Sampling', ECCV 2020",
    config_cls=SposConfig,
    search=search,
    spaces=("mobilenet", "nb201", "shufflenet"),
))
