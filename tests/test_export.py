"""save_model / load_model round trips through a registered test space; ONNX export + ORT check."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from nasforge.arch import Arch
from nasforge.errors import ArchError, CheckpointError, ConfigError
from nasforge.export import ExportMismatchError, export_onnx, load_model, save_model
from nasforge.registry import register
from nasforge.spaces.base import SearchSpace


class TinyNet(nn.Module):
    def __init__(self, width: int, act: str, num_classes: int, in_channels: int, tied: bool, extra: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU() if act == "relu" else nn.GELU()
        )
        self.extra = nn.Conv2d(width, width, 1) if extra else None
        self.head = nn.Linear(width, num_classes)
        # Tied weights share storage; a transposed buffer is non-contiguous: safetensors needs care.
        self.head_copy = self.head if tied else None
        self.proj: Tensor
        self.register_buffer("proj", torch.arange(6.0).reshape(2, 3).t())

    def forward(self, x: Tensor) -> Any:
        h = self.stem(x)
        if self.extra is not None:
            h = self.extra(h)
        logits = self.head(h.mean((2, 3))) + self.proj.sum()
        return (logits, None) if not self.training else logits  # DARTS-style tuple in eval


@register("space", "test_export_tiny")
class TinySpace(SearchSpace):
    """One decision (width) and one space option (activation) so config() is exercised."""

    name: ClassVar[str] = "test_export_tiny"
    paper: ClassVar[str] = "test fixture"

    def __init__(self, act: str = "relu") -> None:
        self.act = act

    def config(self) -> dict[str, Any]:
        return {"act": self.act}

    def decisions(self) -> dict[str, tuple[str, ...]]:
        return {"width": ("4", "8")}

    def format(self, arch: Arch) -> str:
        return f"w{self.validate(arch)['width']}"

    def parse(self, text: str) -> Arch:
        if not text.startswith("w"):
            raise ArchError(f"expected w<width>, got {text!r}")
        return self.make({"width": text[1:]})

    def build(self, arch: Arch, *, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        return TinyNet(int(arch["width"]), self.act, num_classes, in_channels,
                       kwargs.get("tied", False), kwargs.get("extra", False))

    def supernet(self, **kwargs: Any) -> Any:
        raise NotImplementedError


KWARGS = {"num_classes": 5, "in_channels": 2, "tied": True}


def _trained_like(space: TinySpace, arch: Arch, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    net = space.build(arch, **kwargs)
    with torch.no_grad():  # move BN statistics off their defaults so they must be saved too
        net.train()(torch.randn(8, kwargs["in_channels"], 6, 6))
    return net.eval()


def _rewrite_json(path: Path, **changes: Any) -> None:
    record = json.loads((path / "model.json").read_text())
    record.update(changes)
    (path / "model.json").write_text(json.dumps(record))


def test_save_load_round_trip(tmp_path: Path) -> None:
    space = TinySpace(act="gelu")
    arch = space.parse("w8")
    net = _trained_like(space, arch, **KWARGS)
    out = save_model(net, tmp_path / "m", space=space, arch=arch, build_kwargs=KWARGS)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    record = json.loads((out / "model.json").read_text())
    assert record["space"] == "test_export_tiny" and record["space_config"] == {"act": "gelu"}
    assert record["arch"] == "w8" and record["build_kwargs"] == KWARGS and record["nasforge_version"]
    loaded: Any = load_model(out)
    assert isinstance(loaded, TinyNet) and isinstance(loaded.stem[2], nn.GELU)  # the space config was restored
    assert not loaded.training
    x = torch.randn(4, 2, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], net(x)[0])
    # tied weights stay usable after loading
    assert loaded.head_copy is not None
    assert torch.equal(loaded.head_copy.weight, loaded.head.weight)


def test_save_rejects_bad_inputs(tmp_path: Path) -> None:
    space = TinySpace()
    arch = space.parse("w4")
    net = space.build(arch)
    with pytest.raises(ConfigError, match="JSON"):
        save_model(net, tmp_path, space=space, arch=arch, build_kwargs={"act": object()})
    with pytest.raises(ArchError):
        save_model(net, tmp_path, space=space, arch=Arch("nb201", (("width", "4"),)), build_kwargs={})


def test_load_mismatches_are_named(tmp_path: Path) -> None:
    space = TinySpace()
    kwargs = {**KWARGS, "extra": True}
    net = _trained_like(space, space.parse("w4"), **kwargs)
    out = save_model(net, tmp_path / "m", space=space, arch=space.parse("w4"), build_kwargs=kwargs)

    _rewrite_json(out, build_kwargs={**kwargs, "extra": False})
    with pytest.raises(CheckpointError, match=r"missing keys \[\], unexpected keys \['extra.bias', 'extra.weight'\]"):
        load_model(out)
    _rewrite_json(out, build_kwargs={**kwargs, "tied": False})
    # the tied copy was saved under its own name; an untied model has no such module
    with pytest.raises(CheckpointError, match=r"unexpected keys \['head_copy.bias', 'head_copy.weight'\]"):
        load_model(out)
    _rewrite_json(out, build_kwargs=kwargs, arch="w8")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(out)
    _rewrite_json(out, arch="w4", format_version=7)
    with pytest.raises(CheckpointError, match="format_version 7"):
        load_model(out)
    _rewrite_json(out, format_version=1)
    load_model(out)  # back to the saved record: loads again

    (out / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(out)
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path / "empty")


def test_missing_keys_named(tmp_path: Path) -> None:
    space = TinySpace()
    net = _trained_like(space, space.parse("w4"), **KWARGS)
    out = save_model(net, tmp_path, space=space, arch=space.parse("w4"), build_kwargs=KWARGS)
    _rewrite_json(out, build_kwargs={**KWARGS, "extra": True})
    with pytest.raises(CheckpointError, match=r"missing keys \['extra.weight', 'extra.bias'\]"):
        load_model(out)


def test_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    import onnxruntime as ort

    space = TinySpace()
    net = _trained_like(space, space.parse("w8"), **KWARGS)
    net.train()
    path = export_onnx(net, tmp_path / "sub" / "model.onnx", (2, 6, 6))
    assert path.is_file() and net.training  # mode restored
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 2, 6, 6)  # another batch size than export and verification used
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = net.eval()(x)[0].numpy()
    assert got.shape == (7, 5)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


class BatchDependent(nn.Module):
    """Python control flow on the batch size: tracing freezes the branch taken at export."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc(x.flatten(1))
        return y if int(x.shape[0]) == 1 else y + 1.0


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the frozen branch is the point
def test_onnx_mismatch_and_missing_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExportMismatchError, match="differs from PyTorch"):
        export_onnx(BatchDependent(), tmp_path / "bad.onnx", (4,))
    assert export_onnx(BatchDependent(), tmp_path / "unchecked.onnx", (4,), verify=False).is_file()
    with pytest.raises(ConfigError, match="input_shape"):
        export_onnx(BatchDependent(), tmp_path / "x.onnx", (0, 4))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"pip install nasforge\[onnx\]"):
        export_onnx(BatchDependent(), tmp_path / "y.onnx", (4,))
