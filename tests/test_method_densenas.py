"""DenseNAS search (Fang et al. CVPR 2020): latency table and chained expected latency, budgeted
decoding, what each step updates, end-to-end CLI run and resume."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

import nasforge
from _oneshot import killed_after
from nasforge.cli import main
from nasforge.errors import BudgetError
from nasforge.hardware.dense_lut import (
    DenseLatencyTable,
    build_dense_lut,
    fixed_keys,
    load_dense_lut,
    make_header,
    op_keys,
)
from nasforge.hardware.latency import LatencySpec
from nasforge.hardware.lut import LatencyTable, LatencyTableMismatchError
from nasforge.methods import densenas as mod
from nasforge.methods.densenas import (
    DenseArchParams,
    DensenasConfig,
    budgeted_decode,
    densenas,
    fastest_ms,
    joint_log_prob,
)
from nasforge.spaces.densenas import DenseNasSpace
from nasforge.train.oneshot import OneShotContext

TINY: dict[str, Any] = {"preset": "cifar", "width_mult": 0.25, "blocks_per_stage": 2, "layers": 1,
                        "kernels": [3], "expansions": [3]}
SHAPE = (1, 8, 8)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def space(**kw: Any) -> DenseNasSpace:
    s: DenseNasSpace = nasforge.get_space("densenas", **{**TINY, **kw})
    return s


def synthetic_table(path: Path, sp: DenseNasSpace, seed: int = 0) -> Path:
    """A complete table of ``sp`` with random latencies (no measurement)."""
    rng = random.Random(seed)
    table = LatencyTable.new(make_header(sp, SHAPE, LatencySpec(warmup=1, repeats=2), 10), path)
    keys = [*fixed_keys(sp, SHAPE, 10).values(), *(k for o in op_keys(sp, SHAPE).values() for k in o.values())]
    for key in keys:
        ms = 0.01 if key.option == "skip" else rng.uniform(0.1, 1.0)
        table.doc["entries"][key.text] = {**key.as_dict(), **{f"{s}_ms": ms for s in ("median", "min", "p25", "p75", "max")}}
    table.doc["complete"] = True
    table.save()
    return path


def all_choices(sp: DenseNasSpace) -> list[tuple[list[int], dict[str, str]]]:
    """Every architecture of a tiny space as (block path, ops of its blocks): every path times
    every op choice of the blocks it visits (not validated, for speed)."""
    def walk(a: int) -> list[list[int]]:
        return [[a]] if a == sp.tail else [[a, *r] for c in sp.outgoing(a) for r in walk(c.target)]
    out = []
    for path in walk(0):
        names = [n for t in path[1:-1] for n in [f"b{t}_head", *(f"b{t}_l{j}" for j in range(sp.blocks[t].layers))]]
        options = [sp.head_ops if n.endswith("_head") else sp.stack_ops for n in names]
        out += [(path, dict(zip(names, combo))) for combo in itertools.product(*options)]
    return out


def brute_scores(sp: DenseNasSpace, table: DenseLatencyTable, archs: list[tuple[list[int], dict[str, str]]],
                 op_probs: dict[str, torch.Tensor], trans: dict[str, torch.Tensor]) -> list[tuple[float, float]]:
    """(table latency, joint log-probability) of each (path, ops), summed directly term by term."""
    lat_of = {k: dict(zip(opts, table.option_latencies(k))) for k, opts in table.keys.items()}
    lp_of = {k: dict(zip(table.keys[k], (math.log(float(p)) for p in v))) for k, v in op_probs.items()}
    step: dict[tuple[int, int], tuple[str, float]] = {}
    for a in range(sp.tail):
        for j, c in enumerate(sp.outgoing(a)):
            step[(a, c.target)] = (c.key, math.log(float(trans[sp.transition_key(a)][j])))
    out = []
    for path, ops in archs:
        lat, lp = table.constant_ms, 0.0
        for a, t in zip(path, path[1:]):
            key, lb = step[(a, t)]
            lp += lb
            if t == sp.tail:
                lat += lat_of[key]["conv1x1"]
                continue
            head = ops[f"b{t}_head"]
            lat += lat_of[key][head]
            lp += lp_of[key][head]
            for j in range(sp.blocks[t].layers):
                name = f"b{t}_l{j}"
                lat += lat_of[name][ops[name]]
                lp += lp_of[name][ops[name]]
        out.append((lat, lp))
    return out


def random_probs(sp: DenseNasSpace, seed: int, sharp: float = 1.0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    net = sp.supernet(num_classes=10, in_channels=1)
    ops = {k: torch.softmax(sharp * torch.randn(len(v), generator=gen, dtype=torch.float64), 0) for k, v in net.choices().items()}
    trans = {k: torch.softmax(sharp * torch.randn(len(v), generator=gen, dtype=torch.float64), 0)
             for k, v in net.transitions().items()}
    return ops, trans


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_table(tmp_path_factory.mktemp("dlut") / "lut.json", space())


def test_registered_with_reference_defaults() -> None:
    cfg = DensenasConfig()
    assert (cfg.epochs, cfg.warmup_epochs, cfg.lr, cfg.weight_decay) == (150, 50, 0.2, 4e-5)
    assert (cfg.arch_lr, cfg.beta_lr, cfg.arch_betas, cfg.arch_weight_decay) == (3e-4, 3e-4, (0.5, 0.999), 1e-3)
    assert (cfg.latency_factor, cfg.log_base) == (0.15, 15.0)
    assert densenas.spaces == ("densenas",)
    with pytest.raises(BudgetError, match="latency_budget"):
        DensenasConfig(latency_budget=-1.0)


def test_expected_latency_equals_the_enumeration_of_paths(table_path: Path) -> None:
    sp = space(kernels=[3, 5])
    table = load_dense_lut(synthetic_table(table_path.parent / "k35.json", sp, 1), sp, SHAPE)
    ops, trans = random_probs(sp, 0)

    def expect(key: str) -> float:
        return sum(float(p) * table.ms(key, o) for p, o in zip(ops[key], table.keys[key]))

    def walk(a: int) -> list[list[int]]:
        return [[a]] if a == sp.tail else [[a, *r] for c in sp.outgoing(a) for r in walk(c.target)]
    brute = 0.0
    for path in walk(0):
        prob, lat = 1.0, 0.0
        for a, t in zip(path, path[1:]):
            prob *= float(trans[sp.transition_key(a)][[c.target for c in sp.outgoing(a)].index(t)])
            key = sp.connection(a, t).key
            lat += table.ms(key, "conv1x1") if t == sp.tail else expect(key)
            lat += sum(expect(f"b{t}_l{j}") for j in range(sp.blocks[t].layers))
        brute += prob * lat
    dp = table.expected_latency(ops, trans)
    assert math.isclose(float(dp), brute + table.constant_ms, rel_tol=1e-9)
    # one-hot probabilities give the table's prediction of that architecture
    arch = sp.sample(random.Random(0))
    net = sp.supernet(num_classes=10, in_channels=1)
    path = net.path_for(arch)
    onehot = {k: torch.tensor([1.0 if o == path[k] else 0.0 for o in v], dtype=torch.float64)
              for k, v in [*net.choices().items(), *net.transitions().items()]}
    assert math.isclose(float(table.expected_latency(onehot, onehot)), table.predict(arch), rel_tol=1e-9)


def test_expected_latency_is_differentiable_in_ops_and_transitions(table_path: Path) -> None:
    sp = space()
    table = load_dense_lut(table_path, sp, SHAPE)
    ops, trans = random_probs(sp, 1)
    leaves = [t.requires_grad_() for t in [*ops.values(), *trans.values()]]
    table.expected_latency(ops, trans).backward()
    assert all(t.grad is not None for t in leaves)
    assert any(float(t.grad.abs().sum()) > 0 for t in ops.values()) and all(
        float(t.grad.abs().sum()) > 0 for t in trans.values() if t.numel() > 1)


def test_budgeted_decoding_is_the_most_probable_architecture_within_the_budget(table_path: Path) -> None:
    sp = space()
    table = load_dense_lut(table_path, sp, SHAPE)
    archs = all_choices(sp)
    assert len(archs) == sp.size() > 10_000  # the space's exact count agrees with the enumeration
    for seed in range(2):
        ops, trans = random_probs(sp, seed, sharp=2.0)
        scored = brute_scores(sp, table, archs, ops, trans)
        lats = sorted(lat for lat, _ in scored)
        assert math.isclose(lats[0], fastest_ms(sp, table))
        for q in (0.0, 0.05, 0.3, 1.0):
            budget = lats[int(q * (len(lats) - 1))] + 1e-9
            got = budgeted_decode(sp, table, ops, trans, budget)
            best = max(lp for lat, lp in scored if lat <= budget)
            assert table.predict(got) <= budget
            assert math.isclose(joint_log_prob(sp, got, ops, trans), best, rel_tol=1e-9)
    with pytest.raises(BudgetError, match=f"fastest decodable architecture is predicted at {lats[0]:.4g} ms"):
        budgeted_decode(sp, table, ops, trans, lats[0] * 0.99)


def test_measured_table_is_resumable_and_checked(splits: tuple[Any, Any], tmp_path: Path) -> None:
    sp = space(blocks_per_stage=1)  # a chain of blocks: few ops to measure
    out = tmp_path / mod.LUT_NAME
    partial = build_dense_lut(sp, SHAPE, LatencySpec(warmup=0, repeats=1), out, max_measurements=4)
    assert isinstance(partial, LatencyTable) and len(partial.doc["entries"]) == 4
    # without latency_table the method measures one into the run directory, continuing a partial file
    ctx = OneShotContext(space=sp, train_set=splits[0], valid_set=splits[1], num_classes=10, input_shape=SHAPE,
                         run_dir=tmp_path, log=lambda _: None)
    table = mod.latency_table(ctx, DensenasConfig(lut_warmup=0, lut_repeats=1))
    assert isinstance(table, DenseLatencyTable)
    arch = sp.sample(random.Random(0))
    visited = sp.visited(arch)
    expect = table.constant_ms + sum(
        table.head_ms(a, t, None if t == sp.tail else arch[f"b{t}_head"]) + (table.block_ms(arch, t) if t != sp.tail else 0)
        for a, t in zip(visited, visited[1:]))
    assert math.isclose(load_dense_lut(out, sp, SHAPE).predict(arch), expect)
    with pytest.raises(LatencyTableMismatchError, match="space_config.layers"):
        load_dense_lut(out, space(blocks_per_stage=1, layers=2), SHAPE)
    with pytest.raises(LatencyTableMismatchError, match="input_shape"):
        load_dense_lut(out, sp, (1, 16, 16))


def make_ctx(splits: tuple[Any, Any], **kwargs: Any) -> OneShotContext:
    train, valid = splits
    kwargs.setdefault("max_batches_per_epoch", 2)
    return OneShotContext(space=space(), train_set=train, valid_set=valid, num_classes=10, input_shape=SHAPE,
                          log=lambda _: None, **kwargs)


def fast(table: Path, **kw: Any) -> dict[str, Any]:
    return {"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "lr": 0.05, "arch_lr": 0.05, "beta_lr": 0.05,
            "latency_table": str(table), **kw}


def test_weight_steps_touch_only_weights_and_arch_steps_only_sampled_logits(
    splits: tuple[Any, Any], table_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {"weight": 0, "arch": 0, "rescaled": 0}

    def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in module.parameters()]

    real_w, real_a, real_rescale = mod.weight_step, mod.arch_step, DenseArchParams.rescale

    def weight_step(supernet: Any, path: Any, *a: Any, **k: Any) -> Any:
        arch = seen["arch_params"]
        before = snapshot(arch)
        out = real_w(supernet, path, *a, **k)
        assert all(torch.equal(x, y) for x, y in zip(before, snapshot(arch)))  # no architecture change
        assert all(isinstance(path[key], str) for key in supernet.choices())  # one sampled op per key
        seen["weight"] += 1
        return out

    def arch_step(supernet: Any, *a: Any, **k: Any) -> Any:
        before = snapshot(supernet)
        seen["probs"] = seen["arch_params"].op_probs()
        out = real_a(supernet, *a, **k)
        assert all(torch.equal(x, y) for x, y in zip(before, snapshot(supernet)))  # weights untouched
        seen["arch"] += 1
        return out

    def rescale(self: DenseArchParams, sample: dict[str, list[int]], old: dict[str, list[float]]) -> None:
        real_rescale(self, sample, old)
        after = self.op_probs()
        for key, idx in sample.items():
            assert len(idx) == min(2, len(self.ops.choices[key]))
            others = [i for i in range(len(self.ops.choices[key])) if i not in idx]
            # the unsampled ops keep their probabilities (reference rescale_arch_params; no weight decay here)
            assert torch.allclose(after[key][others], seen["probs"][key][others], atol=1e-6)
            assert math.isclose(float(after[key][idx].sum()), float(seen["probs"][key][idx].sum()), rel_tol=1e-5)
        seen["rescaled"] += 1

    real_init = DenseArchParams.__init__

    def init(self: DenseArchParams, *a: Any, **k: Any) -> None:
        real_init(self, *a, **k)
        seen["arch_params"] = self

    monkeypatch.setattr(mod, "weight_step", weight_step)
    monkeypatch.setattr(mod, "arch_step", arch_step)
    monkeypatch.setattr(DenseArchParams, "rescale", rescale)
    monkeypatch.setattr(DenseArchParams, "__init__", init)
    res = densenas(make_ctx(splits), **fast(table_path, arch_weight_decay=0.0))
    # epoch 0 is warm-up (weights only); epoch 1: 2 weight steps then 2 architecture steps
    assert (seen["weight"], seen["arch"], seen["rescaled"]) == (4, 2, 2)
    trans = {k: v for k, v in res.strengths.items() if k.endswith("_out")}
    assert all(math.isclose(sum(v), 1.0, rel_tol=1e-6) for v in trans.values())
    assert res.info["predicted_latency_ms"] == load_dense_lut(table_path, space(), SHAPE).predict(res.arch)


def test_latency_budget_decodes_within_it_or_names_the_fastest(splits: tuple[Any, Any], table_path: Path) -> None:
    table = load_dense_lut(table_path, space(), SHAPE)
    fastest = fastest_ms(space(), table)
    res = densenas(make_ctx(splits, max_batches_per_epoch=1), **fast(table_path, epochs=1, warmup_epochs=0,
                                                                     latency_budget=fastest * 1.2))
    assert res.info["predicted_latency_ms"] <= fastest * 1.2
    with pytest.raises(BudgetError, match=f"predicted at {fastest:.4g} ms"):
        densenas(make_ctx(splits), **fast(table_path, latency_budget=fastest * 0.9))


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    splits: tuple[Any, Any], table_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    opts = fast(table_path, warmup_epochs=0, epochs=1)
    ref = densenas(make_ctx(splits, run_dir=tmp_path / "full", checkpoint_every=1), **opts)
    with killed_after(monkeypatch, 3):  # the first architecture step of epoch 0
        densenas(make_ctx(splits, run_dir=tmp_path / "cut", checkpoint_every=1), **opts)
    torch.manual_seed(123)  # the resumed run must not depend on the caller's RNG
    res = densenas(make_ctx(splits, run_dir=tmp_path / "cut", checkpoint_every=1), **opts)
    assert res.strengths == ref.strengths and res.arch == ref.arch and res.info == ref.info


def test_cli_end_to_end(table_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["search", "--method", "densenas", "--space", "densenas", "--no-final-train", "--no-progress",
            "--max-batches-per-epoch", "1", "--out", str(out)]
    for k, v in TINY.items():
        argv += ["--space-opt", f"{k}={v if isinstance(v, str) else json.dumps(v).replace(' ', '')}"]
    for k, v in {"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "latency_table": table_path}.items():
        argv += ["--method-opt", f"{k}={v}"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method_kind"] == "one-shot"
    assert space().parse(results["best"]["arch"])
    assert results["best"]["arch"] == results["info"]["viterbi"]["arch"]
    assert (out / "search" / "search.pt").exists()
