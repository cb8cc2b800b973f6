"""SNAS: stochastic NAS, weights and architecture trained together from one loss (single level).

Xie, Zheng, Liu & Lin, "SNAS: Stochastic Neural Architecture Search", ICLR 2019. Reference
implementation ``SNAS-Series/SNAS-Series`` (``SNAS/train_search.py``, ``SNAS/model_search.py``,
``SNAS/utils.py`` ``Temp_Scheduler``; run settings in ``SNAS/README.md``).

Algorithm, per training batch (the validation split is not used at all):

1. draw a soft Gumbel-softmax sample ``Z = softmax((alpha + G) / tau)`` per edge
   (:class:`~nasforge.policies.GumbelPolicy`); every candidate runs, weighted by ``Z`` (eq. 3);
2. one forward and one backward of ``L = CE(f(x; Z, w), y) + eta * R`` on the training batch;
3. an SGD step on the weights (momentum, cosine-annealed learning rate, gradient-norm clip 5) and
   an Adam step on ``alpha`` (gradient-norm clip 10, as the reference), both from that backward.

Resource constraint (paper sec. 2.4), enabled by ``resource_weight = eta > 0``: the cost of a
sampled network is linear in ``Z``, ``C(Z) = sum_edges Z_edge . c_edge``, where ``c_edge[k]`` is
the cost of candidate ``k`` summed over every cell that shares the edge key (the whole
network's share of that decision). Costs are measured once, before the search, from each
candidate module at its own input resolution: ``resource="params"`` counts its parameters,
``resource="flops"`` counts the FLOPs of one image with :class:`torch.utils.flop_counter.FlopCounterMode`
(2 per multiply-add of convolutions and matrix products, so ``none``, identity skips and
pooling cost 0: pools are counted as pools, inside :func:`nasforge.nn.ops.reference_ops`); both
in millions. ``none``, identity skips and pools
have no parameters. ``R`` estimates ``grad_alpha E[C(Z)]`` in one of the three ways the
reference offers (``--method``):

* ``"policy_gradient"`` (default, as the reference's ``--method``; the score-function form of
  paper sec. 2.4, where the cost is not differentiable): the score
  surrogate ``R = sum_edges log p_alpha(Z_edge) * C_edge(Z_edge)`` with ``Z`` and ``C`` held
  constant, where ``p_alpha`` is the Concrete (Gumbel-softmax) density of the drawn sample
  (Maddison et al. 2017); each edge is credited with its own cost only (the paper's "locally
  decomposable" reward, the reference's per-edge product). The weights get no gradient from it;
* ``"reparametrization"``: ``R = C(Z)`` differentiated through the relaxed sample;
* ``"discrete"``: ``R = sum_edges softmax(alpha_edge) . c_edge``, the exact expectation of the
  cost of a discrete (one-hot) sample.

``resource_form="log"`` replaces each edge's cost ``c`` by ``log(max(c, 1))`` with ``c`` the raw
count (parameters or FLOPs), the reference's ``--log_penalty`` (its README's CIFAR-10 command:
``--resource_efficient --method reparametrization --log_penalty --resource_lambda 1.5e-3``).
Sign and scale: the penalty is added to the loss and minimised, so its gradient lowers the
logits of costly candidates; the reference averages the per-cell terms over the cells of a type
(``penalty / 6`` for its 6 normal cells), which for the log form differs from the per-key term
here only by a constant (each cell's edge cost scales with its width), so ``eta`` has the
reference's scale with ``resource_form="log"``.

Temperature: the reference anneals linearly per epoch from ``tau0 = 1`` to ``tau_min = 0.03``
(README: ``--temp 1 --temp_min 0.03 --temp_annealing``); its scheduler is stepped before the
first epoch, so epoch ``e`` uses ``tau = tau_min + (tau0 - tau_min) * (1 - (e + 1) / E)`` with
``E = 150`` whatever ``--epochs`` is (``Temp_Scheduler`` sets ``total_epochs = 150``): a shorter
reference run stops annealing early (10 epochs end at tau 0.935). Here ``E = tau_epochs``,
``epochs`` when that is None (the default), so a short search still reaches ``tau_min``;
``tau_epochs=150`` is the reference's schedule. ``tau_schedule="exponential"`` uses
``max(tau_min, tau0 * tau_decay ** e)`` instead.

The architecture is derived from ``softmax(alpha)`` with the space's rule (``nb201``: argmax per
edge, ``none`` included; ``darts``: top-2 incoming edges per node, ``none`` excluded; the
reference's ``genotype_edge_all`` keeps every non-``none`` edge instead).

Deviations from the paper / reference, stated explicitly:

* The policy-gradient surrogate uses the relaxed sample ``Z`` (as the reference, whose ``logp`` is
  the Concrete density of the relaxed weights) and holds it constant; the reference leaves ``Z``
  attached, which also adds a path-wise term. ``log Z`` is clamped at the smallest positive float
  (the reference clamps ``Z`` at 1e-4). No baseline is subtracted (the reference's default).
* The reference's resource-weight scheduler and its ``"all"`` mixture of size/FLOPs/MAC (the
  README's setting: the mean of the three log costs) are not implemented: one resource, params
  or FLOPs, is used. With ``resource_form="linear"`` ``eta`` absorbs the constant factor of
  summing (here) rather than averaging (reference) over cells.
* No drop-path in the supernet (the reference searches with ``drop_path_prob`` 0.3 on CIFAR-10)
  and no auxiliary head.
* ``alpha`` starts at ``init_scale * N(0, 1)``; the reference draws ``N(1, 0.01)``, the same
  softmax up to the constant offset.
* The reference's single-GPU script steps ``alpha`` with plain SGD (lr 3e-4); its distributed
  one with Adam ``betas=(0.5, 0.999)``, weight decay ``--arch_weight_decay`` 1e-3: Adam is used
  here.
* The learning rate is annealed per epoch from the first epoch on (the reference steps its
  scheduler before each epoch, so its first epoch already uses the second value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from nasforge.errors import ConfigError
from nasforge.nn.choice import Choice, Supernet
from nasforge.nn.ops import reference_ops
from nasforge.policies import GumbelPolicy
from nasforge.registry import register
from nasforge.train.bilevel import check_finite
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

RESOURCES = ("params", "flops")
ESTIMATORS = ("policy_gradient", "reparametrization", "discrete")
TAU_SCHEDULES = ("linear", "exponential")
RESOURCE_FORMS = ("linear", "log")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SnasConfig:
    """SNAS hyper-parameters (reference ``SNAS/train_search.py`` defaults; source on each line)."""

    epochs: int = 150  # search epochs (--epochs 150, README CIFAR-10 command)
    batch_size: int = 64  # training batch size (--batch_size 64)
    lr: float = 0.025  # initial SGD learning rate of the weights (--learning_rate 0.025)
    lr_min: float = 0.001  # cosine annealing floor (--learning_rate_min 0.001)
    momentum: float = 0.9  # SGD momentum (--momentum 0.9)
    weight_decay: float = 3e-4  # weight decay of the supernet weights (--weight_decay 3e-4)
    grad_clip: float = 5.0  # max gradient norm of the weights (--grad_clip 5)
    arch_lr: float = 3e-4  # Adam learning rate of alpha (--arch_learning_rate 3e-4)
    arch_betas: tuple[float, float] = (0.5, 0.999)  # Adam betas of alpha (distributed arch_optimizer)
    arch_weight_decay: float = 1e-3  # Adam weight decay of alpha (--arch_weight_decay 1e-3)
    arch_grad_clip: float | None = 10.0  # max gradient norm of alpha (clip_grad_norm_(arch_parameters(), 10.))
    init_scale: float = 1e-2  # alpha starts at init_scale * N(0, 1) (reference: N(1, --loc_std 0.01))
    tau0: float = 1.0  # initial Gumbel-softmax temperature (--temp 1)
    tau_min: float = 0.03  # temperature floor (--temp_min 0.03)
    tau_schedule: str = "linear"  # "linear" (reference Temp_Scheduler) or "exponential" (tau0 * tau_decay ** e)
    tau_decay: float = 0.97  # per-epoch factor of the exponential schedule (not from the paper or reference)
    resource_weight: float = 0.0  # eta of the resource penalty eta * E[C(Z)] (0: no constraint)
    resource: str = "params"  # candidate cost: "params" (parameter count) or "flops" (per image), in millions
    resource_estimator: str = "policy_gradient"  # policy_gradient (paper), reparametrization or discrete
    resource_form: str = "linear"  # "linear": C(Z) (paper sec. 2.4); "log": log C(Z) per edge (reference --log_penalty)
    tau_epochs: int | None = None  # E of the linear tau schedule (None: epochs; the reference fixes 150)

    def __post_init__(self) -> None:
        check_sgd(self)
        check_adam(self)
        clip = self.arch_grad_clip
        require(clip is None or (_number(clip) and clip > 0), f"arch_grad_clip must be > 0 or None, got {clip!r}")
        require(_number(self.init_scale) and self.init_scale >= 0, f"init_scale must be >= 0, got {self.init_scale!r}")
        require(
            _number(self.tau0) and _number(self.tau_min) and 0 < self.tau_min <= self.tau0,
            f"snas needs tau0 >= tau_min > 0 (finite), got tau0={self.tau0!r}, tau_min={self.tau_min!r}",
        )
        require(
            self.tau_schedule in TAU_SCHEDULES,
            f"tau_schedule must be one of {', '.join(TAU_SCHEDULES)}, got {self.tau_schedule!r}",
        )
        require(_number(self.tau_decay) and 0 < self.tau_decay <= 1, f"tau_decay must be in (0, 1], got {self.tau_decay!r}")
        require(
            _number(self.resource_weight) and self.resource_weight >= 0,
            f"resource_weight must be a finite number >= 0, got {self.resource_weight!r}",
        )
        require(self.resource in RESOURCES, f"resource must be one of {', '.join(RESOURCES)}, got {self.resource!r}")
        require(
            self.resource_estimator in ESTIMATORS,
            f"resource_estimator must be one of {', '.join(ESTIMATORS)}, got {self.resource_estimator!r}",
        )
        require(
            self.resource_form in RESOURCE_FORMS,
            f"resource_form must be one of {', '.join(RESOURCE_FORMS)}, got {self.resource_form!r}",
        )
        te = self.tau_epochs
        require(
            te is None or (isinstance(te, int) and not isinstance(te, bool) and te > 0),
            f"tau_epochs must be an int > 0 or None, got {te!r}",
        )


def snas_tau(epoch: int, cfg: SnasConfig) -> float:
    """The temperature of ``epoch`` (0-based): see the module docstring for both schedules."""
    if cfg.tau_schedule == "exponential":
        return max(cfg.tau_min, cfg.tau0 * cfg.tau_decay ** epoch)
    # reference Temp_Scheduler: stepped once before epoch 0, so epoch e reads step e + 1
    total = cfg.tau_epochs if cfg.tau_epochs is not None else cfg.epochs
    return max(cfg.tau_min, cfg.tau_min + (cfg.tau0 - cfg.tau_min) * (1 - (epoch + 1) / total))


def concrete_log_prob(logits: Tensor, sample: Tensor, tau: float) -> Tensor:
    """Log density of a Concrete / Gumbel-softmax sample (Maddison et al. 2017, Definition 1).

    ``log p(x) = log (n-1)! + (n-1) log tau + sum_k (l_k - (tau+1) log x_k) - n logsumexp_k (l_k - tau log x_k)``
    for ``x = softmax((l + G) / tau)``; differentiable in ``logits``.
    """
    n = logits.numel()
    log_x = torch.log(sample.clamp_min(torch.finfo(sample.dtype).tiny))
    return (
        math.lgamma(n) + (n - 1) * math.log(tau) + (logits - (tau + 1) * log_x).sum()
        - n * torch.logsumexp(logits - tau * log_x, dim=0)
    )


@torch.no_grad()
def candidate_costs(
    supernet: Supernet, input_shape: tuple[int, ...], resource: str, device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Per choice key, the cost of each candidate (in ``choices()`` order), summed over the cells sharing it.

    One probe forward of two zero images records which key each :class:`~nasforge.nn.choice.Choice`
    reads and the shape of its input (its candidates see ``1 / partial`` of the channels); then
    each candidate is measured alone: ``"params"`` = its parameter count, ``"flops"`` = FLOPs of
    one image (:class:`~torch.utils.flop_counter.FlopCounterMode`), both / 1e6. The supernet runs
    in eval mode for the probe (no BN statistics are updated) and gets its mode back.
    """
    if resource not in RESOURCES:
        raise ConfigError(f"resource must be one of {', '.join(RESOURCES)}, got {resource!r}")
    choices = supernet.choices()
    probe = {k: torch.ones(len(v), device=device) for k, v in choices.items()}
    key_of = {id(t): k for k, t in probe.items()}
    seen: dict[int, tuple[str, tuple[int, ...]]] = {}  # id(Choice) -> (key, input shape)
    modules: list[Choice] = [m for m in supernet.modules() if isinstance(m, Choice)]

    def record(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs["x"]
        selection = args[1] if len(args) > 1 else kwargs["selection"]
        seen[id(mod)] = (key_of[id(selection)], tuple(x.shape))

    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in modules]
    was_training = supernet.training
    supernet.eval()
    try:
        supernet(torch.zeros((2, *input_shape), device=device), probe)
    finally:
        for h in handles:
            h.remove()
        supernet.train(was_training)
    costs = {k: torch.zeros(len(v), dtype=torch.float64) for k, v in choices.items()}
    for m in modules:
        if id(m) not in seen:  # a Choice the forward never reaches costs nothing in this network
            continue
        key, (_, c, *spatial) = seen[id(m)]
        for i, cand in enumerate(m.candidates.values()):
            if resource == "params":
                value = float(sum(p.numel() for p in cand.parameters()))
            else:
                counter = FlopCounterMode(display=False)
                was = cand.training
                cand.eval()
                with counter, reference_ops():  # two images: batch-statistics BN needs more than one value per channel
                    cand(torch.zeros((2, c // m.partial, *spatial), device=device))
                cand.train(was)
                value = counter.get_total_flops() / 2
            costs[key][i] += value / 1e6
    return {k: v.to(device=device, dtype=torch.float32) for k, v in costs.items()}


def resource_terms(
    policy: GumbelPolicy, path: Mapping[str, Tensor], costs: Mapping[str, Tensor], estimator: str, form: str = "linear",
) -> tuple[Tensor, float]:
    """``(R, C(Z))``: the term whose alpha-gradient estimates ``grad E[C(Z)]``, and the sample's cost.

    With ``form="log"`` each edge's cost ``c`` (in millions, as :func:`candidate_costs` gives it) is
    replaced by ``log(max(c * 1e6, 1))``, the reference's ``--log_penalty`` (``log`` of the raw count,
    with costs below 1 -- the parameter-free candidates -- counted as 1, i.e. 0 after the log).
    """
    if form not in RESOURCE_FORMS:
        raise ConfigError(f"resource_form must be one of {', '.join(RESOURCE_FORMS)}, got {form!r}")

    def shaped(edge_cost: Tensor) -> Tensor:
        return edge_cost if form == "linear" else torch.log(torch.clamp_min(edge_cost * 1e6, 1.0))

    value = sum(float((path[k].detach() * c).sum()) for k, c in costs.items())
    terms = []
    for k, c in costs.items():
        z = path[k]
        if estimator == "policy_gradient":
            z = z.detach()
            terms.append(concrete_log_prob(policy.logits[k], z, policy.tau) * shaped((z * c).sum()))
        elif estimator == "reparametrization":
            terms.append(shaped((z * c).sum()))
        elif estimator == "discrete":
            terms.append(shaped((torch.softmax(policy.logits[k], dim=-1) * c).sum()))
        else:
            raise ConfigError(f"resource_estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    return torch.stack(terms).sum(), value


def search(ctx: OneShotContext, cfg: SnasConfig) -> OneShotResult:
    supernet: Supernet = ctx.supernet()
    policy = GumbelPolicy(supernet.choices(), tau=cfg.tau0, init_scale=cfg.init_scale).to(ctx.device)
    w_opt, scheduler = sgd_cosine(supernet, cfg)
    a_opt = torch.optim.Adam(
        policy.parameters(), lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay,
    )
    costs = candidate_costs(supernet, ctx.input_shape, cfg.resource, ctx.device) if cfg.resource_weight > 0 else None
    run = ctx.open_run("snas", cfg, supernet=supernet, policy=policy, w_opt=w_opt, a_opt=a_opt, scheduler=scheduler)
    weights = [p for group in w_opt.param_groups for p in group["params"]]
    alphas = list(policy.parameters())

    for epoch in run.epochs(cfg.epochs):
        policy.tau = snas_tau(epoch, cfg)
        lr = float(scheduler.get_last_lr()[0])
        for b, (x, y) in run.train_batches(cfg.batch_size):
            path = policy()  # one soft sample, differentiable in alpha (reparametrised)
            logits = supernet(x, path)
            ce = F.cross_entropy(logits, y)
            loss, metrics = ce, {}
            if costs is not None:
                penalty, cost = resource_terms(policy, path, costs, cfg.resource_estimator, cfg.resource_form)
                loss = ce + cfg.resource_weight * penalty
                metrics["resource"] = cost
            check_finite(loss, f"epoch {epoch} batch {b}")
            # single level: one backward gives both the weight and the architecture gradient
            grads = torch.autograd.grad(loss, [*weights, *alphas], allow_unused=True)
            for p, g in zip([*weights, *alphas], grads):
                p.grad = torch.zeros_like(p) if g is None else g.detach()
            nn.utils.clip_grad_norm_(weights, cfg.grad_clip)
            if cfg.arch_grad_clip is not None:
                nn.utils.clip_grad_norm_(alphas, cfg.arch_grad_clip)
            w_opt.step()
            a_opt.step()
            run.step_done(train_loss=float(ce.detach()), train_acc=accuracy(logits.detach(), y), **metrics)
        scheduler.step()
        record: dict[str, object] = {"tau": policy.tau, "lr": lr}
        if costs is not None:
            strengths = policy.strengths()
            record["expected_cost"] = sum(float((strengths[k] * c).sum()) for k, c in costs.items())
        run.epoch_done(**record, arch=derived(ctx, policy.strengths()))

    info: dict[str, object] = {}
    if costs is not None:
        arch = ctx.space.derive(policy.strengths())
        index = {k: list(v) for k, v in supernet.choices().items()}
        path_of_arch = supernet.path_for(arch)
        info = {
            "resource": cfg.resource,
            "candidate_costs": {k: c.tolist() for k, c in costs.items()},
            "derived_cost": sum(float(costs[k][index[k].index(op)]) for k, op in path_of_arch.items()),
        }
    return result(ctx, run, policy.strengths(), **info)


snas = register("method", "snas")(OneShotMethod(
    name="snas",
    paper="Xie, Zheng, Liu & Lin, 'SNAS: Stochastic Neural Architecture Search', ICLR 2019",
    config_cls=SnasConfig,
    search=search,
))
