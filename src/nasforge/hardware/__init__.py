"""Hardware cost models: parameters, FLOPs (and later latency and lookup tables)."""

from nasforge.hardware.cost import Cost, count_flops, count_params, measure

__all__ = ["Cost", "count_flops", "count_params", "measure"]
