"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Every function takes plain JSON values (what ``results.json`` holds) and returns a
:class:`matplotlib.figure.Figure` or ``None`` when there is nothing to draw;
:func:`png_data_uri` turns a figure into an inline ``data:image/png;base64,...`` URI.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
#: Colours of categorical values (derived ops): matplotlib's tab20, light shades last.
_TAB20 = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]


def new_figure(width: float, height: float) -> Figure:
    """A figure with an Agg canvas attached (inches at :data:`DPI`)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_data_uri(fig: Figure) -> str:
    """``fig`` as a ``data:image/png;base64,...`` URI (the figure is not kept)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---- multi-trial searches ---------------------------------------------------------------------


def best_so_far(trials: Sequence[Mapping[str, Any]], metric: str, sign: int) -> Figure | None:
    """Each trial's ``metric`` (dots; infeasible trials as red crosses) and the best-so-far line.

    The best so far is taken over feasible trials (finite fitness) at the highest fidelity, as
    the search loop picks its best: a multi-fidelity method's cheap rungs are shown, lighter, but
    do not count.
    """
    rows = sorted((t for t in trials if finite(t.get("metrics", {}).get(metric))), key=lambda t: t["number"])
    if not rows:
        return None
    top = max(float(t.get("fidelity", 1.0)) for t in rows)
    fig = new_figure(8, 3.6)
    ax = fig.add_subplot()
    full = [t for t in rows if float(t.get("fidelity", 1.0)) == top and finite(t.get("fitness"))]
    low = [t for t in rows if float(t.get("fidelity", 1.0)) != top and finite(t.get("fitness"))]
    bad = [t for t in rows if not finite(t.get("fitness"))]
    ax.scatter([t["number"] for t in full], [t["metrics"][metric] for t in full], s=14, color="#1f77b4",
               label="trial" if not low else f"trial (fidelity {top:g})", zorder=3)
    if low:
        ax.scatter([t["number"] for t in low], [t["metrics"][metric] for t in low], s=10, color="#aec7e8",
                   label="lower-fidelity trial", zorder=2)
    if bad:
        ax.scatter([t["number"] for t in bad], [t["metrics"][metric] for t in bad], s=18, marker="x",
                   color="#d62728", label="infeasible (constraint broken)", zorder=2)
    if full:
        xs, ys, best = [], [], -math.inf
        for t in full:
            value = sign * float(t["metrics"][metric])
            best = max(best, value)
            xs.append(t["number"])
            ys.append(sign * best)
        last = max(t["number"] for t in rows)
        if xs[-1] < last:
            xs.append(last)
            ys.append(ys[-1])
        ax.step(xs, ys, where="post", color="#ff7f0e", linewidth=2, label="best so far", zorder=4)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} ({'higher' if sign > 0 else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def pareto_front(trials: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]],
                 objectives: Sequence[tuple[str, int]]) -> Figure | None:
    """The feasible trials on the first two objectives (y: the first) with the front highlighted."""
    if len(objectives) < 2:
        return None
    (my, sy), (mx, sx) = objectives[0], objectives[1]
    pool = [t for t in trials if finite(t.get("fitness"))
            and finite(t.get("metrics", {}).get(mx)) and finite(t.get("metrics", {}).get(my))]
    points = [f for f in front if finite(f.get(mx)) and finite(f.get(my))]
    if not pool and not points:
        return None
    fig = new_figure(8, 4.2)
    ax = fig.add_subplot()
    ax.scatter([t["metrics"][mx] for t in pool], [t["metrics"][my] for t in pool], s=12, color="#c7c7c7",
               label="feasible trial", zorder=2)
    if points:
        pts = sorted(points, key=lambda f: float(f[mx]))
        ax.plot([p[mx] for p in pts], [p[my] for p in pts], "-o", color="#d62728", markersize=6,
                label=f"Pareto front ({len(pts)})", zorder=3)
        for p in pts if len(pts) <= 12 else ():  # many labels would only overlap
            if "trial" in p:
                ax.annotate(str(p["trial"]), (p[mx], p[my]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"{mx} ({'max' if sx > 0 else 'min'})")
    ax.set_ylabel(f"{my} ({'max' if sy > 0 else 'min'})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


# ---- per-epoch curves -------------------------------------------------------------------------


def epoch_curves(history: Sequence[Mapping[str, Any]], *, skip: Sequence[str] = ("epoch", "seconds")) -> Figure | None:
    """The numeric per-epoch fields of ``history``: losses, accuracies (%), and each other scalar
    (lr, temperature, baseline...) in its own small panel."""
    if not history:
        return None
    keys: list[str] = []
    for record in history:
        for k, v in record.items():
            if k not in skip and k not in keys and finite(v):
                keys.append(k)
    if not keys:
        return None
    losses = [k for k in keys if "loss" in k]
    accs = [k for k in keys if "acc" in k and k not in losses]
    others = [k for k in keys if k not in losses and k not in accs][:6]
    panels: list[tuple[str, list[str]]] = []
    if losses:
        panels.append(("loss", losses))
    if accs:
        panels.append(("accuracy %", accs))
    panels.extend((k, [k]) for k in others)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(3.6 * ncols, 2.8 * nrows)
    for i, (label, names) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for name in names:
            xs = [r.get("epoch", j) for j, r in enumerate(history) if finite(r.get(name))]
            ys = [r[name] for r in history if finite(r.get(name))]
            ax.plot(xs, ys, marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=7)
    return fig


# ---- heat maps --------------------------------------------------------------------------------


def heatmap(matrix: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str], *, title: str,
            xlabel: str, colorbar: str, annotate: bool | None = None) -> Figure:
    """A numeric heat map (rows x cols) with labelled axes and a colour bar; small maps carry their values."""
    import numpy as np

    data = np.array([[v if finite(v) else np.nan for v in row] for row in matrix], dtype=float)
    n_rows, n_cols = data.shape
    fig = new_figure(min(14.0, 2.5 + 0.55 * n_cols), min(16.0, 1.4 + 0.28 * n_rows))
    ax = fig.add_subplot()
    image = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(n_rows), [str(r) for r in rows], fontsize=7)
    step = max(1, n_cols // 30)
    ax.set_xticks(range(0, n_cols, step), [str(c) for c in cols][::step], fontsize=7,
                  rotation=90 if max((len(str(c)) for c in cols), default=0) > 3 else 0)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=colorbar, shrink=0.8)
    if annotate is None:
        annotate = n_rows * n_cols <= 160
    if annotate:
        lo, hi = np.nanmin(data), np.nanmax(data)
        mid = (lo + hi) / 2 if np.isfinite(lo) and np.isfinite(hi) else 0.0
        for i in range(n_rows):
            for j in range(n_cols):
                if np.isfinite(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.3f}", ha="center", va="center", fontsize=6,
                            color="white" if data[i, j] < mid else "black")
    return fig


def choice_map(decisions: Sequence[str], options: Mapping[str, Sequence[str]], per_epoch: Sequence[Mapping[str, str]],
               epochs: Sequence[Any], *, title: str) -> Figure:
    """A categorical heat map: the option each decision takes in each epoch's derived architecture."""
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    labels: list[str] = []
    for d in decisions:
        for o in options.get(d, ()):
            if o not in labels:
                labels.append(o)
    for chosen in per_epoch:
        for o in chosen.values():
            if o not in labels:
                labels.append(o)
    colours = [_TAB20[i % len(_TAB20)] for i in range(len(labels))]
    data = np.full((len(decisions), len(per_epoch)), np.nan)
    for j, chosen in enumerate(per_epoch):
        for i, d in enumerate(decisions):
            if d in chosen:
                data[i, j] = labels.index(chosen[d])
    fig = new_figure(min(14.0, 3.5 + 0.45 * len(per_epoch)), min(16.0, 1.6 + 0.26 * len(decisions)))
    ax = fig.add_subplot()
    ax.imshow(data, aspect="auto", cmap=ListedColormap(colours), vmin=-0.5, vmax=len(labels) - 0.5,
              interpolation="nearest")
    ax.set_yticks(range(len(decisions)), list(decisions), fontsize=7)
    step = max(1, len(per_epoch) // 30)
    ax.set_xticks(range(0, len(per_epoch), step), [str(e) for e in epochs][::step], fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize=10)
    used = sorted({int(v) for v in data.flatten() if not np.isnan(v)})
    ax.legend(handles=[Patch(color=colours[i], label=labels[i]) for i in used], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    return fig
