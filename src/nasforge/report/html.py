"""One self-contained HTML page for a run directory (``nasforge report RUN_DIR``).

The page reads what ``nasforge search`` / ``nasforge train`` wrote (``results.json``, and
``config.json`` for the resolved config) and holds, where the run has them: the best-so-far
trajectory over trials, the Pareto front of a multi-objective search, the found architecture
drawn, per-epoch curves and architecture-weight heat maps of one-shot searches, params / FLOPs
/ latency of the result, the final training, the best trials, the resolved config and the
environment. Every plot is an inline ``data:`` PNG; the page has no scripts and no external
URLs, and its Content-Security-Policy forbids loading anything else. All text is escaped, and
every URL-like string (a storage URL) passes through :func:`~nasforge.study.store.redact_url`,
so a database password never reaches the page.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError

REPORT_NAME = "report.html"
_TOP_TRIALS = 10


@dataclass
class RunData:
    """A run directory's results, read and checked."""

    run_dir: Path
    results: dict[str, Any]
    config: dict[str, Any]  # redacted: config.json, or the results' copy when that file is absent


def load_run(run_dir: str | Path) -> RunData:
    """Read ``run_dir/results.json`` (and ``config.json``).

    Raises:
        ConfigError: the directory does not exist, holds no ``results.json``, or that file is
            not valid JSON or not a nasforge results file (the message names the path).
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise ConfigError(f"run directory not found: {root}")
    path = root / "results.json"
    if not path.is_file():
        raise ConfigError(f"{root} holds no results.json (not a finished nasforge run directory)")
    results = _read_json(path)
    if not isinstance(results, dict) or results.get("kind") not in ("search", "train") or "config" not in results:
        raise ConfigError(f"{path} is not a nasforge results file (expected a JSON object with kind "
                          "'search' or 'train' and a config)")
    config: Any = results.get("config")
    config_path = root / "config.json"
    if config_path.is_file():
        config = _read_json(config_path)
    if not isinstance(config, dict):
        raise ConfigError(f"the config of {root} is not a JSON object")
    return RunData(root, results, redact(config))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None


def redact(value: Any) -> Any:
    """``value`` with every string that holds a URL passed through ``redact_url`` (nested values too)."""
    from nasforge.study.store import redact_url

    if isinstance(value, str):
        return redact_url(value) if "://" in value else value
    if isinstance(value, Mapping):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``); return its path."""
    run = load_run(run_dir)
    path = Path(out) if out is not None else run.run_dir / REPORT_NAME
    page = build_report(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


# ---- page pieces ------------------------------------------------------------------------------


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A number for a table cell: integers with thousands separators, floats to 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer()
                                  and abs(value) >= 1000):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, code_cols: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = esc(fmt(cell))
            cells.append(f"<td><code>{text}</code></td>" if i in code_cols else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(fig: Any, alt: str, caption: str = "") -> str:
    from nasforge.report.plots import png_data_uri

    uri = png_data_uri(fig)
    width = int(fig.get_figwidth() * fig.dpi)
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{esc(alt)}" style="max-width:{width}px">{cap}</figure>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _guarded(what: str, make: Callable[[], str]) -> str:
    """A page part, or a note saying why it could not be made (the rest of the page still renders)."""
    try:
        return make()
    except Exception as e:  # a plot of odd data must not cost the whole report
        return note(f"could not draw {what}: {type(e).__name__}: {e}")


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;
color:#222;line-height:1.45}
h1{font-size:1.5em;margin-bottom:0.2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.6em}
table{border-collapse:collapse;margin:8px 0;font-size:0.88em}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f4f6f8}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:0.9em}
code{word-break:break-all}pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:8px;overflow:auto;max-height:480px}
figure{margin:10px 0}figure img{width:100%;height:auto;border:1px solid #eee}figcaption{font-size:0.85em;color:#555}
.note{color:#555;font-size:0.9em}summary{cursor:pointer;color:#335}.row{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}.sub{color:#666;margin-top:0}nav a{margin-right:12px;font-size:0.9em}
"""


def _page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    nav = "".join(f'<a href="#{esc(anchor)}">{esc(name)}</a>' for name, anchor, _ in sections)
    body = "".join(section(name, content, anchor) for name, anchor, content in sections)
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p><nav>{nav}</nav>\n{body}\n</body></html>\n"
    )


# ---- the report -------------------------------------------------------------------------------


def build_report(run: RunData) -> str:
    """The HTML text of the report of ``run``."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless; figures draw on their own Agg canvases anyway
    res, cfg = run.results, run.config
    space_name = str(cfg.get("space", res.get("config", {}).get("space", "?")))
    space = _space(space_name, cfg)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"run directory {run.run_dir.resolve()} - report written {stamp}"
    sections: list[tuple[str, str, str]] = []
    if res["kind"] == "train":
        final = res.get("final") or {}
        title = f"nasforge report: training on {space_name} / {cfg.get('data', '?')}"
        sections.append(("Result", "result", _result_section(res, cfg, final.get("arch"))))
        sections.append(("Architecture", "architecture", _guarded("the architecture", lambda: _arch_section(
            space_name, space, final.get("arch"), cfg))))
        sections.append(("Training", "training", _guarded("the training curves", lambda: _final_section(final))))
    else:
        one_shot = res.get("method_kind") == "one-shot"
        kind = "one-shot" if one_shot else "multi-trial"
        title = f"nasforge report: {cfg.get('method', '?')} ({kind}) on {space_name} / {cfg.get('data', '?')}"
        best_arch = (res.get("best") or {}).get("arch")
        sections.append(("Result", "result", _result_section(res, cfg, best_arch)))
        if one_shot:
            sections.append(("Search", "search", _guarded("the search curves", lambda: _one_shot_curves(res))))
            sections.append(("Architecture weights", "weights", _guarded(
                "the architecture weights", lambda: _weights_section(res, space_name, space))))
        else:
            sections.append(("Search", "search", _guarded("the search trajectory", lambda: _trajectory_section(res, cfg))))
            if len(res.get("objectives") or []) > 1:
                sections.append(("Pareto front", "pareto", _guarded("the Pareto front", lambda: _pareto_section(res))))
        sections.append(("Architecture", "architecture", _guarded("the architecture", lambda: _arch_section(
            space_name, space, best_arch, cfg))))
        if res.get("final"):
            sections.append(("Final training", "training", _guarded(
                "the final training", lambda: _final_section(res["final"]))))
        if not one_shot and res.get("trials"):
            sections.append(("Best trials", "trials", _top_trials(res, cfg)))
    sections.append(("Configuration", "config", _config_section(cfg)))
    sections.append(("Environment", "environment", _environment_section()))
    return _page(title, subtitle, sections)


def _space(name: str, cfg: Mapping[str, Any]) -> Any:
    from nasforge import get_space

    try:
        return get_space(name, **dict(cfg.get("space_kwargs") or {}))
    except Exception:
        return None


def _objectives(res: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[tuple[str, int]]:
    from nasforge.experiment import parse_objective

    texts = res.get("objectives") or [res.get("objective") or cfg.get("objective") or "val_acc"]
    out = []
    for text in texts:
        for part in str(text).split(","):
            if part.strip():
                out.append(parse_objective(part))
    return out


#: Metrics of the result shown first: cost-model numbers and the usual accuracies (all are in a fold-out).
_KEY_METRICS = ("params", "flops", "macs", "latency_ms", "val_acc", "val_loss", "train_acc", "test_acc")


def _result_section(res: Mapping[str, Any], cfg: Mapping[str, Any], arch: str | None) -> str:
    from nasforge.experiment import parse_constraint

    parts = []
    if arch:
        parts.append(f"<p>Found architecture: <code>{esc(arch)}</code></p>")
    rows: list[list[Any]] = []
    best = res.get("best") or {}
    final = res.get("final") or {}
    metrics = dict(best.get("metrics") or {})
    if best.get("trial") is not None:
        rows.append(["best trial", best["trial"], "the search"])
    wanted: list[str] = []
    if res.get("kind") == "search" and res.get("method_kind") != "one-shot":
        wanted += [m for m, _ in _objectives(res, cfg)]
    for text in cfg.get("constraints") or []:
        try:
            wanted.append(parse_constraint(str(text)).metric)
        except Exception:  # a constraint this version cannot parse: it is still in the config
            pass
    wanted += list(_KEY_METRICS)
    shown = [key for key in dict.fromkeys(wanted) if key in metrics]
    rows += [[key, metrics[key], "the search (evaluator / cost model)"] for key in shown]
    for key in ("params", "flops", "macs", "latency_ms"):
        if key in final and key not in metrics:
            rows.append([key, final[key], "the exported network"])
    for key in ("test_acc", "val_acc"):
        if key in (best.get("table") or {}):
            rows.append([f"NB201 table {key}", best["table"][key], "the NAS-Bench-201 table"])
    for key in ("test_acc", "test_loss", "train_acc", "epochs"):
        if key in final:
            rows.append([f"final {key}", final[key], "retrained on the full training set, tested on the test set"])
    if rows:
        parts.append('<div class="row">' + table(["quantity", "value", "from"], rows))
    else:
        parts.append('<div class="row">' + note(
            "results.json records no metrics for the result (e.g. a one-shot search without --table and "
            "without final training)."))
    info: list[list[Any]] = [["kind", res.get("method_kind") or ("train" if res.get("kind") == "train" else "multi-trial")]]
    for key in ("method", "space", "data", "evaluator", "device"):
        if key in cfg:
            info.append([key, cfg[key]])
    if res.get("objectives"):
        info.append(["objectives", ", ".join(map(str, res["objectives"]))])
    study = res.get("study") or {}
    if study.get("counts"):
        info.append(["trials", ", ".join(f"{k}: {v}" for k, v in sorted(study["counts"].items()))])
    if study.get("storage"):
        info.append(["study storage", redact(study["storage"])])
    if res.get("history") is not None and res.get("method_kind") == "one-shot":
        info.append(["search epochs", len(res.get("history") or [])])
    for key in ("seconds_this_run", "search_seconds_this_run"):
        if isinstance(res.get(key), (int, float)):
            info.append([key.replace("_", " "), round(float(res[key]), 1)])
    parts.append(table(["run", ""], info) + "</div>")
    every = [[f"NB201 table {k}" if src == "table" else k, v]
             for src, d in (("search", metrics), ("table", best.get("table") or {})) for k, v in sorted(d.items())]
    if len(metrics) > len(shown) or len(best.get("table") or {}) > 2:
        parts.append(f"<details><summary>all {len(every)} metrics of the result</summary>"
                     + table(["metric", "value"], every) + "</details>")
    return "".join(parts)


def _trajectory_section(res: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    from nasforge.report.plots import best_so_far

    trials = res.get("trials") or []
    if not trials:
        return note("results.json holds no finished trials.")
    metric, sign = _objectives(res, cfg)[0]
    fig = best_so_far(trials, metric, sign)
    if fig is None:
        return note(f"no trial reports the objective metric {metric!r}.")
    return figure(fig, f"best-so-far {metric} over trials",
                  f"{metric} of every finished trial and the best so far ({len(trials)} trials).")


def _pareto_section(res: Mapping[str, Any]) -> str:
    from nasforge.experiment import parse_objective
    from nasforge.report.plots import pareto_front

    objectives = [parse_objective(o) for o in res["objectives"]]
    front = res.get("pareto_front") or []
    parts = []
    fig = pareto_front(res.get("trials") or [], front, objectives)
    if fig is not None:
        shown = f"{objectives[0][0]} against {objectives[1][0]}"
        extra = f" (the first two of {len(objectives)} objectives)" if len(objectives) > 2 else ""
        parts.append(figure(fig, "Pareto front", f"Feasible trials, {shown}{extra}; the non-dominated ones in red, "
                                                   "labelled with their trial number when there are few."))
    if front:
        names = [m for m, _ in objectives]
        parts.append(table(["trial", "architecture", *names],
                           [[f.get("trial"), f.get("arch"), *(f.get(n) for n in names)] for f in front], code_cols=(1,)))
    return "".join(parts) or note("no Pareto front recorded.")


def _one_shot_curves(res: Mapping[str, Any]) -> str:
    from nasforge.report.plots import epoch_curves

    history = res.get("history") or []
    fig = epoch_curves(history)
    if fig is None:
        return note("the search history records no per-epoch numbers.")
    return figure(fig, "search curves per epoch",
                  f"Per-epoch averages of the search steps and the recorded schedule values ({len(history)} epochs).")


def _weights_section(res: Mapping[str, Any], space_name: str, space: Any) -> str:
    """Heat maps of what the history records per epoch, and of the final strengths."""
    from nasforge.report.plots import choice_map, heatmap

    history = res.get("history") or []
    parts = []
    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    weight_fields = _per_epoch_weight_fields(history)
    for name in weight_fields:
        rows, matrix = _weight_matrix(history, name)
        parts.append(figure(
            heatmap(matrix, rows, [str(e) for e in epochs], title=f"{name} per epoch", xlabel="epoch", colorbar=name),
            f"{name} per epoch", f"The history field {name!r} of every epoch (rows: key / candidate)."))
    recorded = sorted({k for h in history for k in h})
    if not weight_fields:
        parts.append(note(
            "The search history records, per epoch: " + (", ".join(recorded) or "nothing") + ". It holds no "
            "architecture weights per epoch, so the maps below show what exists: the architecture derived at "
            "the end of each epoch, and the final architecture weights (strengths)."))
    archs = [h.get("arch") for h in history]
    if space is not None and archs and all(isinstance(a, str) for a in archs):
        parsed = [dict(space.parse(a).choices) for a in archs]
        decisions = list(space.decisions())
        changes = sum(1 for a, b in zip(parsed, parsed[1:]) if a != b)
        parts.append(figure(
            choice_map(decisions, space.decisions(), parsed, epochs, title="derived choice per epoch"),
            "derived architecture per epoch",
            f"The option each decision takes in the architecture derived after each epoch "
            f"({changes} change(s) between consecutive epochs)."))
    strengths = res.get("strengths") or {}
    if strengths:
        rows = list(strengths)
        n = max(len(v) for v in strengths.values())
        names = _op_names(space_name, space, strengths)
        matrix = [[*map(float, strengths[k]), *([math.nan] * (n - len(strengths[k])))] for k in rows]
        parts.append(figure(
            heatmap(matrix, rows, names or [str(i) for i in range(n)], title="final architecture weights",
                    xlabel="candidate op" if names else "candidate index", colorbar="strength"),
            "final architecture weights",
            "The strengths the final architecture was derived from (one row per decision / edge), as the "
            "method reports them (probabilities for softmax relaxations)."))
    return "".join(parts) or note("the search recorded neither per-epoch architectures nor strengths.")


def _per_epoch_weight_fields(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """History fields holding, per epoch, a mapping of numbers or of number lists (weights, gates...)."""
    from nasforge.report.plots import finite

    fields: list[str] = []
    for record in history:
        for key, value in record.items():
            if key in fields or not isinstance(value, Mapping) or not value:
                continue
            ok = all(finite(v) or (isinstance(v, list) and v and all(finite(x) for x in v)) for v in value.values())
            if ok:
                fields.append(key)
    return fields


def _weight_matrix(history: Sequence[Mapping[str, Any]], name: str) -> tuple[list[str], list[list[float]]]:
    rows: list[str] = []
    for record in history:
        for key, value in (record.get(name) or {}).items():
            labels = [f"{key}[{i}]" for i in range(len(value))] if isinstance(value, list) else [str(key)]
            rows.extend(label for label in labels if label not in rows)
    matrix = [[math.nan] * len(history) for _ in rows]
    for j, record in enumerate(history):
        for key, value in (record.get(name) or {}).items():
            values = value if isinstance(value, list) else [value]
            for i, v in enumerate(values):
                label = f"{key}[{i}]" if isinstance(value, list) else str(key)
                matrix[rows.index(label)][j] = float(v)
    return rows, matrix


def _op_names(space_name: str, space: Any, strengths: Mapping[str, Sequence[float]]) -> list[str] | None:
    """Candidate names shared by every row of ``strengths``, when the space tells them."""
    names: list[str] | None = None
    for key, values in strengths.items():
        row: list[str] | None = None
        options = space.decisions().get(key) if space is not None else None
        if options is not None and len(options) == len(values):
            row = list(options)
        elif space_name == "darts":
            from nasforge.spaces.darts import PRIMITIVES

            row = list(PRIMITIVES) if len(values) == len(PRIMITIVES) else None
        if row is None or (names is not None and row != names):
            return None
        names = row
    return names


def _arch_section(space_name: str, space: Any, arch: str | None, cfg: Mapping[str, Any]) -> str:
    from nasforge.report.cells import draw_architecture

    if not arch:
        return note("results.json names no architecture.")
    if space is None:
        return note(f"the space {space_name!r} is not available here; the architecture is {arch}")
    parts = [figure(fig, f"{title} of the found architecture", caption)
             for title, fig, caption in draw_architecture(space_name, space, arch, cfg.get("build_kwargs"))]
    return "".join(parts)


def _final_section(final: Mapping[str, Any]) -> str:
    from nasforge.report.plots import epoch_curves

    parts = []
    history = final.get("history") or []
    fig = epoch_curves(history)
    if fig is not None:
        parts.append(figure(fig, "final training curves",
                            "Training loss and accuracy per epoch, the test set evaluated after each epoch "
                            "(eval_*), and the learning rate."))
    rows = [[k, final[k]] for k in ("arch", "test_acc", "test_loss", "train_acc", "epochs", "params", "flops", "macs")
            if k in final]
    for key in ("model_dir", "onnx"):
        if final.get(key):
            rows.append([key, final[key]])
    if final.get("recipe"):
        rows.append(["recipe", json.dumps(final["recipe"], sort_keys=True)])
    parts.append(table(["", ""], rows))
    return "".join(parts)


def _top_trials(res: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    from nasforge.report.plots import finite

    objectives = _objectives(res, cfg)
    trials = list(res.get("trials") or [])
    trials.sort(key=lambda t: (float(finite(t.get("fitness"))), float(t.get("fidelity", 1.0)),
                               t.get("fitness") if finite(t.get("fitness")) else -math.inf), reverse=True)
    metrics = [m for m, _ in objectives]
    for extra in ("params", "flops"):
        if extra not in metrics and any(extra in t.get("metrics", {}) for t in trials):
            metrics.append(extra)
    fidelity = len({t.get("fidelity", 1.0) for t in trials}) > 1
    header = ["trial", "architecture", *metrics, *(["fidelity"] if fidelity else [])]
    rows = []
    for t in trials[:_TOP_TRIALS]:
        m = t.get("metrics", {})
        rows.append([t.get("number"), t.get("arch"), *(m.get(k) for k in metrics),
                     *([t.get("fidelity")] if fidelity else [])])
    return (f"<p>The {min(len(trials), _TOP_TRIALS)} best of {len(trials)} finished trials "
            "(feasible first, then by fidelity and fitness).</p>" + table(header, rows, code_cols=(1,)))


def _config_section(cfg: Mapping[str, Any]) -> str:
    text = json.dumps(cfg, indent=2, sort_keys=True, default=str)
    return ("<p>The fully resolved configuration (config.json; a storage URL's password is shown as ***).</p>"
            f"<pre>{esc(text)}</pre>")


def environment() -> dict[str, str]:
    """Versions of Python, the platform and the libraries that drew this report."""
    from importlib import metadata

    import nasforge

    env = {"python": platform.python_version() + f" ({sys.implementation.name})", "platform": platform.platform(),
           "nasforge": nasforge.__version__}
    for dist in ("torch", "numpy", "optuna", "matplotlib"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = "not installed"
    return env


def _environment_section() -> str:
    rows = [[k, v] for k, v in environment().items()]
    return ("<p>The environment that wrote this report (results.json does not record the one that ran the "
            "search).</p>" + table(["", "version"], rows))
