"""nasforge's DARTS and GDAS steps equal xautodl's NB201 reference code, from the same starting point.

The reference side was run once in the peers venv and stored as text
(``benchmarks/peers/nb201_parity.py --write-fixture tests/data/xautodl_nb201_parity.json``):
xautodl 1.0.0's ``TinyNetworkDarts`` / ``TinyNetworkGDAS`` loaded with nasforge's initial weights,
the same architecture parameters, batches and Gumbel noise, one step of each search loop. These
tests recompute nasforge's side (library policies, ``weight_step`` and ``arch_step``) and compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
import _xautodl_nb201 as X  # noqa: E402
import nb201_parity as parity  # noqa: E402

FIXTURE = ROOT / "tests" / "data" / "xautodl_nb201_parity.json"
TOL = 1e-5


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data = json.loads(FIXTURE.read_text())
    assert data["setup"] == parity.SETUP, "fixture written for another set-up: rerun nb201_parity.py --write-fixture"
    return data["reference"]


@pytest.fixture(scope="module")
def inputs() -> dict[str, Any]:
    return parity.make_inputs(parity.SETUP)


def rel(ours: Any, ref: Any) -> float:
    """Largest relative difference; name -> tensor dicts are compared by digest (sums, sums of squares
    and leading values, each part normalised by its own largest magnitude)."""
    if isinstance(ours, dict):
        mine = torch.tensor([parity.digest(ours[name]) for name in ref], dtype=torch.float64)
        theirs = torch.tensor([ref[name] for name in ref], dtype=torch.float64)
        parts = (slice(0, 1), slice(1, 2), slice(2, None))
        return max(float((mine[:, p] - theirs[:, p]).abs().max() / theirs[:, p].abs().max().clamp_min(1e-12))
                   for p in parts)
    a, b = ours.double(), torch.tensor(ref, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_every_nasforge_weight_has_its_xautodl_counterpart(reference: dict[str, Any], inputs: dict[str, Any]) -> None:
    names = {X.xautodl_key(k) for k, _ in inputs["net"].named_parameters()}
    theirs = set(reference["gdas_weights1"])
    assert names <= theirs
    # what xautodl has beyond ours: only the biases of the affine-free search convs (cancelled by BN)
    assert all(k.endswith(".bias") and ".edges." in k for k in theirs - names)


@pytest.mark.parametrize("kind", ["darts", "gdas_ref"])
def test_one_search_step_equals_the_reference(kind: str, reference: dict[str, Any], inputs: dict[str, Any]) -> None:
    ours = parity.nasforge_step(kind, inputs)
    tag = "darts" if kind == "darts" else "gdas"
    for q in parity.QUANTITIES:
        ref = reference[f"{tag}_{q}"]
        if isinstance(ref, dict):  # xautodl's extra conv biases are not ours
            ref = {k: v for k, v in ref.items() if k in ours[q]}
        assert rel(ours[q], ref) <= TOL, (kind, q, rel(ours[q], ref))


def test_default_gdas_gradient_differs_from_the_reference_only_in_the_architecture_gradient(
    reference: dict[str, Any], inputs: dict[str, Any],
) -> None:
    """The documented deviation: by default unselected ops get no gradient term; all else is equal."""
    ours = parity.nasforge_step("gdas", inputs)
    for q in ("logits0", "w_grad", "weights1"):
        ref = reference[f"gdas_{q}"]
        if isinstance(ref, dict):
            ref = {k: v for k, v in ref.items() if k in ours[q]}
        assert rel(ours[q], ref) <= TOL, q
    assert rel(ours["alpha_grad0"], reference["gdas_alpha_grad0"]) > 0.1


def test_replayed_gumbel_noise_gives_the_references_sample(inputs: dict[str, Any]) -> None:
    """``HardGumbelPolicy(noise=...)`` reproduces xautodl's one-hot draw from the same noise."""
    policy = parity.make_policy("gdas", inputs["net"], inputs)
    noise = X.gumbel_noise(123)
    path = policy({key: noise[i] for i, key in enumerate(X.EDGE_NAMES)})
    # xautodl: index = softmax((log_softmax(alpha) + G) / tau).argmax(-1)
    expected = ((inputs["alpha"].log_softmax(-1) + noise) / parity.SETUP["tau"]).softmax(-1).argmax(-1)
    got = torch.stack([path[k].detach().argmax() for k in X.EDGE_NAMES])
    assert torch.equal(got, expected)
    from nasforge.errors import ConfigError

    with pytest.raises(ConfigError, match="does not match"):
        policy({key: torch.zeros(3) for key in X.EDGE_NAMES})
    with pytest.raises(ConfigError, match="lacks choice keys"):
        policy({X.EDGE_NAMES[0]: noise[0]})
