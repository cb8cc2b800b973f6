"""Zero-cost evaluator: score an untrained network with a proxy (Zen-score, synflow, NASWOT...).

Every candidate is built from the same seed and scored on the same fixed batch (the first
batch of the seeded training loader; data-free proxies get a Gaussian batch of the input
shape), so scores differ only through the architecture. ``cost`` is the wall time.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import Dataset

from nasforge.arch import Arch
from nasforge.hardware.cost import measure
from nasforge.searchers.base import Result
from nasforge.spaces.base import SearchSpace


def fixed_batch(
    dataset: Dataset[Any] | None, input_shape: tuple[int, int, int], batch_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The scoring batch: the first shuffled batch of ``dataset``, or N(0, 1) noise without data."""
    if dataset is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randn((batch_size, *input_shape), generator=g), None
    from nasforge.data import make_loader

    x, y = next(iter(make_loader(dataset, batch_size, shuffle=True, seed=seed, epoch=0)))
    return x, y


class ProxyEvaluator:
    """``evaluator(arch) -> Result`` whose metrics are the proxy score (under the proxy's name),
    ``params``, ``flops`` and ``macs``."""

    def __init__(
        self,
        space: SearchSpace,
        proxy: str,
        *,
        dataset: Dataset[Any] | None,
        input_shape: tuple[int, int, int],
        num_classes: int,
        batch_size: int = 64,
        build_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        from nasforge import get_proxy

        self.space, self.name = space, proxy
        self.proxy = get_proxy(proxy)
        self.input_shape, self.num_classes = input_shape, num_classes
        self.build_kwargs = dict(build_kwargs or {})
        self.seed, self.device = seed, device
        data = dataset if getattr(self.proxy, "needs_data", True) else None
        self.inputs, self.targets = fixed_batch(data, input_shape, batch_size, seed)

    def __call__(self, arch: Arch) -> Result:
        start = time.perf_counter()
        torch.manual_seed(self.seed)
        net = self.space.build(arch, num_classes=self.num_classes, in_channels=self.input_shape[0], **self.build_kwargs)
        net.to(self.device)
        targets = self.targets.to(self.device) if self.targets is not None else None
        score = float(self.proxy(net, self.inputs.to(self.device), targets, seed=self.seed))
        metrics = {self.name: score, **measure(net, self.input_shape).as_dict()}
        return Result(metrics=metrics, cost=time.perf_counter() - start)
