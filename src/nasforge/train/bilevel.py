"""Steps of weight-sharing search: weight steps, first- and second-order architecture steps.

The bilevel problem of DARTS (Liu et al., ICLR 2019, eq. 3-4)::

    min_alpha  L_val(w*(alpha), alpha)   s.t.  w*(alpha) = argmin_w L_train(w, alpha)

is solved by alternating an architecture step on a validation batch and a weight step on a
training batch. The first-order approximation uses ``grad_alpha L_val(w, alpha)``; the
second-order one (eq. 7-8) differentiates through one virtual SGD step
``w' = w - xi * grad_w L_train(w, alpha)``::

    grad_alpha L_val(w', alpha) - xi * (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps)

with ``w+- = w +- eps * grad_w' L_val(w', alpha)`` and ``eps = 0.01 / ||grad_w' L_val(w', alpha)||``.
As the reference (``quark0/darts`` ``cnn/architect.py``), the virtual step uses the weight
optimizer's momentum buffer and weight decay: ``w' = w - xi * (mu * buf + g + wd * w)``.
:func:`unrolled_arch_grads_exact` computes the same quantity with autograd double backward
(for tests on tiny networks).

Gradients are taken with :func:`torch.autograd.grad` on exactly the tensors a step updates, so
an architecture step does not compute weight gradients and vice versa.

Data parallelism (:mod:`nasforge.train.distributed`): while a sharding is active, each step
runs the forward and backward of this process's shards of the global batch only, sums the
gradients (and the loss) over the ranks in one all-reduce before clipping and the optimizer
step, and returns the global loss and the gathered logits. Without one, nothing changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nasforge.errors import NasforgeError
from nasforge.nn.choice import Path
from nasforge.train import distributed

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


class SearchDivergedError(NasforgeError, RuntimeError):
    """A one-shot search loss became NaN or infinite; the last good checkpoint is kept."""


def check_finite(loss: Tensor, where: str) -> float:
    """``float(loss)`` or :class:`SearchDivergedError` naming ``where`` (epoch, batch, step kind)."""
    return _check_value(float(loss.detach()), where)


def _check_value(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise SearchDivergedError(f"search diverged: {where} loss is {value}")
    return value


def _sum(parts: Sequence[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.stack(list(parts)).sum()


def _summed_over_ranks(grads: Sequence[Tensor], like: Sequence[Tensor], values: Sequence[float] = ()) -> tuple[list[Tensor], list[float]]:
    """:func:`distributed.sum_across_ranks` of gradients that exist on every rank (zeros, not None)."""
    out, vals = distributed.sum_across_ranks(grads, like, values)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(out, like)], vals


def _grads(loss: Tensor, tensors: Sequence[Tensor], *, create_graph: bool = False) -> list[Tensor]:
    gs = torch.autograd.grad(loss, list(tensors), allow_unused=True, create_graph=create_graph)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, tensors)]


def _assign(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    for p, g in zip(params, grads):
        # None where the loss does not depend on p (an op off the path): the optimizer then skips
        # p entirely (no weight decay, no momentum), as when the op never ran in the references
        p.grad = None if g is None else g.detach()


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def weight_step(
    supernet: nn.Module, path: Path, batch: Batch, optimizer: torch.optim.Optimizer, *,
    loss_fn: LossFn, grad_clip: float | None, where: str, extra_loss: Tensor | None = None,
) -> tuple[float, Tensor]:
    """One SGD step of the supernet weights on ``batch`` along ``path``; returns (loss, logits).

    The one-piece case of :func:`weight_step_pieces`.
    """
    return weight_step_pieces(
        supernet, [(path, batch)], optimizer, loss_fn=loss_fn, grad_clip=grad_clip, where=where, extra_loss=extra_loss,
    )


def weight_step_pieces(
    supernet: nn.Module, pieces: Sequence[tuple[Path, Batch]], optimizer: torch.optim.Optimizer, *,
    loss_fn: LossFn, grad_clip: float | None, where: str, extra_loss: Tensor | None = None,
) -> tuple[float, Tensor]:
    """One step on the mean loss over ``pieces`` (``(path, batch)`` pairs, e.g. ghost batches).

    Each piece runs as its own forward pass with its own path; the loss is the example-weighted
    mean over the pieces (``loss_fn`` must average over its batch), plus ``extra_loss`` (e.g. a
    resource penalty). Only the optimizer's parameters get gradients; those no piece reached get
    ``grad = None`` and are not touched by the optimizer (no decay, no momentum), as when an op
    never ran in the references. ``grad_clip`` bounds the norm of the gradients that exist.
    Returns ``(loss, logits)`` with the logits of all pieces concatenated in order.
    """
    if not pieces:
        raise ValueError("weight_step_pieces needs at least one (path, batch) piece")
    total = sum(int(batch[1].shape[0]) for _, batch in pieces)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:  # the last step's gradients are not needed any more: free them before the forward
        p.grad = None
    sharding = distributed.active()
    if sharding is not None:
        return _weight_step_sharded(
            supernet, pieces, optimizer, params, total, sharding, loss_fn=loss_fn, grad_clip=grad_clip, where=where,
            extra_loss=extra_loss,
        )
    parts, logits = [], []
    for path, (x, y) in pieces:
        out = supernet(x, path)
        parts.append(loss_fn(out, y) * (y.shape[0] / total))  # example-weighted: a short piece counts less
        logits.append(out.detach())
    loss = parts[0] if len(parts) == 1 else torch.stack(parts).sum()
    if extra_loss is not None:
        loss = loss + extra_loss
    value = check_finite(loss, where)
    # backward(inputs=...) accumulates each gradient as soon as it is ready and touches nothing
    # else (e.g. architecture logits); parameters the loss does not reach keep grad None
    loss.backward(inputs=params)
    if grad_clip is not None:
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
    optimizer.step()
    return value, logits[0] if len(logits) == 1 else torch.cat(logits)


def _weight_step_sharded(
    supernet: nn.Module, pieces: Sequence[tuple[Path, Batch]], optimizer: torch.optim.Optimizer,
    params: list[Tensor], total: int, sharding: distributed.Sharding, *, loss_fn: LossFn, grad_clip: float | None,
    where: str, extra_loss: Tensor | None,
) -> tuple[float, Tensor]:
    """:func:`weight_step_pieces` on this process's shards of every piece, gradients summed over the ranks."""
    parts, logits = [], []
    for path, batch in pieces:
        local = []
        for (x, y), _ in distributed.local_shards(batch, sharding):
            out = supernet(x, path)
            parts.append(loss_fn(out, y) * (y.shape[0] / total))
            local.append(out.detach())
        logits.append(local)
    loss = _sum(parts)
    if extra_loss is not None:  # every rank adds its share, so the sum over ranks adds it once
        loss = loss + extra_loss * (len(sharding.local) / sharding.world_size)
    loss.backward(inputs=params)
    grads, (value,) = distributed.sum_across_ranks([p.grad for p in params], params, [float(loss.detach())])
    _check_value(value, where)
    _assign(params, grads)
    if grad_clip is not None:
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
    optimizer.step()
    return value, torch.cat([distributed.gather_rows(local) for local in logits])


def arch_step(
    supernet: nn.Module, path_fn: Callable[[], Path], batch: Batch, optimizer: torch.optim.Optimizer, *,
    loss_fn: LossFn, where: str, extra_loss_fn: Callable[[], Tensor] | None = None,
) -> tuple[float, Tensor]:
    """First-order architecture step: ``grad_alpha L_val(w, alpha)`` on ``batch``; (loss, logits)."""
    sharding = distributed.active()
    if sharding is not None:
        return _arch_step_sharded(supernet, path_fn, batch, optimizer, sharding, loss_fn=loss_fn, where=where,
                                  extra_loss_fn=extra_loss_fn)
    x, y = batch
    logits = supernet(x, path_fn())
    loss = loss_fn(logits, y)
    if extra_loss_fn is not None:
        loss = loss + extra_loss_fn()
    value = check_finite(loss, where)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # zeros, not None, for logits the loss does not reach (e.g. an edge whose sample is ``none``):
    # the references compute such edges, so Adam's moments and decay still see a zero gradient
    _assign(params, _grads(loss, params))
    optimizer.step()
    return value, logits.detach()


def _arch_step_sharded(
    supernet: nn.Module, path_fn: Callable[[], Path], batch: Batch, optimizer: torch.optim.Optimizer,
    sharding: distributed.Sharding, *, loss_fn: LossFn, where: str, extra_loss_fn: Callable[[], Tensor] | None,
) -> tuple[float, Tensor]:
    """:func:`arch_step` on this process's shards (one path drawn for all), gradients summed over the ranks."""
    path = path_fn()
    parts, local = [], []
    for (x, y), weight in distributed.local_shards(batch, sharding):
        out = supernet(x, path)
        parts.append(loss_fn(out, y) * weight)
        local.append(out.detach())
    loss = _sum(parts)
    if extra_loss_fn is not None:
        loss = loss + extra_loss_fn() * (len(sharding.local) / sharding.world_size)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grads, (value,) = _summed_over_ranks(_grads(loss, params), params, [float(loss.detach())])
    _check_value(value, where)
    _assign(params, grads)
    optimizer.step()
    return value, distributed.gather_rows(local)


def _virtual_update(weights: Sequence[Tensor], grads: Sequence[Tensor], optimizer: torch.optim.Optimizer, xi: float) -> list[Tensor]:
    """The reference's ``w - xi * (mu * buf + g + wd * w)`` (momentum buffer and decay of ``optimizer``)."""
    group = optimizer.param_groups[0]
    mu, wd = float(group.get("momentum", 0.0)), float(group.get("weight_decay", 0.0))
    out = []
    for w, g in zip(weights, grads):
        buf = optimizer.state.get(w, {}).get("momentum_buffer")
        step = g + wd * w
        if buf is not None and mu:
            step = step + mu * buf
        out.append(w - xi * step)
    return out


def unrolled_arch_grads(
    supernet: nn.Module, path_fn: Callable[[], Path], arch_params: Sequence[Tensor], train_batch: Batch,
    valid_batch: Batch, w_optimizer: torch.optim.Optimizer, *, xi: float, loss_fn: LossFn, where: str, r: float = 1e-2,
) -> tuple[float, list[Tensor]]:
    """DARTS second-order architecture gradient (finite-difference Hessian-vector product).

    Returns ``(L_val(w', alpha), grads)`` with one gradient per ``arch_params`` entry. The
    supernet's weights are the same tensors (values restored exactly) when it returns.
    """
    weights = [p for group in w_optimizer.param_groups for p in group["params"]]
    backup = [w.detach().clone() for w in weights]
    sharding = distributed.active()

    def loss_on(batch: Batch, path: Path) -> Tensor:
        if sharding is None:
            return loss_fn(supernet(batch[0], path), batch[1])
        # this process's shards; every gradient below is then summed over the ranks
        return _sum([loss_fn(supernet(x, path), y) * w for (x, y), w in distributed.local_shards(batch, sharding)])

    try:
        g_train, _ = _summed_over_ranks(_grads(loss_on(train_batch, path_fn()), weights), weights)
        with torch.no_grad():
            # the parameters themselves (not the backups): momentum buffers are keyed by them
            for w, new in zip(weights, _virtual_update(weights, g_train, w_optimizer, xi)):
                w.copy_(new)
        loss_val = loss_on(valid_batch, path_fn())
        if sharding is None:
            value = check_finite(loss_val, where)
            g_all = _grads(loss_val, [*arch_params, *weights])
        else:
            both = [*arch_params, *weights]
            g_all, (summed_val,) = _summed_over_ranks(_grads(loss_val, both), both, [float(loss_val.detach())])
            value = _check_value(summed_val, where)
        d_alpha, d_w = g_all[: len(arch_params)], g_all[len(arch_params):]
        norm = math.sqrt(sum(float((g * g).sum()) for g in d_w))
        eps = r / norm if norm > 0 else 0.0

        def alpha_grad_at(sign: float) -> list[Tensor]:
            with torch.no_grad():
                for w, b, d in zip(weights, backup, d_w):
                    w.copy_(b + sign * eps * d)
            return _grads(loss_on(train_batch, path_fn()), arch_params)

        if eps > 0:
            g_pos, g_neg = alpha_grad_at(1.0), alpha_grad_at(-1.0)
            if sharding is not None:
                k = len(arch_params)
                g_both, _ = _summed_over_ranks([*g_pos, *g_neg], [*arch_params, *arch_params])
                g_pos, g_neg = g_both[:k], g_both[k:]
            hvp = [(p - n) / (2 * eps) for p, n in zip(g_pos, g_neg)]
        else:
            hvp = [torch.zeros_like(a) for a in arch_params]
    finally:
        with torch.no_grad():
            for w, b in zip(weights, backup):
                w.copy_(b)
    return value, [(d - xi * h).detach() for d, h in zip(d_alpha, hvp)]


def unrolled_arch_grads_exact(
    supernet: nn.Module, path_fn: Callable[[], Path], arch_params: Sequence[Tensor], train_batch: Batch,
    valid_batch: Batch, w_optimizer: torch.optim.Optimizer, *, xi: float, loss_fn: LossFn,
) -> list[Tensor]:
    """``d/d alpha L_val(w'(alpha), alpha)`` by autograd double backward (exact; for tests)."""
    names = [n for n, _ in supernet.named_parameters()]
    params = dict(supernet.named_parameters())
    weights = [params[n] for n in names]
    x_t, y_t = train_batch
    x_v, y_v = valid_batch
    g_train = _grads(loss_fn(supernet(x_t, path_fn()), y_t), weights, create_graph=True)
    unrolled = _virtual_update(weights, g_train, w_optimizer, xi)
    state = {n: w for n, w in zip(names, unrolled)}
    logits = torch.func.functional_call(supernet, state, (x_v, path_fn()), strict=False)
    return [g.detach() for g in _grads(loss_fn(logits, y_v), list(arch_params))]
