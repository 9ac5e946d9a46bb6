"""The dashboard operations of the facade: the self-contained static report."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nightcore.context import NodeContext


def build_report(ctx: NodeContext, out: Path | None = None, **options: Any) -> tuple[Path, str]:
    """Write the static report (default ``state/dashboard.html``); its path and sha256.
    ``options`` are those of :func:`nightcore.dashboard.build_report` (``verify``, ...)."""
    from nightcore.dashboard import build_report as build

    path, digest = build(ctx, out, **options)
    return Path(path), str(digest)


def report_html(ctx: NodeContext) -> bytes:
    """The static report as the bytes a proof bundle carries."""
    with tempfile.TemporaryDirectory() as tmp:
        path, _sha = build_report(ctx, Path(tmp) / "dashboard.html")
        return path.read_bytes()


def write_report(ctx: NodeContext, out: Path | None = None, **options: Any) -> Any:
    """Like :func:`build_report`, returning the written report with the snapshot it shows
    (``path``, ``sha256``, ``size``, ``snapshot``) for callers that summarise it."""
    from nightcore.dashboard.report import write_report as write

    return write(ctx, out, **options)


def token_store(ctx: NodeContext) -> Any:
    """The live console's bearer tokens of this workspace (create, list, revoke)."""
    from nightcore.dashboard.tokens import TokenStore

    return TokenStore(ctx)
