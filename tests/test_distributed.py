"""Data-parallel one-shot search: 2 real torchrun processes on gloo against the one-process twin.

The twin (``NASFORGE_SIMULATE_RANKS=2``) computes every global batch as the same 2 shards in one
process (BN per shard, gradients accumulated); see :mod:`nasforge.train.distributed` for why a
run over whole batches is not the reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

import nasforge
from _oneshot import make_ctx
from nasforge.errors import ConfigError
from nasforge.experiment import SearchConfig
from nasforge.train import distributed
from nasforge.train.bilevel import arch_step, weight_step

TINY = ["--space", "nb201", "--supernet-opt", "C=4", "--supernet-opt", "N=1", "--supernet-opt", "affine=false",
        "--supernet-opt", "track_running_stats=false", "--method-opt", "batch_size=16", "--epochs", "2",
        "--max-batches-per-epoch", "3", "--checkpoint-every", "2", "--no-final-train", "--no-progress"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", distributed.SIMULATE_ENV)}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def _search(out: Path, method: list[str], *, ranks: int, simulate: bool = False) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    launcher = TORCHRUN if ranks > 1 and not simulate else [sys.executable]
    env = _env(**({distributed.SIMULATE_ENV: str(ranks)} if simulate else {}))
    proc = subprocess.run([*launcher, "-m", "nasforge", "search", "--method", *method, *TINY, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc, json.loads((out / "results.json").read_text())


def _max_diff(a: dict[str, list[float]], b: dict[str, list[float]]) -> float:
    assert a.keys() == b.keys()
    return max(abs(x - y) for k in a for x, y in zip(a[k], b[k], strict=True))


def _check_ddp_equals_twin(tmp_path: Path, method: list[str]) -> None:
    proc, ddp = _search(tmp_path / "ddp", method, ranks=2)
    _, twin = _search(tmp_path / "twin", method, ranks=2, simulate=True)
    info = ddp["info"]["data_parallel"]
    assert info["world_size"] == 2 and info["backend"] == "gloo"
    assert len(info["rank_archs"]) == 2 and len(set(info["rank_archs"])) == 1  # every rank derived the same cell
    assert info["max_strength_diff_across_ranks"] == 0.0
    assert twin["info"]["data_parallel"] == {"world_size": 2, "backend": "simulated"}
    assert ddp["best"]["arch"] == twin["best"]["arch"] == info["rank_archs"][0]
    assert _max_diff(ddp["strengths"], twin["strengths"]) < 1e-6
    for a, b in zip(ddp["history"], twin["history"], strict=True):
        assert a.keys() == b.keys() and "train_loss" in a
        for key in a.keys() - {"seconds"}:
            assert a[key] == (pytest.approx(b[key], rel=1e-5, abs=1e-6) if isinstance(a[key], float) else b[key])
    # rank 0 alone wrote the run directory and printed the summary
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["config.json", "results.json", "search"]
    assert {p.name for p in (tmp_path / "ddp" / "search").iterdir()} <= {"search.pt", "search.prev.pt"}
    assert (proc.stdout + proc.stderr).count("run directory:") == 1
    assert proc.stdout.count("epoch 1:") == 1


def test_ddp_darts_second_order_equals_the_one_process_twin(tmp_path: Path) -> None:
    _check_ddp_equals_twin(tmp_path, ["darts", "--method-opt", "order=2"])


def test_ddp_gdas_gumbel_samples_agree_and_equal_the_twin(tmp_path: Path) -> None:
    _check_ddp_equals_twin(tmp_path, ["gdas"])


@pytest.mark.slow
@pytest.mark.parametrize("method", [["darts"], ["pc_darts", "--method-opt", "partial_channels=2", "--method-opt", "warmup_epochs=1"]])
def test_ddp_more_methods_equal_the_twin(tmp_path: Path, method: list[str]) -> None:
    _check_ddp_equals_twin(tmp_path, method)


@pytest.mark.slow
def test_ddp_rerun_resumes_from_rank_zeros_checkpoint(tmp_path: Path) -> None:
    _, first = _search(tmp_path / "ddp", ["darts"], ranks=2)
    proc, again = _search(tmp_path / "ddp", ["darts"], ranks=2)
    assert "resuming the search" in proc.stdout
    assert again["strengths"] == first["strengths"] and again["best"] == first["best"]


# ---- in one process ----------------------------------------------------------------------------


def test_simulated_shards_equal_gradient_accumulation_by_hand() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 4, (8,))
    net(x)  # materialise the lazy layer

    class PathNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.alpha = torch.nn.Parameter(torch.zeros(()))

        def forward(self, inp: torch.Tensor, path: Mapping[str, Any]) -> torch.Tensor:
            return self.net(inp) * (1 + path["a"])

    model = PathNet()
    loss_fn = torch.nn.functional.cross_entropy
    expected = [torch.zeros_like(p) for p in net.parameters()]
    for xs, ys in zip(x.split(4), y.split(4)):  # BN per half, loss averaged over the halves
        for e, g in zip(expected, torch.autograd.grad(loss_fn(model(xs, {"a": model.alpha}), ys) / 2, list(net.parameters()))):
            e += g
    w_opt = torch.optim.SGD(net.parameters(), lr=0.0)
    a_opt = torch.optim.SGD([model.alpha], lr=0.0)
    with distributed.simulate(2):
        loss, logits = weight_step(model, {"a": model.alpha.detach()}, (x, y), w_opt, loss_fn=loss_fn, grad_clip=None, where="w")
        for p, e in zip(net.parameters(), expected):
            assert p.grad is not None and torch.allclose(p.grad, e, atol=1e-7)
        arch_step(model, lambda: {"a": model.alpha}, (x, y), a_opt, loss_fn=loss_fn, where="a")
        with pytest.raises(ConfigError, match="cannot be split evenly between 2 ranks"):
            weight_step(model, {"a": model.alpha.detach()}, (x[:7], y[:7]), w_opt, loss_fn=loss_fn, grad_clip=None, where="w")
    assert distributed.active() is None
    assert logits.shape == (8, 4) and model.alpha.grad is not None
    with torch.no_grad():  # lr 0: the weights are unchanged
        halves = sum(float(loss_fn(model(xs, {"a": model.alpha}), ys)) / 2 for xs, ys in zip(x.split(4), y.split(4)))
        whole = float(loss_fn(model(x, {"a": model.alpha}), y))
    assert loss == pytest.approx(halves, rel=1e-6)
    assert abs(loss - whole) > 1e-6  # BN over the whole batch differs: the halves are the reference


def test_methods_without_data_parallel_support_refuse(splits: Any) -> None:
    with distributed.simulate(2), pytest.raises(ConfigError, match="snas does not run data-parallel.*darts, gdas, pc_darts"):
        nasforge.registry.get("method", "snas")(make_ctx(splits))


def test_multi_trial_search_refuses_torchrun(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="multi-trial method 'random' does not run under torchrun"):
        SearchConfig(method="random", out=str(tmp_path)).validate()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv(distributed.SIMULATE_ENV, "0")
    with pytest.raises(ConfigError, match="NASFORGE_SIMULATE_RANKS must be an integer >= 1"):
        distributed.setup("cpu")
