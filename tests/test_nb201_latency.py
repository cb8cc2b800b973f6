"""Few-shot per-op latency models of NB201 cells (nasforge.hardware.nb201_latency, issue 10)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nasforge import get_space
from nasforge.errors import ArchError, BudgetError, DataError, NasforgeError, UnknownNameError
from nasforge.evaluators.table import NB201Table
from nasforge.hardware import nb201_latency as lat
from nasforge.spaces.nb201 import OPS

ALL_CELLS = np.array(list(itertools.product(range(5), repeat=6)), dtype=np.int64)


def _weights(rng: np.random.Generator, per_edge: bool) -> np.ndarray:
    w = np.zeros((6, 5))
    w[:, 1:] = rng.uniform(0.1, 3.0, size=(6, 4)) if per_edge else rng.uniform(0.1, 3.0, size=4)[None, :]
    return w


def _synthetic(rng: np.random.Generator, n: int, *, per_edge: bool, effective: bool):
    truth = lat.NB201LatencyModel(2.5, _weights(rng, per_edge), per_edge, effective)
    cells = ALL_CELLS[rng.choice(len(ALL_CELLS), size=n, replace=False)]
    return truth, cells, truth.predict_many(cells)


@pytest.mark.parametrize("per_edge", [False, True])
@pytest.mark.parametrize("effective", [False, True])
@pytest.mark.parametrize("nonnegative", [True, False])
def test_fit_recovers_known_weights_exactly(per_edge, effective, nonnegative):
    rng = np.random.default_rng(3)
    truth, cells, y = _synthetic(rng, 200, per_edge=per_edge, effective=effective)
    model = lat.fit(cells, y, per_edge=per_edge, effective=effective, nonnegative=nonnegative)
    assert model.intercept == pytest.approx(truth.intercept, abs=1e-8)
    np.testing.assert_allclose(model.weights, truth.weights, atol=1e-8)
    np.testing.assert_allclose(model.predict_many(ALL_CELLS), truth.predict_many(ALL_CELLS), atol=1e-8)


def test_fit_with_exactly_as_many_cells_as_parameters():
    rng = np.random.default_rng(0)
    truth, _, _ = _synthetic(rng, 1, per_edge=False, effective=False)
    cells = np.array([[0] * 6, [1, 0, 0, 0, 0, 0], [0, 2, 0, 0, 0, 0], [0, 0, 3, 0, 0, 0], [0, 0, 0, 4, 0, 0]])
    model = lat.fit(cells, truth.predict_many(cells))
    np.testing.assert_allclose(model.weights, truth.weights, atol=1e-9)


def test_nonnegative_weights_and_ridge_shrinks_toward_shared():
    rng = np.random.default_rng(1)
    cells = ALL_CELLS[rng.choice(len(ALL_CELLS), 60, replace=False)]
    y = 5.0 - (cells == 4).sum(1) + rng.normal(0, 0.1, 60)  # avg_pool 'makes it faster': clipped at 0
    model = lat.fit(cells, y)
    assert model.weights.min() >= 0 and model.weights[0, 4] == 0
    free = lat.fit(cells, y, nonnegative=False)
    assert free.weights[0, 4] < -0.5
    shared = lat.fit(cells, y, nonnegative=False)
    strong = lat.fit(cells, y, per_edge=True, alpha=1e8, nonnegative=False)
    np.testing.assert_allclose(strong.weights, shared.weights, atol=1e-4)


def test_prediction_is_additive_and_accepts_every_cell_form():
    rng = np.random.default_rng(2)
    model = lat.NB201LatencyModel(1.0, _weights(rng, True), per_edge=True)
    space = get_space("nb201")
    for codes in ALL_CELLS[rng.choice(len(ALL_CELLS), 25, replace=False)]:
        expected = model.intercept + sum(model.weights[e, op] for e, op in enumerate(codes))
        arch = space.decode_sequence(codes.tolist())
        forms = [arch, space.format(arch), codes.tolist(), [OPS[c] for c in codes]]
        for form in forms:
            assert model.predict(form) == pytest.approx(expected, abs=1e-12)
        for e in range(6):  # changing one edge changes the prediction by that edge's weight difference
            other = codes.copy()
            other[e] = (codes[e] + 1) % 5
            delta = model.weights[e, other[e]] - model.weights[e, codes[e]]
            assert model.predict(other.tolist()) - model.predict(codes.tolist()) == pytest.approx(delta, abs=1e-12)


def test_effective_mask_of_known_cells():
    # codes in edge order 0->1, 0->2, 1->2, 0->3, 1->3, 2->3
    np.testing.assert_array_equal(lat.effective_mask([[3, 0, 0, 0, 0, 1]])[0], [False] * 6)  # 2->3 reads zeros
    np.testing.assert_array_equal(lat.effective_mask([[3, 0, 0, 0, 1, 0]])[0], [1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(lat.effective_mask([[3, 2, 0, 1, 0, 0]])[0], [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(lat.effective_mask([[1] * 6])[0], [True] * 6)
    model = lat.NB201LatencyModel(1.0, _weights(np.random.default_rng(0), False), effective=True)
    assert model.predict([3, 0, 0, 0, 0, 1]) == 1.0  # no op on an input -> output path


def test_expected_latency_gradient_equals_weights():
    rng = np.random.default_rng(4)
    for per_edge in (False, True):
        model = lat.NB201LatencyModel(0.7, _weights(rng, per_edge), per_edge)
        probs = torch.softmax(torch.randn(6, 5, dtype=torch.float64), dim=-1).requires_grad_(True)
        value = model.expected_latency(probs)
        value.backward()
        np.testing.assert_allclose(probs.grad.numpy(), model.weights, atol=1e-12)
        assert value.item() == pytest.approx(0.7 + float((probs.detach().numpy() * model.weights).sum()))


@pytest.mark.parametrize("effective", [False, True])
def test_expected_latency_is_the_exact_expectation(effective):
    rng = np.random.default_rng(5)
    model = lat.NB201LatencyModel(0.3, _weights(rng, True), True, effective)
    logits = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    probs = torch.softmax(logits, dim=-1)
    value = model.expected_latency(probs)  # batch of 2
    p = probs.detach().numpy()
    preds = model.predict_many(ALL_CELLS)
    for b in range(2):
        cell_prob = np.prod(p[b][np.arange(6)[None, :], ALL_CELLS], axis=1)
        assert value[b].item() == pytest.approx(float(cell_prob @ preds), rel=1e-10)
    value.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # a one-hot distribution gives the prediction of that cell
    for codes in ALL_CELLS[rng.choice(len(ALL_CELLS), 10, replace=False)]:
        onehot = torch.nn.functional.one_hot(torch.as_tensor(codes), 5).double()
        assert float(model.expected_latency(onehot)) == pytest.approx(model.predict(codes.tolist()), abs=1e-12)


def test_too_few_cells_without_regularisation_is_refused():
    rng = np.random.default_rng(6)
    _, cells, y = _synthetic(rng, 24, per_edge=True, effective=False)
    with pytest.raises(BudgetError, match=r"25 parameters.*alpha > 0"):
        lat.fit(cells, y, per_edge=True)
    lat.fit(cells, y, per_edge=True, alpha=1.0)  # ridge makes it well posed
    with pytest.raises(BudgetError, match="5 parameters"):
        lat.fit(cells[:4], y[:4])


def test_bad_cells_and_latencies_raise_typed_errors():
    with pytest.raises(DataError, match="3 cells but 2 latencies"):
        lat.fit([[0] * 6] * 3, [1.0, 2.0])
    with pytest.raises(DataError, match="finite"):
        lat.fit([[i % 5] * 6 for i in range(6)], [1.0, 2.0, float("nan"), 1.0, 1.0, 1.0])
    with pytest.raises(ArchError, match="6 edges"):
        lat.encode_cells([[1, 2, 3]])
    with pytest.raises(ArchError, match="0..4"):
        lat.encode_cells([[0, 1, 2, 3, 4, 5]])
    with pytest.raises(UnknownNameError, match="conv_5x5"):
        lat.encode_cells([["conv_5x5"] * 6])
    with pytest.raises(ArchError):
        lat.encode_cells(["|nor_conv_3x3~0|"])


def _tiny_table(tmp_path, n: int = 8) -> NB201Table:
    space = get_space("nb201")
    header = ["arch_str", "cifar10valid_valid_acc", "cifar10_test_acc", "params_mb", "op_e01", "op_e02", "op_e12",
              "op_e03", "op_e13", "op_e23", "hwnb_fpga_latency_ms", "help_pixel2_latency_ms"]
    lines = [",".join(header)]
    for i, codes in enumerate(ALL_CELLS[:: len(ALL_CELLS) // n][:n]):
        arch = space.format(space.decode_sequence(codes.tolist()))
        fpga = 1.0 + (codes == 3).sum() + 0.2 * (codes == 2).sum()
        lines.append(",".join([arch, "80", "85", "0.1", *map(str, codes), f"{fpga}", str(10 + i)]))
    path = tmp_path / "table.csv"
    path.write_text("\n".join(lines) + "\n")
    return NB201Table(space, path)


def test_table_latencies_and_unknown_device_column(tmp_path):
    table = _tiny_table(tmp_path)
    assert lat.latency_columns(table) == ("help_pixel2_latency_ms", "hwnb_fpga_latency_ms")
    codes, y = lat.table_latencies(table, "hwnb_fpga")
    assert codes.shape == (8, 6) and y.shape == (8,)
    assert np.array_equal(codes, lat.encode_cells(list(table.rows)))
    with pytest.raises(UnknownNameError) as info:
        lat.table_latencies(table, "hwnb_tpu")
    message = str(info.value)
    assert "hwnb_tpu" in message and "hwnb_fpga_latency_ms" in message and "help_pixel2_latency_ms" in message
    assert isinstance(info.value, (NasforgeError, KeyError))


def test_few_shot_n_larger_than_the_table_is_refused(tmp_path):
    codes, y = lat.table_latencies(_tiny_table(tmp_path), "hwnb_fpga_latency_ms")
    with pytest.raises(BudgetError, match="table has 8 cells"):
        lat.few_shot_score(codes, y, 9, seed=0)
    with pytest.raises(BudgetError, match="n <= 7"):
        lat.few_shot_score(codes, y, 8, seed=0)
    with pytest.raises(BudgetError):
        lat.few_shot_score(codes, y, 0, seed=0)
    score = lat.few_shot_score(codes, y, 6, seed=0)  # deterministic under the seed
    again = lat.few_shot_score(codes, y, 6, seed=0)
    assert (again.spearman, again.kendall) == (score.spearman, score.kendall)
    np.testing.assert_array_equal(again.model.weights, score.model.weights)
    assert score.n_train == 6 and score.n_test == 2


def test_model_round_trips_as_a_dict():
    model = lat.NB201LatencyModel(1.5, _weights(np.random.default_rng(7), True), True, True)
    back = lat.NB201LatencyModel.from_dict(model.to_dict())
    np.testing.assert_array_equal(back.weights, model.weights)
    assert (back.intercept, back.per_edge, back.effective) == (1.5, True, True)


def test_few_shot_on_the_real_table(data_kit):
    table = NB201Table(get_space("nb201"), data_kit / "nb201" / "nb201_table.csv.gz")
    columns = lat.latency_columns(table)
    assert len(columns) == 27 and all(c.startswith(("hwnb_", "help_")) for c in columns)
    codes, y = lat.table_latencies(table, "hwnb_fpga")
    assert codes.shape == (15625, 6)
    rhos = [lat.few_shot_score(codes, y, 20, seed=s).spearman for s in range(3)]
    assert min(rhos) > 0.99  # FPGA latency is additive in the ops (see docs/benchmarks.md)
