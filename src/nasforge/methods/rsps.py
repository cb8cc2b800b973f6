"""RSPS: random search with parameter (weight) sharing.

Li & Talwalkar, "Random Search and Reproducibility for Neural Architecture Search", UAI 2019.
Reference implementation ``liamcli/randomNAS_release`` (``searchers/random_weight_share.py``,
``benchmarks/cnn/darts/darts_wrapper_discrete.py``, run scripts ``scripts/run_stage1.sh``,
``scripts/run_experiment.sh``) on the ``liamcli/darts`` fork (``cnn/model_search.py``).
NAS-Bench-201's baseline: xautodl ``exps/algos/RANDOM-NAS.py`` with
``configs/nas-benchmark/algos/RANDOM.config`` and ``scripts-search/algos/RANDOM-NAS.sh``.

Algorithm (as implemented):

1. training: for every batch, an architecture is drawn uniformly from the space
   (:class:`~nasforge.policies.UniformPolicy`; on darts a genotype: two inputs per node, an op
   each) and one SGD step (momentum, cosine learning rate, gradient clip) is taken along its
   single path. Only that path's parameters (and the fixed stem / preprocessing / classifier)
   get a gradient; the other candidates are skipped by the optimizer (no weight decay, no
   momentum), as in the reference, which sets every ``p.grad = None`` before backward and
   runs only the nonzero-weight ops (:func:`~nasforge.train.bilevel.weight_step_pieces`);
2. selection (reference ``get_eval_arch``), in ``rounds`` rounds: draw ``num_samples``
   architectures uniformly, measure each under the shared weights on ``screen_batches``
   validation batches, then measure the ``top_k`` best of them on ``final_batches`` batches
   (``None``: the whole validation split) and keep the best; the result is the best of all
   rounds. The reference samples 1000 per round, screens on 10 minibatches and fully evaluates
   the top 10, with ``max(1, training_steps // 10000)`` rounds (``rounds=None`` here). The
   supernet is in eval mode while ranking (reference ``model.eval()``): BatchNorm layers that
   track running statistics use them.

Defaults are the reference's CIFAR-10 / DARTS-space run (``run_experiment.sh``: 150 epochs,
batch 64, gradient clip 1; ``darts_wrapper_discrete.py``: SGD lr 0.025 cosine to 0.001,
momentum 0.9, weight decay 3e-4; its 16 or 24 initial channels and 8 layers are supernet
options of the context). The NAS-Bench-201 protocol (xautodl) is ``epochs=250,
weight_decay=5e-4, nesterov=True, grad_clip=5.0, num_samples=100, screen_batches=1, top_k=0,
eval_batch_size=512`` (100 samples, one validation batch of 512 each, single stage; NB201 builds the supernet with
``affine=False`` and ``track_running_stats=True``).

Deviations (stated explicitly):

* every architecture is measured on the same fixed validation batches
  (:meth:`~nasforge.train.oneshot.OneShotContext.fixed_valid_batches`); the references keep
  drawing the next minibatches of the validation iterator, so each candidate sees different
  ones;
* the reference samples darts ops from all 8 primitives, ``none`` included (an edge that is
  sampled but adds zeros); ``space.sample`` draws genotypes of the DARTS space, whose ops
  exclude ``none``;
* duplicate samples are measured once (the measurement is deterministic).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from nasforge.arch import Arch
from nasforge.policies import UniformPolicy
from nasforge.registry import register
from nasforge.train.bilevel import weight_step_pieces
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
from nasforge.train.sampled import (
    rank_architectures,
    ranking_records,
    sample_architectures,
    selected_result,
)


@dataclass(frozen=True)
class RspsConfig:
    """RSPS hyper-parameters (reference defaults; sources in the module docstring)."""

    epochs: int = 150  # training epochs of the shared weights (run_experiment.sh; NB201: 250)
    batch_size: int = 64  # train and ranking batch size (run scripts; NB201: 64)
    lr: float = 0.025  # initial SGD learning rate (darts_wrapper_discrete.py; NB201: 0.025)
    lr_min: float = 0.001  # cosine annealing floor (darts_wrapper_discrete.py; NB201: 0.001)
    momentum: float = 0.9  # SGD momentum (both references)
    nesterov: bool = False  # Nesterov momentum (NB201: True)
    weight_decay: float = 3e-4  # weight decay of the parameters a step uses (darts wrapper; NB201: 5e-4)
    grad_clip: float | None = 1.0  # max gradient norm of a step (run scripts; NB201: 5)
    num_samples: int = 1000  # architectures drawn per selection round (get_eval_arch; NB201: 100)
    screen_batches: int = 10  # validation batches of the first ranking (evaluate(): 10; NB201: 1)
    top_k: int = 10  # best screened ones measured again on final_batches (reference: 10); 0: one stage (NB201)
    final_batches: int | None = None  # batches of the second ranking; None: the whole validation split
    rounds: int | None = None  # selection rounds; None: the reference's max(1, training_steps // 10000)
    eval_batch_size: int | None = None  # images per ranking batch; None: batch_size (NB201: test_batch_size 512)

    def __post_init__(self) -> None:
        check_sgd(self)
        require_positive_int("num_samples", self.num_samples)
        require_positive_int("screen_batches", self.screen_batches)
        require(
            isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and 0 <= self.top_k <= self.num_samples,
            f"top_k must be an int in [0, num_samples={self.num_samples}], got {self.top_k!r}",
        )
        if self.final_batches is not None:
            require_positive_int("final_batches", self.final_batches)
        if self.rounds is not None:
            require_positive_int("rounds", self.rounds)
        if self.eval_batch_size is not None:
            require_positive_int("eval_batch_size", self.eval_batch_size)


def two_stage_ranking(
    supernet: Any, samples: Sequence[Arch], screen: list[tuple[Tensor, Tensor]],
    final: list[tuple[Tensor, Tensor]], top_k: int,
) -> tuple[list[tuple[Arch, float]], list[tuple[Arch, float]]]:
    """``(screened, finals)``: all distinct ``samples`` ranked on ``screen``; the ``top_k`` best re-ranked on ``final``.

    With ``top_k == 0`` the second list is empty and the screening decides.
    """
    screened = rank_architectures(supernet, samples, screen)
    if top_k == 0:
        return screened, []
    return screened, rank_architectures(supernet, [arch for arch, _ in screened[:top_k]], final)


def search(ctx: OneShotContext, cfg: RspsConfig) -> OneShotResult:
    supernet = ctx.supernet()
    policy = UniformPolicy(ctx.space, supernet, seed=ctx.seed)
    w_opt, scheduler = sgd_cosine(supernet, cfg)
    run = ctx.open_run("rsps", cfg, supernet=supernet, policy=policy, w_opt=w_opt, scheduler=scheduler)
    total_steps = cfg.epochs * run.steps_per_epoch(cfg.batch_size)

    supernet.train()
    for epoch in run.epochs(cfg.epochs):
        lr = scheduler.get_last_lr()[0]
        for b, train in run.train_batches(cfg.batch_size):
            path = policy()  # a uniformly drawn architecture's single path
            loss, logits = weight_step_pieces(
                supernet, [(path, train)], w_opt, loss_fn=F.cross_entropy, grad_clip=cfg.grad_clip,
                where=f"epoch {epoch} batch {b} weight",
            )
            run.step_done(train_loss=loss, train_acc=accuracy(logits, train[1]))
        scheduler.step()
        run.epoch_done(lr=lr)

    supernet.eval()
    rounds = cfg.rounds if cfg.rounds is not None else max(1, total_steps // 10000)
    eval_batch = cfg.eval_batch_size or cfg.batch_size
    screen = ctx.fixed_valid_batches(cfg.screen_batches, eval_batch)
    all_batches = math.ceil(len(ctx.valid_set) / eval_batch)  # type: ignore[arg-type]
    final = ctx.fixed_valid_batches(cfg.final_batches or all_batches, eval_batch) if cfg.top_k else []
    rng = random.Random(ctx.seed + 1)  # not the training sampler's stream (that one is seeded with ctx.seed)
    decided: dict[Arch, float] = {}  # per round, the list that decides (finals, or the screening)
    screenings = []
    for _ in range(rounds):
        screened, finals = two_stage_ranking(
            supernet, sample_architectures(ctx.space, rng, cfg.num_samples), screen, final, cfg.top_k,
        )
        screenings.append(ranking_records(screened, ctx.space))
        for arch, acc in finals or screened:
            decided.setdefault(arch, acc)
    ranking = sorted(decided.items(), key=lambda item: -item[1])  # stable: earlier rounds win ties
    best, best_acc = ranking[0]
    ctx.log(f"rsps: best of {rounds} round(s) x {cfg.num_samples} samples: {ctx.space.format(best)} ({best_acc:.2f}%)")
    return selected_result(
        ctx, run, supernet, best, valid_accuracy=best_acc, rounds=rounds, num_samples=cfg.num_samples,
        stage="final" if cfg.top_k else "screen", ranking=ranking_records(ranking, ctx.space), screening=screenings,
    )


rsps = register("method", "rsps")(OneShotMethod(
    name="rsps",
    paper="Li & Talwalkar, 'Random Search and Reproducibility for Neural Architecture Search', UAI 2019",
    config_cls=RspsConfig,
    search=search,
))
