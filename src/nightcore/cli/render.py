"""Terminal and JSON rendering. Untrusted text is stripped of control sequences here."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from nightcore.untrusted import clean

__all__ = ["clean", "error", "info", "print_json", "print_table"]


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    code_column: int | None = None,
    *,
    rich: bool | None = None,
) -> None:
    """A table on stdout: drawn with rich on a terminal, plain aligned columns otherwise.

    ``rich=None`` decides by ``isatty``. Piped output (scripts, CI logs) gets the same
    columns without box drawing or colour, and without importing rich, which costs ~50 ms of
    a ~150 ms cold ``nightcore run`` (benchmarks/run.py). Machines should read ``--json``.
    """
    cells = [[clean(v, 80) for v in row] for row in rows]
    if rich is None:
        rich = sys.stdout.isatty()
    if rich:
        _rich_table(title, columns, cells, code_column)
    else:
        sys.stdout.write(plain_table(title, columns, cells))


def _width(text: str) -> int:
    import unicodedata

    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def plain_table(title: str, columns: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """``cells`` (already cleaned) under ``columns``, two spaces apart; the last column is
    not padded."""
    widths = [_width(c) for c in columns]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], _width(v))
    lines = [title]
    for row in [list(columns), *cells]:
        padded = [v + " " * (widths[i] - _width(v)) for i, v in enumerate(row[:-1])]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def _rich_table(
    title: str,
    columns: Sequence[str],
    cells: Sequence[Sequence[str]],
    code_column: int | None,
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", header_style="bold")
    last = len(columns) - 1
    for i, c in enumerate(columns):
        # Only the last (free-text) column wraps: codes and numbers are what people grep for.
        table.add_column(c, overflow="fold", no_wrap=i != last)
    for row in cells:
        # rich.Text, not markup strings: a tenant-controlled "[red]" must print literally.
        styled = []
        for i, text in enumerate(row):
            style = ""
            if i == code_column:
                style = "green" if text == "OK" else "bold red"
            styled.append(Text(text, style=style))
        table.add_row(*styled)
    # emoji=False: titles and headers are ours and hold no ":name:" codes, and rich's emoji
    # table costs ~3 ms to load on every command that prints a table.
    Console(highlight=False, soft_wrap=False, emoji=False).print(table)


def error(code: str, message: str) -> None:
    sys.stderr.write(f"error[{code}]: {clean(message, 400)}\n")


def info(message: str) -> None:
    sys.stderr.write(clean(message, 400) + "\n")
