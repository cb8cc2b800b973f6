"""Random search: uniform samples from the space, independently of the results.

The baseline every NAS paper should beat, and often does not by much: Li & Talwalkar,
"Random Search and Reproducibility for Neural Architecture Search", UAI 2019; Yang et al.,
"NAS evaluation is frustratingly hard", ICLR 2020. Samples are drawn with replacement, as
in those papers' baselines (a repeated architecture is evaluated again).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from nasforge.arch import Arch
from nasforge.registry import register
from nasforge.searchers.base import Searcher


@register("method", "random")
class RandomSearch(Searcher):
    name: ClassVar[str] = "random"
    paper: ClassVar[str] = (
        "Li & Talwalkar, Random Search and Reproducibility for Neural Architecture Search, UAI 2019"
    )

    def ask(self) -> Arch:
        return self.space.sample(self.rng)

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        pass  # random search ignores results
