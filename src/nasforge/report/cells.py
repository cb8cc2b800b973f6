"""The found architecture drawn with matplotlib alone (no graphviz binary needed).

* ``nb201``: the cell DAG, nodes 0 (input) .. 3 (output), one labelled arc per edge
  (``none`` edges left out, as they carry nothing);
* ``darts``: the normal and the reduction cell, inputs ``c_{k-2}``, ``c_{k-1}``, intermediate
  nodes 0-3 with their two labelled input edges, and the concatenated output ``c_{k}``;
* ``randwire``: the random graph of the first random-wiring stage (input, nodes, output);
* ``mobilenet``, ``zennas``: the chain of blocks as a block diagram (mobilenet coloured by stage);
* any other space: its decisions as a chain of ``decision = option`` boxes.

:func:`draw_architecture` returns ``(title, figure, caption)`` triples.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch

from nasforge.report.plots import _TAB20, new_figure

Drawing = tuple[str, Figure, str]

_IN, _OUT, _MID = "#9fd89f", "#ffc680", "#d6e4f5"


def draw_architecture(space_name: str, space: Any, arch_text: str, build_kwargs: Mapping[str, Any] | None = None) -> list[Drawing]:
    """Drawings of ``arch_text`` (the space's text form); a chain of decisions when the space has
    no dedicated drawing or the text does not parse."""
    drawers: dict[str, Callable[[Any, str, Mapping[str, Any]], list[Drawing]]] = {
        "nb201": _nb201, "darts": _darts, "randwire": _randwire, "mobilenet": _mobilenet, "zennas": _zennas,
    }
    drawer = drawers.get(space_name)
    if drawer is not None:
        try:
            return drawer(space, arch_text, dict(build_kwargs or {}))
        except Exception:  # an unreadable architecture falls back to its decisions
            pass
    try:
        arch = space.parse(arch_text)
        items = [f"{d}\n= {o}" for d, o in arch.choices]
    except Exception:
        items = [arch_text]
    return [("architecture", chain(items), "The architecture's decisions in the space's canonical order.")]


# ---- graph drawing ----------------------------------------------------------------------------


def _node(ax: Axes, xy: tuple[float, float], label: str, colour: str, radius: float = 0.26,
          fontsize: float = 9) -> Circle:
    circle = Circle(xy, radius, facecolor=colour, edgecolor="#333333", linewidth=1.0, zorder=3)
    ax.add_patch(circle)
    ax.text(xy[0], xy[1], label, ha="center", va="center", fontsize=fontsize, zorder=4)
    return circle


def _edge(ax: Axes, a: Circle, b: Circle, *, rad: float = 0.0, label: str | None = None, at: float = 0.5,
          colour: str = "#333333", width: float = 1.2, fontsize: float = 7.5, style: str = "-") -> None:
    (x1, y1), (x2, y2) = a.center, b.center
    arrow = FancyArrowPatch((x1, y1), (x2, y2), patchA=a, patchB=b, arrowstyle="-|>", mutation_scale=11,
                            connectionstyle=f"arc3,rad={rad}", color=colour, linewidth=width, linestyle=style, zorder=2)
    ax.add_patch(arrow)
    if label:
        # the point at ``at`` of arc3's quadratic Bezier curve, whose control point is the chord's
        # midpoint shifted by rad * (dy, -dx) (exact for an equal-aspect axis)
        dx, dy = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 + rad * dy, (y1 + y2) / 2 - rad * dx
        u = 1.0 - at
        mx, my = u * u * x1 + 2 * u * at * cx + at * at * x2, u * u * y1 + 2 * u * at * cy + at * at * y2
        ax.text(mx, my, label, ha="center", va="center", fontsize=fontsize, zorder=5,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.9})


def _finish(ax: Axes, xs: Sequence[float], ys: Sequence[float], margin: float = 0.6) -> None:
    ax.set_xlim(min(xs) - margin, max(xs) + margin)
    ax.set_ylim(min(ys) - margin, max(ys) + margin)
    ax.set_aspect("equal")
    ax.axis("off")


def _nb201(space: Any, arch_text: str, build_kwargs: Mapping[str, Any]) -> list[Drawing]:
    arch = space.parse(arch_text)
    fig = new_figure(8, 3.0)
    ax = fig.add_subplot()
    xs = [0.0, 1.8, 3.6, 5.4]
    colours = [_IN, _MID, _MID, _OUT]
    names = ["0\nin", "1", "2", "3\nout"]
    nodes = [_node(ax, (x, 0.0), n, c, radius=0.3) for x, n, c in zip(xs, names, colours)]
    rads = {(0, 1): 0.0, (1, 2): 0.0, (2, 3): 0.0, (0, 2): -0.45, (1, 3): 0.45, (0, 3): -0.5}
    skipped = 0
    for (frm, to), rad in rads.items():
        op = arch[f"edge_{to}_{frm}"]
        if op == "none":
            skipped += 1
            continue
        _edge(ax, nodes[frm], nodes[to], rad=rad, label=op)
    _finish(ax, xs, [-1.6, 1.6], margin=0.5)
    caption = "The NAS-Bench-201 cell: node 3 sums every edge into it; each edge applies its op."
    if skipped:
        caption += f" {skipped} edge(s) with op 'none' (no connection) are not drawn."
    return [("cell", fig, caption)]


def _darts(space: Any, arch_text: str, build_kwargs: Mapping[str, Any]) -> list[Drawing]:
    arch = space.parse(arch_text)
    fig = new_figure(13, 3.6)
    for k, cell in enumerate(("normal", "reduce")):
        ax = fig.add_subplot(1, 2, k + 1)
        # inputs top and bottom left, intermediate nodes on a line, the output at its end
        pos = {0: (0.0, 1.9), 1: (0.0, -1.9), 6: (2.0 + 2.4 * 4, 0.0)}
        for i in range(4):
            pos[i + 2] = (2.0 + 2.4 * i, 0.0)
        labels = {0: "$c_{k-2}$", 1: "$c_{k-1}$", 2: "0", 3: "1", 4: "2", 5: "3", 6: "$c_{k}$"}
        nodes = {n: _node(ax, xy, labels[n], _IN if n < 2 else (_OUT if n == 6 else _MID), radius=0.4, fontsize=8)
                 for n, xy in pos.items()}
        for n in range(2, 6):  # the output concatenates the intermediate nodes
            _edge(ax, nodes[n], nodes[6], rad=0.0 if n == 5 else 0.22 + 0.04 * (5 - n), colour="#aaaaaa",
                  width=0.8, style="--")
        for j, (op, inp) in enumerate(space.cell_edges(arch, cell)):
            node = 2 + j // 2
            if inp < 2:
                _edge(ax, nodes[inp], nodes[node], label=op, at=0.7, fontsize=6.5)
            else:
                _edge(ax, nodes[inp], nodes[node], rad=0.0 if node - inp == 1 else -0.5, label=op, fontsize=6.5)
        ax.set_title(f"{cell} cell", fontsize=10)
        _finish(ax, [p[0] for p in pos.values()], [p[1] for p in pos.values()], margin=0.6)
    caption = ("The DARTS cells: each intermediate node (0-3) sums its two input edges; the output c_k "
               "concatenates nodes 0-3 (dashed). The inputs are the outputs of the two previous cells.")
    return [("cells", fig, caption)]


def _randwire(space: Any, arch_text: str, build_kwargs: Mapping[str, Any]) -> list[Drawing]:
    arch = space.parse(arch_text)
    dag = space.stage_dags(arch, N=build_kwargs.get("N"))[0]
    n = dag.num_nodes
    depth = [0] * n
    for u, v in dag.edges:  # edges go from lower to higher index: one pass in index order is enough
        depth[v] = max(depth[v], depth[u] + 1)
    layers: dict[int, list[int]] = {}
    for v in range(n):
        layers.setdefault(depth[v] + 1, []).append(v)
    pos: dict[int, tuple[float, float]] = {-1: (0.0, 0.0), n: ((max(layers) + 1) * 1.2, 0.0)}
    for layer, members in layers.items():
        for i, v in enumerate(members):
            pos[v] = (layer * 1.2, (i - (len(members) - 1) / 2) * 0.8)
    width = min(14.0, 2.0 + 1.0 * (max(layers) + 2))
    height = min(9.0, 1.5 + 0.5 * max(len(m) for m in layers.values()))
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    nodes = {v: _node(ax, pos[v], str(v) if 0 <= v < n else ("in" if v < 0 else "out"),
                      _IN if v < 0 else (_OUT if v == n else _MID), radius=0.2, fontsize=6) for v in pos}
    for u, v in dag.edges:
        _edge(ax, nodes[u], nodes[v], rad=0.08, colour="#555555", width=0.7)
    for v in dag.sources:
        _edge(ax, nodes[-1], nodes[v], rad=0.0, colour="#2ca02c", width=0.7)
    for v in dag.sinks:
        _edge(ax, nodes[v], nodes[n], rad=0.0, colour="#ff7f0e", width=0.7)
    _finish(ax, [p[0] for p in pos.values()], [p[1] for p in pos.values()], margin=0.5)
    caption = (f"The random graph of the first random-wiring stage of {arch_text} ({n} nodes, {len(dag.edges)} "
               "edges): every node is ReLU - separable conv - BN over the weighted sum of its inputs.")
    return [("first stage graph", fig, caption)]


def _mobilenet(space: Any, arch_text: str, build_kwargs: Mapping[str, Any]) -> list[Drawing]:
    stages = [s.split() for s in arch_text.split("|")]
    items, groups = [], []
    for i, blocks in enumerate(stages):
        for b in blocks:
            items.append(b.replace("_", " "))
            groups.append(i)
    if not items:
        raise ValueError("no blocks")
    legend = [f"stage {i + 1}" for i in range(len(stages))]
    return [("blocks", chain(items, groups=groups, legend=legend),
             "The network's blocks in order (ir: inverted residual / MBConv, r: repeats, k: kernel, s: stride, "
             "e: expansion, c: output channels; skip: the layer is left out), coloured by stage.")]


def _zennas(space: Any, arch_text: str, build_kwargs: Mapping[str, Any]) -> list[Drawing]:
    blocks = re.findall(r"([A-Za-z][A-Za-z0-9]*)\(([^)]*)\)", arch_text)
    if not blocks:
        raise ValueError("no blocks")
    kinds: list[str] = []
    items, groups = [], []
    for name, args in blocks:
        short = name.removeprefix("Super")
        kind = re.sub(r"K\d.*", "", short) or short
        if kind not in kinds:
            kinds.append(kind)
        items.append(f"{short}\n({args})")
        groups.append(kinds.index(kind))
    return [("blocks", chain(items, groups=groups, legend=kinds),
             "The Zen-NAS network's blocks in order: (in channels, out channels, stride, bottleneck channels, "
             "sub-layers) for residual blocks, (in, out, stride, sub-layers) for plain convolutions.")]


def chain(items: Sequence[str], *, groups: Sequence[int] | None = None, legend: Sequence[str] | None = None,
          per_row: int = 6) -> Figure:
    """A block diagram: ``items`` as boxes joined by arrows, row after row in a snake order."""
    box_w, box_h, gap_x, gap_y = 2.0, 0.9, 0.55, 0.6
    n = len(items)
    rows = (n + per_row - 1) // per_row
    cols = min(n, per_row)
    fig = new_figure(min(14.0, 1.0 + cols * 1.75), 0.6 + rows * 1.05 + (0.4 if legend else 0.0))
    ax = fig.add_subplot()
    boxes: list[FancyBboxPatch] = []
    for i, text in enumerate(items):
        r, c = divmod(i, per_row)
        if r % 2:
            c = per_row - 1 - c
        x, y = c * (box_w + gap_x), -r * (box_h + gap_y)
        colour = _TAB20[10 + (groups[i] % 10)] if groups is not None else _MID
        box = FancyBboxPatch((x - box_w / 2, y - box_h / 2), box_w, box_h, boxstyle="round,pad=0.02,rounding_size=0.12",
                             facecolor=colour, edgecolor="#333333", linewidth=0.9, zorder=3)
        ax.add_patch(box)
        wrapped = "\n".join(textwrap.fill(line, 20, break_long_words=False) for line in str(text).split("\n"))
        ax.text(x, y, wrapped, ha="center", va="center", fontsize=6.5, zorder=4)
        boxes.append(box)
    for a, b in zip(boxes, boxes[1:]):
        ax.add_patch(FancyArrowPatch(_centre(a), _centre(b), patchA=a, patchB=b, arrowstyle="-|>", mutation_scale=9,
                                     color="#333333", linewidth=0.9, zorder=2))
    if legend and groups is not None:
        used = sorted(set(groups))
        ax.legend(handles=[Patch(color=_TAB20[10 + (g % 10)], label=legend[g]) for g in used if g < len(legend)],
                  loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(8, len(used)), fontsize=7, frameon=False)
    ax.set_xlim(-box_w / 2 - 0.2, (cols - 1) * (box_w + gap_x) + box_w / 2 + 0.2)
    ax.set_ylim(-(rows - 1) * (box_h + gap_y) - box_h / 2 - 0.2, box_h / 2 + 0.2)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig


def _centre(box: FancyBboxPatch) -> tuple[float, float]:
    return box.get_x() + box.get_width() / 2, box.get_y() + box.get_height() / 2
