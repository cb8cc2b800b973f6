"""The NB201 one-shot protocol script's option tables and the differential harness's shared data feed.

``benchmarks/nb201_oneshot.py --paper-budget`` is the command meant for the day a GPU is lent:
its options must build a valid config for every method and variant now, not fail after hours.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from nasforge import registry
from nasforge.train.oneshot import OneShotMethod, make_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
import _xautodl_nb201 as X  # noqa: E402
import nb201_oneshot as protocol  # noqa: E402

ONE_SHOT = sorted(n for n in registry.names("method") if isinstance(registry.get("method", n), OneShotMethod))
METHODS = ONE_SHOT + sorted(protocol.VARIANTS)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_and_variant_has_valid_options_under_both_budgets(method: str) -> None:
    name = protocol.VARIANTS.get(method, method)
    record = registry.get("method", name)
    if "nb201" not in record.spaces:
        pytest.skip(f"{name} does not search nb201")
    reduced = make_config(record.config_cls, protocol.method_options(method, 10, 64, 8, 1), name)
    assert getattr(reduced, "epochs", 10) == 10 or name in ("dso_nas", "p_darts")
    paper = make_config(record.config_cls, protocol.paper_options(method), name)
    if name == "gdas":
        assert (paper.epochs, paper.batch_size) == (250, 64)  # xautodl GDAS.config
    if name == "darts":
        assert (paper.epochs, paper.weight_decay, paper.nesterov) == (50, 5e-4, True)  # xautodl DARTS.config
    if name == "rsps":
        assert (paper.epochs, paper.num_samples, paper.eval_batch_size) == (250, 100, 512)  # RANDOM.config


def test_snas_variants_are_the_reference_schedule_and_penalty() -> None:
    assert protocol.PROTOCOL_OPTIONS["snas_t150"] == {"tau_epochs": 150}
    ref = protocol.PROTOCOL_OPTIONS["snas_ref"]
    assert (ref["resource_form"], ref["resource_estimator"], ref["resource_weight"]) == ("log", "reparametrization", 1.5e-3)


def test_xautodl_names_of_the_supernet() -> None:
    assert X.xautodl_key("cells.1.edges.edge_3_2.candidates.nor_conv_3x3.1.weight") == "cells.1.edges.3<-2.3.op.1.weight"
    assert X.xautodl_key("cells.2.conv_a.1.weight") == "cells.2.conv_a.op.1.weight"
    assert X.xautodl_key("stem.0.weight") == "stem.0.weight"


def test_search_data_gives_both_sides_the_same_batches(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    blob = {
        "train_x": torch.randint(0, 256, (130, 32, 32, 3), dtype=torch.uint8, generator=g),
        "train_y": torch.randint(0, 10, (130,), generator=g),
        "valid_x": torch.randint(0, 256, (70, 32, 32, 3), dtype=torch.uint8, generator=g),
        "valid_y": torch.randint(0, 10, (70,), generator=g),
    }
    torch.save(blob, tmp_path / "d.pt")
    a, b = X.SearchData(str(tmp_path / "d.pt"), 3, 64), X.SearchData(str(tmp_path / "d.pt"), 3, 64)
    assert a.steps == 2
    for (i, ta, va), (j, tb, vb) in zip(a.epoch(1), b.epoch(1)):
        assert i == j and torch.equal(ta[0], tb[0]) and torch.equal(va[1], vb[1])
    first = [t[1] for _, t, _ in a.epoch(0)]
    other = [t[1] for _, t, _ in a.epoch(1)]
    assert not all(torch.equal(x, y) for x, y in zip(first, other))  # a new order every epoch
    # an epoch visits distinct training images (a permutation), augmented copies of them
    _, (x, _), _ = next(a.epoch(0))
    assert x.shape == (64, 3, 32, 32) and torch.isfinite(x).all()
