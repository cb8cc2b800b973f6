"""Rewards, losses and hard limits on hardware cost: objects any method can take.

Each object is a small frozen dataclass that checks its own values (typed errors naming the
bad value and the valid ones) and computes one paper's formula:

* :class:`HardLimit` -- ``metric op bound`` (``params<=1.5M``, ``latency_ms<20``): the hard
  constraint of every multi-trial search (``--constraint``), SPOS' FLOPs / latency limits,
  DenseNAS' budget. ``Constraint`` is the same class under its older name; :func:`parse_constraint`
  reads the command-line text.
* :class:`MnasNetReward` -- ``ACC x (LAT / T) ** w`` (Tan et al., CVPR 2019, Eq. 2), soft and hard.
* :class:`FBNetLoss` -- ``CE x alpha x log(LAT) ** beta`` (Wu et al., CVPR 2019, Eq. 2).
* :class:`ProxylessLoss` -- the latency losses of ProxylessNAS' reference code (Cai et al., ICLR
  2019): ``mul#log`` ``alpha x CE x (log LAT / log ref) ** beta`` and ``add#linear``
  ``CE + lambda x (LAT - ref) / ref``.

The losses take floats or torch tensors (any shape that broadcasts) and are differentiable in
both arguments, so ``lat`` can be an expected latency from a lookup table (sum over layers of
the architecture probabilities times the per-op latencies, as FBNet and ProxylessNAS use it).
This module imports no torch: tensors are used only through their own methods.

Latency is in the unit of the metric that supplies it (milliseconds for ``latency_ms`` and the
NB201 table's ``*_latency_ms`` columns). The log forms need ``LAT > 1`` in that unit (``log LAT``
is raised to a fractional power): for sub-unit latencies pick a smaller unit (microseconds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from nasforge.errors import BudgetError, ConfigError, check_float

if TYPE_CHECKING:
    from torch import Tensor

    Value = float | Tensor

#: Metrics a cost model measures before training (checked before a proposal is evaluated).
COST_METRICS = ("params", "flops", "macs", "latency_ms")

_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9}
_OPS = ("<=", "<", ">=", ">")
_METRIC = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---- hard limits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HardLimit:
    """A hard limit ``metric op bound`` on one reported metric: ``HardLimit("params", "<=", 1.5e6)``.

    A proposal or trial that breaks it is infeasible (the multi-trial loop rejects cost-model
    limits before evaluation and scores a broken evaluator-metric limit ``-inf``). ``metric`` is
    any metric the evaluator or cost model reports (:data:`COST_METRICS`, table columns such as
    ``hwnb_pixel3_latency_ms``, ``val_acc``); ``op`` one of ``<=``, ``<``, ``>=``, ``>``.

    Raises:
        ConfigError: a metric that is not a name, an unknown ``op`` (the valid ones listed), a
            bound that is not a finite number.
        BudgetError: an upper limit ``<= 0`` on a cost metric (always > 0): it can never be met.
    """

    metric: str
    op: str  # "<=", "<", ">=", ">"
    bound: float

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not _METRIC.fullmatch(self.metric):
            raise ConfigError(f"constraint metric must be a name such as params or latency_ms, got {self.metric!r}")
        if self.op not in _OPS:
            raise ConfigError(f"constraint operator must be one of {', '.join(_OPS)}, got {self.op!r}")
        object.__setattr__(self, "bound", check_float(f"bound of constraint on {self.metric}", self.bound))
        if self.metric in COST_METRICS and self.upper and self.bound <= 0:
            raise BudgetError(f"constraint {self!s} can never be met: {self.metric} is always > 0")

    @property
    def upper(self) -> bool:
        """Whether this is an upper limit (``<=``, ``<``): smaller values are better."""
        return self.op in ("<=", "<")

    def ok(self, value: float) -> bool:
        """Whether ``value`` meets the limit (NaN never does)."""
        return {"<=": value <= self.bound, "<": value < self.bound,
                ">=": value >= self.bound, ">": value > self.bound}[self.op]

    def ok_for(self, metrics: Mapping[str, float]) -> bool:
        """:meth:`ok` on ``metrics[self.metric]``; a ``ConfigError`` names the reported metrics if absent."""
        if self.metric not in metrics:
            raise ConfigError(f"constraint metric {self.metric!r} was not reported; valid: {', '.join(sorted(metrics))}")
        return self.ok(float(metrics[self.metric]))

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"

    @classmethod
    def parse(cls, text: str) -> HardLimit:
        """``"params<=1.5M"`` -> ``HardLimit("params", "<=", 1.5e6)``; suffixes k, M, G (either case)."""
        return parse_constraint(text)


#: The older name of :class:`HardLimit` (the multi-trial loop's ``--constraint``); the same class.
Constraint = HardLimit


def parse_constraint(text: str) -> HardLimit:
    """``"params<=1.5M"`` -> Constraint("params", "<=", 1.5e6)."""
    m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)([kKmMgG]?)\s*", text)
    if not m:
        raise ConfigError(
            f"bad constraint {text!r}; expected METRIC<=VALUE (or <, >=, >), e.g. params<=1.5M, flops<=2e8"
        )
    metric, op, number, suffix = m.groups()
    try:
        bound = float(number) * _SUFFIX[suffix]
    except ValueError:
        raise ConfigError(f"bad number {number!r} in constraint {text!r}") from None
    if metric in COST_METRICS and op in ("<=", "<") and bound <= 0:
        raise BudgetError(f"constraint {text!r} can never be met: {metric} is always > 0")
    return HardLimit(metric, op, bound)


# ---- value checks shared by the rewards and losses -----------------------------------------


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_latency(lat: Value, *, above: float, why: str) -> None:
    """Raise ``ConfigError`` unless every latency value is finite and ``> above``."""
    if _is_number(lat):
        bad: float | None = None if math.isfinite(float(lat)) and float(lat) > above else float(lat)
    elif hasattr(lat, "detach"):
        d = lat.detach()
        wrong = ~(d.isfinite() & (d > above))
        bad = float(d[wrong].reshape(-1)[0].item()) if bool(wrong.any()) else None
    else:
        raise ConfigError(f"latency must be a number or a torch tensor, got {type(lat).__name__}")
    if bad is not None:
        raise ConfigError(f"latency must be finite and > {above:g} ({why}), got {bad!r}")


def _log(x: Value) -> Value:
    return math.log(float(x)) if _is_number(x) else x.log()  # type: ignore[union-attr]


# ---- MnasNet ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MnasNetReward:
    """MnasNet's multi-objective reward ``ACC x (LAT / T) ** w``, to be maximised.

    Tan, Chen, Pang, Vasudevan, Sandler, Howard & Le, "MnasNet: Platform-Aware Neural Architecture
    Search for Mobile", CVPR 2019, Eq. 2: ``w = alpha`` if ``LAT <= T`` else ``beta``.

    * **soft** (the default, the paper's choice, Section 3): ``alpha = beta = -0.07``, so a model
      twice as slow must be about 5% more accurate to earn the same reward.
    * **hard** (Figure 2): ``alpha = 0, beta = -1``: no reward for being faster than ``T``, a
      steep penalty beyond it. :meth:`from_mode` builds either.

    ProxylessNAS' REINFORCE variant uses the same shape: reference code ``calculate_reward``,
    ``acc x (ref / LAT) ** 0.1``, i.e. ``MnasNetReward(ref, alpha=-0.1, beta=-0.1)``.

    Args:
        target: T, in the unit of the latency (or other cost) metric; > 0, no default (it is device
            specific: the paper's 75 ms is a Pixel 1 ImageNet figure).
        alpha: exponent when ``LAT <= T`` (-0.07); finite.
        beta: exponent when ``LAT > T`` (-0.07); finite.

    Raises:
        ConfigError: a target that is not a finite number > 0, a non-finite exponent; in
            :meth:`reward`, a non-finite accuracy or a latency that is not finite and > 0.
    """

    target: float
    alpha: float = -0.07
    beta: float = -0.07

    #: ``mode -> (alpha, beta)``: MnasNet Section 3 (soft) and Figure 2 (hard).
    MODES: ClassVar[dict[str, tuple[float, float]]] = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", check_float("target", self.target, low=0.0, low_open=True))
        object.__setattr__(self, "alpha", check_float("alpha", self.alpha))
        object.__setattr__(self, "beta", check_float("beta", self.beta))

    @classmethod
    def from_mode(cls, target: float, mode: str = "soft") -> MnasNetReward:
        """``mode="soft"`` (alpha = beta = -0.07) or ``"hard"`` (alpha = 0, beta = -1)."""
        if mode not in cls.MODES:
            raise ConfigError(f"mode must be one of {', '.join(cls.MODES)}, got {mode!r}")
        alpha, beta = cls.MODES[mode]
        return cls(target, alpha, beta)

    def reward(self, acc: float, lat: float) -> float:
        """``acc * (lat / target) ** w``."""
        acc, lat = float(acc), float(lat)
        if not math.isfinite(acc):
            raise ConfigError(f"accuracy must be finite, got {acc!r}")
        _check_latency(lat, above=0.0, why="MnasNet's (LAT / T) ** w")
        w = self.alpha if lat <= self.target else self.beta
        return acc * (lat / self.target) ** w


# ---- FBNet -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FBNetLoss:
    """FBNet's latency-aware loss ``CE x alpha x log(LAT) ** beta``, to be minimised.

    Wu, Dai, Zhang, Wang, Sun, Wu, Tian, Vajda, Jia & Keutzer, "FBNet: Hardware-Aware Efficient
    ConvNet Design via Differentiable Neural Architecture Search", CVPR 2019, Eq. 2:
    ``L(a, w_a) = CE(a, w_a) * alpha * log(LAT(a)) ** beta``, with LAT the expected latency of
    the stochastic super net (per layer, the Gumbel-softmax weights times the per-op latencies of
    the lookup table, summed over layers). In the paper's words alpha sets the overall magnitude
    of the loss and the exponent beta modulates the magnitude of the latency term. Defaults
    ``alpha = 0.2, beta = 0.6`` (the values the paper gives for its ImageNet search). The power
    applies to ``log(LAT)`` (``alpha * (log LAT) ** beta``), the reading that makes beta an
    exponent; some re-implementations compute ``log(LAT ** beta)``, which is ``beta * log LAT``.

    Latency is in milliseconds in the paper, and must be > 1 in its unit (``log LAT > 0``).

    Raises:
        ConfigError: alpha or beta not finite and > 0; in :meth:`loss`, a latency that is not
            finite and > 1.
    """

    alpha: float = 0.2
    beta: float = 0.6

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_float("alpha", self.alpha, low=0.0, low_open=True))
        object.__setattr__(self, "beta", check_float("beta", self.beta, low=0.0, low_open=True))

    def loss(self, ce: Value, lat: Value) -> Value:
        """``ce * alpha * log(lat) ** beta`` (floats or tensors; differentiable in both)."""
        _check_latency(lat, above=1.0, why="FBNet's log(LAT) ** beta needs log LAT > 0; use a smaller unit")
        return ce * self.alpha * _log(lat) ** self.beta


# ---- ProxylessNAS ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxylessLoss:
    """ProxylessNAS' latency-regularised loss, in the forms of the reference code, to be minimised.

    Cai, Zhu & Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware",
    ICLR 2019. The paper (Section 3, "Making latency differentiable") writes
    ``CE + lambda_1 ||w||^2 + lambda_2 E[LAT]`` with ``E[LAT]`` the sum over layers of path
    probabilities times per-op latencies; the reference code (``mit-han-lab/proxylessnas``,
    ``search/nas_manager.py``, ``GradientArchSearchConfig.add_regularization_loss``) implements
    two forms around a reference value ``ref`` (80 ms for the mobile search of width 1.0):

    * ``"mul#log"`` (the script's default): ``alpha * CE * (log LAT / log ref) ** beta``;
      ``alpha = 0.2, beta = 0.3`` (``imagenet_arch_search.py`` defaults; the class's own
      fallbacks are 1 and 0.6). The FBNet form, normalised so that ``LAT = ref`` costs ``alpha*CE``.
    * ``"add#linear"``: ``CE + lambda * (LAT - ref) / ref``; ``lambda = 0.1`` (the script's
      default; the class's fallback is 0.2). The paper's linear regulariser, scaled by ``ref``.

    Weight decay (``lambda_1``) is the optimiser's business, not part of this loss.

    Args:
        ref: the reference latency, in the latency's unit; > 0 (``"mul#log"``: > 1, as log ref
            divides). No default: it is device specific.
        form: ``"mul#log"`` or ``"add#linear"``.
        alpha, beta: the ``"mul#log"`` constants, finite and > 0.
        lambda_: the ``"add#linear"`` weight, finite and >= 0.

    Raises:
        ConfigError: an unknown form (the valid ones listed), a reference or constant out of
            range; in :meth:`loss`, a latency that is not finite and > 1 (``"mul#log"``) or > 0
            (``"add#linear"``).
    """

    ref: float
    form: str = "mul#log"
    alpha: float = 0.2
    beta: float = 0.3
    lambda_: float = 0.1

    FORMS: ClassVar[tuple[str, ...]] = ("mul#log", "add#linear")

    def __post_init__(self) -> None:
        if self.form not in self.FORMS:
            raise ConfigError(f"ProxylessNAS latency loss form must be one of {', '.join(self.FORMS)}, got {self.form!r}")
        low = 1.0 if self.form == "mul#log" else 0.0
        object.__setattr__(self, "ref", check_float(f"ref (for {self.form})", self.ref, low=low, low_open=True))
        object.__setattr__(self, "alpha", check_float("alpha", self.alpha, low=0.0, low_open=True))
        object.__setattr__(self, "beta", check_float("beta", self.beta, low=0.0, low_open=True))
        object.__setattr__(self, "lambda_", check_float("lambda_", self.lambda_, low=0.0))

    def loss(self, ce: Value, lat: Value) -> Value:
        """The configured form (floats or tensors; differentiable in both)."""
        if self.form == "mul#log":
            _check_latency(lat, above=1.0, why="mul#log raises log(LAT) / log(ref) to a power; use a smaller unit")
            return self.alpha * ce * (_log(lat) / math.log(self.ref)) ** self.beta
        _check_latency(lat, above=0.0, why="add#linear")
        return ce + self.lambda_ * (lat - self.ref) / self.ref
