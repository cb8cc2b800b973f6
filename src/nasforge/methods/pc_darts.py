"""PC-DARTS: DARTS on partial channels, with edge normalisation and an architecture warm-up.

Xu, Xie, Zhang, Chen, Qi, Tian & Xiong, "PC-DARTS: Partial Channel Connections for
Memory-Efficient Architecture Search", ICLR 2020. Reference implementation
``yuhuixu1993/PC-DARTS`` (``train_search.py``, ``model_search.py``; the architecture step is
DARTS' ``architect.py``, which the repository reuses).

Algorithm (as implemented):

* **Partial channel connections** (paper eq. 2; reference ``MixedOp``): the supernet is built
  with ``partial_channels=K``. On every edge only the first ``C / K`` channels of the input go
  through the candidate operations (mixed by ``softmax(alpha)``); the other ``C - C / K``
  bypass them (2x2 max-pooled on a stride-2 edge), the two parts are concatenated (ops' output
  first) and channel-shuffled with ``K`` groups, so the next edge's operations see other
  channels. This fixed slice + shuffle is the reference's implementation of channel sampling.
* **Edge normalisation** (eq. 4; reference ``betas_normal`` / ``betas_reduce``): every edge
  ``j -> i`` has a logit ``beta_{i,j}``; node ``i`` is
  ``sum_j softmax_j(beta_{i,.}) * mixed_op_{i,j}(x_j)``, the softmax taken over the edges
  entering node ``i`` (``supernet.edge_groups()``). Alphas and betas start at ``1e-3 * N(0, 1)``.
* **Bilevel updates** as first-order DARTS, per training batch: an Adam step on alphas and betas
  with ``grad L_val`` on a validation batch, then an SGD weight step on the training batch
  (momentum, cosine-annealed learning rate, gradient-norm clip 5) — except that during the
  first ``warmup_epochs`` epochs (reference: 15, ``if epoch>=15: architect.step(...)``) the
  architecture parameters are not updated at all, only the weights.
* **Derivation** (reference ``genotype()._parse``): the strength of op ``o`` on edge ``(i, j)``
  is ``softmax(alpha_{i,j})_o * softmax_j(beta_{i,.})`` (:meth:`SoftmaxPolicy.strengths`), then
  the space's rule. ``darts``: per node the two incoming edges whose strongest non-``none``
  op is largest, each with that op; betas thus decide which edges survive, not which op an edge
  keeps. ``nb201``: argmax per edge, ``none`` included. A positive per-edge factor does not
  change an edge's argmax, so on nb201 the betas do not affect the derived cell: there they only
  act during the search, weighting the edges summed into nodes 2 and 3 (node 1 has a single
  incoming edge, whose normalised weight is always 1, so its beta gets no gradient).

Defaults are the reference's CIFAR-10 search: 50 epochs, ``K = 4``, batch 256, SGD lr 0.1
annealed to ``lr_min`` = 0.001 (``--learning_rate_min`` default of ``train_search.py``, also in
``V100_python1.0/``), momentum 0.9, weight decay 3e-4, clip 5; Adam 6e-4, betas (0.5, 0.999),
weight decay 1e-3; 15 warm-up epochs. The paper's ImageNet search uses ``K = 2``.

Deviations from the reference:

* Only the first-order architecture gradient (the paper's setting; the reference's
  ``--unrolled`` flag, default off, is not offered).
* The validation batch of a step comes from the engine's position-independent, cycled
  validation order (as the repository's ``V100_python1.0`` iterator), not from a fresh
  ``next(iter(valid_queue))`` each step; during warm-up it is drawn and not used, as there.
* Epoch ``e`` uses the cosine learning rate of ``e`` (``scheduler.step()`` after the epoch);
  the reference steps the scheduler at the start of each epoch (pre-1.1 PyTorch), so its whole
  schedule is one epoch ahead.
* NAS-Bench-201 is not in the paper; there the nb201 supernet with ``partial_channels`` and its
  node edge groups are used as described above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nasforge.nn.choice import Supernet
from nasforge.policies import SoftmaxPolicy
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
class PcDartsConfig:
    """PC-DARTS hyper-parameters (reference ``yuhuixu1993/PC-DARTS`` CIFAR-10 search defaults)."""

    partial_channels: int = 4  # K: candidates see 1/K of the channels (model_search.py MixedOp ``self.k = 4``)
    epochs: int = 50  # search epochs (train_search.py --epochs 50)
    warmup_epochs: int = 15  # epochs without architecture steps (train_search.py ``if epoch>=15``)
    batch_size: int = 256  # train and validation batch size (train_search.py --batch_size 256)
    lr: float = 0.1  # initial SGD learning rate of the weights (--learning_rate 0.1)
    lr_min: float = 0.001  # cosine annealing floor (--learning_rate_min 0.001)
    momentum: float = 0.9  # SGD momentum (--momentum 0.9)
    nesterov: bool = False  # Nesterov momentum (reference: plain momentum)
    weight_decay: float = 3e-4  # weight decay of the supernet weights (--weight_decay 3e-4)
    grad_clip: float = 5.0  # max gradient norm of a weight step (--grad_clip 5)
    arch_lr: float = 6e-4  # Adam learning rate of alphas and betas (--arch_learning_rate 6e-4)
    arch_betas: tuple[float, float] = (0.5, 0.999)  # Adam betas (DARTS architect.py, reused by PC-DARTS)
    arch_weight_decay: float = 1e-3  # Adam weight decay of alphas and betas (--arch_weight_decay 1e-3)
    init_scale: float = 1e-3  # alphas and betas start at init_scale * N(0, 1) (model_search.py _initialize_alphas)

    def __post_init__(self) -> None:
        k = self.partial_channels
        require(
            isinstance(k, int) and not isinstance(k, bool) and k >= 1,
            f"partial_channels (PC-DARTS K) must be an int >= 1, got {k!r}",
        )
        check_sgd(self)
        check_adam(self)
        w = self.warmup_epochs
        require(
            isinstance(w, int) and not isinstance(w, bool) and 0 <= w < self.epochs,
            f"warmup_epochs must be an int in [0, epochs={self.epochs}) so that alphas are trained at all, got {w!r}",
        )
        require(self.init_scale >= 0, f"init_scale must be >= 0, got {self.init_scale!r}")


def supernet_and_policy(ctx: OneShotContext, cfg: PcDartsConfig) -> tuple[Supernet, SoftmaxPolicy]:
    """The partial-channel supernet of ``ctx`` and its softmax policy with edge normalisation."""
    given = ctx.supernet_kwargs.get("partial_channels", cfg.partial_channels)
    require(
        given == cfg.partial_channels,
        f"supernet_kwargs partial_channels={given!r} contradicts the pc_darts option partial_channels="
        f"{cfg.partial_channels}; set K with the method option only",
    )
    supernet = ctx.supernet(partial_channels=cfg.partial_channels)
    if not isinstance(supernet, Supernet):  # pragma: no cover - every space's supernet is one
        raise TypeError(f"{ctx.space.name} supernet is not a nasforge Supernet")
    policy = SoftmaxPolicy(supernet.choices(), init_scale=cfg.init_scale, edge_groups=supernet.edge_groups())
    return supernet, policy.to(ctx.device)


def search(ctx: OneShotContext, cfg: PcDartsConfig) -> OneShotResult:
    supernet, policy = supernet_and_policy(ctx, cfg)
    w_opt, scheduler = sgd_cosine(supernet, cfg)
    # alphas and betas together: both are architecture parameters updated on validation data
    a_opt = torch.optim.Adam(policy.parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay)
    run = ctx.open_run("pc_darts", cfg, supernet=supernet, policy=policy, w_opt=w_opt, a_opt=a_opt, scheduler=scheduler)

    for epoch in run.epochs(cfg.epochs):
        lr = scheduler.get_last_lr()[0]
        train_arch = epoch >= cfg.warmup_epochs
        for b, train, valid in run.batches(cfg.batch_size):
            where = f"epoch {epoch} batch {b}"
            metrics: dict[str, float] = {}
            if train_arch:
                v_loss, v_logits = arch_step(supernet, policy, valid, a_opt, loss_fn=F.cross_entropy, where=f"{where} arch")
                metrics.update(valid_loss=v_loss, valid_acc=accuracy(v_logits, valid[1]))
            with torch.no_grad():
                path = policy()
            t_loss, t_logits = weight_step(
                supernet, path, train, w_opt, loss_fn=F.cross_entropy, grad_clip=cfg.grad_clip, where=f"{where} weight",
            )
            run.step_done(train_loss=t_loss, train_acc=accuracy(t_logits, train[1]), **metrics)
        scheduler.step()
        run.epoch_done(lr=lr, arch_trained=train_arch, arch=derived(ctx, policy.strengths()))
    return result(ctx, run, policy.strengths(), partial_channels=cfg.partial_channels)


pc_darts = register("method", "pc_darts")(OneShotMethod(
    name="pc_darts",
    paper=(
        "Xu, Xie, Zhang, Chen, Qi, Tian & Xiong, 'PC-DARTS: Partial Channel Connections for "
        "Memory-Efficient Architecture Search', ICLR 2020"
    ),
    config_cls=PcDartsConfig,
    search=search,
    data_parallel=True,
))
