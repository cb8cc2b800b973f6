"""Latency lookup tables: keys, resumable build, prediction, expected latency, mismatch checks, CLI."""

from __future__ import annotations

import json
import random
import statistics
import warnings

import pytest
import torch

import nasforge
from nasforge.cli import main
from nasforge.errors import ArchError, ConfigError, UnknownNameError
from nasforge.hardware.latency import LatencySpec
from nasforge.hardware.lut import (
    LatencyTable,
    LatencyTableMismatchError,
    LatencyTableWarning,
    build_lut,
    expected_latency,
    layer_keys,
    load_lut,
    unique_keys,
)

SHAPE = (3, 8, 8)
SPEC = LatencySpec(backend="torch", threads=1, warmup=1, repeats=3)
TINY = {"preset": "cifar", "width_mult": 0.25, "kernels": [3], "expansions": [1]}


def _space(**overrides):
    return nasforge.get_space("mobilenet", **{**TINY, **overrides})


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    """A tiny table, built in two calls: the first stops half-way, the second completes it."""
    space = _space()
    path = tmp_path_factory.mktemp("lut") / "lut.json"
    total = len(unique_keys(space, SHAPE)) + 3
    half = build_lut(space, SHAPE, SPEC, path, fit_networks=3, progress=False, max_measurements=total // 2)
    assert not half.complete
    saved = json.loads(path.read_text())
    assert len(saved["entries"]) == total // 2 and saved["constant_ms"] is None
    first_entries = dict(saved["entries"])
    with pytest.raises(ConfigError, match="incomplete"):
        LatencyTable.load(path).predict(space.sample(random.Random(0)))
    full = build_lut(space, SHAPE, SPEC, path, fit_networks=3, progress=False)
    assert full.complete
    doc = json.loads(path.read_text())
    assert len(doc["entries"]) == len(unique_keys(space, SHAPE)) and len(doc["fit_networks"]) == 3
    # the resumed build kept every entry of the first call (nothing measured twice)
    assert all({f: x for f, x in doc["entries"][k].items() if not f.startswith("context")} == v
               for k, v in first_entries.items())
    return path


def test_keys_follow_the_backbone_and_repeat_layers_share_entries():
    space = _space()
    keys = layer_keys(space, (3, 32, 32))
    assert list(keys) == [layer.name for layer in space.layers]
    assert all(list(opts) == list(space.decisions()[name]) for name, opts in keys.items())
    # cifar preset: stage strides 1, 2, 2, 1, 2, 1 after a stride-1 stem on 32x32
    assert [keys[f"s{s}_l0"]["ir_k3_e1"].height for s in range(1, 7)] == [32, 32, 16, 8, 8, 4]
    assert keys["s1_l1"]["skip"] == keys["s1_l2"]["skip"]  # same key, one entry
    unique = unique_keys(space, (3, 32, 32))
    assert len(unique) == len({k.text for k in unique}) < sum(len(o) for o in keys.values())
    # at width 0.25 stage 1 opens 8 -> 8 (its first layer is its later layers' key) and stage 4
    # (24 channels, stride 1) is stage 3's later layers: 2 + 3 + 3 + 0 + 3 + 1 distinct blocks
    assert len(unique) == 12
    with pytest.raises(ConfigError, match="mobilenet"):
        layer_keys(nasforge.get_space("nb201"), (3, 32, 32))


def test_header_records_the_setting(table_path):
    h = LatencyTable.load(table_path).header
    assert h["space"] == "mobilenet" and h["space_config"] == _space().config()
    assert h["input_shape"] == list(SHAPE) and (h["batch_size"], h["backend"], h["threads"]) == (1, "torch", 1)
    assert h["device"].startswith("cpu: ") and {"torch", "python", "nasforge"} <= set(h["versions"])
    assert h["nasforge_version"] == nasforge.__version__


def test_prediction_is_the_sum_of_entries_plus_the_constant(table_path):
    table = load_lut(table_path, space=_space(), input_shape=SHAPE, backend="torch")
    doc = json.loads(table_path.read_text())
    space = _space()
    keys = layer_keys(space, SHAPE)
    for seed in range(5):
        arch = space.sample(random.Random(seed))
        by_hand = sum(doc["entries"][keys[layer][arch[layer]].text]["median_ms"] for layer in keys)
        assert table.scale == 1.0
        assert table.predict(arch) == pytest.approx(by_hand + doc["constant_ms"])
        assert table.predict(space.format(arch)) == table.predict(arch)
    # the constant is the median of (measured - sum of blocks) over the fit networks
    residuals = [r["median_ms"] - table.block_sum_ms(space.parse(r["arch"])) for r in doc["fit_networks"]]
    assert doc["constant_ms"] == pytest.approx(sorted(residuals)[1])
    with pytest.raises(ArchError):
        table.predict("ir_k3 | nonsense")


def test_expected_latency_gradient_is_the_per_option_latency(table_path):
    table = load_lut(table_path)
    space = table.space
    logits = {name: torch.randn(len(opts), requires_grad=True) for name, opts in space.decisions().items()}
    probs = {name: torch.softmax(x, 0) for name, x in logits.items()}
    leaf = {name: p.detach().requires_grad_() for name, p in probs.items()}
    lat = expected_latency(table, leaf)
    assert lat.dim() == 0
    lat.backward()
    for name, p in leaf.items():
        assert torch.allclose(p.grad, torch.tensor(table.option_latencies(name)))
    # a one-hot distribution gives exactly the predicted latency of that architecture
    arch = space.sample(random.Random(3))
    onehot = {n: torch.tensor([float(o == arch[n]) for o in opts]) for n, opts in space.decisions().items()}
    assert float(table.expected_latency(onehot)) == pytest.approx(table.predict(arch), rel=1e-5)
    # gradients reach the logits through the softmax
    expected_latency(table, probs).backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in logits.values())
    with pytest.raises(ConfigError, match="missing"):
        table.expected_latency({})
    bad = dict(onehot, s1_l0=torch.ones(5))
    with pytest.raises(ConfigError, match="s1_l0"):
        table.expected_latency(bad)


@pytest.mark.parametrize(("wanted", "field"), [
    ({"space": _space(preset="proxyless")}, "space_config.preset"),
    ({"space": _space(kernels=[3, 5])}, "space_config.kernels"),
    ({"input_shape": (3, 32, 32)}, "input_shape"),
    ({"backend": "onnxruntime"}, "backend"),
    ({"threads": 2}, "threads"),
    ({"batch_size": 8}, "batch_size"),
])
def test_a_table_for_another_setting_is_refused_naming_the_difference(table_path, wanted, field):
    with pytest.raises(LatencyTableMismatchError) as e:
        load_lut(table_path, **wanted)
    assert field in e.value.differences and field in str(e.value)
    assert isinstance(e.value, ConfigError)


def _rewrite(path, tmp_path, **header):
    doc = json.loads(path.read_text())
    doc["header"].update(header)
    out = tmp_path / "other.json"
    out.write_text(json.dumps(doc))
    return out


def test_another_device_or_library_version_warns_and_strict_refuses(table_path, tmp_path):
    versions = {**LatencyTable.load(table_path).header["versions"], "torch": "1.0.0"}
    other = _rewrite(table_path, tmp_path, device="cpu: Some Other CPU (64 logical CPUs)", versions=versions)
    with pytest.warns(LatencyTableWarning) as rec:
        load_lut(other)
    text = str(rec[0].message)
    assert "Some Other CPU" in text and "versions.torch" in text and "1.0.0" in text
    with pytest.raises(LatencyTableMismatchError) as e:
        load_lut(other, strict=True)
    assert {"device", "versions.torch"} <= set(e.value.differences)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_lut(table_path)  # this machine's own table: no warning


def test_resuming_with_another_setting_is_refused(table_path, tmp_path):
    other = _rewrite(table_path, tmp_path, device="cpu: Some Other CPU (64 logical CPUs)")
    with pytest.raises(LatencyTableMismatchError, match="device"):
        build_lut(_space(), SHAPE, SPEC, other, fit_networks=3, progress=False)
    with pytest.raises(LatencyTableMismatchError, match="backend"):
        build_lut(_space(), SHAPE, LatencySpec(backend="onnxruntime", warmup=1, repeats=3), table_path,
                  fit_networks=3, progress=False)


def test_bad_files_and_options_are_typed_errors(table_path, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        LatencyTable.load(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a nasforge latency table"):
        LatencyTable.load(tmp_path / "x.json")
    with pytest.raises(UnknownNameError, match="median, min"):
        build_lut(_space(), SHAPE, SPEC, tmp_path / "y.json", statistic="mean", progress=False)
    with pytest.raises(ConfigError, match="isolated"):
        build_lut(_space(), SHAPE, LatencySpec(isolated=True), tmp_path / "y.json", progress=False)
    with pytest.raises(UnknownNameError, match="offset, affine"):
        LatencyTable.load(table_path).use_statistic("min", "cubic")


def test_min_statistic_and_affine_fit_refit_the_same_measurements(table_path):
    table = LatencyTable.load(table_path).use_statistic("min", "affine")
    space = table.space
    arch = space.sample(random.Random(1))
    assert table.predict(arch) == pytest.approx(table.scale * table.block_sum_ms(arch) + table.constant_ms)
    assert table.doc["fit"]["method"] == "affine" and table.statistic == "min"


def test_cli_build_and_predict(table_path, tmp_path, capsys):
    out = tmp_path / "cli.json"
    args = ["hardware", "build-lut", "--space", "mobilenet", "--backend", "torch", "--input-size", "8",
            "--repeats", "2", "--warmup", "0", "--fit-networks", "2", "--out", str(out), "--no-progress"]
    for k, v in TINY.items():
        args += ["--space-opt", f"{k}={json.dumps(v)}"]
    assert main(args) == 0
    assert "blocks and 2 networks measured" in capsys.readouterr().out
    arch = _space().format(_space().sample(random.Random(0)))
    assert main(["hardware", "predict", "--lut", str(out), "--arch", arch, "--measure", "--limit", "900us"]) == 0
    text = capsys.readouterr().out
    assert "predicted:" in text and "measured:" in text and "limit 0.9 ms" in text
    assert main(["hardware", "predict", "--lut", str(out), "--arch", arch, "--limit", "5 parsecs"]) == 2
    assert "unknown time unit 'parsecs'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["hardware", "build-lut", "--help"])
    assert e.value.code == 0


def test_torch_tables_time_every_block_in_context_too(table_path):
    """Every entry of a torch table also carries its time inside whole networks (the networks of
    context_architectures hold every layer's every option); predicting with it sums those."""
    from nasforge.hardware.lut import context_architectures

    table = LatencyTable.load(table_path)
    space = table.space
    covered = {(layer, arch[layer]) for arch in context_architectures(space) for layer in space.decisions()}
    assert covered == {(layer, o) for layer, opts in space.decisions().items() for o in opts}
    assert table.has_context and all(e["context_ms"] > 0 and e["context_networks"] >= 1
                                     for e in table.doc["entries"].values())
    table.use_statistic("context")
    arch = space.sample(random.Random(3))
    blocks = sum(table.doc["entries"][table.layer_keys()[layer][arch[layer]].text]["context_ms"]
                 for layer in space.decisions())
    assert table.predict(arch) == pytest.approx(blocks + table.constant_ms)
    # the constant is fitted on the fit networks' uncontended (min) passes
    sums = [table.block_sum_ms(space.parse(r["arch"])) for r in table.doc["fit_networks"]]
    import statistics

    assert table.constant_ms == pytest.approx(statistics.median(
        r["min_ms"] - x for r, x in zip(table.doc["fit_networks"], sums)))


def test_a_table_without_context_timings_refuses_the_context_statistic(tmp_path):
    space = _space()
    table = build_lut(space, SHAPE, SPEC, tmp_path / "plain.json", fit_networks=2, progress=False, context=False)
    assert not table.has_context
    with pytest.raises(ConfigError, match="no in-context block timings"):
        table.use_statistic("context")
    with pytest.raises(ConfigError, match="need the torch backend"):
        build_lut(space, SHAPE, LatencySpec(backend="onnxruntime", threads=1, warmup=1, repeats=2),
                  tmp_path / "ort.json", fit_networks=2, progress=False, context=True)


def test_context_rounds_keep_each_blocks_fastest_pass_over_all_rounds(tmp_path, monkeypatch):
    """With context_rounds=R the context networks are timed R times in turn (network 0, 1, ...,
    then again); a block keeps its fastest time over the rounds, then the median over its
    networks. Scripted timings: call k returns 10 - k ms for every block, so the last round wins.
    A table built with other rounds is not continued."""
    import nasforge.hardware.lut as lut
    from nasforge.hardware.lut import LatencyTableMismatchError, context_architectures

    space = _space()
    n_nets = len(context_architectures(space))
    calls: list[int] = []

    def scripted(net, x, passes, warmup):
        calls.append(len(calls))
        return {name: 10.0 - (len(calls) - 1) for name in net.layers}

    monkeypatch.setattr(lut, "_block_times", scripted)
    table = build_lut(space, SHAPE, SPEC, tmp_path / "t.json", fit_networks=2, progress=False, context_rounds=3)
    assert len(calls) == 3 * n_nets
    # network i's fastest (its last round's) timing is call 2 * n_nets + i: 10 - (2 * n_nets + i) ms
    last = {i: 10.0 - (2 * n_nets + i) for i in range(n_nets)}
    expected: dict[str, list[float]] = {}
    for i, arch in enumerate(context_architectures(space)):
        for layer in space.decisions():
            expected.setdefault(table.layer_keys()[layer][arch[layer]].text, []).append(last[i])
    assert {k: e["context_ms"] for k, e in table.doc["entries"].items()} == {
        k: statistics.median(v) for k, v in expected.items()}
    assert table.doc["context_rounds"] == 3 and table.doc["context_passes"] == SPEC.repeats
    with pytest.raises(LatencyTableMismatchError, match="context_rounds: table has 3, wanted 1"):
        build_lut(space, SHAPE, SPEC, tmp_path / "t.json", fit_networks=2, progress=False)
    with pytest.raises(ConfigError, match="context rounds"):
        build_lut(space, SHAPE, SPEC, tmp_path / "u.json", fit_networks=2, progress=False, context_rounds=0)
