"""P-DARTS: DARTS in stages of growing depth over a shrinking set of candidate operations.

Chen, Xie, Wu & Tian, "Progressive Differentiable Architecture Search: Bridging the Depth Gap
between Search and Evaluation", ICCV 2019. Reference implementation ``chenxin061/pdarts``
(``train_search.py``, ``model_search.py``).

Algorithm (as implemented; the reference's CIFAR-10 numbers in brackets):

For stage ``s = 0 .. S-1`` (S = 3):

1. **A new supernet** (reference: a new ``Network`` per stage; the weights saved after a stage
   are never loaded again, so nothing is inherited but the kept operations): ``layers +
   add_layers[s]`` cells (5, 11, 17), ``C + add_width[s]`` initial channels (16, 16, 16), every
   edge carrying only the operations kept so far (8, 5, 3 of the 8 primitives; the darts
   supernet's ``edge_ops``), new alphas ``1e-3 * N(0, 1)`` over those operations, new
   optimizers, the cosine schedule restarted.
2. **Operation-level dropout on skip-connect**: every identity ``skip_connect`` candidate (the
   stride-1 ones; on a stride-2 edge skip is a ``FactorizedReduce`` and is not dropped, as in
   the reference, which wraps ``Identity`` only) is followed by ``nn.Dropout(p)``, with
   ``p = p_s * (E - e - 1) / E`` during the warm-up epochs ``e < W`` of the stage and
   ``p = p_s * exp(-0.2 * (e - W))`` after them (``train_search.py``: ``model.module.p``;
   ``E`` epochs per stage, ``W`` warm-up epochs). Initial rates ``p_s``: 0.0, 0.4, 0.7, the
   paper's CIFAR-10 setting (its CIFAR-100 one: 0.1, 0.2, 0.3; the README's CIFAR-10 command
   passes 0.1, 0.4, 0.7; the code's own default is 0.0 for every stage).
3. **Training** for ``E`` (25) epochs: the first ``W`` (10) epochs update only the weights;
   after them every batch is a first-order architecture step (Adam on a validation batch,
   its gradient norm clipped at ``grad_clip`` like the weights', as the reference's ``train``)
   followed by an SGD weight step (momentum, cosine learning rate, clip 5).
4. **Search-space approximation** (stages before the last): on every edge of each cell type,
   drop the ``num_ops[s] - num_ops[s + 1]`` operations with the lowest ``softmax(alpha)``
   (reference ``get_min_k``: ``none`` is ranked like any other operation; ties drop the
   earlier one, as ``np.argmin``).

After the last stage the architecture is derived as DARTS does: per edge the strongest
non-``none`` operation, per node the two edges whose operation is strongest, on the last
stage's ``softmax(alpha)`` with dropped operations at 0 (the reference's ``get_min_k_no_zero``
+ top-2 edges give the same cell). Then the **skip-connect limit** (paper sec. 3.3, reference
``delete_min_sk_prob`` / ``keep_1_on`` / ``keep_2_branches``): while the normal cell has more
than ``M`` = 2 ``skip_connect`` edges, the weakest of them (its skip weight smallest) gets its
skip weight set to 0 and the cell is derived again. The result's ``strengths`` are these final
weights, so ``space.derive(strengths)`` is the returned architecture.

Resume: each stage is its own checkpointed :class:`~nasforge.train.oneshot.SearchRun` under
``run_dir/stage{s}``, opened with the stage's supernet options (``C``, ``layers``,
``edge_ops``) in its context, so they are part of the checkpoint's meta. A resumed search
rebuilds each finished stage, loads its final alphas, recomputes the kept operations exactly
and goes on with the first unfinished stage at its checkpointed position. The history holds
every stage's epochs, each record with its ``stage``.

Spaces: ``darts`` (the paper's) and ``nb201``. On NB201, an extension the paper does not run:

* depth: the config's depths count cells, and an NB201 network of ``N`` cells per stage has
  ``3N + 2`` (two fixed reduction blocks), so the default 5, 11, 17 cells are ``N`` = 1, 3, 5,
  the last being the benchmark's own network (C=16, N=5); each stage's depth must be
  ``3N + 2``;
* operations: NB201's 5 (``none`` included); the default schedule keeps 5, 3, 2 per edge (the
  darts 8, 5, 3 scaled to 5 candidates), chosen here, not from a paper;
* derivation: NB201's rule (the strongest operation per edge, ``none`` included) on the last
  stage's weights, dropped operations at 0; the skip-connect limit ``M`` counts the cell's
  ``skip_connect`` edges (one cell type) and zeroes the weakest as on darts (ties to the earlier
  edge in the official edge order);
* skip dropout wraps every ``skip_connect`` (all NB201 edges have stride 1).

Deviations from the reference:

* The supernet's width and depth options (darts ``C`` / ``layers``, nb201 ``C`` / ``N``) are this
  method's options (``C``, ``layers``, ``add_width``, ``add_layers``); giving them (or
  ``edge_ops``) in the context's supernet options is an error rather than being silently
  overridden.
* Epoch ``e`` of a stage uses the cosine learning rate of ``e``; the reference steps the
  scheduler at the start of each epoch (pre-1.1 PyTorch), one epoch ahead.
* Batches come from the engine's position-independent data order, which each stage's run starts
  anew (epoch ``e`` of every stage sees the same batches; each stage's run also reseeds the
  global RNG with the context seed), not from loaders continued across stages.
* The reference logs genotypes for every skip limit from 8 down to 0; the limit here is one
  number (``max_skip_connect``; ``None`` disables it). Applying the removals in the reference's
  order, the genotype for ``M`` is the same.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.arch import Arch
from nasforge.errors import ConfigError
from nasforge.nn.choice import Choice, Supernet
from nasforge.nn.ops import Identity
from nasforge.policies import SoftmaxPolicy
from nasforge.registry import register
from nasforge.spaces import nb201
from nasforge.spaces.base import SearchSpace
from nasforge.spaces.darts import EDGE_KEYS, PRIMITIVES, DartsSpace, edge_key
from nasforge.train.bilevel import check_finite, weight_step
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotMethod,
    OneShotResult,
    accuracy,
    check_adam,
    check_sgd,
    derived,
    require,
    result,
    sgd_cosine,
)

SKIP = "skip_connect"


@dataclass(frozen=True)
class SpaceRules:
    """What P-DARTS needs to know of a cell space.

    Attributes:
        ops: the candidate operations in the space's order (what ``derive`` weights are indexed by).
        edge_keys: the choice keys in the order ties are broken (the reference's edge order).
        depth_option: the supernet option that sets the depth (``layers`` or ``N``).
        num_ops: the default operations kept per edge in each stage.
    """

    ops: tuple[str, ...]
    edge_keys: tuple[str, ...]
    depth_option: str
    num_ops: tuple[int, ...]

    def depth_value(self, cells: int) -> int | None:
        """The depth option's value for a network of ``cells`` cells, or None if there is none."""
        if self.depth_option == "layers":
            return cells if cells >= 3 else None  # fewer than 3 cells has no normal cell
        return (cells - 2) // 3 if cells >= 5 and (cells - 2) % 3 == 0 else None  # nb201: 3N + 2 cells

    def depth_rule(self) -> str:
        if self.depth_option == "layers":
            return ">= 3 cells (a normal and two reduction cells)"
        return "3N + 2 cells with N >= 1 (N cells per stage and two reduction blocks): 5, 8, 11, ..."

    def limited_skips(self, space: SearchSpace, arch: Arch) -> list[str]:
        """The keys of the ``skip_connect`` edges the skip-connect limit counts."""
        if isinstance(space, DartsSpace):
            return [edge_key("normal", 2 + k // 2, inp)
                    for k, (op, inp) in enumerate(space.cell_edges(arch, "normal")) if op == SKIP]
        return [key for key in self.edge_keys if arch[key] == SKIP]

    def stage_options(self) -> tuple[str, ...]:
        """The supernet options this method sets per stage."""
        return ("C", self.depth_option, "edge_ops")


RULES: dict[str, SpaceRules] = {
    "darts": SpaceRules(ops=PRIMITIVES, edge_keys=EDGE_KEYS, depth_option="layers", num_ops=(8, 5, 3)),
    "nb201": SpaceRules(ops=nb201.OPS, edge_keys=nb201.EDGE_NAMES, depth_option="N", num_ops=(5, 3, 2)),
}


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class PDartsConfig:
    """P-DARTS hyper-parameters (reference ``chenxin061/pdarts`` / paper CIFAR-10 search defaults).

    The per-stage tuples (``add_width``, ``add_layers``, ``num_ops``, ``dropout_rate``,
    ``arch_warmup_epochs``) have one entry per stage and must all have the same length. Depths
    count cells on both spaces (see the module docstring for nb201); ``num_ops`` None is the
    space's schedule (darts 8, 5, 3; nb201 5, 3, 2).
    """

    epochs: int = 25  # epochs per stage (train_search.py --epochs 25)
    batch_size: int = 96  # train and validation batch size (--batch_size 96)
    lr: float = 0.025  # initial SGD learning rate of each stage (--learning_rate 0.025)
    lr_min: float = 0.0  # cosine annealing floor (--learning_rate_min 0.0)
    momentum: float = 0.9  # SGD momentum (--momentum 0.9)
    nesterov: bool = False  # Nesterov momentum (reference: plain momentum)
    weight_decay: float = 3e-4  # weight decay of the supernet weights (--weight_decay 3e-4)
    grad_clip: float = 5.0  # max gradient norm of a weight step AND of an arch step (--grad_clip 5, train())
    arch_lr: float = 6e-4  # Adam learning rate of alpha (--arch_learning_rate 6e-4)
    arch_betas: tuple[float, float] = (0.5, 0.999)  # Adam betas of alpha (optimizer_a in train_search.py)
    arch_weight_decay: float = 1e-3  # Adam weight decay of alpha (--arch_weight_decay 1e-3)
    init_scale: float = 1e-3  # alpha starts at init_scale * N(0, 1) (model_search.py _initialize_alphas)
    C: int = 16  # initial channels of the first stage's supernet (--init_channels 16)
    layers: int = 5  # cells of the first stage's supernet (--layers 5)
    add_width: tuple[int, ...] = (0, 0, 0)  # channels added per stage (add_width default [0, 0, 0])
    add_layers: tuple[int, ...] = (0, 6, 12)  # cells added per stage: 5, 11, 17 (add_layers default [0, 6, 12])
    num_ops: tuple[int, ...] | None = None  # candidate ops per edge in each stage; darts (8, 5, 3) (num_to_keep [5, 3, 1])
    dropout_rate: tuple[float, ...] = (0.0, 0.4, 0.7)  # initial skip dropout per stage (paper, CIFAR-10)
    arch_warmup_epochs: tuple[int, ...] = (10, 10, 10)  # epochs without arch steps per stage (eps_no_archs)
    dropout_decay: float = 0.2  # after warm-up p = p_s * exp(-dropout_decay * (e - W)) (scale_factor 0.2)
    max_skip_connect: int | None = 2  # M: most skip_connect in the final normal cell (paper); None: no limit

    def __post_init__(self) -> None:
        names = ("add_width", "add_layers", "num_ops", "dropout_rate", "arch_warmup_epochs")
        for name in names:
            value = getattr(self, name)
            if name == "num_ops" and value is None:
                continue
            require(isinstance(value, (tuple, list)) and len(value) > 0,
                    f"{name} must be a non-empty sequence (one entry per stage), got {value!r}")
            object.__setattr__(self, name, tuple(value))  # lists from JSON / the CLI become tuples
        ref = "num_ops" if self.num_ops is not None else "add_layers"
        stages = len(getattr(self, ref))
        for name in names:
            if name != ref and getattr(self, name) is not None:
                require(len(getattr(self, name)) == stages,
                        f"{name} has {len(getattr(self, name))} entries but {ref} has {stages} (one per stage)")
        check_sgd(self)
        check_adam(self)
        require(self.init_scale >= 0, f"init_scale must be >= 0, got {self.init_scale!r}")
        require(_int(self.C) and self.C >= 1, f"C must be an int >= 1, got {self.C!r}")
        require(_int(self.layers) and self.layers >= 1, f"layers must be an int >= 1, got {self.layers!r}")
        for name in ("add_width", "add_layers"):
            bad = [v for v in getattr(self, name) if not (_int(v) and v >= 0)]
            require(not bad, f"{name} entries must be ints >= 0, got {list(getattr(self, name))}")
        n = self.num_ops
        if n is not None:
            require(all(_int(v) for v in n) and all(a > b for a, b in zip(n, n[1:])) and n[-1] >= 2,
                    f"num_ops must decrease strictly and end >= 2 (a non-'none' op must remain), got {list(n)}")
        bad_rates = [r for r in self.dropout_rate if not (isinstance(r, (int, float)) and 0 <= r < 1)]
        require(not bad_rates, f"dropout_rate entries must be in [0, 1), got {list(self.dropout_rate)}")
        bad_warm = [w for w in self.arch_warmup_epochs if not (_int(w) and 0 <= w < self.epochs)]
        require(not bad_warm, f"arch_warmup_epochs entries must be ints in [0, epochs={self.epochs}) so that alphas "
                              f"are trained in every stage, got {list(self.arch_warmup_epochs)}")
        require(isinstance(self.dropout_decay, (int, float)) and math.isfinite(self.dropout_decay)
                and self.dropout_decay >= 0, f"dropout_decay must be >= 0, got {self.dropout_decay!r}")
        m = self.max_skip_connect
        require(m is None or (_int(m) and m >= 0), f"max_skip_connect must be an int >= 0 or None, got {m!r}")

    def depths(self) -> list[int]:
        """Cells of each stage's supernet."""
        return [self.layers + a for a in self.add_layers]

    def for_space(self, rules: SpaceRules) -> PDartsConfig:
        """This config with the space's ``num_ops`` filled in, checked against the space."""
        n = rules.num_ops if self.num_ops is None else self.num_ops
        require(len(n) == self.stages, f"num_ops has {len(n)} entries but add_layers has {self.stages} (one per stage)")
        require(n[0] == len(rules.ops),
                f"num_ops[0] must be {len(rules.ops)} (the first stage searches every operation), got {list(n)}")
        bad = [d for d in self.depths() if rules.depth_value(d) is None]
        require(not bad, f"every stage needs {rules.depth_rule()}; depths {self.depths()}")
        return dataclasses.replace(self, num_ops=tuple(n))

    @property
    def stages(self) -> int:
        return len(self.add_layers)


# ---- pieces -------------------------------------------------------------------------------
class SkipDropout(nn.Module):
    """An identity ``skip_connect`` followed by dropout of rate :attr:`p` (reference ``MixedOp``)."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op
        self.p = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.op(x)
        if self.training and self.p > 0:  # p == 0 draws no random numbers
            y = F.dropout(y, self.p, training=True)
        return y


def install_skip_dropout(supernet: nn.Module) -> list[SkipDropout]:
    """Wrap every identity ``skip_connect`` candidate of ``supernet`` in a :class:`SkipDropout`.

    No parameters are added, so the supernet's state dict keys are unchanged.
    """
    choices = [m for m in supernet.modules() if isinstance(m, Choice)]
    wrappers = []
    for choice in choices:
        if SKIP in choice.candidates and isinstance(choice.candidates[SKIP], Identity):
            wrapper = SkipDropout(choice.candidates[SKIP])
            choice.candidates[SKIP] = wrapper
            wrappers.append(wrapper)
    return wrappers


def skip_dropout_rate(rate: float, epoch: int, epochs: int, warmup: int, decay: float) -> float:
    """The reference's per-epoch skip dropout: linear during warm-up, then exponential decay."""
    if epoch < warmup:
        return rate * (epochs - epoch - 1) / epochs
    return rate * math.exp(-(epoch - warmup) * decay)


def full_strengths(
    choices: Mapping[str, Sequence[str]], weights: Mapping[str, torch.Tensor], ops: Sequence[str] = PRIMITIVES,
) -> dict[str, torch.Tensor]:
    """Per key one weight per operation of ``ops`` (the space's order), dropped ones at 0 (what ``derive`` reads)."""
    out = {}
    for key, kept in choices.items():
        full = torch.zeros(len(ops))
        for op, w in zip(kept, weights[key].detach().cpu().tolist()):
            full[list(ops).index(op)] = w
        out[key] = full
    return out


def drop_weakest(choices: Mapping[str, Sequence[str]], weights: Mapping[str, torch.Tensor], keep: int) -> dict[str, list[str]]:
    """The ``keep`` strongest operations of every edge, in their order (reference ``get_min_k``)."""
    out = {}
    for key, ops in choices.items():
        w = weights[key].detach().cpu().tolist()
        if len(w) != len(ops) or keep > len(ops):
            raise ConfigError(f"cannot keep {keep} of the {len(ops)} operations of {key}")
        weakest = sorted(range(len(ops)), key=lambda i: (w[i], i))[: len(ops) - keep]
        out[key] = [op for i, op in enumerate(ops) if i not in weakest]
    return out


def limit_skip_connect(
    space: SearchSpace, strengths: Mapping[str, torch.Tensor], max_skip: int | None,
) -> tuple[Arch, dict[str, torch.Tensor], int]:
    """Derive, then while the limited cell (darts: normal; nb201: the cell) has more than ``max_skip``
    skip_connect, zero the weakest one and re-derive.

    Returns the architecture, the strengths it was derived from and how many skip weights were zeroed.
    """
    rules = RULES[space.name]
    weights = {k: v.detach().clone().float().cpu() for k, v in strengths.items()}
    arch = space.derive(weights)
    removed = 0
    skip = rules.ops.index(SKIP)
    while max_skip is not None:
        skips = rules.limited_skips(space, arch)
        if len(skips) <= max_skip:
            break
        # the reference's np.argmin over edges in its edge order: ties go to the earlier edge
        weakest = min(skips, key=lambda key: (float(weights[key][skip]), rules.edge_keys.index(key)))
        weights[weakest][skip] = 0.0
        removed += 1
        arch = space.derive(weights)
    return arch, weights, removed


def _arch_step(
    supernet: nn.Module, policy: SoftmaxPolicy, batch: tuple[torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer, *, grad_clip: float, where: str,
) -> tuple[float, torch.Tensor]:
    """First-order arch step whose gradient norm is clipped (the reference's ``train`` clips alphas too)."""
    x, y = batch
    path = policy()
    logits = supernet(x, path)
    loss = F.cross_entropy(logits, y)
    value = check_finite(loss, where)
    params = list(policy.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g.detach()
    nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return value, logits.detach()


def stage_context(ctx: OneShotContext, cfg: PDartsConfig, stage: int, kept: Mapping[str, Sequence[str]] | None) -> OneShotContext:
    """``ctx`` with stage ``stage``'s supernet options and checkpoint directory ``run_dir/stage{stage}``."""
    rules = RULES[ctx.space.name]
    kwargs: dict[str, Any] = {
        **ctx.supernet_kwargs, "C": cfg.C + cfg.add_width[stage],
        rules.depth_option: rules.depth_value(cfg.layers + cfg.add_layers[stage]),
    }
    if kept is not None:
        kwargs["edge_ops"] = {k: list(v) for k, v in kept.items()}
    run_dir = None if ctx.run_dir is None else Path(ctx.run_dir) / f"stage{stage}"
    return dataclasses.replace(ctx, supernet_kwargs=kwargs, run_dir=run_dir)


# ---- the search ---------------------------------------------------------------------------
def search(ctx: OneShotContext, cfg: PDartsConfig) -> OneShotResult:
    space = ctx.space
    if space.name not in RULES:  # pragma: no cover - OneShotMethod checks the space name
        raise ConfigError(f"p_darts runs on {', '.join(RULES)}, got {space.name!r}")
    rules = RULES[space.name]
    cfg = cfg.for_space(rules)
    if cfg.num_ops is None:  # pragma: no cover - for_space fills it in
        raise RuntimeError("num_ops not set")
    clash = sorted(set(rules.stage_options()) & set(ctx.supernet_kwargs))
    require(not clash, f"p_darts sets the supernet options {clash} per stage; give the width and depth as the method "
                       f"options C, layers, add_width, add_layers instead of supernet options")
    kept: dict[str, list[str]] | None = None  # None: every primitive on every edge (first stage)
    history: list[dict[str, Any]] = []
    seconds = 0.0
    kept_per_stage: list[dict[str, list[str]]] = []
    for stage in range(cfg.stages):
        sctx = stage_context(ctx, cfg, stage, kept)
        supernet = sctx.supernet()
        if not isinstance(supernet, Supernet):  # pragma: no cover - the darts supernet is one
            raise TypeError("darts supernet is not a nasforge Supernet")
        dropouts = install_skip_dropout(supernet)
        choices = supernet.choices()
        kept_per_stage.append({k: list(v) for k, v in choices.items()})
        policy = SoftmaxPolicy(choices, init_scale=cfg.init_scale).to(ctx.device)
        w_opt, scheduler = sgd_cosine(supernet, cfg)
        a_opt = torch.optim.Adam(policy.parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas,
                                 weight_decay=cfg.arch_weight_decay)
        run = sctx.open_run("p_darts", cfg, supernet=supernet, policy=policy, w_opt=w_opt, a_opt=a_opt,
                            scheduler=scheduler)
        run.scalars["stage"] = stage
        warmup = cfg.arch_warmup_epochs[stage]
        for epoch in run.epochs(cfg.epochs):
            lr = scheduler.get_last_lr()[0]
            p = skip_dropout_rate(cfg.dropout_rate[stage], epoch, cfg.epochs, warmup, cfg.dropout_decay)
            for module in dropouts:
                module.p = p
            train_arch = epoch >= warmup
            for b, train, valid in run.batches(cfg.batch_size):
                where = f"stage {stage} epoch {epoch} batch {b}"
                metrics: dict[str, float] = {}
                if train_arch:
                    v_loss, v_logits = _arch_step(supernet, policy, valid, a_opt, grad_clip=cfg.grad_clip,
                                                  where=f"{where} arch")
                    metrics.update(valid_loss=v_loss, valid_acc=accuracy(v_logits, valid[1]))
                with torch.no_grad():
                    path = policy()
                t_loss, t_logits = weight_step(
                    supernet, path, train, w_opt, loss_fn=F.cross_entropy, grad_clip=cfg.grad_clip,
                    where=f"{where} weight",
                )
                run.step_done(train_loss=t_loss, train_acc=accuracy(t_logits, train[1]), **metrics)
            scheduler.step()
            run.epoch_done(
                stage=stage, lr=lr, skip_dropout=p, arch_trained=train_arch,
                arch=derived(ctx, full_strengths(choices, policy.strengths(), rules.ops)),
            )
        history.extend(run.history)
        seconds += run.seconds()
        if stage + 1 < cfg.stages:
            kept = drop_weakest(choices, policy.strengths(), cfg.num_ops[stage + 1])
    final = full_strengths(choices, policy.strengths(), rules.ops)
    arch, strengths, removed = limit_skip_connect(space, final, cfg.max_skip_connect)
    out = result(
        ctx, run, strengths, kept_ops=kept_per_stage, skip_connect_removed=removed,
        unlimited_arch=derived(ctx, final),
    )
    if out.arch != arch:  # pragma: no cover - derive is deterministic
        raise RuntimeError("the skip-connect limited strengths do not derive the limited architecture")
    return dataclasses.replace(out, history=history, seconds=seconds)


p_darts = register("method", "p_darts")(OneShotMethod(
    name="p_darts",
    paper=(
        "Chen, Xie, Wu & Tian, 'Progressive Differentiable Architecture Search: Bridging the Depth "
        "Gap between Search and Evaluation', ICCV 2019"
    ),
    config_cls=PDartsConfig,
    search=search,
    spaces=tuple(RULES),
))
