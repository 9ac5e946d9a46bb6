"""Versions of Night Core and of the components it pins, cheaply.

``importlib.metadata`` costs ~20 ms cold (it parses METADATA as e-mail); the run path needs two
version strings (cache keys, attestations), so it reads them from the ``*.dist-info``
directory names beside the installed package and falls back to importlib.metadata.
"""

from __future__ import annotations

import functools
import platform
import re
from pathlib import Path

__all__ = ["distribution_version", "runtime_versions"]

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


def runtime_versions() -> dict[str, str]:
    from nightcore import __version__

    return {
        "nightcore": __version__,
        "wasmtime": distribution_version("wasmtime"),
        "python": platform.python_version(),
    }
