"""Evaluate architectures inside a trained supernet, and check their cost limits before that.

Two-stage weight-sharing methods (SPOS, FairNAS, later ChamNet) train a supernet once and then
score many candidate architectures with the weights they inherit from it:

* :func:`recalibrate_bn` — BatchNorm recalibration (Guo et al., "Single Path One-Shot Neural
  Architecture Search with Uniform Sampling", ECCV 2020, Section 3.3; also FairNAS): the running
  statistics the supernet accumulated mix every path it trained, so before a candidate is scored
  every BN layer's running mean and variance are reset and recomputed on training batches run
  along the candidate's path (train mode, no gradients). They are recomputed as the plain average
  over the batches (``momentum=None``, each batch weighted equally: the mean of the batch means
  and of the unbiased batch variances), so the result does not depend on the order of candidates
  or on what the supernet held before;
* :class:`SupernetEvaluator` — ``evaluator(arch) -> Result``: recalibrate, then the top-1
  accuracy (%) of the candidate's single path in eval mode on fixed validation batches
  (``metrics["val_acc"]``);
* :class:`StandaloneCost` / :func:`cost_limits` / :func:`broken_limits` — the cost-model metrics
  of a candidate's *stand-alone* network (``space.build(arch)``): ``params``, ``flops``, ``macs``
  from :func:`nasforge.hardware.cost.measure`, and ``latency_ms``, predicted from a latency
  lookup table (:mod:`nasforge.hardware.lut`) when one is given, else measured with
  :func:`nasforge.hardware.latency.measure_latency_ms`. Limits are
  :class:`~nasforge.hardware.objectives.HardLimit` objects and are checked before a candidate is
  evaluated, as the SPOS reference checks its FLOPs limit before it evaluates.

Supernets built with ``track_running_stats=False`` (the NB201 one-shot protocol) normalise with
batch statistics in both modes: recalibration then changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError
from nasforge.hardware.objectives import COST_METRICS, HardLimit, parse_constraint
from nasforge.searchers.base import Result
from nasforge.spaces.base import SearchSpace
from nasforge.train.oneshot import path_accuracy

Batch = tuple[Tensor, Tensor]


def tracked_batchnorms(net: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``net`` that keep running statistics."""
    return [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(supernet: nn.Module, path: Mapping[str, Any], batches: Iterable[Batch]) -> int:
    """Recompute every BN layer's running statistics along ``path`` on ``batches``; returns the batch count.

    Every tracked BN layer is reset first (also those off the path, which then hold the reset
    values): the statistics of the path's layers are the equal-weight average over ``batches``
    of their batch statistics. The supernet's mode and the layers' momentum are restored.
    """
    bns = tracked_batchnorms(supernet)
    momenta = [m.momentum for m in bns]
    was_training = supernet.training
    n = 0
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: the plain mean over the batches
        supernet.train()
        for x, _ in batches:
            supernet(x, path)
            n += 1
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        supernet.train(was_training)
    return n


class SupernetEvaluator:
    """``evaluator(arch) -> Result``: inherited supernet weights, BN recalibrated, validation accuracy.

    Args:
        supernet: a trained supernet (``forward(x, path)``, ``path_for(arch)``).
        calibration: training batches for :func:`recalibrate_bn` (empty: no recalibration).
        batches: the fixed validation batches every candidate is scored on.

    The supernet is left in eval mode with the last candidate's recalibrated statistics.
    """

    def __init__(self, supernet: Any, *, calibration: Sequence[Batch], batches: Sequence[Batch]) -> None:
        if not batches:
            raise ConfigError("SupernetEvaluator needs at least one validation batch")
        self.supernet, self.calibration, self.batches = supernet, list(calibration), list(batches)
        self.evaluated = 0  # candidates scored so far

    @property
    def calibration_images(self) -> int:
        return sum(int(y.shape[0]) for _, y in self.calibration)

    def accuracy(self, arch: Arch) -> float:
        """Top-1 accuracy (%) of ``arch``'s path after BN recalibration."""
        path = self.supernet.path_for(arch)
        if self.calibration:
            recalibrate_bn(self.supernet, path, self.calibration)
        self.supernet.eval()
        self.evaluated += 1
        return path_accuracy(self.supernet, path, self.batches)

    def __call__(self, arch: Arch) -> Result:
        t = time.perf_counter()
        acc = self.accuracy(arch)
        return Result(metrics={"val_acc": acc}, cost=time.perf_counter() - t)


# ---- cost limits -------------------------------------------------------------------------------


def cost_limits(texts: Iterable[str | HardLimit]) -> tuple[HardLimit, ...]:
    """Parse limits (``"flops<=330M"`` or :class:`HardLimit`); each must be on a cost-model metric."""
    out = []
    for t in texts:
        limit = t if isinstance(t, HardLimit) else parse_constraint(str(t))
        if limit.metric not in COST_METRICS:
            raise ConfigError(
                f"limit {limit} is on {limit.metric!r}; limits checked before evaluation must be on one of "
                f"{', '.join(COST_METRICS)}"
            )
        out.append(limit)
    return tuple(out)


def broken_limits(limits: Sequence[HardLimit], metrics: Mapping[str, float]) -> list[HardLimit]:
    """The ``limits`` that ``metrics`` break."""
    return [c for c in limits if not c.ok_for(metrics)]


def no_feasible_error(who: str, limits: Sequence[HardLimit], tried: Sequence[Mapping[str, float]]) -> BudgetError:
    """The error of a search in which none of the ``tried`` cost records met ``limits``: names the closest values."""
    closest = []
    for c in limits:
        values = [float(m[c.metric]) for m in tried if c.metric in m]
        if values:
            best = min(values) if c.upper else max(values)
            closest.append(f"{'smallest' if c.upper else 'largest'} {c.metric} {best:g}")
    return BudgetError(
        f"{who}: none of {len(tried)} sampled architectures meets the limits {', '.join(map(str, limits))} "
        f"(closest seen: {'; '.join(closest) or 'none'}); relax a limit or shrink the space"
    )


class StandaloneCost:
    """Cost-model metrics of architectures' stand-alone networks, cached per architecture.

    Args:
        space: the search space (``build`` gives the stand-alone network).
        input_shape: ``(C, H, W)`` of one input.
        num_classes: classifier width of the built network.
        latency_table: path of a latency lookup table of this space and input (``nasforge
            hardware build-lut``); ``latency_ms`` is then its prediction. ``None``: measured
            (median of ``latency_repeats`` PyTorch forward passes of batch 1).
        latency_repeats: timed passes per measured latency.
    """

    def __init__(
        self, space: SearchSpace, *, input_shape: tuple[int, ...], num_classes: int,
        latency_table: str | None = None, latency_repeats: int = 10,
    ) -> None:
        self.space, self.input_shape, self.num_classes = space, tuple(input_shape), num_classes
        self.latency_table, self.latency_repeats = latency_table, latency_repeats
        self._table: Any = None
        self._cache: dict[Arch, dict[str, float]] = {}

    def _latency(self, arch: Arch, net: nn.Module) -> float:
        from nasforge.hardware.latency import measure_latency_ms

        if self.latency_table is None:
            return measure_latency_ms(net, self.input_shape, repeats=self.latency_repeats)
        if self._table is None:
            from nasforge.hardware.lut import load_lut

            self._table = load_lut(self.latency_table, space=self.space, input_shape=self.input_shape,
                                   num_classes=self.num_classes)
        return float(self._table.predict(arch))

    def __call__(self, arch: Arch, metrics: Iterable[str] = ("params", "flops", "macs")) -> dict[str, float]:
        """``{metric: value}`` for the asked cost metrics (``params``, ``flops`` and ``macs`` always)."""
        wanted = set(metrics)
        unknown = sorted(wanted - set(COST_METRICS))
        if unknown:
            raise ConfigError(f"unknown cost metric(s) {unknown}; valid: {', '.join(COST_METRICS)}")
        got = self._cache.setdefault(arch, {})
        if "params" not in got or ("latency_ms" in wanted and "latency_ms" not in got):
            from nasforge.hardware.cost import measure

            net = self.space.build(arch, num_classes=self.num_classes, in_channels=self.input_shape[0])
            if "params" not in got:
                got.update(measure(net, self.input_shape).as_dict())
            if "latency_ms" in wanted and "latency_ms" not in got:
                got["latency_ms"] = self._latency(arch, net)
        return {k: got[k] for k in sorted(got) if k in wanted | {"params", "flops", "macs"}}
