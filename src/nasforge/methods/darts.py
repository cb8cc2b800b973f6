"""DARTS: differentiable architecture search with a softmax mixture on every edge.

Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019. Reference
implementation ``quark0/darts`` (``cnn/train_search.py``, ``cnn/architect.py``,
``cnn/model_search.py``).

Algorithm (paper Alg. 1, per training batch):

1. architecture step on a validation batch: Adam on the logits ``alpha`` with the first-order
   gradient ``grad_alpha L_val(w, alpha)`` (``order=1``, "DARTS-V1") or the second-order
   unrolled gradient with the finite-difference Hessian-vector product (``order=2``,
   "DARTS-V2", ``xi`` = the current weight learning rate as in the reference);
2. weight step on the training batch: SGD with momentum, cosine-annealed learning rate,
   gradient-norm clip 5, every candidate of every edge running under ``softmax(alpha)``;

then derive the architecture with the space's rule (``nb201``: argmax per edge, ``none``
included; ``darts``: top-2 incoming edges per node, ``none`` excluded).

Defaults are the paper's CIFAR-10 search (50 epochs, batch 64, SGD lr 0.025 -> 0.001, momentum
0.9, weight decay 3e-4; Adam 3e-4, betas (0.5, 0.999), weight decay 1e-3). The NAS-Bench-201
paper's DARTS runs used weight decay 5e-4 with Nesterov momentum (xautodl ``DARTS.config``):
pass ``weight_decay=5e-4, nesterov=True`` for that protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nasforge.policies import SoftmaxPolicy
from nasforge.registry import register
from nasforge.train.bilevel import arch_step, unrolled_arch_grads, weight_step
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


@dataclass(frozen=True)
class DartsConfig:
    """DARTS hyper-parameters (paper / reference defaults)."""

    order: int = 1  # 1: first-order approximation (DARTS-V1); 2: unrolled second order (DARTS-V2)
    epochs: int = 50  # search epochs
    batch_size: int = 64  # train and validation batch size
    lr: float = 0.025  # initial SGD learning rate of the weights
    lr_min: float = 0.001  # cosine annealing floor
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum (NB201's DARTS runs: True)
    weight_decay: float = 3e-4  # weight decay of the supernet weights
    grad_clip: float = 5.0  # max gradient norm of a weight step
    arch_lr: float = 3e-4  # Adam learning rate of alpha
    arch_betas: tuple[float, float] = (0.5, 0.999)  # Adam betas of alpha
    arch_weight_decay: float = 1e-3  # Adam weight decay of alpha
    init_scale: float = 1e-3  # alpha starts at init_scale * N(0, 1)
    fd_r: float = 1e-2  # second order: the finite-difference step is fd_r / ||grad_w' L_val||

    def __post_init__(self) -> None:
        require(self.order in (1, 2), f"darts order must be 1 or 2, got {self.order!r}")
        check_sgd(self)
        check_adam(self)
        require(self.fd_r > 0, f"fd_r must be > 0, got {self.fd_r!r}")


def search(ctx: OneShotContext, cfg: DartsConfig) -> OneShotResult:
    supernet = ctx.supernet()
    policy = SoftmaxPolicy(supernet.choices(), init_scale=cfg.init_scale).to(ctx.device)
    w_opt, scheduler = sgd_cosine(supernet, cfg)
    a_opt = torch.optim.Adam(policy.parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay)
    run = ctx.open_run("darts", cfg, supernet=supernet, policy=policy, w_opt=w_opt, a_opt=a_opt, scheduler=scheduler)
    arch_params = list(policy.parameters())

    for epoch in run.epochs(cfg.epochs):
        lr = float(scheduler.get_last_lr()[0])
        for b, train, valid in run.batches(cfg.batch_size):
            where = f"epoch {epoch} batch {b}"
            if cfg.order == 1:
                v_loss, v_logits = arch_step(supernet, policy, valid, a_opt, loss_fn=F.cross_entropy, where=f"{where} arch")
            else:
                v_loss, grads = unrolled_arch_grads(
                    supernet, policy, arch_params, train, valid, w_opt, xi=lr, loss_fn=F.cross_entropy,
                    where=f"{where} arch", r=cfg.fd_r,
                )
                for p, g in zip(arch_params, grads):
                    p.grad = g
                a_opt.step()
                v_logits = None
            with torch.no_grad():
                path = policy()
            t_loss, t_logits = weight_step(
                supernet, path, train, w_opt, loss_fn=F.cross_entropy, grad_clip=cfg.grad_clip, where=f"{where} weight",
            )
            metrics = {"train_loss": t_loss, "train_acc": accuracy(t_logits, train[1]), "valid_loss": v_loss}
            if v_logits is not None:
                metrics["valid_acc"] = accuracy(v_logits, valid[1])
            run.step_done(**metrics)
        scheduler.step()
        run.epoch_done(lr=lr, arch=derived(ctx, policy.strengths()))
    return result(ctx, run, policy.strengths())


darts = register("method", "darts")(OneShotMethod(
    name="darts",
    paper="Liu, Simonyan & Yang, 'DARTS: Differentiable Architecture Search', ICLR 2019",
    config_cls=DartsConfig,
    search=search,
    data_parallel=True,
))
