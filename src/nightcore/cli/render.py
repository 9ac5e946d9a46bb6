"""Terminal and JSON rendering. Untrusted text is stripped of control sequences here."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from nightcore.untrusted import clean

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (cold CLI)
if TYPE_CHECKING:
    from typing import Any

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
    free_column: int | None = -1,
    width: int | None = None,
) -> None:
    """A table on stdout: drawn with rich on a terminal, plain aligned columns otherwise.

    ``rich=None`` decides by ``isatty``. Piped output (scripts, CI logs) gets the same
    columns without box drawing or colour, and without importing rich, which costs ~50 ms of
    a ~150 ms cold ``nightcore run`` (benchmarks/run.py). Machines should read ``--json``.

    Identifiers (run and key ids, tenants, codes, digests, numbers) are never cropped: every
    column but ``free_column`` (the free text, the last by default; ``None`` for a table of
    identifiers only) keeps its full width, and only the free text wraps. A terminal too
    narrow for the identifiers plus :data:`MIN_FREE_WIDTH` of free text gets the plain table,
    which a terminal wraps but never crops. ``width`` fixes the terminal width (tests).
    """
    cells = [[clean(v, 80) for v in row] for row in rows]
    if rich is None:
        rich = sys.stdout.isatty()
    free = None if free_column is None else range(len(columns))[free_column]
    if rich and _rich_fits(columns, cells, free, width):
        _rich_table(title, columns, cells, code_column, free, width)
    else:
        sys.stdout.write(plain_table(title, columns, cells))


# The free-text column is never squeezed below this many characters; a terminal too narrow
# for it gets the plain table instead.
MIN_FREE_WIDTH = 16


def _column_widths(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> list[int]:
    widths = [_width(c) for c in columns]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], _width(v))
    return widths


def _terminal_width(width: int | None) -> int:
    if width is not None:
        return width
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


def _rich_fits(
    columns: Sequence[str], cells: Sequence[Sequence[str]], free: int | None, width: int | None
) -> bool:
    """Whether a boxed table (one space of padding each side of a cell, a rule between cells
    and at both edges: 3 characters per column plus 1) holds every identifier at full width
    and the free text at :data:`MIN_FREE_WIDTH` at least."""
    widths = _column_widths(columns, cells)
    if free is not None:
        widths[free] = min(widths[free], MIN_FREE_WIDTH)
    return sum(widths) + 3 * len(columns) + 1 <= _terminal_width(width)


def _width(text: str) -> int:
    import unicodedata

    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def plain_table(title: str, columns: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """``cells`` (already cleaned) under ``columns``, two spaces apart; the last column is
    not padded."""
    widths = _column_widths(columns, cells)
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
    free: int | None,
    width: int | None,
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", header_style="bold")
    widths = _column_widths(columns, cells)
    for i, c in enumerate(columns):
        # Only the free-text column wraps: ids, codes and numbers are what people grep for and
        # copy, so they get their full width (_rich_fits checked that it is there).
        if i == free:
            table.add_column(c, overflow="fold", min_width=min(widths[i], MIN_FREE_WIDTH))
        else:
            table.add_column(c, no_wrap=True, width=widths[i])
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
    Console(highlight=False, soft_wrap=False, emoji=False, width=_terminal_width(width)).print(
        table
    )


def error(code: str, message: str) -> None:
    sys.stderr.write(f"error[{code}]: {clean(message, 400)}\n")


def info(message: str) -> None:
    sys.stderr.write(clean(message, 400) + "\n")
