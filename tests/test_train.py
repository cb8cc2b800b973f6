"""Training loop, recipes and checkpoints on tiny conv nets and the sklearn 8x8 digits."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from nasforge.errors import BudgetError, CheckpointError, ConfigError, UnknownNameError
from nasforge.train import (
    RECIPES,
    Recipe,
    TrainingDivergedError,
    evaluate,
    get_recipe,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    train,
)

# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[TensorDataset, TensorDataset]:
    x, y = load_digits(return_X_y=True)
    xt = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    xt = (xt - xt.mean()) / xt.std()
    yt = torch.tensor(y, dtype=torch.int64)
    return TensorDataset(xt[:480], yt[:480]), TensorDataset(xt[480:640], yt[480:640])


class TinyNet(nn.Module):
    """conv-BN-ReLU-pool-dropout-linear; optional auxiliary head, drop-path attribute, NaN switch."""

    def __init__(self, *, aux: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(dropout)
        )
        self.head = nn.Linear(12 * 16, 10)
        self.aux = aux
        self.poison = False  # when set, the output becomes NaN (divergence test)
        self.drop_path_prob = 0.0  # set by train() each epoch, as in DARTS
        self.train_calls = 0

    def forward(self, x: Tensor) -> Any:
        logits = self.head(self.features(x))
        if self.poison:
            logits = logits * float("nan")
        if self.training:
            self.train_calls += 1
        if self.aux:
            # A parameter-free auxiliary head (CE = log 10) so its effect on the loss is known exactly.
            return logits, (torch.zeros_like(logits) if self.training else None)
        return logits


def make_net(seed: int = 0, **kwargs: Any) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**kwargs)


def quick(**overrides: Any) -> Recipe:
    return get_recipe("quick", **{"epochs": 3, "batch_size": 64, **overrides})


class Stop(Exception):
    pass


# ---- recipes --------------------------------------------------------------------------------


def test_presets_match_papers() -> None:
    nb = RECIPES["nb201"]
    assert (nb.epochs, nb.batch_size, nb.lr, nb.lr_min, nb.momentum, nb.nesterov, nb.weight_decay) == (
        200, 256, 0.1, 0.0, 0.9, True, 5e-4,
    )
    assert (nb.crop_padding, nb.flip, nb.cutout) == (4, True, 0)
    d = RECIPES["darts"]
    assert (d.epochs, d.batch_size, d.lr, d.weight_decay, d.nesterov) == (600, 96, 0.025, 3e-4, False)
    assert (d.cutout, d.auxiliary_weight, d.drop_path_prob, d.grad_clip) == (16, 0.4, 0.2, 5.0)
    q = RECIPES["quick"]
    assert (q.lr, q.nesterov, q.batch_size, q.epochs, q.crop_padding, q.flip, q.cutout) == (0.05, True, 64, 10, 0, False, 0)


def test_get_recipe_overrides_and_errors() -> None:
    r = get_recipe("darts", epochs=5, batch_size=8)
    assert (r.epochs, r.batch_size, r.lr) == (5, 8, 0.025)
    assert RECIPES["darts"].epochs == 600  # presets are not modified
    with pytest.raises(UnknownNameError, match="nb201"):
        get_recipe("imagenet")
    with pytest.raises(ConfigError, match="weight_decay"):  # the valid fields are listed
        get_recipe("quick", wd=1e-4)
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(ConfigError, match="unknown recipe field"):
        Recipe.from_dict({"epochz": 3})


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("epochs", 0, BudgetError),
        ("batch_size", -1, BudgetError),
        ("max_batches_per_epoch", 0, BudgetError),
        ("lr", 0.0, ConfigError),
        ("lr", float("nan"), ConfigError),
        ("lr_min", 1.0, ConfigError),  # above lr
        ("label_smoothing", 1.5, ConfigError),
        ("drop_path_prob", -0.1, ConfigError),
        ("momentum", 1.0, ConfigError),
        ("grad_clip", 0.0, ConfigError),
        ("cutout", -2, ConfigError),
        ("flip", "yes", ConfigError),
        ("epochs", 2.5, ConfigError),
    ],
)
def test_recipe_validation(field: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=field):
        get_recipe("quick", **{field: value})


# ---- training -------------------------------------------------------------------------------


def test_loss_decreases_and_eval(digits: tuple[TensorDataset, TensorDataset]) -> None:
    train_set, test_set = digits
    net = make_net()
    result = train(net, train_set, quick(epochs=5, label_smoothing=0.1), eval_set=test_set)
    losses = [h["train_loss"] for h in result.history]
    assert len(result.history) == 5 and result.resumed_from is None
    assert losses[-1] < losses[0] * 0.6
    assert result.final["acc"] > 70.0 and result.final == {
        "loss": result.history[-1]["eval_loss"], "acc": result.history[-1]["eval_acc"],
    }
    # cosine schedule: lr of epoch e = lr/2 (1 + cos(pi e / E))
    for h in result.history:
        assert h["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * h["epoch"] / 5)))
    net.train()
    metrics = evaluate(net, test_set, batch_size=50)
    assert net.training  # mode restored
    assert metrics["acc"] == pytest.approx(result.final["acc"]) and metrics["loss"] == pytest.approx(result.final["loss"])


def _strip_seconds(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_resume_reproduces_uninterrupted_run(digits: tuple[TensorDataset, TensorDataset], tmp_path: Path) -> None:
    train_set, test_set = digits
    # Augmentation, dropout and momentum all carry state that a resume has to restore.
    recipe = quick(epochs=4, crop_padding=1, flip=True, cutout=2, grad_clip=1.0)
    straight = make_net(dropout=0.3)
    full = train(straight, train_set, recipe, eval_set=test_set, checkpoint_dir=tmp_path / "a", seed=3)

    def stop_after_two(record: dict[str, Any]) -> None:
        if record["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train(make_net(dropout=0.3), train_set, recipe, eval_set=test_set, checkpoint_dir=tmp_path / "b", seed=3,
              on_epoch=stop_after_two)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    # Scramble the global RNGs and start from other weights: the checkpoint must restore both.
    torch.rand(1000), np.random.rand(10), random.random()
    resumed_net = make_net(seed=99, dropout=0.3)
    resumed = train(resumed_net, train_set, recipe, eval_set=test_set, checkpoint_dir=tmp_path / "b", seed=3)
    assert resumed.resumed_from == 2
    assert _strip_seconds(resumed.history) == _strip_seconds(full.history)
    a, b = straight.state_dict(), resumed_net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A finished run resumes to a no-op that still reports the history.
    again = train(make_net(dropout=0.3), train_set, recipe, eval_set=test_set, checkpoint_dir=tmp_path / "b", seed=3)
    assert again.resumed_from == 4 and _strip_seconds(again.history) == _strip_seconds(full.history)
    assert again.final == full.final


def test_meta_mismatch_raises(digits: tuple[TensorDataset, TensorDataset], tmp_path: Path) -> None:
    train_set, _ = digits
    recipe = quick(epochs=1, max_batches_per_epoch=1)
    train(make_net(), train_set, recipe, checkpoint_dir=tmp_path, meta={"arch": "a|b"})
    with pytest.raises(CheckpointError, match=r"'arch' is 'a\|b' in the file, expected 'c\|d'"):
        train(make_net(), train_set, recipe, checkpoint_dir=tmp_path, meta={"arch": "c|d"})
    with pytest.raises(CheckpointError, match="recipe"):
        train(make_net(), train_set, quick(epochs=2), checkpoint_dir=tmp_path, meta={"arch": "a|b"})
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(tmp_path / "last.pt", expect={"format_version": 999})


def test_corrupt_or_missing_checkpoint(digits: tuple[TensorDataset, TensorDataset], tmp_path: Path) -> None:
    train_set, _ = digits
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"definitely not a zip file")
    with pytest.raises(CheckpointError, match="last.pt"):
        train(make_net(), train_set, quick(epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    save_checkpoint(tmp_path / "list.pt", {"x": 1})
    with pytest.raises(CheckpointError, match="no meta"):
        load_checkpoint(tmp_path / "list.pt", expect={"arch": "a"})


def test_nan_loss_raises_and_keeps_last_good_checkpoint(digits: tuple[TensorDataset, TensorDataset], tmp_path: Path) -> None:
    train_set, _ = digits
    net = make_net()

    def poison(record: dict[str, Any]) -> None:
        net.poison = True

    with pytest.raises(TrainingDivergedError, match="epoch 1 batch 0") as info:
        train(net, train_set, quick(epochs=3), checkpoint_dir=tmp_path, on_epoch=poison)
    assert str(tmp_path / "last.pt") in str(info.value)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 0 and len(state["history"]) == 1
    fresh = make_net(seed=5)
    fresh.load_state_dict(state["model"])
    assert all(torch.isfinite(p).all() for p in fresh.parameters())


def test_auxiliary_loss_added(digits: tuple[TensorDataset, TensorDataset]) -> None:
    train_set, test_set = digits
    plain = train(make_net(aux=True), train_set, quick(epochs=1), eval_set=test_set)
    weighted = train(make_net(aux=True), train_set, quick(epochs=1, auxiliary_weight=0.4), eval_set=test_set)
    # The auxiliary head has no parameters, so training is identical and only the objective moves.
    diff = weighted.history[0]["train_loss"] - plain.history[0]["train_loss"]
    assert diff == pytest.approx(0.4 * math.log(10), abs=1e-5)
    assert weighted.final == plain.final  # eval mode returns (logits, None), handled


def test_drop_path_schedule_and_batch_cap(digits: tuple[TensorDataset, TensorDataset]) -> None:
    train_set, _ = digits
    net = make_net()
    seen: list[float] = []
    train(net, train_set, quick(epochs=4, drop_path_prob=0.2, max_batches_per_epoch=2),
          on_epoch=lambda r: seen.append(net.drop_path_prob))
    assert seen == pytest.approx([0.0, 0.05, 0.1, 0.15])  # DARTS: p * epoch / epochs
    assert net.train_calls == 4 * 2


def test_checkpoint_every_and_no_temp_files(digits: tuple[TensorDataset, TensorDataset], tmp_path: Path) -> None:
    train_set, _ = digits
    epochs_on_disk: list[int] = []
    ckpt = tmp_path / "last.pt"
    train(make_net(), train_set, quick(epochs=3, max_batches_per_epoch=1), checkpoint_dir=tmp_path, checkpoint_every=2,
          progress=True,
          on_epoch=lambda r: epochs_on_disk.append(load_checkpoint(ckpt)["epoch"] if ckpt.exists() else -1))
    assert epochs_on_disk == [-1, 1, 2]  # every 2nd epoch, and always the last
    assert sorted(os.listdir(tmp_path)) == ["last.prev.pt", "last.pt"]  # the last two, no temporary files
    with pytest.raises(BudgetError, match="checkpoint_every"):
        train(make_net(), train_set, quick(epochs=1), checkpoint_every=0)


def test_failed_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"meta": {"arch": "x"}, "w": torch.ones(3)})
    with pytest.raises(Exception):  # noqa: B017 - torch.save cannot pickle a lambda
        save_checkpoint(path, {"meta": {"arch": "y"}, "f": lambda: 0})
    assert os.listdir(tmp_path) == ["ck.pt"]
    assert load_checkpoint(path, expect={"arch": "x"})["w"].tolist() == [1.0, 1.0, 1.0]


def test_rng_state_round_trip(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": get_rng_state()})
    first = (random.random(), np.random.randn(), float(torch.rand(1)))
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])  # weights_only=True load
    assert (random.random(), np.random.randn(), float(torch.rand(1))) == first
    with pytest.raises(CheckpointError, match="RNG"):
        set_rng_state({"python": {}})


def test_ctrl_c_during_a_checkpoint_write_is_delivered_after_the_file_is_complete(tmp_path, monkeypatch):
    """SIGINT inside torch.save used to surface as the zip writer's RuntimeError; it now waits
    until the checkpoint is renamed into place and then raises KeyboardInterrupt."""
    import os
    import signal

    import torch

    from nasforge.train.checkpoint import load_checkpoint, save_checkpoint

    real_save = torch.save

    def save_with_interrupt(obj, f):  # the signal arrives in the middle of the write
        os.kill(os.getpid(), signal.SIGINT)
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_with_interrupt)
    # Python's own Ctrl-C handler, whatever an earlier test of the session left installed
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    path = tmp_path / "c.pt"
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(path, {"w": torch.arange(10000.0), "meta": {"step": 3}})
    finally:
        signal.signal(signal.SIGINT, old)
    assert load_checkpoint(path)["meta"]["step"] == 3
