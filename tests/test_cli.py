"""The `nasforge` command: help texts, listings, errors, and a real kill-and-resume of a search."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasforge.cli import build_parser, main

COMMANDS = ["search", "train", "evaluate", "spaces", "methods", "proxies", "show"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_for_every_option(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[attr-defined]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help"
            assert action.option_strings[0] in text


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for c in COMMANDS:
        assert c in out


def test_spaces_and_methods_list_papers(capsys):
    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    assert "nb201" in out and "darts" in out and "mobilenet" in out and "ICLR 2020" in out
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "evolution" in out and "random" in out and "AAAI 2019" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["search", "--space", "nb202"], "unknown space 'nb202'; valid: darts, densenas, mnasnet, mobilenet, nb201"),
        (["search", "--method", "darts2"], "unknown method 'darts2'"),
        (["search", "--trials", "0"], "trials must be a positive integer, got 0"),
        (["train", "--arch", "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~4|"], "none~4"),
        (["train", "--arch", "|conv_9x9~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"], "conv_9x9"),
        (["search", "--data", "imagenet"], "unknown dataset 'imagenet'"),
        (["show", "/nonexistent/run"], "no results.json"),
    ],
)
def test_bad_input_is_one_line_typed_error(argv, needle, capsys, tmp_path):
    argv = [*argv, "--out", str(tmp_path / "r")] if argv[0] in ("search", "train") else argv
    assert main([*argv, "--no-progress"] if argv[0] in ("search", "train") else argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err


def test_config_file_options_and_resolved_config(tmp_path, capsys, data_kit):
    cfg = tmp_path / "search.yaml"
    cfg.write_text(
        "space: nb201\nmethod: random\nevaluator: table\n"
        f"table: {data_kit / 'nb201' / 'nb201_table.csv.gz'}\ntrials: 7\nseed: 5\n"
    )
    assert main(["search", "--config", str(cfg), "--trials", "9", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    resolved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert resolved["trials"] == 9 and resolved["seed"] == 5 and resolved["method"] == "random"
    assert main(["show", str(tmp_path / "r")]) == 0
    assert "random on nb201" in capsys.readouterr().out
    toml = tmp_path / "s.toml"
    toml.write_text('space = "nb201"\nmethod = "random"\nevaluator = "table"\n'
                    f'table = "{data_kit / "nb201" / "nb201_table.csv.gz"}"\ntrials = 3\n')
    assert main(["search", "--config", str(toml), "--out", str(tmp_path / "t"), "--no-progress"]) == 0


def _completed(db: Path) -> list[str]:
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "select t.number, a.value_json from trials t join trial_user_attributes a on a.trial_id=t.trial_id "
            "where t.state='COMPLETE' and a.key='arch' order by t.number"
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()
    return [json.loads(v) for _, v in rows]


def test_ctrl_c_then_rerun_resumes_the_search(tmp_path):
    """A real process, a real SIGINT, the same command again: no finished trial lost or repeated."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nasforge", "search", "--space", "nb201", "--method", "evolution",
           "--build-opt", "C=4", "--build-opt", "N=1", "--epochs", "1", "--trials", "8",
           "--method-opt", "population_size=4", "--method-opt", "sample_size=2",
           "--final-epochs", "1", "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while len(_completed(out / "study.db")) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    before = _completed(out / "study.db")
    if proc.returncode == 0:
        pytest.skip("search finished before the interrupt landed")
    assert proc.returncode == 130, err
    assert "Rerun the same command to resume" in err
    assert 3 <= len(before) < 8
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(before)} finished trial(s) kept" in done.stdout
    after = _completed(out / "study.db")
    assert len(after) == 8 and after[: len(before)] == before
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "model.onnx").exists()


def test_train_then_evaluate_then_show(tmp_path, capsys):
    arch = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"
    out = tmp_path / "t"
    argv = ["train", "--space", "nb201", "--arch", arch, "--build-opt", "C=4", "--build-opt", "N=1",
            "--epochs", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["final"]["arch"] == arch and len(res["final"]["history"]) == 2
    capsys.readouterr()
    assert main(["evaluate", str(out / "model")]) == 0
    # the exported model reproduces the final test accuracy
    assert f"test accuracy {res['final']['test_acc']:.2f}%" in capsys.readouterr().out
    assert main(["show", str(out)]) == 0
    assert arch in capsys.readouterr().out
    # rerunning a finished training resumes it (no epochs left) and changes nothing
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["final"]["test_acc"] == res["final"]["test_acc"]


def test_wrapper_script_runs_the_checkouts_command_line_from_anywhere(tmp_path):
    """README: after the two quick-start commands, `scripts/nasforge ...` works from any directory."""
    import subprocess
    from pathlib import Path

    wrapper = Path(__file__).resolve().parents[1] / "scripts" / "nasforge"
    out = subprocess.run([str(wrapper), "methods"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "gdas" in out.stdout and "evolution" in out.stdout
    bad = subprocess.run([str(wrapper), "show", "no-such-run"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "no-such-run" in bad.stderr + bad.stdout


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`nasforge show RUN | head` must not end in a BrokenPipeError traceback (exit 141, as Unix tools)."""
    import subprocess
    from pathlib import Path

    wrapper = Path(__file__).resolve().parents[1] / "scripts" / "nasforge"
    proc = subprocess.Popen([str(wrapper), "methods"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141
    assert "Traceback" not in err
