"""Export a trained network: safetensors weights + a JSON recipe to rebuild it, and ONNX.

:func:`save_model` writes two files into a directory:

* ``model.safetensors`` — the state dict (safetensors holds only tensors, so loading it can
  never run code, unlike a pickle);
* ``model.json`` — the space name, its ``config()``, the architecture in the space's own text
  form, the ``build`` keyword arguments and the nasforge version.

:func:`load_model` rebuilds the network from those: ``get_space(name, **config)`` ->
``space.parse(text)`` -> ``space.build(arch, **build_kwargs)`` and loads the weights strictly.
:func:`export_onnx` writes an ONNX graph with a dynamic batch axis and, by default, checks it
against PyTorch with ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from nasforge.errors import CheckpointError, ConfigError, NasforgeError
from nasforge.train.checkpoint import atomic_write, load_state_dict_strict

if TYPE_CHECKING:
    from nasforge.arch import Arch
    from nasforge.spaces.base import SearchSpace

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
MODEL_FORMAT_VERSION = 1


class ExportMismatchError(NasforgeError, RuntimeError):
    """The exported ONNX graph does not reproduce the PyTorch model's outputs."""


def save_model(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    space: SearchSpace,
    arch: Arch,
    build_kwargs: dict[str, Any],
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``out_dir`` (created if needed).

    Args:
        model: the network built by ``space.build(arch, **build_kwargs)`` (trained or not).
        out_dir: target directory.
        space: the space ``arch`` belongs to.
        arch: the architecture of ``model``.
        build_kwargs: the keyword arguments ``model`` was built with (``num_classes``,
            ``in_channels``...); must be JSON-serialisable.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ArchError: ``arch`` is not a member of ``space``.
        ConfigError: ``build_kwargs`` or the space config cannot be written as JSON.
    """
    from safetensors.torch import save

    import nasforge

    out = Path(out_dir)
    arch_text = space.format(space.validate(arch))
    record = {
        "format_version": MODEL_FORMAT_VERSION,
        "space": space.name,
        "space_config": space.config(),
        "arch": arch_text,
        "build_kwargs": dict(build_kwargs),
        "nasforge_version": nasforge.__version__,
        "weights": WEIGHTS_FILE,
    }
    try:
        text = json.dumps(record, indent=2, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"build_kwargs and the space config must be JSON-serialisable: {e}") from None
    # safetensors refuses tensors that share storage (tied weights) or are non-contiguous
    # views: give each entry its own contiguous CPU copy.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    blob = save(tensors, metadata={"format": "pt", "space": space.name, "arch": arch_text})
    # Serialise in memory and write atomically, like checkpoints: an interrupted save never
    # leaves a truncated weights file behind.
    with atomic_write(out / WEIGHTS_FILE) as f:
        f.write(blob)
    # The JSON goes last: a directory with model.json always has the matching weights.
    with atomic_write(out / META_FILE, "w") as f:
        f.write(text + "\n")
    return out


def load_model(out_dir: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network saved by :func:`save_model` and load its weights (eval mode).

    Args:
        out_dir: the directory :func:`save_model` wrote.
        device: where the returned model lives.

    Raises:
        CheckpointError: ``model.json`` or the weights are missing or unreadable, or the
            weights do not fit the rebuilt network (missing / unexpected keys are named).
        UnknownNameError: the saved space is not registered in this installation.
        ArchError: the saved architecture does not parse in the space.
    """
    from safetensors.torch import load_file

    import nasforge

    src = Path(out_dir)
    meta_path = src / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path} does not exist (not a directory written by save_model)")
    try:
        record = json.loads(meta_path.read_text())
        name, config, arch_text = str(record["space"]), dict(record["space_config"]), str(record["arch"])
        build_kwargs = dict(record["build_kwargs"])
        weights_name = str(record.get("weights", WEIGHTS_FILE))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{meta_path} is not a valid model record: {e!r}") from None
    version = record.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{meta_path} has format_version {version!r}, expected {MODEL_FORMAT_VERSION}")
    weights_path = src / Path(weights_name).name  # never follow a path out of the directory
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} does not exist")
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own SafetensorError for damaged files
        raise CheckpointError(f"{weights_path} is corrupt or not a safetensors file: {e}") from None

    space = nasforge.get_space(name, **config)
    model: nn.Module = space.build(space.parse(arch_text), **build_kwargs)
    load_state_dict_strict(model, state, source=weights_path)
    return model.to(device).eval()


class _LogitsOnly(nn.Module):
    """Export only the logits of nets that return ``(logits, aux)`` (DARTS NetworkCIFAR)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_shape: tuple[int, ...],
    *,
    opset: int = 17,
    verify: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch axis; optionally verify it.

    Uses the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): the dynamo
    exporter needs ``onnxscript``, which nasforge does not depend on. The graph has one input
    ``input`` ``[batch, *input_shape]`` and one output ``logits`` ``[batch, classes]``.

    Args:
        model: the network (its train/eval mode is restored afterwards).
        path: the ``.onnx`` file to write (parent directories are created).
        input_shape: one input without the batch axis, ``(C, H, W)``.
        opset: ONNX opset version.
        verify: run the graph with ONNX Runtime on a random batch of 3 (another batch size
            than the export's, to exercise the dynamic axis) and compare with PyTorch.
        atol: largest allowed absolute difference (plus the same relative tolerance).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: ``verify`` is set and onnxruntime is not installed.
        ExportMismatchError: ONNX Runtime's outputs differ from PyTorch's by more than ``atol``.
        ConfigError: ``input_shape`` is empty or has non-positive sizes.
    """
    if not input_shape or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in input_shape):
        raise ConfigError(f"input_shape must be positive ints without the batch axis, e.g. (3, 32, 32); got {input_shape!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    # The wrapper itself goes to eval mode: torch.onnx.export restores the *wrapper's* mode
    # recursively afterwards, which would otherwise flip BN/dropout back to training before
    # the reference pass below.
    wrapper = _LogitsOnly(model).eval()
    # A private generator keeps export from shifting the caller's global RNG stream.
    gen = torch.Generator().manual_seed(0)
    try:
        dummy = torch.randn((1, *input_shape), generator=gen).to(device)
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which we cannot use.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(target),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        if verify:
            x = torch.randn((3, *input_shape), generator=gen)
            with torch.no_grad():
                expected = wrapper(x.to(device)).float().cpu().numpy()
            got = _run_onnxruntime(target, x.numpy())
            _compare(expected, got, atol, target)
    finally:
        model.train(was_training)
    return target


def _run_onnxruntime(path: Path, x: Any) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(
            "verifying an ONNX export needs onnxruntime: pip install nasforge[onnx] (or pass verify=False)"
        ) from e
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _compare(expected: Any, got: Any, atol: float, path: Path) -> None:
    import numpy as np

    if expected.shape != got.shape:
        raise ExportMismatchError(f"ONNX graph {path} gives shape {got.shape}, PyTorch {expected.shape}")
    diff = float(np.max(np.abs(expected - got))) if expected.size else 0.0
    if not np.allclose(got, expected, atol=atol, rtol=atol):
        raise ExportMismatchError(
            f"ONNX graph {path} differs from PyTorch by up to {diff:.3g} (tolerance {atol:g}); "
            "the model may use Python control flow that tracing froze"
        )
