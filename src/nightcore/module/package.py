"""Reading a tenant package from disk, once, safely.

A package is ``modules/<tenant>/`` holding ``module.wasm``, ``manifest.toml`` and
``module.intoto.dsse.json``. Each file is opened with ``O_NOFOLLOW`` (a symlink, even one
pointing inside the package, is refused), must be a regular file, and is read with a size
cap so a 100 MB manifest costs at most cap+1 bytes of reading. The bytes returned here are
the bytes that are verified and, later, compiled: nothing is read a second time.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nightcore.errors import PackageError
from nightcore.module.manifest import MAX_MANIFEST_BYTES, TENANT_ID_RE
from nightcore.trust.envelope import MAX_ENVELOPE_BYTES

MODULE_FILE = "module.wasm"
MANIFEST_FILE = "manifest.toml"
ENVELOPE_FILE = "module.intoto.dsse.json"
MAX_MODULE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TenantPackage:
    name: str  # directory name (validated: it is also the tenant id)
    path: Path
    module: bytes
    envelope: bytes | None
    manifest: bytes | None


def read_capped(path: Path, cap: int, what: str) -> bytes:
    """Read a regular, non-symlink file of at most ``cap`` bytes."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise PackageError(f"{what} is missing", code="PACKAGE_INVALID") from None
    except OSError as exc:
        # ELOOP: the final component is a symlink.
        raise PackageError(
            f"{what} cannot be opened safely ({exc.strerror}); symlinks are "
            "not allowed in tenant packages",
            code="PACKAGE_INVALID",
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PackageError(f"{what} is not a regular file", code="PACKAGE_INVALID")
        if st.st_size > cap:
            raise PackageError(
                f"{what} is {st.st_size} bytes, above the {cap}-byte limit",
                code="PACKAGE_TOO_LARGE",
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise PackageError(
                    f"{what} grew beyond the {cap}-byte limit while reading",
                    code="PACKAGE_TOO_LARGE",
                )
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_tenant_dir_name(name: str) -> None:
    if not TENANT_ID_RE.fullmatch(name):
        raise PackageError(
            "tenant directory name must match [a-z0-9][a-z0-9._-]{0,62}", code="TENANT_NAME_INVALID"
        )


def read_package(tenant_dir: Path, *, need_envelope: bool = True) -> TenantPackage:
    name = tenant_dir.name
    check_tenant_dir_name(name)
    try:
        st = os.lstat(tenant_dir)
    except FileNotFoundError:
        raise PackageError(f"tenant {name} not found", code="TENANT_NOT_FOUND") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PackageError(
            f"tenant {name} is not a directory (symlinks are refused)", code="PACKAGE_INVALID"
        )
    module = read_capped(tenant_dir / MODULE_FILE, MAX_MODULE_BYTES, f"{name}/{MODULE_FILE}")
    manifest: bytes | None
    try:
        manifest = read_capped(
            tenant_dir / MANIFEST_FILE, MAX_MANIFEST_BYTES, f"{name}/{MANIFEST_FILE}"
        )
    except PackageError as exc:
        if exc.code == "PACKAGE_TOO_LARGE":
            raise PackageError(exc.message, code="MANIFEST_INVALID") from None
        if (tenant_dir / MANIFEST_FILE).exists() or (tenant_dir / MANIFEST_FILE).is_symlink():
            raise
        manifest = None
    envelope: bytes | None = None
    env_path = tenant_dir / ENVELOPE_FILE
    if need_envelope or env_path.exists():
        try:
            envelope = read_capped(env_path, MAX_ENVELOPE_BYTES, f"{name}/{ENVELOPE_FILE}")
        except PackageError as exc:
            if exc.code == "PACKAGE_TOO_LARGE":
                raise PackageError(exc.message, code="ENVELOPE_MALFORMED") from None
            if exc.message.endswith("is missing"):
                raise PackageError(
                    f"{name} is not signed ({ENVELOPE_FILE} is missing)", code="ENVELOPE_MALFORMED"
                ) from None
            raise
    return TenantPackage(
        name=name, path=tenant_dir, module=module, envelope=envelope, manifest=manifest
    )


def discover(modules_dir: Path) -> list[str]:
    """Tenant directory names under ``modules/`` (sorted), including invalid names so that
    they are reported rather than silently skipped."""
    if not modules_dir.is_dir():
        return []
    return sorted(
        e.name
        for e in os.scandir(modules_dir)
        if not e.name.startswith(".") and (e.is_dir(follow_symlinks=False) or e.is_symlink())
    )
