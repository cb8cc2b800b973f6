"""Multi-trial searchers (ask/tell). Look one up with ``registry.get("method", name)``."""

from nasforge.searchers.base import Result, Searcher

__all__ = ["Result", "Searcher"]
