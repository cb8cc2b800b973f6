"""DSO-NAS: architecture search as pruning a complete graph by sparse scaling factors.

Zhang, Huang & Wang, "You Only Search Once: Single Shot Neural Architecture Search via Direct
Sparse Optimization", arXiv 1811.01567 (2018) / IEEE TPAMI 43(9), 2021 (online 2020). Reference
implementation ``XinbangZhang/DSO-NAS`` (MXNet): ``Cifar/train.py`` (pre-training),
``Cifar/train_search.py`` + ``Cifar/core/solver_split_iter.py`` (search loop),
``Cifar/core/optimizer_split*.py`` (APG-NAG), ``Cifar/config/cfgs.py`` (settings).

Algorithm as implemented:

* every candidate operation of every choice key is multiplied by its own scaling factor
  ``lambda`` (:class:`~nasforge.policies.scaling.ScalingPolicy`, all ``lambda = 1`` at the
  start) and the supernet runs their sum: the complete graph of the paper (eq. 2-3);
* objective (eq. 5): ``L(W, lambda) + delta ||W||^2 + gamma ||lambda||_1``;
* stage 1, pre-training (``pretrain_epochs``): the weights alone are trained (SGD with
  Nesterov momentum = the reference's MXNet ``nag``) on the weight split (``ctx.train_set``)
  with every ``lambda`` fixed at 1 and no penalty (paper 4.1: "Training completely connected
  network for several epochs to get a good weights initialization"; 4.4.2: "the pre-train
  model is only trained on the weight learning set");
* stage 2, search (``search_epochs``): per step, one NAG step of the weights on a batch of the
  weight split, then one APG-NAG step (:class:`~nasforge.train.apg.APG`: soft-threshold
  ``lr * gamma`` with Nesterov momentum, ``lambda`` clipped at 0 as the reference) of the
  factors on a batch of the structure split (``ctx.valid_set``). This is the paper's "split
  training" (sec. 3.3: the training data is divided into two parts, one for ``W`` and one for
  ``lambda``, alternated 1:1 as ``solver_split_iter.py``; Table 3 shows it beats updating both
  on the same data, the SSS setting). Gradients are clipped element-wise at ``grad_clip_value``
  in the search stage only (the reference passes ``clip_gradient=2.0`` to the search optimizer);
* adaptive FLOPs (sec. 3.4, eq. 9; used in the paper's CIFAR search): before every ``lambda``
  step the penalty of a block is ``gamma * FLOPs_kept / FLOPs_block``, with the FLOPs of every
  candidate measured once on the supernet (``torch.utils.flop_counter`` inside
  :func:`nasforge.nn.ops.reference_ops`: identity, pooling and BN count 0) and summed over the cells that share its factor. Blocks are the cell types that own
  factors: ``normal`` and ``reduce`` (darts), the one searched cell (nb201);
* a factor that reaches exactly 0 prunes its operation: it is not executed again
  (:class:`~nasforge.nn.choice.Choice` skips zero weights and the policy marks it dead);
* derivation: ``space.derive`` on ``|lambda|`` (``none`` has no factor and reads 0). nb201:
  per edge the largest factor; an edge whose factors are all zero derives ``none`` (ties go to
  the first op, ``none``). darts: the space's rule, top-2 incoming edges per node by their
  largest factor, with that op.

Deviations from the paper / reference, stated explicitly:

* Search space. The paper searches blocks of ``M`` levels x ``N`` ops where every op reads all
  earlier ops, with a factor per connection (eq. 3) and a 1x1-conv output reduction (eq. 4).
  Here the factors sit on the candidates of the nb201 / darts cell edges (one per edge and op,
  shared by every cell of a type: the paper's "share" search space), and ``none`` gets no factor.
* Derivation. The paper keeps every connection with a non-zero factor (any number of inputs
  and ops per node). For comparability with the other methods of these spaces we use the
  spaces' own rule on ``|lambda|``: one op per nb201 edge (``none`` when all are pruned) and
  exactly two inputs per darts node (even when a node has fewer, or more, live connections;
  the count of live factors is in the result's ``info``).
* Pruning time. The reference rebuilds the graph without zero-factor connections every 5
  epochs; in between, a zero factor still runs and may revive from its gradient. Here a zero
  factor is pruned at once and for good (a skipped op has no gradient to revive it).
* BN. The paper fixes the scale of every BN to 1 in both stages, so that a BN cannot undo a
  shrinking factor. The candidate ops of the darts supernet are affine-free already; the nb201
  supernet is built with ``affine=False`` (an explicit ``affine=True`` is refused). The stem,
  the reduction blocks and the classifier keep their affine BN.
* Schedule. Constant learning rate, as the paper (4.2: "both with constant learning rate
  0.1"); the released ``cfgs.py`` pre-trains with 0.05 (``lr = 0.1 if model_search else 0.05``).
* Adaptive FLOPs. Eq. 9 with measured FLOPs; the reference code approximates it by counting
  kept ops, ``gamma * (kept + 1) / (all + 1)``. The adaptive-MAC variant (eq. 10) is not
  implemented.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from nasforge.nn.choice import Choice, Supernet
from nasforge.nn.ops import reference_ops
from nasforge.policies.scaling import ScalingPolicy
from nasforge.registry import register
from nasforge.train.apg import APG
from nasforge.train.bilevel import check_finite
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotMethod,
    OneShotResult,
    accuracy,
    derived,
    require,
    require_positive_int,
    result,
)

NAME = "dso_nas"
EXCLUDED = ("none",)  # candidates without a factor: their output is zero (see ScalingPolicy)


@dataclass(frozen=True)
class DsoNasConfig:
    """DSO-NAS hyper-parameters: the paper's CIFAR-10 search (sec. 4.1-4.2) unless noted."""

    pretrain_epochs: int = 120  # stage 1, lambda fixed at 1 (4.2: "pre-train the full network for 120 epochs"); 0 = none
    search_epochs: int = 120  # stage 2 (4.2: "search network architecture until convergence (120 epochs)")
    batch_size: int = 128  # 4.2: "mini-batch size is 128 on 2 GPUs" (cfgs.py: 64 per GPU x 2)
    lr: float = 0.1  # weight learning rate, constant (4.2: "both with constant learning rate 0.1")
    momentum: float = 0.9  # 4.1: "momentum is fixed to 0.9 for both NAG and APG-NAG"
    weight_decay: float = 1e-4  # delta of eq. 5 on W (4.1: "weight decay of W to 0.0001"); lambda has none (wd_mult=0)
    arch_lr: float = 0.1  # APG step size of lambda (reference: one optimizer, the weights' lr 0.1)
    gamma: float = 1e-3  # L1 weight on lambda (eq. 5); the paper gives no value: cfgs.py gamma = 0.001
    grad_clip_value: float | None = 2.0  # element-wise gradient clip in the search (reference clip_gradient=2.0)
    adaptive_flops: bool = True  # eq. 9, per-block gamma scaled by kept FLOPs (4.2: applied in the CIFAR search)
    init: float = 1.0  # initial lambda (reference: init_one for every lambda)

    def __post_init__(self) -> None:
        pre = self.pretrain_epochs
        require(isinstance(pre, int) and not isinstance(pre, bool) and pre >= 0, f"pretrain_epochs must be an int >= 0, got {pre!r}")
        require_positive_int("search_epochs", self.search_epochs)
        require_positive_int("batch_size", self.batch_size)
        for name in ("lr", "arch_lr", "init"):
            value = getattr(self, name)
            require(_finite(value) and value > 0, f"{name} must be > 0, got {value!r}")
        require(_finite(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        require(_finite(self.weight_decay) and self.weight_decay >= 0,
                f"weight_decay must be >= 0, got {self.weight_decay!r}")
        require(_finite(self.gamma) and self.gamma >= 0, f"gamma (the L1 penalty on lambda) must be >= 0, got {self.gamma!r}")
        clip = self.grad_clip_value
        require(clip is None or (_finite(clip) and clip > 0), f"grad_clip_value must be > 0 or None, got {clip!r}")
        require(isinstance(self.adaptive_flops, bool), f"adaptive_flops must be a bool, got {self.adaptive_flops!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def block_of(space: str, key: str) -> str:
    """The block (cell type owning the factor) of a choice key: darts ``normal``/``reduce``, nb201 ``cell``."""
    return key.split("_e", 1)[0] if space == "darts" else "cell"


@torch.no_grad()
def candidate_flops(
    supernet: nn.Module, choices: Mapping[str, Sequence[str]], input_shape: Sequence[int], device: str | torch.device,
) -> dict[str, list[float]]:
    """FLOPs of one input through every candidate, summed over the cells that share its key.

    One probe forward (eval mode, zero input, every candidate on) records the input each
    candidate sees; each is then counted with :class:`torch.utils.flop_counter.FlopCounterMode`
    (2 per multiply-accumulate; identity, max pooling and BN count 0).
    """
    seen: list[tuple[str, int, nn.Module, Tensor]] = []

    def record(key: str, i: int, module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append((key, i, module, args[0].detach()))

    handles = []
    for name, module in supernet.named_modules():
        key = name.rsplit(".", 1)[-1]
        if isinstance(module, Choice) and key in choices:
            for i, op in enumerate(module.options):
                handles.append(module.candidates[op].register_forward_pre_hook(partial(record, key, i)))
    was_training = supernet.training
    supernet.eval()  # no BN running-stat updates from the probe
    try:
        path = {k: torch.ones(len(v), device=device) for k, v in choices.items()}
        supernet(torch.zeros(2, *input_shape, device=device), path)
    finally:
        for h in handles:
            h.remove()
        supernet.train(was_training)
    flops = {k: [0.0] * len(v) for k, v in choices.items()}
    for key, i, module, x in seen:
        with FlopCounterMode(display=False) as counter, reference_ops():
            module.eval()
            module(x)
        module.train(was_training)
        flops[key][i] += counter.get_total_flops() / x.shape[0]
    return flops


def set_adaptive_gammas(
    optimizer: APG, policy: ScalingPolicy, flops: Mapping[str, Tensor | Sequence[float]], gamma: float,
) -> dict[str, float]:
    """Eq. 9: ``gamma_block = gamma * FLOPs(kept ops) / FLOPs(complete block)`` in each param group.

    ``flops`` maps every key to its candidates' FLOPs (:func:`candidate_flops`); each group of
    ``optimizer`` names its block (``"block"``) and the keys whose factors it holds (``"keys"``).
    """
    out: dict[str, float] = {}
    for group in optimizer.param_groups:
        pairs = [(policy.alive(k), torch.as_tensor(flops[k], dtype=torch.float64, device=policy.alive(k).device))
                 for k in group["keys"]]
        full = float(sum(f.sum() for _, f in pairs))
        kept = float(sum((f * alive).sum() for alive, f in pairs))
        group["gamma"] = gamma * kept / full if full > 0 else gamma
        out[group["block"]] = group["gamma"]
    return out


def _update(
    supernet: nn.Module, path: Mapping[str, Any], batch: tuple[Tensor, Tensor], params: Sequence[Tensor],
    optimizer: torch.optim.Optimizer, clip_value: float | None, where: str,
) -> tuple[float, Tensor]:
    """One step of ``optimizer`` on ``params`` (the only tensors differentiated); (loss, logits).

    Tensors the loss does not reach (pruned ops' weights, a key whose factors are all zero) get
    ``grad = None`` and are skipped by the optimizer.
    """
    x, y = batch
    logits = supernet(x, path)
    loss = F.cross_entropy(logits, y)
    value = check_finite(loss, where)
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = None if g is None else (g.clamp(-clip_value, clip_value) if clip_value is not None else g)
    optimizer.step()
    return value, logits.detach()


def _supernet(ctx: OneShotContext) -> Supernet:
    if ctx.space.name == "nb201":
        affine = ctx.supernet_kwargs.get("affine", False)
        require(affine is False, f"dso_nas fixes the BN scale of the candidate ops (paper 4.1): the nb201 supernet "
                                 f"option affine must be False, got {affine!r}")
        return ctx.supernet(affine=False)
    return ctx.supernet()


def search(ctx: OneShotContext, cfg: DsoNasConfig) -> OneShotResult:
    supernet = _supernet(ctx)
    choices = supernet.choices()
    policy = ScalingPolicy(choices, init=cfg.init, exclude=EXCLUDED).to(ctx.device)
    weights = [p for p in supernet.parameters() if p.requires_grad]
    w_opt = torch.optim.SGD(weights, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                            nesterov=cfg.momentum > 0)
    blocks: dict[str, list[str]] = {}
    for key in choices:
        blocks.setdefault(block_of(ctx.space.name, key), []).append(key)
    a_opt = APG(
        [{"params": [policy.lambdas[k] for k in keys], "block": block, "keys": keys} for block, keys in blocks.items()],
        lr=cfg.arch_lr, momentum=cfg.momentum, gamma=cfg.gamma, nonnegative=True,
    )
    flops = None
    if cfg.adaptive_flops:
        measured = candidate_flops(supernet, choices, ctx.input_shape, ctx.device)
        flops = {k: torch.tensor(v, dtype=torch.float64, device=ctx.device) for k, v in measured.items()}
    run = ctx.open_run(NAME, cfg, supernet=supernet, policy=policy, w_opt=w_opt, a_opt=a_opt)
    lambdas = list(policy.parameters())

    for epoch in run.epochs(cfg.pretrain_epochs + cfg.search_epochs):
        if epoch < cfg.pretrain_epochs:  # stage 1: weights only, every lambda at 1, no penalty
            for b, train in run.train_batches(cfg.batch_size):
                with torch.no_grad():
                    path = policy()
                t_loss, t_logits = _update(supernet, path, train, weights, w_opt, None, f"pretrain epoch {epoch} batch {b}")
                run.step_done(train_loss=t_loss, train_acc=accuracy(t_logits, train[1]))
            run.epoch_done(phase="pretrain", lr=cfg.lr, active=policy.active())
            continue
        gammas = {group["block"]: group["gamma"] for group in a_opt.param_groups}
        for b, train, valid in run.batches(cfg.batch_size):  # stage 2: W on the weight split, lambda on the other
            where = f"search epoch {epoch} batch {b}"
            with torch.no_grad():
                path = policy()
            t_loss, t_logits = _update(supernet, path, train, weights, w_opt, cfg.grad_clip_value, f"{where} weight")
            if flops is not None:
                gammas = set_adaptive_gammas(a_opt, policy, flops, cfg.gamma)
            v_loss, v_logits = _update(supernet, policy(), valid, lambdas, a_opt, cfg.grad_clip_value, f"{where} lambda")
            active = policy.prune()
            run.step_done(train_loss=t_loss, train_acc=accuracy(t_logits, train[1]), valid_loss=v_loss,
                          valid_acc=accuracy(v_logits, valid[1]), active=active)
        run.epoch_done(phase="search", lr=cfg.lr, active=policy.active(), gamma=gammas,
                       arch=derived(ctx, policy.strengths()))
    return result(ctx, run, policy.strengths(), active_ops=policy.active(), total_ops=policy.total())


dso_nas = register("method", NAME)(OneShotMethod(
    name=NAME,
    paper="Zhang, Huang & Wang, 'You Only Search Once: Single Shot Neural Architecture Search via Direct Sparse "
          "Optimization', arXiv 1811.01567 (2018) / TPAMI 2020",
    config_cls=DsoNasConfig,
    search=search,
))
