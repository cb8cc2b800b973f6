"""SMASH: one-shot architecture search with a hypernetwork that generates the weights.

Brock, Lim, Ritchie & Weston, "SMASH: One-Shot Model Architecture Search through
HyperNetworks", ICLR 2018. Reference implementation ``ajbrock/SMASH`` (``SMASH.py``: the SMASH
network, its optimizer and ``update_lr``; ``train.py``: ``train_fn``; ``evaluate.py``: the
ranking of sampled architectures; ``utils.py``: ``train_parser`` / ``eval_parser`` defaults).

Algorithm (paper Alg. 1):

1. training, per batch: draw an architecture uniformly (seeded :class:`~nasforge.policies.UniformPolicy`;
   on darts a genotype, whose path runs its 8 + 8 edges and ``none`` elsewhere), generate the
   weights of the convolutions of the ops on its path with the hypernetwork
   (:class:`~nasforge.policies.hypernet.HyperNet`: architecture code + position -> weights),
   run the supernet with those weights (``torch.func.functional_call``) on the training
   batch and take an Adam step on the hypernetwork and on the main network's ordinary
   weights (stem, reduction blocks, preprocessing, BN affine, classifier). The supernet's own
   candidate conv weights are frozen and never used.
2. ranking: draw ``num_samples`` distinct architectures (a fixed seeded stream), generate
   each one's weights once and measure its accuracy (the "SMASH score") on fixed validation
   batches; return the best (ties: lower validation loss, then the earlier sample). The
   architecture is meant to be trained from scratch afterwards (``nasforge train``).

Defaults (reference): 100 epochs, batch 50 (``train_parser``); Adam with step 1e-3,
betas (0.5, 0.999), eps 1e-4, weight decay 1e-4 on the main network and 0 on the hypernetwork,
cosine-annealed to 0 *per iteration* (``SMASH.__init__`` / ``SMASH.update_lr``: "By default I
use ADAM for training SMASH, with settings borrowed from DCGAN"); 500 random architectures
scored on the 5,000 held-out training images in batches of 100 (``eval_parser`` ``--num-random
500 --batch-size 100``; ``get_data_loader`` keeps the last 10% of the training set for
validation).

Deviations from the paper (this is an adaptation to cell spaces, not the paper's space):

* the search space: SMASH searches its own memory-bank networks (which banks each layer reads
  and writes, units, op structure, kernel size, dilation, groups). Here the spaces are the
  nb201 and darts cells, and the memory-bank tensor ``c`` is replaced by the encoding of
  :mod:`nasforge.policies.hypernet` (a +-1 code of the op chosen on every edge, plus learned
  site / kind / chunk position embeddings);
* the hypernetwork: a small per-chunk MLP instead of the reference's DenseNet of 3x3 weight-
  normalised convolutions over the spatial layout of ``c`` (the spatial neighbourhood of a
  memory bank has no counterpart in a cell); see :mod:`nasforge.policies.hypernet`;
* what is generated: by default every conv weight of the candidate ops on the path
  (``generated="all"``); the reference generates only the 1x1 convs and learns the spatial
  convs directly, shared by every layer of a block - ``generated="pointwise"`` is the
  closest setting (1x1 convs generated, spatial convs ordinary supernet weights, shared by
  every architecture that uses that op on that edge);
* the generated weight is normalised to norm ``sqrt(C_out)`` instead of 1 (scale-free here:
  each feeds a BatchNorm);
* ranking: BatchNorm uses the batch statistics (the supernet stays in training mode, as the
  NB201 one-shot baselines rank candidates) where the reference evaluates in eval mode with
  running statistics (which, for generated weights, average over all sampled architectures);
  the architectures are distinct (the reference samples with replacement); the reference's
  follow-up perturbation and Markov-chain phases (``--num-perturb``, ``--num-markov``) are
  not run; ties are broken by the validation loss;
* no per-epoch validation pass with random architectures (the reference's only monitors
  training); the reference's annealing of the sampled budget and kernel sizes belongs to its
  space and has no counterpart;
* the loss is ``cross_entropy`` (the reference's ``log_softmax`` + ``nll_loss``, the same).

Result: ``arch`` = the best-ranked architecture; ``strengths`` = per choice key a one-hot of
the op its supernet path selects (the space's ``derive`` of them gives ``arch`` back);
``info["ranked"]`` = every scored architecture, best first, with its accuracy and loss.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nasforge.arch import Arch
from nasforge.nn.choice import Path, Supernet
from nasforge.policies import UniformPolicy
from nasforge.policies.hypernet import GENERATED, HyperNet
from nasforge.registry import register
from nasforge.spaces.base import SearchSpace
from nasforge.train.bilevel import check_finite
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotMethod,
    OneShotResult,
    accuracy,
    json_safe,
    require,
    require_positive_int,
    strengths_lists,
)

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class SmashConfig:
    """SMASH hyper-parameters (reference defaults; the hypernetwork's shape is this library's)."""

    epochs: int = 100  # training epochs (reference train_parser --epochs 100)
    batch_size: int = 50  # training batch size (reference --batch-size 50)
    lr: float = 1e-3  # Adam step size of hypernet and main network (reference SMASH.lr = 1e-3)
    lr_min: float = 0.0  # floor of the per-iteration cosine annealing (reference update_lr anneals to 0)
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas (reference, "borrowed from DCGAN")
    eps: float = 1e-4  # Adam eps (reference: 1e-4, "to support possible fp16 training")
    weight_decay: float = 1e-4  # L2 of the main network's ordinary weights (reference Adam weight_decay=1e-4)
    hyper_weight_decay: float = 0.0  # L2 of the hypernetwork (reference: 'weight_decay': 0 for hyperconv)
    hidden: int = 64  # hypernet width (ours: the reference's DenseNet has growth 10 over ~100 channels)
    layers: int = 2  # hidden layers of the per-chunk hypernet MLP (ours)
    chunk_size: int = 64  # numbers generated per hypernet row (ours; the reference emits N*N*depth_compression per position)
    noise_dim: int = 1  # N(0,1) inputs per row, redrawn per generation (reference: one z channel); 0: deterministic
    weight_norm: bool = True  # normalise each generated weight (reference wn2d; here to norm sqrt(C_out))
    generated: str = "all"  # "all" candidate convs, or "pointwise" (1x1) only as the reference
    num_samples: int = 500  # distinct random architectures ranked (reference eval_parser --num-random 500)
    eval_batches: int = 50  # fixed validation batches per architecture (reference: 5,000 held-out images)
    eval_batch_size: int = 100  # validation batch size (reference eval_parser --batch-size 100)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "num_samples", "eval_batches", "eval_batch_size"):
            require_positive_int(name, getattr(self, name))
        require(_finite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        require(_finite(self.lr_min) and 0 <= self.lr_min <= self.lr, f"lr_min must be in [0, lr={self.lr}], got {self.lr_min!r}")
        betas = tuple(self.betas) if isinstance(self.betas, (tuple, list)) else ()
        require(len(betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in betas),
                f"betas must be two numbers in [0, 1), got {self.betas!r}")
        require(_finite(self.eps) and self.eps > 0, f"eps must be > 0, got {self.eps!r}")
        for name in ("weight_decay", "hyper_weight_decay"):
            value = getattr(self, name)
            require(_finite(value) and value >= 0, f"{name} must be >= 0, got {value!r}")
        for name, low in (("hidden", 1), ("layers", 1), ("chunk_size", 1), ("noise_dim", 0)):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= low,
                    f"{name} must be an int >= {low}, got {value!r}")
        require(isinstance(self.weight_norm, bool), f"weight_norm must be a bool, got {self.weight_norm!r}")
        require(self.generated in GENERATED, f"generated must be one of {', '.join(GENERATED)}, got {self.generated!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_hypernet(supernet: Supernet, cfg: SmashConfig, seed: int) -> HyperNet:
    """The hypernetwork of ``cfg`` for ``supernet`` (freezes the supernet's generated weights)."""
    return HyperNet(
        supernet, hidden=cfg.hidden, layers=cfg.layers, chunk_size=cfg.chunk_size, noise_dim=cfg.noise_dim,
        weight_norm=cfg.weight_norm, generated=cfg.generated, seed=seed,
    )


def make_optimizer(supernet: Supernet, hypernet: HyperNet, cfg: SmashConfig) -> torch.optim.Adam:
    """Adam over the main network's ordinary weights and the hypernetwork (reference ``SMASH.optim``)."""
    free = [p for p in supernet.parameters() if p.requires_grad]
    return torch.optim.Adam(
        [{"params": free, "weight_decay": cfg.weight_decay},
         {"params": list(hypernet.parameters()), "weight_decay": cfg.hyper_weight_decay}],
        lr=cfg.lr, betas=(float(cfg.betas[0]), float(cfg.betas[1])), eps=cfg.eps,
    )


def cosine_lr(cfg: SmashConfig, step: int, total: int) -> float:
    """Per-iteration cosine annealing from ``lr`` to ``lr_min`` over ``total`` steps (reference ``update_lr``)."""
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * min(step, total) / total))


def train_step(
    supernet: Supernet, hypernet: HyperNet, path: Path, batch: Batch, optimizer: torch.optim.Optimizer, *, where: str,
) -> tuple[float, Tensor]:
    """One Adam step of hypernet + ordinary weights on ``batch`` along ``path``; returns (loss, logits)."""
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    logits = hypernet.run(supernet, x, path)
    loss = F.cross_entropy(logits, y)
    value = check_finite(loss, where)
    loss.backward()
    optimizer.step()
    return value, logits.detach()


@torch.no_grad()
def smash_score(supernet: Supernet, hypernet: HyperNet, path: Path, batches: Sequence[Batch]) -> tuple[float, float]:
    """(accuracy %, mean loss) of ``path`` with one generation of weights on ``batches``."""
    weights = hypernet(path)  # one draw per architecture, reused on every batch (reference evaluate.py)
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in batches:
        logits = hypernet.run(supernet, x, path, weights)
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        n += int(y.numel())
    return 100.0 * correct / max(n, 1), loss_sum / max(n, 1)


def sample_distinct(space: SearchSpace, rng: random.Random, n: int) -> list[Arch]:
    """Up to ``n`` distinct uniformly drawn architectures (fewer only if the space is smaller)."""
    seen: dict[Arch, None] = {}
    for _ in range(50 * n):
        if len(seen) == n:
            break
        seen.setdefault(space.sample(rng), None)
    return list(seen)


def rank(
    space: SearchSpace, supernet: Supernet, hypernet: HyperNet, archs: Sequence[Arch], batches: Sequence[Batch],
) -> list[dict[str, Any]]:
    """Score every architecture with generated weights; best first (accuracy, then lower loss, then order)."""
    supernet.train()  # batch statistics: running statistics mean nothing for generated weights
    scored = []
    for i, arch in enumerate(archs):
        acc, loss = smash_score(supernet, hypernet, supernet.path_for(arch), batches)
        scored.append({"arch": space.format(arch), "valid_acc": acc, "valid_loss": loss, "sample": i})
    return sorted(scored, key=lambda r: (-r["valid_acc"], r["valid_loss"], r["sample"]))


def one_hot_strengths(supernet: Supernet, arch: Arch) -> dict[str, Tensor]:
    """Per choice key, a one-hot over its candidates of the op ``arch``'s path selects."""
    path = supernet.path_for(arch)
    out = {}
    for key, options in supernet.choices().items():
        t = torch.zeros(len(options))
        t[options.index(path[key])] = 1.0
        out[key] = t
    return out


def search(ctx: OneShotContext, cfg: SmashConfig) -> OneShotResult:
    supernet = ctx.supernet()
    hypernet = build_hypernet(supernet, cfg, seed=ctx.seed).to(ctx.device)
    policy = UniformPolicy(ctx.space, supernet, seed=ctx.seed)
    optimizer = make_optimizer(supernet, hypernet, cfg)
    run = ctx.open_run("smash", cfg, supernet=supernet, hypernet=hypernet, policy=policy, optimizer=optimizer)
    total = cfg.epochs * run.steps_per_epoch(cfg.batch_size)

    supernet.train()
    for epoch in run.epochs(cfg.epochs):
        lr = cosine_lr(cfg, run.step, total)
        for b, train in run.train_batches(cfg.batch_size):
            lr = cosine_lr(cfg, run.step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            path = policy()  # a new uniformly drawn architecture per batch
            loss, logits = train_step(supernet, hypernet, path, train, optimizer, where=f"epoch {epoch} batch {b}")
            run.step_done(train_loss=loss, train_acc=accuracy(logits, train[1]))
        run.epoch_done(lr=lr)

    batches = ctx.fixed_valid_batches(cfg.eval_batches, cfg.eval_batch_size)
    archs = sample_distinct(ctx.space, random.Random(ctx.seed + 1), cfg.num_samples)
    ranked = rank(ctx.space, supernet, hypernet, archs, batches)
    best = {ctx.space.format(a): a for a in archs}[ranked[0]["arch"]]
    ctx.log(f"SMASH: best of {len(ranked)} sampled architectures, {ranked[0]['valid_acc']:.2f}%: {ranked[0]['arch']}")
    info = {
        "ranked": ranked,
        "eval_images": sum(int(y.numel()) for _, y in batches),
        "hypernet_params": sum(p.numel() for p in hypernet.parameters()),
        "generated_tensors": len(hypernet.generated_names()),
    }
    return OneShotResult(
        arch=best, strengths=strengths_lists(one_hot_strengths(supernet, best)), history=list(run.history),
        seconds=run.seconds(), info=json_safe(info),
    )


smash = register("method", "smash")(OneShotMethod(
    name="smash",
    paper="Brock, Lim, Ritchie & Weston, 'SMASH: One-Shot Model Architecture Search through HyperNetworks', ICLR 2018",
    config_cls=SmashConfig,
    search=search,
))
