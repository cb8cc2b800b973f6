"""PNAS (Liu et al., ECCV 2018): the spaces' orders of complexity, progressive growth with a
surrogate-ranked beam, and the MLP-ensemble surrogate."""

from __future__ import annotations

import inspect
import math
import random

import numpy as np
import pytest
import torch
from tests._toy import ToySpace

from nasforge import get_space
from nasforge.errors import BudgetError, ConfigError
from nasforge.searchers.pnas import PNAS, MLPEnsemble, checked_stages
from nasforge.spaces.base import ComplexityStage
from nasforge.spaces.nb201 import NB201Cell

SMALL = {"hidden": 16, "epochs": 30}
NONE3 = "|none~0|none~1|skip_connect~2|"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class StagedToy(ToySpace):
    """ToySpace grown one layer at a time; ungrown layers are the narrowest option 'a'."""

    def complexity_stages(self):
        return [ComplexityStage(("layer0",), {"layer1": "a", "layer2": "a"}),
                ComplexityStage(("layer1",), {"layer2": "a"}), ComplexityStage(("layer2",))]


# ---- the spaces' orders of complexity ------------------------------------------------------
def test_nb201_grows_node_by_node_and_partial_cells_output_the_last_grown_node():
    space = get_space("nb201")
    stages = checked_stages(space)
    assert [s.grows for s in stages] == [
        ("edge_1_0",), ("edge_2_0", "edge_2_1"), ("edge_3_0", "edge_3_1", "edge_3_2")]
    assert dict(stages[0].filler) == {"edge_2_0": "none", "edge_2_1": "none", "edge_3_0": "none",
                                      "edge_3_1": "skip_connect", "edge_3_2": "none"}
    assert dict(stages[1].filler) == {"edge_3_0": "none", "edge_3_1": "none", "edge_3_2": "skip_connect"}
    assert dict(stages[2].filler) == {}
    one = space.make({"edge_1_0": "nor_conv_3x3", **stages[0].filler})
    two = space.make({"edge_1_0": "nor_conv_1x1", "edge_2_0": "avg_pool_3x3", "edge_2_1": "nor_conv_3x3",
                      **stages[1].filler})
    assert space.format(one) == "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|"
    assert space.format(two) == "|nor_conv_1x1~0|+|avg_pool_3x3~0|nor_conv_3x3~1|+" + NONE3
    # the partial cells compute what they claim: the output is node 1, resp. node 2
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = torch.randn(2, 4, 6, 6)
        cell1, cell2 = NB201Cell(one, 4).eval(), NB201Cell(two, 4).eval()
    with torch.no_grad():
        assert torch.allclose(cell1(x), cell1.edges["edge_1_0"](x))
        node1 = cell2.edges["edge_1_0"](x)
        node2 = cell2.edges["edge_2_0"](x) + cell2.edges["edge_2_1"](node1)
        assert torch.allclose(cell2(x), node2, atol=1e-6)


def test_mobilenet_grows_in_depth_with_skip_for_ungrown_layers():
    space = get_space("mobilenet")
    stages = checked_stages(space)
    assert len(stages) == 4  # four searchable layers in the deepest network stage
    assert stages[0].grows == tuple(f"s{i}_l0" for i in range(1, 7))
    assert stages[1].grows == tuple(f"s{i}_l1" for i in range(1, 6))  # s6 has one layer
    grown = {d: space.decisions()[d][0] for d in stages[0].grows}
    arch = space.make({**grown, **stages[0].filler})
    assert set(stages[0].filler.values()) == {"skip"}
    assert space.format(arch).count("skip_r3") == 5  # every 4-layer stage keeps 1 layer
    assert space.is_valid(arch)


def test_spaces_without_an_order_are_refused_naming_the_supported_ones():
    for space in (get_space("darts"), get_space("mobilenet", allow_skip=False), ToySpace()):
        with pytest.raises(ConfigError, match="nb201, mobilenet"):
            PNAS.check_space(space)
    PNAS.check_space(get_space("nb201"))
    PNAS.check_space(StagedToy())


def test_malformed_orders_are_config_errors():
    class Overlapping(ToySpace):
        def complexity_stages(self):
            return [ComplexityStage(("layer0", "layer1"), {"layer1": "a", "layer2": "a"}),
                    ComplexityStage(("layer1", "layer2"))]

    class BadFiller(ToySpace):
        def complexity_stages(self):
            return [ComplexityStage(("layer0", "layer1"), {"layer2": "z"}), ComplexityStage(("layer2",))]

    class Unfilled(ToySpace):
        def complexity_stages(self):
            return [ComplexityStage(("layer0", "layer1")), ComplexityStage(("layer2",))]

    with pytest.raises(ConfigError, match="exactly once"):
        PNAS.check_space(Overlapping())
    with pytest.raises(ConfigError, match="fill exactly"):
        PNAS.check_space(Unfilled())
    with pytest.raises(ConfigError, match="invalid options"):
        PNAS.check_space(BadFiller())


def test_options_bad_values_and_defaults():
    params = inspect.signature(PNAS.__init__).parameters
    for name, value in PNAS.options().items():
        assert params[name].default == value, name
    with pytest.raises(BudgetError, match="beam_size"):
        PNAS(get_space("nb201"), beam_size=0)
    with pytest.raises(ConfigError, match="lr"):
        PNAS(get_space("nb201"), lr=-1.0)


# ---- the progressive beam search -------------------------------------------------------------
class _FakeModel:
    """A surrogate whose prediction is a fixed function: the count of nor_conv_3x3 per cell."""

    def __init__(self, searcher: PNAS) -> None:
        self.k = searcher._options[0].index("nor_conv_3x3")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], 6, 5)[:, :, self.k].sum(1)


def test_nb201_stages_expand_every_kept_structure_and_keep_the_surrogates_top_k(monkeypatch):
    space = get_space("nb201")
    s = PNAS(space, seed=0, beam_size=4, **SMALL)
    monkeypatch.setattr(s, "fit_surrogate", lambda: _FakeModel(s))
    stages = space.complexity_stages()
    # stage 1: all 5 one-node cells, in a random order (5 > K=4: a sample of 4)
    s1 = [s.ask() for _ in range(4)]
    for a in s1:
        s.tell(a, 50.0)
        assert {d: a[d] for d in stages[0].filler} == dict(stages[0].filler)
    assert len({a["edge_1_0"] for a in s1}) == 4
    # stage 2: the top-4 by the surrogate of all 4 x 25 expansions (ties: enumeration order)
    s2 = [s.ask() for _ in range(4)]
    expected = []
    for a in s1:
        for e20 in space.decisions()["edge_2_0"]:
            for e21 in space.decisions()["edge_2_1"]:
                expected.append(a.replace(edge_2_0=e20, edge_2_1=e21, edge_3_1="none", edge_3_2="skip_connect"))
    scores = [sum(v == "nor_conv_3x3" for v in a.values()) for a in expected]
    order = sorted(range(len(expected)), key=lambda i: -scores[i])
    assert s2 == [expected[i] for i in order[:4]]
    for a in s2:
        s.tell(a, 60.0)
    # stage 3 (complete cells): grown from S_2, top of the surrogate; then the search goes on
    s3 = [s.ask() for _ in range(12)]
    prefixes = {(a["edge_1_0"], a["edge_2_0"], a["edge_2_1"]) for a in s2}
    assert all((a["edge_1_0"], a["edge_2_0"], a["edge_2_1"]) in prefixes for a in s3)
    assert sum(a["edge_3_0"] == a["edge_3_1"] == a["edge_3_2"] == "nor_conv_3x3" for a in s3[:4]) == 4
    assert len(set(s1 + s2 + s3)) == 20 and s.stage == 2


def test_search_continues_past_the_last_stage_until_the_space_is_exhausted():
    space = StagedToy()
    s = PNAS(space, seed=0, beam_size=2, max_candidates=200, **SMALL)
    seen = []
    for _ in range(27):
        a = s.ask()
        s.tell(a, float(sum(v == "c" for v in a.values())))
        seen.append(a)
    assert len(set(seen)) == 27
    # stage 1 = layer0 with layers 1, 2 filled with 'a'
    assert all(a["layer1"] == a["layer2"] == "a" for a in seen[:2])
    with pytest.raises(BudgetError, match="exhausted"):
        s.ask()


def test_surrogate_learns_the_landscape_and_failed_trials_count_as_the_worst():
    space = StagedToy()
    s = PNAS(space, seed=0, beam_size=3, epochs=300, hidden=32)
    archs = [s.arch_of(t) for t in np.ndindex(3, 3, 3)]
    for a in archs:
        s.history.append((a, float(sum(v == "c" for v in a.values()))))
    model = s.fit_surrogate()
    pred = model.predict(s.features(np.array([s.sequence(a) for a in archs]))).numpy()
    truth = np.array([f for _, f in s.history])
    assert np.corrcoef(pred, truth)[0, 1] > 0.95
    # a failed trial is fitted at the worst told fitness
    s.history[26] = (archs[26], -math.inf)  # c-c-c failed
    pred = s.fit_surrogate().predict(s.features(np.array([s.sequence(archs[26])]))).item()
    assert pred < model.predict(s.features(np.array([s.sequence(archs[26])]))).item()


def test_ensemble_members_each_leave_out_one_fifth():
    g = torch.Generator().manual_seed(0)
    ens = MLPEnsemble(4, 8, 5, g)
    x, y = torch.eye(4).repeat(5, 1), torch.arange(20, dtype=torch.float32)
    before = [p.detach().clone() for p in ens.params]
    ens.fit(x, y, epochs=5, lr=0.01)
    assert all(not torch.equal(a, b) for a, b in zip(before, ens.params))
    out = ens.forward(x)
    assert out.shape == (5, 20)
    assert torch.allclose(ens.predict(x), out.mean(0))


def test_deterministic_without_global_random_state():
    space = get_space("nb201")
    torch_state, py_state = torch.get_rng_state(), random.getstate()

    def run(seed):
        s = PNAS(space, seed=seed, beam_size=3, **SMALL)
        out = []
        for _ in range(14):
            a = s.ask()
            s.tell(a, float(len(space.format(a)) % 7))
            out.append(a)
        return out

    assert run(0) == run(0) != run(1)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state


def test_partial_nb201_cells_score_as_the_smaller_cells_they_are(data_kit):
    """On the real table: the stage-1 cell with ``none`` is the all-zero network (chance
    accuracy) and the one-conv cell trains; the stage-2 cells all beat the stage-1 'none' cell."""
    path = data_kit / "nb201" / "nb201_table.csv.gz"
    if not path.is_file():
        pytest.skip(f"NAS-Bench-201 table not found at {path}")
    from nasforge.evaluators.table import NB201Table

    space = get_space("nb201")
    table = NB201Table(space, path)
    filler = space.complexity_stages()[0].filler
    zero = table(space.make({"edge_1_0": "none", **filler})).metrics["val_acc"]
    conv = table(space.make({"edge_1_0": "nor_conv_3x3", **filler})).metrics["val_acc"]
    assert zero < 15 < 80 < conv
