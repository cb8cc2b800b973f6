"""Arch: one point of a search space.

An :class:`Arch` is a frozen, hashable mapping *decision -> option* tagged with the name of
its space, kept in the space's canonical decision order. Spaces create Archs (``space.make``,
``space.parse``, ``space.sample``); everything else treats them as values. The JSON form
(:meth:`Arch.to_json` / :meth:`Arch.from_json`) round-trips exactly; the human form is the
space's own ``format`` / ``parse`` (for example the official NAS-Bench-201 cell string).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from nasforge.errors import ArchError


@dataclass(frozen=True)
class Arch(Mapping[str, str]):
    """A frozen mapping decision -> option in a space's canonical order.

    Attributes:
        space: name of the space the Arch belongs to (``"nb201"``, ``"darts"``...).
        choices: ``(decision, option)`` pairs in the space's canonical decision order.
    """

    space: str
    choices: tuple[tuple[str, str], ...]

    def __getitem__(self, decision: str) -> str:
        for d, o in self.choices:
            if d == decision:
                return o
        raise ArchError(
            f"decision {decision!r} is not part of this {self.space} architecture; "
            f"valid: {', '.join(d for d, _ in self.choices)}"
        )

    def __iter__(self) -> Iterator[str]:
        return (d for d, _ in self.choices)

    def __len__(self) -> int:
        return len(self.choices)

    def replace(self, **changes: str) -> Arch:
        """Copy with some options changed (does not validate: use ``space.validate``)."""
        unknown = set(changes) - set(self)
        if unknown:
            raise ArchError(f"unknown decisions {sorted(unknown)}; valid: {', '.join(self)}")
        return Arch(self.space, tuple((d, changes.get(d, o)) for d, o in self.choices))

    def to_json(self) -> str:
        return json.dumps({"space": self.space, "choices": [list(c) for c in self.choices]})

    @classmethod
    def from_json(cls, text: str) -> Arch:
        try:
            obj: Any = json.loads(text)
            return cls(str(obj["space"]), tuple((str(d), str(o)) for d, o in obj["choices"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ArchError(f"not an Arch JSON document: {text[:80]!r} ({e})") from None

    def __repr__(self) -> str:
        inner = ", ".join(f"{d}={o}" for d, o in self.choices)
        return f"Arch[{self.space}]({inner})"
