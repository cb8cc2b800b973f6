"""The search-space contract every space implements.

A space lists its *decisions* (ordered name -> options). From that the base class derives
uniform sampling, mutation, neighbourhoods, one-hot / sequence encodings and validation, so a
space only adds its string form (``format`` / ``parse``), its networks (``build`` /
``supernet``) and, if some option combinations are invalid, a :meth:`SearchSpace.check` hook.

Call order for users: ``space = nasforge.get_space(name, **kwargs)``; ``arch = space.parse(s)``
or ``space.sample(rng)``; ``net = space.build(arch, num_classes=..., in_channels=...)``.
"""

from __future__ import annotations

import abc
import functools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from nasforge.arch import Arch
from nasforge.errors import ArchError, ConfigError

if TYPE_CHECKING:
    from torch import nn

    from nasforge.nn.choice import Supernet

_MAX_REJECTIONS = 10_000


@dataclass(frozen=True)
class ComplexityStage:
    """One step of a space's order of complexity (see :meth:`SearchSpace.complexity_stages`).

    Attributes:
        grows: the decisions this stage fixes (searched from this stage on).
        filler: the option every decision of the *later* stages takes while it is not grown yet,
            so that the decisions grown up to this stage plus ``filler`` make a complete,
            valid architecture (a smaller network of the space). Empty for the last stage.
    """

    grows: tuple[str, ...]
    filler: Mapping[str, str] = field(default_factory=dict)


class SearchSpace(abc.ABC):
    """Abstract search space. Subclasses set ``name`` and ``paper`` and implement the abstract methods."""

    name: ClassVar[str]
    paper: ClassVar[str]  # citation of the paper that defines the space

    # ---- what the space is -------------------------------------------------------------
    @abc.abstractmethod
    def decisions(self) -> dict[str, tuple[str, ...]]:
        """Ordered mapping decision -> its options (the canonical order of ``Arch.choices``)."""

    def check(self, arch: Arch) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Raise :class:`ArchError` if the options, although each valid, do not combine.

        The default accepts every combination. Override in spaces with structural rules.
        """

    def config(self) -> dict[str, Any]:
        """The keyword arguments that recreate this space with ``get_space(name, **config)``."""
        return {}

    # ---- strings and networks ----------------------------------------------------------
    @abc.abstractmethod
    def format(self, arch: Arch) -> str:
        """Canonical text of ``arch``; ``parse(format(a)) == a`` for every valid ``a``."""

    @abc.abstractmethod
    def parse(self, text: str) -> Arch:
        """Parse the space's text form; raise :class:`ArchError` naming what is wrong."""

    @abc.abstractmethod
    def build(self, arch: Arch, *, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        """The stand-alone network of ``arch``; ``forward(x)`` returns logits."""

    @abc.abstractmethod
    def supernet(self, *, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> Supernet:
        """A network holding every candidate with shared weights; ``forward(x, path)``."""

    def derive(self, weights: Mapping[str, Any]) -> Arch:
        """The architecture a one-shot search ends with, from per-choice-key strengths.

        ``weights`` maps each supernet choice key to one number per candidate (architecture
        logits or probabilities). Each space applies its paper's rule; spaces without one raise.
        """
        raise ConfigError(
            f"space {self.name!r} has no one-shot derivation rule; one-shot (weight-sharing) methods "
            "support the spaces nb201 and darts"
        )

    # ---- derived behaviour ---------------------------------------------------------------
    def make(self, mapping: Mapping[str, str]) -> Arch:
        """Arch from a decision -> option mapping, validated and put in canonical order."""
        decisions = self.decisions()
        unknown = [d for d in mapping if d not in decisions]
        if unknown:
            raise ArchError(f"unknown decision(s) {unknown} for space {self.name}; valid: {', '.join(decisions)}")
        missing = [d for d in decisions if d not in mapping]
        if missing:
            raise ArchError(f"missing decision(s) {missing} for space {self.name}")
        return self.validate(Arch(self.name, tuple((d, str(mapping[d])) for d in decisions)))

    def validate(self, arch: Arch) -> Arch:
        """Return ``arch`` if it belongs to this space, else raise :class:`ArchError`."""
        if not isinstance(arch, Arch):
            raise ArchError(f"expected an Arch of space {self.name}, got {type(arch).__name__}")
        if arch.space != self.name:
            raise ArchError(f"architecture belongs to space {arch.space!r}, not {self.name!r}")
        decisions = self.decisions()
        names = [d for d, _ in arch.choices]
        if names != list(decisions):
            raise ArchError(
                f"architecture has decisions {names[:6]}... but space {self.name} "
                f"expects {list(decisions)[:6]}... (in that order, {len(decisions)} in all)"
            )
        for d, o in arch.choices:
            if o not in decisions[d]:
                raise ArchError(f"option {o!r} is not valid for decision {d!r} of {self.name}; valid: {', '.join(decisions[d])}")
        self.check(arch)
        return arch

    def is_valid(self, arch: Arch) -> bool:
        try:
            self.validate(arch)
        except ArchError:
            return False
        return True

    def starting_point(self) -> Arch | None:
        """A small architecture that searches growing from one structure start from, or None.

        Zen-NAS evolution starts by mutating such a structure (the reference's hand-written
        ``init_plainnet``); a space without one (None) is searched from uniform samples.
        """
        return None

    def complexity_stages(self) -> list[ComplexityStage] | None:
        """The space's order of complexity for progressive searches (PNAS), or None (default).

        Stage ``b`` (0-based) fixes ``stages[b].grows``; the decisions of later stages take
        ``stages[b].filler``. The stages' ``grows`` partition the decisions, and an architecture
        with stages ``0..b`` grown and the rest filled is valid and is the smaller network the
        space documents. None means the space has no such order.
        """
        return None

    def size(self) -> int:
        """Number of option combinations (an upper bound when ``check`` rejects some)."""
        n = 1
        for opts in self.decisions().values():
            n *= len(opts)
        return n

    def sample(self, rng: random.Random) -> Arch:
        """Uniform sample: each decision uniformly, rejecting combinations ``check`` refuses."""
        decisions = self.decisions()
        for _ in range(_MAX_REJECTIONS):
            arch = Arch(self.name, tuple((d, rng.choice(opts)) for d, opts in decisions.items()))
            if self.is_valid(arch):
                return arch
        raise ArchError(f"could not sample a valid architecture of {self.name} in {_MAX_REJECTIONS} tries")

    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        """Change one uniformly chosen decision to a different option (Real et al. 2019).

        Decisions with a single option are never chosen; invalid results are redrawn.
        """
        self.validate(arch)
        decisions = self.decisions()
        mutable = [d for d, opts in decisions.items() if len(opts) > 1]
        if not mutable:
            raise ArchError(f"space {self.name} has no decision with more than one option")
        for _ in range(_MAX_REJECTIONS):
            d = rng.choice(mutable)
            option = rng.choice([o for o in decisions[d] if o != arch[d]])
            child = arch.replace(**{d: option})
            if self.is_valid(child):
                return child
        raise ArchError(f"could not mutate {self.format(arch)} into a valid architecture")

    def neighbours(self, arch: Arch) -> list[Arch]:
        """Every valid Arch that differs from ``arch`` in exactly one decision (canonical order)."""
        self.validate(arch)
        out = []
        for d, opts in self.decisions().items():
            for o in opts:
                if o != arch[d]:
                    child = arch.replace(**{d: o})
                    if self.is_valid(child):
                        out.append(child)
        return out

    def encode_sequence(self, arch: Arch) -> list[int]:
        """Option index of each decision, in canonical order (for controllers / predictors)."""
        self.validate(arch)
        return [opts.index(arch[d]) for d, opts in self.decisions().items()]

    def decode_sequence(self, seq: Sequence[int]) -> Arch:
        """Inverse of :meth:`encode_sequence`."""
        decisions = self.decisions()
        if len(seq) != len(decisions):
            raise ArchError(f"sequence has {len(seq)} entries, space {self.name} has {len(decisions)} decisions")
        mapping = {}
        for (d, opts), i in zip(decisions.items(), seq):
            if not 0 <= int(i) < len(opts):
                raise ArchError(f"index {i} out of range for decision {d!r} (0..{len(opts) - 1})")
            mapping[d] = opts[int(i)]
        return self.make(mapping)

    # ---- unchecked fast path (searchers' inner loops) -----------------------------------
    @functools.cached_property
    def _option_table(self) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...], tuple[dict[str, int], ...]]:
        """(decision names, their options, option -> index per decision), built once per space
        (a space's decisions are fixed once it is constructed)."""
        decisions = self.decisions()
        names = tuple(decisions)
        options = tuple(decisions[d] for d in names)
        return names, options, tuple({o: i for i, o in enumerate(opts)} for opts in options)

    def arch_from_indices(self, seq: Sequence[int]) -> Arch:
        """The Arch whose option indices (canonical decision order) are ``seq``, WITHOUT validation.

        The unchecked, fast counterpart of :meth:`decode_sequence` for searchers that build many
        candidates and test them with :meth:`is_valid` (or that only build known-valid ones): the
        result may be an Arch that ``check`` refuses. ``seq`` must have one in-range index per
        decision; a short ``seq`` gives a short (invalid) Arch and a too-large index IndexError.
        """
        names, options, _ = self._option_table
        return Arch(self.name, tuple((d, opts[i]) for d, opts, i in zip(names, options, seq)))

    def indices_of(self, arch: Arch) -> tuple[int, ...]:
        """Option index of each decision of ``arch`` (canonical order), WITHOUT validation.

        The unchecked, fast counterpart of :meth:`encode_sequence`, for Archs known to belong to
        the space (e.g. built by :meth:`arch_from_indices`, or validated already): it reads
        ``arch.choices`` in order and does not check the decisions' names, order or ``check``.
        An option that is not one of its decision's raises KeyError.
        """
        _, _, index = self._option_table
        return tuple(idx[o] for idx, (_, o) in zip(index, arch.choices))

    def encode_onehot(self, arch: Arch) -> list[float]:
        """Concatenated one-hot vectors, one block per decision (length = sum of option counts)."""
        out: list[float] = []
        for (_, opts), i in zip(self.decisions().items(), self.encode_sequence(arch)):
            block = [0.0] * len(opts)
            block[i] = 1.0
            out.extend(block)
        return out

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({cfg})"
