"""Night Core dashboard: a self-contained static HTML report and a live console.

- :func:`build_report` writes one HTML file (inline CSS/JS/SVG, a hash-pinned CSP, no network
  access) and returns its path and SHA-256; ``nightcore dashboard build`` is its CLI.
- :func:`nightcore.dashboard.server.create_app` / :func:`~nightcore.dashboard.server.serve`
  are the live console (Starlette + uvicorn, server-sent events, JSON API, bearer tokens);
  ``nightcore serve`` is its CLI.

The dashboard only reads workspace state; its mutations (cordon, run, checkpoint) go through
the same functions as the CLI and are audited with the token id.
"""

from __future__ import annotations

from nightcore.dashboard.collect import collect
from nightcore.dashboard.report import build_report, default_report_path, render_page
from nightcore.dashboard.views import Snapshot

__all__ = ["Snapshot", "build_report", "collect", "default_report_path", "render_page"]
