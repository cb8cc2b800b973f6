"""Single-Path NAS: superkernel thresholds and weights trained together under a runtime loss.

Stamoulis, Ding, Wang, Lymberopoulos, Priyantha, Liu & Marculescu, "Single-Path NAS: Designing
Hardware-Efficient ConvNets in less than 4 Hours", ECML-PKDD 2019 (arXiv:1904.02877). Reference
code ``dstamoulis/single-path-nas`` (TensorFlow 1.12, TPU): ``nas-search/superkernel.py``
(superkernel and per-layer runtime), ``search_main.py`` (loss, optimizer, schedule),
``nas_utils.py`` (learning rate, indicator dropout, lambda schedule). Values marked "reference"
below come from that code (the paper text was not available here to check them against).

Algorithm, as implemented:

* **Single-path supernet** (:class:`~nasforge.spaces.mobilenet_superkernel.SuperkernelMobileNet`):
  every searchable layer of the ``mobilenet`` space is one :class:`~nasforge.nn.superkernel.SuperkernelMBConv`
  at the largest kernel (5x5) and expansion (6). Its decisions are indicators on norms of weight
  subsets against trainable thresholds: the 5x5 outer ring is used iff ``||w_{5x5\\3x3}|| >= t_k5``,
  the first half of the expanded channels (expansion 3) iff ``||w_e3|| >= t_e3`` (else the layer
  is ``skip``; only where the layer has a shortcut), the second half (expansion 6) iff
  ``||w_{e6\\e3}|| >= t_e6``. The indicators have the hard step as value and the sigmoid's
  gradient (straight-through, reference ``Indicator``).
* **Runtime model** (:class:`RuntimeModel`, reference ``DepthwiseConv2DMasked.build``): from the
  lookup table's per-layer latencies ``R`` (:meth:`~nasforge.hardware.lut.LatencyTable.option_latencies`)
  and the indicators ``d_k5, d_e3, d_e6`` of layer ``l``::

      R_l = d_e3 * (R[k5_e3] + d_e6 * (R[k5_e6] - R[k5_e3])) * (r + (1 - r) * d_k5),   r = R[k3_e6] / R[k5_e6]

  (``d_e3 = 1`` on layers without ``skip``) and ``R = sum_l R_l + constant`` with the table's
  constant for stem, first block and head (the reference's 19.6 ms for its Pixel 1). With hard
  indicators this is the table's latency for ``k5_e3``, ``k5_e6`` and ``k3_e6``; ``k3_e3`` is
  predicted as ``R[k5_e3] * r`` (the paper assumes the 3x3 / 5x5 ratio of expansion 6 holds for
  expansion 3) and ``skip`` as 0. ``runtime_model="table"`` uses instead the multilinear
  interpolation of all five table entries in the indicators, which equals the table's
  prediction of the derived architecture for every hard decision.
* **Loss** (reference ``search_main.py``): ``CE + lambda * 1e3 * log(R)`` (CE with label smoothing
  0.1; ``runtime_loss_scale`` is the reference's 1e3 factor) plus weight decay 1e-5 on every
  trainable tensor except BN's (thresholds included, as in the reference).
* **Training**: weights and thresholds are one parameter set trained together on the training
  split by RMSProp (decay 0.9, momentum 0.9, epsilon 1e-3), learning rate ``0.016 * batch / 256``
  decayed by 0.97 every 2.4 epochs (staircase, computed per step). During the first
  ``warmup_epochs`` epochs lambda is 0 and every indicator goes through dropout with keep
  probability 0.6 (kept indicators scaled by 1 / 0.6, ``tf.nn.dropout``); afterwards lambda is
  ``runtime_lambda`` and the indicators are not dropped (reference ``build_runtime_lambda`` and
  ``build_dropout_rate``: 6,255 of 10,008 steps at batch 1,024 on ImageNet, i.e. 5 of 8 epochs).
* **Result**: the architecture the final thresholds select (hard indicators, no dropout), read
  as an Arch of the ``mobilenet`` space; ``info`` lists per layer the thresholds and the final
  norms, the runtime model's value and the table's predicted latency of the result.

Latency table (``latency_table``, required): built by ``nasforge hardware build-lut`` for the same
space config, input shape and number of classes, e.g. ``nasforge hardware build-lut --space
mobilenet --space-opt preset=cifar --space-opt kernels=[3,5] --space-opt expansions=[3,6]
--input-size 32 --out lut.json``. Without one the search stops before anything runs with a
``ConfigError`` that gives the build command.

Deviations from the paper / reference, stated explicitly:

* **Indicators gate activations**, not the depthwise kernel's channels (see
  :mod:`nasforge.nn.superkernel`), so that hard decisions give exactly the stand-alone network.
* **Space.** The reference searches MnasNet's backbone at 224x224 with its last layer fixed;
  here every searchable layer of the ``mobilenet`` space (ProxylessNAS backbone, ``preset=cifar``
  for 32x32 inputs) is searched. The space must have kernels (3, 5) and expansions (3, 6) (any
  two kernels and two expansions are accepted) and no SE.
* **Optimizer details.** ``torch.optim.RMSprop`` adds epsilon outside the square root and starts
  the mean square at 0; TensorFlow 1's ``RMSPropOptimizer`` adds it inside and starts at 1. BN
  uses PyTorch's momentum 0.1 and epsilon 1e-5 (reference: TF momentum 0.99, epsilon 1e-3). The
  reference's exponential moving average of the weights (0.9999, used for evaluation only) is
  not kept. The validation split is not used by the search (the reference trains on ImageNet's
  training set only).
* **Norms.** Decisions compare the L2 norm (reference ``tf.norm``) with the thresholds;
  ``squared_norm=True`` compares the squared norm as the paper's equations write it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasforge.errors import ConfigError
from nasforge.nn.superkernel import LayerIndicators
from nasforge.registry import register
from nasforge.spaces.mobilenet import MobileNetSpace
from nasforge.spaces.mobilenet_superkernel import SuperkernelMobileNet, check_superkernel_space
from nasforge.train.bilevel import weight_step
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotMethod,
    OneShotResult,
    accuracy,
    require,
    require_positive_int,
)
from nasforge.train.sampled import selected_result

if TYPE_CHECKING:
    from nasforge.hardware.lut import LatencyTable

RUNTIME_MODELS: tuple[str, ...] = ("paper", "table")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SinglePathNasConfig:
    """Single-Path NAS hyper-parameters; each field names its source."""

    epochs: int = 8  # search epochs (paper abstract: 8 epochs; reference: 10,008 steps of 1,024 ImageNet images)
    warmup_epochs: int = 5  # epochs with lambda 0 and indicator dropout (reference: 6,255 warm-up steps = 5 epochs)
    batch_size: int = 1024  # search batch size (reference train_batch_size)
    lr_per_256: float = 0.016  # learning rate per 256 images: lr = lr_per_256 * batch_size / 256 (reference base_learning_rate)
    lr_decay: float = 0.97  # learning rate factor per lr_decay_epochs, staircase (reference build_learning_rate)
    lr_decay_epochs: float = 2.4  # epochs between decays (reference build_learning_rate)
    rmsprop_decay: float = 0.9  # RMSProp decay of the mean square (reference build_optimizer)
    momentum: float = 0.9  # RMSProp momentum (reference build_optimizer)
    rmsprop_eps: float = 1e-3  # RMSProp epsilon (reference build_optimizer; TF adds it inside the square root)
    weight_decay: float = 1e-5  # L2 on every trainable tensor but BN's, thresholds included (reference weight_decay)
    label_smoothing: float = 0.1  # CE label smoothing (reference label_smoothing)
    dropout: float = 0.2  # classifier dropout (reference dropout_rate); --supernet-opt dropout=... overrides it
    grad_clip: float | None = None  # max gradient norm of a step (reference: none)
    runtime_lambda: float = 0.020  # lambda of CE + lambda * 1e3 * log(R) (reference README: --runtime_lambda_val=0.020)
    runtime_loss_scale: float = 1e3  # the reference's factor on lambda * log(R) (search_main.py: "1e3")
    warmup_keep: float = 0.6  # indicator dropout keep probability during warm-up (reference build_dropout_rate)
    runtime_model: str = "paper"  # "paper": the reference's per-layer formula; "table": exact multilinear table model
    squared_norm: bool = False  # decide on ||w||^2 (paper's equations) instead of ||w|| (reference tf.norm)
    latency_table: str | None = None  # lookup table of this machine (`nasforge hardware build-lut`); required

    def __post_init__(self) -> None:
        require_positive_int("epochs", self.epochs)
        require_positive_int("batch_size", self.batch_size)
        w = self.warmup_epochs
        require(isinstance(w, int) and not isinstance(w, bool) and w >= 0, f"warmup_epochs must be an int >= 0, got {w!r}")
        require(_number(self.lr_per_256) and self.lr_per_256 > 0, f"lr_per_256 must be > 0, got {self.lr_per_256!r}")
        require(_number(self.lr_decay) and 0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        require(_number(self.lr_decay_epochs) and self.lr_decay_epochs > 0,
                f"lr_decay_epochs must be > 0, got {self.lr_decay_epochs!r}")
        for name in ("rmsprop_decay", "momentum"):
            v = getattr(self, name)
            require(_number(v) and 0 <= v < 1, f"{name} must be in [0, 1), got {v!r}")
        require(_number(self.rmsprop_eps) and self.rmsprop_eps > 0, f"rmsprop_eps must be > 0, got {self.rmsprop_eps!r}")
        require(_number(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        require(_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
                f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        require(_number(self.dropout) and 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")
        clip = self.grad_clip
        require(clip is None or (_number(clip) and clip > 0), f"grad_clip must be > 0 or None, got {clip!r}")
        require(_number(self.runtime_lambda) and self.runtime_lambda >= 0,
                f"runtime_lambda must be a finite number >= 0, got {self.runtime_lambda!r}")
        require(_number(self.runtime_loss_scale) and self.runtime_loss_scale > 0,
                f"runtime_loss_scale must be > 0, got {self.runtime_loss_scale!r}")
        require(_number(self.warmup_keep) and 0 < self.warmup_keep <= 1,
                f"warmup_keep must be in (0, 1], got {self.warmup_keep!r}")
        require(self.runtime_model in RUNTIME_MODELS,
                f"runtime_model must be one of {', '.join(RUNTIME_MODELS)}, got {self.runtime_model!r}")
        require(isinstance(self.squared_norm, bool), f"squared_norm must be true or false, got {self.squared_norm!r}")


def single_path_lr(cfg: SinglePathNasConfig, epochs_done: float) -> float:
    """The reference's learning rate after ``epochs_done`` (fractional) epochs: staircase exponential decay."""
    return cfg.lr_per_256 * cfg.batch_size / 256.0 * cfg.lr_decay ** math.floor(epochs_done / cfg.lr_decay_epochs)


class RuntimeModel:
    """The differentiable runtime ``R(indicators)`` (ms) of a superkernel network from a latency table.

    Args:
        table: a complete latency table of the space.
        space: the (superkernel-compatible) mobilenet space.
        formula: ``"paper"`` (the reference's per-layer formula, see the module docstring) or
            ``"table"`` (multilinear in the indicators; the table's prediction at hard decisions).
    """

    def __init__(self, table: LatencyTable, space: MobileNetSpace, formula: str = "paper") -> None:
        require(formula in RUNTIME_MODELS, f"runtime_model must be one of {', '.join(RUNTIME_MODELS)}, got {formula!r}")
        check_superkernel_space(space)
        self.formula, self.constant = formula, float(table.constant_ms)
        self.ks, self.kl = min(space.kernels), max(space.kernels)
        self.es, self.el = min(space.expansions), max(space.expansions)
        self.latencies: dict[str, dict[str, float]] = {
            layer: dict(zip(options, table.option_latencies(layer))) for layer, options in space.decisions().items()
        }

    def _r(self, layer: str, k: int, e: int) -> float:
        return self.latencies[layer][f"ir_k{k}_e{e}"]

    def layer(self, layer: str, ind: LayerIndicators) -> Tensor:
        """``R_l`` of one layer at its indicators."""
        d_k, d_l, d_s = ind.kernel, ind.large, ind.small
        if self.formula == "paper":
            r_small, r_large = self._r(layer, self.kl, self.es), self._r(layer, self.kl, self.el)
            ratio = self._r(layer, self.ks, self.el) / r_large
            channels = r_small + d_l * (r_large - r_small)
            if d_s is not None:
                channels = d_s * channels
            return channels * (ratio + (1.0 - ratio) * d_k)

        def by_kernel(e: int) -> Tensor:
            return (1.0 - d_k) * self._r(layer, self.ks, e) + d_k * self._r(layer, self.kl, e)

        block = (1.0 - d_l) * by_kernel(self.es) + d_l * by_kernel(self.el)
        if d_s is None:
            return block
        return (1.0 - d_s) * self.latencies[layer]["skip"] + d_s * block

    def __call__(self, indicators: Mapping[str, LayerIndicators]) -> Tensor:
        """``R = sum_l R_l + constant`` (ms), differentiable in the indicators."""
        missing = [k for k in self.latencies if k not in indicators]
        if missing:
            raise ConfigError(f"runtime model needs indicators for every layer; missing {missing}")
        terms = [self.layer(k, indicators[k]) for k in self.latencies]
        return torch.stack([torch.as_tensor(t) for t in terms]).sum() + self.constant

    def fastest(self) -> float:
        """The smallest runtime any hard decision gives (ms)."""
        total = self.constant
        for layer, options in self.latencies.items():
            smalls = (None, ) if "skip" not in options else (torch.tensor(0.0), torch.tensor(1.0))
            values = [
                float(self.layer(layer, LayerIndicators(torch.tensor(float(k)), torch.tensor(float(e)), s)))
                for k, e, s in itertools.product((0, 1), (0, 1), smalls)
            ]
            total += min(values)
        return total


def load_table(ctx: OneShotContext, cfg: SinglePathNasConfig) -> LatencyTable:
    """The run's latency table, checked against the space and input; a ``ConfigError`` says how to build one."""
    from nasforge.hardware.lut import load_lut

    if cfg.latency_table is None:
        opts = " ".join(f"--space-opt {k}={json.dumps(v, separators=(',', ':'))}" for k, v in ctx.space.config().items())
        shape = "x".join(map(str, ctx.input_shape))
        raise ConfigError(
            "single_path_nas needs a latency lookup table (its loss is CE + lambda x log(R) with R from the table): "
            f"build one for this space and input ({shape}) with `nasforge hardware build-lut --space {ctx.space.name} "
            f"{opts} --input-size {ctx.input_shape[-1]} --in-channels {ctx.input_shape[0]} "
            f"--num-classes {ctx.num_classes} --out lut.json` and pass --method-opt latency_table=lut.json"
        )
    return load_lut(cfg.latency_table, space=ctx.space, input_shape=ctx.input_shape, num_classes=ctx.num_classes)


def rmsprop(net: nn.Module, cfg: SinglePathNasConfig) -> torch.optim.RMSprop:
    """The reference's RMSProp over every parameter; weight decay on all but BN's (thresholds included)."""
    bn = {id(p) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()}
    decay = [p for p in net.parameters() if id(p) not in bn]
    no_decay = [p for p in net.parameters() if id(p) in bn]
    return torch.optim.RMSprop(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=single_path_lr(cfg, 0.0), alpha=cfg.rmsprop_decay, eps=cfg.rmsprop_eps, momentum=cfg.momentum,
    )


def search(ctx: OneShotContext, cfg: SinglePathNasConfig) -> OneShotResult:
    space = check_superkernel_space(ctx.space)
    table = load_table(ctx, cfg)  # before anything is built: a missing or mismatched table fails first
    runtime = RuntimeModel(table, space, cfg.runtime_model)
    fastest = runtime.fastest()
    require(fastest > 0, f"the runtime model ({cfg.runtime_model}) of latency table {cfg.latency_table} predicts "
                         f"{fastest:.4g} ms for the fastest architecture, but log(R) needs R > 0; rebuild the table "
                         "(its constant is negative) or use --method-opt runtime_model=table")
    net_kwargs = {"dropout": cfg.dropout, **ctx.supernet_kwargs}
    net = SuperkernelMobileNet(space, num_classes=ctx.num_classes, in_channels=ctx.input_shape[0],
                               squared_norm=cfg.squared_norm, **net_kwargs).to(ctx.device)
    if ctx.channels_last:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = rmsprop(net, cfg)
    run = ctx.open_run("single_path_nas", cfg, supernet=net, optimizer=optimizer)

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)

    n_steps = run.steps_per_epoch(cfg.batch_size)
    for epoch in run.epochs(cfg.epochs):
        warm = epoch < cfg.warmup_epochs
        lam = 0.0 if warm else float(cfg.runtime_lambda)
        keep = cfg.warmup_keep if warm else None
        lr = single_path_lr(cfg, epoch)
        for b, batch in run.train_batches(cfg.batch_size):
            lr = single_path_lr(cfg, epoch + b / n_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            indicators = net.indicators(keep)
            r = runtime(indicators)
            extra = lam * cfg.runtime_loss_scale * torch.log(r) if lam > 0 else None
            loss, logits = weight_step(
                net, cast(Any, indicators), batch, optimizer, loss_fn=loss_fn, grad_clip=cfg.grad_clip,
                where=f"epoch {epoch} batch {b}", extra_loss=extra,
            )
            run.step_done(train_loss=loss, train_acc=accuracy(logits, batch[1]), runtime_ms=float(r.detach()))
        with torch.no_grad():
            hard = net.indicators()
            arch = net.arch(hard)
            model_ms = float(runtime(hard))
        run.epoch_done(lr=lr, runtime_lambda=lam, indicator_keep=1.0 if keep is None else keep,
                       runtime_model_ms=model_ms, predicted_latency_ms=table.predict(arch), arch=space.format(arch))

    with torch.no_grad():
        hard = net.indicators()
        arch = net.arch(hard)
        model_ms = float(runtime(hard))
    return selected_result(
        ctx, run, net, arch,
        thresholds=net.thresholds(), norms=net.norms(), runtime_model=cfg.runtime_model, runtime_model_ms=model_ms,
        predicted_latency_ms=table.predict(arch), latency_table=cfg.latency_table,
        result_rule="the decisions of the final thresholds (hard indicators)",
    )


single_path_nas = register("method", "single_path_nas")(OneShotMethod(
    name="single_path_nas",
    paper="Stamoulis et al., 'Single-Path NAS: Designing Hardware-Efficient ConvNets in less than 4 Hours', "
          "ECML-PKDD 2019",
    config_cls=SinglePathNasConfig,
    search=search,
    spaces=("mobilenet",),
))
