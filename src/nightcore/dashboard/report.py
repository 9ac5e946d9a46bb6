"""Rendering the report: the static file (:func:`build_report`) and the live console's pages."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from nightcore.context import NodeContext
from nightcore.dashboard import assets, charts, text
from nightcore.dashboard.collect import collect
from nightcore.dashboard.views import CHART_POINTS, Snapshot, code_class
from nightcore.dashboard_defaults import MAX_ROWS

RECENT_ROWS = 25
REPORT_NAME = "dashboard.html"


def _usage_bar(frac: float | None, cls: str) -> Markup:
    return charts.usage_bar(frac, cls)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.DictLoader(
            {
                "page.html": assets.read_data("page.html.j2"),
                "content.html": assets.read_data("content.html.j2"),
            }
        ),
        autoescape=True,  # every {{ }} is HTML-escaped, in every template
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        clean=text.clean,
        short=text.short,
        num=text.num,
        size=text.size,
        millis=text.millis,
        preview=text.preview,
        when=text.when,
        code_class=code_class,
        usage_bar=_usage_bar,
    )
    return env


_ENV = _environment()


def _use_template_cache(ws: NodeContext) -> None:
    """Keep Jinja's compiled templates between processes (compiling them costs ~150 ms, the
    largest part of the report refresh after every `nightcore run`).

    The cache holds marshalled Python code, so it lives in the node's ``private/`` directory
    (0700): whoever can write there already holds the node key. Jinja keys every entry by the
    template's name and source checksum, so an edited template never loads stale code.
    """
    if _ENV.bytecode_cache is not None:
        return
    directory = ws.layout.template_cache_dir
    try:
        directory.mkdir(mode=0o700, parents=False, exist_ok=True)
    except OSError:
        return  # no private dir (a read-only or foreign workspace): compile in memory
    _ENV.bytecode_cache = jinja2.FileSystemBytecodeCache(str(directory))


def _context(
    s: Snapshot, *, live: bool, version: str, events_token: bool = False
) -> dict[str, Any]:
    names = list(s.runs.series)
    wall = {n: [(t, w, c) for t, w, _, c in pts] for n, pts in s.runs.series.items()}
    fuel = {n: [(t, f, c) for t, _, f, c in pts] for n, pts in s.runs.series.items()}
    ok_runs = sum(n for code, n in s.runs.outcome_counts if code == "OK")
    counted = sum(n for _, n in s.runs.outcome_counts)
    return {
        "s": s,
        "live": live,
        "version": version,
        "events_token": events_token,
        "csp": assets.csp(live=live),
        "css": assets.CSS,
        "js": assets.JS,
        "icon": assets.ICON,
        "ok_runs": ok_runs,
        "failed_runs": counted - ok_runs,
        "chart_names": names,
        "chart_points": CHART_POINTS,
        "outcome_chart": charts.bar_chart(s.runs.outcome_counts),
        "wall_chart": charts.line_chart(wall, label="wall time per run", fmt="ms"),
        "fuel_chart": charts.line_chart(fuel, label="fuel per run"),
        "timeline": charts.timeline(s.runs.recent),
        "recent_rows": list(reversed(s.runs.recent))[:RECENT_ROWS],
    }


def render_page(
    s: Snapshot, *, live: bool = False, version: str = "", events_token: bool = False
) -> str:
    """The whole HTML document (static report, or the console's first page; ``events_token``:
    the console serves its event stream only with a bearer token)."""
    context = _context(s, live=live, version=version, events_token=events_token)
    return _ENV.get_template("page.html").render(context)


def render_content(s: Snapshot, *, live: bool = True, version: str = "") -> str:
    """Only ``<main id="content">``: what the live console swaps in on each update."""
    return _ENV.get_template("content.html").render(_context(s, live=live, version=version))


@dataclass(frozen=True)
class BuiltReport:
    path: Path
    sha256: str
    size: int
    snapshot: Snapshot


def default_report_path(ws: NodeContext) -> Path:
    return ws.layout.report_path


def write_report(
    ws: NodeContext,
    out: Path | None = None,
    *,
    diff_since: str | None = None,
    verify: str = "auto",
    max_rows: int = MAX_ROWS,
) -> BuiltReport:
    """Collect, render and atomically write the report; returns its path and SHA-256."""
    _use_template_cache(ws)
    snapshot = collect(ws, diff_since=diff_since, verify=verify, max_rows=max_rows)
    data = render_page(snapshot, live=False).encode("utf-8")
    path = out if out is not None else default_report_path(ws)
    _atomic_write(path, data)
    return BuiltReport(path, hashlib.sha256(data).hexdigest(), len(data), snapshot)


def build_report(
    ws: NodeContext,
    out: Path | None = None,
    *,
    diff_since: str | None = None,
    verify: str = "auto",
    max_rows: int = MAX_ROWS,
) -> tuple[Path, str]:
    """Write the self-contained HTML report (default ``<workspace>/state/dashboard.html``).

    Returns ``(path, sha256 hex of the file)``. ``diff_since`` (a checkpoint size or an ISO
    8601 time) adds what changed since then. ``verify``: ``auto`` (full verification up to
    16 MiB of log, the quick scan check above), ``full``, ``quick`` or ``none``.
    """
    built = write_report(ws, out, diff_since=diff_since, verify=verify, max_rows=max_rows)
    return built.path, built.sha256


def _atomic_write(path: Path, data: bytes) -> None:
    from nightcore.fsio import atomic_write

    # 0640 like run outputs: the report quotes audit data and tenant output.
    atomic_write(Path(path), data, 0o640)
