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
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", header_style="bold")
    last = len(columns) - 1
    for i, c in enumerate(columns):
        # Only the last (free-text) column wraps: codes and numbers are what people grep for.
        table.add_column(c, overflow="fold", no_wrap=i != last)
    for row in rows:
        # rich.Text, not markup strings: a tenant-controlled "[red]" must print literally.
        cells = []
        for i, v in enumerate(row):
            text = clean(v, 80)
            style = ""
            if i == code_column:
                style = "green" if text == "OK" else "bold red"
            cells.append(Text(text, style=style))
        table.add_row(*cells)
    # Piped output (CI logs, files) gets a fixed width instead of rich's 80-column default.
    width = None if sys.stdout.isatty() else 160
    # emoji=False: titles and headers are ours and hold no ":name:" codes, and rich's emoji
    # table costs ~3 ms to load on every command that prints a table.
    Console(highlight=False, soft_wrap=False, width=width, emoji=False).print(table)


def error(code: str, message: str) -> None:
    sys.stderr.write(f"error[{code}]: {clean(message, 400)}\n")


def info(message: str) -> None:
    sys.stderr.write(clean(message, 400) + "\n")
