"""Neural Architecture Optimization (NAO): gradient steps in a learned continuous embedding.

Luo, Tian, Qin, Chen & Liu, "Neural Architecture Optimization", NeurIPS 2018. Reference
implementation: ``renqianluo/NAO_pytorch`` (``NAO_V1/train_search.py``, ``controller.py``,
``encoder.py``, ``decoder.py``); read to understand it, nothing is copied.

The model (the paper's encoder ``E``, performance predictor ``f`` and decoder ``D``):

* **encoder**: the architecture as its decision sequence (``space.encode_sequence``; each option
  is a token of one vocabulary shared by all decisions, keyed by the option's name as NAO shares
  op and node tokens) -> embedding -> one-layer LSTM; every output is L2-normalised (the
  reference's ``F.normalize``), and the architecture embedding ``e_x`` is the L2-normalised mean
  of the outputs;
* **predictor**: an MLP on ``e_x`` (``mlp_layers`` ReLU layers of ``mlp_hidden`` units, then one
  linear unit) with a sigmoid output, regressing the told fitness min-max normalised to
  ``[0, 1]`` over the told trials (the reference's ``encoder_target``);
* **decoder**: a one-layer LSTM started from ``(h, c) = (e_x, e_x)``, fed the previous token
  (a start token first), with dot-product attention over the encoder outputs (output
  ``tanh(W [context; h])``, the reference's ``Attention``) and a linear layer to the vocabulary.
  Tokens that are not options of the decision at that position are masked out, in training and
  in decoding, so every decoded sequence names one option per decision.

Joint loss: ``trade_off * MSE(f(e_x), y) + (1 - trade_off) * CE(D(e_x), x)``, ``trade_off``
= 0.8 (the paper's lambda, the reference's ``controller_trade_off``); Adam, learning rate 1e-3,
mini-batches of 100, gradient-norm clipping at 5 (all the reference's defaults). All parameters
are initialised uniformly in ``[-0.04, 0.04]`` (the reference's ``INITRANGE``) from a
``torch.Generator`` seeded from ``self.rng``, which also shuffles the mini-batches.

Search loop (the paper's Algorithm 1, as the reference runs it):

1. Propose ``num_init`` distinct uniform samples (paper: 600 for CIFAR-10; here 20, scaled to
   the 150-query benchmark runs).
2. When those are spent (and after every later batch): train the model ``epochs`` more epochs on
   every told trial (the model is kept from one iteration to the next, with a fresh Adam each
   time, as the reference does); take the ``num_seeds`` best told architectures; compute the
   gradient ``g`` of the predicted value with respect to the encoder outputs and, for step size
   ``eta = 1, 2, ..., max_step_size``, move the outputs to ``normalize(h + eta * g)`` (direction
   ``+``: fitness is maximised), re-derive ``e_x`` and decode greedily; collect, in order of
   ``eta`` and then seed rank, decoded architectures never proposed before, until ``num_new``
   are found (the reference's growing ``predict_step_size`` loop, up to 50).
3. Propose them, then repeat from 2.

A failed trial (fitness ``-inf``) is never proposed again and enters the predictor's training
set with target 0 (the worst normalised value); it is never a seed.

Defaults and where they come from: ``trade_off`` 0.8 (paper), ``max_step_size`` 50,
``batch_size`` 100, ``lr`` 1e-3 (reference). Budget-scaled (the paper searches with 600 + 3 x 300
evaluated architectures, 1000 training epochs per iteration and a 96-unit LSTM with a 3 x 200
MLP; the benchmark runs here have 150 table queries and keep the search under about 50 ms of
CPU per proposal on nb201): ``num_init`` 20, ``num_new`` 10 per iteration, ``num_seeds`` 20
(paper: top 100), ``hidden_size`` 32, ``mlp_layers`` 2 x ``mlp_hidden`` 32, ``epochs`` 80 per
iteration (cumulative: the model is trained 80 more epochs on the grown data set at every
iteration, 1,040 epochs over a 150-query run). Measured on the NB201 table (test accuracy of the
best-by-validation cell after 150 queries, seeds 0-19, one CPU thread): 30 epochs with 64 units
93.74 (10 seeds; random search 93.93 on them: too little training, the decoded moves were no
better than random samples), 60 epochs 93.91, 80 epochs 94.01 (about 43 ms per proposal), 100 epochs 94.13 (about
50-70 ms per proposal).

Deviations from the paper / reference:

- Budget-scaled sizes and epochs (above).
- No dropout (the reference's MLP dropout 0.1 would draw from torch's global RNG) and no data
  augmentation by swapping the two inputs of a node (``controller_expand``: DARTS-cell specific).
- No 90/10 validation split of the controller data (the reference uses it only for logging).
- When ``max_step_size`` steps yield fewer than ``num_new`` new architectures, the rest of the
  batch are uniform samples never proposed before (the reference proposes fewer); a decoded
  sequence the space rejects (``space.is_valid``) is skipped the same way.
- Tokens outside the decision's options are masked during training as well as decoding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError, check_float, check_int, check_probability
from nasforge.registry import register
from nasforge.searchers.base import Searcher, torch_generator
from nasforge.spaces.base import SearchSpace

INIT_RANGE = 0.04  # the reference's uniform initialisation range
_MAX_REJECTIONS = 10_000


class EncoderPredictorDecoder(nn.Module):
    """NAO's encoder ``E``, predictor ``f`` and attention decoder ``D`` (see the module docstring).

    Args:
        vocab: number of option tokens (the decoder adds a start token).
        mask: ``(length, vocab)`` bool tensor, True where a token is an option of that position.
        hidden: embedding and LSTM size of encoder and decoder.
        mlp_layers, mlp_hidden: the predictor's hidden ReLU layers.
    """

    mask: torch.Tensor

    def __init__(self, vocab: int, mask: torch.Tensor, hidden: int, mlp_layers: int, mlp_hidden: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.register_buffer("mask", mask)
        self.enc_embedding = nn.Embedding(vocab, hidden)
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True)
        layers: list[nn.Module] = []
        width = hidden
        for _ in range(mlp_layers):
            layers += [nn.Linear(width, mlp_hidden), nn.ReLU()]
            width = mlp_hidden
        self.mlp = nn.Sequential(*layers)
        self.regressor = nn.Linear(width, 1)
        self.dec_embedding = nn.Embedding(vocab + 1, hidden)  # last token = start of sequence
        self.decoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.attn_out = nn.Linear(2 * hidden, hidden)
        self.classifier = nn.Linear(hidden, vocab)

    def init_uniform(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-INIT_RANGE, INIT_RANGE, generator=generator)

    # ---- encoder and predictor ----------------------------------------------------------
    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised encoder outputs ``(B, L, H)``."""
        out, _ = self.encoder(self.enc_embedding(tokens))
        return F.normalize(out, p=2, dim=-1)

    @staticmethod
    def pool(outputs: torch.Tensor) -> torch.Tensor:
        """The architecture embedding: the L2-normalised mean of the encoder outputs."""
        return F.normalize(outputs.mean(dim=1), p=2, dim=-1)

    def predict(self, embedding: torch.Tensor) -> torch.Tensor:
        """Predicted normalised fitness in (0, 1), shape ``(B,)``."""
        return torch.sigmoid(self.regressor(self.mlp(embedding))).squeeze(-1)

    # ---- decoder ------------------------------------------------------------------------
    def _attend(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(h @ context.transpose(1, 2), dim=-1)
        return torch.tanh(self.attn_out(torch.cat([weights @ context, h], dim=-1)))

    def _logits(self, h: torch.Tensor, context: torch.Tensor, positions: slice) -> torch.Tensor:
        logits = self.classifier(self._attend(h, context))
        return logits.masked_fill(~self.mask[positions], float("-inf"))

    def decode_teacher(self, embedding: torch.Tensor, context: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, vocab)`` of every position given the true previous tokens."""
        start = torch.full((targets.shape[0], 1), self.vocab, dtype=torch.long)
        inputs = torch.cat([start, targets[:, :-1]], dim=1)
        state = (embedding.unsqueeze(0).contiguous(), embedding.unsqueeze(0).contiguous())
        h, _ = self.decoder(self.dec_embedding(inputs), state)
        return self._logits(h, context, slice(0, targets.shape[1]))

    @torch.no_grad()
    def decode_greedy(self, embedding: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The most likely valid token at every position, feeding back each choice ``(B, L)``."""
        batch, length = embedding.shape[0], context.shape[1]
        token = torch.full((batch, 1), self.vocab, dtype=torch.long)
        state = (embedding.unsqueeze(0).contiguous(), embedding.unsqueeze(0).contiguous())
        out = []
        for t in range(length):
            h, state = self.decoder(self.dec_embedding(token), state)
            token = self._logits(h, context, slice(t, t + 1)).argmax(dim=-1)
            out.append(token)
        return torch.cat(out, dim=1)

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor, trade_off: float) -> torch.Tensor:
        """``trade_off * MSE(predictor) + (1 - trade_off) * reconstruction cross-entropy``."""
        context = self.encode(tokens)
        embedding = self.pool(context)
        mse = F.mse_loss(self.predict(embedding), targets)
        logits = self.decode_teacher(embedding, context, tokens)
        nll = F.cross_entropy(logits.reshape(-1, self.vocab), tokens.reshape(-1))
        return trade_off * mse + (1.0 - trade_off) * nll


@register("method", "nao")
class NAO(Searcher):
    """Neural Architecture Optimization (see the module docstring for the algorithm).

    Args:
        space: any space (the sequence is ``space.encode_sequence``).
        seed: seed of ``self.rng``, the only source of randomness.
        num_init: uniform samples proposed before the first model (paper 600).
        num_new: new architectures proposed per iteration (paper 300).
        num_seeds: best told architectures moved in the embedding (paper 100).
        epochs: training epochs per iteration (paper 1000; the model is kept between iterations).
        trade_off: lambda of the joint loss, in [0, 1] (paper 0.8).
        max_step_size: the largest step size eta tried (reference 50).
        hidden_size: encoder / decoder embedding and LSTM size (reference 64, paper 96).
        mlp_layers, mlp_hidden: the predictor MLP's hidden layers.
        batch_size: mini-batch size (reference 100).
        lr: Adam learning rate (reference 1e-3).

    Raises:
        BudgetError: a count (``num_init``, ``num_new``, ``num_seeds``, ``epochs``) out of range.
        ConfigError: a model option out of range.
    """

    name: ClassVar[str] = "nao"
    paper: ClassVar[str] = "Luo, Tian, Qin, Chen & Liu, Neural Architecture Optimization, NeurIPS 2018"
    no_repeats: ClassVar[bool] = True
    smoke_options: ClassVar[dict[str, Any]] = {
        "num_init": 6, "num_new": 4, "num_seeds": 4, "epochs": 2, "hidden_size": 16, "mlp_hidden": 16,
        "max_step_size": 10,
    }

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, num_init: int = 20, num_new: int = 10, num_seeds: int = 20,
        epochs: int = 80, trade_off: float = 0.8, max_step_size: int = 50, hidden_size: int = 32,
        mlp_layers: int = 2, mlp_hidden: int = 32, batch_size: int = 100, lr: float = 1e-3,
    ) -> None:
        super().__init__(space, seed=seed)
        self.num_init = check_int("num_init", num_init)
        self.num_new = check_int("num_new", num_new)
        self.num_seeds = check_int("num_seeds", num_seeds)
        self.epochs = check_int("epochs", epochs)
        self.max_step_size = check_int("max_step_size", max_step_size, error=ConfigError)
        self.hidden_size = check_int("hidden_size", hidden_size, error=ConfigError)
        self.mlp_layers = check_int("mlp_layers", mlp_layers, low=0, error=ConfigError)
        self.mlp_hidden = check_int("mlp_hidden", mlp_hidden, error=ConfigError)
        self.batch_size = check_int("batch_size", batch_size, error=ConfigError)
        self.trade_off = check_probability("trade_off", trade_off)
        self.lr = check_float("lr", lr, low=0.0, low_open=True)

        decisions = self.space.decisions()
        self._names = list(decisions)
        self._vocab: list[str] = []  # one token per distinct option name
        for opts in decisions.values():
            self._vocab.extend(o for o in opts if o not in self._vocab)
        self._token = {o: i for i, o in enumerate(self._vocab)}
        mask = torch.zeros(len(self._names), len(self._vocab), dtype=torch.bool)
        for t, opts in enumerate(decisions.values()):
            mask[t, [self._token[o] for o in opts]] = True
        self.generator = torch_generator(self.rng)
        with torch.random.fork_rng(devices=[]):  # the layers' default init draws from the global RNG
            self.model = EncoderPredictorDecoder(
                len(self._vocab), mask, self.hidden_size, self.mlp_layers, self.mlp_hidden
            )
        self.model.init_uniform(self.generator)  # the actual initialisation, from self.rng

        self.history: list[tuple[Arch, float]] = []  # told trials, in order
        self._proposed: set[Arch] = set()
        self._queue: list[Arch] = []
        self.iterations = 0  # model trainings so far

    @classmethod
    def options(cls) -> dict[str, Any]:
        return {
            "num_init": 20, "num_new": 10, "num_seeds": 20, "epochs": 80, "trade_off": 0.8, "max_step_size": 50,
            "hidden_size": 32, "mlp_layers": 2, "mlp_hidden": 32, "batch_size": 100, "lr": 1e-3,
        }

    # ---- encoding -----------------------------------------------------------------------
    def tokens(self, archs: list[Arch]) -> torch.Tensor:
        """The token sequences ``(B, L)`` of ``archs``."""
        return torch.tensor([[self._token[a[d]] for d in self._names] for a in archs], dtype=torch.long)

    def arch_of(self, tokens: list[int]) -> Arch:
        """The Arch a (masked, hence one option per decision) token sequence names."""
        return Arch(self.space.name, tuple((d, self._vocab[t]) for d, t in zip(self._names, tokens)))

    def targets(self) -> torch.Tensor:
        """The predictor's targets: told fitness min-max normalised to [0, 1]; failed trials 0."""
        finite = [f for _, f in self.history if math.isfinite(f)]
        low = min(finite, default=0.0)
        span = (max(finite) - low) if finite and max(finite) > low else 1.0
        return torch.tensor([(f - low) / span if math.isfinite(f) else 0.0 for _, f in self.history])

    # ---- the loop -----------------------------------------------------------------------
    def _random_unseen(self) -> Arch:
        for _ in range(_MAX_REJECTIONS):
            arch = self.space.sample(self.rng)
            if arch not in self._proposed and arch not in self._queue:
                return arch
        raise BudgetError(
            f"nao found no unproposed architecture of {self.space.name} in {_MAX_REJECTIONS} samples "
            f"({len(self._proposed)} proposed; the space may be exhausted)"
        )

    def train(self) -> None:
        """``epochs`` epochs of the joint loss on every told trial (a fresh Adam, model kept)."""
        tokens, targets = self.tokens([a for a, _ in self.history]), self.targets()
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.model.train()
        n = len(self.history)
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                loss = self.model.loss(tokens[idx], targets[idx], self.trade_off)
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
                optimizer.step()
        self.model.eval()
        self.iterations += 1

    def optimise(self, seeds: list[Arch]) -> list[list[Arch]]:
        """Decoded architectures of ``seeds`` moved by ``eta = 1..max_step_size`` along the gradient.

        Returns one list per step size (seed order kept); entries may repeat or be proposed already.
        """
        outputs = self.model.encode(self.tokens(seeds)).detach().requires_grad_(True)
        predicted = self.model.predict(self.model.pool(outputs))
        (grad,) = torch.autograd.grad(predicted.sum(), outputs)
        etas = torch.arange(1, self.max_step_size + 1, dtype=outputs.dtype).view(-1, 1, 1, 1)
        with torch.no_grad():
            moved = F.normalize(outputs.detach().unsqueeze(0) + etas * grad.unsqueeze(0), p=2, dim=-1)
            moved = moved.reshape(-1, *outputs.shape[1:])  # (eta, seed) flattened, eta-major
            decoded = self.model.decode_greedy(self.model.pool(moved), moved).tolist()
        n = len(seeds)
        return [[self.arch_of(seq) for seq in decoded[k * n:(k + 1) * n]] for k in range(self.max_step_size)]

    def _propose_batch(self) -> None:
        self.train()
        ranked = sorted((m for m in self.history if math.isfinite(m[1])), key=lambda m: -m[1])
        seeds = [a for a, _ in ranked[: self.num_seeds]]
        new: list[Arch] = []
        if seeds:
            for step in self.optimise(seeds):
                for arch in step:
                    if arch not in self._proposed and arch not in new and self.space.is_valid(arch):
                        new.append(arch)
                        if len(new) == self.num_new:
                            break
                if len(new) == self.num_new:
                    break
        self._queue.extend(new)
        while len(self._queue) < self.num_new:
            self._queue.append(self._random_unseen())

    def ask(self) -> Arch:
        if not self._queue:
            if len(self._proposed) < self.num_init or not self.history:
                self._queue.append(self._random_unseen())
            else:
                self._propose_batch()
        arch = self._queue.pop(0)
        self._proposed.add(arch)
        return arch

    def tell(self, arch: Arch, fitness: float, metrics: Mapping[str, float] | None = None) -> None:
        self.history.append((arch, float(fitness)))
