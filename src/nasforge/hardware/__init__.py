"""Hardware cost models: parameters, FLOPs, measured latency, rewards and limits on them.

The torch-based parts (``cost``, ``latency``) load on first use, so that importing the
torch-free :mod:`nasforge.hardware.objectives` (which ``nasforge.experiment`` re-exports) stays
cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nasforge.hardware.objectives import (
    COST_METRICS,
    Constraint,
    FBNetLoss,
    HardLimit,
    MnasNetReward,
    ProxylessLoss,
    parse_constraint,
)

if TYPE_CHECKING:
    from nasforge.hardware.cost import Cost, count_flops, count_params, measure
    from nasforge.hardware.latency import LatencyMeasurement, LatencySpec, NetworkRecipe, measure_latency_ms
    from nasforge.hardware.lut import LatencyTable, build_lut, expected_latency, load_lut

#: name -> submodule, imported on first attribute access (PEP 562).
_LAZY = {"Cost": "cost", "count_flops": "cost", "count_params": "cost", "measure": "cost",
         "measure_latency_ms": "latency", "LatencySpec": "latency", "LatencyMeasurement": "latency",
         "NetworkRecipe": "latency", "LatencyTable": "lut", "build_lut": "lut", "load_lut": "lut",
         "expected_latency": "lut"}

__all__ = ["COST_METRICS", "Constraint", "Cost", "FBNetLoss", "HardLimit", "MnasNetReward", "ProxylessLoss",
           "count_flops", "count_params", "measure", "measure_latency_ms", "parse_constraint",
           "LatencyMeasurement", "LatencySpec", "LatencyTable", "NetworkRecipe", "build_lut", "expected_latency",
           "load_lut"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"nasforge.hardware.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'nasforge.hardware' has no attribute {name!r}")
