"""Measured inference latency of a network on this machine.

Two entry points:

* :func:`measure_latency_ms` — the median of ``repeats`` timed PyTorch eager forward passes
  after ``warmup`` untimed ones, with the current torch thread setting (the search loop's
  ``latency_ms`` by default; :class:`LoopLatency` says how the loop measures when
  ``--latency-opt`` is given).
* :func:`measure` — a full measurement described by a frozen :class:`LatencySpec` (backend
  ``torch`` or ``onnxruntime``, batch size, threads, input size, warm-up, repeats, device,
  optionally a fresh process pinned to CPUs) returning a :class:`LatencyMeasurement` with the
  median, the spread (quartiles, min, max) and its provenance: the device description, the
  backend, the thread count and the torch / onnxruntime / Python versions.

How it is timed. PyTorch: eval mode, ``torch.inference_mode``, ``torch.set_num_threads(threads)``
for the duration (restored after), wall time of each forward with :func:`time.perf_counter`;
on a CUDA device the time between two CUDA events recorded around the forward (after a
synchronisation), as the GPU runs asynchronously. ONNX Runtime: the network is exported with
:func:`nasforge.export.export_onnx` (opset 17, dynamic batch) to a temporary file and run by an
``InferenceSession`` on the CPU execution provider with ``intra_op_num_threads = threads``,
``inter_op_num_threads = 1``, sequential execution and all graph optimisations (so BN is folded
into the convolutions, as a deployed model would be); each ``session.run`` is timed. The garbage
collector is paused while timing.

Latency is a measurement, not a count: it varies with the machine and its load, so the search
loop caches each architecture's measured value in the run directory and reuses it on resume.

Isolated measurement (``LatencySpec(isolated=True)``) runs ``python -m nasforge.hardware.latency``
in a fresh process that rebuilds the network from a :class:`NetworkRecipe` (space name, space
config, architecture text, build options; JSON on stdin, never a pickle), pins itself with
``os.sched_setaffinity`` to ``threads`` CPUs of the parent's allowed set (the last ones) where
the platform has it, measures, and writes the result as JSON on stdout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.errors import BudgetError, ConfigError, UnknownNameError, check_int

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")


def measure_latency_ms(
    net: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1, warmup: int = 3, repeats: int = 10,
) -> float:
    """Median milliseconds of one forward pass of ``net`` on a ``(batch_size, *input_shape)`` input."""
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise BudgetError(f"need repeats >= 1, warmup >= 0, batch_size >= 1; got {repeats}, {warmup}, {batch_size}")
    was_training = net.training
    net.eval()
    p = next(net.parameters(), None)
    x = torch.randn((batch_size, *input_shape), device=p.device if p is not None else "cpu")
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                t = time.perf_counter()
                net(x)
                if x.is_cuda:
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append((time.perf_counter() - t) * 1000.0)
    finally:
        net.train(was_training)
    return statistics.median(times)


# ---- the specification and the result ------------------------------------------------------------


@dataclass(frozen=True)
class LatencySpec:
    """How to measure. Every field is validated on construction (typed errors naming valid values)."""

    backend: str = "torch"  # "torch" (eager) or "onnxruntime" (CPU execution provider)
    batch_size: int = 1  # inputs per forward pass
    threads: int = 1  # torch.set_num_threads / ORT intra-op threads during the measurement
    input_size: int | None = None  # square H = W replacing input_shape's spatial size; None keeps it
    warmup: int = 5  # untimed passes first (allocator, caches, ORT's first-run planning)
    repeats: int = 20  # timed passes; the result reports their median and spread
    device: str = "cpu"  # "cpu" or "cuda[:N]" (torch backend only; timed with CUDA events)
    isolated: bool = False  # measure in a fresh process pinned to `threads` CPUs (needs a NetworkRecipe)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UnknownNameError("latency backend", self.backend, BACKENDS)
        check_int("batch_size", self.batch_size, error=ConfigError)
        check_int("threads", self.threads, error=ConfigError)
        check_int("warmup", self.warmup, low=0, error=ConfigError)
        check_int("repeats", self.repeats, error=ConfigError)
        if self.input_size is not None:
            check_int("input_size", self.input_size, error=ConfigError)
        if not isinstance(self.isolated, bool):
            raise ConfigError(f"isolated must be True or False, got {self.isolated!r}")
        if not isinstance(self.device, str) or re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is None:
            raise ConfigError(f"latency device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.device != "cpu" and self.backend != "torch":
            raise ConfigError(
                f"backend {self.backend!r} is measured on the CPU only; use device='cpu' or backend='torch' for {self.device}"
            )

    def shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The measured input without the batch axis: ``input_shape`` with ``input_size`` applied."""
        shape = tuple(input_shape)
        if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ConfigError(f"input_shape must be positive ints without the batch axis, e.g. (3, 32, 32); got {input_shape!r}")
        if self.input_size is None:
            return shape
        if len(shape) != 3:
            raise ConfigError(f"input_size needs a (C, H, W) input_shape, got {input_shape!r}")
        return (shape[0], self.input_size, self.input_size)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LatencyMeasurement:
    """One measurement: the median and spread of ``repeats`` timed passes, and its provenance."""

    median_ms: float
    p25_ms: float  # first quartile of the timed passes
    p75_ms: float  # third quartile
    min_ms: float
    max_ms: float
    repeats: int
    warmup: int
    batch_size: int
    input_shape: tuple[int, ...]  # without the batch axis
    backend: str
    device: str  # what ran it, e.g. "cpu: Intel(R) Xeon(R) ... (2 logical CPUs)"
    threads: int
    versions: dict[str, str] = field(default_factory=dict)  # torch, onnxruntime, python, nasforge
    isolated: bool = False
    pinned_cpus: tuple[int, ...] | None = None  # CPUs the isolated process was pinned to

    @property
    def iqr_ms(self) -> float:
        return self.p75_ms - self.p25_ms

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["pinned_cpus"] = None if self.pinned_cpus is None else list(self.pinned_cpus)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyMeasurement:
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])
        d["pinned_cpus"] = None if d.get("pinned_cpus") is None else tuple(d["pinned_cpus"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class NetworkRecipe:
    """A network as data (what :func:`nasforge.export.save_model` records): it crosses a process
    boundary as JSON, never as a pickle."""

    space: str  # registered space name
    space_config: dict[str, Any]  # the space's config()
    arch: str  # the architecture in the space's text form
    build_kwargs: dict[str, Any] = field(default_factory=dict)  # num_classes, in_channels...

    @classmethod
    def of(cls, space: Any, arch: Any, **build_kwargs: Any) -> NetworkRecipe:
        return cls(space.name, space.config(), space.format(space.validate(arch)), dict(build_kwargs))

    def build(self) -> nn.Module:
        import nasforge

        space = nasforge.get_space(self.space, **self.space_config)
        net: nn.Module = space.build(space.parse(self.arch), **self.build_kwargs)
        return net


# ---- provenance --------------------------------------------------------------------------------


def device_description(device: str = "cpu") -> str:
    """The CPU model (``/proc/cpuinfo``, else :mod:`platform`) and logical CPU count, or the GPU name."""
    if device.startswith("cuda"):
        return f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    if not model:
        model = platform.processor() or platform.machine() or "unknown CPU"
    return f"cpu: {model} ({os.cpu_count()} logical CPUs)"


def library_versions(backend: str | None = None) -> dict[str, str]:
    """torch, python, nasforge and (when installed, or always for that backend) onnxruntime versions."""
    import nasforge

    versions = {"torch": torch.__version__, "python": platform.python_version(), "nasforge": nasforge.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        if backend == "onnxruntime":
            raise
    return versions


# ---- how a search loop measures latency_ms ------------------------------------------------------

#: what a search loop reads from a measurement: the median pass, or the fastest one
LOOP_STATISTICS: tuple[str, ...] = ("median", "min")
#: keys of ``--latency-opt`` (``SearchConfig.latency_kwargs``)
LOOP_OPTIONS: tuple[str, ...] = ("statistic", "backend", "threads", "warmup", "repeats", "isolated")


@dataclass(frozen=True)
class LoopLatency:
    """How the search loop measures an architecture's ``latency_ms`` (``--latency-opt KEY=VALUE``).

    Without options (``spec`` None): :func:`measure_latency_ms`, the median of 10 passes after
    3 in the search process with its torch threads, as before these options existed. With any
    option: :func:`measure` with a :class:`LatencySpec` of the given ``backend``, ``threads``,
    ``warmup``, ``repeats`` and ``isolated`` (the spec's defaults for the others: torch, one
    thread, 5 + 20 passes, in process), reading the ``statistic``: ``median`` (default) or
    ``min``, the fastest pass. On a machine shared with other work (the search's own training,
    other workers) the median takes the other jobs' time into a network's latency; the fastest
    of many passes, best in a fresh pinned process (``isolated=true``), holds up under load
    (``docs/benchmarks.md``, "Latency lookup tables").
    """

    spec: LatencySpec | None = None
    statistic: str = "median"

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LoopLatency:
        """Validate ``--latency-opt`` values; typed errors name the bad key or value and the choices."""
        unknown = sorted(set(options) - set(LOOP_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown latency option(s) {unknown}; valid: {', '.join(LOOP_OPTIONS)}")
        if not options:
            return cls()
        statistic = options.get("statistic", "median")
        if statistic not in LOOP_STATISTICS:
            raise UnknownNameError("latency statistic", statistic, LOOP_STATISTICS)
        return cls(LatencySpec(**{k: v for k, v in options.items() if k != "statistic"}), statistic)

    @property
    def isolated(self) -> bool:
        """Whether a measurement rebuilds the network in a fresh process (it then needs a recipe)."""
        return self.spec is not None and self.spec.isolated

    def measure_ms(self, net: nn.Module, input_shape: tuple[int, ...], recipe: NetworkRecipe | None = None) -> float:
        """Milliseconds of one forward pass of ``net`` (rebuilt from ``recipe`` when :attr:`isolated`)."""
        if self.spec is None:
            return measure_latency_ms(net, input_shape)
        target: nn.Module | NetworkRecipe = net
        if self.spec.isolated:
            if recipe is None:
                raise ConfigError("an isolated latency measurement rebuilds the network in a fresh process: pass its "
                                  "NetworkRecipe")
            target = recipe
        m = measure(target, input_shape, self.spec)
        return m.min_ms if self.statistic == "min" else m.median_ms


# ---- measuring -----------------------------------------------------------------------------------


def measure(net: nn.Module | NetworkRecipe, input_shape: tuple[int, ...], spec: LatencySpec | None = None) -> LatencyMeasurement:
    """Measure the latency of one stand-alone network as ``spec`` says.

    Args:
        net: the network, or a :class:`NetworkRecipe` to build it (required when
            ``spec.isolated``: a module cannot reach a fresh process without a pickle).
        input_shape: one input without the batch axis, ``(C, H, W)``; ``spec.input_size``
            replaces H and W.
        spec: how to measure (default :class:`LatencySpec()`: torch, batch 1, one thread).

    Returns:
        the :class:`LatencyMeasurement` (median, quartiles, min, max and provenance).

    Raises:
        ConfigError: a bad input shape, an isolated measurement of a module, a CUDA device on a
            machine without one.
        ImportError: the onnxruntime backend without onnxruntime installed.
    """
    spec = spec or LatencySpec()
    shape = spec.shape(input_shape)
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"latency device {spec.device!r} asked for, but torch sees no CUDA device; use device='cpu'")
    if spec.isolated:
        if not isinstance(net, NetworkRecipe):
            raise ConfigError(
                "an isolated measurement rebuilds the network in a fresh process: pass a NetworkRecipe "
                "(space, space config, architecture text, build options), not a module"
            )
        return _measure_isolated(net, shape, spec)
    module = net.build() if isinstance(net, NetworkRecipe) else net
    if spec.backend == "onnxruntime":
        times = _time_onnxruntime(module, shape, spec)
    else:
        times = _time_torch(module, shape, spec)
    return _summarise(times, shape, spec, pinned=None)


def _quantile(sorted_times: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    pos = q * (len(sorted_times) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_times) - 1)
    return sorted_times[lo] + (sorted_times[hi] - sorted_times[lo]) * (pos - lo)


def _summarise(times: list[float], shape: tuple[int, ...], spec: LatencySpec, pinned: tuple[int, ...] | None) -> LatencyMeasurement:
    s = sorted(times)
    return LatencyMeasurement(
        median_ms=statistics.median(s), p25_ms=_quantile(s, 0.25), p75_ms=_quantile(s, 0.75),
        min_ms=s[0], max_ms=s[-1], repeats=len(s), warmup=spec.warmup, batch_size=spec.batch_size,
        input_shape=shape, backend=spec.backend, device=device_description(spec.device), threads=spec.threads,
        versions=library_versions(spec.backend), isolated=pinned is not None or spec.isolated, pinned_cpus=pinned,
    )


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _time_torch(net: nn.Module, shape: tuple[int, ...], spec: LatencySpec) -> list[float]:
    device = torch.device(spec.device)
    was_training = net.training
    p = next(net.parameters(), None)
    old_device = p.device if p is not None else None
    net.to(device).eval()
    x = torch.randn((spec.batch_size, *shape), device=device)
    times: list[float] = []
    try:
        with _torch_threads(spec.threads), torch.inference_mode(), _no_gc():
            if device.type == "cuda":
                # The GPU runs asynchronously: time between two events on its stream.
                for i in range(spec.warmup + spec.repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    torch.cuda.synchronize(device)
                    start.record()
                    net(x)
                    end.record()
                    end.synchronize()
                    if i >= spec.warmup:
                        times.append(float(start.elapsed_time(end)))
            else:
                for i in range(spec.warmup + spec.repeats):
                    t = time.perf_counter()
                    net(x)
                    if i >= spec.warmup:
                        times.append((time.perf_counter() - t) * 1000.0)
    finally:
        net.train(was_training)
        if old_device is not None:
            net.to(old_device)
    return times


def onnx_session(path: str | os.PathLike[str], threads: int) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads, sequential, all optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # no warnings about unused initializers of folded BN
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _time_onnxruntime(net: nn.Module, shape: tuple[int, ...], spec: LatencySpec) -> list[float]:
    import numpy as np

    from nasforge.export import export_onnx

    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ImportError("the onnxruntime latency backend needs onnxruntime: pip install nasforge[onnx]") from e
    with tempfile.TemporaryDirectory(prefix="nasforge-latency-") as tmp:
        path = Path(tmp) / "net.onnx"
        with _torch_threads(spec.threads):
            export_onnx(net.cpu(), path, shape, verify=False)
        session = onnx_session(path, spec.threads)
    x = np.random.default_rng(0).standard_normal((spec.batch_size, *shape)).astype(np.float32)
    name = session.get_inputs()[0].name
    times: list[float] = []
    with _no_gc():
        for i in range(spec.warmup + spec.repeats):
            t = time.perf_counter()
            session.run(None, {name: x})
            if i >= spec.warmup:
                times.append((time.perf_counter() - t) * 1000.0)
    return times


# ---- isolated measurement ---------------------------------------------------------------------------


def _pin_cpus(threads: int) -> tuple[int, ...] | None:
    """Pin this process to ``threads`` CPUs of its allowed set (the last ones); None where unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    chosen = tuple(allowed[-threads:]) if threads <= len(allowed) else tuple(allowed)
    os.sched_setaffinity(0, set(chosen))
    return chosen


def _measure_isolated(recipe: NetworkRecipe, shape: tuple[int, ...], spec: LatencySpec) -> LatencyMeasurement:
    request = {
        "recipe": dataclasses.asdict(recipe),
        "input_shape": list(shape),
        "spec": {**spec.as_dict(), "isolated": False, "input_size": None},
    }
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], input=json.dumps(request), capture_output=True,
        text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        raise ConfigError(f"isolated latency measurement failed (exit {proc.returncode}): " + " | ".join(tail))
    return LatencyMeasurement.from_dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ``python -m nasforge.hardware.latency`` would import this module twice (package, then __main__).
_CHILD = "import sys; from nasforge.hardware.latency import _child_main; sys.exit(_child_main())"


def _child_main() -> int:
    """The isolated process (also ``python -m nasforge.hardware.latency``): read a request (JSON) on stdin, write the result."""
    request = json.loads(sys.stdin.read())
    spec = LatencySpec(**request["spec"])
    pinned = _pin_cpus(spec.threads)
    recipe = NetworkRecipe(**request["recipe"])
    shape = tuple(int(s) for s in request["input_shape"])
    result = measure(recipe, shape, spec)
    result = dataclasses.replace(result, isolated=True, pinned_cpus=pinned)
    sys.stdout.write(json.dumps(result.as_dict()) + "\n")
    return 0


# ---- units ---------------------------------------------------------------------------------------

#: Milliseconds per unit of a duration.
TIME_UNITS: dict[str, float] = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}


def parse_duration_ms(text: str | float | int) -> float:
    """``"5"``, ``"5ms"``, ``"500 us"`` or ``"0.005s"`` -> milliseconds; a plain number is ms.

    Raises:
        ConfigError: not a number with one of the units ``ms``, ``us`` (``µs``), ``s``.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    m = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([^\s0-9.]*)\s*", str(text))
    if m is None:
        raise ConfigError(f"bad duration {text!r}; expected a number with a unit, e.g. 5ms, 500us, 0.005s")
    number, unit = m.groups()
    if unit and unit not in TIME_UNITS:
        raise ConfigError(f"unknown time unit {unit!r} in {text!r}; valid: {', '.join(TIME_UNITS)}")
    try:
        return float(number) * TIME_UNITS[unit or "ms"]
    except ValueError:
        raise ConfigError(f"bad number {number!r} in duration {text!r}") from None


if __name__ == "__main__":
    sys.exit(_child_main())
