"""The first hour with the CLI: the workspace is found from a subdirectory (like git), a
mistyped command gets a "did you mean", and every command's --help has examples."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from nightcore import app
from nightcore.cli.main import _COMMANDS as _COMMAND_NAMES
from nightcore.layout import find_root
from nightcore.node.protocol import socket_path
from tests.conftest import Cli, run_cli_subprocess

# -- workspace discovery ---------------------------------------------------------------------


def test_a_subdirectory_finds_its_workspace_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = app.init_workspace(tmp_path / "ws").root
    deep = ws / "modules" / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_root(None) == ws
    assert socket_path(None) == str(ws / "state" / "node.sock")
    res = Cli(capsys, None)("doctor", "--json")
    rows = {c["check"]: c for c in res.json()}
    assert any(str(ws) in str(c["detail"]) for c in rows.values()), rows
    res = Cli(capsys, None)("verify", "--json", "--local")
    assert res.code in (0, 1), res.err  # no tenant: nothing verified, but the workspace opened
    assert "WORKSPACE_NOT_FOUND" not in res.err


def test_a_subdirectory_finds_its_workspace_in_a_subprocess(tmp_path: Path) -> None:
    ws = app.init_workspace(tmp_path / "ws").root
    deep = ws / "modules" / "x"
    deep.mkdir(parents=True)
    res = run_cli_subprocess("trust", "list", "--json", cwd=deep)
    assert res.code == 0, res.err
    assert res.json() == []
    res = run_cli_subprocess("audit", "verify", "--json", cwd=deep)
    assert "WORKSPACE_NOT_FOUND" not in res.err


def test_explicit_workspace_and_home_are_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = app.init_workspace(tmp_path / "ws").root
    sub = ws / "modules"
    monkeypatch.chdir(sub)
    # -w names the workspace exactly: a subdirectory is not searched upward
    res = Cli(capsys, sub)("trust", "list", "--json")
    assert res.code == 2 and "error[WORKSPACE_NOT_FOUND]" in res.err
    monkeypatch.setenv("NIGHTCORE_HOME", str(sub))
    assert find_root(None) == sub
    assert socket_path(None) == str(sub / "state" / "node.sock")
    res = Cli(capsys, None)("trust", "list", "--json")
    assert res.code == 2 and "error[WORKSPACE_NOT_FOUND]" in res.err


def test_no_workspace_anywhere_is_the_current_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lone = tmp_path / "lone" / "sub"
    lone.mkdir(parents=True)
    monkeypatch.chdir(lone)
    if any((d / "nightcore.toml").is_file() for d in lone.parents):
        pytest.skip("a parent of the temporary directory is a workspace")
    assert find_root(None) == lone.resolve()
    assert socket_path(None) == os.path.join(os.path.realpath(lone), "state", "node.sock")
    res = Cli(capsys, None)("trust", "list")
    assert res.code == 2 and "error[WORKSPACE_NOT_FOUND]" in res.err


# -- did you mean ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rnu"], "unknown command 'rnu' (did you mean 'run'?)"),
        (["audit", "verfy"], "unknown action 'verfy' for 'audit' (did you mean 'verify'?)"),
        (["trust", "lsit"], "unknown action 'lsit' for 'trust' (did you mean 'list'?)"),
        (["aufs", "repo", "inti"], "unknown action 'inti' for 'aufs repo' (did you mean 'init'?)"),
    ],
)
def test_a_mistyped_name_gets_did_you_mean(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    res = Cli(capsys, None)(*argv)
    assert res.code == 2
    assert res.err == f"error[USAGE]: {message}\n"
    assert res.out == ""


@pytest.mark.parametrize("at", [0, 1, 2])
def test_a_usage_error_is_json_with_json_anywhere(
    at: int, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["audit", "verfy"]
    argv.insert(at, "--json")
    res = Cli(capsys, None)(*argv)
    assert res.code == 2
    assert res.json() == {
        "ok": False,
        "code": "USAGE",
        "error": "unknown action 'verfy' for 'audit' (did you mean 'verify'?)",
    }


def test_did_you_mean_in_a_subprocess(tmp_path: Path) -> None:
    res = run_cli_subprocess("rnu", "--json", cwd=tmp_path)
    assert res.code == 2
    assert res.json()["error"] == "unknown command 'rnu' (did you mean 'run'?)"
    assert "error[USAGE]: unknown command 'rnu' (did you mean 'run'?)" in res.err


# -- help: examples and a description for every argument ------------------------------------


def _built(name: str) -> argparse.ArgumentParser:
    from nightcore.cli import main as cli

    root = cli.build_parser()
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
        root.parse_args([name, "--help"])  # builds the command's parser (lazy)
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices[name]
    return parser


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for n, sp in action.choices.items():
                yield from _walk(sp, f"{path} {n}")
        else:
            yield path, action


@pytest.mark.parametrize("name", list(_COMMAND_NAMES))
def test_every_command_help_has_examples_that_parse(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from nightcore.cli import main as cli

    with pytest.raises(SystemExit) as ei:
        cli.main([name, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert "\nexamples:\n" in out
    examples = out.split("\nexamples:\n", 1)[1].strip().splitlines()
    assert 1 <= len(examples) <= 3
    for line in examples:
        argv = shlex.split(line)
        assert argv[:2] == ["nightcore", name], line
        cli.build_parser().parse_args(argv[1:])  # a usage error would raise


@pytest.mark.parametrize("name", list(_COMMAND_NAMES))
def test_every_argument_has_help(name: str) -> None:
    missing = [
        f"{path} {a.option_strings or a.dest}"
        for path, a in _walk(_built(name), f"nightcore {name}")
        if not a.help
    ]
    assert missing == []
