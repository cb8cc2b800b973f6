"""The HTML report of a run directory (``nasforge report RUN_DIR``).

* :mod:`nasforge.report.html` — reads ``results.json`` / ``config.json`` and writes one
  self-contained page (every plot an inline base64 PNG, no scripts, no external URLs);
* :mod:`nasforge.report.plots` — the matplotlib (Agg) figures: best-so-far curve, Pareto
  front, training curves, heat maps of architecture weights and of derived choices;
* :mod:`nasforge.report.cells` — the found architecture drawn: a cell DAG (nb201, darts,
  randwire) or a block diagram of a chain (mobilenet, zennas, any other space).
"""

from __future__ import annotations

from nasforge.report.html import build_report, load_run, write_report

__all__ = ["build_report", "load_run", "write_report"]
