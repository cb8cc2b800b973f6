"""DenseNAS: routing-block paths and ops searched with a latency-aware loss.

Paper: Fang, Sun, Zhang, Zhang, Liu & Wang, "Densely Connected Search Space for More Flexible
Neural Architecture Search", CVPR 2020 (arXiv:1906.09607). Reference code ``JaminFong/DenseNAS``
(``run_apis/search.py``, ``run_apis/optimizer.py``, ``models/dropped_model.py``,
``run_apis/derive_arch.py``, ``configs/imagenet_search_cfg_mbv2.yaml``).

The search, as implemented here (space: :mod:`nasforge.spaces.densenas`):

* **Parameters.** ``alpha``: one logit vector per head (per connection) and per stacked layer
  (op probabilities ``softmax(alpha)``); ``beta``: one logit vector per block over its outgoing
  connections (transition probabilities ``softmax(beta)``, normalised per block). Both start at
  ``1e-3 * N(0, 1)`` (reference ``_init_alphas`` / ``_init_betas``).
* **Weight steps** (train split, SGD + cosine): every head and layer runs *one* op drawn from
  ``softmax(alpha)`` (uniformly during the warm-up epochs, reference ``sample_policy``); all blocks
  run and the heads entering a block are summed with the (constant) transition probabilities.
* **Architecture steps** (validation split, Adam, after ``warmup_epochs``): every head and layer
  draws *two* ops from ``softmax(alpha)`` without replacement and mixes them with the softmax of
  their two logits; transitions weigh the heads with ``softmax(beta)``. The loss is the
  reference's ``CE + latency_factor * log(LAT) / log(log_base)`` with ``LAT`` the chained expected
  latency of the sampled op weights and the transition probabilities
  (:meth:`~nasforge.hardware.dense_lut.DenseLatencyTable.expected_latency`). After the step the two
  updated logits of every key are shifted so that their total probability is unchanged (the
  reference's ``rescale_arch_params``; :func:`~nasforge.policies.binary_gate.rescale_pair`).
* **Epochs.** Each epoch first passes over the weights' split, then (after the warm-up) over the
  architecture split; the weights' learning rate follows a cosine from ``lr`` to ``lr_min``.
* **Decoding.** The path of largest product of transition probabilities (Viterbi, reference
  ``derive_chs``), then the op of largest probability of every head and layer on it
  (:meth:`~nasforge.spaces.densenas.DenseNasSpace.derive`). With ``latency_budget`` (ms, not in the
  paper) the result is instead the architecture of largest *joint* probability (transitions x
  head op x layer ops on the path) whose table latency is within the budget: an exact dynamic
  program over the blocks keeping, per block, the Pareto front of (latency, log-probability) of
  the partial paths (:func:`budgeted_decode`); :class:`BudgetError` names the fastest latency the
  table can reach when no architecture meets the budget.

Deviations from the reference: (1) the reference runs the architecture pass *before* the
weights' pass of each epoch; here the weights' pass comes first (FBNet's order), so the first
architecture pass follows ``warmup_epochs + 1`` weight passes instead of ``warmup_epochs``; (2) the
cosine schedule steps per epoch (reference: per iteration); (3) ops are drawn with the policy's own
seeded generator (saved in checkpoints), not the global one, so a resumed search draws the same
ops; (4) the supernet's BatchNorm is affine (reference: ``affine=False`` while searching); (5)
when no table is given, one is measured on this machine into the run directory
(``densenas_lut.json``) before the search (the reference reads a pre-measured GPU latency list);
(6) the search data is the run's train / validation split (the paper searches on ImageNet with
its own split of the training set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError
from nasforge.hardware.dense_lut import DenseLatencyTable, build_dense_lut, load_dense_lut
from nasforge.hardware.latency import LatencySpec
from nasforge.nn.choice import Path
from nasforge.policies.base import ArchLogits
from nasforge.policies.binary_gate import BinaryGatePolicy, rescale_pair
from nasforge.registry import register
from nasforge.spaces.densenas import TAIL_OP, DenseNasSpace, DenseNasSupernet
from nasforge.train.bilevel import arch_step, weight_step
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotMethod,
    OneShotResult,
    accuracy,
    check_adam,
    check_sgd,
    require,
    sgd_cosine,
    strengths_lists,
)

LUT_NAME = "densenas_lut.json"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DensenasConfig:
    """DenseNAS hyper-parameters. Sources: the reference's ``configs/imagenet_search_cfg_mbv2.yaml``
    ("yaml") and ``run_apis/optimizer.py``; the paper's text was not checked for these numbers."""

    epochs: int = 150  # train_params.epochs (yaml; paper text not checked)
    warmup_epochs: int = 50  # search_params.arch_update_epoch: weights only before it (yaml)
    batch_size: int = 352  # data.batch_size (yaml)
    lr: float = 0.2  # optim.weight.init_lr (yaml; search_config.py default 0.1)
    lr_min: float = 1e-4  # optim.weight.min_lr, cosine decay (yaml)
    momentum: float = 0.9  # optim.weight.momentum (yaml)
    weight_decay: float = 4e-5  # optim.weight.weight_decay (yaml)
    grad_clip: float | None = None  # none in the reference's weight_step
    arch_lr: float = 3e-4  # optim.arch.alpha_lr: Adam learning rate of the op logits (yaml)
    beta_lr: float = 3e-4  # optim.arch.beta_lr: Adam learning rate of the transition logits (yaml)
    arch_betas: tuple[float, float] = (0.5, 0.999)  # Adam betas (run_apis/optimizer.py)
    arch_weight_decay: float = 1e-3  # optim.arch.weight_decay (yaml)
    latency_factor: float = 0.15  # optim.sub_obj.sub_loss_factor (yaml; search_config.py default 0.1)
    log_base: float = 15.0  # optim.sub_obj.log_base: the latency term is log(LAT) / log(log_base) (yaml)
    init_scale: float = 1e-3  # alpha, beta start at init_scale * N(0, 1) (search_space_base.py)
    latency_table: str | None = None  # a table of this space and input (None: measured into the run directory)
    lut_warmup: int = 2  # warm-up passes per op when the table is measured here (not from the paper)
    lut_repeats: int = 10  # timed passes per op when the table is measured here (not from the paper)
    latency_budget: float | None = None  # ms: decode the most probable architecture within it (not in the paper)

    def __post_init__(self) -> None:
        check_sgd(self)
        check_adam(self)
        w = self.warmup_epochs
        require(isinstance(w, int) and not isinstance(w, bool) and w >= 0, f"warmup_epochs must be an int >= 0, got {w!r}")
        require(_number(self.beta_lr) and self.beta_lr > 0, f"beta_lr must be > 0, got {self.beta_lr!r}")
        require(_number(self.latency_factor) and self.latency_factor >= 0,
                f"latency_factor must be a finite number >= 0, got {self.latency_factor!r}")
        require(_number(self.log_base) and self.log_base > 1, f"log_base must be a finite number > 1, got {self.log_base!r}")
        require(_number(self.init_scale) and self.init_scale >= 0, f"init_scale must be >= 0, got {self.init_scale!r}")
        for name in ("lut_warmup", "lut_repeats"):
            v = getattr(self, name)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= (0 if name == "lut_warmup" else 1),
                    f"{name} must be an int >= {0 if name == 'lut_warmup' else 1}, got {v!r}")
        b = self.latency_budget
        if b is not None and not (_number(b) and b > 0):
            raise BudgetError(f"latency_budget must be a number of milliseconds > 0 or None, got {b!r}")


# ---- decoding --------------------------------------------------------------------------------


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def _pareto(states: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """States not dominated in (lower latency, higher log-probability); latency ascending."""
    out: list[tuple[float, float, Any]] = []
    best = -math.inf
    for s in sorted(states, key=lambda s: (s[0], -s[1])):
        if s[1] > best:
            out.append(s)
            best = s[1]
    return out


def joint_log_prob(space: DenseNasSpace, arch: Arch, ops: dict[str, Tensor], transitions: dict[str, Tensor]) -> float:
    """log P(arch): its transitions, its heads' ops (on the connections it uses) and its layers' ops."""
    path = space.visited(arch)
    total = 0.0
    for a, t in zip(path, path[1:]):
        j = [c.target for c in space.outgoing(a)].index(t)
        total += _log(float(transitions[space.transition_key(a)][j]))
        if t != space.tail:
            key = space.connection(a, t).key
            total += _log(float(ops[key][space.head_ops.index(arch[f"b{t}_head"])]))
            for i in range(space.blocks[t].layers):
                name = f"b{t}_l{i}"
                total += _log(float(ops[name][space.stack_ops.index(arch[name])]))
    return total


def fastest_ms(space: DenseNasSpace, table: DenseLatencyTable) -> float:
    """The smallest table latency of any architecture of the space."""
    rest = _fastest_rest(space, table)
    return table.constant_ms + rest[0]


def _fastest_rest(space: DenseNasSpace, table: DenseLatencyTable) -> dict[int, float]:
    """Per block: the least latency from after it to the end (heads, layers of later blocks)."""
    rest = {space.tail: 0.0}
    for a in range(space.tail - 1, -1, -1):
        best = math.inf
        for c in space.outgoing(a):
            if c.target == space.tail:
                cost = table.ms(c.key, TAIL_OP)
            else:
                b = space.blocks[c.target]
                cost = min(table.option_latencies(c.key)) + sum(
                    min(table.option_latencies(f"{b.name}_l{j}")) for j in range(b.layers))
            best = min(best, cost + rest[c.target])
        rest[a] = best
    return rest


def budgeted_decode(space: DenseNasSpace, table: DenseLatencyTable, ops: dict[str, Tensor],
                    transitions: dict[str, Tensor], budget_ms: float) -> Arch:
    """The architecture of largest joint probability whose table latency is at most ``budget_ms``.

    Exact: blocks are visited in order; each keeps the Pareto front of (latency, log-probability)
    over the partial paths that end in it (a dominated partial path can never become the best,
    since what follows a block does not depend on how the path reached it), pruned by the least
    latency still to come. Ties in probability go to the faster architecture.

    Raises:
        BudgetError: no architecture meets the budget (the message names the fastest one's latency).
    """
    rest = _fastest_rest(space, table)
    fastest = table.constant_ms + rest[0]
    if fastest > budget_ms:
        raise BudgetError(f"no densenas architecture meets latency_budget {budget_ms:g} ms on this table; the "
                          f"fastest decodable architecture is predicted at {fastest:.4g} ms")
    logp = {k: [_log(float(v)) for v in p.detach().double().cpu().tolist()] for k, p in ops.items()}
    stacks: dict[int, list[tuple[float, float, Any]]] = {}
    for b in space.blocks[1:-1]:
        front: list[tuple[float, float, Any]] = [(0.0, 0.0, ())]
        for j in range(b.layers):
            key = f"{b.name}_l{j}"
            lats = table.option_latencies(key)
            front = _pareto([(f_lat + lats[i], f_lp + logp[key][i], (*f_ops, o))
                             for f_lat, f_lp, f_ops in front for i, o in enumerate(space.stack_ops)])
        stacks[b.index] = front
    limit = budget_ms - table.constant_ms
    states: dict[int, list[tuple[float, float, Any]]] = {0: [(0.0, 0.0, None)]}
    for t in range(1, space.tail + 1):
        cand: list[tuple[float, float, Any]] = []
        for c in space.incoming(t):
            if c.source not in states:
                continue
            j = [o.target for o in space.outgoing(c.source)].index(t)
            lb = _log(float(transitions[space.transition_key(c.source)][j]))
            heads = ([(TAIL_OP, table.ms(c.key, TAIL_OP), 0.0)] if t == space.tail else
                     [(o, table.ms(c.key, o), logp[c.key][i]) for i, o in enumerate(space.head_ops)])
            tails = stacks.get(t, [(0.0, 0.0, ())])
            for s_lat, s_lp, link in states[c.source]:
                for op, h_lat, h_lp in heads:
                    for l_lat, l_lp, l_ops in tails:
                        lat = s_lat + h_lat + l_lat
                        if lat + rest[t] <= limit:
                            cand.append((lat, s_lp + lb + h_lp + l_lp, (link, t, op, l_ops)))
        if cand:
            states[t] = _pareto(cand)
    finals = states.get(space.tail, [])
    if not finals:  # pragma: no cover - fastest <= budget guarantees one
        raise BudgetError(f"no densenas architecture meets latency_budget {budget_ms:g} ms")
    best = max(finals, key=lambda s: (s[1], -s[0]))
    chosen: dict[str, str] = {}
    blocks: list[int] = []
    link = best[2]
    while link is not None:
        link, t, op, l_ops = link
        if t != space.tail:
            blocks.append(t)
            chosen[f"b{t}_head"] = op
            chosen.update({f"b{t}_l{j}": o for j, o in enumerate(l_ops)})
    return space.make_path(sorted(blocks), chosen)


# ---- the search ----------------------------------------------------------------------------


def latency_table(ctx: OneShotContext, cfg: DensenasConfig) -> DenseLatencyTable:
    """The configured table (checked against the space and input), else one measured now."""
    space = ctx.space
    if cfg.latency_table is not None:
        return load_dense_lut(cfg.latency_table, space, ctx.input_shape, num_classes=ctx.num_classes)
    out = None if ctx.run_dir is None else ctx.run_dir / LUT_NAME
    ctx.log("densenas: no latency_table given; measuring this space's ops on this machine"
            + ("" if out is None else f" into {out} (a complete file there is reused)"))
    table = build_dense_lut(space, ctx.input_shape, LatencySpec(warmup=cfg.lut_warmup, repeats=cfg.lut_repeats),
                            out, num_classes=ctx.num_classes)
    if not isinstance(table, DenseLatencyTable):  # pragma: no cover - no measurement budget is given
        raise ConfigError("the latency table could not be completed")
    return table


class DenseArchParams(torch.nn.Module):
    """alpha (op logits, in a :class:`BinaryGatePolicy` whose seeded generator draws the ops) and
    beta (transition logits per block)."""

    def __init__(self, supernet: DenseNasSupernet, init_scale: float, seed: int) -> None:
        super().__init__()
        self.ops = BinaryGatePolicy(supernet.choices(), init_scale=init_scale, seed=seed)
        self.betas = ArchLogits(supernet.transitions(), init_scale=init_scale)
        self.transition_keys = list(supernet.transitions())

    def op_probs(self) -> dict[str, Tensor]:
        return {k: torch.softmax(self.ops.logits[k].detach(), -1) for k in self.ops.choices}

    def transition_probs(self, *, grad: bool = False) -> dict[str, Tensor]:
        return {k: torch.softmax(self.betas[k] if grad else self.betas[k].detach(), -1) for k in self.transition_keys}

    def _draw(self, p: Tensor, n: int) -> list[int]:
        drawn = torch.multinomial(p.detach().cpu().double(), n, replacement=False, generator=self.ops.generator)
        return sorted(int(i) for i in drawn.tolist())

    def weight_path(self, *, uniform: bool) -> dict[str, Any]:
        """One op per key (from ``softmax(alpha)``, or uniform) and the constant transition probabilities."""
        path: dict[str, Any] = {}
        for k, opts in self.ops.choices.items():
            p = torch.ones(len(opts)) if uniform else torch.softmax(self.ops.logits[k].detach(), -1)
            path[k] = opts[self._draw(p, 1)[0]]
        path.update(self.transition_probs())
        return path

    def arch_sample(self) -> dict[str, list[int]]:
        """Two ops per key drawn from ``softmax(alpha)`` without replacement (all when fewer)."""
        return {k: (self._draw(torch.softmax(self.ops.logits[k].detach(), -1), 2) if len(opts) > 1 else [0])
                for k, opts in self.ops.choices.items()}

    def arch_weights(self, sample: dict[str, list[int]]) -> dict[str, Tensor]:
        """Per key: zero except the sampled ops, which get the softmax of their logits (differentiable)."""
        out = {}
        for k, idx in sample.items():
            logits = self.ops.logits[k]
            w = torch.zeros_like(logits)
            out[k] = w.index_put((torch.tensor(idx, device=logits.device),), torch.softmax(logits[idx], -1))
        return out

    def rescale(self, sample: dict[str, list[int]], old: dict[str, list[float]]) -> None:
        for k, idx in sample.items():
            if len(idx) > 1:
                rescale_pair(self.ops.logits[k], idx, old[k])


def search(ctx: OneShotContext, cfg: DensenasConfig) -> OneShotResult:
    space = ctx.space
    if not isinstance(space, DenseNasSpace):
        raise ConfigError(f"densenas searches the densenas space, not {space.name!r}")
    table = latency_table(ctx, cfg)
    if cfg.latency_budget is not None and fastest_ms(space, table) > cfg.latency_budget:
        raise BudgetError(f"no densenas architecture meets latency_budget {cfg.latency_budget:g} ms on this table; "
                          f"the fastest decodable architecture is predicted at {fastest_ms(space, table):.4g} ms")
    supernet = ctx.supernet()
    if not isinstance(supernet, DenseNasSupernet):  # pragma: no cover - the space builds it
        raise ConfigError("densenas needs the densenas supernet")
    arch = DenseArchParams(supernet, cfg.init_scale, ctx.seed).to(ctx.device)
    w_opt, scheduler = sgd_cosine(supernet, cfg)
    a_opt = torch.optim.Adam([{"params": list(arch.ops.parameters()), "lr": cfg.arch_lr},
                              {"params": list(arch.betas.parameters()), "lr": cfg.beta_lr}],
                             betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay)
    run = ctx.open_run("densenas", cfg, supernet=supernet, arch=arch, w_opt=w_opt, a_opt=a_opt, scheduler=scheduler)
    step: dict[str, Any] = {}  # the architecture step in progress: its op weights and transitions (read by the loss)
    log_base = math.log(cfg.log_base)

    def draw() -> Path:
        step["sample"] = sample = arch.arch_sample()
        step["old"] = {k: arch.ops.logits[k].detach()[idx].tolist() for k, idx in sample.items()}
        step["ops"] = ops = arch.arch_weights(sample)
        step["transitions"] = trans = arch.transition_probs(grad=True)
        return {**ops, **trans}

    def latency_loss() -> Tensor:
        step["latency"] = lat = table.expected_latency(step["ops"], step["transitions"])
        return cfg.latency_factor * torch.log(lat) / log_base

    for epoch in run.epochs(cfg.epochs):
        lr = float(scheduler.get_last_lr()[0])
        n_weight = run.steps_per_epoch(cfg.batch_size)
        for b, batch in run.train_batches(cfg.batch_size):
            path = arch.weight_path(uniform=epoch < cfg.warmup_epochs)
            t_loss, t_logits = weight_step(supernet, path, batch, w_opt, loss_fn=F.cross_entropy,
                                           grad_clip=cfg.grad_clip, where=f"epoch {epoch} batch {b} weight")
            run.step_done(train_loss=t_loss, train_acc=accuracy(t_logits, batch[1]))
        if epoch >= cfg.warmup_epochs:
            for b, batch in run.valid_batches(cfg.batch_size, first=n_weight):
                v_loss, v_logits = arch_step(supernet, draw, batch, a_opt, loss_fn=F.cross_entropy,
                                             extra_loss_fn=latency_loss, where=f"epoch {epoch} batch {b} arch")
                arch.rescale(step["sample"], step["old"])
                run.step_done(valid_loss=v_loss, valid_acc=accuracy(v_logits, batch[1]),
                              valid_latency=float(step["latency"].detach()))
        scheduler.step()
        ops, trans = arch.op_probs(), arch.transition_probs()
        best = space.derive({**ops, **trans})
        run.epoch_done(lr=lr, expected_latency=float(table.expected_latency(ops, trans)),
                       derived_latency=table.predict(best), arch=space.format(best))

    ops, trans = arch.op_probs(), arch.transition_probs()
    viterbi = space.derive({**ops, **trans})
    final = viterbi if cfg.latency_budget is None else budgeted_decode(space, table, ops, trans, cfg.latency_budget)
    info = {
        "viterbi": {"arch": space.format(viterbi), "predicted_latency_ms": table.predict(viterbi)},
        "predicted_latency_ms": table.predict(final),
        "expected_latency_ms": float(table.expected_latency(ops, trans)),
        "fastest_latency_ms": fastest_ms(space, table),
        "latency_budget_ms": cfg.latency_budget,
        "latency_table": cfg.latency_table or (None if ctx.run_dir is None else str(ctx.run_dir / LUT_NAME)),
        "result_rule": ("Viterbi path of the transition probabilities, argmax ops" if cfg.latency_budget is None
                        else "most probable architecture (joint) within the latency budget"),
    }
    return OneShotResult(arch=final, strengths=strengths_lists({**ops, **trans}), history=list(run.history),
                         seconds=run.seconds(), info=info)


densenas = register("method", "densenas")(OneShotMethod(
    name="densenas",
    paper="Fang et al., 'Densely Connected Search Space for More Flexible Neural Architecture Search', CVPR 2020",
    config_cls=DensenasConfig,
    search=search,
    spaces=("densenas",),
))
