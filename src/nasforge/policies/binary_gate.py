"""ProxylessNAS binary gates: one sampled path per step, two sampled paths for the gate gradient.

Cai, Zhu & Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware",
ICLR 2019, Section 3.2. Reference implementation ``mit-han-lab/proxylessnas``,
``search/modules/mix_op.py`` (``MixedEdge.binarize``, ``set_arch_param_grad``,
``rescale_updated_arch_param``).

Per choice key the policy holds logits ``alpha`` (``p = softmax(alpha)``) and a seeded
generator (its state is in ``state_dict()``, so a resumed search draws the same paths):

* :meth:`BinaryGatePolicy.forward` / :meth:`sample_path`: one candidate per key drawn from ``p``
  (the binary gate ``g`` is one-hot on it), returned as a single path: only that candidate runs,
  so memory is that of one path whatever the number of candidates;
* :meth:`sample_pairs`: the "two path" sample of the architecture step: two distinct candidates
  drawn from ``p`` without replacement, and one of them made active with the probabilities
  ``softmax(alpha)`` restricted to the pair; the path runs both through
  :class:`~nasforge.nn.choice.Gates` (gate 1 on the active one, 0 on the other);
* :func:`pair_alpha_grad`: the gate gradients ``dL/dg`` of the pair mapped to the pair's two
  logits, ``dL/dalpha_i = sum_j dL/dg_j p~_j (delta_ij - p~_i)`` with ``p~`` the softmax over the
  pair (the reference's ``set_arch_param_grad`` in mode ``two``);
* :func:`rescale_pair`: after the optimizer step, both updated logits are shifted by
  ``log(sum exp(new)) - log(sum exp(old))`` over the pair, so the probabilities of the keys'
  other candidates are what they were before the step (``rescale_updated_arch_param``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nasforge.nn.choice import Gates, Path
from nasforge.policies.base import ArchLogits, Policy


@dataclass(frozen=True)
class PairSample:
    """The two candidates of one key in an architecture step: ``active`` (gate 1) and ``inactive`` (gate 0)."""

    active: int
    inactive: int

    @property
    def pair(self) -> tuple[int, int]:
        return (self.active, self.inactive)


def pair_alpha_grad(alpha: torch.Tensor, pair: Sequence[int], gate_grad: torch.Tensor) -> torch.Tensor:
    """``dL/dalpha`` (zero outside ``pair``) from the gate gradients of the two sampled candidates.

    ``grad[pair[i]] = sum_j gate_grad[pair[j]] * q[j] * (delta_ij - q[i])`` with
    ``q = softmax(alpha[pair])`` (ProxylessNAS eq. 4 restricted to the pair; reference
    ``MixedEdge.set_arch_param_grad``, mode ``two``).
    """
    idx = list(pair)
    q = torch.softmax(alpha.detach()[idx], dim=0)
    g = gate_grad.detach()[idx]
    out = torch.zeros_like(alpha.detach())
    for i in range(len(idx)):
        out[idx[i]] = sum(g[j] * q[j] * ((1.0 if i == j else 0.0) - q[i]) for j in range(len(idx)))
    return out


@torch.no_grad()
def rescale_pair(alpha: torch.Tensor, pair: Sequence[int], old: Sequence[float]) -> None:
    """Shift the updated logits of ``pair`` so their total probability mass is what it was.

    ``alpha[pair] -= log(sum exp(alpha[pair])) - log(sum exp(old))`` (reference
    ``rescale_updated_arch_param``): the other candidates' probabilities are then unchanged.
    """
    idx = list(pair)
    new = torch.logsumexp(alpha[idx].double(), dim=0)
    before = torch.logsumexp(torch.tensor(list(old), dtype=torch.float64), dim=0)
    alpha[idx] -= (new - before).to(alpha.dtype)


class BinaryGatePolicy(Policy):
    """ProxylessNAS binary gates over the candidates of every choice key (see the module docstring).

    Args:
        choices: the supernet's ``choices()``.
        init_scale: logits start at ``init_scale * N(0, 1)`` (reference ``arch_init_ratio`` 1e-3,
            ``arch_init_type`` normal).
        seed: seed of the policy's own generator (paths, pairs).
    """

    name = "binary_gate"

    def __init__(self, choices: Mapping[str, Sequence[str]], *, init_scale: float = 1e-3, seed: int = 0) -> None:
        super().__init__(choices)
        self.logits = ArchLogits(self.choices, init_scale=init_scale)
        self.generator = torch.Generator().manual_seed(int(seed) % 2**63)

    # ---- probabilities -----------------------------------------------------------------------
    def probs(self) -> dict[str, torch.Tensor]:
        """``softmax(alpha)`` per key, differentiable in the logits (for the expected latency)."""
        return {k: torch.softmax(self.logits[k], dim=-1) for k in self.choices}

    def strengths(self) -> dict[str, torch.Tensor]:
        return {k: torch.softmax(self.logits[k].detach(), dim=-1) for k in self.choices}

    def argmax_path(self) -> dict[str, str]:
        """The final architecture of ProxylessNAS: the most probable candidate of every key."""
        return {k: opts[int(self.logits[k].detach().argmax())] for k, opts in self.choices.items()}

    # ---- sampling ------------------------------------------------------------------------------
    def _draw(self, p: torch.Tensor, n: int) -> list[int]:
        drawn = torch.multinomial(p.detach().cpu().double(), n, replacement=False, generator=self.generator)
        return [int(i) for i in drawn.tolist()]

    def sample_indices(self) -> dict[str, int]:
        """One candidate index per key drawn from ``softmax(alpha)`` (the weight step's binary gate)."""
        return {k: self._draw(p, 1)[0] for k, p in self.strengths().items()}

    def sample_path(self) -> dict[str, str]:
        """The single path of :meth:`sample_indices` (only the sampled candidates run)."""
        return {k: self.choices[k][i] for k, i in self.sample_indices().items()}

    def forward(self) -> Path:
        return self.sample_path()

    def sample_pairs(self) -> dict[str, PairSample]:
        """Two distinct candidates per key from ``softmax(alpha)`` and the active one of the pair.

        A key with a single candidate gets that candidate twice (it has nothing to compare).
        """
        out: dict[str, PairSample] = {}
        for k, p in self.strengths().items():
            if p.numel() < 2:
                out[k] = PairSample(0, 0)
                continue
            a, b = self._draw(p, 2)
            q = torch.softmax(self.logits[k].detach()[[a, b]], dim=0)
            c = self._draw(q, 1)[0]
            out[k] = PairSample(*((a, b) if c == 0 else (b, a)))
        return out

    def gated_path(self, pairs: Mapping[str, PairSample]) -> tuple[dict[str, Gates], dict[str, torch.Tensor]]:
        """The two-path path of ``pairs`` and the gate tensors (leaves needing a gradient), per key."""
        path: dict[str, Gates] = {}
        gates: dict[str, torch.Tensor] = {}
        for k, s in pairs.items():
            g = torch.zeros(len(self.choices[k]), device=self.logits[k].device)
            g[s.active] = 1.0
            g.requires_grad_(True)
            gates[k] = g
            run = (s.active,) if s.active == s.inactive else s.pair
            path[k] = Gates(g, run)
        return path, gates

    # ---- state ---------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def log_prob_of(policy: BinaryGatePolicy, indices: Mapping[str, int]) -> torch.Tensor:
    """``sum_k log softmax(alpha_k)[indices[k]]`` (REINFORCE's log-probability of a sampled path)."""
    terms = [torch.log_softmax(policy.logits[k], dim=-1)[i] for k, i in indices.items()]
    return torch.stack(terms).sum()
