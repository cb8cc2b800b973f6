"""Plain PyTorch NAS-Bench-201 supernet: one search step of DARTS / GDAS / SPOS, and a fixed-network step.

    .venv/bin/python benchmarks/peers/plain_worker.py --method darts --steps 10 --warmup 2 --seed 0

A hand-written baseline (torch only, no NAS library): every edge is a ``MixedEdge`` holding the 5
candidate ops in a ``ModuleList``, combined with a python-loop weighted sum as in the DARTS
reference code. What one measured step is (see ``_protocol`` for the shared settings):

- darts: weight step (softmax(alpha)-weighted sum of ALL 5 ops on every edge, "none" included as
  ``x * 0``; forward, backward, grad-norm clip 5, SGD) + arch step (same forward on the valid
  batch, backward, Adam on alpha). Weights are not frozen during the arch step (their grads are
  computed and thrown away, as in xautodl and NNI).
- gdas: hard Gumbel-softmax with straight-through, tau=10, one sample per forward shared by all
  cells; only the sampled op of each edge runs, the other hard weights enter as scalars so alpha
  gets the straight-through gradient of every candidate (GDAS paper / xautodl). Weight step +
  arch step as for darts.
- spos: one op per edge drawn uniformly, shared by all cells (one cell architecture per step),
  then one weight step (forward, backward, clip 5, SGD). No arch step.
- fixed: stand-alone NB201 network of ``_protocol.fixed_arch(seed)`` (affine BN with running
  stats, as a network trained on its own), forward, backward, SGD. No clipping.

Search cells use BatchNorm(affine=False, track_running_stats=False), as xautodl does for its
NB201 search runs; the stem, the residual reduction blocks and the head keep ordinary BN.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocol as P  # noqa: E402

IMPL = "plain"


class ConvOp(nn.Module):
    """ReLU -> conv (no bias) -> BN."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, affine: bool, track: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine, track_running_stats=track)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(F.relu(x)))


class AvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(name: str, c: int, affine: bool, track: bool) -> nn.Module:
    """One NB201 candidate at stride 1 with ``c`` channels in and out."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ConvOp(c, c, 1, 1, affine, track)
    if name == "nor_conv_3x3":
        return ConvOp(c, c, 3, 1, affine, track)
    if name == "avg_pool_3x3":
        return AvgPool()
    raise ValueError(name)


class ResBlock(nn.Module):
    """NB201 reduction block: two 3x3 ReLU-conv-BN (first with stride 2) plus an avg-pool + 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.a = ConvOp(c_in, c_out, 3, 2, True, True)
        self.b = ConvOp(c_out, c_out, 3, 1, True, True)
        self.short = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.short(x) + self.b(self.a(x))


class MixedEdge(nn.Module):
    """All candidates of one edge."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(make_op(n, c, affine=False, track=False) for n in P.NB201_OPS)

    def soft(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = w[0] * self.ops[0](x)
        for k in range(1, len(self.ops)):
            out = out + w[k] * self.ops[k](x)
        return out

    def hard(self, x: torch.Tensor, hw: torch.Tensor, k: int) -> torch.Tensor:
        # Only op k runs; the other (numerically zero) hard weights are added as scalars so that
        # the straight-through gradient reaches every logit.
        return self.ops[k](x) * hw[k] + (hw.sum() - hw[k])

    def single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.ops[k](x)


class SearchCell(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(MixedEdge(c) for _ in P.edges())

    def forward(self, x: torch.Tensor, mode: str, w: torch.Tensor | None, idx: list[int]) -> torch.Tensor:
        nodes = [x]
        e = 0
        for i in range(1, P.MAX_NODES):
            acc: torch.Tensor | None = None
            for j in range(i):
                edge = cast(MixedEdge, self.edges[e])
                if mode == "darts":
                    assert w is not None
                    y = edge.soft(nodes[j], w[e])
                elif mode == "gdas":
                    assert w is not None
                    y = edge.hard(nodes[j], w[e], idx[e])
                else:
                    y = edge.single(nodes[j], idx[e])
                acc = y if acc is None else acc + y
                e += 1
            assert acc is not None
            nodes.append(acc)
        return nodes[-1]


class FixedCell(nn.Module):
    def __init__(self, c: int, ops: list[str]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(make_op(n, c, affine=True, track=True) for n in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        e = 0
        for i in range(1, P.MAX_NODES):
            acc = self.ops[e](nodes[0])
            e += 1
            for j in range(1, i):
                acc = acc + self.ops[e](nodes[j])
                e += 1
            nodes.append(acc)
        return nodes[-1]


def _macro(make_cell: Callable[[int], nn.Module]) -> tuple[nn.Module, nn.ModuleList, int]:
    """Stem and the 3 stages of N cells with a residual reduction block between stages."""
    c = P.C
    stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
    cells = nn.ModuleList()
    for stage in range(3):
        width = c * 2**stage
        if stage:
            cells.append(ResBlock(width // 2, width))
        for _ in range(P.N_CELLS):
            cells.append(make_cell(width))
    return stem, cells, c * 4


class Supernet(nn.Module):
    """NB201 supernet with one (6, 5) alpha shared by all 15 search cells."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.cells, c_last = _macro(SearchCell)
        self.head_bn = nn.BatchNorm2d(c_last)
        self.classifier = nn.Linear(c_last, P.NUM_CLASSES)
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(P.edges()), len(P.NB201_OPS)))
        self.mode = "darts"
        self.path: list[int] = [0] * len(P.edges())
        self.tau = P.GDAS_TAU

    def weights(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n != "alpha"]

    def _gumbel_hard(self) -> tuple[torch.Tensor, list[int]]:
        logp = F.log_softmax(self.alpha, dim=-1)
        while True:
            g = -torch.empty_like(logp).exponential_().log()
            probs = F.softmax((logp + g) / self.tau, dim=-1)
            if torch.isfinite(probs).all():
                break
        idx = probs.argmax(dim=-1)
        one_hot = torch.zeros_like(probs).scatter_(-1, idx.unsqueeze(-1), 1.0)
        return one_hot - probs.detach() + probs, idx.tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w: torch.Tensor | None = None
        idx = self.path
        if self.mode == "darts":
            w = F.softmax(self.alpha, dim=-1)
        elif self.mode == "gdas":
            w, idx = self._gumbel_hard()
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h, self.mode, w, idx) if isinstance(cell, SearchCell) else cell(h)
        h = F.relu(self.head_bn(h))
        return self.classifier(F.adaptive_avg_pool2d(h, 1).flatten(1))


class FixedNet(nn.Module):
    def __init__(self, ops: list[str]) -> None:
        super().__init__()
        self.stem, self.cells, c_last = _macro(lambda c: FixedCell(c, ops))
        self.head_bn = nn.BatchNorm2d(c_last)
        self.classifier = nn.Linear(c_last, P.NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h)
        h = F.relu(self.head_bn(h))
        return self.classifier(F.adaptive_avg_pool2d(h, 1).flatten(1))


def main() -> None:
    args = P.parse_args()
    if args.method not in P.METHODS:
        P.emit_error(f"unknown method {args.method!r}")
        return
    P.setup_torch(args.seed)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    (xt, yt), (xv, yv) = P.make_batches(args.channels_last)

    if args.method == "fixed":
        ops = P.fixed_arch(args.seed)
        net = FixedNet(ops).to(memory_format=fmt)  # type: ignore[call-overload]
        opt = torch.optim.SGD(net.parameters(), lr=P.W_LR, momentum=P.W_MOMENTUM, weight_decay=P.W_DECAY,
                              nesterov=P.W_NESTEROV)
        net.train()

        def step() -> None:
            opt.zero_grad()
            F.cross_entropy(net(xt), yt).backward()
            opt.step()

        notes = f"hand-written NB201 network {P.arch_str(ops)}; fwd+bwd+SGD"
    else:
        sup = Supernet().to(memory_format=fmt)  # type: ignore[call-overload]
        sup.mode = args.method
        weights = sup.weights()
        w_opt = torch.optim.SGD(weights, lr=P.W_LR, momentum=P.W_MOMENTUM, weight_decay=P.W_DECAY,
                                nesterov=P.W_NESTEROV)
        a_opt = torch.optim.Adam([sup.alpha], lr=P.A_LR, betas=P.A_BETAS, weight_decay=P.A_DECAY)
        sup.train()
        n_ops = len(P.NB201_OPS)

        def weight_step() -> None:
            w_opt.zero_grad()
            F.cross_entropy(sup(xt), yt).backward()
            nn.utils.clip_grad_norm_(weights, P.GRAD_CLIP)
            w_opt.step()

        def arch_step() -> None:
            a_opt.zero_grad()
            F.cross_entropy(sup(xv), yv).backward()
            a_opt.step()

        if args.method == "spos":
            def step() -> None:
                sup.path = [random.randrange(n_ops) for _ in range(len(P.edges()))]
                weight_step()

            notes = "hand-written supernet; uniform single path shared by all cells; weight step only (clip 5)"
        else:
            def step() -> None:
                weight_step()
                arch_step()

            what = "all 5 ops per edge (python-loop weighted sum)" if args.method == "darts" else \
                "hard gumbel ST, tau=10, sampled op only"
            notes = f"hand-written supernet; {what}; weight step (clip 5) + arch step"

    rss0 = round(P.peak_rss_mb(), 1)
    times = P.time_steps(step, args.steps, args.warmup)
    P.emit(IMPL, args.method, times, notes, setup_rss_mb=rss0, channels_last=args.channels_last)


if __name__ == "__main__":
    main()
