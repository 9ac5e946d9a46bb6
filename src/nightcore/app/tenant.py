"""Writing a tenant: scaffold a tenant directory (``nightcore new``) and build its module
(``nightcore build``).

The templates are package data in ``nightcore/scaffold/`` (``string.Template`` files). A build
is reproducible: WAT is assembled with ``wasmtime.wat2wasm``; C is compiled with the
``ziglang`` package as ``tools/build_tenants.py`` does (relative source name, working directory
the tenant directory, ``-s``), so no host path, time or name enters the module.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from nightcore.errors import NightCoreError, UsageError
from nightcore.module.manifest import validate_tenant_id

LANGS = ("wat", "c")
MANIFEST = "manifest.toml"
WAT_SOURCE = "module.wat"
C_SOURCE = "main.c"
WASM = "module.wasm"
MAX_WAT_BYTES = 16 * 1024 * 1024  # a WAT source; the module it compiles to is capped at 64 MiB

# The C compiler flags (tools/build_tenants.py uses the same): -s strips names and debug info
# (reproducible output); the 256 KiB shadow stack keeps the initial memory to a few pages.
C_FLAGS: tuple[str, ...] = (
    "--target=wasm32-wasi",
    "-O2",
    "-s",
    "-Wall",
    "-Wextra",
    "-Wl,-z,stack-size=262144",
)
C_TIMEOUT_S = 600
ZIGLANG_INSTALL = "pip install ziglang"

# Per language: the source file and the limits written into the manifest.
_LIMITS: dict[str, dict[str, str]] = {
    "wat": {"fuel": "10_000_000", "wall_ms": "2000", "memory_bytes": "16_777_216"},
    "c": {"fuel": "100_000_000", "wall_ms": "5000", "memory_bytes": "33_554_432"},
}
_SOURCE = {"wat": WAT_SOURCE, "c": C_SOURCE}


@dataclass(frozen=True)
class ScaffoldResult:
    tenant: str
    lang: str
    directory: Path
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "lang": self.lang,
            "directory": str(self.directory),
            "files": [str(f) for f in self.files],
        }


@dataclass(frozen=True)
class BuildResult:
    directory: Path
    lang: str
    source: Path
    wasm: Path
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "lang": self.lang,
            "source": str(self.source),
            "wasm": str(self.wasm),
            "sha256": self.sha256,
            "bytes": self.size,
        }


def _template(name: str) -> Template:
    text = resources.files("nightcore").joinpath("scaffold", name).read_text(encoding="utf-8")
    return Template(text)


def scaffold_tenant(
    tenant: str, *, lang: str = "wat", directory: Path | None = None
) -> ScaffoldResult:
    """Create ``directory`` (default ``./TENANT``) holding ``manifest.toml`` (every field
    explained; valid as written), the source (``module.wat`` or ``main.c``) and a
    ``README.md`` with the build, sign, trust and run commands. Refuses an existing
    directory (``TENANT_DIR_EXISTS``) and a name that is not a tenant id."""
    validate_tenant_id(tenant)
    if lang not in LANGS:
        raise UsageError(f"--lang must be one of {', '.join(LANGS)}")
    target = Path(tenant) if directory is None else directory
    if target.name != tenant:
        raise UsageError(
            f"the directory's name must be the tenant id {tenant!r} (verification requires "
            f"it), not {target.name!r}"
        )
    if target.exists() or target.is_symlink():
        raise NightCoreError(
            f"{target} already exists: nightcore new writes a new directory only "
            "(choose another --dir, or remove it)",
            code="TENANT_DIR_EXISTS",
        )
    source = _SOURCE[lang]
    values = {
        "tenant": tenant,
        "source": source,
        "message": f"hello from {tenant}\\n",
        "length": str(len(f"hello from {tenant}\n")),
        **_LIMITS[lang],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.mkdir()
    files = []
    for name in (MANIFEST, source, "README.md"):
        path = target / name
        path.write_text(_template(name).substitute(values), encoding="utf-8")
        files.append(path)
    return ScaffoldResult(tenant=tenant, lang=lang, directory=target, files=files)


def _compile_wat(source: Path) -> bytes:
    import wasmtime

    from nightcore.fsio import read_input

    data = read_input(
        source, MAX_WAT_BYTES, what=WAT_SOURCE, code="BUILD_FAILED", unreadable="IO_ERROR"
    )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NightCoreError(
            f"{source}: not UTF-8 (byte {exc.start})", code="BUILD_FAILED"
        ) from None
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise NightCoreError(
            f"{source}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}",
            code="BUILD_FAILED",
        ) from None


def _compile_c(directory: Path) -> bytes:
    if importlib.util.find_spec("ziglang") is None:
        raise NightCoreError(
            f"building C needs the ziglang package (a C toolchain for WebAssembly): "
            f"{ZIGLANG_INSTALL}",
            code="TOOLCHAIN_MISSING",
        )
    with tempfile.TemporaryDirectory(prefix="nightcore-build-") as tmp:
        out = Path(tmp) / WASM
        cmd = [sys.executable, "-m", "ziglang", "cc", *C_FLAGS, "-o", str(out), C_SOURCE]
        try:
            proc = subprocess.run(
                cmd,
                cwd=directory,
                capture_output=True,
                text=True,
                timeout=C_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NightCoreError(
                f"the C compiler did not run: {exc}", code="BUILD_FAILED"
            ) from None
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), "")
            raise NightCoreError(
                f"{directory / C_SOURCE}: compile failed (exit {proc.returncode}): "
                f"{first[:300] or proc.stderr.strip()[-300:]}",
                code="BUILD_FAILED",
            )
        return out.read_bytes()


def _validate(wasm: bytes, source: Path) -> None:
    """Refuse bytes Wasmtime would not compile (``wat2wasm`` checks syntax, not types)."""
    import wasmtime

    try:
        wasmtime.Module.validate(wasmtime.Engine(), wasm)
    except wasmtime.WasmtimeError as exc:
        first = str(exc).strip().splitlines()
        raise NightCoreError(
            f"{source}: not a valid module: {first[0] if first else exc}", code="BUILD_FAILED"
        ) from None


def build_tenant(directory: Path) -> BuildResult:
    """Compile ``directory/module.wat`` or ``directory/main.c`` to ``directory/module.wasm``
    (replaced atomically). The same source gives the same bytes."""
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    wat, c = directory / WAT_SOURCE, directory / C_SOURCE
    if wat.is_file() == c.is_file():
        raise UsageError(f"{directory}: needs exactly one of {WAT_SOURCE} or {C_SOURCE}")
    lang = "wat" if wat.is_file() else "c"
    wasm = _compile_wat(wat) if lang == "wat" else _compile_c(directory)
    _validate(wasm, wat if lang == "wat" else c)
    out = directory / WASM
    fd, tmp = tempfile.mkstemp(prefix=f".{WASM}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(wasm)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return BuildResult(
        directory=directory,
        lang=lang,
        source=wat if lang == "wat" else c,
        wasm=out,
        sha256=hashlib.sha256(wasm).hexdigest(),
        size=len(wasm),
    )
