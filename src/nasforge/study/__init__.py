"""Durable studies: every trial recorded in Optuna's storage (SQLite by default)."""

from nasforge.study.store import Study, TrialRecord

__all__ = ["Study", "TrialRecord"]
