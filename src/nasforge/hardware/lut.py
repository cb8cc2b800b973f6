"""Latency lookup tables: every candidate block of a space measured once on this machine.

ProxylessNAS (Cai et al., ICLR 2019, ``mit-han-lab/proxylessnas``: ``LatencyEstimator`` reads a
YAML table keyed by block type, input shape, expansion, kernel and stride) and FBNet (Wu et
al., CVPR 2019) predict a network's latency as the sum of its blocks' latencies, each measured
alone on the target device; the same sum weighted by the architecture probabilities is the
differentiable *expected latency* both papers add to the loss.

For the ``mobilenet`` space a block is identified by its :class:`BlockKey` (option, input
channels, output channels, stride, input height and width); layers that see the same key
(the later layers of a stage) share one entry, so each distinct block is measured once.
:func:`build_lut` measures every key (``skip`` included where a layer allows it), then a few
whole networks (the largest, the smallest and random ones) to fit one constant for what the
blocks leave out: stem, fixed first block, head, pooling, classifier and the per-call overhead
the blocks count once each. The constant is the median of ``measured - sum of blocks`` over
those networks (robust to one disturbed measurement).

The table is one JSON file (see :data:`FORMAT`), rewritten atomically after every
measurement, so an interrupted build loses at most the measurement in progress and a rerun
with the same ``out`` continues where it stopped. Its header records what the numbers depend
on: the space and its config, the input shape, batch size, backend, threads, warm-up and
repeats (a mismatch there is refused with :class:`LatencyTableMismatchError` naming each
difference), and the device and library versions (a mismatch there is a
:class:`LatencyTableWarning`: the table still ranks architectures, but its milliseconds belong
to the other machine; ``strict=True`` refuses those too).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.errors import ArchError, ConfigError, check_int, require_choice
from nasforge.hardware.latency import LatencySpec, device_description, library_versions, measure

FORMAT = "nasforge-latency-table"
FORMAT_VERSION = 1
SUPPORTED_SPACES: tuple[str, ...] = ("mobilenet",)
#: Statistics a table can predict with: the median or the min of a block's timed passes alone (every
#: entry stores both), or ``"context"``: the block's fastest pass inside whole networks (PyTorch tables
#: built with ``context=True``; their fit networks then use their ``min``).
STATISTICS: tuple[str, ...] = ("median", "min", "context")
#: How the whole-network fit maps the sum of blocks to a prediction (see LatencyTable.use_statistic).
FITS: tuple[str, ...] = ("offset", "affine")
#: Header fields a table must match exactly to be used (they change what is measured).
STRICT_FIELDS: tuple[str, ...] = ("space", "space_config", "input_shape", "num_classes", "batch_size", "backend",
                                  "threads")
#: Header fields that only warn: the same measurement on another machine or software stack.
SOFT_FIELDS: tuple[str, ...] = ("device", "versions")


class LatencyTableMismatchError(ConfigError):
    """A latency table built for another space, input shape, backend... than the one asked for.

    ``differences`` maps each differing header field to ``(table's value, wanted value)``.
    """

    def __init__(self, path: object, differences: Mapping[str, tuple[Any, Any]]) -> None:
        self.differences = dict(differences)
        parts = [f"{k}: table has {t!r}, wanted {w!r}" for k, (t, w) in self.differences.items()]
        super().__init__(f"latency table {path} was built for another setting ({'; '.join(parts)}); "
                         "build a table for this setting with `nasforge hardware build-lut`")


class LatencyTableWarning(UserWarning):
    """A latency table measured on another device or with other library versions."""


@dataclass(frozen=True)
class BlockKey:
    """What a block's latency depends on, besides the space config and the measurement setting."""

    option: str  # the decision option, e.g. "ir_k3_e6" or "skip"
    in_channels: int
    out_channels: int
    stride: int
    height: int  # input height of the block
    width: int  # input width

    @property
    def text(self) -> str:
        return f"{self.option}|{self.in_channels}>{self.out_channels}|s{self.stride}|{self.height}x{self.width}"

    def as_dict(self) -> dict[str, Any]:
        return {"option": self.option, "in_channels": self.in_channels, "out_channels": self.out_channels,
                "stride": self.stride, "height": self.height, "width": self.width}


def _check_space(space: Any) -> None:
    if getattr(space, "name", None) not in SUPPORTED_SPACES:
        raise ConfigError(f"latency tables support the spaces {', '.join(SUPPORTED_SPACES)}; got "
                          f"{getattr(space, 'name', type(space).__name__)!r}")


def layer_keys(space: Any, input_shape: Sequence[int]) -> dict[str, dict[str, BlockKey]]:
    """For each searchable layer (space order), its options (space order) -> :class:`BlockKey`.

    Spatial sizes follow the backbone: every conv pads ``k // 2``, so a stride ``s`` maps ``H`` to
    ``ceil(H / s)``.
    """
    _check_space(space)
    if len(input_shape) != 3:
        raise ConfigError(f"input_shape must be (C, H, W), got {tuple(input_shape)!r}")
    h, w = (math.ceil(int(s) / space.stem_stride) for s in input_shape[1:])
    decisions = space.decisions()
    out: dict[str, dict[str, BlockKey]] = {}
    for layer in space.layers:
        out[layer.name] = {
            option: BlockKey(option, layer.in_channels, layer.out_channels, layer.stride, h, w)
            for option in decisions[layer.name]
        }
        h, w = math.ceil(h / layer.stride), math.ceil(w / layer.stride)
    return out


def unique_keys(space: Any, input_shape: Sequence[int]) -> list[BlockKey]:
    """Every distinct block of the space at this input shape, in layer order (each measured once)."""
    seen: dict[str, BlockKey] = {}
    for options in layer_keys(space, input_shape).values():
        for key in options.values():
            seen.setdefault(key.text, key)
    return list(seen.values())


def block_module(space: Any, key: BlockKey) -> nn.Module:
    """The stand-alone block of ``key`` as the space builds it (``nn.Identity`` for ``skip``)."""
    from nasforge.spaces.mobilenet import Layer

    layer = Layer("lut", 0, 0, key.in_channels, key.out_channels, key.stride)
    block: nn.Module = space._block(layer, key.option)
    return block


def fit_architectures(space: Any, n: int, seed: int = 0) -> list[Any]:
    """The networks the constant is fitted on: the largest, the smallest, then ``n - 2`` random ones."""
    check_int("fit_networks", n, error=ConfigError)
    decisions = space.decisions()
    blocks = [o for o in next(iter(decisions.values())) if o != "skip"]
    # Largest: the last block option (largest kernel and expansion, with SE if searched) everywhere;
    # smallest: the first block option on layers without skip, skip elsewhere.
    largest = space.make({d: blocks[-1] for d in decisions})
    smallest = space.make({d: ("skip" if "skip" in opts else opts[0]) for d, opts in decisions.items()})
    archs = [largest, smallest][:n]
    rng = random.Random(seed)
    tries = 0
    while len(archs) < n and tries < 100 * n:
        a = space.sample(rng)
        tries += 1
        if a not in archs:
            archs.append(a)
    return archs


# ---- the table ---------------------------------------------------------------------------------------


def make_header(space: Any, input_shape: Sequence[int], spec: LatencySpec, num_classes: int = 10) -> dict[str, Any]:
    """The header a table built now, on this machine, with these settings would carry."""
    import nasforge

    _check_space(space)
    shape = spec.shape(tuple(input_shape))
    return {
        "space": space.name, "space_config": space.config(), "input_shape": list(shape), "num_classes": num_classes,
        "batch_size": spec.batch_size, "backend": spec.backend, "threads": spec.threads, "warmup": spec.warmup,
        "repeats": spec.repeats, "device": device_description(spec.device), "versions": relevant_versions(spec.backend),
        "nasforge_version": nasforge.__version__,
    }


def relevant_versions(backend: str) -> dict[str, str]:
    v = library_versions(backend)
    keep = ("torch", "python", "nasforge") + (("onnxruntime",) if backend == "onnxruntime" else ())
    out = {k: v[k] for k in keep if k in v}
    out["python"] = ".".join(out["python"].split(".")[:2])  # patch releases do not change timings
    return out


class LatencyTable:
    """A loaded (possibly incomplete) latency table; see the module docstring for the format."""

    def __init__(self, doc: dict[str, Any], path: str | os.PathLike[str] | None = None) -> None:
        self.doc = doc
        self.path = None if path is None else Path(path)
        self._space: Any = None
        self._keys: dict[str, dict[str, BlockKey]] | None = None

    # ---- reading and writing ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        """Read a table file. Raises :class:`ConfigError` when it is missing or not a table."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"latency table {p} does not exist")
        try:
            doc = json.loads(p.read_text())
        except ValueError as e:
            raise ConfigError(f"latency table {p} is not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ConfigError(f"{p} is not a nasforge latency table (no \"format\": {FORMAT!r})")
        if doc.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"latency table {p} has format_version {doc.get('format_version')!r}, "
                              f"this nasforge reads {FORMAT_VERSION}")
        for k in ("header", "entries", "fit_networks"):
            if k not in doc:
                raise ConfigError(f"latency table {p} lacks {k!r}")
        return cls(doc, p)

    @classmethod
    def new(cls, header: dict[str, Any], path: str | os.PathLike[str] | None = None) -> LatencyTable:
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "header": header, "entries": {}, "fit_networks": [], "statistic": None, "constant_ms": None,
               "fit": None, "complete": False}
        return cls(doc, path)

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the table atomically (a crash leaves the previous version in place)."""
        from nasforge.train.checkpoint import atomic_write

        target = Path(path) if path is not None else self.path
        if target is None:
            raise ConfigError("latency table has no path to save to")
        with atomic_write(target, "w") as f:
            f.write(json.dumps(self.doc, indent=1, sort_keys=True) + "\n")
        self.path = target
        return target

    # ---- what it was built for ----------------------------------------------------------------------
    @property
    def header(self) -> dict[str, Any]:
        return dict(self.doc["header"])

    @property
    def complete(self) -> bool:
        return bool(self.doc.get("complete"))

    @property
    def constant_ms(self) -> float:
        self._require_complete()
        return float(self.doc["constant_ms"])

    @property
    def statistic(self) -> str:
        return str(self.doc.get("statistic") or "median")

    @property
    def scale(self) -> float:
        return float(self.doc.get("scale") or 1.0)

    @property
    def has_context(self) -> bool:
        """Whether every entry carries an in-context timing (``context_ms``)."""
        entries = self.doc["entries"].values()
        return bool(entries) and all("context_ms" in e for e in entries)

    @property
    def fit_method(self) -> str:
        return str((self.doc.get("fit") or {}).get("method") or "offset")

    def use_statistic(self, statistic: str, fit: str | None = None) -> LatencyTable:
        """Predict with ``statistic`` (``"median"`` or ``"min"``) of the timed passes and refit on the
        fit networks with ``fit`` (default: the table's current method, else ``"offset"``).

        ``"offset"``: scale 1, constant = median of (measured - sum of blocks). ``"affine"``:
        scale and constant by least squares of measured on the sum of blocks (blocks timed alone
        run with warm caches; inside a network they run slower by a roughly constant factor).
        """
        require_choice("latency statistic", statistic, STATISTICS)
        fit = fit or self.fit_method
        require_choice("latency fit", fit, FITS)
        self._require_complete()
        if statistic == "context" and not self.has_context:
            raise ConfigError(f"latency table {self.path} has no in-context block timings (built with backend "
                              f"{self.header.get('backend')!r}, or without context=True); use median or min")
        self.doc["statistic"] = statistic
        fits = self.doc["fit_networks"]
        sums = [self.block_sum_ms(self.space.parse(r["arch"])) for r in fits]
        measured = "min" if statistic == "context" else statistic  # a network's uncontended pass
        meas = [float(r[f"{measured}_ms"]) for r in fits]
        scale = 1.0
        if fit == "affine" and len(fits) >= 2 and max(sums) > min(sums):
            mean_s, mean_m = statistics.fmean(sums), statistics.fmean(meas)
            scale = sum((x - mean_s) * (y - mean_m) for x, y in zip(sums, meas)) / sum((x - mean_s) ** 2 for x in sums)
        residuals = [m - scale * x for x, m in zip(sums, meas)]
        self.doc["scale"] = scale
        self.doc["constant_ms"] = statistics.median(residuals) if fit == "offset" else statistics.fmean(residuals)
        self.doc["fit"] = {
            "method": fit, "statistic": statistic, "networks": len(fits),
            "residual_min_ms": min(residuals) - self.doc["constant_ms"],
            "residual_max_ms": max(residuals) - self.doc["constant_ms"],
        }
        return self

    @property
    def space(self) -> Any:
        """The search space the table was built for, rebuilt from the header."""
        if self._space is None:
            import nasforge

            h = self.doc["header"]
            self._space = nasforge.get_space(h["space"], **h["space_config"])
        return self._space

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.doc["header"]["input_shape"])

    def spec(self, **overrides: Any) -> LatencySpec:
        """The measurement setting of the table (what ``--measure`` uses to compare)."""
        h = self.doc["header"]
        kw = {"backend": h["backend"], "batch_size": h["batch_size"], "threads": h["threads"],
              "warmup": h["warmup"], "repeats": h["repeats"]}
        return LatencySpec(**{**kw, **overrides})

    def differences(self, wanted: Mapping[str, Any]) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
        """(strict, soft) differences between the header and ``wanted`` (a partial header)."""
        h = self.doc["header"]
        strict: dict[str, tuple[Any, Any]] = {}
        soft: dict[str, tuple[Any, Any]] = {}
        for k, v in wanted.items():
            if v is None or k not in STRICT_FIELDS + SOFT_FIELDS:
                continue
            t = h.get(k)
            if k == "space_config":
                diff = {c for c in set(t or {}) | set(v) if (t or {}).get(c) != v.get(c)}
                for c in sorted(diff):
                    strict[f"space_config.{c}"] = ((t or {}).get(c), v.get(c))
            elif k == "versions":
                for lib in sorted(set(t or {}) | set(v)):
                    if (t or {}).get(lib) != v.get(lib):
                        soft[f"versions.{lib}"] = ((t or {}).get(lib), v.get(lib))
            elif k == "input_shape":
                if list(t) != list(v):
                    strict[k] = (list(t), list(v))
            elif t != v:
                (strict if k in STRICT_FIELDS else soft)[k] = (t, v)
        return strict, soft

    def check(self, wanted: Mapping[str, Any], *, strict: bool = False) -> None:
        """Refuse (or, for device and versions, warn about) every header field that differs.

        Args:
            wanted: a partial header (keys as :func:`make_header` writes; ``None`` values skipped).
            strict: refuse device and version differences too.

        Raises:
            LatencyTableMismatchError: naming each differing field and both values.
        """
        hard, soft = self.differences(wanted)
        if strict:
            hard.update(soft)
        if hard:
            raise LatencyTableMismatchError(self.path or "<memory>", hard)
        if soft:
            parts = "; ".join(f"{k}: table has {t!r}, this machine {w!r}" for k, (t, w) in soft.items())
            warnings.warn(f"latency table {self.path} was measured elsewhere ({parts}); its milliseconds may "
                          "not hold here", LatencyTableWarning, stacklevel=2)

    def check_environment(self, *, strict: bool = False) -> None:
        """Warn (or refuse, ``strict``) when this machine's device or library versions differ."""
        h = self.doc["header"]
        self.check({"device": device_description("cpu"), "versions": relevant_versions(h["backend"])}, strict=strict)

    # ---- entries ----------------------------------------------------------------------------------------
    def layer_keys(self) -> dict[str, dict[str, BlockKey]]:
        if self._keys is None:
            self._keys = layer_keys(self.space, self.input_shape)
        return self._keys

    def missing(self) -> list[BlockKey]:
        """Block keys not measured yet."""
        return [k for k in unique_keys(self.space, self.input_shape) if k.text not in self.doc["entries"]]

    def _require_complete(self) -> None:
        if not self.complete:
            n_missing = len(self.missing())
            raise ConfigError(
                f"latency table {self.path} is incomplete ({n_missing} block(s) and "
                f"{'the' if self.doc.get('constant_ms') is None else 'no'} constant still to measure); "
                "rerun the same `nasforge hardware build-lut` command to finish it"
            )

    def block_ms(self, layer: str, option: str) -> float:
        """The table's latency of ``option`` at searchable layer ``layer``."""
        keys = self.layer_keys()
        if layer not in keys:
            raise ArchError(f"unknown layer {layer!r}; valid: {', '.join(keys)}")
        if option not in keys[layer]:
            raise ArchError(f"layer {layer} has no option {option!r}; valid: {', '.join(keys[layer])}")
        entry = self.doc["entries"].get(keys[layer][option].text)
        if entry is None:
            self._require_complete()
            raise ConfigError(f"latency table {self.path} has no entry for {keys[layer][option].text}")
        return float(entry[f"{self.statistic}_ms"])

    def option_latencies(self, layer: str) -> list[float]:
        """The latencies of ``layer``'s options in the space's option order, as the prediction uses
        them (table entries times :attr:`scale`, which is 1 for the default ``offset`` fit)."""
        keys = self.layer_keys()
        if layer not in keys:
            raise ArchError(f"unknown layer {layer!r}; valid: {', '.join(keys)}")
        return [self.scale * self.block_ms(layer, o) for o in keys[layer]]

    def block_sum_ms(self, arch: Any) -> float:
        """Sum of the table entries of ``arch``'s blocks (no constant)."""
        arch = self.space.validate(arch)
        return sum(self.block_ms(layer, arch[layer]) for layer in self.layer_keys())

    def predict(self, arch: Any) -> float:
        """Predicted latency (ms) of ``arch`` (an Arch or its text form): sum of blocks + constant."""
        if isinstance(arch, str):
            arch = self.space.parse(arch)
        self._require_complete()
        return self.scale * self.block_sum_ms(arch) + self.constant_ms

    def expected_latency(self, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Expected latency ``sum_l sum_o p_lo * lat(l, o) + constant`` (FBNet, ProxylessNAS).

        Args:
            probs: for every searchable layer, a 1-D tensor of probabilities over its options in
                the space's option order (``space.decisions()[layer]``); gradients flow to them.

        Returns:
            a scalar tensor (ms) on the probabilities' device and dtype.

        Raises:
            ConfigError: a layer missing or unknown, or a tensor of the wrong length.
        """
        self._require_complete()
        keys = self.layer_keys()
        missing = [name for name in keys if name not in probs]
        unknown = [name for name in probs if name not in keys]
        if missing or unknown:
            raise ConfigError(f"expected_latency needs one probability vector per layer; missing: {missing}, "
                              f"unknown: {unknown}; layers: {', '.join(keys)}")
        terms = []
        for name, options in keys.items():
            p = probs[name]
            if p.dim() != 1 or p.numel() != len(options):
                raise ConfigError(f"probabilities of layer {name} must be a vector over its {len(options)} options "
                                  f"({', '.join(options)}); got shape {tuple(p.shape)}")
            lat = torch.tensor(self.option_latencies(name), dtype=p.dtype, device=p.device)
            terms.append((p * lat).sum())
        return torch.stack(terms).sum() + self.constant_ms


def expected_latency(table: LatencyTable, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """:meth:`LatencyTable.expected_latency` as a function (what FBNet / ProxylessNAS losses call)."""
    return table.expected_latency(probs)


def load_lut(
    path: str | os.PathLike[str], *, space: Any = None, input_shape: Sequence[int] | None = None,
    backend: str | None = None, batch_size: int | None = None, threads: int | None = None,
    num_classes: int | None = None, strict: bool = False, environment: bool = True,
) -> LatencyTable:
    """Load a complete table and check it against what the caller will use it for.

    Every argument left ``None`` is not checked. ``environment`` also compares the table's device
    and library versions with this machine's (a warning, or an error with ``strict``).

    Raises:
        LatencyTableMismatchError: space, space config, input shape, classes, batch, backend or
            threads differ (each difference named); with ``strict``, device or versions too.
        ConfigError: not a table, or an incomplete one.
    """
    table = LatencyTable.load(path)
    wanted: dict[str, Any] = {"input_shape": None if input_shape is None else list(input_shape),
                              "backend": backend, "batch_size": batch_size, "threads": threads,
                              "num_classes": num_classes}
    if space is not None:
        wanted.update(space=space.name, space_config=space.config())
    table.check(wanted, strict=strict)
    if environment:
        table.check_environment(strict=strict)
    table._require_complete()
    return table


# ---- building ----------------------------------------------------------------------------------------


def build_lut(
    space: Any, input_shape: Sequence[int], spec: LatencySpec, out: str | os.PathLike[str], *,
    num_classes: int = 10, fit_networks: int = 10, seed: int = 0, progress: bool = True,
    max_measurements: int | None = None, statistic: str = "median", fit: str = "offset",
    context: bool | None = None, context_passes: int | None = None, context_rounds: int = 1,
) -> LatencyTable:
    """Measure every distinct block of ``space`` at ``input_shape`` and fit the constant; resumable.

    Args:
        space: a ``mobilenet`` space instance.
        input_shape: the network input ``(C, H, W)`` (``spec.input_size`` replaces H and W).
        spec: how each block and network is measured (in this process: ``isolated`` is refused).
        out: the JSON table file; if it exists (from an interrupted build with the same
            settings) the build continues it.
        num_classes: classifier width of the fitted whole networks.
        fit_networks: whole networks measured to fit the constant.
        seed: seed of the random fit networks.
        progress: show a tqdm progress bar.
        max_measurements: stop after this many new measurements (blocks, then fit networks) and
            return the partial table (tests, or spreading a build over several sessions).
        statistic: which statistic of the timed passes the prediction uses, ``"median"``
            (default) or ``"min"`` (the uncontended time on a busy machine); every entry keeps
            both, so :meth:`LatencyTable.use_statistic` switches later.
        fit: ``"offset"`` (a constant, the default) or ``"affine"`` (a scale and a constant); see
            :meth:`LatencyTable.use_statistic`.
        context: also time every block *inside* whole networks (PyTorch only; default: yes for
            the torch backend). In eager PyTorch a block costs 12-29% more inside a network than
            alone in a loop, by a ratio that differs between networks (``docs/benchmarks.md``);
            :func:`measure_in_context` runs a few networks that together contain every (layer,
            option) and keeps, per block, the median over networks of its fastest pass.
        context_passes: timed passes per context network (default ``spec.repeats``).
        context_rounds: times the context networks are gone over in turn, each block keeping its
            fastest pass over all of them (see :func:`measure_in_context`; default 1).

    Returns:
        the table, complete unless ``max_measurements`` stopped it.

    Raises:
        LatencyTableMismatchError: ``out`` holds a table built with other settings, on another
            device or with other library versions (a table never mixes two machines' numbers).
    """
    from tqdm.auto import tqdm

    if spec.isolated:
        raise ConfigError("isolated=True is not supported by build_lut: it measures in this process (it times "
                          "hundreds of blocks); pin the whole "
                          "command instead, e.g. `taskset -c 1 nasforge hardware build-lut ...`")
    _check_space(space)
    check_int("fit_networks", fit_networks, error=ConfigError)
    require_choice("latency statistic", statistic, STATISTICS)
    require_choice("latency fit", fit, FITS)
    if context is None:
        context = spec.backend == "torch"
    if context and spec.backend != "torch":
        raise ConfigError(f"in-context block timings need the torch backend (forward hooks), not {spec.backend!r}")
    if statistic == "context" and not context:
        raise ConfigError("statistic 'context' needs the in-context block timings (context=True, torch backend)")
    header = make_header(space, input_shape, spec, num_classes)
    shape = tuple(header["input_shape"])
    block_spec = LatencySpec(backend=spec.backend, batch_size=spec.batch_size, threads=spec.threads,
                             warmup=spec.warmup, repeats=spec.repeats, device=spec.device)
    path = Path(out)
    if path.exists():
        table = LatencyTable.load(path)
        table.check({k: header[k] for k in STRICT_FIELDS + SOFT_FIELDS + ("warmup", "repeats")}, strict=True)
        if (table.header.get("warmup"), table.header.get("repeats")) != (spec.warmup, spec.repeats):
            raise LatencyTableMismatchError(path, {"warmup, repeats": (
                (table.header.get("warmup"), table.header.get("repeats")), (spec.warmup, spec.repeats))})
    else:
        table = LatencyTable.new(header, path)
    table._space = space
    entries: dict[str, Any] = table.doc["entries"]
    todo_blocks = table.missing()
    fit_archs = fit_architectures(space, fit_networks, seed)
    done_fit = {r["arch"] for r in table.doc["fit_networks"]}
    todo_fit = [a for a in fit_archs if space.format(a) not in done_fit]
    budget = math.inf if max_measurements is None else max_measurements
    total = len(unique_keys(space, shape)) + len(fit_archs)
    bar = tqdm(total=total, initial=total - len(todo_blocks) - len(todo_fit), desc="latency table",
               unit="measurement", disable=not progress)
    try:
        for key in todo_blocks:
            if budget <= 0:
                return table
            block = block_module(space, key)
            m = measure(block, (key.in_channels, key.height, key.width), block_spec)
            entries[key.text] = {**key.as_dict(), "median_ms": m.median_ms, "p25_ms": m.p25_ms, "p75_ms": m.p75_ms,
                                 "min_ms": m.min_ms, "max_ms": m.max_ms}
            table.save()
            budget -= 1
            bar.update(1)
        for arch in todo_fit:
            if budget <= 0:
                return table
            net = space.build(arch, num_classes=num_classes, in_channels=shape[0])
            m = measure(net, shape, block_spec)
            table.doc["fit_networks"].append({"arch": space.format(arch), "median_ms": m.median_ms,
                                              "p25_ms": m.p25_ms, "p75_ms": m.p75_ms, "min_ms": m.min_ms,
                                              "max_ms": m.max_ms})
            table.save()
            budget -= 1
            bar.update(1)
    finally:
        bar.close()
    if context and table.has_context and table.doc.get("context_rounds", 1) != context_rounds:
        raise LatencyTableMismatchError(path, {"context_rounds": (table.doc.get("context_rounds", 1), context_rounds)})
    if context and not table.has_context:
        measure_in_context(table, context_passes or spec.repeats, warmup=spec.warmup, threads=spec.threads,
                           num_classes=num_classes, rounds=context_rounds)
        table.save()
    table.doc["complete"] = True
    table.use_statistic(statistic, fit)
    table.save()
    return table


def context_architectures(space: Any) -> list[Any]:
    """Networks that together hold every (layer, option): network ``i`` takes option ``i mod m``
    of each layer's ``m`` options (as many networks as the widest layer has options)."""
    decisions = space.decisions()
    width = max(len(opts) for opts in decisions.values())
    return [space.make({d: opts[i % len(opts)] for d, opts in decisions.items()}) for i in range(width)]


def measure_in_context(table: LatencyTable, passes: int, *, warmup: int = 3, threads: int = 1,
                       num_classes: int = 10, rounds: int = 1) -> None:
    """Time each block inside whole networks (forward hooks) and store ``context_ms`` per entry.

    For every network of :func:`context_architectures`, ``passes`` timed forward passes (eager,
    ``torch.inference_mode``, ``threads`` intra-op threads) record each block's time between its
    pre- and post-forward hook; a block's time in a network is its fastest pass, and its entry's
    ``context_ms`` is the median of those over the networks that contain it (layers sharing a
    block key pool their networks). The hooks themselves cost microseconds per block.

    ``rounds`` > 1 goes over the networks that many times in turn and keeps each block's fastest
    pass over all rounds. On a virtual machine the speed drifts by about 10% from one second to
    the next even when nothing else runs (``docs/benchmarks.md``); every block of one network is
    timed in the same second or so, so one slow stretch would bias all the blocks of that network
    (one option of every layer) together. Rounds spread each block's passes over time.
    """
    check_int("context passes", passes, error=ConfigError)
    check_int("context rounds", rounds, error=ConfigError)
    space = table.space
    shape = table.input_shape
    keys = table.layer_keys()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        archs = context_architectures(space)
        nets = [space.build(a, num_classes=num_classes, in_channels=shape[0]).eval() for a in archs]
        x = torch.randn((table.header["batch_size"], *shape))
        fastest: list[dict[str, float]] = [{} for _ in archs]
        for _ in range(rounds):
            for i, net in enumerate(nets):
                for layer, ms in _block_times(net, x, passes, warmup).items():
                    fastest[i][layer] = min(ms, fastest[i].get(layer, math.inf))
    finally:
        torch.set_num_threads(previous_threads)
    per_key: dict[str, list[float]] = {}
    for arch, spans in zip(archs, fastest):
        for layer, fastest_ms in spans.items():
            per_key.setdefault(keys[layer][arch[layer]].text, []).append(fastest_ms)
    table.doc["context_passes"], table.doc["context_rounds"] = passes, rounds
    missing = [k for k in table.doc["entries"] if k not in per_key]
    if missing:
        raise ConfigError(f"in-context timing left {len(missing)} block(s) unmeasured, e.g. {missing[0]}")
    for key, values in per_key.items():
        if key in table.doc["entries"]:
            table.doc["entries"][key]["context_ms"] = statistics.median(values)
            table.doc["entries"][key]["context_networks"] = len(values)


def _block_times(net: Any, x: torch.Tensor, passes: int, warmup: int) -> dict[str, float]:
    """Fastest time (ms) of each of ``net.layers`` between its forward hooks, over ``passes`` passes."""
    import time

    spans: dict[str, list[float]] = {name: [] for name in net.layers}
    starts: dict[str, float] = {}

    def pre(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any) -> None:
            starts[name] = time.perf_counter()
        return hook

    def post(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, _o: Any) -> None:
            spans[name].append(time.perf_counter() - starts[name])
        return hook

    handles = [m.register_forward_pre_hook(pre(n)) for n, m in net.layers.items()]
    handles += [m.register_forward_hook(post(n)) for n, m in net.layers.items()]
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                net(x)
            for times in spans.values():
                times.clear()
            for _ in range(passes):
                net(x)
    finally:
        for h in handles:
            h.remove()
    return {name: min(times) * 1000.0 for name, times in spans.items()}
