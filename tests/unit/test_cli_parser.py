"""The CLI parser is built lazily: ``_COMMANDS`` lists every top-level command (name, help line,
registering module) and only the invoked command's parser is built."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from nightcore.cli import main as cli


def test_commands_table_matches_the_registrars() -> None:
    top = argparse.ArgumentParser()  # stands in for the top-level subparsers action
    registered: list[tuple[str, str]] = []
    for ref in dict.fromkeys(ref for ref, _ in cli._COMMANDS.values()):

        def add(name: str, _handler: Any, help_: str | None = None, parent: Any = top) -> Any:
            if parent is top:
                assert help_ is None, f"{name}: a top-level help line belongs in _COMMANDS"
                registered.append((name, ref))  # noqa: B023 - used before the next iteration
            return cli._DISCARD

        cli._registrar(ref)(add, top)
    assert registered == [(name, ref) for name, (ref, _) in cli._COMMANDS.items()]


def test_top_level_help_lists_every_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per command
    with pytest.raises(SystemExit) as ei:
        cli.main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for name, (_, help_) in cli._COMMANDS.items():
        assert f"    {name} " in out and f" {help_}\n" in out


@pytest.mark.parametrize("name", list(cli._COMMANDS))
def test_each_command_builds_on_demand(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        cli.main([name, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nightcore {name} ")
    assert cli._COMMANDS[name][1] in out  # the description is the help line


def test_unknown_command_lists_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    # A name with no close match (a close one gets "did you mean", tests/e2e/test_cli_help.py).
    assert cli.main(["xyzzy"]) == 2
    err = capsys.readouterr().err
    choices = ", ".join(repr(n) for n in cli._COMMANDS)
    assert (
        err == f"error[USAGE]: argument COMMAND: invalid choice: 'xyzzy' (choose from {choices})\n"
    )
