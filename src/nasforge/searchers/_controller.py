"""Shared pieces of the policy-gradient searchers (``nas_rl``, ``mnasnet_ppo``, ``reinforce``).

:class:`LSTMController` is the NAS-RL controller of Zoph & Le, "Neural Architecture Search with
Reinforcement Learning", ICLR 2017 (Section 3.1, Figure 2), also the controller of NASNet
(Zoph et al., CVPR 2018) and MnasNet (Tan et al., CVPR 2019): a stacked LSTM that emits one
architecture decision per time step, here the decisions of ``space.decisions()`` in canonical
order. Every step has its own softmax classifier over that decision's options and its own
option embedding; the embedding of the option taken is the next step's input. The first input
is a learned vector (the paper does not say what the first input is). All parameters are drawn
uniformly from ``[-init_range, init_range]`` (NAS-RL: 0.08; NASNet: 0.1) from a seeded
``torch.Generator``; modules are built inside :func:`torch.random.fork_rng`, so torch's global
RNG is never advanced.

It is independent of :mod:`nasforge.policies.controller` (the ENAS controller of the one-shot
ENAS method, which needs a supernet): there are two LSTM controllers in the package.

Structural validity: spaces whose ``check`` refuses some combinations of options are handled
by *rejection*: a sampled sequence that ``space.is_valid`` refuses is drawn again (up to
:data:`MAX_REJECTIONS` times). The policy-gradient update then uses the log-probability of the
accepted sequence under the unconstrained controller (the normaliser over valid sequences is
ignored). Every combination is valid in ``nb201``, ``darts`` (input pairs are one decision) and
``mobilenet``, so there this changes nothing; where valid combinations are rare (``randwire``:
about 0.3% of the option combinations, since unused generator parameters must be ``-``) each
``ask`` may cost hundreds to thousands of controller samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError, check_float, check_int
from nasforge.spaces.base import SearchSpace

MAX_REJECTIONS = 10_000  # as SearchSpace.sample


def log_softmax(z: Tensor) -> Tensor:
    """``log_softmax`` over the last dim as ``z - logsumexp(z)``.

    Same values as :func:`torch.nn.functional.log_softmax`; written out because ATen's CPU
    (log-)softmax kernels enter a parallel region even for a few logits, which costs milliseconds
    per call when the machine's cores are busy (intra-op threads wait to be scheduled). Use
    ``log_softmax(z).exp()`` for probabilities for the same reason.
    """
    return z - torch.logsumexp(z, dim=-1, keepdim=True)


class LSTMController(nn.Module):
    """NAS-RL LSTM controller over a fixed sequence of categorical decisions.

    Args:
        sizes: number of options of each decision, in emission order.
        hidden_size: LSTM hidden units per layer (= embedding size).
        num_layers: stacked LSTM layers.
        init_range: parameters start uniform in ``[-init_range, init_range]``.
        generator: the seeded generator for the initialisation.
    """

    @classmethod
    def for_space(cls, space: SearchSpace, *, lstm_size: int, lstm_layers: int, init_range: float,
                  generator: torch.Generator) -> LSTMController:
        """A controller with one softmax per decision of ``space`` (canonical order), its options
        checked (typed errors naming the option and the bad value)."""
        sizes = [len(opts) for opts in space.decisions().values()]
        return cls(sizes, hidden_size=check_int("lstm_size", lstm_size), num_layers=check_int("lstm_layers", lstm_layers),
                   init_range=check_float("init_range", init_range, low=0.0, low_open=True), generator=generator)

    def __init__(self, sizes: Sequence[int], *, hidden_size: int, num_layers: int, init_range: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.sizes = [int(k) for k in sizes]
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError(f"a controller needs at least one decision with options, got sizes {self.sizes}")
        h = hidden_size
        with torch.random.fork_rng(devices=[]):  # module constructors draw from the global RNG
            self.start = nn.Parameter(torch.empty(1, h))
            self.cells = nn.ModuleList(nn.LSTMCell(h, h) for _ in range(num_layers))
            self.heads = nn.ModuleList(nn.Linear(h, k) for k in self.sizes)
            self.embeds = nn.ModuleList(nn.Embedding(k, h) for k in self.sizes)
        with torch.no_grad():
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range, generator=generator)

    def _step(self, x: Tensor, state: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        new: list[tuple[Tensor, Tensor]] = []
        for cell, (h, c) in zip(self.cells, state):
            h, c = cell(x, (h, c))
            new.append((h, c))
            x = h
        return x, new

    def _zero_state(self, batch: int) -> list[tuple[Tensor, Tensor]]:
        h = self.start.shape[1]
        z = self.start.new_zeros(batch, h)
        return [(z, z) for _ in self.cells]

    def sample(self, generator: torch.Generator) -> list[int]:
        """Draw one option index per decision (no gradient)."""
        out: list[int] = []
        with torch.no_grad():
            x, state = self.start, self._zero_state(1)
            for t in range(len(self.sizes)):
                h, state = self._step(x, state)
                probs = log_softmax(self.heads[t](h)).exp()
                a = int(torch.multinomial(probs, 1, generator=generator).item())
                out.append(a)
                x = self.embeds[t](torch.tensor([a]))
        return out

    def log_prob(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced log-probability and entropy (each ``[B]``) of action sequences ``[B, T]``."""
        batch = actions.shape[0]
        x, state = self.start.expand(batch, -1), self._zero_state(batch)
        logp = self.start.new_zeros(batch)
        ent = self.start.new_zeros(batch)
        for t in range(len(self.sizes)):
            h, state = self._step(x, state)
            lsm = log_softmax(self.heads[t](h))
            logp = logp + lsm.gather(1, actions[:, t : t + 1]).squeeze(1)
            ent = ent - (lsm.exp() * lsm).sum(dim=1)
            x = self.embeds[t](actions[:, t])
        return logp, ent

    def probability(self, actions: Sequence[int]) -> float:
        """Probability of one action sequence (for tests and diagnostics)."""
        with torch.no_grad():
            logp, _ = self.log_prob(torch.tensor([list(actions)], dtype=torch.long))
        return float(logp.exp().item())


def sample_arch(space: SearchSpace, draw: Callable[[], list[int]], *, what: str) -> tuple[Arch, list[int]]:
    """Draw sequences with ``draw()`` (option indices in canonical order) until one is a valid
    Arch of ``space`` (rejection; see the module docstring)."""
    for _ in range(MAX_REJECTIONS):
        seq = draw()
        arch = space.arch_from_indices(seq)
        if space.is_valid(arch):
            return arch, list(seq)
    raise ArchError(f"{what} drew no valid architecture of {space.name} in {MAX_REJECTIONS} tries")


def finite_or_none(value: float) -> float | None:
    """``value`` as a float if finite; None for -inf, +inf and NaN (failed trials)."""
    v = float(value)
    return v if math.isfinite(v) else None


def batch_advantages(baseline: float | None, rewards: Sequence[float]) -> tuple[float, Tensor]:
    """``(baseline, advantages)`` of one batch: ``r - b``, the baseline starting at the first batch's mean.

    The moving-average baseline of NAS-RL / NASNet (Zoph & Le 2017, sec. 3.2; the starting value
    is this implementation's choice); move it after the update with :func:`decayed_baseline`.
    """
    b = sum(rewards) / len(rewards) if baseline is None else baseline
    return b, torch.tensor([r - b for r in rewards], dtype=torch.float32)


def decayed_baseline(baseline: float, decay: float, rewards: Sequence[float]) -> float:
    """The exponential moving average ``b <- decay * b + (1 - decay) * r`` over ``rewards`` in told order."""
    for r in rewards:
        baseline = decay * baseline + (1.0 - decay) * r
    return baseline
