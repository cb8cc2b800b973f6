"""Hardware cost models: parameters, FLOPs, measured latency (lookup tables to come)."""

from nasforge.hardware.cost import Cost, count_flops, count_params, measure
from nasforge.hardware.latency import measure_latency_ms

__all__ = ["Cost", "count_flops", "count_params", "measure", "measure_latency_ms"]
