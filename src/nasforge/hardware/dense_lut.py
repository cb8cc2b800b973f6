"""Latency lookup table of the DenseNAS space and its differentiable expected latency.

Fang et al., "Densely Connected Search Space for More Flexible Neural Architecture Search",
CVPR 2020, Section 3.3 ("resource-aware"): every op of every head and stacked layer of every
block is measured once (reference ``JaminFong/DenseNAS``: ``Network.get_cost_list`` times each
op alone on the output of the block before it; ``latency_list/`` holds the tables), and the
expected latency of the supernet is accumulated *from the last block to the first* through the
transition probabilities (reference ``Dropped_Network.forward``, "chained cost estimation")::

    L(tail) = 0
    L(a)    = stack(a) + sum_{t in out(a)} beta_{a->t} * (head(a->t) + L(t))
    LAT     = stem + classifier + L(0)

with ``stack(a) = sum_layers sum_o p_o lat(o)`` and ``head(a->t) = sum_o p_o lat(o)`` the
op-probability-weighted latencies (the tail's heads are its 1x1 convs). Because each block's
transition probabilities sum to one, ``LAT`` is the expectation of a path's latency over the
Markov chain of transitions (the tests check it against enumerating every path).

File format: the JSON document of :mod:`nasforge.hardware.lut` (``FORMAT``, header fields and
their checks, atomic saves, :class:`~nasforge.hardware.lut.LatencyTable` for reading and
writing); the entries are keyed by :class:`~nasforge.hardware.lut.BlockKey`, plus two entries
for the fixed parts (``stem``: stem conv and block 0's MBConv1; ``classifier``: pooling and the
linear layer), whose sum is the table's constant. Unlike the mobilenet tables there are no fit
networks: as the reference, the prediction is the plain sum of the measured ops (the medians).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.errors import ArchError, ConfigError
from nasforge.hardware.latency import LatencySpec, device_description, measure
from nasforge.hardware.lut import STRICT_FIELDS, BlockKey, LatencyTable, relevant_versions

SPACE = "densenas"
STEM, CLASSIFIER = "stem", "classifier"


def _check_space(space: Any) -> None:
    if getattr(space, "name", None) != SPACE:
        raise ConfigError(f"dense latency tables are for the space {SPACE!r}; got {getattr(space, 'name', space)!r}")


def op_keys(space: Any, input_shape: Sequence[int]) -> dict[str, dict[str, BlockKey]]:
    """Per choice key (heads ``b{t}_from{a}``, the tail's ``tail_from{a}``, layers ``b{t}_l{j}``):
    option -> :class:`BlockKey` (spatial size of the op's input: ``ceil(H / output stride)``)."""
    from nasforge.spaces.densenas import TAIL_OP

    _check_space(space)
    if len(input_shape) != 3:
        raise ConfigError(f"input_shape must be (C, H, W), got {tuple(input_shape)!r}")
    h, w = int(input_shape[1]), int(input_shape[2])

    def size(block: int) -> tuple[int, int]:
        s = space.blocks[block].scale
        return math.ceil(h / s), math.ceil(w / s)

    out: dict[str, dict[str, BlockKey]] = {}
    for c in space.connections:
        a, t = space.blocks[c.source], space.blocks[c.target]
        options = (TAIL_OP,) if c.target == space.tail else space.head_ops
        out[c.key] = {o: BlockKey(o, a.channels, t.channels, c.stride, *size(c.source)) for o in options}
    for b in space.blocks[1:-1]:
        for j in range(b.layers):
            out[f"{b.name}_l{j}"] = {o: BlockKey(o, b.channels, b.channels, 1, *size(b.index)) for o in space.stack_ops}
    return out


def fixed_keys(space: Any, input_shape: Sequence[int], num_classes: int) -> dict[str, BlockKey]:
    """The two fixed parts whose sum is the table's constant."""
    tail = space.blocks[space.tail]
    hs, ws = (math.ceil(int(s) / tail.scale) for s in input_shape[1:])
    return {STEM: BlockKey(STEM, int(input_shape[0]), space.blocks[0].channels, space.stem_stride,
                           int(input_shape[1]), int(input_shape[2])),
            CLASSIFIER: BlockKey(CLASSIFIER, tail.channels, num_classes, 1, hs, ws)}


def op_module(space: Any, key: BlockKey) -> nn.Module:
    """The module a key measures (as the space builds it)."""
    from nasforge.spaces.densenas import SKIP, TAIL_OP

    if key.option == STEM:
        return space.stem_module(key.in_channels)
    if key.option == CLASSIFIER:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(key.in_channels, key.out_channels))
    if key.option in (SKIP, TAIL_OP) or key.option in space.head_ops:
        return space._op(key.option, key.in_channels, key.out_channels, key.stride)  # noqa: SLF001
    raise ConfigError(f"unknown op {key.option!r} in a densenas latency table")


def make_header(space: Any, input_shape: Sequence[int], spec: LatencySpec, num_classes: int = 10) -> dict[str, Any]:
    """The header a table built now with these settings would carry (the fields of the lut module's)."""
    import nasforge

    _check_space(space)
    return {"space": space.name, "space_config": space.config(), "input_shape": list(spec.shape(tuple(input_shape))),
            "num_classes": num_classes, "batch_size": spec.batch_size, "backend": spec.backend,
            "threads": spec.threads, "warmup": spec.warmup, "repeats": spec.repeats,
            "device": device_description(spec.device), "versions": relevant_versions(spec.backend),
            "nasforge_version": nasforge.__version__}


class DenseLatencyTable:
    """A complete DenseNAS table: per-op latencies, the constant, prediction and expected latency."""

    def __init__(self, table: LatencyTable, space: Any) -> None:
        _check_space(space)
        self.table, self.space = table, space
        header = table.header
        self.input_shape = tuple(header["input_shape"])
        self.keys = op_keys(space, self.input_shape)
        self.fixed = fixed_keys(space, self.input_shape, int(header["num_classes"]))
        entries = table.doc["entries"]
        missing = [k.text for opts in self.keys.values() for k in opts.values() if k.text not in entries]
        missing += [k.text for k in self.fixed.values() if k.text not in entries]
        if missing:
            raise ConfigError(f"latency table {table.path} lacks {len(missing)} op(s), e.g. {missing[0]}; rerun "
                              "the build with the same output file to finish it")

    def ms(self, key: str, option: str) -> float:
        """Latency (ms, median) of ``option`` at choice key ``key``."""
        if key not in self.keys:
            raise ArchError(f"unknown densenas op key {key!r}; e.g. {', '.join(list(self.keys)[:4])}")
        if option not in self.keys[key]:
            raise ArchError(f"{key} has no option {option!r}; valid: {', '.join(self.keys[key])}")
        return float(self.table.doc["entries"][self.keys[key][option].text]["median_ms"])

    def option_latencies(self, key: str) -> list[float]:
        return [self.ms(key, o) for o in self.keys[key]]

    @property
    def constant_ms(self) -> float:
        entries = self.table.doc["entries"]
        return sum(float(entries[k.text]["median_ms"]) for k in self.fixed.values())

    def head_ms(self, source: int, target: int, option: str | None) -> float:
        """The head op of connection ``source -> target`` (``option`` None for the tail's 1x1 conv)."""
        from nasforge.spaces.densenas import TAIL_OP

        c = self.space.connection(source, target)
        return self.ms(c.key, TAIL_OP if target == self.space.tail else str(option))

    def block_ms(self, arch: Any, block: int) -> float:
        """Sum of the stacked layers of ``block`` in ``arch``."""
        b = self.space.blocks[block]
        return sum(self.ms(f"{b.name}_l{j}", arch[f"{b.name}_l{j}"]) for j in range(b.layers))

    def predict(self, arch: Any) -> float:
        """Predicted latency (ms) of an architecture (Arch or text): constant + its heads and layers."""
        sp = self.space
        arch = sp.parse(arch) if isinstance(arch, str) else sp.validate(arch)
        path = sp.visited(arch)
        total = self.constant_ms
        for a, t in zip(path, path[1:]):
            total += self.head_ms(a, t, None if t == sp.tail else arch[f"b{t}_head"])
            if t != sp.tail:
                total += self.block_ms(arch, t)
        return total

    def expected_latency(self, ops: Mapping[str, torch.Tensor], transitions: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The chained expected latency (module docstring), differentiable in ``ops`` and ``transitions``.

        Args:
            ops: per head / layer choice key, a 1-D tensor of probabilities over its options.
            transitions: per block ``b{a}_out``, a 1-D tensor of probabilities over its targets.
        """
        sp = self.space
        ref = next(iter(transitions.values()))

        def expect(key: str) -> torch.Tensor:
            p = ops[key]
            lat = torch.tensor(self.option_latencies(key), dtype=p.dtype, device=p.device)
            if p.shape != lat.shape:
                raise ConfigError(f"probabilities of {key} must be a vector over {', '.join(self.keys[key])}; "
                                  f"got shape {tuple(p.shape)}")
            return (p * lat).sum()

        below: dict[int, torch.Tensor] = {sp.tail: ref.new_zeros(())}
        for a in range(sp.tail - 1, -1, -1):
            b = sp.blocks[a]
            total = ref.new_zeros(())
            for j in range(b.layers):
                total = total + expect(f"{b.name}_l{j}")
            beta = transitions[sp.transition_key(a)]
            for j, c in enumerate(sp.outgoing(a)):
                head = ref.new_tensor(self.head_ms(a, c.target, None)) if c.target == sp.tail else expect(c.key)
                total = total + beta[j] * (head + below[c.target])
            below[a] = total
        return below[0] + self.constant_ms


def load_dense_lut(path: str | os.PathLike[str], space: Any, input_shape: Sequence[int], *, num_classes: int = 10,
                   strict: bool = False) -> DenseLatencyTable:
    """Load a table and check it was built for ``space``, ``input_shape`` and ``num_classes``.

    Raises:
        LatencyTableMismatchError: a header field differs (device and versions only warn unless ``strict``).
        ConfigError: the file is missing, not a table, or incomplete.
    """
    table = LatencyTable.load(path)
    wanted = {"space": space.name, "space_config": space.config(), "input_shape": list(input_shape),
              "num_classes": num_classes}
    table.check(wanted)
    table.check_environment(strict=strict)
    return DenseLatencyTable(table, space)


def build_dense_lut(space: Any, input_shape: Sequence[int], spec: LatencySpec | None = None,
                    out: str | os.PathLike[str] | None = None, *, num_classes: int = 10,
                    max_measurements: int | None = None) -> DenseLatencyTable | LatencyTable:
    """Measure every op of ``space`` at ``input_shape`` with :func:`~nasforge.hardware.latency.measure`.

    With ``out`` the table is saved after every measurement and a rerun continues a partial
    file (whose header must match). Returns the complete :class:`DenseLatencyTable`, or the
    partial :class:`LatencyTable` when ``max_measurements`` stopped it first.
    """
    spec = spec or LatencySpec()
    if spec.isolated:
        raise ConfigError("isolated=True is not supported by build_dense_lut (it times hundreds of ops in-process)")
    header = make_header(space, input_shape, spec, num_classes)
    shape = tuple(header["input_shape"])
    if out is not None and Path(out).exists():
        table = LatencyTable.load(out)
        table.check({k: header[k] for k in (*STRICT_FIELDS, "device", "versions")}, strict=True)
        if (table.header.get("warmup"), table.header.get("repeats")) != (spec.warmup, spec.repeats):
            raise ConfigError(f"latency table {out} was measured with warmup/repeats "
                              f"{table.header.get('warmup')}/{table.header.get('repeats')}, not {spec.warmup}/{spec.repeats}")
    else:
        table = LatencyTable.new(header, out)
    entries: dict[str, Any] = table.doc["entries"]
    todo: dict[str, BlockKey] = {}
    for key in [*fixed_keys(space, shape, num_classes).values(),
                *(k for opts in op_keys(space, shape).values() for k in opts.values())]:
        if key.text not in entries:
            todo.setdefault(key.text, key)
    budget = math.inf if max_measurements is None else max_measurements
    one = LatencySpec(backend=spec.backend, batch_size=spec.batch_size, threads=spec.threads, warmup=spec.warmup,
                      repeats=spec.repeats, device=spec.device)
    for key in todo.values():
        if budget <= 0:
            return table
        module = op_module(space, key)
        m = measure(module, (key.in_channels, key.height, key.width), one)
        entries[key.text] = {**key.as_dict(), "median_ms": m.median_ms, "p25_ms": m.p25_ms, "p75_ms": m.p75_ms,
                             "min_ms": m.min_ms, "max_ms": m.max_ms}
        budget -= 1
        if out is not None:
            table.save()
    table.doc["complete"] = True
    table.doc["statistic"] = "median"
    dense = DenseLatencyTable(table, space)
    table.doc["constant_ms"] = dense.constant_ms
    if out is not None:
        table.save()
    return dense
