"""`nasforge report`: the HTML page of real small runs, checked as text and in a headless Chromium;
TensorBoard scalars (`--tensorboard`) read back with TensorBoard's own event reader."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from nasforge.cli import main
from nasforge.errors import ConfigError
from nasforge.experiment import SearchConfig, run_search
from nasforge.report import write_report

TINY_SUPERNET = {"C": 4, "N": 1, "affine": False, "track_running_stats": False}
TINY_NET = {"C": 4, "N": 1}
TINY_FINAL = {"epochs": 2, "max_batches_per_epoch": 3}


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def multi_trial_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random search on NB201 cells scored by synflow for (synflow, params): a Pareto search, retrained."""
    out = tmp_path_factory.mktemp("report") / "multi"
    cfg = SearchConfig(space="nb201", method="random", evaluator="proxy", proxy="synflow", proxy_batch_size=16,
                       objective="max:synflow,min:params", data="digits", trials=8, build_kwargs=dict(TINY_NET),
                       final_train=True, final_overrides=dict(TINY_FINAL), out=str(out), seed=0)
    run_search(cfg, progress=False, log=_quiet)
    return out


@pytest.fixture(scope="module")
def one_shot_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DARTS on a tiny NB201 supernet, 3 epochs of 4 steps, retrained briefly, with TensorBoard scalars
    when the tensorboard package is installed."""
    from nasforge.train.scalars import require_tensorboard

    try:
        require_tensorboard()
        tensorboard = True
    except ConfigError:
        tensorboard = False
    out = tmp_path_factory.mktemp("report") / "oneshot"
    cfg = SearchConfig(space="nb201", method="darts", method_kwargs={"batch_size": 16, "epochs": 3},
                       supernet_kwargs=dict(TINY_SUPERNET), max_batches_per_epoch=4, build_kwargs=dict(TINY_NET),
                       final_train=True, final_overrides=dict(TINY_FINAL), data="digits", out=str(out), seed=0,
                       tensorboard=tensorboard)
    run_search(cfg, progress=False, log=_quiet)
    return out


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    # nothing is loaded from elsewhere: every src / href is inline data or an anchor on the page
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith(("data:", "#")), attr
    assert "Content-Security-Policy" in page
    for png in _images(page):
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_multi_trial_report_has_trajectory_pareto_cell_costs_config_and_environment(multi_trial_run: Path) -> None:
    path = write_report(multi_trial_run)
    assert path == multi_trial_run / "report.html"
    page = path.read_text()
    _assert_self_contained(page)
    res = json.loads((multi_trial_run / "results.json").read_text())
    for title in ("Result", "Search", "Pareto front", "Architecture", "Final training", "Best trials",
                  "Configuration", "Environment"):
        assert f"<h2>{title}</h2>" in page
    # trajectory, Pareto front, cell, final training curves
    assert len(_images(page)) == 4
    assert 'alt="best-so-far synflow over trials"' in page and 'alt="Pareto front"' in page
    assert "The NAS-Bench-201 cell" in page
    import html

    assert f"<code>{html.escape(res['best']['arch'])}</code>" in page
    # params / FLOPs of the result, as numbers formatted from results.json
    assert f"<td>{int(res['final']['params']):,}</td>" in page
    assert f"<td>{int(res['final']['flops']):,}</td>" in page
    for front in res["pareto_front"]:
        assert f"<td>{front['trial']}</td>" in page
    import torch

    import nasforge

    assert f"<td>{torch.__version__}</td>" in page and f"<td>{nasforge.__version__}</td>" in page
    assert "&quot;proxy&quot;: &quot;synflow&quot;" in page  # the resolved config, escaped


def test_one_shot_report_shows_curves_derived_choices_and_final_weights(one_shot_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "page.html"
    assert main(["report", str(one_shot_run), "--out", str(out)]) == 0
    page = out.read_text()
    _assert_self_contained(page)
    assert "darts (one-shot) on nb201" in page
    assert "<h2>Architecture weights</h2>" in page and "<h2>Best trials</h2>" not in page
    # the history holds no per-epoch weights: the page says what it records and shows what exists
    assert "holds no architecture weights per epoch" in page
    assert "train_loss" in page and "valid_acc" in page
    assert 'alt="derived architecture per epoch"' in page and 'alt="final architecture weights"' in page
    assert 'alt="search curves per epoch"' in page and 'alt="final training curves"' in page
    assert len(_images(page)) == 5  # curves, derived choices, strengths, cell, final training


def test_per_epoch_weights_in_the_history_become_a_heat_map(one_shot_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    res = json.loads((one_shot_run / "results.json").read_text())
    for i, record in enumerate(res["history"]):  # as a method recording its alphas per epoch would
        record["alphas"] = {"edge_1_0": [0.1 * i, 0.2, 0.3, 0.2, 0.2], "edge_2_0": [0.5, 0.1, 0.1, 0.1, 0.2]}
    (run / "results.json").write_text(json.dumps(res))
    page = write_report(run).read_text()
    assert 'alt="alphas per epoch"' in page
    assert "holds no architecture weights per epoch" not in page


def test_storage_password_is_redacted_and_text_is_escaped(multi_trial_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    res = json.loads((multi_trial_run / "results.json").read_text())
    url = "postgresql://alice:s3cr3t-pw@db.example:5432/nas"
    res["config"]["storage"] = url  # results.json's copy of the config is not redacted
    res["study"]["storage"] = url
    res["config"]["data_root"] = "<script>alert('x')</script>"
    (run / "results.json").write_text(json.dumps(res))
    page = write_report(run).read_text()
    assert "s3cr3t-pw" not in page
    assert "postgresql://alice:***@db.example:5432/nas" in page
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    # config.json, when present, is what the page shows
    (run / "config.json").write_text(json.dumps({**res["config"], "storage": url, "seed": 1234567}))
    page = write_report(run).read_text()
    assert "s3cr3t-pw" not in page and "1234567" in page


def test_bad_run_directories_give_a_config_error_naming_the_path(tmp_path: Path, capsys: Any) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        write_report(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no results.json"):
        write_report(empty)
    (empty / "results.json").write_text("{not json")
    with pytest.raises(ConfigError, match=re.escape(str(empty / "results.json")) + " is not valid JSON"):
        write_report(empty)
    (empty / "results.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a nasforge results file"):
        write_report(empty)
    assert main(["report", str(missing)]) == 2
    assert f"run directory not found: {missing}" in capsys.readouterr().err


@pytest.mark.parametrize("space_name, kwargs", [("darts", {}), ("mobilenet", {}), ("zennas", {}),
                                                ("randwire", {"nodes": 8})])
def test_every_space_is_drawn(space_name: str, kwargs: dict[str, Any]) -> None:
    import random

    from nasforge import get_space
    from nasforge.report.cells import draw_architecture
    from nasforge.report.plots import png_data_uri

    space = get_space(space_name, **kwargs)
    text = space.format(space.sample(random.Random(0)))
    drawings = draw_architecture(space_name, space, text)
    assert drawings
    for _, fig, caption in drawings:
        assert caption and len(png_data_uri(fig)) > 2000
    # an unreadable architecture falls back to a block diagram, never an exception
    assert draw_architecture(space_name, space, "garbage")


# ---- TensorBoard ------------------------------------------------------------------------------


def test_tensorboard_scalars_of_the_one_shot_search_and_the_final_training(one_shot_run: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = json.loads((one_shot_run / "results.json").read_text())
    search = EventAccumulator(str(one_shot_run / "tensorboard" / "search"))
    search.Reload()
    tags = set(search.Tags()["scalars"])
    assert {"train_loss", "train_acc", "valid_loss", "valid_acc", "lr"} <= tags
    for tag in ("train_loss", "valid_acc", "lr"):
        events = search.Scalars(tag)
        assert [e.step for e in events] == [h["epoch"] for h in res["history"]]
        assert [e.value for e in events] == pytest.approx([h[tag] for h in res["history"]], rel=1e-6)
    final = EventAccumulator(str(one_shot_run / "tensorboard" / "final"))
    final.Reload()
    assert {"train_loss", "train_acc", "eval_loss", "eval_acc", "lr"} <= set(final.Tags()["scalars"])
    history = res["final"]["history"]
    assert [e.value for e in final.Scalars("eval_acc")] == pytest.approx([h["eval_acc"] for h in history], rel=1e-6)
    assert [e.value for e in final.Scalars("lr")] == pytest.approx([h["lr"] for h in history], rel=1e-6)


def test_tensorboard_without_the_package_is_a_config_error_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    cfg = SearchConfig(space="nb201", method="darts", tensorboard=True, out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        run_search(cfg, progress=False, log=_quiet)
    assert not (tmp_path / "run").exists()


def test_only_rank_zero_writes_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    import torch.distributed as dist

    from nasforge.train.scalars import scalar_items, tensorboard_logger

    assert tensorboard_logger(tmp_path / "off", False) is None
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    assert tensorboard_logger(tmp_path / "tb", True) is None
    assert not (tmp_path / "tb").exists()
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    logger = tensorboard_logger(tmp_path / "tb", True)
    assert logger is not None
    logger.close()
    assert scalar_items({"epoch": 3, "seconds": 1.0, "loss": 0.5, "arch": "x", "nan": float("nan"), "ok": True,
                         "gamma": {"b0": 0.1, "b1": [1.0]}}) == [("loss", 0.5), ("gamma/b0", 0.1)]


# ---- a real headless browser ------------------------------------------------------------------

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser() -> Any:
    """Headless Chromium driven by selenium; skipped when unavailable, except under CI=true, where
    a missing browser fails the test (scripts/setup.sh installs it there)."""
    problem = None
    binary, driver_path = _which(CHROMIUM), _which(DRIVER)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        problem = "selenium is not installed (pip install selenium)"
    if problem is None and (binary is None or driver_path is None):
        problem = "chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {problem}")
        pytest.skip(problem)
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(driver_path)))
    yield driver
    driver.quit()


def _inspect(driver: Any, path: Path) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
    """Open ``path``; return (browser console entries, [complete, naturalWidth, alt] per <img>,
    [width, height] per inline <svg>)."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.resolve().as_uri())
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);")
    svgs = driver.execute_script(
        "return Array.from(document.querySelectorAll('svg')).map(s => {const r = s.getBoundingClientRect();"
        " return [r.width, r.height];});")
    return driver.get_log("browser"), images, svgs


def test_the_checks_catch_a_broken_page(browser: Any, tmp_path: Path) -> None:
    """The console and image checks below are real: a page with a broken and a blocked image fails them."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                   "content=\"default-src 'none'; img-src data:\"></head><body>"
                   '<img alt="broken" src="data:image/png;base64,AAAA">'
                   '<img alt="blocked" src="http://127.0.0.1:9/x.png"></body></html>')
    logs, images, _ = _inspect(browser, bad)
    assert [w for _, w, _ in images] == [0, 0]
    assert any(entry["level"] == "SEVERE" for entry in logs), logs


@pytest.mark.parametrize("which", ["multi_trial_run", "one_shot_run"])
def test_report_renders_in_headless_chromium(browser: Any, which: str, request: pytest.FixtureRequest,
                                             tmp_path: Path) -> None:
    run: Path = request.getfixturevalue(which)
    page = write_report(run, tmp_path / "report.html")
    logs, images, svgs = _inspect(browser, page)
    assert [e for e in logs if e["level"] in ("SEVERE", "ERROR")] == [], logs
    assert len(images) >= 4
    for complete, width, alt in images:
        assert complete and width > 0, f"image {alt!r} did not render"
    for width, height in svgs:
        assert width > 0 and height > 0
    shot = browser.get_screenshot_as_png()
    assert shot.startswith(b"\x89PNG")
    target = os.environ.get("NASFORGE_REPORT_SCREENSHOT")  # docs/img/report.png is made this way
    if target and which == "multi_trial_run":
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_bytes(shot)
