"""A tiny registered search space for tests of the machinery (searchers, studies, CLI)."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from nasforge.arch import Arch
from nasforge.errors import ArchError
from nasforge.registry import _REGISTRIES, register
from nasforge.spaces.base import SearchSpace

WIDTHS = {"a": 4, "b": 8, "c": 16}


class ToySpace(SearchSpace):
    """Three conv layers, each of width a/b/c; fitness in tests is often a known function of it."""

    name: ClassVar[str] = "toy_test"
    paper: ClassVar[str] = "test fixture"

    def decisions(self) -> dict[str, tuple[str, ...]]:
        return {f"layer{i}": ("a", "b", "c") for i in range(3)}

    def format(self, arch: Arch) -> str:
        self.validate(arch)
        return "-".join(arch.values())

    def parse(self, text: str) -> Arch:
        parts = text.strip().split("-")
        if len(parts) != 3:
            raise ArchError(f"toy arch needs 3 parts, got {text!r}")
        return self.make({f"layer{i}": p for i, p in enumerate(parts)})

    def build(self, arch: Arch, *, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        self.validate(arch)
        layers: list[nn.Module] = []
        c = in_channels
        for opt in arch.values():
            w = WIDTHS[opt]
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
        return nn.Sequential(*layers)

    def supernet(self, **kwargs: Any) -> Any:
        raise NotImplementedError


if "toy_test" not in _REGISTRIES["space"]:
    register("space", "toy_test")(ToySpace)
