"""The cheap version lookups agree with importlib.metadata and pyproject.toml."""

from __future__ import annotations

import tomllib
from importlib import metadata

import nightcore
from nightcore.versions import distribution_version, installed_version, runtime_versions
from tests.conftest import REPO


def test_versions_agree() -> None:
    assert distribution_version("wasmtime") == metadata.version("wasmtime")
    assert distribution_version("cryptography") == metadata.version("cryptography")
    assert distribution_version("no-such-dist-here") == "unknown"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    # One place: the package's __version__, which the build reads (tool.setuptools.dynamic).
    assert "version" not in pyproject["project"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]
    assert dynamic["version"] == {"attr": "nightcore.__version__"}
    assert metadata.version("nightcore") == nightcore.__version__
    assert runtime_versions()["wasmtime"] == metadata.version("wasmtime")


def test_installed_version_agrees_with_importlib_metadata() -> None:
    for dist in ("nightcore", "wasmtime", "Jinja2", "markupsafe", "no-such-dist-here"):
        try:
            want: str | None = metadata.version(dist)
        except metadata.PackageNotFoundError:
            want = None
        assert installed_version(dist) == want, dist
