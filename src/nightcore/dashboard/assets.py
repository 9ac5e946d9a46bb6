"""The report's one stylesheet and one script, and the CSP that pins them by hash.

They are package data files (``nightcore/dashboard/data/report.css`` and ``console.js``,
listed in ``[tool.setuptools.package-data]`` so that a wheel carries them), read once at import.
The Content-Security-Policy allows exactly these bytes: ``script-src 'sha256-…'`` and
``style-src 'sha256-…'``; no other script, style, connection, frame, form or base URL.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from nightcore.errors import NightCoreError

DATA_DIR = Path(__file__).parent / "data"


def read_data(name: str) -> str:
    """A package data file of the dashboard (templates, stylesheet, script, OpenAPI document)."""
    try:
        return (DATA_DIR / name).read_text(encoding="utf-8")
    except OSError as exc:
        raise NightCoreError(
            f"the dashboard's {name} is missing from this installation ({exc.strerror})",
            code="DASHBOARD_DATA_MISSING",
        ) from None


CSS = read_data("report.css")
JS = read_data("console.js")

ICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E"
    "%3Crect width='32' height='32' rx='7' fill='%23111a2e'/%3E%3Cpath d='M20 6a10 10 0 1 0 6 "
    "17A8 8 0 0 1 20 6z' fill='%237aa7ff'/%3E%3C/svg%3E"
)


def sha256_source(source: str) -> str:
    """The CSP hash-source of an inline script or style: ``'sha256-<base64>'``."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


SCRIPT_HASH = sha256_source(JS)
STYLE_HASH = sha256_source(CSS)


def csp(*, live: bool, header: bool = False) -> str:
    """The Content-Security-Policy of the report (``live``: the console may also connect back
    to its own origin for server-sent events and the API). ``frame-ancestors`` only works as
    an HTTP header (browsers ignore it, and warn, in a meta tag)."""
    parts = [
        "default-src 'none'",
        f"script-src {SCRIPT_HASH}",
        f"style-src {STYLE_HASH}",
        "img-src data:",
        "connect-src 'self'" if live else "connect-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ]
    if header:
        parts.append("frame-ancestors 'none'")
    return "; ".join(parts)
