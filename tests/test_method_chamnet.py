"""ChamNet (Dai et al. 2019): predictor sample scored in a supernet, accuracy GP, latency table, energy, constrained GA."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import nasforge
from _oneshot import killed_after, quick_table, synthetic_table
from nasforge import registry
from nasforge.cli import main
from nasforge.errors import BudgetError, ConfigError
from nasforge.evaluators.supernet import SupernetEvaluator
from nasforge.hardware.energy import EnergyTable, fit_energy_predictor
from nasforge.hardware.lut import load_lut
from nasforge.methods import chamnet as mod
from nasforge.methods.chamnet import AccuracyPredictor, ChamnetConfig, PredictorSampling, chamnet
from nasforge.searchers._surrogates import expected_improvement
from nasforge.train.oneshot import OneShotContext

#: a small CIFAR-preset MobileNet space: 8..80 channels, every layer k3 or k5 at expansion 1 (no skip)
SPACE: dict[str, Any] = {"preset": "cifar", "width_mult": 0.25, "kernels": [3, 5], "expansions": [1],
                         "allow_skip": False}
SHAPE = (1, 8, 8)  # the built-in digits
FAST: dict[str, Any] = {
    "epochs": 1, "batch_size": 16, "lr": 0.05, "bn_recal_images": 32, "eval_batches": 1, "predictor_samples": 8,
    "predictor_init": 4, "predictor_batch": 2, "candidate_pool": 20, "holdout_samples": 4, "population_size": 12,
    "generations": 3,
}


def space() -> Any:
    return nasforge.get_space("mobilenet", **SPACE)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Any:
    """One intra-op thread for the module: these tiny networks run several times faster on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (measured) table of the space on this machine, built fast."""
    return quick_table(space(), SHAPE, tmp_path_factory.mktemp("lut") / "lut.json")


@pytest.fixture(scope="module")
def synthetic_path(table_path: Path) -> Path:
    """The table with k3 blocks at 0.2 ms, k5 at 0.5 ms and a 0.3 ms constant: all-k3 is the unique fastest."""
    return synthetic_table(table_path, "synthetic.json", {"ir_k3_e1": 0.2, "ir_k5_e1": 0.5}, 0.3)


def make_ctx(splits: tuple[Any, Any], **kwargs: Any) -> OneShotContext:
    train, valid = splits
    kwargs.setdefault("max_batches_per_epoch", 2)
    return OneShotContext(space=space(), train_set=train, valid_set=valid, num_classes=10, input_shape=SHAPE,
                          log=lambda _: None, **kwargs)


def fast(table: Path, **overrides: Any) -> dict[str, Any]:
    return {**FAST, "latency_table": str(table), **overrides}


def test_registered_with_defaults_and_typed_errors() -> None:
    assert registry.get("method", "chamnet") is chamnet and chamnet.spaces == ("mobilenet",)
    cfg = ChamnetConfig()
    assert (cfg.latency_table, cfg.latency_limit, cfg.energy_limit, cfg.acquisition) == (None, None, None, "ei")
    assert cfg.bn_recal_images == 20000 and cfg.predictor_init <= cfg.predictor_samples
    with pytest.raises(ConfigError, match="ei, std, random"):
        ChamnetConfig(acquisition="greedy")
    with pytest.raises(ConfigError, match=r"predictor_init \(9\) must be <= predictor_samples \(8\)"):
        ChamnetConfig(predictor_samples=8, predictor_init=9)
    with pytest.raises(ConfigError, match="latency_limit"):
        ChamnetConfig(latency_limit=-1.0)


def test_without_a_table_is_refused(splits: tuple[Any, Any]) -> None:
    with pytest.raises(ConfigError, match="build-lut"):
        chamnet(make_ctx(splits), **FAST)


def test_the_gp_is_fitted_on_exactly_the_scored_sample(
    splits: tuple[Any, Any], table_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fits: list[tuple[np.ndarray, np.ndarray]] = []
    scored: list[tuple[Any, float]] = []
    original_fit, original_acc = mod.fit_gp, SupernetEvaluator.accuracy

    def fit_spy(x: np.ndarray, y: np.ndarray, **kwargs: Any) -> Any:
        fits.append((np.array(x), np.array(y)))
        return original_fit(x, y, **kwargs)

    def acc_spy(self: Any, arch: Any) -> float:
        scored.append((arch, original_acc(self, arch)))
        return scored[-1][1]

    monkeypatch.setattr(mod, "fit_gp", fit_spy)
    monkeypatch.setattr(SupernetEvaluator, "accuracy", acc_spy)
    res = chamnet(make_ctx(splits), **fast(table_path))
    sp = space()
    sample, holdout = res.info["predictor_sample"], res.info["holdout"]
    assert len(sample) == 8 and len(holdout) == 4 and len(scored) == 8 + 4 + 1  # + the result's re-score
    assert [sp.format(a) for a, _ in scored[:8]] == [r["arch"] for r in sample]
    assert [v for _, v in scored[:8]] == [r["val_acc"] for r in sample]
    assert [sp.format(a) for a, _ in scored[8:12]] == [r["arch"] for r in holdout]
    assert not {r["arch"] for r in sample} & {r["arch"] for r in holdout}  # held out: never fitted on
    assert len({r["arch"] for r in sample}) == 8
    # rounds: 4 uniform, then two rounds of 2, each chosen by a GP fitted on everything scored before it
    assert [r["round"] for r in sample] == [0, 0, 0, 0, 1, 1, 2, 2] and res.info["predictor_rounds"] == 3
    assert [len(y) for _, y in fits] == [4, 6, 8]
    for n, (x, _) in zip((4, 6), fits[:2]):
        assert np.array_equal(x, np.asarray([sp.encode_onehot(a) for a, _ in scored[:n]]))
    final_x, final_y = fits[-1]  # the predictor of the GA: exactly the scored sample, in order
    assert np.array_equal(final_x, np.asarray([sp.encode_onehot(sp.parse(r["arch"])) for r in sample]))
    assert np.array_equal(final_y, np.asarray([r["val_acc"] for r in sample]))
    rho = res.info["predictor_spearman_rho"]
    assert rho is None or -1.0 <= rho <= 1.0
    assert [r["predicted_val_acc"] for r in holdout] == pytest.approx(
        AccuracyPredictor(sp, {r["arch"]: r["val_acc"] for r in sample}, _final_seed(0)).predict(
            [sp.parse(r["arch"]) for r in holdout])[0].tolist())
    assert res.info["best"]["val_acc"] == scored[-1][1] and sp.format(scored[-1][0]) == res.info["best"]["arch"]


def _final_seed(seed: int) -> int:
    import random

    return random.Random(f"chamnet:{seed}:final-gp").getrandbits(31)


@pytest.mark.parametrize("acquisition", ["ei", "std"])
def test_a_sampling_round_takes_the_largest_acquisition_of_its_pool(acquisition: str) -> None:
    sp = space()
    cfg = ChamnetConfig(predictor_samples=12, predictor_init=6, predictor_batch=3, candidate_pool=25,
                        acquisition=acquisition)
    sampling = PredictorSampling(sp, cfg, seed=3)
    first = sampling.choose()
    assert len(first) == 6 and len(set(first)) == 6
    # a synthetic landscape: accuracy grows with the number of 5x5 blocks
    sampling.state["scored"] = {t: float(t.count("k5")) for t in first}
    sampling.state["round"] = 1
    chosen = sampling.choose()
    pool = sampling.uniform_unseen(cfg.candidate_pool, sampling.rng("pool"), sampling.state["scored"])
    assert set(chosen) <= set(pool) and len(chosen) == 3 and not set(chosen) & set(first)
    predictor = AccuracyPredictor(sp, sampling.state["scored"], sampling.gp_seed())
    mean, std = predictor.predict([sp.parse(t) for t in pool])
    gain = std if acquisition == "std" else expected_improvement(mean, std, max(sampling.state["scored"].values()))
    value = dict(zip(pool, gain))
    assert min(value[t] for t in chosen) >= max(value[t] for t in pool if t not in chosen)


def test_the_result_meets_both_limits_and_is_the_best_predicted_feasible(
    splits: tuple[Any, Any], table_path: Path,
) -> None:
    sp = space()
    table = load_lut(table_path)
    energy = EnergyTable.build(sp, SHAPE, num_classes=10)
    import random

    rng = random.Random(5)
    archs = [sp.sample(rng) for _ in range(40)]
    lat_limit = float(np.median([table.predict(a) for a in archs]))
    en_limit = float(np.median([energy.predict(a) for a in archs]))
    res = chamnet(make_ctx(splits), **fast(table_path, latency_limit=lat_limit, energy_limit=en_limit))
    best = res.info["best"]
    assert best["latency_ms"] == pytest.approx(table.predict(res.arch)) and best["latency_ms"] <= lat_limit
    assert best["energy_mj"] == pytest.approx(energy.predict(res.arch)) and best["energy_mj"] <= en_limit
    assert all(r["latency_ms"] <= lat_limit and r["energy_mj"] <= en_limit for r in res.info["top"])
    assert res.info["top"][0]["arch"] == best["arch"] == sp.format(res.arch)
    predicted = [r["predicted_val_acc"] for r in res.info["top"]]
    assert predicted == sorted(predicted, reverse=True) and best["predicted_val_acc"] == pytest.approx(predicted[0])
    assert res.info["ga"]["feasible"] < res.info["ga"]["scored"]  # the limits did exclude architectures


def test_a_limit_that_one_architecture_meets_finds_it(splits: tuple[Any, Any], synthetic_path: Path) -> None:
    sp = space()
    only = sp.make({d: "ir_k3_e1" for d in sp.decisions()})  # 21 x 0.2 + 0.3 = 4.5 ms; any other >= 4.8 ms
    table = load_lut(synthetic_path)
    assert table.predict(only) == pytest.approx(4.5)
    res = chamnet(make_ctx(splits), **fast(synthetic_path, latency_limit=4.6))
    assert res.arch == only and res.info["best"]["latency_ms"] == pytest.approx(4.5)
    assert res.info["ga"]["feasible"] == 1  # every other architecture the GA scored broke the limit
    free = chamnet(make_ctx(splits), **fast(synthetic_path))
    assert free.arch != only  # unconstrained, the predicted accuracy decides


def test_no_feasible_architecture_says_what_the_fastest_and_least_energy_predict(
    splits: tuple[Any, Any], synthetic_path: Path,
) -> None:
    sp = space()
    only = sp.make({d: "ir_k3_e1" for d in sp.decisions()})
    least_mj = EnergyTable.build(sp, SHAPE, num_classes=10).predict(only)  # all-3x3 is also the least energy
    with pytest.raises(BudgetError) as err:
        chamnet(make_ctx(splits), **fast(synthetic_path, latency_limit=4.0, energy_limit=1e-9))
    text = str(err.value)
    assert "latency_ms <= 4 and energy_mj <= 1e-09" in text
    assert f"fastest architecture {sp.format(only)} is predicted at 4.5 ms and {least_mj:.4g} mJ" in text
    assert f"least-energy one {sp.format(only)} at 4.5 ms" in text


def test_measured_energies_drive_the_gp_energy_predictor(
    splits: tuple[Any, Any], synthetic_path: Path, tmp_path: Path,
) -> None:
    import random

    sp = space()
    rng = random.Random(2)
    measured = {sp.format(a): 1.0 + 0.1 * sp.format(a).count("k5") for a in (sp.sample(rng) for _ in range(12))}
    path = tmp_path / "energy.json"
    path.write_text(json.dumps(measured))
    res = chamnet(make_ctx(splits), **fast(synthetic_path, energy_measurements=str(path), energy_limit=2.0))
    predictor = fit_energy_predictor(sp, measured, seed=0)
    assert res.info["energy_model"] == "gp (measured)"
    assert res.info["best"]["energy_mj"] == pytest.approx(predictor.predict(res.arch))
    assert res.info["best"]["energy_mj"] <= 2.0


def test_resume_after_kills_matches_an_uninterrupted_run(
    splits: tuple[Any, Any], table_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    opts = fast(table_path, epochs=2)
    ref = chamnet(make_ctx(splits, run_dir=tmp_path / "full", checkpoint_every=1), **opts)

    with killed_after(monkeypatch, 3):  # the first step of epoch 1
        chamnet(make_ctx(splits, run_dir=tmp_path / "cut", checkpoint_every=1), **opts)
    calls = {"n": 0}
    original = SupernetEvaluator.accuracy

    def die_in_the_second_round(self: Any, arch: Any) -> float:
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self, arch)

    monkeypatch.setattr(SupernetEvaluator, "accuracy", die_in_the_second_round)
    with pytest.raises(KeyboardInterrupt):
        chamnet(make_ctx(splits, run_dir=tmp_path / "cut", checkpoint_every=1), **opts)
    state = torch.load(tmp_path / "cut" / "search.pt", weights_only=True)["scalars"]["chamnet"]
    assert state["round"] == 1 and len(state["scored"]) == 4 and len(state["batch"]) == 2  # round 1 chosen, not scored
    monkeypatch.setattr(SupernetEvaluator, "accuracy", original)
    torch.manual_seed(123)  # the resumed run must not depend on the caller's RNG
    res = chamnet(make_ctx(splits, run_dir=tmp_path / "cut", checkpoint_every=1), **opts)
    assert res.arch == ref.arch and res.info == ref.info and res.strengths == ref.strengths
    drop = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert drop(res.history) == drop(ref.history)


def test_cli_end_to_end(table_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["search", "--method", "chamnet", "--space", "mobilenet"]
    for k, v in SPACE.items():
        argv += ["--space-opt", f"{k}={json.dumps(v)}"]
    argv += ["--data", "digits", "--epochs", "1", "--max-batches-per-epoch", "2", "--no-final-train",
             "--no-progress", "--out", str(out)]
    for k, v in fast(table_path, latency_limit=1000.0).items():
        if k != "epochs":
            argv += ["--method-opt", f"{k}={v}"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method_kind"] == "one-shot" and results["best"]["arch"] == results["info"]["best"]["arch"]
    assert space().parse(results["best"]["arch"])
    assert results["info"]["best"]["latency_ms"] <= 1000.0 and math.isfinite(results["info"]["best"]["energy_mj"])
    assert len(results["info"]["predictor_sample"]) == 8
    assert (out / "search" / "search.pt").exists()
