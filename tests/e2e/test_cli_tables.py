"""Terminal tables never crop identifiers: run ids, tenants, codes and seq keep their full
width at 80 and 100 columns; only the free text wraps, never below a few characters."""

from __future__ import annotations

import re
import sys

import pytest

from nightcore.cli.render import MIN_FREE_WIDTH, print_table
from tests.conftest import Env

RUN_ID = "20261205T090000Z-a-tenant-with-a-long-name-4100a41d"
RUNS_COLUMNS = ["run id", "tenant", "verdict", "exit", "fuel", "wall ms", "seq"]
RUN_COLUMNS = ["tenant", "verdict", "exit", "fuel", "wall ms", "memory", "output", "key id"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _cells(out: str) -> list[list[str]]:
    """The cells of each boxed row (rich), or [] for a plain table."""
    return [
        [c.strip() for c in line.strip("│").split("│")]
        for line in ANSI.sub("", out).splitlines()
        if line.startswith("│")
    ]


@pytest.mark.parametrize("width", [60, 80, 100, 160])
def test_runs_table_keeps_run_id_and_seq_whole(
    width: int, capsys: pytest.CaptureFixture[str]
) -> None:
    row = [RUN_ID, "a-tenant-with-a-long-name", "FUEL_EXHAUSTED", "-", "1,000,000", "12.3", 123456]
    print_table("Runs", RUNS_COLUMNS, [row], 2, rich=True, free_column=None, width=width)
    out = capsys.readouterr().out
    assert RUN_ID in out and "123456" in out and "FUEL_EXHAUSTED" in out
    assert "…" not in out
    if width >= 160:
        assert _cells(out)[0][0] == RUN_ID  # drawn by rich, whole


@pytest.mark.parametrize("width", [80, 100, 120, 160])
def test_run_table_wraps_only_detail_and_never_below_the_minimum(
    width: int, capsys: pytest.CaptureFixture[str]
) -> None:
    detail = "the module ran out of fuel after a long loop that never ended " * 2
    row = ["a-tenant", "FUEL_EXHAUSTED", "-", "1,000,000", "12.3", "1.0 MiB", "6 B"]
    print_table(
        "Night Core run",
        [*RUN_COLUMNS, "detail"],
        [[*row, "abcdef012345", detail]],
        1,
        rich=True,
        width=width,
    )
    out = capsys.readouterr().out
    for ident in [*row, "abcdef012345"]:
        assert ident in out
    cells = _cells(out)
    if cells:  # rich drew it: the detail column has at least MIN_FREE_WIDTH characters
        assert all(len(line) <= width for line in out.splitlines())
        header = next(x for x in ANSI.sub("", out).splitlines() if x.startswith("┃"))
        assert len(header.split("┃")[-2]) - 2 >= MIN_FREE_WIDTH
        assert cells[0][:-1] == [*row, "abcdef012345"]  # first line: whole ids
        wrapped = " ".join(c[-1] for c in cells)
        assert "the module ran out of fuel" in wrapped
    else:  # too narrow for the identifiers and some detail: the plain table, uncropped
        assert width < 120
        assert detail.strip()[:40] in out


@pytest.mark.parametrize("columns", ["80", "100", "200"])
def test_runs_and_run_commands_on_a_terminal(
    env: Env, monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # the captured stdout, now
    monkeypatch.setenv("COLUMNS", columns)
    env.add_tenant("hello")
    res = env.cli("run", "--no-dashboard")
    assert res.code == 0, res.err
    assert "hello" in res.out and "OK" in res.out
    (row,) = env.cli("runs", "--json").json()
    res = env.cli("runs")
    assert res.code == 0
    assert row["run_id"] in ANSI.sub("", res.out)
    assert str(row["audit_seq"]) in res.out
    if columns == "200":  # room for every column: rich draws it, run id whole in its cell
        assert _cells(res.out)[0][0] == row["run_id"]
        assert _cells(res.out)[0][-1] == str(row["audit_seq"])
    for line in ANSI.sub("", res.out).splitlines():
        assert len(line) <= max(int(columns), len(row["run_id"]) + 40)
