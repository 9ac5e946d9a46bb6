"""Versions of Night Core and of the components it pins, cheaply.

``importlib.metadata`` costs ~20 ms cold (it parses METADATA as e-mail); the run path needs two
version strings (cache keys, attestations), so it reads them from the ``*.dist-info``
directory names beside the installed package and falls back to importlib.metadata.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import sys
from pathlib import Path

__all__ = ["distribution_version", "installed_version", "runtime_versions"]

_DIST_INFO = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)\.dist-info$")


@functools.cache
def distribution_version(dist: str, module: str | None = None) -> str:
    """Installed version of ``dist`` ("unknown" if it is not installed)."""
    import importlib.util

    spec = importlib.util.find_spec(module or dist)
    if spec is not None and spec.origin:
        site = Path(spec.origin).parent.parent
        want = dist.lower().replace("-", "_")
        try:
            for entry in site.iterdir():
                m = _DIST_INFO.match(entry.name)
                if m and m.group("name").lower().replace("-", "_") == want:
                    return m.group("version")
        except OSError:
            pass
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


@functools.cache
def installed_version(dist: str) -> str | None:
    """``importlib.metadata.version(dist)`` (None if not installed), cheaply.

    Walks ``sys.path`` in importlib.metadata's order and takes the version from the first
    matching ``NAME-VERSION.dist-info`` directory name. Anything it does not recognise with
    certainty (an ``.egg-info``, two candidates in one directory, a zip or unreadable path
    entry, nothing found) is answered by importlib.metadata itself.
    """
    want = _normalize(dist)
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except FileNotFoundError:
            continue
        except OSError:
            break  # a zip archive or an unreadable directory: let importlib.metadata decide
        found = [
            n
            for n in names
            if n.lower().endswith((".dist-info", ".egg-info"))
            and _normalize(n.lower().rpartition(".")[0].partition("-")[0]) == want
        ]
        if not found:
            continue
        m = _DIST_INFO.match(found[0]) if len(found) == 1 else None
        if m is not None:
            return m.group("version")
        break
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def runtime_versions() -> dict[str, str]:
    from nightcore import __version__

    return {
        "nightcore": __version__,
        "wasmtime": distribution_version("wasmtime"),
        "python": platform.python_version(),
    }
