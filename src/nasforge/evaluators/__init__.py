"""Evaluators turn an Arch into a :class:`~nasforge.searchers.base.Result`."""
