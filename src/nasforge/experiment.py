"""Experiments: a multi-trial search, a from-scratch training, an evaluation; each in a run dir.

This is the layer the CLI calls. :func:`run_search` wires a space, a searcher, an evaluator
and a durable study together:

1. the run directory gets ``config.json`` (the fully resolved config); rerunning in the same
   directory with a config that changes the search raises :class:`IncompatibleRunError`;
2. the study (Optuna storage, ``study.db`` by default) is opened; trials left RUNNING by a
   killed process are marked failed; finished trials are *replayed* into a fresh searcher
   (``ask`` must give back the recorded architecture, then ``tell``), so the search continues
   exactly where it stopped and no finished trial is lost or repeated;
3. trials run until ``trials`` have finished; each is written when it starts and ends;
4. the best architecture is retrained on the whole training set with the final recipe,
   evaluated on the test set, and exported (safetensors + ONNX) with ``results.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasforge import registry
from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError, IncompatibleRunError, NasforgeError, require_choice
from nasforge.hardware.objectives import COST_METRICS, Constraint, parse_constraint
from nasforge.searchers.base import Result, Searcher
from nasforge.spaces.base import SearchSpace

if TYPE_CHECKING:
    from nasforge.hardware.latency import LoopLatency

EVALUATORS = ("train", "table", "proxy")
EXECUTORS = ("local", "ray")
SPLITS = ("random", "nb201")


class SearchInterrupted(NasforgeError, KeyboardInterrupt):
    """Ctrl-C during a search: finished trials are safe; rerun the same command to resume."""


@dataclass
class SearchConfig:
    """Everything that defines a search. Field comments are the ``--help`` texts."""

    method: str = "evolution"  # searcher: see `nasforge methods`
    space: str = "nb201"  # search space: see `nasforge spaces`
    space_kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of get_space
    build_kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of space.build (e.g. C, N)
    method_kwargs: dict[str, Any] = field(default_factory=dict)  # method options (e.g. population_size, epochs)
    supernet_kwargs: dict[str, Any] = field(default_factory=dict)  # one-shot methods: space.supernet options (C, N, affine...)
    max_batches_per_epoch: int | None = None  # one-shot methods: a reduced budget of steps per search epoch
    checkpoint_every: int = 100  # one-shot methods: steps between search checkpoints (one at every epoch end too)
    channels_last: bool = False  # one-shot methods: channels-last memory format for the supernet
    tensorboard: bool = False  # write TensorBoard scalars of one-shot search epochs and the final training to OUT/tensorboard
    data: str = "digits"  # digits (built in), cifar10 (official batches), folder (ImageFolder layout)
    data_root: str | None = None  # directory of cifar10 / folder data
    image_size: int | None = None  # resize folder images to this size
    split: str = "random"  # validation split for search: random (stratified) or nb201 (CIFAR-10 25k/25k)
    valid_fraction: float = 0.5  # share of the training set held out for validation (split=random)
    train_subset: int | None = None  # use only this many training images for the search (stratified)
    evaluator: str = "train"  # train (from scratch), table (NB201 lookup, needs --table) or proxy (zero-cost, --proxy)
    table: str | None = None  # NB201 table CSV: the evaluator for evaluator=table, else the best cell is looked up
    proxy: str | None = None  # zero-cost proxy for evaluator=proxy: see `nasforge proxies`
    proxy_batch_size: int = 64  # images in the fixed scoring batch of data-dependent proxies
    trials: int = 20  # number of finished trials to reach
    seed: int = 0  # seeds the searcher, data splits and every training run
    objective: str | None = None  # metric(s) to optimise (default val_acc, or the proxy); max:/min: set the direction; several, comma-separated, make a Pareto search
    constraints: list[str] = field(default_factory=list)  # e.g. "params<=1e5", "flops<=2e6"
    latency_kwargs: dict[str, Any] = field(default_factory=dict)  # how the loop measures latency_ms: statistic=median|min, repeats, warmup, threads, isolated, backend (default: median of 10 passes in process)
    recipe: str = "quick"  # training recipe for each candidate (see train/recipes.py)
    recipe_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"epochs": 3}
    final_recipe: str = "quick"  # recipe for retraining the best architecture
    final_overrides: dict[str, Any] = field(default_factory=dict)
    final_train: bool | None = None  # retrain the best at the end (default: yes for evaluator=train)
    out: str = "runs/search"  # run directory
    storage: str | None = None  # Optuna storage URL (default: sqlite file in the run directory)
    study_name: str | None = None  # study name in the storage (default: from the run directory); other machines join with it
    workers: int = 1  # worker processes on this machine driving the study (with executor=ray: Ray trials at once)
    max_retries: int = 3  # evaluations again of an architecture whose worker died, before it counts as failed
    heartbeat_seconds: int = 10  # heartbeat interval of running trials; 3 missed beats mark a worker dead
    executor: str = "local"  # local (worker processes) or ray (each trial a Ray task)
    ray_address: str | None = None  # Ray cluster address (default: a local Ray instance)
    ray_cpus: float = 1.0  # CPUs each Ray trial task requests
    ray_gpus: float = 0.0  # GPUs each Ray trial task requests
    device: str = "cpu"

    # Fields that may change between a run and its resumption without changing the search.
    RESUMABLE = ("trials", "out", "storage", "device", "final_recipe", "final_overrides", "final_train", "checkpoint_every",
                 "tensorboard", "workers", "max_retries", "heartbeat_seconds", "executor", "ray_address", "ray_cpus",
                 "ray_gpus")

    def validate(self) -> None:
        require_choice("method", self.method, registry.names("method"))
        require_choice("space", self.space, registry.names("space"))
        require_choice("evaluator", self.evaluator, EVALUATORS)
        require_choice("split", self.split, SPLITS)
        if not isinstance(self.trials, int) or self.trials <= 0:
            raise BudgetError(f"trials must be a positive integer, got {self.trials!r}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ConfigError(f"valid_fraction must be in (0, 1), got {self.valid_fraction!r}")
        if self.train_subset is not None and self.train_subset <= 0:
            raise BudgetError(f"train_subset must be > 0, got {self.train_subset!r}")
        if self.evaluator == "table" and not self.table:
            raise ConfigError("evaluator 'table' needs --table PATH (the NB201 results CSV)")
        if self.table:
            if self.space != "nb201":
                raise ConfigError(f"--table is the NB201 table: it needs space 'nb201', not {self.space!r}")
            if not Path(self.table).is_file():
                raise ConfigError(f"NB201 table not found: {self.table}")
        if self.evaluator == "proxy":
            if not self.proxy:
                raise ConfigError(f"evaluator 'proxy' needs --proxy NAME; valid: {', '.join(registry.names('proxy'))}")
            require_choice("proxy", self.proxy, registry.names("proxy"))
            if self.proxy_batch_size <= 0:
                raise BudgetError(f"proxy_batch_size must be > 0, got {self.proxy_batch_size!r}")
        if self.evaluator in ("train", "proxy") or self.one_shot():
            require_choice("dataset", self.data, registry.names("dataset"))
        if self.one_shot():
            if self.evaluator != "train":
                raise ConfigError(
                    f"--evaluator {self.evaluator} does not apply to the one-shot method {self.method!r}: it ranks "
                    "architectures through its supernet (use --table to look the derived NB201 cell up)"
                )
            if self.max_batches_per_epoch is not None and (
                isinstance(self.max_batches_per_epoch, bool) or not isinstance(self.max_batches_per_epoch, int)
                or self.max_batches_per_epoch <= 0
            ):
                raise BudgetError(f"max_batches_per_epoch must be a positive int, got {self.max_batches_per_epoch!r}")
        else:
            from nasforge.train.distributed import env_world_size

            if env_world_size() > 1:
                raise ConfigError(
                    f"the multi-trial method {self.method!r} does not run under torchrun (WORLD_SIZE="
                    f"{env_world_size()}): torchrun runs one-shot methods data-parallel"
                )
        self.objectives()
        for c in self.constraints:
            parse_constraint(c)
        from nasforge.hardware.latency import LoopLatency

        LoopLatency.from_options(self.latency_kwargs)
        require_choice("executor", self.executor, EXECUTORS)
        for name in ("workers", "heartbeat_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BudgetError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise BudgetError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        for name in ("ray_cpus", "ray_gpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise BudgetError(f"{name} must be a number >= 0, got {value!r}")
        if self.one_shot() and self.constraints:
            options = registry.get("method", self.method).options()
            if "constraints" not in options:
                able = [n for n in registry.names("method")
                        if self._is_one_shot(n) and "constraints" in registry.get("method", n).options()]
                raise ConfigError(
                    f"--constraint does not apply to the one-shot method {self.method!r} (it derives one "
                    f"architecture from its weights); one-shot methods that take limits: {', '.join(able)}"
                )
            if self.method_kwargs.get("constraints") not in (None, [], ()):
                raise ConfigError("give the limits once: --constraint or --method-opt constraints=..., not both")
        if self.one_shot() and (self.workers != 1 or self.executor != "local"):
            raise ConfigError(
                f"--workers/--executor drive multi-trial studies; the one-shot method {self.method!r} trains one "
                "supernet: run it data-parallel under torchrun instead (see docs/architecture.md)"
            )
        if self.tensorboard:
            from nasforge.train.scalars import require_tensorboard

            require_tensorboard()

    def one_shot(self) -> bool:
        """Whether the method is a weight-sharing (one-shot) method rather than a multi-trial searcher."""
        return self._is_one_shot(self.method)

    @staticmethod
    def _is_one_shot(name: str) -> bool:
        from nasforge.train.oneshot import OneShotMethod

        return isinstance(registry.get("method", name), OneShotMethod)

    def resolved_objective(self) -> str:
        if self.objective:
            return self.objective
        return f"max:{self.proxy}" if self.evaluator == "proxy" else "val_acc"

    def objectives(self) -> list[tuple[str, int]]:
        """The parsed objectives: the first is the trial's fitness; several make a Pareto search."""
        parts = [p for p in self.resolved_objective().split(",") if p.strip()]
        if not parts:
            raise ConfigError(f"bad objective {self.objective!r}; expected METRIC or a comma-separated list")
        objectives = [parse_objective(p) for p in parts]
        metrics = [m for m, _ in objectives]
        if len(set(metrics)) != len(metrics):
            raise ConfigError(f"objective {self.objective!r} names a metric twice")
        return objectives

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the storage URL's password hidden (what ``config.json`` holds)."""
        from nasforge.study.store import redact_url

        d = self.to_dict()
        if not d["latency_kwargs"]:  # left out while empty: run directories made before the option resume
            del d["latency_kwargs"]
        if d.get("storage"):
            d["storage"] = redact_url(d["storage"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        return cls(**_known_fields(cls, d, "search"))


def _known_fields(cls: Any, d: dict[str, Any], what: str) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {unknown}; valid: {', '.join(sorted(fields))}")
    return d


# ---- objectives and constraints --------------------------------------------------------------

_MAXIMISE_HINTS = ("acc", "score", "reward")


def parse_objective(text: str) -> tuple[str, int]:
    """``"val_acc"`` -> ("val_acc", +1); ``"min:params"`` -> ("params", -1).

    Without a prefix, zero-cost proxy scores and metrics whose name contains acc/score/reward are
    maximised, others minimised.
    """
    m = re.fullmatch(r"\s*(?:(max|min):)?\s*([A-Za-z_][A-Za-z0-9_]*)\s*", text)
    if not m:
        raise ConfigError(f"bad objective {text!r}; expected METRIC, max:METRIC or min:METRIC")
    direction, metric = m.groups()
    if direction is None:
        proxies = set(registry.names("proxy")) - set(COST_METRICS)
        direction = "max" if metric in proxies or any(h in metric for h in _MAXIMISE_HINTS) else "min"
    return metric, (1 if direction == "max" else -1)


# COST_METRICS (known before training; checked before evaluation), Constraint (the same class as
# HardLimit) and parse_constraint live in nasforge.hardware.objectives; imported above, so
# ``from nasforge.experiment import Constraint, parse_constraint`` keeps working.


# ---- the run directory -----------------------------------------------------------------------


def prepare_run_dir(out: Path, config: dict[str, Any], resumable: tuple[str, ...]) -> bool:
    """Create ``out`` with ``config.json`` or check a previous one; return True when resuming.

    Under torchrun only rank 0 writes (and checks) the run directory.
    """
    from nasforge.train.distributed import env_rank

    if env_rank() != 0:
        return (out / "config.json").exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise IncompatibleRunError(f"{path} is not valid JSON ({e}); use another --out") from None
        for key in sorted(set(old) | set(config)):
            if key in resumable:
                continue
            if old.get(key) != config.get(key):
                raise IncompatibleRunError(
                    f"run directory {out} was created with {key}={old.get(key)!r}, this command has "
                    f"{key}={config.get(key)!r}; use another --out or the original options"
                )
        _write_json(path, {**old, **{k: config[k] for k in resumable if k in config}})
        return True
    _write_json(path, config)
    return False


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically; several processes may write the same file."""
    from nasforge.train.checkpoint import remove_stale_temp_files

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    remove_stale_temp_files(path)  # left by a writer killed mid-write


# ---- search ----------------------------------------------------------------------------------


@dataclass
class SearchOutcome:
    run_dir: Path
    best_arch: str
    best_metrics: dict[str, float]
    trials: int
    resumed_trials: int
    final: dict[str, Any] | None
    seconds: float


class _Feasibility:
    """Cost-model constraints checked before evaluation, cached per architecture.

    Measured latency varies from run to run, so when a latency constraint is used the measured
    costs are kept in ``cache_path`` (JSON) and reused on resume: the replayed proposals then
    meet the same feasibility decisions as the first time.
    """

    def __init__(self, space: SearchSpace, constraints: list[Constraint], input_shape: tuple[int, int, int],
                 num_classes: int, build_kwargs: dict[str, Any], cache_path: Path | None = None,
                 extra: frozenset[str] = frozenset(), latency: LoopLatency | None = None) -> None:
        self.space, self.input_shape, self.num_classes, self.build_kwargs = space, input_shape, num_classes, build_kwargs
        from nasforge.hardware.latency import LoopLatency

        self.loop_latency = latency or LoopLatency()
        self.pre = [c for c in constraints if c.metric in COST_METRICS]
        # cost metrics the evaluator does not report but an objective or the searcher reads
        self.extra = frozenset(extra)
        self.latency = any(c.metric == "latency_ms" for c in self.pre) or "latency_ms" in self.extra
        self.rejected: dict[str, int] = {}  # constraint text -> proposals it rejected
        self.closest: dict[str, float] = {}  # constraint text -> value nearest its bound among those proposals
        self.cache_path = cache_path if self.latency else None
        self.cache: dict[str, dict[str, float]] = {}
        if self.cache_path is not None and self.cache_path.exists():
            self.cache = json.loads(self.cache_path.read_text())

    def cost(self, arch: Arch) -> dict[str, float]:
        from nasforge.hardware.cost import measure

        key = self.space.format(arch)
        if key not in self.cache and self.cache_path is not None and self.cache_path.exists():
            self.cache.update(json.loads(self.cache_path.read_text()))  # another worker may have measured it
        if key not in self.cache:
            build = {"num_classes": self.num_classes, "in_channels": self.input_shape[0], **self.build_kwargs}
            net = self.space.build(arch, **build)
            cost = measure(net, self.input_shape).as_dict()
            if self.latency:
                from nasforge.hardware.latency import NetworkRecipe

                recipe = NetworkRecipe.of(self.space, arch, **build) if self.loop_latency.isolated else None
                cost["latency_ms"] = self.loop_latency.measure_ms(net, self.input_shape, recipe)
            self.cache[key] = cost
            if self.cache_path is not None:
                _write_json(self.cache_path, self.cache)
        return self.cache[key]

    def ok(self, arch: Arch) -> bool:
        if not self.pre:
            return True
        cost = self.cost(arch)
        broken = [c for c in self.pre if not c.ok(cost[c.metric])]
        for c in broken:
            self.rejected[str(c)] = self.rejected.get(str(c), 0) + 1
            value, best = cost[c.metric], self.closest.get(str(c))
            if best is None or (value < best if c.upper else value > best):
                self.closest[str(c)] = value
        return not broken

    def rejected_text(self) -> str:
        return ", ".join(f"{n} by {c}" for c, n in sorted(self.rejected.items())) or "none"

    def closest_text(self) -> str:
        """Per limit, the measured value nearest its bound among the proposals it rejected:
        ``latency_ms<=1: the fastest of the 1000 proposals it rejected measured 7.3 ms``."""
        parts = []
        for c in dict.fromkeys(self.pre):
            if str(c) not in self.closest:
                continue
            n, v = self.rejected[str(c)], self.closest[str(c)]
            if c.metric == "latency_ms":
                parts.append(f"{c}: the {'fastest' if c.upper else 'slowest'} of the {n} proposals it rejected "
                             f"measured {v:.3g} ms")
            else:
                shown = f"{int(v):,}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:.4g}"
                parts.append(f"{c}: the {'smallest' if c.upper else 'largest'} {c.metric} of the {n} proposals "
                             f"it rejected was {shown}")
        return "; ".join(parts)


_MAX_INFEASIBLE = 1000


def _ask_feasible(searcher: Searcher, feasible: _Feasibility, constraints: list[Constraint]) -> Arch:
    for _ in range(_MAX_INFEASIBLE):
        arch = searcher.ask()
        if feasible.ok(arch):
            return arch
    raise BudgetError(
        f"no architecture meeting {', '.join(map(str, feasible.pre))} found in {_MAX_INFEASIBLE} proposals "
        f"(rejected: {feasible.rejected_text()}); {feasible.closest_text()}; "
        "relax the constraint or shrink the network (build options)"
    )


def _broken(metrics: dict[str, float], constraints: list[Constraint]) -> list[Constraint]:
    """The constraints on evaluator metrics that a finished trial breaks."""
    out = []
    for c in constraints:
        if c.metric not in COST_METRICS:
            if c.metric not in metrics:
                raise ConfigError(f"constraint metric {c.metric!r} is not produced by the evaluator; it gives {sorted(metrics)}")
            if not c.ok(metrics[c.metric]):
                out.append(c)
    return out


def _fitness(metrics: dict[str, float], objective: tuple[str, int], constraints: list[Constraint]) -> float:
    metric, sign = objective
    if metric not in metrics:
        raise ConfigError(f"objective metric {metric!r} is not produced by the evaluator; it gives {sorted(metrics)}")
    if _broken(metrics, constraints) or math.isnan(metrics[metric]):
        return -math.inf  # a NaN (e.g. the loss of a diverged training) is a failed trial, as Optuna records it
    return sign * metrics[metric]


def evaluator_metrics(cfg: SearchConfig) -> frozenset[str]:
    """What the configured evaluator reports, known before anything is built or written."""
    if cfg.evaluator == "table":
        from nasforge.evaluators.table import table_metric_names

        return frozenset(table_metric_names(str(cfg.table)))
    if cfg.evaluator == "proxy":
        return frozenset((str(cfg.proxy), "params", "flops", "macs"))
    from nasforge.evaluators.train import TrainEvaluator

    return frozenset(TrainEvaluator.METRICS)


def make_searcher(cfg: SearchConfig, space: SearchSpace, log: Callable[[str], None] = print) -> Searcher:
    """The configured searcher, checked against the space, the evaluator and the objectives.

    A multi-fidelity searcher runs at full fidelity (``min_fidelity=1.0``) on an evaluator without
    a budget knob (the table, proxies). Several objectives with a single-objective searcher wrap it
    in NSGA-II's selection (:class:`~nasforge.searchers.pareto_wrapper.ParetoWrapper`). Every
    metric the objectives, the constraints and the searcher read must come from the evaluator or
    the cost model: otherwise :class:`ConfigError`, raised before the run directory is touched.
    """
    cls = registry.get("method", cfg.method)
    objectives = cfg.objectives()
    kwargs = dict(cfg.method_kwargs)
    if cls.multi_fidelity and cfg.evaluator != "train":
        if kwargs.get("min_fidelity", 1.0) != 1.0:
            raise ConfigError(
                f"--evaluator {cfg.evaluator} has no budget knob: {cfg.method} runs at full fidelity only "
                f"(min_fidelity=1.0), not min_fidelity={kwargs['min_fidelity']!r}"
            )
        kwargs["min_fidelity"] = 1.0
        log(f"{cfg.method}: the {cfg.evaluator} evaluator has no budget knob, so every trial runs at full fidelity")
    known = set(cls.options()) | ({"min_fidelity"} if cls.multi_fidelity else set())
    unknown = sorted(set(kwargs) - known - {"objectives"})
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for method {cfg.method!r}; valid: {', '.join(sorted(known)) or 'none'}")
    if not cls.uses_fitness and (len(objectives) > 1 or cfg.objective):
        raise ConfigError(
            f"{cfg.method} optimises its own reward (see `nasforge methods`), not --objective "
            f"{cfg.resolved_objective()!r}: leave --objective out and set the method's options"
        )
    if cls.multi_fidelity and cfg.evaluator == "train":
        _warn_collapsed_rungs(cfg, {**cls.options(), **kwargs}, log)
    if cls.multi_objective:
        given = kwargs.get("objectives")
        if given is not None and cfg.objective and [tuple(o) for o in given] != [tuple(o) for o in objectives]:
            raise ConfigError(
                f"{cfg.method}: method option objectives={given!r} disagrees with --objective "
                f"{cfg.objective!r}; give the objectives once, with --objective"
            )
        kwargs.setdefault("objectives", tuple(objectives))
        if len(kwargs["objectives"]) == 1:
            log(f"{cfg.method}: one objective ({cfg.resolved_objective()}), so it runs as a single-objective "
                "elitist search; give several with --objective, e.g. val_acc,min:params")
    try:
        searcher: Searcher = cls(space, seed=cfg.seed, **kwargs)
    except TypeError as e:  # an option of the wrong type (e.g. a string where a number belongs)
        raise ConfigError(f"bad option for method {cfg.method!r} ({e}); options and defaults: {cls.options()}") from None
    if len(objectives) > 1 and not cls.multi_objective:
        from nasforge.searchers.pareto_wrapper import ParetoWrapper

        searcher = ParetoWrapper(searcher, tuple(objectives))
    provided = evaluator_metrics(cfg) | set(COST_METRICS)
    needs = [("objective", m) for m, _ in objectives] + [("constraint", parse_constraint(c).metric) for c in cfg.constraints]
    needs += [(f"method {cfg.method}", m) for m in searcher.required_metrics()]
    for who, metric in needs:
        if metric not in provided:
            raise ConfigError(
                f"{who} needs the metric {metric!r}, which the {cfg.evaluator} evaluator does not report; "
                f"valid: {', '.join(sorted(provided))}"
            )
    return searcher


def _warn_collapsed_rungs(cfg: SearchConfig, options: dict[str, Any], log: Callable[[str], None]) -> None:
    """Say when Hyperband-style rungs (fidelities eta^-s) round to the same number of epochs: the
    same training would then run under two fidelity labels."""
    from nasforge.train.recipes import get_recipe

    eta, low = options.get("eta"), options.get("min_fidelity")
    if not isinstance(eta, (int, float)) or not isinstance(low, (int, float)) or eta <= 1 or not 0 < low < 1:
        return  # the searcher validates its own options
    epochs = get_recipe(cfg.recipe, **cfg.recipe_overrides).epochs
    s_max = int(math.floor(math.log(1 / low) / math.log(eta) + 1e-9))
    per_rung = [max(1, round(epochs * eta ** -s)) for s in range(s_max, -1, -1)]
    if len(set(per_rung)) < len(per_rung):
        log(f"{cfg.method}: with {epochs} epochs the rungs at fidelities "
            f"{', '.join(f'{eta ** -s:.3g}' for s in range(s_max, -1, -1))} train {per_rung} epochs: "
            "some rungs repeat the same training; raise --epochs or min_fidelity")


def _needed_cost_metrics(cfg: SearchConfig, searcher: Searcher) -> frozenset[str]:
    """Cost-model metrics some consumer reads but the evaluator does not report."""
    wanted = {m for m, _ in cfg.objectives()} | set(searcher.required_metrics())
    return frozenset(m for m in wanted if m in COST_METRICS and m not in evaluator_metrics(cfg))


def run_search(cfg: SearchConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> SearchOutcome:
    """Run (or resume, or join) a multi-trial search as described in the module docstring."""
    from nasforge import get_space

    cfg.validate()
    t0 = time.perf_counter()
    out = Path(cfg.out)
    space: SearchSpace = get_space(cfg.space, **cfg.space_kwargs)
    if cfg.one_shot():
        prepare_run_dir(out, cfg.public_dict(), SearchConfig.RESUMABLE)
        return _run_one_shot(cfg, space, out, t0, progress=progress, log=log)
    objectives = cfg.objectives()
    constraints = [parse_constraint(c) for c in cfg.constraints]
    searcher = make_searcher(cfg, space, log)  # every check that can fail, before the run directory is written
    resuming = prepare_run_dir(out, cfg.public_dict(), SearchConfig.RESUMABLE)
    if cfg.executor == "ray":
        from nasforge.study.ray_executor import check_ray

        check_ray()
    bar = None
    pool: Any = None
    with contextlib.ExitStack() as stack:
        try:
            if cfg.executor == "local" and cfg.workers > 1:
                from nasforge.study.pool import WorkerPool

                _share_threads(cfg.workers)
                # started first: they import, load the data and replay the study while this process does too
                pool = stack.enter_context(WorkerPool("nasforge.experiment:search_worker_main", cfg.to_dict(),
                                                      cfg.workers - 1, log=log))
            worker, evaluation = _make_worker(cfg, space, searcher, log)
            study = worker.study
            with study.lock():
                interrupted = study.reap_dead()
                n_resumed = worker.sync().told
            if pool is not None:
                _wait_until_ready(study, pool, log)
            if resuming or n_resumed:
                log(f"resuming {out}: {n_resumed} finished trial(s) kept"
                    + (f", {interrupted} interrupted trial(s) to run again" if interrupted else ""))
            if progress:
                from tqdm import tqdm

                bar = stack.enter_context(tqdm(total=cfg.trials, initial=min(n_resumed, cfg.trials),
                                               desc=f"{cfg.method} on {cfg.space}", unit="trial"))

                def show(told: int) -> None:
                    if bar is not None and told != bar.n:
                        bar.n = min(told, cfg.trials)
                        bar.refresh()

                worker.on_progress = show
            if cfg.executor == "ray":
                from nasforge.study.ray_executor import run_ray_workers

                run_ray_workers(
                    n=cfg.workers, address=cfg.ray_address, cpus=cfg.ray_cpus, gpus=cfg.ray_gpus, workers=[worker],
                    make_worker=lambda: _make_worker(cfg, space, make_searcher(cfg, space, _quiet), log,
                                                     evaluation=evaluation)[0],
                    build=ray_evaluation,
                    # what a trial task needs: not the storage URL (and its password)
                    cfg={**cfg.to_dict(), "storage": None, "_extra": sorted(_needed_cost_metrics(cfg, searcher))},
                    log=log,
                )
            else:
                worker.run()
        except KeyboardInterrupt:
            from nasforge.signals import clear_stop

            clear_stop()  # handled here: a later search in this process starts without it
            saved = open_study(cfg)
            n_done = len(saved.completed()) + len(saved.failed())
            raise SearchInterrupted(
                f"interrupted; {n_done} finished trial(s) are saved in {out}. Rerun the same command to resume."
            ) from None
    records = study.completed()
    failed = study.failed()
    if failed:
        log(f"{len(failed)} trial(s) failed (reasons in results.json), e.g. trial {failed[0]['trial']}: {failed[0]['reason']}")
    best = max(records, key=_rank, default=None)
    if best is None or not math.isfinite(best.fitness):
        broken: dict[str, int] = {}
        for r in records:
            for c in _broken(r.metrics, constraints):
                broken[str(c)] = broken.get(str(c), 0) + 1
        counts = ", ".join(f"{n} broke {c}" for c, n in sorted(broken.items())) or "none"
        raise BudgetError(
            f"no finished trial satisfies the constraints {cfg.constraints} ({len(records)} trials; {counts}; "
            + (f"{len(failed)} failed, e.g. {failed[0]['reason']}; " if failed else "")
            + f"proposals rejected before evaluation: {evaluation.feasible.rejected_text()})"
        )
    best_arch = space.parse(best.arch)

    final: dict[str, Any] | None = None
    if cfg.final_train if cfg.final_train is not None else cfg.evaluator != "table":
        data = evaluation.data if evaluation.data is not None else _load_data(cfg)
        final = train_and_export(
            space, best_arch, data, recipe_name=cfg.final_recipe, overrides=cfg.final_overrides,
            build_kwargs=cfg.build_kwargs, seed=cfg.seed, device=cfg.device, out=out, progress=progress, log=log,
            tensorboard=cfg.tensorboard,
        )
    outcome = SearchOutcome(
        run_dir=out, best_arch=best.arch, best_metrics=best.metrics, trials=len(records) + len(failed),
        resumed_trials=n_resumed,
        final=final, seconds=time.perf_counter() - t0,
    )
    _write_json(out / "results.json", {
        "kind": "search",
        "config": cfg.public_dict(),
        "objective": cfg.resolved_objective(),
        "objectives": [f"{'max' if sign > 0 else 'min'}:{m}" for m, sign in objectives],
        "pareto_front": _pareto_front(records, objectives) if len(objectives) > 1 else None,
        "space_config": space.config(),
        "best": {"arch": best.arch, "trial": best.number, "fitness": best.fitness, "metrics": best.metrics,
                 "table": _table_lookup(cfg, space, best_arch)},
        "final": final,
        "trials": [dataclasses.asdict(r) for r in records],
        "failed": failed,
        "study": {"storage": study.public_url, "name": study.name, "counts": study.counts()},
        "workers": {"processes": cfg.workers, "executor": cfg.executor, "this_process": dataclasses.asdict(worker.stats)},
        "seconds_this_run": outcome.seconds,
    })
    study.close()
    return outcome


def _quiet(_message: str) -> None:
    pass


@dataclass
class _Evaluation:
    """How one worker turns an architecture into an :class:`~nasforge.study.worker.Outcome`."""

    evaluator: Callable[..., Result]
    feasible: _Feasibility
    objective: tuple[str, int]
    constraints: list[Constraint]
    data: Any

    def __call__(self, arch: Arch, fidelity: float) -> Any:
        from nasforge.study.worker import Outcome, TrialFailed

        result = self.evaluator(arch, fidelity) if fidelity != 1.0 else self.evaluator(arch)
        metrics = dict(result.metrics)
        if self.feasible.pre or self.feasible.extra:
            metrics.update({k: v for k, v in self.feasible.cost(arch).items() if k not in metrics})
        metric = self.objective[0]
        if metric in metrics and math.isnan(metrics[metric]):
            raise TrialFailed(f"the objective {metric} is NaN (diverged training?)", metrics)
        return Outcome(_fitness(metrics, self.objective, self.constraints), metrics, result.cost)


def _make_evaluation(cfg: SearchConfig, space: SearchSpace, extra: frozenset[str]) -> _Evaluation:
    constraints = [parse_constraint(c) for c in cfg.constraints]
    evaluator, input_shape, num_classes, data = _make_evaluator(cfg, space)
    from nasforge.hardware.latency import LoopLatency

    feasible = _Feasibility(space, constraints, input_shape, num_classes, cfg.build_kwargs, Path(cfg.out) / "costs.json",
                            extra=extra, latency=LoopLatency.from_options(cfg.latency_kwargs))
    return _Evaluation(evaluator, feasible, cfg.objectives()[0], constraints, data)


def ray_evaluation(cfg_dict: dict[str, Any]) -> tuple[SearchSpace, _Evaluation]:
    """The space and evaluation of a search, built inside a Ray worker (``--executor ray``)."""
    from nasforge import get_space

    cfg_dict = dict(cfg_dict)
    extra = frozenset(cfg_dict.pop("_extra", ()))
    cfg = SearchConfig.from_dict(cfg_dict)
    space = get_space(cfg.space, **cfg.space_kwargs)
    return space, _make_evaluation(cfg, space, extra)


def open_study(cfg: SearchConfig) -> Any:
    """The study of a search: ``study.db`` in the run directory, or ``--study-name`` (default: named
    after the run directory) in ``--storage``, where several searches may live."""
    from nasforge.study import Study

    out = Path(cfg.out)
    if cfg.storage:
        return Study(cfg.storage, name=cfg.study_name or f"nasforge:{out.resolve()}",
                     heartbeat_seconds=cfg.heartbeat_seconds, lock_dir=out)
    return Study(out / "study.db", name=cfg.study_name or "nasforge", heartbeat_seconds=cfg.heartbeat_seconds)


def _make_worker(cfg: SearchConfig, space: SearchSpace, searcher: Searcher, log: Callable[[str], None],
                 evaluation: _Evaluation | None = None) -> tuple[Any, _Evaluation]:
    """A study worker for this process, and its evaluation (``evaluation``: share another worker's,
    as the Ray executor's threads do: their trials run remotely, and the feasibility checks of their
    asks run under the study lock, one thread at a time)."""
    from nasforge.study.worker import StudyWorker

    if evaluation is None:
        evaluation = _make_evaluation(cfg, space, _needed_cost_metrics(cfg, searcher))
    study = open_study(cfg)
    worker = StudyWorker(
        study, searcher, format_arch=space.format,
        ask=lambda: _ask_feasible(searcher, evaluation.feasible, evaluation.constraints),
        evaluate=evaluation, trials=cfg.trials, max_retries=cfg.max_retries,
        poll_seconds=min(1.0, float(cfg.heartbeat_seconds)), log=log,
    )
    return worker, evaluation


_READY_SECONDS = 300.0


def _wait_until_ready(study: Any, pool: Any, log: Callable[[str], None]) -> None:
    """Wait (at most five minutes) until the pool's workers have caught up with the study, so that
    all N start evaluating together (data loading and the replay take a while in each)."""
    deadline = time.perf_counter() + _READY_SECONDS
    want = {f"ready:{pool.token}:{i}" for i in range(1, pool.n + 1)}
    while time.perf_counter() < deadline and pool.alive():
        if want <= set(study.attrs()):
            return
        time.sleep(0.2)
    missing = sorted(want - set(study.attrs()))
    if missing:
        log(f"starting without {len(missing)} worker(s) that are not ready (they join when they are)")


def search_worker_main(cfg_dict: dict[str, Any], index: int, token: str = "") -> None:
    """Entry point of an extra worker process of ``--workers N`` (also usable on its own)."""
    from nasforge import get_space

    cfg = SearchConfig.from_dict(cfg_dict)
    _share_threads(cfg.workers)
    space = get_space(cfg.space, **cfg.space_kwargs)
    searcher = make_searcher(cfg, space, _quiet)

    def log(message: str) -> None:
        print(f"[worker {index}] {message}", flush=True)

    worker, _ = _make_worker(cfg, space, searcher, log)
    try:
        with worker.study.lock():
            worker.sync()
        if token:
            worker.study.set_attr(f"ready:{token}:{index}", os.getpid())
        worker.run()
    finally:
        worker.study.close()


def _share_threads(workers: int) -> None:
    """Give each of ``workers`` processes its share of the cores (torch would take them all in each)."""
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _rank(record: Any) -> tuple[float, float, float]:
    """Order of trials for "best": feasible ones first, then a higher fidelity (a multi-fidelity
    search's cheap rungs are not comparable with full trainings), then the fitness."""
    return (float(math.isfinite(record.fitness)), record.fidelity, record.fitness)


def _pareto_front(records: list[Any], objectives: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """The feasible full-fidelity trials no other such trial dominates, sorted by the first objective."""
    from nasforge.pareto import pareto_front

    top = max((r.fidelity for r in records), default=1.0)
    pool = [r for r in records if r.fidelity == top and math.isfinite(r.fitness)
            and all(m in r.metrics for m, _ in objectives)]
    idx = pareto_front([r.metrics for r in pool], tuple(objectives))
    front = sorted((pool[i] for i in idx), key=lambda r: -objectives[0][1] * r.metrics[objectives[0][0]])
    return [{"trial": r.number, "arch": r.arch, **{m: r.metrics[m] for m, _ in objectives}} for r in front]


def _run_one_shot(
    cfg: SearchConfig, space: SearchSpace, out: Path, t0: float, *, progress: bool, log: Callable[[str], None],
) -> SearchOutcome:
    """A weight-sharing search: one supernet trained by the method, checkpointed in ``out/search``."""
    from nasforge.train.oneshot import OneShotContext, OneShotMethod
    from nasforge.train.scalars import tensorboard_logger

    method: OneShotMethod = registry.get("method", cfg.method)
    data = _load_data(cfg)
    train_set, valid_set = _search_splits(cfg, data)
    from nasforge.train import distributed

    # torchrun (WORLD_SIZE > 1) or NASFORGE_SIMULATE_RANKS: a data-parallel search; rank 0 logs and writes
    sharding, device = distributed.setup(cfg.device)
    main = sharding is None or sharding.is_main
    if not main:
        log, progress = (lambda _: None), False
    scalars = tensorboard_logger(out / "tensorboard" / "search", cfg.tensorboard and main)
    ctx = OneShotContext(
        space=space, train_set=train_set, valid_set=valid_set, num_classes=data.num_classes,
        input_shape=data.input_shape(), supernet_kwargs=dict(cfg.supernet_kwargs), seed=cfg.seed, device=device,
        run_dir=out / "search", checkpoint_every=cfg.checkpoint_every, max_batches_per_epoch=cfg.max_batches_per_epoch,
        channels_last=cfg.channels_last, log=log, progress=progress, on_epoch=scalars,
    )
    log(f"{cfg.method} on {cfg.space}: {len(train_set)} train / {len(valid_set)} validation images")
    if sharding is not None:
        log(f"data parallel: {sharding.world_size} ranks ({sharding.backend or 'simulated in one process'})")
    options = dict(cfg.method_kwargs)
    if cfg.constraints:  # validate() checked the method takes limits (SPOS, FairNAS)
        options["constraints"] = tuple(cfg.constraints)
    try:
        result = method(ctx, **options)
        if sharding is not None:  # a collective: fails unless every rank derived the same architecture
            result.info["data_parallel"] = distributed.agree(space.format(result.arch), result.strengths)
    except KeyboardInterrupt:
        from nasforge.signals import clear_stop

        clear_stop()
        raise SearchInterrupted(
            f"interrupted; the search checkpoint in {out / 'search'} is kept. Rerun the same command to resume."
        ) from None
    finally:
        distributed.shutdown()
        if scalars is not None:
            scalars.close()
    if not main:  # rank 0 looks up, retrains, exports and writes results.json
        return SearchOutcome(
            run_dir=out, best_arch=space.format(result.arch), best_metrics={}, trials=0, resumed_trials=0, final=None,
            seconds=time.perf_counter() - t0,
        )
    history = result.history
    table: dict[str, float] | None = None
    if cfg.table:  # the NB201 protocol: the true accuracy of the derived cell, and of each epoch's
        from nasforge.evaluators.table import NB201Table

        lookup = NB201Table(space, cfg.table)  # read the table once for all lookups
        table = lookup(result.arch).metrics
        for record in history:
            if "arch" in record:
                record["table_test_acc"] = lookup(space.parse(record["arch"])).metrics["test_acc"]
    final: dict[str, Any] | None = None
    if cfg.final_train if cfg.final_train is not None else not cfg.table:
        final = train_and_export(
            space, result.arch, data, recipe_name=cfg.final_recipe, overrides=cfg.final_overrides,
            build_kwargs=cfg.build_kwargs, seed=cfg.seed, device=cfg.device, out=out, progress=progress, log=log,
            tensorboard=cfg.tensorboard,
        )
    arch_text = space.format(result.arch)
    _write_json(out / "results.json", {
        "kind": "search",
        "method_kind": "one-shot",
        "config": cfg.to_dict(),
        "space_config": space.config(),
        "best": {"arch": arch_text, "metrics": {}, "table": table},
        "strengths": result.strengths,
        "history": history,
        "info": result.info,
        "final": final,
        "trials": [],
        "seconds_this_run": time.perf_counter() - t0,
        "search_seconds_this_run": result.seconds,
    })
    return SearchOutcome(
        run_dir=out, best_arch=arch_text, best_metrics=dict(table or {}), trials=0, resumed_trials=0,
        final=final, seconds=time.perf_counter() - t0,
    )


def _table_lookup(cfg: SearchConfig, space: SearchSpace, arch: Arch) -> dict[str, float] | None:
    """The NB201 table's metrics of the best cell when a table is given to a non-table search
    (e.g. the NASWOT protocol: random sampling scored by a proxy, the winner looked up)."""
    if not cfg.table or cfg.evaluator == "table":
        return None
    from nasforge.evaluators.table import NB201Table

    return NB201Table(space, cfg.table)(arch).metrics


def _load_data(cfg: SearchConfig) -> Any:
    return load_data_for(cfg.data, cfg.data_root, cfg.image_size)


def _make_evaluator(cfg: SearchConfig, space: SearchSpace) -> tuple[Callable[..., Result], tuple[int, int, int], int, Any]:
    if cfg.evaluator == "table":
        from nasforge.evaluators.table import NB201Table

        # The table's networks are CIFAR-10 networks: constraints are measured on that input.
        return NB201Table(space, str(cfg.table)), (3, 32, 32), 10, None
    from nasforge.evaluators.train import TrainEvaluator
    from nasforge.train.recipes import get_recipe

    data = _load_data(cfg)
    if cfg.evaluator == "proxy":
        from nasforge.evaluators.proxy import ProxyEvaluator

        proxy_eval = ProxyEvaluator(
            space, str(cfg.proxy), dataset=data.train, input_shape=data.input_shape(), num_classes=data.num_classes,
            batch_size=cfg.proxy_batch_size, build_kwargs=cfg.build_kwargs, seed=cfg.seed, device=cfg.device,
        )
        return proxy_eval, data.input_shape(), data.num_classes, data
    train_set, valid_set = _search_splits(cfg, data)
    recipe = get_recipe(cfg.recipe, **cfg.recipe_overrides)
    evaluator = TrainEvaluator(
        space, train_set, valid_set, recipe=recipe, input_shape=data.input_shape(), num_classes=data.num_classes,
        build_kwargs=cfg.build_kwargs, seed=cfg.seed, device=cfg.device,
    )
    return evaluator, data.input_shape(), data.num_classes, data


def _search_splits(cfg: SearchConfig, data: Any) -> tuple[Any, Any]:
    """The (train, validation) sets a search uses: the NB201 25k/25k split or a stratified one."""
    from nasforge.data import nb201_cifar10_valid_split, split_train_valid

    if cfg.split == "nb201":
        train_set, valid_set = nb201_cifar10_valid_split(data)
        if cfg.train_subset is not None:  # a reduced budget: the same share of each half
            train_set = _stratified_subset(train_set, cfg.train_subset // 2, cfg.seed)
            valid_set = _stratified_subset(valid_set, cfg.train_subset - cfg.train_subset // 2, cfg.seed)
        return train_set, valid_set
    pool = data.train
    if cfg.train_subset is not None:
        pool = _stratified_subset(pool, cfg.train_subset, cfg.seed)
    return split_train_valid(pool, cfg.valid_fraction, seed=cfg.seed)


def _stratified_subset(dataset: Any, size: int, seed: int) -> Any:
    """``size`` items of ``dataset``, class-balanced, deterministic per seed (all if it is smaller)."""
    from nasforge.data import split_train_valid

    if size >= len(dataset):
        return dataset
    keep, _ = split_train_valid(dataset, 1.0 - size / len(dataset), seed=seed)
    return keep


# ---- train one architecture and export it -----------------------------------------------------


def train_and_export(
    space: SearchSpace, arch: Arch, data: Any, *, recipe_name: str, overrides: dict[str, Any],
    build_kwargs: dict[str, Any], seed: int, device: str, out: Path, progress: bool,
    log: Callable[[str], None] = print, onnx: bool = True, tensorboard: bool = False,
) -> dict[str, Any]:
    """Train ``arch`` from scratch on ``data.train``, test on ``data.test``, export to ``out/model``.

    Checkpoints go to ``out/final``; rerunning after an interruption resumes the training. With
    ``tensorboard``, per-epoch loss, accuracy and learning rate go to ``out/tensorboard/final``.
    """
    import torch

    from nasforge.export import export_onnx, save_model
    from nasforge.hardware.cost import measure
    from nasforge.train.recipes import get_recipe
    from nasforge.train.scalars import tensorboard_logger
    from nasforge.train.trainer import train

    recipe = get_recipe(recipe_name, **overrides)
    torch.manual_seed(seed)
    kwargs = {"num_classes": data.num_classes, "in_channels": data.input_shape()[0], **build_kwargs}
    net = space.build(arch, **kwargs)
    cost = measure(net, data.input_shape())
    log(f"training {space.format(arch)} for {recipe.epochs} epoch(s) ({recipe_name} recipe)")
    scalars = tensorboard_logger(out / "tensorboard" / "final", tensorboard)
    try:
        result = train(
            net, data.train, recipe, eval_set=data.test, checkpoint_dir=out / "final",
            meta={"arch": space.format(arch), "space": space.name}, seed=seed, device=device, progress=progress,
            on_epoch=scalars,
        )
    finally:
        if scalars is not None:
            scalars.close()
    model_dir = save_model(net, out / "model", space=space, arch=arch, build_kwargs=kwargs)
    onnx_path = None
    if onnx:
        onnx_path = export_onnx(net, model_dir / "model.onnx", data.input_shape())
    last = result.history[-1]
    return {
        "arch": space.format(arch),
        "test_acc": float(last["eval_acc"]),
        "test_loss": float(last["eval_loss"]),
        "train_acc": float(last["train_acc"]),
        "epochs": recipe.epochs,
        "recipe": recipe.to_dict(),
        **cost.as_dict(),
        "model_dir": str(model_dir),
        "onnx": str(onnx_path) if onnx_path else None,
        "history": result.history,
    }


# ---- train (the `train` command) -------------------------------------------------------------


@dataclass
class TrainConfig:
    """Train one architecture from scratch. Field comments are the ``--help`` texts."""

    arch: str = ""  # architecture text in the space's format
    space: str = "nb201"
    space_kwargs: dict[str, Any] = field(default_factory=dict)
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    data_root: str | None = None
    image_size: int | None = None
    recipe: str = "quick"
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    out: str = "runs/train"
    device: str = "cpu"
    onnx: bool = True
    tensorboard: bool = False  # write TensorBoard scalars of the training (loss, accuracy, lr) to OUT/tensorboard

    RESUMABLE = ("out", "device", "onnx", "tensorboard")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**_known_fields(cls, d, "train"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_train(cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg.arch`` on ``cfg.data`` and export it to ``cfg.out/model``; resumable."""
    from nasforge import get_space
    from nasforge.train.recipes import get_recipe

    require_choice("space", cfg.space, registry.names("space"))
    if not cfg.arch:
        raise ConfigError("train needs --arch (an architecture string of the space)")
    space: SearchSpace = get_space(cfg.space, **cfg.space_kwargs)
    arch = space.parse(cfg.arch)
    get_recipe(cfg.recipe, **cfg.recipe_overrides)  # validate before touching the run directory
    if cfg.tensorboard:
        from nasforge.train.scalars import require_tensorboard

        require_tensorboard()
    out = Path(cfg.out)
    prepare_run_dir(out, {**cfg.to_dict(), "arch": space.format(arch)}, TrainConfig.RESUMABLE)
    data = load_data_for(cfg.data, cfg.data_root, cfg.image_size)
    final = train_and_export(
        space, arch, data, recipe_name=cfg.recipe, overrides=cfg.recipe_overrides, build_kwargs=cfg.build_kwargs,
        seed=cfg.seed, device=cfg.device, out=out, progress=progress, log=log, onnx=cfg.onnx,
        tensorboard=cfg.tensorboard,
    )
    _write_json(out / "results.json", {"kind": "train", "config": cfg.to_dict(), "final": final})
    return final


def load_data_for(name: str, root: str | None, image_size: int | None) -> Any:
    from nasforge.data import load_data

    return load_data(name, root, image_size=image_size)
