"""Tabular evaluator: look an NB201 architecture up in the NAS-Bench-201 results table.

Dong & Yang, "NAS-Bench-201", ICLR 2020. The table is the CSV (optionally gzipped) with one
row per cell and the columns of ``shared/data/nb201/nb201_table.csv.gz``: ``arch_str``,
``cifar10valid_valid_acc`` (the search signal: 25k-image training, accuracy on the other 25k),
``cifar10_test_acc`` (the reported number), ``params_mb``, and device latencies. Each lookup
costs one query; the search budget on a table is counted in queries.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
from pathlib import Path

from nasforge.arch import Arch
from nasforge.errors import DataError
from nasforge.searchers.base import Result, Searcher
from nasforge.spaces.base import SearchSpace

_SEARCH_METRIC = "cifar10valid_valid_acc"
_REQUIRED = ("arch_str", _SEARCH_METRIC, "cifar10_test_acc", "params_mb")


class NB201Table:
    """Evaluator over the NAS-Bench-201 table: ``evaluator(arch) -> Result``.

    Metrics: ``val_acc`` (cifar10-valid validation accuracy, the search signal), ``test_acc``
    (CIFAR-10 test accuracy after training on train+valid), ``params``, and every other numeric
    column under its own name (latencies in ms, NASLib single-seed accuracies).
    """

    def __init__(self, space: SearchSpace, path: str | Path) -> None:
        if space.name != "nb201":
            raise DataError(f"the NB201 table evaluates only the 'nb201' space, not {space.name!r}")
        self.space = space
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"NB201 table not found: {self.path} (expected a CSV like nb201_table.csv.gz)")
        raw = self.path.read_bytes()
        text = gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode()
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{self.path} lacks columns {missing}; has {reader.fieldnames}")
        self.rows: dict[str, dict[str, float]] = {}
        for row in reader:
            metrics: dict[str, float] = {}
            for k, v in row.items():
                if k == "arch_str" or v in ("", None):
                    continue
                try:
                    metrics[k] = float(v)
                except ValueError:
                    continue
            metrics["val_acc"] = metrics[_SEARCH_METRIC]
            metrics["test_acc"] = metrics["cifar10_test_acc"]
            metrics["params"] = metrics["params_mb"] * 1e6
            self.rows[row["arch_str"]] = metrics
        self.queries = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __call__(self, arch: Arch) -> Result:
        key = self.space.format(self.space.validate(arch))
        if key not in self.rows:
            raise DataError(f"architecture {key} is not in the table {self.path}")
        self.queries += 1
        return Result(metrics=dict(self.rows[key]), cost=1.0)

    def best(self, metric: str = "test_acc") -> tuple[str, float]:
        """The table's optimum for ``metric`` (for regret plots and tests)."""
        key = max(self.rows, key=lambda k: self.rows[k][metric])
        return key, self.rows[key][metric]


@functools.lru_cache(maxsize=8)
def table_metric_names(path: str | Path) -> tuple[str, ...]:
    """The metrics lookups in the table at ``path`` give, read from its header and first row only
    (the search loop checks objectives and constraints against them before a run starts)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rt") if gzipped else open(path)) as f:  # noqa: SIM115 (one of two openers)
        head = [f.readline(), f.readline()]
    rows = list(csv.DictReader(io.StringIO("".join(head))))
    if not rows:
        raise DataError(f"{path} has no rows")
    names = []
    for k, v in rows[0].items():
        try:
            float(v)
        except (TypeError, ValueError):
            continue
        names.append(k)
    return tuple(sorted({*names, "val_acc", "test_acc", "params"}))


def best_test_after(table: NB201Table, searcher: Searcher, queries: int) -> float:
    """Run ``searcher`` for ``queries`` table lookups on the validation accuracy; return the test
    accuracy of the best-by-validation cell (the NB201 paper's reporting protocol)."""
    best_val, best_test = -1.0, 0.0
    for _ in range(queries):
        arch = searcher.ask()
        m = table(arch).metrics
        if m["val_acc"] > best_val:
            best_val, best_test = m["val_acc"], m["test_acc"]
        searcher.tell(arch, m["val_acc"], m)
    return best_test
