"""P-DARTS: stages of growing depth, ops dropped per stage, skip dropout, skip-connect limit, resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import nasforge
from nasforge.data import load_data, split_train_valid
from nasforge.errors import BudgetError, ConfigError, UnknownNameError
from nasforge.methods.p_darts import (
    PDartsConfig,
    SkipDropout,
    drop_weakest,
    install_skip_dropout,
    limit_skip_connect,
    p_darts,
    skip_dropout_rate,
    stage_context,
)
from nasforge.nn.choice import Choice
from nasforge.nn.ops import FactorizedReduce, Identity
from nasforge.spaces.darts import EDGE_KEYS, PRIMITIVES, DartsSupernet
from nasforge.train.oneshot import OneShotContext

# a tiny 3-stage search: 3, 3, 4 cells of width 4; 2 epochs per stage, the first without arch steps
TINY: dict[str, Any] = {
    "epochs": 2, "batch_size": 16, "C": 4, "layers": 3, "add_layers": (0, 0, 1), "add_width": (0, 0, 0),
    "arch_warmup_epochs": (1, 1, 1), "dropout_rate": (0.1, 0.4, 0.7),
}


# nb201: 5, 5, 8 cells (N = 1, 1, 2) of width 4
TINY_NB201: dict[str, Any] = {**TINY, "layers": 5, "add_layers": (0, 0, 3)}


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    data = load_data("digits", None)
    return split_train_valid(data.train, 0.5, seed=0), data


def _ctx(digits, run_dir: Path | None = None, space: str = "darts", **kw: Any) -> OneShotContext:  # type: ignore[no-untyped-def]
    (tr, va), data = digits
    kw.setdefault("max_batches_per_epoch", 1)
    return OneShotContext(
        space=nasforge.get_space(space), train_set=tr, valid_set=va, num_classes=10, input_shape=data.input_shape(),
        run_dir=run_dir, log=lambda s: None, **kw,
    )


def _alphas(run_dir: Path, stage: int) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / f"stage{stage}" / "search.pt", weights_only=True)["state"]["policy"]
    prefix = "logits.alphas."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class _Supernets:
    """Collects every DARTS supernet run inside the block (in call order) and the skip dropout rates used."""

    def __init__(self) -> None:
        self.nets: list[DartsSupernet] = []
        self.rates: list[tuple[int, float]] = []  # (index of the supernet, p) per SkipDropout call

    def __enter__(self) -> _Supernets:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if isinstance(module, DartsSupernet) and (not self.nets or self.nets[-1] is not module):
                self.nets.append(module)
            if isinstance(module, SkipDropout):
                self.rates.append((len(self.nets) - 1, module.p))

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


# ---- the whole search ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(digits, tmp_path_factory):  # type: ignore[no-untyped-def]
    """One uninterrupted tiny search: (result, run_dir, what ran)."""
    run_dir = tmp_path_factory.mktemp("p_darts_full")
    with _Supernets() as seen:
        res = p_darts(_ctx(digits, run_dir), **TINY)
    return res, run_dir, seen


def test_stages_grow_depth_shrink_ops_and_decay_skip_dropout(full_run) -> None:  # type: ignore[no-untyped-def]
    res, tmp_path, seen = full_run
    # one new supernet per stage: 3, 3, 4 cells, 8, 5, 3 candidate ops on every edge
    assert len(seen.nets) == 3 and len({id(n) for n in seen.nets}) == 3
    assert [len(n.cells) for n in seen.nets] == [3, 3, 4]
    assert [n.stem[0].out_channels for n in seen.nets] == [12, 12, 12]  # stem_multiplier 3 * C 4
    for net, n_ops in zip(seen.nets, (8, 5, 3)):
        assert {len(ops) for ops in net.choices().values()} == {n_ops}
        for m in net.modules():
            if isinstance(m, Choice):
                assert len(m.candidates) == n_ops  # the stage's ops only are built, in every cell
    # the kept ops of stage s + 1 are the strongest of stage s's final softmax(alpha) ('none' ranked too)
    kept = res.info["kept_ops"]
    assert [len(kept[s]) for s in range(3)] == [28, 28, 28]
    for s in range(2):
        alphas = _alphas(tmp_path, s)
        for key in EDGE_KEYS:
            ops = kept[s][key]
            probs = torch.softmax(alphas[key], -1).tolist()
            n_keep = (5, 3)[s]
            strongest = sorted(range(len(ops)), key=lambda i: -probs[i])[:n_keep]
            assert kept[s + 1][key] == [ops[i] for i in sorted(strongest)], (s, key)
            assert seen.nets[s + 1].choices()[key] == tuple(kept[s + 1][key])
    # skip dropout: the reference schedule, linear in the warm-up epoch then exp(-0.2 (e - W))
    expected = [skip_dropout_rate(r, e, 2, 1, 0.2) for r in (0.1, 0.4, 0.7) for e in (0, 1)]
    assert expected == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.35, 0.7])
    assert [h["skip_dropout"] for h in res.history] == pytest.approx(expected)
    for stage in range(3):  # what the SkipDropout modules actually used in the stage
        used = sorted({round(p, 9) for i, p in seen.rates if i == stage})
        assert used == sorted({round(x, 9) for x in expected[2 * stage: 2 * stage + 2]})
    assert [(h["stage"], h["epoch"], h["arch_trained"]) for h in res.history] == [
        (0, 0, False), (0, 1, True), (1, 0, False), (1, 1, True), (2, 0, False), (2, 1, True),
    ]
    # the final cell: derived from the last stage's weights, at most 2 skip_connect in the normal cell
    space = nasforge.get_space("darts")
    assert res.arch == space.derive(res.strengths)
    assert sum(op == "skip_connect" for op, _ in space.cell_edges(res.arch, "normal")) <= 2
    last = _alphas(tmp_path, 2)
    for key in EDGE_KEYS:
        probs = dict(zip(kept[2][key], torch.softmax(last[key], -1).tolist()))
        for i, op in enumerate(PRIMITIVES):
            if op not in probs:
                assert res.strengths[key][i] == 0.0  # dropped ops are out of the derivation
            elif not (op == "skip_connect" and res.strengths[key][i] == 0.0):  # (zeroed by the skip limit)
                assert res.strengths[key][i] == pytest.approx(probs[op], abs=1e-7)


def test_resume_across_a_stage_boundary_gives_the_same_result(digits, full_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    full, full_dir, _ = full_run
    calls = {"n": 0}

    def crash(msg: str) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # after the first epoch of stage 1: stage 0 finished, stage 1 half done
            raise KeyboardInterrupt

    ctx = _ctx(digits, tmp_path)
    ctx.log = crash
    with pytest.raises(KeyboardInterrupt):
        p_darts(ctx, **TINY)
    assert (tmp_path / "stage1" / "search.pt").exists() and not (tmp_path / "stage2").exists()
    logs: list[str] = []
    resumed_ctx = _ctx(digits, tmp_path)
    resumed_ctx.log = logs.append
    resumed = p_darts(resumed_ctx, **TINY)
    # the finished stage 0 is rebuilt from its checkpoint (its kept ops recomputed), stage 1 continues
    assert [m.split(" at ")[1] for m in logs if "resuming the search" in m] == ["epoch 2, batch 0", "epoch 1, batch 0"]
    for stage in range(3):
        a, b = _alphas(full_dir, stage), _alphas(tmp_path, stage)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    assert resumed.strengths == full.strengths and resumed.arch == full.arch
    assert resumed.info == full.info
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


# ---- the pieces -------------------------------------------------------------------------------
def test_weakest_ops_are_dropped_none_included_ties_to_the_earlier() -> None:
    choices = {"a": ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"), "b": ("none", "skip_connect", "sep_conv_3x3")}
    weights = {"a": torch.tensor([0.1, 0.4, 0.2, 0.3]), "b": torch.tensor([0.5, 0.25, 0.25])}
    assert drop_weakest(choices, weights, 2) == {"a": ["max_pool_3x3", "sep_conv_3x3"], "b": ["none", "sep_conv_3x3"]}
    assert drop_weakest(choices, weights, 3)["a"] == ["max_pool_3x3", "skip_connect", "sep_conv_3x3"]


def test_stage_supernets_have_the_stage_depth_width_and_ops(digits) -> None:  # type: ignore[no-untyped-def]
    cfg = PDartsConfig(C=4, layers=3, add_width=(0, 4, 8), add_layers=(0, 2, 3))
    kept = {k: ["none", "skip_connect", "sep_conv_3x3"] for k in EDGE_KEYS}
    for stage, (layers, C) in enumerate(((3, 4), (5, 8), (6, 12))):
        sctx = stage_context(_ctx(digits, Path("/nonexistent")), cfg, stage, kept if stage else None)
        assert sctx.run_dir == Path("/nonexistent") / f"stage{stage}"
        net = sctx.supernet()
        assert isinstance(net, DartsSupernet) and len(net.cells) == layers and net.stem[0].out_channels == 3 * C
        assert set(net.choices().values()) == ({PRIMITIVES} if stage == 0 else {("none", "skip_connect", "sep_conv_3x3")})


def test_skip_dropout_wraps_identity_skips_only(digits) -> None:  # type: ignore[no-untyped-def]
    net = stage_context(_ctx(digits), PDartsConfig(C=4, layers=3), 0, None).supernet()
    edges = [m for m in net.modules() if isinstance(m, Choice)]
    wrappers = install_skip_dropout(net)
    wrapped = [c for c in edges if isinstance(c.candidates["skip_connect"], SkipDropout)]
    assert len(wrappers) == len(wrapped) == 14 + 2 * (14 - 8)  # normal cell: all 14; reduce cells: not the 8 stride-2 edges
    for choice in edges:
        skip = choice.candidates["skip_connect"]
        assert isinstance(skip, SkipDropout) == (choice.stride == 1)
        if choice.stride == 2:
            assert isinstance(skip, FactorizedReduce)
        else:
            assert isinstance(skip, SkipDropout) and isinstance(skip.op, Identity)
        others = [m for name, m in choice.candidates.items() if name != "skip_connect"]
        assert not any(isinstance(sub, SkipDropout) for m in others for sub in m.modules())
    # dropout semantics of the reference's nn.Dropout: zero with probability p, scale the rest by 1 / (1 - p)
    drop = wrappers[0]
    x = torch.ones(64, 4, 8, 8)
    drop.p = 0.75
    torch.manual_seed(0)
    y = drop(x)
    assert set(y.unique().tolist()) == {0.0, 4.0} and abs(float((y == 0).float().mean()) - 0.75) < 0.02
    drop.eval()
    assert torch.equal(drop(x), x)
    drop.train()
    drop.p = 0.0
    state = torch.get_rng_state()
    assert torch.equal(drop(x), x) and torch.equal(torch.get_rng_state(), state)  # p = 0 draws nothing


def test_skip_dropout_schedule_matches_the_reference_formula() -> None:
    E, W, r = 25, 10, 0.7
    assert skip_dropout_rate(r, 0, E, W, 0.2) == pytest.approx(0.7 * 24 / 25)
    assert skip_dropout_rate(r, 9, E, W, 0.2) == pytest.approx(0.7 * 15 / 25)
    assert skip_dropout_rate(r, 10, E, W, 0.2) == pytest.approx(0.7)
    assert skip_dropout_rate(r, 15, E, W, 0.2) == pytest.approx(0.7 * math.exp(-1.0))
    rates = [skip_dropout_rate(r, e, E, W, 0.2) for e in range(E)]
    assert all(a > b for a, b in zip(rates[:W], rates[1:W])) and all(a > b for a, b in zip(rates[W:], rates[W + 1:]))


def _strengths(entries: dict[str, dict[str, float]]) -> dict[str, torch.Tensor]:
    out = {k: torch.full((8,), 1e-4) for k in EDGE_KEYS}
    for i, k in enumerate(EDGE_KEYS):  # distinct tiny values: no ties anywhere
        out[k] = out[k] + 1e-6 * torch.arange(8) + 1e-5 * i
    for key, ops in entries.items():
        for op, w in ops.items():
            out[key][PRIMITIVES.index(op)] = w
    return out


def test_skip_connect_limit_removes_the_weakest_skips_and_rederives() -> None:
    space = nasforge.get_space("darts")
    strengths = _strengths({
        "normal_e2_0": {"skip_connect": 0.9}, "normal_e2_1": {"skip_connect": 0.8},
        "normal_e3_0": {"sep_conv_3x3": 0.6}, "normal_e3_1": {"sep_conv_5x5": 0.5},
        "normal_e4_0": {"sep_conv_3x3": 0.6}, "normal_e4_1": {"dil_conv_3x3": 0.5},
        # node 5: skip on edge 0 is the weakest skip; removing it lets edge 2's skip in, which goes next
        "normal_e5_0": {"skip_connect": 0.4, "sep_conv_3x3": 0.05, "none": 0.99},
        "normal_e5_1": {"dil_conv_5x5": 0.35},
        "normal_e5_2": {"skip_connect": 0.3, "max_pool_3x3": 0.02},
        # the reduce cell is not limited
        **{f"reduce_e{n}_{j}": {"skip_connect": 0.5} for n in range(2, 6) for j in range(2)},
    })
    before = space.derive(strengths)
    assert [op for op, _ in space.cell_edges(before, "normal")].count("skip_connect") == 3
    arch, limited, removed = limit_skip_connect(space, strengths, 2)
    assert removed == 2
    assert space.cell_edges(arch, "normal") == [
        ("skip_connect", 0), ("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 1),
        ("sep_conv_3x3", 0), ("dil_conv_3x3", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 1),
    ]
    assert [op for op, _ in space.cell_edges(arch, "reduce")].count("skip_connect") == 8
    skip = PRIMITIVES.index("skip_connect")
    zeroed = sorted(k for k in EDGE_KEYS if limited[k][skip] == 0.0)
    assert zeroed == ["normal_e5_0", "normal_e5_2"] and space.derive(limited) == arch
    assert float(strengths["normal_e5_0"][skip]) == pytest.approx(0.4)  # the input is not modified
    # M = 0 removes every skip from the normal cell; None leaves the derivation alone
    arch0, _, removed0 = limit_skip_connect(space, strengths, 0)
    assert removed0 == 4 and "skip_connect" not in [op for op, _ in space.cell_edges(arch0, "normal")]
    assert limit_skip_connect(space, strengths, None)[0] == before


# ---- errors -----------------------------------------------------------------------------------
def test_bad_options_and_spaces_raise_typed_errors(digits) -> None:  # type: ignore[no-untyped-def]
    ctx = _ctx(digits)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"num_ops": (7, 5, 3)}, "num_ops\\[0\\] must be 8"),
        ({"num_ops": (8, 8, 3)}, "must decrease strictly"),
        ({"num_ops": (8, 5, 1)}, "end >= 2"),
        ({"num_ops": (8, 5)}, "add_width has 3 entries but num_ops has 2"),
        ({"dropout_rate": (0.0, 1.0, 0.5)}, "dropout_rate entries must be in \\[0, 1\\)"),
        ({"arch_warmup_epochs": (10, 25, 10)}, "arch_warmup_epochs entries must be ints in \\[0, epochs=25\\)"),
        ({"arch_warmup_epochs": (-1, 10, 10)}, "arch_warmup_epochs entries"),
        ({"layers": 2, "add_layers": (0, 1, 2)}, "every stage needs >= 3 cells"),
        ({"add_layers": (0, -6, 12)}, "add_layers entries must be ints >= 0"),
        ({"max_skip_connect": -1}, "max_skip_connect must be an int >= 0 or None"),
        ({"add_width": ()}, "add_width must be a non-empty sequence"),
        ({"dropout_decay": -0.2}, "dropout_decay must be >= 0"),
        ({"epochs": 0}, "epochs must be an int > 0"),
    ]
    for options, message in bad:
        with pytest.raises((ConfigError, BudgetError), match=message):
            p_darts(ctx, **options)
    with pytest.raises(ConfigError, match="unknown p_darts option"):
        p_darts(ctx, stages=3)
    clash = _ctx(digits)
    clash.supernet_kwargs = {"C": 8, "layers": 3}
    with pytest.raises(ConfigError, match="sets the supernet options \\['C', 'layers'\\] per stage"):
        p_darts(clash, **TINY)
    with pytest.raises(UnknownNameError, match="valid: darts, nb201"):
        p_darts(_ctx(digits, space="mobilenet"))
    # nb201: depths must be 3N + 2 cells, the first stage keeps all 5 operations
    nb = _ctx(digits, space="nb201")
    with pytest.raises(ConfigError, match="every stage needs 3N \\+ 2 cells"):
        p_darts(nb, layers=5, add_layers=(0, 1, 6))
    with pytest.raises(ConfigError, match="num_ops\\[0\\] must be 5"):
        p_darts(nb, num_ops=(8, 5, 3))
    with pytest.raises(ConfigError, match="sets the supernet options \\['N'\\] per stage"):
        p_darts(_ctx(digits, space="nb201", supernet_kwargs={"N": 2}), **TINY_NB201)
    # lists (JSON, the command line) are accepted and stored as tuples
    assert PDartsConfig(num_ops=[8, 4], add_width=[0, 0], add_layers=[0, 3], dropout_rate=[0.0, 0.3],
                        arch_warmup_epochs=[10, 10]).num_ops == (8, 4)


# ---- NB201 ------------------------------------------------------------------------------------
def test_nb201_stages_shrink_ops_and_derive_with_the_skip_limit(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from nasforge.spaces.nb201 import EDGE_NAMES, OPS, NB201Supernet

    seen: list[NB201Supernet] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, NB201Supernet) and (not seen or seen[-1] is not module):
            seen.append(module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        res = p_darts(_ctx(digits, tmp_path, space="nb201"), **TINY_NB201, max_skip_connect=1)
    finally:
        handle.remove()
    # N = 1, 1, 2 cells per stage (3N + 2 cells), 5, 3, 2 operations per edge
    assert [sum(1 for c in n.cells if type(c).__name__ == "NB201SearchCell") for n in seen] == [3, 3, 6]
    for net, n_ops in zip(seen, (5, 3, 2)):
        assert {len(ops) for ops in net.choices().values()} == {n_ops}
        assert all(len(m.candidates) == n_ops for m in net.modules() if isinstance(m, Choice))
    kept = res.info["kept_ops"]
    for s in range(2):
        alphas = _alphas(tmp_path, s)
        for key in EDGE_NAMES:
            probs = torch.softmax(alphas[key], -1).tolist()
            strongest = sorted(range(len(kept[s][key])), key=lambda i: -probs[i])[: (3, 2)[s]]
            assert kept[s + 1][key] == [kept[s][key][i] for i in sorted(strongest)]
    # skip dropout wraps the identity skips of every cell
    assert all(isinstance(m.candidates["skip_connect"], SkipDropout)
               for m in seen[0].modules() if isinstance(m, Choice))
    space = nasforge.get_space("nb201")
    assert res.arch == space.derive(res.strengths)
    assert sum(res.arch[k] == "skip_connect" for k in EDGE_NAMES) <= 1
    last = _alphas(tmp_path, 2)
    for key in EDGE_NAMES:
        probs = dict(zip(kept[2][key], torch.softmax(last[key], -1).tolist()))
        for i, op in enumerate(OPS):
            if op not in probs:
                assert res.strengths[key][i] == 0.0
            elif not (op == "skip_connect" and res.strengths[key][i] == 0.0):
                assert res.strengths[key][i] == pytest.approx(probs[op], abs=1e-7)


def test_nb201_skip_limit_zeroes_the_weakest_skip_edges() -> None:
    from nasforge.spaces.nb201 import EDGE_NAMES, OPS

    space = nasforge.get_space("nb201")
    skip, conv = OPS.index("skip_connect"), OPS.index("nor_conv_3x3")
    strengths = {k: torch.zeros(5) for k in EDGE_NAMES}
    for i, k in enumerate(EDGE_NAMES):
        strengths[k][skip] = 0.5 + 0.01 * i  # every edge prefers skip; the earlier edges are weaker
        strengths[k][conv] = 0.3
    arch, limited, removed = limit_skip_connect(space, strengths, 2)
    assert removed == 4
    assert [arch[k] for k in EDGE_NAMES] == ["nor_conv_3x3"] * 4 + ["skip_connect"] * 2
    assert space.derive(limited) == arch and float(strengths[EDGE_NAMES[0]][skip]) == 0.5


def test_nb201_supernet_edge_ops() -> None:
    from nasforge.spaces.nb201 import EDGE_NAMES

    space = nasforge.get_space("nb201")
    net = space.supernet(C=4, N=1, edge_ops={EDGE_NAMES[0]: ["skip_connect", "nor_conv_3x3"]})
    assert net.choices()[EDGE_NAMES[0]] == ("skip_connect", "nor_conv_3x3")
    assert len(net.choices()[EDGE_NAMES[1]]) == 5
    y = net(torch.randn(2, 3, 8, 8), {k: torch.full((len(v),), 1.0 / len(v)) for k, v in net.choices().items()})
    assert y.shape == (2, 10)
    with pytest.raises(ConfigError, match="edge_ops names unknown edges \\['edge_9_0'\\]"):
        space.supernet(edge_ops={"edge_9_0": ["none"]})
    with pytest.raises(ConfigError, match="must be a non-empty subset of none, skip_connect"):
        space.supernet(edge_ops={EDGE_NAMES[0]: ["sep_conv_3x3"]})
