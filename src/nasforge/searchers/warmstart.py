"""Proxy warm start: screen many architectures with a zero-cost proxy, start a searcher from the best.

Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021, Section 5 ("warmup"):
score ``pool`` uniformly sampled architectures with a cheap proxy and hand the top ``keep`` to
the searcher as its first proposals; the expensive evaluation (training, or a table query)
then starts from promising points. Composed, not inherited: any searcher can be wrapped.
With :class:`~nasforge.searchers.evolution.RegularizedEvolution` and ``keep`` equal to its
population size, the initial population is the screened set and the tournaments start at once.

The wrapper is not a registered method because its screen is a Python callable; build it in
code (``benchmarks/nb201_proxy_search.py`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from nasforge.arch import Arch
from nasforge.errors import BudgetError
from nasforge.searchers.base import Searcher


class ProxyWarmStart(Searcher):
    """Wrap ``inner``: the first ``keep`` asks are the proxy's top picks from ``pool`` samples.

    Args:
        inner: the searcher that takes over after the warm start (it is told every result).
        screen: zero-cost score of an architecture (higher is better), e.g. a cached synflow.
        pool: how many uniform samples are screened.
        keep: how many of the best screened architectures are proposed first.
        seed: seed of the screening sample (independent of ``inner``'s seed).
    """

    name = "proxy_warm_start"
    paper = "Abdelfattah, Mehrotra, Dudziak & Lane, Zero-Cost Proxies for Lightweight NAS, ICLR 2021"

    def __init__(self, inner: Searcher, screen: Callable[[Arch], float], *, pool: int, keep: int, seed: int = 0) -> None:
        super().__init__(inner.space, seed=seed)
        if not 1 <= keep <= pool:
            raise BudgetError(f"need 1 <= keep <= pool, got keep={keep}, pool={pool}")
        self.inner = inner
        candidates = [self.space.sample(self.rng) for _ in range(pool)]
        # sort by score, ties by sampling order (stable), best first
        ranked = sorted(range(pool), key=lambda i: -screen(candidates[i]))
        self._queue = [candidates[i] for i in ranked[:keep]]

    def ask(self) -> Arch:
        if self._queue:
            return self._queue.pop(0)
        return self.inner.ask()

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        self.inner.tell(arch, fitness, metrics)
