"""Uniform single path: one architecture of the space, drawn uniformly, per step.

Random search with weight sharing (RSPS; Li & Talwalkar, "Random Search and Reproducibility
for Neural Architecture Search", UAI 2019) and SPOS (Guo et al., ECCV 2020) train the supernet
on a uniformly sampled architecture per mini-batch. Sampling the *architecture* (then its
supernet path) rather than each choice key independently matters on the DARTS space, where an
architecture keeps exactly two inputs per node: the path of a sampled genotype runs its 8
chosen edges and ``none`` elsewhere, as the RSPS reference samples genotypes.
"""

from __future__ import annotations

from nasforge.arch import Arch
from nasforge.nn.choice import Path, Supernet
from nasforge.policies.base import SeededUniformPolicy
from nasforge.spaces.base import SearchSpace


class UniformPolicy(SeededUniformPolicy):
    """``forward()`` draws ``space.sample(rng)`` and returns its single path in ``supernet``.

    The RNG is the policy's own (seeded), and its state is part of ``state_dict()``.
    :attr:`last` is the architecture of the latest path.
    """

    name = "uniform"

    def __init__(self, space: SearchSpace, supernet: Supernet, *, seed: int = 0) -> None:
        super().__init__(supernet.choices(), seed=seed)
        self.space, self._supernet_path = space, supernet.path_for
        self.last: Arch | None = None

    def sample(self) -> Arch:
        """A uniformly drawn architecture (advances the RNG)."""
        return self.space.sample(self.rng)

    def forward(self) -> Path:
        self.last = self.sample()
        return self._supernet_path(self.last)
