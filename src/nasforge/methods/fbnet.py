"""FBNet: differentiable NAS (DNAS) over a layer-wise space with a latency-aware loss.

Wu, Dai, Zhang, Wang, Sun, Wu, Tian, Vajda, Jia & Keutzer, "FBNet: Hardware-Aware Efficient
ConvNet Design via Differentiable Neural Architecture Search", CVPR 2019. The authors' code was
not released with the paper; the values marked "re-implementation" below come from the widely
used PyTorch re-implementation ``AnnaAleeva/FBNet`` (``supernet_functions/config_for_supernet.py``).

Algorithm, as implemented:

* **Stochastic super net.** Every searchable layer ``l`` of the ``mobilenet`` supernet holds all
  its candidate blocks and a parameter vector ``theta_l``; ``P_theta(b_l = i) = softmax(theta_l)_i``.
  Each step draws a soft Gumbel-softmax mask ``m_l = softmax((theta_l + g_l) / tau)`` per layer
  (:class:`~nasforge.policies.GumbelPolicy`, the policy SNAS uses: the same formula) and the layer
  output is ``sum_i m_l,i * b_l,i(x)`` (paper Eq. 4), so **every candidate of every layer runs**
  forward and backward on every step (the memory and time of the whole super net: the price
  ProxylessNAS' binary gates avoid).
* **Loss** (paper Eq. 2): ``L(a, w_a) = CE(a, w_a) * alpha * log(LAT(a)) ** beta``
  (:class:`~nasforge.hardware.objectives.FBNetLoss`, alpha 0.2, beta 0.6), where
  ``LAT(a) = sum_l sum_i m_l,i * LAT(b_l,i)`` (paper Eq. 5) is the latency expected from the lookup
  table **under the sampled mask** ``m`` (as the paper writes it; not under ``softmax(theta)``):
  :func:`nasforge.hardware.lut.expected_latency` with ``probs = m``, plus the table's constant for
  stem and head. It is differentiable in ``m`` and through the relaxation in ``theta``.
* **Training** (paper Section 4.1): the search data is split 80% / 20%
  (``theta_share=0.2``); in every epoch the weights ``w_a`` are first trained for one pass over
  the 80% (SGD with momentum, the mask sampled but held constant), then ``theta`` for one pass over
  the 20% (Adam on the same loss, the mask differentiable). The first ``warmup_epochs`` epochs
  train the weights only. The temperature of epoch ``e`` is ``tau0 * tau_decay ** e`` with
  ``tau0 = 5`` and ``tau_decay = exp(-0.045) ~ 0.956`` (paper), from epoch 0 (warm-up included).
  The weights' learning rate follows a cosine over ``epochs``, stepped per epoch.
* **Result.** The paper samples several architectures from the trained ``P_theta`` and trains each
  from scratch. Here ``num_samples`` architectures are drawn from ``softmax(theta)`` with a
  generator seeded by the run's seed (:func:`sample_architectures`) and listed in
  ``info["samples"]`` with their log-probability and predicted latency; the **result is the most
  likely architecture** (argmax of ``theta`` per layer), also in ``info["argmax"]``. Train the
  samples with ``nasforge train --arch ...`` to follow the paper's last step. With
  ``constraints`` (``--constraint latency_ms<=4``, limits on ``latency_ms`` from the table,
  ``params``, ``flops``, ``macs``), the result is the most likely of the argmax and the samples
  that meets every limit (a ``BudgetError`` names the closest values when none does). The limits
  are not part of the run's identity: rerunning with another limit resumes the finished search
  and only picks again. The paper's loss has no target; picking among the samples by a limit is
  this library's addition (the paper picks among its samples by training them).

Latency table (``latency_table``, required): a table of this machine built by ``nasforge hardware
build-lut`` for the same space config, input shape and number of classes (mismatches are refused,
another device or library version warned about, by :func:`~nasforge.hardware.lut.load_lut`).
Without one the search stops before anything runs with a ``ConfigError`` that gives the build
command. ``log(LAT) ** beta`` needs ``LAT > 1`` in its unit: the paper uses milliseconds; the
fastest architecture of the table must predict more than 1 unit, else a ``ConfigError`` says to
pass ``latency_unit=us`` (small CPU networks run in well under a millisecond).

Deviations from the paper, stated explicitly:

* **Space.** The paper's 9 candidates per layer are k3/k5 with expansion 1, 3 and 6, k3/k5 with
  expansion 1 and group convolution (2 groups, with channel shuffle), and skip: ``--space-opt
  kernels=[3,5] --space-opt expansions=[1,3,6] --space-opt group_conv=true`` (:data:`FBNET_SPACE`).
  The group blocks follow the authors' ``IRFBlock`` (1x1 group conv, shuffle, depthwise, 1x1 group
  conv); the plain expansion-1 blocks are the space's MobileNetV2 ``MBConv1`` without the 1x1
  expansion conv, which ``IRFBlock`` keeps even at expansion 1. ``skip`` is not offered on
  the first layer of a stage (where stride or width change; the paper's 22-layer macro
  architecture differs too: this is the ProxylessNAS backbone of the ``mobilenet`` space, 21
  searchable layers, with its ``preset=cifar`` variant for 32x32 inputs).
* **Data.** The paper searches on 100 randomly chosen ImageNet classes; the 80/20 split here is
  of whatever search data is given (``theta_share=None`` keeps the run's own split instead). Both
  splits are stratified and seeded by the run's seed.
* **Hyper-parameters.** The weights' optimizer settings, batch size, warm-up, theta's
  initialisation and the number of sampled architectures are "not checked" against the paper
  text (not available here); their values and sources are on the config fields.
* **Final networks** are not trained by the search (the samples are listed, the argmax is the
  result and goes to the usual final training of the run).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset

from nasforge.arch import Arch
from nasforge.errors import ConfigError
from nasforge.evaluators.supernet import StandaloneCost, broken_limits, cost_limits, no_feasible_error
from nasforge.hardware.objectives import FBNetLoss
from nasforge.nn.choice import Supernet
from nasforge.policies import GumbelPolicy
from nasforge.registry import register
from nasforge.spaces.base import SearchSpace
from nasforge.train.bilevel import arch_step, weight_step
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotMethod,
    OneShotResult,
    accuracy,
    check_adam,
    check_sgd,
    require,
    require_positive_int,
    sgd_cosine,
    strengths_lists,
)

if TYPE_CHECKING:
    from nasforge.hardware.lut import LatencyTable

#: ``--space-opt`` values giving the paper's 9 candidates (k3/k5 x e1/e3/e6, k3/k5 e1 with 2 groups, skip).
FBNET_SPACE: dict[str, Any] = {"kernels": [3, 5], "expansions": [1, 3, 6], "allow_skip": True, "group_conv": True}
#: Latency units: factor from the table's milliseconds.
LATENCY_UNITS: dict[str, float] = {"ms": 1.0, "us": 1000.0}
#: Offset of the final sampling generator's seed from the run's seed (independent of the search's draws).
SAMPLE_SEED_OFFSET = 7919


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class FbnetConfig:
    """FBNet hyper-parameters (paper Section 4.1 where checked; each field names its source)."""

    epochs: int = 90  # search epochs (paper: 90 epochs on ImageNet-100)
    warmup_epochs: int = 10  # first epochs train the weights only (not checked; re-implementation "train_thetas_from_the_epoch")
    batch_size: int = 64  # weight and theta batch size (not checked; re-implementation 64)
    lr: float = 0.1  # initial SGD learning rate of the weights (not checked; re-implementation w_lr 0.1)
    lr_min: float = 0.001  # floor of the weights' cosine schedule (not checked; re-implementation eta_min 0.001)
    momentum: float = 0.9  # SGD momentum of the weights (paper: SGD with momentum; 0.9 not checked)
    weight_decay: float = 1e-4  # weight decay of the weights (not checked; re-implementation w_weight_decay 1e-4)
    grad_clip: float | None = None  # max gradient norm of a weight step (not in the paper: none)
    arch_lr: float = 0.01  # Adam learning rate of theta (paper: Adam; 0.01 not checked, re-implementation thetas_lr)
    arch_betas: tuple[float, float] = (0.9, 0.999)  # Adam betas of theta (not checked: torch defaults, as the re-implementation)
    arch_weight_decay: float = 5e-4  # Adam weight decay of theta (not checked; re-implementation thetas_weight_decay)
    tau0: float = 5.0  # Gumbel-softmax temperature of epoch 0 (paper: initial temperature 5.0)
    tau_decay: float = math.exp(-0.045)  # temperature factor per epoch (paper: exp(-0.045) ~ 0.956)
    alpha: float = 0.2  # loss magnitude alpha of CE * alpha * log(LAT) ** beta (paper: 0.2)
    beta: float = 0.6  # latency exponent beta (paper: 0.6)
    theta_share: float | None = 0.2  # share of the search data that trains theta (paper: 20%; None: the run's split)
    latency_table: str | None = None  # lookup table of this machine (`nasforge hardware build-lut`); required
    latency_unit: str = "ms"  # unit of LAT in log(LAT): "ms" (paper) or "us" (sub-millisecond networks)
    init_scale: float = 0.0  # theta starts at init_scale * N(0, 1); 0: uniform P_theta (not checked; re-implementation: uniform)
    num_samples: int = 6  # architectures sampled from softmax(theta) at the end (not checked; paper: several)
    constraints: tuple[str, ...] = ()  # HardLimits the result must meet, e.g. ("latency_ms<=4",): picks among argmax + samples

    def __post_init__(self) -> None:
        check_sgd(self)
        check_adam(self)
        w = self.warmup_epochs
        require(isinstance(w, int) and not isinstance(w, bool) and w >= 0, f"warmup_epochs must be an int >= 0, got {w!r}")
        require(_number(self.tau0) and self.tau0 > 0, f"fbnet needs tau0 > 0 (finite), got tau0={self.tau0!r}")
        require(_number(self.tau_decay) and 0 < self.tau_decay <= 1, f"tau_decay must be in (0, 1], got {self.tau_decay!r}")
        require(_number(self.alpha) and self.alpha > 0, f"alpha must be a finite number > 0, got {self.alpha!r}")
        require(_number(self.beta) and self.beta > 0, f"beta must be a finite number > 0, got {self.beta!r}")
        share = self.theta_share
        require(share is None or (_number(share) and 0 < share < 1), f"theta_share must be in (0, 1) or None, got {share!r}")
        require(self.latency_unit in LATENCY_UNITS,
                f"latency_unit must be one of {', '.join(LATENCY_UNITS)}, got {self.latency_unit!r}")
        require(_number(self.init_scale) and self.init_scale >= 0, f"init_scale must be >= 0, got {self.init_scale!r}")
        require_positive_int("num_samples", self.num_samples)
        if isinstance(self.constraints, str):
            object.__setattr__(self, "constraints", (self.constraints,))
        object.__setattr__(self, "constraints", tuple(str(c) for c in self.constraints))
        cost_limits(self.constraints)  # a bad limit fails before anything runs
        tau_end = fbnet_tau(self.epochs - 1, self.tau0, self.tau_decay)
        require(tau_end > 0, f"the temperature schedule reaches {tau_end!r} at the last epoch (tau0={self.tau0!r}, "
                             f"tau_decay={self.tau_decay!r}); it must stay > 0")


def fbnet_tau(epoch: int, tau0: float, tau_decay: float) -> float:
    """The paper's temperature of ``epoch`` (0-based): ``tau0 * tau_decay ** epoch``."""
    return float(tau0 * tau_decay ** epoch)


def split_search_data(
    train_set: Dataset[Any], valid_set: Dataset[Any], theta_share: float, seed: int,
) -> tuple[Dataset[Any], Dataset[Any]]:
    """``(weights' part, theta's part)``: the union of both sets split stratified, ``theta_share`` for theta.

    Two :class:`~torch.utils.data.Subset` views of one data set (what the search loop passes) are
    merged into one view of that data set, so no image is read to find labels.
    """
    from nasforge.data import split_train_valid

    pool: Dataset[Any]
    if isinstance(train_set, Subset) and isinstance(valid_set, Subset) and train_set.dataset is valid_set.dataset:
        pool = Subset(train_set.dataset, [*train_set.indices, *valid_set.indices])
    else:
        pool = ConcatDataset([train_set, valid_set])
    w_part, theta_part = split_train_valid(pool, theta_share, seed=seed)
    return w_part, theta_part


class LatencyAwareLoss:
    """``CE * alpha * log(LAT(m)) ** beta`` with ``LAT(m)`` the table's expected latency under mask ``m``.

    Args:
        table: a complete latency table of the space (:func:`~nasforge.hardware.lut.load_lut`).
        objective: the FBNet loss constants.
        unit: ``"ms"`` or ``"us"``: the unit of ``LAT`` inside the log.
    """

    def __init__(self, table: LatencyTable, objective: FBNetLoss, unit: str = "ms") -> None:
        require(unit in LATENCY_UNITS, f"latency_unit must be one of {', '.join(LATENCY_UNITS)}, got {unit!r}")
        self.table, self.objective, self.unit, self.factor = table, objective, unit, LATENCY_UNITS[unit]

    def latency(self, mask: Mapping[str, Tensor]) -> Tensor:
        """Expected latency ``sum_l sum_i m_l,i LAT(b_l,i) + constant`` in :attr:`unit` (differentiable in ``m``)."""
        from nasforge.hardware.lut import expected_latency

        return expected_latency(self.table, mask) * self.factor

    def __call__(self, ce: Tensor, mask: Mapping[str, Tensor]) -> Tensor:
        return cast(Tensor, self.objective.loss(ce, self.latency(mask)))

    def fastest(self) -> float:
        """Predicted latency (in :attr:`unit`) of the fastest architecture: a lower bound of any mask's ``LAT``."""
        keys = self.table.layer_keys()
        return (sum(min(self.table.option_latencies(layer)) for layer in keys) + self.table.constant_ms) * self.factor


def load_table(ctx: OneShotContext, cfg: FbnetConfig) -> LatencyTable:
    """The run's latency table, checked against the space and input; a ``ConfigError`` says how to build one."""
    from nasforge.hardware.lut import load_lut

    if cfg.latency_table is None:
        opts = " ".join(f"--space-opt {k}={v!r}".replace("'", "") for k, v in ctx.space.config().items())
        shape = "x".join(map(str, ctx.input_shape))
        raise ConfigError(
            "fbnet needs a latency lookup table (its loss is CE x alpha x log(LAT) ** beta): build one for this "
            f"space and input ({shape}) with `nasforge hardware build-lut --space {ctx.space.name} {opts} "
            f"--input-size {ctx.input_shape[-1]} --out lut.json` and pass --method-opt latency_table=lut.json"
        )
    return load_lut(cfg.latency_table, space=ctx.space, input_shape=ctx.input_shape, num_classes=ctx.num_classes)


def argmax_arch(space: SearchSpace, probs: Mapping[str, Tensor]) -> Arch:
    """The most likely architecture: per layer the option of largest probability (first on ties)."""
    options = space.decisions()
    return space.make({k: options[k][int(torch.argmax(probs[k]))] for k in options})


def sample_architectures(space: SearchSpace, probs: Mapping[str, Tensor], n: int, seed: int) -> list[Arch]:
    """``n`` architectures drawn from ``probs`` (each layer independently), from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    options = space.decisions()
    out = []
    for _ in range(n):
        pick = {k: options[k][int(torch.multinomial(probs[k].detach().cpu().double(), 1, generator=gen))] for k in options}
        out.append(space.make(pick))
    return out


def _log_prob(space: SearchSpace, probs: Mapping[str, Tensor], arch: Arch) -> float:
    options = space.decisions()
    return float(sum(math.log(float(probs[k][options[k].index(arch[k])])) for k in options))


def pick_feasible(ctx: OneShotContext, cfg: FbnetConfig, candidates: list[Arch], probs: Mapping[str, Tensor]) -> Arch:
    """The most likely of ``candidates`` (under ``probs``) whose stand-alone network meets every limit of
    ``cfg.constraints`` (``latency_ms`` predicted by the run's table); BudgetError naming the closest if none does."""
    limits = cost_limits(cfg.constraints)
    cost = StandaloneCost(ctx.space, input_shape=ctx.input_shape, num_classes=ctx.num_classes,
                          latency_table=cfg.latency_table)
    needed = {c.metric for c in limits}
    unique = list(dict.fromkeys(candidates))
    tried = [cost(a, needed) for a in unique]
    feasible = [(a, m) for a, m in zip(unique, tried) if not broken_limits(limits, m)]
    if not feasible:
        raise no_feasible_error("fbnet (argmax and samples of the learned distribution)", limits, tried)
    ranked = sorted(feasible, key=lambda am: -_log_prob(ctx.space, probs, am[0]))
    ctx.log(f"fbnet: {len(feasible)} of {len(unique)} candidates meet {', '.join(cfg.constraints)}; "
            f"taking the most likely")
    return ranked[0][0]


def search(ctx: OneShotContext, cfg: FbnetConfig) -> OneShotResult:
    table = load_table(ctx, cfg)  # before anything is built: a missing or mismatched table fails first
    latency_loss = LatencyAwareLoss(table, FBNetLoss(cfg.alpha, cfg.beta), cfg.latency_unit)
    fastest = latency_loss.fastest()
    require(fastest > 1.0, f"the fastest architecture of latency table {cfg.latency_table} is predicted at "
                           f"{fastest:.4g} {cfg.latency_unit}, but log(LAT) ** beta needs LAT > 1: pass "
                           f"--method-opt latency_unit=us")
    supernet: Supernet = ctx.supernet()
    if cfg.theta_share is not None:
        w_set, theta_set = split_search_data(ctx.train_set, ctx.valid_set, cfg.theta_share, ctx.seed)
        ctx = dataclasses.replace(ctx, train_set=w_set, valid_set=theta_set)
    policy = GumbelPolicy(supernet.choices(), tau=cfg.tau0, init_scale=cfg.init_scale).to(ctx.device)
    w_opt, scheduler = sgd_cosine(supernet, cfg)
    a_opt = torch.optim.Adam(
        policy.parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay,
    )
    # The limits only pick among the final candidates: not part of the run's identity, so a rerun with
    # another limit resumes the finished search and picks again (nothing is searched twice).
    run = ctx.open_run("fbnet", dataclasses.replace(cfg, constraints=()), supernet=supernet, policy=policy, w_opt=w_opt, a_opt=a_opt, scheduler=scheduler)
    mask: dict[str, Any] = {}  # the mask of the step in progress (read by the loss)

    def draw() -> dict[str, Any]:
        mask.clear()
        mask.update(policy())
        return dict(mask)

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        return latency_loss(F.cross_entropy(logits, y), mask)

    for epoch in run.epochs(cfg.epochs):
        policy.tau = fbnet_tau(epoch, cfg.tau0, cfg.tau_decay)
        lr = float(scheduler.get_last_lr()[0])
        n_weight = run.steps_per_epoch(cfg.batch_size)
        # phase 1: the weights, one pass over their split; the mask is sampled but constant
        for b, batch in run.train_batches(cfg.batch_size):
            with torch.no_grad():
                path = draw()
            t_loss, t_logits = weight_step(
                supernet, path, batch, w_opt, loss_fn=loss_fn, grad_clip=cfg.grad_clip,
                where=f"epoch {epoch} batch {b} weight",
            )
            run.step_done(train_loss=t_loss, train_acc=accuracy(t_logits, batch[1]),
                          train_latency=float(latency_loss.latency(mask).detach()))
        # phase 2: theta, one pass over its split (after the warm-up)
        if epoch >= cfg.warmup_epochs:
            for b, batch in run.valid_batches(cfg.batch_size, first=n_weight):
                v_loss, v_logits = arch_step(supernet, draw, batch, a_opt, loss_fn=loss_fn,
                                             where=f"epoch {epoch} batch {b} arch")
                run.step_done(valid_loss=v_loss, valid_acc=accuracy(v_logits, batch[1]),
                              valid_latency=float(latency_loss.latency(mask).detach()))
        scheduler.step()
        probs = policy.strengths()
        best = argmax_arch(ctx.space, probs)
        run.epoch_done(tau=policy.tau, lr=lr, expected_latency=float(latency_loss.latency(probs)),
                       argmax_latency=table.predict(best) * latency_loss.factor, arch=ctx.space.format(best))

    probs = policy.strengths()
    best = argmax_arch(ctx.space, probs)
    samples = sample_architectures(ctx.space, probs, cfg.num_samples, ctx.seed + SAMPLE_SEED_OFFSET)

    def record(arch: Arch) -> dict[str, Any]:
        return {"arch": ctx.space.format(arch), "log_prob": _log_prob(ctx.space, probs, arch),
                "predicted_latency_ms": table.predict(arch)}

    info: dict[str, Any] = {
        "argmax": record(best),
        "samples": [record(a) for a in samples],
        "expected_latency_ms": float(latency_loss.latency(probs)) / latency_loss.factor,
        "latency_table": cfg.latency_table,
        "result_rule": "argmax of theta per layer",
    }
    if cfg.constraints:
        best = pick_feasible(ctx, cfg, [best, *samples], probs)
        info.update(result_rule="most likely of the argmax and the samples that meets every limit",
                    constraints=list(cfg.constraints), result=record(best))
    return OneShotResult(arch=best, strengths=strengths_lists(probs), history=list(run.history),
                         seconds=run.seconds(), info=info)


fbnet = register("method", "fbnet")(OneShotMethod(
    name="fbnet",
    paper="Wu et al., 'FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable Neural Architecture "
          "Search', CVPR 2019",
    config_cls=FbnetConfig,
    search=search,
    spaces=("mobilenet",),
))
