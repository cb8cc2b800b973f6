"""Search spaces. Look one up with :func:`nasforge.get_space`."""

from nasforge.spaces.base import SearchSpace

__all__ = ["SearchSpace"]
