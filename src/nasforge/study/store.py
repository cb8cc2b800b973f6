"""Durable trial records on Optuna's storage layer.

We do not write a database layer: a nasforge study is an Optuna study whose trials carry the
architecture (``user_attrs["arch"]``, the space's canonical text) and the evaluator's metrics
(``user_attrs["metrics"]``, ``user_attrs["cost"]``); the trial value is the fitness. Any
SQLAlchemy URL Optuna accepts works (``sqlite:///run/study.db`` by default,
``postgresql://...``), so studies survive crashes and can be inspected with Optuna's tools.

Crash safety: a trial is written when it starts (RUNNING) and again when it finishes
(COMPLETE) inside Optuna's transactions. A process killed mid-trial leaves a RUNNING trial;
:meth:`Study.recover_interrupted` marks those FAIL so the search re-asks that architecture.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.exc import SQLAlchemyError

from nasforge.errors import ConfigError

# Optuna logs every trial at INFO; the search loop has its own progress bar.
optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialRecord:
    number: int  # Optuna trial number (includes failed/interrupted trials)
    arch: str  # canonical architecture text
    fitness: float
    metrics: dict[str, float]
    cost: float
    fidelity: float = 1.0  # share of the full evaluation budget (multi-fidelity searchers)


_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^/@:]*:)([^/@]*)(@)")


def redact_url(url: str) -> str:
    """``url`` with its password (``scheme://user:PASSWORD@host``) replaced by ``***``.

    What nasforge writes to logs, errors, ``config.json`` and ``results.json`` for a storage URL.
    """
    return _PASSWORD.sub(r"\1***\3", str(url))


class Study:
    """A named study in an Optuna storage.

    Args:
        storage: SQLAlchemy URL, or a path to a SQLite file.
        name: study name inside the storage.
    """

    def __init__(self, storage: str | Path, name: str = "nasforge") -> None:
        url = str(storage)
        if "://" not in url:
            url = f"sqlite:///{Path(url).resolve()}"
        self.url = url  # with its password, for Optuna only
        self.public_url = redact_url(url)  # what may be shown or stored
        try:
            self._study = optuna.create_study(
                storage=url, study_name=name, direction="maximize", load_if_exists=True
            )
        except (ImportError, ValueError, SQLAlchemyError) as e:  # bad URL, missing driver, server down
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            shown = first.replace(url, self.public_url)
            match = _PASSWORD.match(url)
            if match and match.group(2):  # drivers may quote the password on its own
                shown = shown.replace(match.group(2), "***")
            raise ConfigError(f"cannot open study storage {self.public_url!r}: {shown}") from e
        self.name = name

    def recover_interrupted(self) -> int:
        """Mark RUNNING trials (left by a killed process) as FAIL; return how many.

        Only one process drives a study in this version, so any RUNNING trial found at start-up
        belongs to a process that died.
        """
        storage = self._study._storage
        n = 0
        for t in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            n += 1
        return n

    def completed(self) -> list[TrialRecord]:
        """Finished trials in the order they finished being started (trial number order)."""
        out = []
        for t in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            out.append(
                TrialRecord(
                    number=t.number,
                    arch=str(t.user_attrs["arch"]),
                    fitness=float(t.value if t.value is not None else float("nan")),
                    metrics={k: float(v) for k, v in t.user_attrs.get("metrics", {}).items()},
                    cost=float(t.user_attrs.get("cost", 0.0)),
                    fidelity=float(t.user_attrs.get("fidelity", 1.0)),
                )
            )
        return sorted(out, key=lambda r: r.number)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self._study.get_trials(deepcopy=False):
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out

    def start(self, arch_text: str, fidelity: float = 1.0) -> optuna.trial.Trial:
        trial = self._study.ask()
        trial.set_user_attr("arch", arch_text)
        if fidelity != 1.0:
            trial.set_user_attr("fidelity", float(fidelity))
        return trial

    def finish(self, trial: optuna.trial.Trial, fitness: float, metrics: dict[str, float], cost: float) -> None:
        trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items()})
        trial.set_user_attr("cost", float(cost))
        self._study.tell(trial, fitness)

    def fail(self, trial: optuna.trial.Trial, reason: str) -> None:
        trial.set_user_attr("fail_reason", reason)
        self._study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def set_attr(self, key: str, value: Any) -> None:
        self._study.set_user_attr(key, value)

    def attrs(self) -> dict[str, Any]:
        return dict(self._study.user_attrs)
