"""Making untrusted text safe to *show* (HTML escaping is Jinja's job, see ``report.py``).

Tenant names, reasons, audit data and run output can hold anything: ANSI escape sequences,
other control characters, Unicode bidi overrides (text that displays as something else),
``</script>``, ``javascript:`` URLs. :func:`clean` turns any of it into one printable line of
bounded length; the template then HTML-escapes that line (autoescape), and nothing untrusted is
ever placed in a URL, a ``<script>``, a ``style`` or an event-handler attribute.
"""

from __future__ import annotations

import datetime as dt
import re

# ANSI: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and other two-byte ESC sequences.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]"
)
# C0/C1 controls, DEL, bidi embeddings/overrides/isolates, zero-width and BOM characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def clean(value: object, limit: int = 200) -> str:
    """One printable line of at most ``limit`` characters from untrusted text."""
    if value is None:
        return ""
    s = str(value)
    if len(s) > limit * 4 + 64:
        s = s[: limit * 4 + 64]  # bound the regex work before cleaning
    s = _ANSI.sub("", s)
    s = s.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    s = _CONTROL.sub("?", s)
    return s if len(s) <= limit else s[: max(0, limit - 1)] + "…"


def clean_block(value: object, limit: int = 400) -> str:
    """Like :func:`clean` but keeps newlines (for ``<pre>`` previews of run output)."""
    if value is None:
        return ""
    s = str(value)[: limit * 4 + 64]
    s = _ANSI.sub("", s).replace("\r\n", "\n").replace("\t", "    ")
    s = "\n".join(_CONTROL.sub("?", line) for line in s.split("\n"))
    return s if len(s) <= limit else s[: max(0, limit - 1)] + "…"


def short(value: object, n: int = 12) -> str:
    s = clean(value, 200)
    return s[:n] if len(s) > n else s


def is_hex64(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def num(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def size(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    n = float(value)
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def millis(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    v = float(value)
    if v >= 10_000:
        return f"{v / 1000:.1f} s"
    return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"


def compact_num(value: float) -> str:
    """Short axis label: 1.2k, 3.4M, 5G."""
    v = abs(value)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            text = f"{value / div:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    return f"{value:.1f}".rstrip("0").rstrip(".") if v < 10 else f"{value:.0f}"


def parse_ts(value: object) -> dt.datetime | None:
    """An audit ``ts`` (``2026-11-28T21:19:18.183943Z``) as an aware datetime, or None."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def when(value: object) -> str:
    """Display form of an audit timestamp: ``2026-11-28 21:19:18Z``."""
    t = parse_ts(value)
    if t is None:
        return clean(value, 40) if value else "-"
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
