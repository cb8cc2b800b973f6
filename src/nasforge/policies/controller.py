"""The ENAS controller: an LSTM that emits an architecture decision by decision.

Pham, Guan, Zoph, Le & Dean, "Efficient Neural Architecture Search via Parameter Sharing",
ICML 2018. Two sampling schemes, picked by the space:

* **sequence** (``nb201`` and any space whose every combination of options is valid): one LSTM
  step per decision of ``space.decisions()`` in canonical order, as xautodl's NAS-Bench-201
  ENAS controller (``xautodl/models/cell_searchs/search_model_enas_utils.py``): the first input
  is a learned vector, each step's top LSTM output goes through a linear head onto the
  decision's options, and the embedding of the option taken is the next input. Decisions with
  the same option list share one head and one embedding (all six nb201 edges share them, as
  xautodl's ``w_pred`` / ``w_embd``).
* **micro** (``darts``): the ENAS micro-search sampler (``melodyguan/enas``
  ``src/cifar10/micro_controller.py``, ``_build_sampler``). Per cell type (normal, then reduce,
  the LSTM state carried over as in the reference), two LSTM steps on a learned vector create
  the anchors of the two cell inputs; then per intermediate node: two steps choose two inputs
  by attention over the anchors of all earlier nodes (``v^T tanh(W1 h_j + W2 h)``), two steps
  choose two ops (linear head over the 7 ops of the space), and one more step makes the node's
  anchor. Inputs taken feed their anchor (zeros for the cell inputs) as the next LSTM input;
  ops feed their embedding. The sample ``(x, op_x), (y, op_y)`` of a node becomes the space's
  canonical ``"min,max"`` pair with the ops in that order.

The LSTM is the reference's ``stack_lstm`` (``src/common_ops.py``): per layer one bias-free
weight ``W`` of shape ``[2H, 4H]``, ``i, f, o, g = split([x, h] @ W)``,
``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``, ``h' = sigmoid(o) * tanh(c')``; the next layer
reads ``h'`` (xautodl uses ``torch.nn.LSTM``, which adds biases).

Logits as ENAS: ``logits / temperature`` (when set), then ``c * tanh(logits)`` with ``c`` the
tanh constant for inputs and ``tanh_constant / op_tanh_reduce`` for ops (when set). Every
parameter is initialised uniformly in ``[-0.1, 0.1]`` (reference initializer) except the
biases of the op heads, which start at zero.

Deviations from the micro reference (the darts space is not the ENAS micro space):

* a node's two inputs must differ in the DARTS space (ENAS allows the same input twice): the
  second input is drawn from the node's predecessors *other than the first* (the first one is
  masked out, so its log-probability and entropy are those of the renormalised distribution);
* the ops are the 7 DARTS ops (``none`` excluded), not ENAS's 5 branches; the reference's
  hand-set op prior (``b_soft`` initialised to ``[10, 10, 0, ...]`` on its two separable
  convolutions, and the fixed ``b_soft_no_learn`` of the normal cell) is not used;

The log-probability of a sample is that of its decision *sequence*: in the micro scheme a
genotype can be reached by two orders per node, and REINFORCE only needs the sequence's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.nn.choice import Path, Supernet
from nasforge.policies.base import Policy
from nasforge.spaces.base import SearchSpace
from nasforge.spaces.darts import CELL_TYPES, OPS, STEPS, DartsSpace
from nasforge.train.sampled import one_hot_strengths

LSTMState = list[tuple[Tensor, Tensor]]  # per layer (h, c), each [1, H]


@dataclass(frozen=True)
class Step:
    """One decision of a controller sample."""

    name: str  # e.g. "edge_2_1" (sequence) or "normal_n0_in2" / "reduce_n3_op1" (micro)
    options: tuple[str, ...]  # what could be chosen (the first input is masked out of "*_in2")
    logits: Tensor  # the logits the choice was drawn from, after temperature and tanh (differentiable)
    index: int  # position of the option taken in ``options``

    @property
    def choice(self) -> str:
        return self.options[self.index]


@dataclass(frozen=True)
class ControllerSample:
    """An architecture drawn by the controller with what REINFORCE needs."""

    arch: Arch
    steps: tuple[Step, ...]
    log_prob: Tensor  # sum over steps of log softmax(logits)[index] (scalar, differentiable)
    entropy: Tensor  # sum over steps of the entropy of softmax(logits) (scalar, differentiable)

    @property
    def actions(self) -> list[int]:
        """The option indices taken, in step order (replay them with :meth:`ControllerPolicy.score`)."""
        return [s.index for s in self.steps]


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"controller {name} must be an int > 0, got {value!r}")


def _check_positive(name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        allowed = "a finite number > 0 or None" if optional else "a finite number > 0"
        raise ConfigError(f"controller {name} must be {allowed}, got {value!r}")


class ControllerPolicy(Policy):
    """ENAS LSTM controller over the architectures of ``space`` (see the module docstring).

    ``forward()`` draws a fresh architecture and returns ``supernet.path_for(arch)`` (one single
    path); :attr:`last` holds the :class:`ControllerSample` (arch, log-probability, entropy).
    Sampling uses the policy's own seeded CPU generator, whose state is in ``state_dict()``, so a
    checkpoint restores the stream of architectures; call it under ``torch.no_grad()`` when the
    log-probability is not needed.

    Args:
        space: the search space (``darts``: micro scheme; otherwise the sequence scheme).
        supernet: its supernet (for ``path_for`` and the choice keys).
        lstm_size: hidden size of the LSTM and of the embeddings.
        lstm_layers: stacked LSTM layers.
        temperature: logits are divided by it first; ``None``: not applied.
        tanh_constant: logits become ``c * tanh(logits)``; ``None``: not applied.
        op_tanh_reduce: op logits use ``tanh_constant / op_tanh_reduce`` (ENAS micro).
        seed: seed of the sampling generator.
    """

    name = "controller"

    def __init__(
        self, space: SearchSpace, supernet: Supernet, *, lstm_size: int = 64, lstm_layers: int = 1,
        temperature: float | None = None, tanh_constant: float | None = 1.10, op_tanh_reduce: float = 2.5,
        seed: int = 0,
    ) -> None:
        super().__init__(supernet.choices())
        _check_positive_int("lstm_size", lstm_size)
        _check_positive_int("lstm_layers", lstm_layers)
        _check_positive("temperature", temperature, optional=True)
        _check_positive("tanh_constant", tanh_constant, optional=True)
        _check_positive("op_tanh_reduce", op_tanh_reduce, optional=False)
        self.space, self._supernet_path = space, supernet.path_for
        self.temperature, self.tanh_constant, self.op_tanh_reduce = temperature, tanh_constant, op_tanh_reduce
        self.scheme = "micro" if isinstance(space, DartsSpace) else "sequence"
        h = lstm_size
        self.g_emb = nn.Parameter(torch.empty(1, h))  # first LSTM input (ENAS g_emb, xautodl input_vars)
        self.lstm = nn.ParameterList(nn.Parameter(torch.empty(2 * h, 4 * h)) for _ in range(lstm_layers))
        self.heads = nn.ModuleList()
        self.embeds = nn.ModuleList()
        self._sequence: list[tuple[str, tuple[str, ...], int]] = []  # (decision, options, head index)
        if self.scheme == "micro":
            self.heads.append(nn.Linear(h, len(OPS)))
            self.embeds.append(nn.Embedding(len(OPS), h))
            self.attn_anchor = nn.Linear(h, h, bias=False)  # ENAS w_attn_1 (applied to each anchor)
            self.attn_query = nn.Linear(h, h, bias=False)  # ENAS w_attn_2 (applied to the current output)
            self.attn_v = nn.Linear(h, 1, bias=False)  # ENAS v_attn
        else:
            groups: dict[tuple[str, ...], int] = {}
            for decision, options in space.decisions().items():
                options = tuple(options)
                if options not in groups:
                    groups[options] = len(groups)
                    self.heads.append(nn.Linear(h, len(options)))
                    self.embeds.append(nn.Embedding(len(options), h))
                self._sequence.append((decision, options, groups[options]))
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.1, 0.1)
            for g in range(len(self.heads)):
                self._head(g).bias.zero_()
        self._gen = torch.Generator().manual_seed(int(seed))
        self.last: ControllerSample | None = None

    # ---- sampling --------------------------------------------------------------------------
    def sample(self, *, greedy: bool = False) -> ControllerSample:
        """Draw an architecture (advances the generator); ``greedy``: take the argmax at every step."""
        return self._run("greedy" if greedy else "sample", None)

    def score(self, actions: Sequence[int]) -> ControllerSample:
        """Replay the option indices ``actions`` (teacher forcing): their log-probability and entropy."""
        actions = list(actions)
        forced = iter(actions)
        out = self._run("forced", forced)
        if next(forced, None) is not None:
            raise ArchError(f"{len(actions)} actions given; the controller takes {len(out.steps)}")
        return out

    def actions_for(self, arch: Arch) -> list[int]:
        """The action sequence that produces ``arch`` (sequence scheme: one per decision).

        In the micro scheme a genotype has two orders per node; this gives the one listing the
        lower input first.
        """
        self.space.validate(arch)
        if self.scheme == "sequence":
            return [options.index(arch[d]) for d, options, _ in self._sequence]
        actions: list[int] = []
        for cell in CELL_TYPES:
            for i in range(STEPS):
                a, b = (int(s) for s in arch[f"{cell}_n{i}_in"].split(","))
                actions += [a, b - 1, OPS.index(arch[f"{cell}_n{i}_op_a"]), OPS.index(arch[f"{cell}_n{i}_op_b"])]
        return actions

    def forward(self) -> Path:
        self.last = self.sample()
        return self._supernet_path(self.last.arch)

    def strengths(self) -> dict[str, Tensor]:
        """One-hot of the greedy (argmax per step) architecture's path: ``space.derive`` returns that arch."""
        with torch.no_grad():
            arch = self.sample(greedy=True).arch
        return one_hot_strengths(self.choices, self._supernet_path(arch))

    def greedy_probabilities(self) -> dict[str, list[float]]:
        """Per step of the greedy decode, the probabilities of its options (what the controller prefers)."""
        with torch.no_grad():
            steps = self.sample(greedy=True).steps
        return {s.name: F.softmax(s.logits, dim=-1).tolist() for s in steps}

    # ---- internals -------------------------------------------------------------------------
    def _run(self, how: str, forced: Iterator[int] | None) -> ControllerSample:
        steps: list[Step] = []
        if self.scheme == "micro":
            mapping = self._run_micro(how, forced, steps)
        else:
            mapping = self._run_sequence(how, forced, steps)
        try:
            arch = self.space.make(mapping)
        except ArchError as e:
            raise ArchError(f"the controller's sequence scheme drew an invalid {self.space.name} architecture ({e}); "
                            "it needs a space where every combination of options is valid") from None
        log_prob = torch.stack([F.log_softmax(s.logits, dim=-1)[s.index] for s in steps]).sum()
        entropy = torch.stack([_entropy(s.logits) for s in steps]).sum()
        return ControllerSample(arch, tuple(steps), log_prob, entropy)

    def _head(self, g: int) -> nn.Linear:
        return cast(nn.Linear, self.heads[g])

    def _embedding(self, g: int, index: int) -> Tensor:
        return cast(nn.Embedding, self.embeds[g]).weight[index].view(1, -1)

    def _lstm_step(self, x: Tensor, state: LSTMState | None) -> tuple[Tensor, LSTMState]:
        """One step of the stacked LSTM (ENAS ``stack_lstm``); ``state=None``: zeros. Returns the top ``h``."""
        if state is None:
            zero = x.new_zeros(1, x.shape[-1])
            state = [(zero, zero)] * len(self.lstm)
        new_state: LSTMState = []
        for w, (h, c) in zip(self.lstm, state):
            i, f, o, g = (torch.cat([x, h], dim=1) @ w).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c)
            new_state.append((x, c))
        return x, new_state

    def _scale(self, logits: Tensor, constant: float | None) -> Tensor:
        if self.temperature is not None:
            logits = logits / self.temperature
        if constant is not None:
            logits = constant * torch.tanh(logits)
        return logits

    def _op_constant(self) -> float | None:
        return None if self.tanh_constant is None else self.tanh_constant / self.op_tanh_reduce

    def _pick(self, name: str, options: tuple[str, ...], logits: Tensor, how: str,
              forced: Iterator[int] | None, steps: list[Step]) -> int:
        if forced is not None:
            index = next(forced, None)
            if index is None:
                raise ArchError(f"too few actions: none left for step {len(steps)} ({name})")
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(options):
                raise ArchError(f"action {index!r} of step {name} out of range; valid: 0..{len(options) - 1}")
        elif how == "greedy":
            index = int(logits.detach().argmax())  # ties: the first option
        else:
            probs = F.softmax(logits.detach().float().cpu(), dim=-1)
            index = int(torch.multinomial(probs, 1, generator=self._gen))
        steps.append(Step(name, options, logits, index))
        return index

    def _run_sequence(self, how: str, forced: Iterator[int] | None, steps: list[Step]) -> dict[str, str]:
        x: Tensor = self.g_emb
        state: LSTMState | None = None
        mapping: dict[str, str] = {}
        op_constant = self._op_constant()  # every decision of the sequence scheme picks an op
        for decision, options, g in self._sequence:
            out, state = self._lstm_step(x, state)
            logits = self._scale(self._head(g)(out).view(-1), op_constant)
            index = self._pick(decision, options, logits, how, forced, steps)
            mapping[decision] = options[index]
            x = self._embedding(g, index)
        return mapping

    def _run_micro(self, how: str, forced: Iterator[int] | None, steps: list[Step]) -> dict[str, str]:
        state: LSTMState | None = None
        mapping: dict[str, str] = {}
        op_constant = self._op_constant()
        for cell in CELL_TYPES:  # the reduce cell's sampler starts from the normal cell's final state
            anchors: list[Tensor] = []
            anchors_w: list[Tensor] = []
            for _ in range(2):  # the two cell inputs: zero anchors, attention keys from the LSTM
                out, state = self._lstm_step(self.g_emb, state)
                anchors.append(torch.zeros_like(out))
                anchors_w.append(self.attn_anchor(out))
            x: Tensor = self.g_emb
            for i in range(STEPS):
                n = i + 2  # predecessors of intermediate node i: cell nodes 0 .. i+1
                inputs: list[int] = []
                for k in range(2):
                    out, state = self._lstm_step(x, state)
                    query = torch.tanh(torch.cat(anchors_w) + self.attn_query(out))
                    logits = self._scale(self.attn_v(query).view(-1), self.tanh_constant)
                    allowed = [j for j in range(n) if j not in inputs]  # distinct inputs (see module doc)
                    logits = logits[allowed]
                    index = self._pick(f"{cell}_n{i}_in{k + 1}", tuple(str(j) for j in allowed), logits, how, forced, steps)
                    inputs.append(allowed[index])
                    x = anchors[allowed[index]]
                ops: list[str] = []
                for k in range(2):
                    out, state = self._lstm_step(x, state)
                    logits = self._scale(self._head(0)(out).view(-1), op_constant)
                    index = self._pick(f"{cell}_n{i}_op{k + 1}", OPS, logits, how, forced, steps)
                    ops.append(OPS[index])
                    x = self._embedding(0, index)
                out, state = self._lstm_step(x, state)
                anchors.append(out)
                anchors_w.append(self.attn_anchor(out))
                x = self.g_emb
                (a, op_a), (b, op_b) = sorted(zip(inputs, ops))  # canonical: lower input first
                mapping[f"{cell}_n{i}_in"] = f"{a},{b}"
                mapping[f"{cell}_n{i}_op_a"], mapping[f"{cell}_n{i}_op_b"] = op_a, op_b
        return mapping

    # ---- state -----------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self._gen.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._gen.set_state(state["generator"].cpu())


def _entropy(logits: Tensor) -> Tensor:
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum()
