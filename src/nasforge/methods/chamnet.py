"""ChamNet: a GP accuracy predictor, a latency table and an energy model driving constrained evolution.

Dai, Zhang, Wu, Yin, Sun, Wang, Wu, Tian, Vajda, Jia & Keutzer, "ChamNet: Towards Efficient
Network Design through Platform-Aware Model Adaptation", CVPR 2019 (arXiv:1812.08934). No
official code was released; this file is written from the paper. ChamNet's "Chameleon"
adapts a network family to a platform with three predictors built once (an accuracy predictor:
a Gaussian process fitted on trained architectures that are chosen by Bayesian-optimisation
style iterative sampling; an operator latency look-up table; a GP energy predictor fitted on
measured energies) and a genetic algorithm that maximises the predicted accuracy subject to
latency and energy constraints.

Algorithm (as implemented):

1. **supernet** (replaces ChamNet's training of every sampled architecture): a weight-sharing
   supernet of the ``mobilenet`` space, trained with uniform single-path sampling: for every
   batch an architecture is drawn uniformly (:class:`~nasforge.policies.UniformPolicy`) and one
   SGD step is taken along its path (:func:`~nasforge.train.bilevel.weight_step_pieces`: only
   the sampled candidates get gradients). Cross-entropy with label smoothing, SGD with momentum
   and weight decay, cosine learning rate per epoch (:func:`~nasforge.train.oneshot.sgd_cosine`);
2. **predictor sample** (ChamNet's iterative sampling): ``predictor_init`` distinct uniform
   architectures are scored, then rounds of ``predictor_batch`` until ``predictor_samples`` are
   scored: each round fits the accuracy GP to every architecture scored so far, draws a pool of
   ``candidate_pool`` distinct uniform architectures never scored, and scores the
   ``predictor_batch`` of largest acquisition (``"ei"``: expected improvement over the best
   score, the Bayesian-optimisation criterion; ``"std"``: largest posterior standard
   deviation; ``"random"``: the first of the pool, i.e. plain uniform sampling for comparison).
   A *score* is the top-1 validation accuracy (%) of the architecture's path with inherited
   supernet weights after BN recalibration
   (:class:`~nasforge.evaluators.supernet.SupernetEvaluator`);
3. **accuracy predictor**: a GP (:func:`nasforge.searchers._surrogates.fit_gp`: ``Constant *
   Matern(nu=2.5) + White`` on normalised targets, hyper-parameters by maximum marginal
   likelihood) from the one-hot encoding to the score, fitted on exactly the predictor sample.
   Its quality is measured on ``holdout_samples`` further uniform architectures, scored the same
   way and never fitted on: Spearman's rho between predicted and scored accuracy
   (``info["predictor_spearman_rho"]``);
4. **resources**: latency in ms from a latency lookup table of this machine
   (``latency_table``, :meth:`nasforge.hardware.lut.LatencyTable.predict`; required); energy
   in mJ from the analytic Horowitz model as a per-block table
   (:class:`nasforge.hardware.energy.EnergyTable`), or from ChamNet's GP energy predictor when
   ``energy_measurements`` names a JSON file of measured energies
   (:func:`nasforge.hardware.energy.fit_energy_predictor`);
5. **constrained evolution**: the genetic algorithm of
   :func:`nasforge.searchers._genetic.genetic_search` on (feasible, predicted accuracy), an
   architecture being feasible when its latency is ``<= latency_limit`` and its energy
   ``<= energy_limit`` (hard limits; ``None``: no limit). The initial population holds the best
   scored architectures (up to half of ``population_size``), the fastest architecture of the
   latency table and the least-energy one (so that a tight limit that only they meet is found),
   topped up with uniform samples;
6. **result**: the feasible architecture of highest predicted accuracy among all the GA scored,
   re-scored with the supernet; ``info`` carries its predicted accuracy (GP mean and std), its
   scored accuracy, its table latency and its energy. If no architecture the GA saw meets the
   limits, a :class:`~nasforge.errors.BudgetError` gives the predicted latency and energy of the
   fastest and of the least-energy architecture.

The search is resumable: at every training checkpoint, after the choice of each sampling round
and after each round is scored (``run.scalars["chamnet"]``); the GA and the GP fits are
deterministic functions of the scored sample and the seed and are recomputed on resume.

Defaults and their sources are on the :class:`ChamnetConfig` fields. The paper's values for the
predictor sample size, the acquisition, and the GA settings are "not checked" (the paper's text
was not available here); the supernet's optimisation follows SPOS (Guo et al., ECCV 2020), the
uniform single-path scheme this implementation borrows.

Deviations from the paper (stated explicitly):

* **weight sharing**: ChamNet trains every architecture of its predictor sample; here they are
  scored with inherited supernet weights after BN recalibration (cheap, but a noisier proxy of
  stand-alone accuracy);
* **encoding**: one-hot over the ``mobilenet`` space's per-layer block choices, not ChamNet's
  vector of numeric block hyper-parameters (channels, expansions, repeats, resolution);
* **candidate pool**: each sampling round maximises the acquisition over a uniform pool of
  ``candidate_pool`` unscored architectures rather than over the whole space;
* **energy**: without a power meter the default energy is the analytic Horowitz 45 nm model
  (:mod:`nasforge.hardware.energy`), not a GP on measured energies; the GP is used when
  measurements are given;
* **schedule**: cosine per epoch (a shared piece), not SPOS's linear per-step decay; weight
  decay applies to every parameter;
* the final architecture is not trained by the search (the run's final training does that).
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.nn.functional as F

from nasforge.arch import Arch
from nasforge.errors import BudgetError, ConfigError, check_float, check_int, check_probability
from nasforge.evaluators.supernet import SupernetEvaluator
from nasforge.policies import UniformPolicy
from nasforge.registry import register
from nasforge.searchers._genetic import genetic_search
from nasforge.searchers._surrogates import expected_improvement, fit_gp, single_threaded_blas
from nasforge.spaces.base import SearchSpace
from nasforge.train.bilevel import weight_step_pieces
from nasforge.train.oneshot import (
    OneShotContext,
    OneShotMethod,
    OneShotResult,
    accuracy,
    check_sgd,
    require,
    require_positive_int,
    sgd_cosine,
)
from nasforge.train.sampled import selected_result

if TYPE_CHECKING:
    from nasforge.hardware.energy import EnergyPredictor, EnergyTable
    from nasforge.hardware.lut import LatencyTable

#: Acquisitions of the sampling rounds (module docstring, step 2).
ACQUISITIONS: tuple[str, ...] = ("ei", "std", "random")
#: Uniform draws per wanted architecture before a sample is accepted short (tiny spaces).
DRAWS_PER_SAMPLE = 20


@dataclass(frozen=True)
class ChamnetConfig:
    """ChamNet hyper-parameters; each field names its source."""

    # (1) the supernet: SPOS's uniform single-path training (ChamNet trains each sampled network instead)
    epochs: int = 120  # supernet training epochs (SPOS reference: 150,000 iterations x 1,024 images ~ 120 ImageNet epochs)
    batch_size: int = 1024  # training batch (SPOS reference)
    lr: float = 0.5  # initial SGD learning rate (SPOS reference)
    lr_min: float = 0.0  # floor of the cosine schedule (SPOS decays to 0)
    momentum: float = 0.9  # SGD momentum (SPOS reference)
    weight_decay: float = 4e-5  # weight decay (SPOS reference; here on every parameter)
    grad_clip: float | None = None  # max gradient norm (SPOS: none)
    label_smoothing: float = 0.1  # cross-entropy label smoothing (SPOS reference)
    # (2) scoring with inherited weights
    bn_recal_images: int = 20000  # training images for BN recalibration per architecture (SPOS: 20,000); 0: none
    eval_batch_size: int | None = None  # images per recalibration / scoring batch; None: batch_size
    eval_batches: int | None = None  # validation batches each architecture is scored on; None: the whole split
    # (2)-(3) the accuracy predictor and its sample
    predictor_samples: int = 300  # architectures the accuracy GP is fitted on (not checked)
    predictor_init: int = 100  # uniform architectures before the first acquisition round (not checked)
    predictor_batch: int = 20  # architectures added per sampling round (not checked)
    candidate_pool: int = 1000  # uniform unscored architectures ranked by the acquisition per round (not in the paper: our simplification)
    acquisition: str = "ei"  # "ei", "std" or "random" (paper: Bayesian-optimisation sampling; the acquisition is not checked)
    holdout_samples: int = 50  # uniform architectures scored only to measure the predictor (not in the paper); 0: none
    # (4) resources
    latency_table: str | None = None  # latency lookup table of this machine (`nasforge hardware build-lut`); required
    latency_limit: float | None = None  # hard limit on the table latency in ms (paper: e.g. 20 ms on a phone CPU); None: none
    energy_limit: float | None = None  # hard limit on the energy in mJ; None: none
    energy_measurements: str | None = None  # JSON {architecture text: measured mJ} for ChamNet's GP energy predictor; None: analytic Horowitz model
    # (5) the genetic algorithm
    population_size: int = 100  # GA population (not checked)
    generations: int = 20  # GA generations (not checked)
    parent_fraction: float = 0.25  # share of the population kept as parents (not checked)
    crossover_prob: float = 0.5  # probability that a child is a crossover, else a mutant (not checked)

    def __post_init__(self) -> None:
        check_sgd(self)
        require(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        check_int("bn_recal_images", self.bn_recal_images, low=0)
        for name in ("eval_batch_size", "eval_batches"):
            if getattr(self, name) is not None:
                require_positive_int(name, getattr(self, name))
        check_int("predictor_samples", self.predictor_samples, low=2)
        check_int("predictor_init", self.predictor_init, low=2)
        require(self.predictor_init <= self.predictor_samples,
                f"predictor_init ({self.predictor_init}) must be <= predictor_samples ({self.predictor_samples})")
        check_int("predictor_batch", self.predictor_batch)
        check_int("candidate_pool", self.candidate_pool)
        require(self.acquisition in ACQUISITIONS,
                f"acquisition must be one of {', '.join(ACQUISITIONS)}, got {self.acquisition!r}")
        check_int("holdout_samples", self.holdout_samples, low=0)
        for name in ("latency_limit", "energy_limit"):
            if getattr(self, name) is not None:
                check_float(name, getattr(self, name), low=0.0, low_open=True)
        check_int("population_size", self.population_size, low=2)
        check_int("generations", self.generations, low=0)
        check_probability("parent_fraction", self.parent_fraction, low_open=True)
        check_probability("crossover_prob", self.crossover_prob)


# ---- predictors ------------------------------------------------------------------------------------


def load_latency_table(ctx: OneShotContext, cfg: ChamnetConfig) -> LatencyTable:
    """The run's latency table, checked against the space and input; a ``ConfigError`` says how to build one."""
    from nasforge.hardware.lut import load_lut

    if cfg.latency_table is None:
        opts = " ".join(f"--space-opt {k}={v!r}".replace("'", "") for k, v in ctx.space.config().items())
        raise ConfigError(
            "chamnet needs a latency lookup table (ChamNet's latency predictor): build one for this space and "
            f"input with `nasforge hardware build-lut --space {ctx.space.name} {opts} --input-size "
            f"{ctx.input_shape[-1]} --out lut.json` and pass --method-opt latency_table=lut.json"
        )
    return load_lut(cfg.latency_table, space=ctx.space, input_shape=ctx.input_shape, num_classes=ctx.num_classes)


def load_energy_model(ctx: OneShotContext, cfg: ChamnetConfig) -> EnergyTable | EnergyPredictor:
    """The analytic energy table, or the GP energy predictor fitted on ``cfg.energy_measurements``."""
    from nasforge.hardware.energy import EnergyTable, fit_energy_predictor, load_measured_energies

    if cfg.energy_measurements is None:
        return EnergyTable.build(ctx.space, ctx.input_shape, ctx.num_classes)
    return fit_energy_predictor(ctx.space, load_measured_energies(cfg.energy_measurements), seed=ctx.seed)


def fastest_architecture(space: SearchSpace, table: LatencyTable) -> Arch:
    """Per layer the option of least table latency (first on ties): the table's fastest architecture."""
    return space.make({layer: min(options, key=lambda o: table.block_ms(layer, o))
                       for layer, options in space.decisions().items()})


class AccuracyPredictor:
    """The accuracy GP fitted on ``scored`` (architecture text -> %), in the given order."""

    def __init__(self, space: SearchSpace, scored: Mapping[str, float], seed: int) -> None:
        self.space = space
        self.archs = [space.parse(t) for t in scored]
        self.targets = np.asarray(list(scored.values()), dtype=np.float64)
        with single_threaded_blas():
            self.gp = fit_gp(self.encode(self.archs), self.targets, random_state=seed)

    def encode(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.asarray([self.space.encode_onehot(a) for a in archs], dtype=np.float64)

    def predict(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the accuracy (%) of ``archs``."""
        with single_threaded_blas():
            mean, std = self.gp.predict(self.encode(archs), return_std=True)
        return np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)


def spearman_rho(predicted: Sequence[float], actual: Sequence[float]) -> float | None:
    """Spearman's rank correlation, or None when it is undefined (fewer than 3 points, a constant side)."""
    from scipy.stats import spearmanr

    if len(actual) < 3 or len(set(actual)) < 2 or len(set(predicted)) < 2:
        return None
    rho = float(spearmanr(predicted, actual)[0])
    return rho if math.isfinite(rho) else None


# ---- step 2: the predictor sample ------------------------------------------------------------------


class PredictorSampling:
    """Step 2 of the module docstring; its whole state is :attr:`state` (JSON values).

    ``state``: ``round`` (next to run), ``batch`` (texts chosen for that round, or None),
    ``scored`` (text -> accuracy %, in scoring order), ``rounds`` (text -> round it was chosen
    in), ``holdout`` (text -> accuracy, or None before it is drawn), ``done``.
    """

    def __init__(self, space: SearchSpace, cfg: ChamnetConfig, seed: int, state: dict[str, Any] | None = None) -> None:
        self.space, self.cfg, self.seed = space, cfg, seed
        self.state = state if state is not None else {
            "round": 0, "batch": None, "scored": {}, "rounds": {}, "holdout": None, "done": False,
        }

    def rng(self, what: str) -> random.Random:
        """A generator for one phase, seeded by (seed, phase, round): a resume redraws the same."""
        return random.Random(f"chamnet:{self.seed}:{what}:{self.state['round']}")

    def gp_seed(self) -> int:
        return self.rng("gp").getrandbits(31)

    def uniform_unseen(self, n: int, rng: random.Random, seen: Mapping[str, Any] | set[str]) -> list[str]:
        """Up to ``n`` distinct uniform architectures (texts) not in ``seen`` (fewer if the space runs out)."""
        out: list[str] = []
        for _ in range(DRAWS_PER_SAMPLE * n):
            if len(out) >= n:
                break
            text = self.space.format(self.space.sample(rng))
            if text not in seen and text not in out:
                out.append(text)
        return out

    def choose(self) -> list[str]:
        """The texts to score in the current round (empty: the sample is complete or the space exhausted)."""
        state, cfg = self.state, self.cfg
        left = cfg.predictor_samples - len(state["scored"])
        if left <= 0:
            return []
        if state["round"] == 0:
            return self.uniform_unseen(min(cfg.predictor_init, left), self.rng("init"), state["scored"])
        pool = self.uniform_unseen(cfg.candidate_pool, self.rng("pool"), state["scored"])
        want = min(cfg.predictor_batch, left)
        if cfg.acquisition == "random" or not pool:
            return pool[:want]
        predictor = AccuracyPredictor(self.space, state["scored"], self.gp_seed())
        mean, std = predictor.predict([self.space.parse(t) for t in pool])
        gain = std if cfg.acquisition == "std" else expected_improvement(mean, std, max(state["scored"].values()))
        order = sorted(range(len(pool)), key=lambda i: -float(gain[i]))  # stable: ties keep pool order
        return [pool[i] for i in order[:want]]

    def run(self, score: Callable[[Arch], float], save: Callable[[], None], log: Callable[[str], None]) -> None:
        """The remaining rounds, then the hold-out sample; ``save`` after each choice and each round."""
        state = self.state
        while not state["done"]:
            if state["batch"] is None:
                state["batch"] = self.choose()
                if not state["batch"]:
                    state["done"] = True
                    break
                save()
            for text in state["batch"]:
                if text not in state["scored"]:
                    state["scored"][text] = score(self.space.parse(text))
                    state["rounds"][text] = state["round"]
            log(f"chamnet sampling round {state['round']}: {len(state['scored'])} of "
                f"{self.cfg.predictor_samples} scored, best {max(state['scored'].values()):.2f}%")
            state["round"] += 1
            state["batch"] = None
            save()
        if len(state["scored"]) < 2:
            raise BudgetError(f"chamnet: the space {self.space.name} gave only {len(state['scored'])} distinct "
                              "architectures to fit the accuracy predictor on (it needs 2)")
        if state["holdout"] is None:
            texts = self.uniform_unseen(self.cfg.holdout_samples, random.Random(f"chamnet:{self.seed}:holdout"),
                                        state["scored"])
            state["holdout"] = {t: score(self.space.parse(t)) for t in texts}
            save()


# ---- step 5: constrained evolution -----------------------------------------------------------------


class Resources:
    """Table latency (ms) and energy (mJ) of architectures, and the hard limits on them."""

    def __init__(self, latency: LatencyTable, energy: EnergyTable | EnergyPredictor, cfg: ChamnetConfig) -> None:
        self.latency, self.energy = latency, energy
        self.latency_limit, self.energy_limit = cfg.latency_limit, cfg.energy_limit

    def measure(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        lat = np.asarray([self.latency.predict(a) for a in archs], dtype=np.float64)
        return lat, np.asarray(self.energy.predict_many(archs), dtype=np.float64)

    def feasible(self, lat: np.ndarray, energy: np.ndarray) -> np.ndarray:
        ok = np.ones(len(lat), dtype=bool)
        if self.latency_limit is not None:
            ok &= lat <= self.latency_limit
        if self.energy_limit is not None:
            ok &= energy <= self.energy_limit
        return ok

    def limits_text(self) -> str:
        parts = ([f"latency_ms <= {self.latency_limit:g}"] if self.latency_limit is not None else []) + (
            [f"energy_mj <= {self.energy_limit:g}"] if self.energy_limit is not None else [])
        return " and ".join(parts) or "no limits"


def no_feasible_error(space: SearchSpace, resources: Resources, fastest: Arch, least: Arch, searched: int) -> BudgetError:
    (lat_f, lat_l), (en_f, en_l) = resources.measure([fastest, least])
    return BudgetError(
        f"chamnet: none of the {searched} architectures the genetic algorithm scored meets {resources.limits_text()}; "
        f"the fastest architecture {space.format(fastest)} is predicted at {lat_f:.4g} ms and {en_f:.4g} mJ, the "
        f"least-energy one {space.format(least)} at {lat_l:.4g} ms and {en_l:.4g} mJ; relax a limit"
    )


def least_energy_architecture(space: SearchSpace, energy: EnergyTable | EnergyPredictor, seen: Sequence[Arch]) -> Arch:
    """The analytic table's least-energy architecture (exact), or the least predicted among ``seen`` (GP)."""
    from nasforge.hardware.energy import EnergyTable

    if isinstance(energy, EnergyTable):
        return energy.least_energy()[0]
    values = energy.predict_many(list(seen))
    return seen[int(np.argmin(values))]


def search(ctx: OneShotContext, cfg: ChamnetConfig) -> OneShotResult:
    table = load_latency_table(ctx, cfg)  # before anything is built: a missing or mismatched table fails first
    energy = load_energy_model(ctx, cfg)
    space = ctx.space
    supernet = ctx.supernet()
    policy = UniformPolicy(space, supernet, seed=ctx.seed)
    w_opt, scheduler = sgd_cosine(supernet, cfg)
    run = ctx.open_run("chamnet", cfg, supernet=supernet, policy=policy, w_opt=w_opt, scheduler=scheduler)
    loss_fn = functools.partial(F.cross_entropy, label_smoothing=cfg.label_smoothing)

    # 1. the supernet: one uniformly drawn single path per step
    supernet.train()
    for epoch in run.epochs(cfg.epochs):
        lr = float(scheduler.get_last_lr()[0])
        for b, train in run.train_batches(cfg.batch_size):
            loss, logits = weight_step_pieces(supernet, [(policy(), train)], w_opt, loss_fn=loss_fn,
                                              grad_clip=cfg.grad_clip, where=f"epoch {epoch} batch {b} weight")
            run.step_done(train_loss=loss, train_acc=accuracy(logits, train[1]))
        scheduler.step()
        run.epoch_done(lr=lr)

    # 2. the predictor sample, scored with inherited weights after BN recalibration
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    calibration = ctx.fixed_train_batches(math.ceil(cfg.bn_recal_images / eval_bs), eval_bs) if cfg.bn_recal_images else []
    n_valid = cfg.eval_batches or math.ceil(len(ctx.valid_set) / eval_bs)  # type: ignore[arg-type]
    evaluator = SupernetEvaluator(supernet, calibration=calibration, batches=ctx.fixed_valid_batches(n_valid, eval_bs))
    sampling = PredictorSampling(space, cfg, ctx.seed, run.scalars.get("chamnet"))
    run.scalars["chamnet"] = sampling.state
    sampling.run(evaluator.accuracy, run.save, ctx.log)
    scored: dict[str, float] = sampling.state["scored"]
    holdout: dict[str, float] = sampling.state["holdout"]

    # 3. the accuracy GP on exactly the predictor sample; its quality on the hold-out sample
    predictor = AccuracyPredictor(space, scored, random.Random(f"chamnet:{ctx.seed}:final-gp").getrandbits(31))
    held_pred = predictor.predict([space.parse(t) for t in holdout])[0] if holdout else np.zeros(0)
    rho = spearman_rho([float(v) for v in held_pred], list(holdout.values()))

    # 4.-5. resources and the constrained genetic algorithm
    resources = Resources(table, energy, cfg)
    fastest = fastest_architecture(space, table)
    sample_archs = predictor.archs
    least = least_energy_architecture(space, energy, sample_archs + [fastest])

    def score(archs: list[Arch]) -> tuple[np.ndarray, np.ndarray]:
        mean, _ = predictor.predict(archs)
        return resources.feasible(*resources.measure(archs)), mean

    best_scored = [space.parse(t) for t in sorted(scored, key=lambda t: -scored[t])][: cfg.population_size // 2]
    ranked, ga_scored = genetic_search(
        space, score, random.Random(f"chamnet:{ctx.seed}:ga"), seeds=best_scored + [fastest, least],
        population_size=cfg.population_size, generations=cfg.generations, parent_fraction=cfg.parent_fraction,
        crossover_prob=cfg.crossover_prob,
    )
    feasible = [a for a in ranked if ga_scored[a][0]]
    if not feasible:
        raise no_feasible_error(space, resources, fastest, least, len(ga_scored))

    # 6. the best feasible architecture, re-scored with the supernet
    best = feasible[0]
    mean, std = predictor.predict([best])
    (lat,), (en,) = resources.measure([best])
    top = feasible[:5]
    top_lat, top_en = resources.measure(top)
    record = {"arch": space.format(best), "predicted_val_acc": float(mean[0]), "predicted_val_acc_std": float(std[0]),
              "val_acc": evaluator.accuracy(best), "latency_ms": float(lat), "energy_mj": float(en)}
    ctx.log(f"chamnet: {record['arch']} predicted {record['predicted_val_acc']:.2f}%, scored {record['val_acc']:.2f}%, "
            f"{record['latency_ms']:.4g} ms, {record['energy_mj']:.4g} mJ (predictor rho {rho})")
    return selected_result(
        ctx, run, supernet, best, valid_accuracy=record["val_acc"], best=record,
        latency_limit_ms=cfg.latency_limit, energy_limit_mj=cfg.energy_limit,
        latency_table=cfg.latency_table,
        energy_model="gp (measured)" if cfg.energy_measurements else "analytic (Horowitz 45 nm)",
        predictor_spearman_rho=rho, predictor_rounds=sampling.state["round"],
        predictor_sample=[{"arch": t, "val_acc": v, "round": sampling.state["rounds"][t]} for t, v in scored.items()],
        holdout=[{"arch": t, "val_acc": v, "predicted_val_acc": float(p)} for (t, v), p in zip(holdout.items(), held_pred)],
        ga={"scored": len(ga_scored), "feasible": len(feasible), "population_size": cfg.population_size,
            "generations": cfg.generations},
        top=[{"arch": space.format(a), "predicted_val_acc": ga_scored[a][1], "latency_ms": float(t), "energy_mj": float(e)}
             for a, t, e in zip(top, top_lat, top_en)],
        fastest={"arch": space.format(fastest), "latency_ms": table.predict(fastest)},
        bn_recal_images=evaluator.calibration_images,
    )


chamnet = register("method", "chamnet")(OneShotMethod(
    name="chamnet",
    paper="Dai et al., 'ChamNet: Towards Efficient Network Design through Platform-Aware Model Adaptation', CVPR 2019",
    config_cls=ChamnetConfig,
    search=search,
    spaces=("mobilenet",),
))
