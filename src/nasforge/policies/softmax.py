"""DARTS: every candidate runs, weighted by the softmax of its architecture logit.

Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019 (eq. 2);
reference ``quark0/darts`` ``cnn/model_search.py`` (``alphas_normal = 1e-3 * randn``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from nasforge.nn.choice import Mix, Path
from nasforge.policies.base import ArchLogits, Policy


class SoftmaxPolicy(Policy):
    """``path[k] = softmax(alpha_k)``; with ``edge_groups`` also PC-DARTS edge normalisation.

    Args:
        choices: the supernet's ``choices()``.
        init_scale: logits start at ``init_scale * N(0, 1)`` (DARTS: 1e-3).
        edge_groups: PC-DARTS (Xu et al. 2020, eq. 4): groups of choice keys whose edges enter
            the same node; each edge also gets a logit ``beta`` and its output is multiplied by
            ``softmax(beta over the group)`` (a :class:`~nasforge.nn.choice.Mix`).
    """

    name = "softmax"

    def __init__(
        self, choices: Mapping[str, Sequence[str]], *, init_scale: float = 1e-3,
        edge_groups: Sequence[Sequence[str]] | None = None,
    ) -> None:
        super().__init__(choices)
        self.logits = ArchLogits(self.choices, init_scale=init_scale)
        self.edge_groups = [list(g) for g in edge_groups or []]
        self.betas = torch.nn.ParameterList(
            [torch.nn.Parameter(init_scale * torch.randn(len(g))) for g in self.edge_groups]
        )

    def forward(self) -> Path:
        weights = {k: torch.softmax(self.logits[k], dim=-1) for k in self.choices}
        path: dict[str, torch.Tensor | Mix] = dict(weights)
        for group, beta in zip(self.edge_groups, self.betas):
            scale = torch.softmax(beta, dim=-1)
            for i, key in enumerate(group):
                path[key] = Mix(weights[key], scale[i])
        return path

    def strengths(self) -> dict[str, torch.Tensor]:
        """Softmax weights; with edge groups multiplied by the edge's beta weight (PC-DARTS derivation)."""
        out = {k: torch.softmax(self.logits[k].detach(), dim=-1) for k in self.choices}
        for group, beta in zip(self.edge_groups, self.betas):
            scale = torch.softmax(beta.detach(), dim=-1)
            for i, key in enumerate(group):
                out[key] = out[key] * scale[i]
        return out
