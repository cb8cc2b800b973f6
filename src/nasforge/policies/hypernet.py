"""A SMASH-style hypernetwork that generates the conv weights of a single path of a cell supernet.

Brock, Lim, Ritchie & Weston, "SMASH: One-Shot Model Architecture Search through
HyperNetworks", ICLR 2018; reference implementation ``ajbrock/SMASH`` (``SMASH.py``:
``SMASH.sample_weights`` builds the architecture tensor ``c`` and runs ``hyperconv`` on it;
``layers.py``: ``wn2d``).

What SMASH does: an architecture is written into a binary tensor ``c`` (the "memory-bank
view": for each slice of the weights, which banks the layer reads and writes, the block, the
number of units, dilation, kernel size, groups...), concatenated with a noise tensor ``z``
(``N(0, 1)``, one channel, redrawn at every generation) and fed to a small fully convolutional
HyperNet whose output is cut into the weights of the main network's 1x1 convolutions; each
generated weight is divided by its norm (``wn2d``).

**This module is an adaptation to the cell spaces of this library (nb201, darts)**, where the
memory-bank view does not exist. Its pieces and how they stand in for SMASH's:

* *architecture encoding* (SMASH's ``c``): for every choice key (edge) of the supernet, in
  ``supernet.choices()`` order, a ``+1/-1`` code of the chosen op (``+1`` at the chosen op,
  ``-1`` elsewhere, as the reference fills ``c`` with ``-1`` and writes ``1``). On the darts
  space which inputs a node reads is implicit in the key (``{cell}_e{node}_{input}``): edges
  that a genotype does not use select ``none``. The whole-architecture code is the same for
  every weight generated in one call, so each weight depends on the architecture as a whole.
* *positions* (SMASH's location of a weight slice in ``c``): a generated tensor is cut into
  flat chunks of ``chunk_size`` numbers; each chunk has a *site* (one supernet edge of one
  cell: cell index and edge together, a learned embedding per ``Choice`` module), a *kind*
  (the op and which of its convolutions, a learned embedding per ``(op, conv index)``) and a
  *chunk index* (learned embedding).
* *hypernet* (SMASH's DenseNet of weight-normalised 3x3 convs with leaky ReLUs): a per-chunk
  MLP (a 1x1-conv net over the chunks), whose first layer is linear in the concatenation
  [one-hot site, one-hot kind, one-hot chunk index, architecture code, noise] - implemented as
  a sum of embedding lookups and projections - followed by ``layers - 1`` hidden layers,
  LeakyReLU(0.02) as the reference, and a linear output of ``chunk_size`` numbers. The
  chunks of one conv are concatenated, cut to its size and reshaped to its kernel shape.
* *noise*: ``noise_dim`` numbers ``N(0, 1)`` per chunk, redrawn at every call (the reference's
  one ``z`` channel); ``noise_dim=0`` makes the weights a deterministic function of the
  architecture. The noise comes from the hypernet's own seeded generator, saved in
  ``state_dict()`` so a resumed search draws the same noise.
* *normalisation*: each generated weight ``w`` becomes ``w / ||w|| * sqrt(C_out)`` (the
  reference's ``wn2d`` divides by ``||w||`` only). Every generated conv of these spaces
  feeds a BatchNorm linearly, so the factor does not change the network's output; it keeps
  the pre-BN variance far above BN's ``eps`` on wide layers.

Which weights are generated (``generated``): ``"all"`` (default): every ``nn.Conv2d`` weight
inside the candidate ops (e.g. both convs of a ``FactorizedReduce`` skip on a reduction edge,
the depthwise and pointwise convs of ``sep_conv``/``dil_conv``); ``"pointwise"``: only the
1x1 ungrouped convs, as the reference, which generates the 1x1 convs and learns the spatial
convs directly. The supernet's own tensors that the hypernet generates are frozen
(``requires_grad=False``) when the hypernet is built: they are never used, since
:meth:`HyperNet.run` substitutes the generated ones with
:func:`torch.func.functional_call`. Everything else (stem, reduction blocks, preprocessing
convs, BN affine parameters, classifier, and in ``"pointwise"`` mode the spatial convs) stays
an ordinary learned parameter of the supernet.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from nasforge.errors import ArchError, ConfigError
from nasforge.nn.choice import Choice, Path, Supernet

#: What :class:`HyperNet` may generate (see the module docstring).
GENERATED = ("all", "pointwise")

_SLOPE = 0.02  # LeakyReLU slope of the reference HyperNet


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"hypernet {name} must be an int >= {minimum}, got {value!r}")
    return value


class _Target:
    """One generated tensor: a conv weight of one candidate of one supernet edge."""

    __slots__ = ("name", "shape", "numel", "chunks")

    def __init__(self, name: str, shape: tuple[int, ...], chunk_size: int) -> None:
        self.name, self.shape = name, shape
        self.numel = math.prod(shape)
        self.chunks = -(-self.numel // chunk_size)


class HyperNet(nn.Module):
    """Generates the conv weights of the ops a single path selects (see the module docstring).

    Args:
        supernet: the supernet whose candidate conv weights are generated (nb201, darts or any
            :class:`~nasforge.nn.choice.Supernet` whose ``Choice`` modules are named by their
            choice key). Its generated tensors are frozen here.
        hidden: width of the hypernet's hidden layers (and of its embeddings).
        layers: hidden layers of the per-chunk MLP (>= 1).
        chunk_size: numbers the hypernet outputs per chunk.
        noise_dim: ``N(0, 1)`` noise inputs per chunk (0: deterministic weights).
        weight_norm: rescale each generated weight to norm ``sqrt(C_out)``.
        generated: ``"all"`` candidate convs or only the ``"pointwise"`` (1x1) ones.
        seed: seed of the noise generator.
    """

    def __init__(
        self, supernet: Supernet, *, hidden: int = 64, layers: int = 2, chunk_size: int = 64, noise_dim: int = 1,
        weight_norm: bool = True, generated: str = "all", seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(supernet, Supernet):
            raise ConfigError(f"a HyperNet needs a Supernet, got {type(supernet).__name__}")
        hidden = _positive_int("hidden", hidden)
        layers = _positive_int("layers", layers)
        self.chunk_size = _positive_int("chunk_size", chunk_size)
        self.noise_dim = _positive_int("noise_dim", noise_dim, 0)
        if not isinstance(weight_norm, bool):
            raise ConfigError(f"hypernet weight_norm must be a bool, got {weight_norm!r}")
        if generated not in GENERATED:
            raise ConfigError(f"hypernet generated must be one of {', '.join(GENERATED)}, got {generated!r}")
        self.weight_norm, self.generated = weight_norm, generated

        self.choices: dict[str, tuple[str, ...]] = supernet.choices()
        if not self.choices:
            raise ConfigError("a HyperNet needs a supernet with choice keys; this one has none")
        offsets, n = {}, 0
        for key, options in self.choices.items():
            offsets[key], n = n, n + len(options)
        self._offsets, self.encoding_size = offsets, n

        # sites (one per Choice module), kinds ((op, conv index)) and the tensors to generate
        self.sites: list[str] = []
        self._site_keys: list[str] = []
        kinds: dict[tuple[str, int], int] = {}
        self._targets: dict[tuple[int, str], list[_Target]] = {}
        self._rows: dict[tuple[int, str], Tensor] = {}  # (3, chunks): site, kind, chunk index
        params = dict(supernet.named_parameters())
        for name, module in supernet.named_modules():
            if not isinstance(module, Choice):
                continue
            key = name.rsplit(".", 1)[-1]
            if key not in self.choices:
                raise ConfigError(f"Choice module {name!r} is not named by a choice key of the supernet")
            site = len(self.sites)
            self.sites.append(name)
            self._site_keys.append(key)
            for op in module.options:
                convs = [(sub, m) for sub, m in module.candidates[op].named_modules() if isinstance(m, nn.Conv2d)]
                targets, rows = [], []
                for index, (sub, conv) in enumerate(convs):
                    if generated == "pointwise" and (tuple(conv.kernel_size) != (1, 1) or conv.groups != 1):
                        continue
                    pname = f"{name}.candidates.{op}.{sub}.weight"
                    target = _Target(pname, tuple(conv.weight.shape), self.chunk_size)
                    kind = kinds.setdefault((op, index), len(kinds))
                    targets.append(target)
                    rows.append(torch.stack([
                        torch.full((target.chunks,), site), torch.full((target.chunks,), kind),
                        torch.arange(target.chunks),
                    ]))
                    params[pname].requires_grad_(False)  # replaced by generated weights on every call
                if targets:
                    self._targets[(site, op)] = targets
                    self._rows[(site, op)] = torch.cat(rows, dim=1)
        if not self._targets:
            raise ConfigError(f"the supernet's candidates have no convolution to generate (generated={generated!r})")
        self.kinds = list(kinds)
        max_chunks = max(t.chunks for ts in self._targets.values() for t in ts)

        self.site_embed = nn.Embedding(len(self.sites), hidden)
        self.kind_embed = nn.Embedding(len(self.kinds), hidden)
        self.chunk_embed = nn.Embedding(max_chunks, hidden)
        self.arch_proj = nn.Linear(self.encoding_size, hidden)  # carries the first layer's bias
        self.noise_proj = nn.Linear(self.noise_dim, hidden, bias=False) if self.noise_dim else None
        body: list[nn.Module] = [nn.LeakyReLU(_SLOPE)]
        for _ in range(layers - 1):
            body += [nn.Linear(hidden, hidden), nn.LeakyReLU(_SLOPE)]
        body.append(nn.Linear(hidden, self.chunk_size))
        self.body = nn.Sequential(*body)

        self.rng = torch.Generator().manual_seed(int(seed))
        self._checked: Any = None  # weakref to the supernet last checked by run()

    # ---- the encoding ------------------------------------------------------------------------
    def _check_path(self, path: Path) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, options in self.choices.items():
            if key not in path:
                raise ArchError(f"path lacks choice key {key!r} (needs all {len(self.choices)} keys)")
            op = path[key]
            if not isinstance(op, str):
                raise ArchError(f"a hypernet generates single paths: {key!r} must select an op name, got {type(op).__name__}")
            if op not in options:
                raise ArchError(f"unknown option {op!r} for {key!r}; valid: {', '.join(options)}")
            out[key] = op
        return out

    def encode(self, path: Path) -> Tensor:
        """The architecture code of a single path: per key, ``+1`` at the chosen op, ``-1`` elsewhere."""
        ops = self._check_path(path)
        code = -torch.ones(self.encoding_size, device=self.arch_proj.weight.device)
        for key, op in ops.items():
            code[self._offsets[key] + self.choices[key].index(op)] = 1.0
        return code

    # ---- generation --------------------------------------------------------------------------
    def forward(self, path: Path) -> dict[str, Tensor]:
        """Generated weights (supernet parameter name -> tensor) of the convs ``path`` runs."""
        ops = self._check_path(path)
        selected = [(site, ops[key]) for site, key in enumerate(self._site_keys) if (site, ops[key]) in self._targets]
        if not selected:
            return {}
        device = self.arch_proj.weight.device
        rows = torch.cat([self._rows[s] for s in selected], dim=1).to(device)
        h = self.site_embed(rows[0]) + self.kind_embed(rows[1]) + self.chunk_embed(rows[2])
        h = h + self.arch_proj(self.encode(ops))
        if self.noise_proj is not None:
            z = torch.randn(rows.shape[1], self.noise_dim, generator=self.rng).to(device)
            h = h + self.noise_proj(z)
        chunks = self.body(h)  # (rows, chunk_size)
        out: dict[str, Tensor] = {}
        start = 0
        for s in selected:
            for t in self._targets[s]:
                w = chunks[start: start + t.chunks].reshape(-1)[: t.numel].view(t.shape)
                start += t.chunks
                if self.weight_norm:
                    w = w * (math.sqrt(t.shape[0]) / w.norm().clamp_min(1e-12))
                out[t.name] = w
        return out

    def run(self, supernet: Supernet, x: Tensor, path: Path, weights: Mapping[str, Tensor] | None = None) -> Tensor:
        """``supernet(x, path)`` with the path's conv weights generated (or the given ``weights``)."""
        if self._checked is None or self._checked() is not supernet:
            self._check_supernet(supernet)
        generated = dict(self(path) if weights is None else weights)
        out: Tensor = functional_call(supernet, generated, (x, path), strict=False)
        return out

    def _check_supernet(self, supernet: Supernet) -> None:
        if not isinstance(supernet, Supernet) or supernet.choices() != self.choices:
            raise ConfigError("this hypernet was built for another supernet (its choice keys differ)")
        params = dict(supernet.named_parameters())
        for targets in self._targets.values():
            for t in targets:
                p = params.get(t.name)
                if p is None or tuple(p.shape) != t.shape:
                    raise ConfigError(f"this hypernet was built for another supernet: {t.name} is missing or has another shape")
        self._checked = weakref.ref(supernet)

    def generated_names(self) -> list[str]:
        """Every supernet parameter this hypernet generates (frozen in the supernet)."""
        return [t.name for ts in self._targets.values() for t in ts]

    def shapes(self, path: Path) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape of what :meth:`forward` returns for ``path``."""
        ops = self._check_path(path)
        return {
            t.name: t.shape for site, key in enumerate(self._site_keys) for t in self._targets.get((site, ops[key]), [])
        }

    # ---- noise RNG in the state dict -------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"rng": self.rng.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.rng.set_state(state["rng"].to(torch.uint8).cpu())
