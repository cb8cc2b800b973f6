"""Shared pieces of the nasforge <-> xautodl NB201 differential runs (stdlib + torch only).

Imported by the nasforge side (``nb201_parity.py``, ``nb201_differential.py``, the tests) and by
the xautodl side (``xautodl_parity.py``, ``xautodl_search.py``, run in the peers venv), so it must
not import nasforge, numpy or xautodl.

* :func:`xautodl_key` / :func:`to_xautodl_state`: nasforge's NB201 supernet state dict in
  xautodl's ``TinyNetworkDarts`` / ``TinyNetworkGDAS`` names, so both start from the same weights.
  nasforge ``cells.1.edges.edge_2_0.candidates.nor_conv_3x3.1.weight`` is xautodl
  ``cells.1.edges.2<-0.3.op.1.weight``; ``conv_a.1.weight`` is ``conv_a.op.1.weight``. xautodl's
  affine-free search convs carry a bias (``bias=not affine``) that a batch-statistics BN cancels;
  it is set to zero.
* :func:`gumbel_noise`: the Gumbel noise xautodl's GDAS forward draws after ``torch.manual_seed(s)``
  (``-torch.empty_like(arch).exponential_().log()``, one [6, 5] draw per forward).
* :class:`SearchData`: the images of a run (a file written by the nasforge side) and the batch
  order both sides use: per epoch a seeded permutation of the training images, validation images
  drawn with replacement (xautodl's ``SearchDataset``: ``random.choice(valid_split)`` per item),
  and random crop (padding 4) + horizontal flip from a generator seeded by (seed, epoch, batch).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from _protocol import arch_str as arch_string  # noqa: F401 - NB201 string of the six edge ops (EDGES order)

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # row order of xautodl's arch_parameters
EDGE_NAMES = tuple(f"edge_{to}_{frm}" for to, frm in EDGES)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # xautodl get_datasets("cifar10")
CIFAR_STD = (0.2470, 0.2435, 0.2616)

_EDGE = re.compile(r"\.edges\.edge_(\d)_(\d)\.candidates\.([a-z0-9_]+)\.")
_RESNET = re.compile(r"\.(conv_a|conv_b)\.")


def xautodl_key(key: str) -> str:
    """The xautodl name of a nasforge NB201 supernet state-dict key."""
    m = _EDGE.search(key)
    if m:
        to, frm, op = m.groups()
        key = key[: m.start()] + f".edges.{to}<-{frm}.{NB201_OPS.index(op)}.op." + key[m.end():]
    return _RESNET.sub(lambda mm: f".{mm.group(1)}.op.", key)


def to_xautodl_state(nasforge_state: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``template`` (an xautodl model's state dict) filled from ``nasforge_state``.

    Every template entry but the architecture parameters and the search convs' biases must be
    matched (same name and shape); biases become zero. Raises ``KeyError`` naming what is left.
    """
    out = {k: v.clone() for k, v in template.items()}
    seen = set()
    for key, value in nasforge_state.items():
        name = xautodl_key(key)
        if name not in out:
            raise KeyError(f"nasforge key {key!r} -> {name!r} has no xautodl counterpart")
        if tuple(out[name].shape) != tuple(value.shape):
            raise KeyError(f"{key!r} -> {name!r}: shape {tuple(value.shape)} vs {tuple(out[name].shape)}")
        out[name] = value.detach().clone()
        seen.add(name)
    left = [k for k in out if k not in seen and k != "arch_parameters"]
    for k in left:
        if k.endswith(".bias") and ".edges." in k:
            out[k] = torch.zeros_like(out[k])
    unmatched = [k for k in left if not (k.endswith(".bias") and ".edges." in k)]
    if unmatched:
        raise KeyError(f"xautodl keys without a nasforge value: {unmatched[:5]} ({len(unmatched)} in all)")
    return out


def gumbel_noise(seed: int, shape: tuple[int, int] = (len(EDGES), len(NB201_OPS))) -> torch.Tensor:
    """The noise xautodl's ``TinyNetworkGDAS.forward`` draws right after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return -torch.empty(shape).exponential_().log()


class SearchData:
    """The images of one differential run and the batch order both implementations use.

    Args:
        path: a file written with ``torch.save({"train_x": uint8 [n,32,32,3], "train_y": int64 [n],
            "valid_x": ..., "valid_y": ...})`` by the nasforge side (loaded ``weights_only``).
        seed: the run's seed (the order and augmentation depend on it only).
        batch_size: images per batch (both sides); an epoch is ``len(train) // batch_size`` steps.
    """

    def __init__(self, path: str, seed: int, batch_size: int) -> None:
        blob = torch.load(path, weights_only=True)
        self.train_x, self.train_y = self._normalise(blob["train_x"]), blob["train_y"].long()
        self.valid_x, self.valid_y = self._normalise(blob["valid_x"]), blob["valid_y"].long()
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.steps = len(self.train_y) // self.batch_size

    @staticmethod
    def _normalise(images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        padded = F.pad(x, (4, 4, 4, 4))
        dx = torch.randint(0, 9, (n,), generator=gen)
        dy = torch.randint(0, 9, (n,), generator=gen)
        flip = torch.rand(n, generator=gen) < 0.5
        out = torch.empty_like(x)
        for i in range(n):
            img = padded[i, :, int(dy[i]): int(dy[i]) + 32, int(dx[i]): int(dx[i]) + 32]
            out[i] = img.flip(-1) if bool(flip[i]) else img
        return out

    def epoch(self, epoch: int) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
        """``(step, (train_x, train_y), (valid_x, valid_y))`` for every step of ``epoch``."""
        gen = torch.Generator().manual_seed(1_000_003 * self.seed + epoch)
        order = torch.randperm(len(self.train_y), generator=gen)
        for b in range(self.steps):
            idx = order[b * self.batch_size: (b + 1) * self.batch_size]
            vidx = torch.randint(0, len(self.valid_y), (self.batch_size,), generator=gen)
            agen = torch.Generator().manual_seed(7919 * (1_000_003 * self.seed + epoch) + b)
            xt = self._augment(self.train_x[idx], agen)
            xv = self._augment(self.valid_x[vidx], agen)
            yield b, (xt, self.train_y[idx]), (xv, self.valid_y[vidx])


    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless un-augmented validation batches in a seeded order (xautodl's ``valid_loader``, cycled)."""
        gen = torch.Generator().manual_seed(1_000_003 * self.seed + 999_983)
        while True:
            order = torch.randperm(len(self.valid_y), generator=gen)
            for start in range(0, len(order), batch_size):
                idx = order[start: start + batch_size]
                yield self.valid_x[idx], self.valid_y[idx]


def entropy(probs: torch.Tensor) -> float:
    """Mean entropy (nats) of the rows of ``probs`` (one row per edge)."""
    p = probs.clamp_min(1e-12)
    return float(-(p * p.log()).sum(-1).mean())
