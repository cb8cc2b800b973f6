"""Random graph generators and their DAG form for randomly wired networks.

Xie, Kirillov, Girshick & He, "Exploring Randomly Wired Neural Networks for Image
Recognition", ICCV 2019 (arXiv:1904.01569), Section 3.2-3.3. The paper released no code; the
generators follow its text, and the networkx calls match the unofficial re-implementations
(``JiaminRen/RandWireNN`` ``utils.py``, ``seungwonpark/RandWireNN`` ``model/graphs``).

Three classical random graph models on ``N`` nodes labelled ``0..N-1``:

* **ER(P)** (Erdős-Rényi): every pair of nodes is joined independently with probability ``P``
  (``networkx.erdos_renyi_graph``). Node index = the networkx label.
* **BA(M)** (Barabási-Albert): the paper starts from ``M`` nodes without edges, adds node ``M``
  joined to all of them, then adds nodes ``M+1..N-1`` one at a time, each joined to ``M``
  distinct existing nodes chosen with probability proportional to their degree. networkx 3's
  ``barabasi_albert_graph`` starts from a star whose *centre is node 0* by default, which gives
  the same undirected graphs up to relabelling but a different node order (hence a different
  DAG); we pass it the paper's start instead (``initial_graph`` = nodes ``0..M-1`` joined to node
  ``M``), so node indices are the order in which nodes were added, as in the paper.
* **WS(K, P)** (Watts-Strogatz): nodes on a ring, each joined to its ``K/2`` neighbours on both
  sides; then, for ``i = 1..K/2`` and every node ``v`` in ring order, the edge from ``v`` to its
  ``i``-th clockwise neighbour is rewired with probability ``P`` to a uniformly chosen node that
  is neither ``v`` nor already a neighbour. That is exactly ``networkx.watts_strogatz_graph``;
  node index = ring position. The re-implementations use ``connected_watts_strogatz_graph``
  (redraw until connected); the paper does not ask for connectivity, so we do not redraw: a
  node that loses all its edges is both a source and a sink of the DAG and simply runs
  between the stage's input and output nodes.

**DAG conversion** (paper Section 3.3): every edge is directed from the lower to the higher
node index, so index order is a topological order. Nodes without incoming edges (*sources*)
are fed by an extra unique input node, and nodes without outgoing edges (*sinks*) feed an extra
unique output node. In :meth:`RandomDAG.to_networkx` the input node is labelled ``-1`` and the
output node ``N``, so every edge of the full DAG still goes from a lower to a higher label.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nasforge.errors import ConfigError, require_choice

if TYPE_CHECKING:
    import networkx as nx

#: The three generator families of the paper, in the paper's order.
GENERATORS: tuple[str, ...] = ("ER", "BA", "WS")

#: The parameters each generator takes (lower-case, as in the text form ``WS(k=4,p=0.75)``).
GENERATOR_PARAMS: dict[str, tuple[str, ...]] = {"ER": ("p",), "BA": ("m",), "WS": ("k", "p")}

#: Label of the extra input node in :meth:`RandomDAG.to_networkx` (the output node is ``N``).
INPUT_NODE = -1


def _check_int(name: str, value: object, low: int, high: int | None, rule: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an int ({rule}), got {value!r}")
    v = int(value)
    if v < low or (high is not None and v > high):
        raise ConfigError(f"{name} must satisfy {rule}, got {name}={v}")
    return v


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
    v = float(value)
    if not 0.0 <= v <= 1.0:  # also rejects NaN
        raise ConfigError(f"{name} must be a probability in [0, 1], got {name}={v}")
    return v


def check_generator_params(generator: str, n: int, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``generator`` and its parameters for ``n`` nodes; return them normalised.

    Domains (paper Section 3.2): ``N >= 2``; ER: ``0 <= P <= 1``; BA: ``1 <= M < N``;
    WS: ``K`` even with ``2 <= K < N`` and ``0 <= P <= 1``.

    Raises:
        UnknownNameError: ``generator`` is not one of :data:`GENERATORS`.
        ConfigError: a missing, extra or out-of-domain parameter, or ``n < 2``.
    """
    require_choice("graph generator", generator, GENERATORS)
    n = _check_int("N (nodes)", n, 2, None, "N >= 2")
    expected = GENERATOR_PARAMS[generator]
    names = set(params)
    if names != set(expected):
        raise ConfigError(
            f"{generator} takes parameter(s) {', '.join(expected)}, got {', '.join(sorted(names)) or 'none'}"
        )
    out: dict[str, Any] = {}
    if "p" in expected:
        out["p"] = _check_probability("p", params["p"])
    if generator == "BA":
        out["m"] = _check_int("m", params["m"], 1, n - 1, f"1 <= m < N = {n}")
    if generator == "WS":
        k = _check_int("k", params["k"], 2, n - 1, f"2 <= k < N = {n}, k even")
        if k % 2:
            raise ConfigError(f"WS needs an even k (k/2 ring neighbours on each side), got k={k}")
        out["k"] = k
    return out


def random_graph(generator: str, n: int, seed: int, **params: Any) -> nx.Graph:
    """The undirected random graph of the paper on nodes ``0..n-1`` (in the paper's index order).

    Args:
        generator: ``"ER"``, ``"BA"`` or ``"WS"``.
        n: number of nodes ``N``.
        seed: seed of the generator's random stream (the same seed gives the same graph).
        **params: ``p`` for ER; ``m`` for BA; ``k`` and ``p`` for WS.

    Raises:
        UnknownNameError, ConfigError: see :func:`check_generator_params`.
    """
    import networkx as nx

    checked = check_generator_params(generator, n, params)
    seed = _check_int("seed", seed, 0, None, "seed >= 0")
    if generator == "ER":
        return nx.erdos_renyi_graph(n, checked["p"], seed=seed)
    if generator == "BA":
        m = checked["m"]
        start = nx.Graph()
        start.add_nodes_from(range(m + 1))
        start.add_edges_from((i, m) for i in range(m))  # node M joins the M initial nodes
        return nx.barabasi_albert_graph(n, m, seed=seed, initial_graph=start)
    return nx.watts_strogatz_graph(n, checked["k"], checked["p"], seed=seed)


@dataclass(frozen=True)
class RandomDAG:
    """A random graph directed from lower to higher node index, plus its input/output roles.

    Attributes:
        num_nodes: ``N``; the nodes are ``0..N-1`` and index order is a topological order.
        edges: ``(u, v)`` pairs with ``u < v``, sorted.
        sources: nodes without incoming edges, in index order (fed by the unique input node).
        sinks: nodes without outgoing edges, in index order (averaged by the unique output node).
    """

    num_nodes: int
    edges: tuple[tuple[int, int], ...]
    sources: tuple[int, ...]
    sinks: tuple[int, ...]

    @classmethod
    def from_graph(cls, graph: nx.Graph) -> RandomDAG:
        """Direct every edge of an undirected graph on ``0..N-1`` from lower to higher index."""
        n = graph.number_of_nodes()
        if sorted(graph.nodes) != list(range(n)):
            raise ConfigError(f"graph nodes must be 0..{n - 1}, got {sorted(graph.nodes)[:8]}...")
        edges = tuple(sorted((min(u, v), max(u, v)) for u, v in graph.edges if u != v))
        has_in = {v for _, v in edges}
        has_out = {u for u, _ in edges}
        return cls(
            num_nodes=n,
            edges=edges,
            sources=tuple(v for v in range(n) if v not in has_in),
            sinks=tuple(v for v in range(n) if v not in has_out),
        )

    def predecessors(self) -> list[tuple[int, ...]]:
        """For every node, its predecessors among ``0..N-1`` in index order (empty for sources)."""
        preds: list[list[int]] = [[] for _ in range(self.num_nodes)]
        for u, v in self.edges:
            preds[v].append(u)
        return [tuple(p) for p in preds]

    def to_networkx(self) -> nx.DiGraph:
        """The full DAG: nodes ``0..N-1``, input node ``-1`` -> sources, sinks -> output node ``N``."""
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(range(INPUT_NODE, self.num_nodes + 1))
        g.add_edges_from(self.edges)
        g.add_edges_from((INPUT_NODE, v) for v in self.sources)
        g.add_edges_from((v, self.num_nodes) for v in self.sinks)
        return g


def random_dag(generator: str, n: int, seed: int, **params: Any) -> RandomDAG:
    """:func:`random_graph` converted to a :class:`RandomDAG` (the paper's per-stage graph)."""
    return RandomDAG.from_graph(random_graph(generator, n, seed, **params))
