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

from nightcore.untrusted import clean, clean_block

__all__ = ["clean", "clean_block"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


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
    """Wall time, always in milliseconds (one unit everywhere in the report: tables, usage
    against limits, chart axes and tooltips): ``0.4 ms``, ``42.5 ms``, ``5,000 ms``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    v = float(value)
    return f"{v:.1f} ms" if v < 100 else f"{v:,.0f} ms"


def preview(value: object, limit: int = 120) -> str:
    """At most ``limit`` characters of cleaned text (newlines kept), cut at a word boundary
    with an ellipsis; only a single word longer than the limit is cut inside. Text that
    already ends with an ellipsis was cut upstream (perhaps mid-word): its last word goes."""
    s = clean_block(value, limit * 4).rstrip()
    cut = s.endswith("…")
    if cut:
        s = s[:-1]
    at_boundary = False
    if len(s) > limit:
        at_boundary = s[limit - 1].isspace()
        s, cut = s[: limit - 1], True
    if not cut:
        return s
    if not at_boundary:
        space = max(s.rfind(" "), s.rfind("\n"))
        if space > 0:
            s = s[:space]
    return s.rstrip() + "…"


def compact_num(value: float) -> str:
    """Short axis label: 1.2k, 3.4M, 5G."""
    v = abs(value)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            text = f"{value / div:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    if v < 10:
        return f"{value:.2g}" if v else "0"
    return f"{value:.0f}"


def parse_ts(value: object) -> dt.datetime | None:
    """An audit ``ts`` (``2026-11-28T21:19:18.183943Z``) as an aware datetime, or None."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def stamp(t: dt.datetime) -> str:
    """``t.strftime("%Y-%m-%d %H:%M:%SZ")`` (t's own fields), several times faster: the
    report formats a few hundred of them."""
    if t.year < 1000:  # strftime does not zero-pad such years
        return t.strftime("%Y-%m-%d %H:%M:%SZ")
    return t.isoformat(" ", "seconds")[:19] + "Z"


def when(value: object) -> str:
    """Display form of an audit timestamp: ``2026-11-28 21:19:18Z``."""
    t = parse_ts(value)
    if t is None:
        return clean(value, 40) if value else "-"
    return stamp(t.astimezone(dt.UTC))
