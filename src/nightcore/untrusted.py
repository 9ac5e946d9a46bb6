"""Making untrusted text safe to show: one shared definition for the CLI and the dashboard.

Tenant names, reasons, audit data and run output can hold anything: ANSI escape sequences,
other control characters, Unicode bidi overrides (text that displays as something else) and
zero-width characters. :func:`clean` turns any of it into one printable line of bounded
length; :func:`clean_block` keeps newlines for output previews. (HTML escaping is the
templates' job; terminal output goes through rich ``Text``, never markup.)
"""

from __future__ import annotations

import re

# ANSI: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and other two-byte ESC sequences.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]"
)
# C0/C1 controls, DEL, bidi embeddings/overrides/isolates, zero-width and BOM characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


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
