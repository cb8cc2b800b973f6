"""Measured latency: the spec's validation, the result's fields, both backends, isolated runs, units."""

from __future__ import annotations

import platform

import pytest
import torch
from torch import nn

from nasforge.errors import BudgetError, ConfigError, NasforgeError, UnknownNameError
from nasforge.hardware.latency import (
    LatencyMeasurement,
    LatencySpec,
    NetworkRecipe,
    device_description,
    measure,
    measure_latency_ms,
    parse_duration_ms,
)

FAST = {"warmup": 1, "repeats": 5}


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


@pytest.mark.parametrize(("kwargs", "error", "names"), [
    ({"backend": "tflite"}, UnknownNameError, ["tflite", "torch", "onnxruntime"]),
    ({"batch_size": 0}, ConfigError, ["batch_size", "0"]),
    ({"threads": 0}, ConfigError, ["threads"]),
    ({"threads": True}, ConfigError, ["threads"]),
    ({"warmup": -1}, ConfigError, ["warmup", ">= 0"]),
    ({"repeats": 0}, ConfigError, ["repeats"]),
    ({"input_size": 0}, ConfigError, ["input_size"]),
    ({"device": "tpu"}, ConfigError, ["'cpu'", "'cuda'", "tpu"]),
    ({"device": "cuda", "backend": "onnxruntime"}, ConfigError, ["CPU only"]),
    ({"isolated": "yes"}, ConfigError, ["isolated"]),
])
def test_spec_refuses_bad_values_naming_valid_ones(kwargs, error, names):
    with pytest.raises(error) as e:
        LatencySpec(**kwargs)
    assert isinstance(e.value, NasforgeError)
    for n in names:
        assert n in str(e.value)


def test_spec_is_frozen_and_input_size_replaces_spatial_size():
    spec = LatencySpec(input_size=16)
    with pytest.raises(AttributeError):
        spec.threads = 2  # type: ignore[misc]
    assert spec.shape((3, 32, 32)) == (3, 16, 16)
    assert LatencySpec().shape((3, 32, 32)) == (3, 32, 32)
    with pytest.raises(ConfigError, match="input_shape"):
        LatencySpec().shape((3, 0, 32))


def test_torch_measurement_carries_spread_and_provenance():
    old = torch.get_num_threads()
    m = measure(_net(), (1, 8, 8), LatencySpec(threads=1, batch_size=2, **FAST))
    assert torch.get_num_threads() == old  # the thread setting is restored
    assert isinstance(m, LatencyMeasurement)
    assert 0 < m.min_ms <= m.p25_ms <= m.median_ms <= m.p75_ms <= m.max_ms
    assert m.iqr_ms == pytest.approx(m.p75_ms - m.p25_ms)
    assert (m.repeats, m.warmup, m.batch_size, m.input_shape) == (5, 1, 2, (1, 8, 8))
    assert (m.backend, m.threads, m.isolated) == ("torch", 1, False)
    assert m.device == device_description("cpu") and m.device.startswith("cpu: ")
    assert m.versions["torch"] == torch.__version__
    assert m.versions["python"] == platform.python_version()
    assert {"nasforge", "onnxruntime"} <= set(m.versions)
    assert LatencyMeasurement.from_dict(m.as_dict()) == m


def test_onnxruntime_backend_gives_a_positive_median():
    pytest.importorskip("onnxruntime")
    net = _net().train()
    m = measure(net, (1, 8, 8), LatencySpec(backend="onnxruntime", threads=1, **FAST))
    assert m.median_ms > 0 and m.backend == "onnxruntime"
    assert "onnxruntime" in m.versions
    assert net.training  # the caller's mode is restored after export


def test_isolated_measurement_runs_in_a_fresh_pinned_process():
    import nasforge

    space = nasforge.get_space("mobilenet", preset="cifar", width_mult=0.25, kernels=[3], expansions=[1])
    arch = space.sample(__import__("random").Random(0))
    recipe = NetworkRecipe.of(space, arch, num_classes=3)
    assert isinstance(recipe.build(), nn.Module)
    assert recipe.arch == space.format(arch)
    m = measure(recipe, (3, 8, 8), LatencySpec(isolated=True, **FAST))
    assert m.isolated and m.median_ms > 0
    if hasattr(__import__("os"), "sched_setaffinity"):
        assert m.pinned_cpus is not None and len(m.pinned_cpus) == 1
    with pytest.raises(ConfigError, match="NetworkRecipe"):
        measure(_net(), (1, 8, 8), LatencySpec(isolated=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_device_without_a_gpu_is_a_typed_error():
    with pytest.raises(ConfigError, match="no CUDA device"):
        measure(_net(), (1, 8, 8), LatencySpec(device="cuda"))


def test_old_measure_latency_ms_still_works():
    assert measure_latency_ms(_net(), (1, 8, 8), repeats=3) > 0
    with pytest.raises(BudgetError):
        measure_latency_ms(_net(), (1, 8, 8), repeats=0)


@pytest.mark.parametrize(("text", "ms"), [("5", 5.0), ("5ms", 5.0), ("500 us", 0.5), ("500µs", 0.5),
                                          ("0.005s", 5.0), (2, 2.0)])
def test_durations_with_units(text, ms):
    assert parse_duration_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["5 parsecs", "5 min", "fast", ""])
def test_unknown_units_are_typed_errors(text):
    with pytest.raises(ConfigError) as e:
        parse_duration_ms(text)
    if "parsecs" in text:
        assert "'parsecs'" in str(e.value) and "ms, us" in str(e.value)
