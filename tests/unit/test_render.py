"""The CLI's tables: rich on a terminal, plain aligned columns in a pipe; both safe."""

from __future__ import annotations

import pytest

from nightcore.cli.render import plain_table, print_table

HOSTILE = "\x1b[31mred\x1b[0m [bold]x[/bold] \u202eevil\ttab\nline"


def test_plain_table_aligns_cleaned_cells() -> None:
    out = plain_table(
        "Title", ["tenant", "verdict", "detail"], [["a", "OK", ""], ["长名", "X", "d"]]
    )
    assert out.splitlines() == [
        "Title",
        "tenant  verdict  detail",
        "a       OK",
        "长名    X        d",
    ]


@pytest.mark.parametrize("rich", [False, True, None])
def test_tables_print_untrusted_text_inert(
    rich: bool | None, capsys: pytest.CaptureFixture[str]
) -> None:
    print_table("Runs", ["tenant", "verdict", "detail"], [[HOSTILE, "OK", HOSTILE]], 1, rich=rich)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\t" not in out
    assert "[bold]x[/bold]" in out  # markup prints literally, never styles
    assert ("┃" in out) is bool(rich)  # a pipe (capsys) gets the plain table by default
    if not rich:
        assert len(out.splitlines()) == 3  # title, header, one row: the newline was cleaned
