"""Strict fairness: every candidate of every choice runs exactly once per step (FairNAS).

Chu, Zhang & Xu, "FairNAS: Rethinking Evaluation Fairness of Weight Sharing Neural Architecture
Search", ICCV 2021 (reference code ``xiaomi-automl/FairNAS``). One training step draws, for every
choice key, a uniformly random permutation of its ``m`` candidates; model ``i`` of the step runs
the ``i``-th entry of every key's permutation. The ``m`` single paths are trained on the same
batch with their gradients accumulated before one optimizer step, so every candidate of every
key gets exactly one forward and backward per step (the paper's *strict fairness*, Definition 2).

When keys have different numbers of candidates (e.g. the ``mobilenet`` space with ``skip``
offered on all but the first layer of a stage), a step runs ``m = max`` models; a key with
``m_k < m`` candidates fills models ``m_k .. m - 1`` from a second random permutation of its own
candidates, so each of its candidates runs once or twice. With equal counts (the paper's space:
``--space-opt allow_skip=false``) every candidate runs exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nasforge.policies.base import SeededUniformPolicy


class FairPolicy(SeededUniformPolicy):
    """:meth:`paths` draws the ``m`` single paths of one strictly fair step.

    The RNG is the policy's own (seeded) and its state is part of ``state_dict()``. Calling the
    policy (``forward``) is not supported: a step runs several paths, use :meth:`paths`.
    """

    name = "fair"

    def __init__(self, choices: Mapping[str, Sequence[str]], *, seed: int = 0) -> None:
        super().__init__(choices, seed=seed)

    @property
    def models_per_step(self) -> int:
        """``m``: the largest number of candidates of a key (the paths one step runs)."""
        return max(len(v) for v in self.choices.values())

    @property
    def strict(self) -> bool:
        """Whether every key has ``m`` candidates, so each runs exactly once per step."""
        return len({len(v) for v in self.choices.values()}) == 1

    def paths(self) -> list[dict[str, str]]:
        """The ``m`` paths of the next step (advances the RNG): per key, a random permutation."""
        m = self.models_per_step
        columns: dict[str, list[str]] = {}
        for key, options in self.choices.items():
            order = list(options)
            self.rng.shuffle(order)
            while len(order) < m:  # fewer candidates than models: fill from another permutation
                more = list(options)
                self.rng.shuffle(more)
                order += more[: m - len(order)]
            columns[key] = order
        return [{key: columns[key][i] for key in self.choices} for i in range(m)]
