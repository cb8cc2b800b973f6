"""The energy model: analytic Horowitz counts per layer, the mobilenet energy table, ChamNet's GP predictor."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import nasforge
from nasforge.errors import ArchError, ConfigError
from nasforge.hardware.energy import (
    HOROWITZ_45NM,
    EnergyCosts,
    EnergyTable,
    fit_energy_predictor,
    layer_counts,
    load_measured_energies,
    network_energy,
)

TINY_SPACE: dict[str, Any] = {"preset": "cifar", "width_mult": 0.25, "kernels": [3, 5], "expansions": [1]}
SHAPE = (1, 8, 8)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Any:
    """One intra-op thread: the tiny forward passes run several times faster on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_horowitz_costs_are_the_45nm_figures() -> None:
    c = HOROWITZ_45NM
    assert (c.fp32_add_pj, c.fp32_mult_pj, c.sram_word_pj, c.dram_word_pj) == (0.9, 3.7, 5.0, 640.0)
    assert c.mac_pj == pytest.approx(4.6)
    with pytest.raises(ConfigError, match="dram_word_pj"):
        EnergyCosts(dram_word_pj=-1.0)


def test_a_single_conv_layer_by_hand() -> None:
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False))
    report = network_energy(net, (2, 4, 4))
    (layer,) = report.layers
    # 3 x 4 x 4 = 48 outputs, each 2 x 3 x 3 = 18 MACs; 54 weights; 32 words in, 48 out
    assert (layer.name, layer.kind, layer.macs, layer.weight_words, layer.read_words, layer.written_words) == (
        "0", "Conv2d", 864, 54, 32, 48)
    by_hand_pj = 864 * (3.7 + 0.9) + 54 * 640.0 + (32 + 48) * 5.0  # = 38934.4 pJ
    assert report.total_mj == pytest.approx(by_hand_pj * 1e-9, rel=1e-12)
    assert report.total_mj == pytest.approx(3.89344e-5, rel=1e-12)
    assert report.compute_mj + report.memory_mj == pytest.approx(report.total_mj, rel=1e-12)
    assert (report.weight_bytes, report.activation_bytes_read, report.activation_bytes_written) == (216, 128, 192)
    # a grouped conv with bias: MACs divide by the groups, the bias is read as weights
    grouped = network_energy(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, groups=2)), (2, 4, 4)).layers[0]
    assert (grouped.macs, grouped.weight_words) == (4 * 16 * 1 * 9, 4 * 1 * 9 + 4)


def test_energy_grows_with_macs_and_memory() -> None:
    def energy(c_out: int, size: int) -> Any:
        return network_energy(nn.Sequential(nn.Conv2d(4, c_out, 3, padding=1, bias=False)), (4, size, size))

    small, wide, large_input = energy(4, 8), energy(8, 8), energy(4, 16)
    assert wide.macs == 2 * small.macs and wide.weight_bytes == 2 * small.weight_bytes
    assert large_input.macs == 4 * small.macs and large_input.weight_bytes == small.weight_bytes
    assert large_input.activation_bytes_read == 4 * small.activation_bytes_read
    assert small.total_mj < wide.total_mj and small.total_mj < large_input.total_mj
    # each cost term moves the total in its own direction only
    pricier_dram = network_energy(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False)), (4, 8, 8),
                                  EnergyCosts(dram_word_pj=1280.0))
    extra_pj = small.weight_bytes / 4 * 640.0
    assert pricier_dram.total_mj - small.total_mj == pytest.approx(extra_pj * 1e-9, rel=1e-9)


def test_element_wise_layers_move_data_and_aliases_move_nothing() -> None:
    net = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Identity(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(12, 5))
    layers = layer_counts(net, (3, 2, 2))
    assert [layer.kind for layer in layers] == ["BatchNorm2d", "ReLU", "Linear"]
    bn, relu, linear = layers
    assert (bn.macs, bn.weight_words, bn.read_words, bn.written_words) == (0, 4 * 3, 12, 12)  # weight, bias, mean, var
    assert (relu.macs, relu.weight_words, relu.read_words, relu.written_words) == (0, 0, 12, 12)
    assert (linear.macs, linear.weight_words, linear.read_words, linear.written_words) == (60, 65, 12, 5)
    assert net.training  # the mode is restored


def test_the_mobilenet_energy_table_is_the_analytic_model_of_each_network() -> None:
    space = nasforge.get_space("mobilenet", **TINY_SPACE)
    table = EnergyTable.build(space, SHAPE, num_classes=10)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(4)]
    for arch in archs:
        direct = network_energy(space.build(arch, num_classes=10, in_channels=1), SHAPE).total_mj
        assert table.predict(arch) == pytest.approx(direct, rel=1e-9)
    least, least_mj = table.least_energy()
    assert least_mj == pytest.approx(table.predict(least))
    assert all(least_mj <= table.predict(space.sample(rng)) for _ in range(30))
    # a skipped layer costs nothing; a 5x5 block more than its 3x3 twin
    layer = next(d for d, opts in space.decisions().items() if "skip" in opts)
    assert table.block_mj[layer]["skip"] == 0.0 < table.block_mj[layer]["ir_k3_e1"] < table.block_mj[layer]["ir_k5_e1"]
    with pytest.raises(ConfigError, match="mobilenet"):
        EnergyTable.build(nasforge.get_space("nb201"), SHAPE, num_classes=10)


def test_gp_energy_predictor_fits_synthetic_measurements(tmp_path: Path) -> None:
    space = nasforge.get_space("mobilenet", **TINY_SPACE)
    rng = random.Random(1)
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(70)))
    weight = {o: w for o, w in (("skip", 0.0), ("ir_k3_e1", 1.0), ("ir_k5_e1", 2.5))}
    truth = {a: 3.0 + sum(weight[o] for o in a.values()) for a in archs}  # synthetic "measured" mJ
    train, held = archs[:50], archs[50:]
    predictor = fit_energy_predictor(space, {space.format(a): truth[a] for a in train}, seed=0)
    mean, std = predictor.predict_many(held, return_std=True)
    assert np.corrcoef(mean, [truth[a] for a in held])[0, 1] > 0.95
    assert np.all(std >= 0) and predictor.predict(held[0]) == pytest.approx(mean[0])
    assert predictor.archs == train  # fitted on exactly the given measurements
    # the same measurements from a JSON file
    path = tmp_path / "energy.json"
    path.write_text(json.dumps({"energies_mj": {space.format(a): truth[a] for a in train}}))
    assert load_measured_energies(path) == {space.format(a): truth[a] for a in train}
    # typed errors naming the bad value
    first = space.format(train[0])
    with pytest.raises(ConfigError, match=r"finite number > 0 \(mJ\), got -1"):
        fit_energy_predictor(space, {first: -1.0, space.format(train[1]): 2.0})
    with pytest.raises(ConfigError, match="at least 2 distinct"):
        fit_energy_predictor(space, {first: 1.0})
    with pytest.raises(ArchError):
        fit_energy_predictor(space, {"not an arch": 1.0, first: 2.0})
    with pytest.raises(ConfigError, match="does not exist"):
        load_measured_energies(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_measured_energies(tmp_path / "bad.json")
