"""GDAS: gradient-based search with a differentiable architecture sampler (one op per edge).

Dong & Yang, "Searching for A Robust Neural Architecture in Four GPU Hours", CVPR 2019.
Reference implementation ``D-X-Y/AutoDL-Projects``: ``exps/NAS-Bench-201-algos/GDAS.py`` (the
search loop), ``models/cell_searchs/search_model_gdas.py`` (the sampler) and the NAS-Bench-201
run settings ``scripts-search/NAS-Bench-201-algos/GDAS.sh`` + ``configs/nas-benchmark/algos/GDAS.config``.

Algorithm, per pair of (training, validation) batches as the reference ``search_func``:

1. weight step on the training batch: a fresh hard Gumbel sample
   ``h = one_hot(argmax softmax((log_softmax(alpha) + G) / tau))`` per edge
   (:class:`~nasforge.policies.HardGumbelPolicy`); only the sampled candidate of each edge runs
   forward and backward; SGD (Nesterov momentum, cosine-annealed learning rate, gradient-norm
   clip 5) on the supernet weights only;
2. architecture step on the validation batch: another fresh sample; Adam on ``alpha`` only,
   with the straight-through gradient ``h - stopgrad(h~) + h~`` so that every logit of an edge
   receives gradient through the softmax of the sampled entry.

The temperature is set at the start of every epoch ``e`` of ``E`` to
``tau = tau_max - (tau_max - tau_min) * e / (E - 1)`` (the reference's ``search_model.set_tau``
call; linear from 10 to 0.1). The architecture is derived from ``softmax(alpha)`` with the
space's rule (``nb201``: argmax per edge, ``none`` included, as the reference ``genotype()``;
``darts``: top-2 incoming edges per node, ``none`` excluded).

Deviations from the paper / reference, stated explicitly:

* DARTS space: the paper's headline ("four GPU hours") model, GDAS (FRC), fixes a hand-designed
  reduction cell and searches only the normal cell. Our ``darts`` supernet searches both the
  normal and the reduction cell (the variant of the reference's ``search_model_gdas_nasnet.py``);
  there is no fixed-reduction-cell option.
* With ``epochs == 1`` the reference's formula divides by zero; here the single epoch uses
  ``tau_max``.
* The reference clips the gradient norm of ``network.parameters()``, which includes the
  architecture gradient its weight step also computes (and then discards); here the clip covers
  the weights only, since the weight step computes no architecture gradient. Measured with
  ``benchmarks/peers/nb201_parity.py``, that gradient adds 0.003 to a norm of 1.07 at C=4, N=1
  and 0.043 to a norm of 61.8 at C=16, N=5 (where the clip at 5 acts); the weights after the
  step agree to 1.5e-8 either way.
* By default unselected candidates contribute nothing to an edge output (see
  :mod:`nasforge.policies.gumbel`). The reference adds each unselected weight ``h_j`` itself
  (value 0) to the edge output (``... else weights[_ie]`` in xautodl's ``forward_gdas``), so
  ``dL/dh_j`` is the sum of the upstream gradient; ``reference_gradient=True`` does the same.

The learning rate is the reference's: its ``CosineAnnealingLR`` reads only the epoch after
warm-up (``scheduler.update(None, step / len(loader))`` changes the rate only during warm-up,
which the NB201 runs do not use), so it is constant within an epoch as here.

Checked against the reference code (``benchmarks/peers/nb201_parity.py``, test
``tests/test_xautodl_parity.py``): from the same weights, architecture parameters, batches and
Gumbel noise, xautodl 1.0.0's ``TinyNetworkGDAS`` and this method give the same logits, weight
gradients and updated weights to float precision, and with ``reference_gradient=True`` the
same architecture gradient; the default gradient differs (the last deviation above).

Defaults are the NAS-Bench-201 GDAS run (each field says where it comes from). The reference's
DARTS-space run (``configs/search-opts/GDAS-NASNet-CIFAR.config``) differs only in
``batch_size=256``. On NB201 the reference supernet uses ``affine=False`` BN in the
cells (``track_running_stats`` per run); pass those as supernet options of the context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nasforge.nn.choice import Supernet
from nasforge.policies import HardGumbelPolicy
from nasforge.registry import register
from nasforge.train.bilevel import arch_step, weight_step
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
class GdasConfig:
    """GDAS hyper-parameters (NAS-Bench-201 reference run; the source of each is on its line)."""

    epochs: int = 250  # search epochs (GDAS.config "epochs": 250 since AutoDL-Projects 5bd503a, Nov 2019; was 240)
    batch_size: int = 64  # train and validation batch size (GDAS.config "batch_size")
    lr: float = 0.025  # initial SGD learning rate of the weights (GDAS.config "LR")
    lr_min: float = 0.001  # cosine annealing floor (GDAS.config "eta_min")
    momentum: float = 0.9  # SGD momentum (GDAS.config "momentum")
    nesterov: bool = True  # Nesterov momentum (GDAS.config "nesterov")
    weight_decay: float = 5e-4  # weight decay of the supernet weights (GDAS.config "decay")
    grad_clip: float = 5.0  # max gradient norm of a weight step (GDAS.py: clip_grad_norm_(..., 5))
    arch_lr: float = 3e-4  # Adam learning rate of alpha (GDAS.sh --arch_learning_rate 0.0003)
    arch_betas: tuple[float, float] = (0.5, 0.999)  # Adam betas of alpha (GDAS.py a_optimizer)
    arch_weight_decay: float = 1e-3  # Adam weight decay of alpha (GDAS.sh --arch_weight_decay 0.001)
    tau_max: float = 10.0  # Gumbel temperature of the first epoch (GDAS.sh --tau_max 10)
    tau_min: float = 0.1  # Gumbel temperature of the last epoch (GDAS.sh --tau_min 0.1)
    init_scale: float = 1e-3  # alpha starts at init_scale * N(0, 1) (search_model_gdas.py: 1e-3 * randn)
    reference_gradient: bool = False  # True: unselected ops' zero weights are added to the edge output (xautodl)

    def __post_init__(self) -> None:
        check_sgd(self)
        check_adam(self)
        taus = (self.tau_max, self.tau_min)
        require(
            all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in taus),
            f"gdas temperatures must be finite numbers, got tau_max={self.tau_max!r}, tau_min={self.tau_min!r}",
        )
        require(
            self.tau_min > 0 and self.tau_max >= self.tau_min,
            f"gdas needs tau_max >= tau_min > 0 (the linear schedule must stay positive), got "
            f"tau_max={self.tau_max!r}, tau_min={self.tau_min!r}",
        )
        require(
            isinstance(self.init_scale, (int, float)) and math.isfinite(self.init_scale) and self.init_scale >= 0,
            f"init_scale must be a finite number >= 0, got {self.init_scale!r}",
        )


def gdas_tau(epoch: int, epochs: int, tau_max: float, tau_min: float) -> float:
    """The reference's temperature of ``epoch`` (0-based) of ``epochs``: linear ``tau_max -> tau_min``."""
    if epochs <= 1:  # the reference divides by epochs - 1 = 0; keep the starting temperature
        return float(tau_max)
    return float(tau_max - (tau_max - tau_min) * epoch / (epochs - 1))


def search(ctx: OneShotContext, cfg: GdasConfig) -> OneShotResult:
    supernet: Supernet = ctx.supernet()
    policy = HardGumbelPolicy(
        supernet.choices(), tau=cfg.tau_max, init_scale=cfg.init_scale, reference_gradient=cfg.reference_gradient,
    ).to(ctx.device)
    w_opt, scheduler = sgd_cosine(supernet, cfg)
    a_opt = torch.optim.Adam(
        policy.parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay,
    )
    run = ctx.open_run("gdas", cfg, supernet=supernet, policy=policy, w_opt=w_opt, a_opt=a_opt, scheduler=scheduler)

    for epoch in run.epochs(cfg.epochs):
        policy.tau = gdas_tau(epoch, cfg.epochs, cfg.tau_max, cfg.tau_min)
        lr = float(scheduler.get_last_lr()[0])
        for b, train, valid in run.batches(cfg.batch_size):
            where = f"epoch {epoch} batch {b}"
            # weights: one fresh sample; the path is a constant here (no alpha gradient is built)
            with torch.no_grad():
                path = policy()
            t_loss, t_logits = weight_step(
                supernet, path, train, w_opt, loss_fn=F.cross_entropy, grad_clip=cfg.grad_clip,
                where=f"{where} weight",
            )
            # architecture: another fresh sample, drawn inside arch_step with the straight-through graph
            v_loss, v_logits = arch_step(supernet, policy, valid, a_opt, loss_fn=F.cross_entropy, where=f"{where} arch")
            run.step_done(
                train_loss=t_loss, train_acc=accuracy(t_logits, train[1]),
                valid_loss=v_loss, valid_acc=accuracy(v_logits, valid[1]),
            )
        scheduler.step()
        run.epoch_done(tau=policy.tau, lr=lr, arch=derived(ctx, policy.strengths()))
    return result(ctx, run, policy.strengths())


gdas = register("method", "gdas")(OneShotMethod(
    name="gdas",
    paper="Dong & Yang, 'Searching for A Robust Neural Architecture in Four GPU Hours', CVPR 2019",
    config_cls=GdasConfig,
    search=search,
    data_parallel=True,
))
