"""Randomly wired networks: the RandWire space of network generators.

Xie, Kirillov, Girshick & He, "Exploring Randomly Wired Neural Networks for Image
Recognition", ICCV 2019 (arXiv:1904.01569). The authors released no code; the unofficial
re-implementations read alongside the paper are ``JiaminRen/RandWireNN`` (``model.py``,
``utils.py``), ``seungwonpark/RandWireNN`` (``model/``) and ``ironjr/pytorch-randwire``.
Graph generation and the DAG conversion live in :mod:`nasforge.spaces.randwire_graphs`.

**A point of the space** is a *network generator instance*: a random graph model with its
parameters and a seed, e.g. ``WS(k=4,p=0.75)/seed=3``. The network has one independent random
graph per random-wiring stage; stage ``i`` uses the ``i``-th value of
``random.Random(seed).getrandbits(32)`` as its generator seed (:func:`stage_seeds`), so one
architecture is one fixed network and different stages get different graphs.

**Nodes** (paper Section 3.3): *aggregation* - the inputs of a node are summed with positive
learnable weights ``sigmoid(w_e)``, one per incoming edge (``w_e`` initialised to 0, an
assumption: the paper gives no initial value); *transformation* - ReLU -> 3x3 separable conv
(3x3 depthwise then 1x1, no non-linearity between) -> BN; *distribution* - the same output goes
along every outgoing edge. The nodes fed by the stage's unique input node (the graph's sources)
receive the previous stage's output, change the channel count and run their conv at stride 2;
the stage's unique output node averages the sinks without parameters. Deviation: a node with a
single input has no aggregation weight (as in ``JiaminRen/RandWireNN``): a positive scale in
front of ReLU -> conv -> BN is absorbed by the BN, so the function class is the same.

**Networks** (paper Table 1), with ``C`` channels and ``N`` nodes:

=========  ==========  ==========================  ==========================
stage      output      small regime                regular regime
=========  ==========  ==========================  ==========================
conv1      112x112     3x3 conv, C/2               3x3 conv, C/2
conv2      56x56       3x3 conv, C                 random wiring, N/2, C
conv3      28x28       random wiring, N, C         random wiring, N, 2C
conv4      14x14       random wiring, N, 2C        random wiring, N, 4C
conv5      7x7         random wiring, N, 4C        random wiring, N, 8C
classifier 1x1         1x1 conv 1280, global average pool, fc
=========  ==========  ==========================  ==========================

conv1 is Conv -> BN (stride 2); the small regime's conv2 is ReLU -> Conv -> BN (stride 2), the
paper's "ReLU-conv-BN triplet" with a full 3x3 conv as Table 1 says; the classifier is
ReLU -> 1x1 conv -> BN -> ReLU -> global average pool -> [dropout] -> fc. ``C/2`` is ``C // 2``.
The layout where BN/ReLU sit around conv1, conv2 and the 1x1 conv is our reading (the table
only names the convs); it changes parameters by a few thousand (BN affine) and FLOPs not at all.
With these choices RandWire-WS(4, 0.75), N=32, on 224x224 ImageNet (mean +- std over graph seeds
0-4) has, small regime C=78: 5.57M +- 0.10M parameters, 576M +- 6M multiply-adds (paper: 5.6M,
583M); regular C=109: 31.5M +- 0.7M, 3.93G +- 0.08G (paper: 31.9M, 4.0G); regular C=154:
60.6M +- 1.5M, 7.74G +- 0.16G (paper: 61.5M, 7.9G). Table 1's small-regime conv3 has ``N``
nodes, as in the re-implementations; with ``N/2`` it would have 5.45M / 491M, far from 583M.

**Small inputs**: nothing has to change for correctness (every stride-2 conv has padding 1, so
a 1x1 map stays 1x1: 32x32 CIFAR ends conv5 at 1x1, 8x8 digits from conv3 on). To keep
spatial detail, ``build(..., stem_stride=1)`` runs conv1 (and the small regime's conv2) at
stride 1, so the total stride is 8 (small) or 16 (regular) instead of 32. ``head`` (default
1280) sets the classifier's 1x1 conv width for tiny networks.

**Decisions**: ``generator`` in ``ER``/``BA``/``WS`` (the paper's three models); ``er_p`` in
0.1..0.9; ``ba_m`` in 1..8; ``ws_k`` in {2, 4, 6, 8}; ``ws_p`` in {0.0, 0.25, 0.5, 0.75,
1.0} (the ranges the paper sweeps in its Fig. 3, discretised by us); ``seed`` in
``0..seeds-1``. The parameters that do not belong to the chosen generator must be ``-``
(:data:`NA`): :meth:`RandWireSpace.check` rejects any other value, so every generator instance
has exactly one Arch. Options that the smallest stage
cannot hold (``M < N_stage``, ``K < N_stage``) are left out of the decisions. Sampling is
uniform over these canonical points; mutation changes the generator (drawing the new
generator's parameters uniformly), one of its parameters or the seed.

**Text form** (:meth:`RandWireSpace.format` / :meth:`RandWireSpace.parse`)::

    arch := model "/seed=" SEED
    model := "ER(p=" P ")" | "BA(m=" M ")" | "WS(k=" K ",p=" P ")"

e.g. ``ER(p=0.2)/seed=0``, ``BA(m=5)/seed=1``, ``WS(k=4,p=0.75)/seed=3``. ``parse`` ignores
spaces, accepts the generator name in any case, parameters in any order and numbers in any
spelling of an allowed value (``p=.75``, ``p=0.750``); ``format`` writes the canonical form.

**No supernet**: randomly wired networks are trained from scratch one graph at a time and their
candidates share no operations, so :meth:`RandWireSpace.supernet` raises ``ConfigError``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError
from nasforge.nn.choice import Supernet
from nasforge.registry import register
from nasforge.spaces.base import SearchSpace
from nasforge.spaces.randwire_graphs import GENERATORS, RandomDAG, check_generator_params, random_dag

#: Value of a generator parameter that does not apply to the chosen generator.
NA = "-"
#: Parameter grids of ER(P), BA(M), WS(K, P) (the ranges of the paper's Fig. 3 sweep, discretised).
ER_P: tuple[str, ...] = ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9")
BA_M: tuple[str, ...] = ("1", "2", "3", "4", "5", "6", "7", "8")
WS_K: tuple[str, ...] = ("2", "4", "6", "8")
WS_P: tuple[str, ...] = ("0.0", "0.25", "0.5", "0.75", "1.0")
#: Decision holding each (generator, parameter).
PARAM_DECISIONS: dict[tuple[str, str], str] = {
    ("ER", "p"): "er_p", ("BA", "m"): "ba_m", ("WS", "k"): "ws_k", ("WS", "p"): "ws_p",
}
REGIMES: tuple[str, ...] = ("small", "regular")
#: Default C per regime (paper Table 2: small C=78; regular C=109, the larger model C=154).
DEFAULT_CHANNELS: dict[str, int] = {"small": 78, "regular": 109}
HEAD_CHANNELS = 1280


def stage_plan(regime: str, C: int, N: int) -> list[tuple[int, int]]:
    """``(nodes, out channels)`` of each random-wiring stage of ``regime`` (paper Table 1)."""
    if regime == "small":
        return [(N, C), (N, 2 * C), (N, 4 * C)]
    if regime == "regular":
        return [(N // 2, C), (N, 2 * C), (N, 4 * C), (N, 8 * C)]
    raise ConfigError(f"unknown randwire regime {regime!r}; valid: {', '.join(REGIMES)}")


def stage_seeds(seed: int, count: int) -> list[int]:
    """Generator seeds of ``count`` stages, derived from an architecture's ``seed``."""
    rng = random.Random(seed)
    return [rng.getrandbits(32) for _ in range(count)]


# ---- networks ------------------------------------------------------------------------------
class NodeOp(nn.Module):
    """One node: weighted-sum aggregation -> ReLU -> 3x3 separable conv -> BN.

    Args:
        num_inputs: incoming edges; with more than one, each gets a weight ``sigmoid(w)``.
        C_in, C_out: channels (``C_in`` differs from ``C_out`` only for a stage's source nodes).
        stride: 2 for the source nodes of a stage, 1 otherwise.
    """

    def __init__(self, num_inputs: int, C_in: int, C_out: int, stride: int) -> None:
        super().__init__()
        self.edge_logits = nn.Parameter(torch.zeros(num_inputs)) if num_inputs > 1 else None
        self.relu = nn.ReLU(inplace=False)
        self.depthwise = nn.Conv2d(C_in, C_in, 3, stride=stride, padding=1, groups=C_in, bias=False)
        self.pointwise = nn.Conv2d(C_in, C_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(C_out)

    def edge_weights(self) -> torch.Tensor:
        """The positive aggregation weights ``sigmoid(w)`` (a single 1 for a one-input node)."""
        if self.edge_logits is None:
            return torch.ones(1)
        return torch.sigmoid(self.edge_logits)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.edge_logits is None:
            x = inputs[0]
        else:
            w = torch.sigmoid(self.edge_logits)
            x = w[0] * inputs[0]
            for i in range(1, len(inputs)):
                x = x + w[i] * inputs[i]
        return self.bn(self.pointwise(self.depthwise(self.relu(x))))


class RandomWiredStage(nn.Module):
    """One random-wiring stage: a :class:`RandomDAG` of :class:`NodeOp` nodes.

    The input node hands the stage input to every source node (stride 2, ``C_in -> C_out``);
    the others run in index order, which is topological because edges go from lower to higher
    index; the output is the plain average of the sink nodes.
    """

    def __init__(self, dag: RandomDAG, C_in: int, C_out: int, stride: int = 2) -> None:
        super().__init__()
        self.dag = dag
        self._preds = dag.predecessors()
        self.nodes = nn.ModuleList(
            NodeOp(len(p), C_out, C_out, 1) if p else NodeOp(1, C_in, C_out, stride) for p in self._preds
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        for node, preds in zip(self.nodes, self._preds):
            outs.append(node([outs[u] for u in preds] if preds else [x]))
        sinks = self.dag.sinks
        y = outs[sinks[0]]
        for v in sinks[1:]:
            y = y + outs[v]
        return y / len(sinks) if len(sinks) > 1 else y

    def extra_repr(self) -> str:
        return f"nodes={self.dag.num_nodes}, edges={len(self.dag.edges)}, sources={len(self.dag.sources)}, sinks={len(self.dag.sinks)}"


class RandWireNet(nn.Module):
    """A randomly wired network of paper Table 1 built from explicit stage graphs.

    Args:
        dags: one :class:`RandomDAG` per random-wiring stage (3 for ``small``, 4 for
            ``regular``), with the node counts of :func:`stage_plan` (not re-checked: any graph
            works, which lets tests wire stages by hand).
        regime: ``"small"`` or ``"regular"``.
        C: channel width ``C``.
        num_classes, in_channels: classifier outputs and image channels.
        stem_stride: stride of conv1 and of the small regime's conv2 (2 in the paper; 1 for
            small images).
        head: width of the classifier's 1x1 conv (1280 in the paper).
        dropout: dropout before the final fc (0 = none).
        arch_text: the architecture string, shown by ``repr``.
    """

    def __init__(
        self, dags: Sequence[RandomDAG], *, regime: str, C: int, num_classes: int = 10, in_channels: int = 3,
        stem_stride: int = 2, head: int = HEAD_CHANNELS, dropout: float = 0.0, arch_text: str = "",
    ) -> None:
        super().__init__()
        plan = stage_plan(regime, C, 2)
        if len(dags) != len(plan):
            raise ConfigError(f"the {regime} regime has {len(plan)} random stages, got {len(dags)} graphs")
        self.arch_text = arch_text
        half = C // 2
        layers: dict[str, nn.Module] = {
            "conv1": nn.Sequential(
                nn.Conv2d(in_channels, half, 3, stride=stem_stride, padding=1, bias=False), nn.BatchNorm2d(half)
            )
        }
        C_prev = half
        if regime == "small":
            layers["conv2"] = nn.Sequential(
                nn.ReLU(inplace=False),
                nn.Conv2d(half, C, 3, stride=stem_stride, padding=1, bias=False),
                nn.BatchNorm2d(C),
            )
            C_prev = C
        first = 6 - len(plan)  # conv3 in the small regime, conv2 in the regular one
        for i, (dag, (_, C_out)) in enumerate(zip(dags, plan)):
            layers[f"conv{first + i}"] = RandomWiredStage(dag, C_prev, C_out)
            C_prev = C_out
        self.layers = nn.ModuleDict(layers)
        self.classifier = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_prev, head, 1, bias=False),
            nn.BatchNorm2d(head),
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(head, num_classes),
        )

    def stages(self) -> list[RandomWiredStage]:
        """The random-wiring stages in order."""
        return [m for m in self.layers.values() if isinstance(m, RandomWiredStage)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x = layer(x)
        return self.classifier(x)

    def extra_repr(self) -> str:
        return f"arch={self.arch_text}" if self.arch_text else ""


# ---- the space ------------------------------------------------------------------------------
_ARCH_RE = re.compile(r"([A-Za-z]+)\((.*)\)/seed=(.*)")


@register("space", "randwire")
class RandWireSpace(SearchSpace):
    """Network generators of randomly wired networks: graph model x parameters x seed.

    Args:
        regime: ``"small"`` or ``"regular"`` (paper Table 1).
        nodes: ``N``, nodes per full random stage (32 in the paper; the regular regime's first
            stage has ``N // 2``).
        channels: ``C`` (default 78 for small, 109 for regular).
        seeds: number of graph seeds per generator (options ``"0"..str(seeds-1)``).

    Raises:
        ConfigError: an unknown regime, or sizes too small (the smallest stage needs 3 nodes so
            that BA(1) and WS(2, P) exist; ``C >= 2``, ``seeds >= 1``).
    """

    name = "randwire"
    paper: ClassVar[str] = (
        "Xie, Kirillov, Girshick & He, 'Exploring Randomly Wired Neural Networks for Image "
        "Recognition', ICCV 2019"
    )

    def __init__(self, regime: str = "small", nodes: int = 32, channels: int | None = None, seeds: int = 10) -> None:
        if regime not in REGIMES:
            raise ConfigError(f"unknown randwire regime {regime!r}; valid: {', '.join(REGIMES)}")
        if channels is None:
            channels = DEFAULT_CHANNELS[regime]
        for label, value, low in (("nodes", nodes, 2), ("channels", channels, 2), ("seeds", seeds, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"randwire option {label} must be an int >= {low}, got {value!r}")
        self.regime, self.nodes, self.channels, self.seeds = regime, nodes, channels, seeds
        smallest = min(n for n, _ in stage_plan(regime, channels, nodes))
        if smallest < 3:
            raise ConfigError(
                f"randwire {regime} regime with nodes={nodes} has a stage of {smallest} node(s); "
                f"every stage needs >= 3 (nodes >= {3 if regime == 'small' else 6})"
            )
        self._smallest = smallest
        self._decisions: dict[str, tuple[str, ...]] = {
            "generator": GENERATORS,
            "er_p": (NA, *ER_P),
            "ba_m": (NA, *(m for m in BA_M if int(m) < smallest)),
            "ws_k": (NA, *(k for k in WS_K if int(k) < smallest)),
            "ws_p": (NA, *WS_P),
            "seed": tuple(str(s) for s in range(seeds)),
        }

    def config(self) -> dict[str, Any]:
        return {"regime": self.regime, "nodes": self.nodes, "channels": self.channels, "seeds": self.seeds}

    def decisions(self) -> dict[str, tuple[str, ...]]:
        return dict(self._decisions)

    # ---- canonical points --------------------------------------------------------------------
    def _param_options(self, generator: str) -> dict[str, tuple[str, ...]]:
        """Decision -> its real (non-``-``) options, for the decisions of ``generator``."""
        return {
            d: self._decisions[d][1:] for (g, _), d in PARAM_DECISIONS.items() if g == generator
        }

    def _graph_points(self, generator: str) -> list[dict[str, str]]:
        """Every canonical setting of the four parameter decisions for ``generator``."""
        points: list[dict[str, str]] = [{d: NA for d in PARAM_DECISIONS.values()}]
        for d, opts in self._param_options(generator).items():
            points = [{**p, d: o} for p in points for o in opts]
        return points

    def check(self, arch: Arch) -> None:
        """Reject an Arch whose parameters do not match its generator (``-`` exactly when unused)."""
        generator = arch["generator"]
        for (g, param), d in PARAM_DECISIONS.items():
            value = arch[d]
            if g == generator and value == NA:
                raise ArchError(
                    f"generator {generator} needs {d} ({param}); valid: {', '.join(self._decisions[d][1:])}"
                )
            if g != generator and value != NA:
                raise ArchError(
                    f"{d} belongs to generator {g} and must be {NA!r} when generator={generator}, got {value!r}"
                )

    def size(self) -> int:
        """Exact number of canonical architectures (generator instances)."""
        return sum(len(self._graph_points(g)) for g in GENERATORS) * self.seeds

    def sample(self, rng: random.Random) -> Arch:
        """Uniform over the canonical points (so each generator in proportion to its points)."""
        points = [({"generator": g} | p) for g in GENERATORS for p in self._graph_points(g)]
        point = rng.choice(points)
        return self.make(point | {"seed": rng.choice(self._decisions["seed"])})

    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        """Change one of the *applicable* decisions (generator, its parameters, seed) uniformly.

        A new generator comes with uniformly drawn parameters (the old ones become ``-``); the
        base class's single-decision change could never switch generators, since the old
        generator's parameters would be left set.
        """
        self.validate(arch)
        generator = arch["generator"]
        params = self._param_options(generator)
        mutable = ["generator", *(d for d, opts in params.items() if len(opts) > 1)]
        if len(self._decisions["seed"]) > 1:
            mutable.append("seed")
        d = rng.choice(mutable)
        if d == "generator":
            new = rng.choice([g for g in GENERATORS if g != generator])
            point = rng.choice(self._graph_points(new))
            return self.make({"generator": new} | point | {"seed": arch["seed"]})
        return self.make(dict(arch.choices) | {d: rng.choice([o for o in self._decisions[d] if o not in (arch[d], NA)])})

    def neighbours(self, arch: Arch) -> list[Arch]:
        """Archs one applicable decision away: another value of a parameter or of the seed, or
        another generator with any of its parameter settings (same seed)."""
        self.validate(arch)
        generator = arch["generator"]
        out: list[Arch] = []
        for g in GENERATORS:
            if g != generator:
                out.extend(self.make({"generator": g} | p | {"seed": arch["seed"]}) for p in self._graph_points(g))
        for d in [*self._param_options(generator), "seed"]:
            out.extend(arch.replace(**{d: o}) for o in self._decisions[d] if o not in (arch[d], NA))
        return out

    def graph_params(self, arch: Arch) -> dict[str, float | int]:
        """The generator parameters of ``arch`` as numbers, e.g. ``{"k": 4, "p": 0.75}``."""
        self.validate(arch)
        generator = arch["generator"]
        out: dict[str, float | int] = {}
        for (g, param), d in PARAM_DECISIONS.items():
            if g == generator:
                out[param] = float(arch[d]) if param == "p" else int(arch[d])
        return out

    # ---- strings -----------------------------------------------------------------------------
    def format(self, arch: Arch) -> str:
        self.validate(arch)
        generator = arch["generator"]
        inner = ",".join(f"{param}={arch[d]}" for (g, param), d in PARAM_DECISIONS.items() if g == generator)
        return f"{generator}({inner})/seed={arch['seed']}"

    def parse(self, text: str) -> Arch:
        """Parse ``ER(p=P)/seed=S``, ``BA(m=M)/seed=S`` or ``WS(k=K,p=P)/seed=S``."""
        if not isinstance(text, str):
            raise ArchError(f"a randwire architecture must be a str, got {type(text).__name__}")
        match = _ARCH_RE.fullmatch(re.sub(r"\s+", "", text))
        if match is None:
            raise ArchError(
                f"not a randwire architecture: {text!r}; expected e.g. 'ER(p=0.2)/seed=0', "
                f"'BA(m=5)/seed=1' or 'WS(k=4,p=0.75)/seed=3'"
            )
        generator, inner, seed_text = match.group(1).upper(), match.group(2), match.group(3)
        if generator not in GENERATORS:
            raise ArchError(f"unknown graph generator {match.group(1)!r} in {text!r}; valid: {', '.join(GENERATORS)}")
        mapping = {"generator": generator} | {d: NA for d in PARAM_DECISIONS.values()}
        expected = {param: d for (g, param), d in PARAM_DECISIONS.items() if g == generator}
        seen: set[str] = set()
        for item in inner.split(",") if inner else []:
            param, sep, value = item.partition("=")
            param = param.lower()
            if not sep or param not in expected:
                raise ArchError(
                    f"bad parameter {item!r} of {generator} in {text!r}; {generator} takes {', '.join(expected)}"
                )
            if param in seen:
                raise ArchError(f"parameter {param} given twice in {text!r}")
            seen.add(param)
            mapping[expected[param]] = self._match_option(expected[param], value, text)
        missing = [p for p in expected if p not in seen]
        if missing:
            raise ArchError(f"{generator} needs parameter(s) {', '.join(missing)} in {text!r}")
        mapping["seed"] = self._match_option("seed", seed_text, text)
        return self.make(mapping)

    def _match_option(self, decision: str, value: str, text: str) -> str:
        """The option of ``decision`` numerically equal to ``value`` (``.75`` -> ``0.75``)."""
        opts = [o for o in self._decisions[decision] if o != NA]
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        for o in opts:
            if float(o) == number:
                return o
        raise ArchError(
            f"{decision}={value!r} in {text!r} is not an option of this randwire space; valid: {', '.join(opts)}"
        )

    # ---- networks ----------------------------------------------------------------------------
    def stage_dags(self, arch: Arch, *, N: int | None = None) -> list[RandomDAG]:
        """The random graph of every stage of ``arch`` (``N`` defaults to the space's ``nodes``)."""
        self.validate(arch)
        N = self.nodes if N is None else N
        plan = stage_plan(self.regime, self.channels, N)
        generator, params = arch["generator"], self.graph_params(arch)
        seeds = stage_seeds(int(arch["seed"]), len(plan))
        for n, _ in plan:  # report a build-time N that the arch's parameters do not fit
            check_generator_params(generator, n, params)
        return [random_dag(generator, n, s, **params) for (n, _), s in zip(plan, seeds)]

    def build(
        self, arch: Arch, *, num_classes: int = 10, in_channels: int = 3, C: int | None = None,
        N: int | None = None, stem_stride: int = 2, head: int = HEAD_CHANNELS, dropout: float = 0.0,
        **kwargs: Any,
    ) -> RandWireNet:
        """The stand-alone randomly wired network of ``arch`` (paper Table 1).

        Args:
            arch: a randwire architecture.
            num_classes: classifier outputs.
            in_channels: input image channels.
            C: channel width (default: the space's ``channels``).
            N: nodes per full stage (default: the space's ``nodes``).
            stem_stride: 2 (paper) or 1 (small images: conv1, and conv2 of the small regime,
                keep the resolution).
            head: width of the classifier's 1x1 conv (1280 in the paper).
            dropout: dropout before the final fc.

        Raises:
            ArchError: ``arch`` is not a randwire architecture.
            ConfigError: an unknown option, a bad size, or an ``N`` whose stages cannot hold
                the arch's generator parameters.
        """
        if kwargs:
            raise ConfigError(
                f"unknown randwire network option(s) {sorted(kwargs)}; valid: num_classes, in_channels, "
                "C, N, stem_stride, head, dropout"
            )
        C = self.channels if C is None else C
        for label, value, low in (
            ("num_classes", num_classes, 1), ("in_channels", in_channels, 1), ("C", C, 2), ("N", N, 2),
            ("head", head, 1),
        ):
            if value is None and label == "N":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"randwire network option {label} must be an int >= {low}, got {value!r}")
        if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
            raise ConfigError(f"randwire stem_stride must be 1 or 2, got {stem_stride!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"randwire dropout must be in [0, 1), got {dropout!r}")
        dags = self.stage_dags(arch, N=N)
        return RandWireNet(
            dags, regime=self.regime, C=C, num_classes=num_classes, in_channels=in_channels,
            stem_stride=stem_stride, head=head, dropout=float(dropout), arch_text=self.format(arch),
        )

    def supernet(self, *, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> Supernet:
        """Always raises: randomly wired networks have no weight-sharing supernet.

        Raises:
            ConfigError: every architecture is its own network trained from scratch (paper
                Section 4); different graphs share no operations to share weights over.
        """
        raise ConfigError(
            "randwire has no supernet: each generator instance is a separate randomly wired network "
            "trained from scratch; use a multi-trial method (random search, evolution) with the train evaluator"
        )
