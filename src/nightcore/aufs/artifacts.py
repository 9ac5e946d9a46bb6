"""What the channel carries: target paths, their custom metadata, and safe archive handling.

Target paths and the ``custom`` metadata of each TUF target (signed with the targets role)::

    tenants/<tenant>/<version>.tar.gz   kind "tenant": a signed tenant package
    trust/registry.json                 kind "registry": the node key registry
    trust/revocations.json              kind "revocations": the signed revocation list
    runtime/<name>-<version>-*.whl      kind "runtime": a Night Core release wheel
    overrides/<tenant>/<version>.json   kind "override": a dual-signed downgrade override

    custom = {"nightcore": {"kind": ..., "version": ..., "tenant"?: ..., "min_runtime"?: ...,
                            "abi"?: ..., "schema"?: ...}}

Archives are never unpacked with ``tarfile.extract``/``zipfile.extract``: every member is
checked (relative, no ``..``, regular file, expected name, size caps) and its bytes are read
with a cap, then written by us.
"""

from __future__ import annotations

import gzip
import io
import re
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from nightcore.aufs.errors import AufsError
from nightcore.module.manifest import TENANT_ID_RE

KINDS = ("tenant", "registry", "revocations", "runtime", "override")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
WHEEL_RE = re.compile(
    r"^[A-Za-z0-9_.]+-[0-9A-Za-z.+_]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl$"
)
PACKAGE_FILES = ("manifest.toml", "module.intoto.dsse.json", "module.wasm")
REGISTRY_PATH = "trust/registry.json"
REVOCATIONS_PATH = "trust/revocations.json"


def version_key(v: str) -> tuple[tuple[int, int, str], ...]:
    """Order versions: dot/dash separated parts, numeric parts numerically.

    ``1.10.0 > 1.9.0``; a numeric part sorts before a textual one (``1.0.0 < 1.0.0rc``
    is deliberately *not* semver: publishers should use plain numbers).
    """
    parts = re.split(r"[.+_-]", v)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def compare_versions(a: str, b: str) -> int:
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)


@dataclass(frozen=True)
class Artifact:
    """A target the channel offers, as its signed path and custom metadata describe it."""

    path: str
    kind: str
    version: str
    sha256: str
    length: int
    tenant: str = ""
    min_runtime: str = ""
    abi: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "version": self.version,
            "sha256": self.sha256,
            "length": self.length,
            "tenant": self.tenant,
            "min_runtime": self.min_runtime,
        }


def custom_for(
    kind: str, version: str, *, tenant: str = "", min_runtime: str = "", abi: str = ""
) -> dict[str, Any]:
    inner: dict[str, Any] = {"kind": kind, "version": version}
    if tenant:
        inner["tenant"] = tenant
    if min_runtime:
        inner["min_runtime"] = min_runtime
    if abi:
        inner["abi"] = abi
    return {"nightcore": inner}


def path_for(kind: str, version: str, *, tenant: str = "", filename: str = "") -> str:
    if kind == "tenant":
        return f"tenants/{tenant}/{version}.tar.gz"
    if kind == "override":
        return f"overrides/{tenant}/{version}.json"
    if kind == "registry":
        return REGISTRY_PATH
    if kind == "revocations":
        return REVOCATIONS_PATH
    if kind == "runtime":
        return f"runtime/{filename}"
    raise AufsError(f"unknown artifact kind {kind!r}", code="AUFS_TARGET_INVALID")


def _invalid(path: str, why: str) -> AufsError:
    return AufsError(f"target {path[:120]!r}: {why}", code="AUFS_TARGET_INVALID")


def parse_artifact(path: str, custom: object, sha256: str, length: int) -> Artifact | None:
    """Validate a target's path against its custom metadata; ``None`` if not ours."""
    if not isinstance(custom, dict) or "nightcore" not in custom:
        return None
    c = custom["nightcore"]
    if not isinstance(c, dict) or not set(c) <= {
        "kind",
        "version",
        "tenant",
        "min_runtime",
        "abi",
    }:
        raise _invalid(path, "custom.nightcore has missing or unknown fields")
    kind, version = c.get("kind"), c.get("version")
    if kind not in KINDS:
        raise _invalid(path, f"unknown kind {str(kind)[:40]!r}")
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise _invalid(path, "custom.nightcore.version is missing or malformed")
    tenant = c.get("tenant", "")
    min_runtime = c.get("min_runtime", "")
    abi = c.get("abi", "")
    for name, value in (("tenant", tenant), ("min_runtime", min_runtime), ("abi", abi)):
        if not isinstance(value, str) or len(value) > 128:
            raise _invalid(path, f"custom.nightcore.{name} must be a short string")
    if min_runtime and not VERSION_RE.fullmatch(min_runtime):
        raise _invalid(path, "custom.nightcore.min_runtime is malformed")
    if kind in ("tenant", "override"):
        if not TENANT_ID_RE.fullmatch(tenant):
            raise _invalid(path, "custom.nightcore.tenant is not a valid tenant id")
        expected = path_for(kind, version, tenant=tenant)
    elif kind == "runtime":
        name = PurePosixPath(path).name
        if not WHEEL_RE.fullmatch(name) or f"-{version}-" not in name:
            raise _invalid(path, "runtime targets are runtime/<dist>-<version>-<tags>.whl")
        expected = f"runtime/{name}"
    else:
        expected = path_for(kind, version)
    if path != expected:
        raise _invalid(path, f"a {kind} target must be at {expected!r}")
    return Artifact(path, kind, version, sha256, length, tenant, min_runtime, abi)


# -- tenant package tarballs -----------------------------------------------------------------


def build_tenant_tarball(files: dict[str, bytes]) -> bytes:
    """A reproducible .tar.gz of a tenant package (sorted, mtime 0, root-owned, 0644)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(files[name]))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _member_name(name: str, what: str) -> str:
    if "\x00" in name or "\\" in name or name.startswith("/") or len(name) > 255:
        raise AufsError(
            f"{what}: member {name[:80]!r} has an absolute or unsafe name",
            code="AUFS_ARCHIVE_UNSAFE",
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise AufsError(
            f"{what}: member {name[:80]!r} climbs out with '..'", code="AUFS_ARCHIVE_UNSAFE"
        )
    if not parts:
        raise AufsError(f"{what}: member with an empty name", code="AUFS_ARCHIVE_UNSAFE")
    return "/".join(parts)


def read_tenant_tarball(
    data: bytes, *, max_members: int, max_bytes: int, what: str = "tenant package"
) -> dict[str, bytes]:
    """Return the package files of a tenant .tar.gz, refusing anything unusual.

    Exactly ``manifest.toml``, ``module.intoto.dsse.json`` and ``module.wasm``, each a regular
    file at the top level; no links, devices, directories, duplicates or other members.
    """
    out: dict[str, bytes] = {}
    total = 0
    count = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
            for m in tf:
                count += 1
                if count > max_members:
                    raise AufsError(
                        f"{what}: more than {max_members} members", code="AUFS_ARCHIVE_UNSAFE"
                    )
                name = _member_name(m.name, what)
                if m.issym() or m.islnk():
                    raise AufsError(
                        f"{what}: member {name!r} is a link", code="AUFS_ARCHIVE_UNSAFE"
                    )
                if m.isdev() or m.isfifo() or m.ischr() or m.isblk():
                    raise AufsError(
                        f"{what}: member {name!r} is a device or fifo", code="AUFS_ARCHIVE_UNSAFE"
                    )
                if not m.isreg():
                    raise AufsError(
                        f"{what}: member {name!r} is not a regular file", code="AUFS_ARCHIVE_UNSAFE"
                    )
                if name not in PACKAGE_FILES:
                    raise AufsError(
                        f"{what}: unexpected member {name!r}", code="AUFS_ARCHIVE_UNSAFE"
                    )
                if name in out:
                    raise AufsError(
                        f"{what}: member {name!r} appears twice", code="AUFS_ARCHIVE_UNSAFE"
                    )
                total += m.size
                if m.size < 0 or total > max_bytes:
                    raise AufsError(
                        f"{what}: more than {max_bytes} bytes unpacked", code="AUFS_TOO_LARGE"
                    )
                fh = tf.extractfile(m)
                if fh is None:
                    raise AufsError(
                        f"{what}: member {name!r} has no data", code="AUFS_ARCHIVE_UNSAFE"
                    )
                body = fh.read(m.size + 1)
                if len(body) != m.size:
                    raise AufsError(
                        f"{what}: member {name!r} is truncated", code="AUFS_TARGET_INVALID"
                    )
                out[name] = body
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError, ValueError) as exc:
        raise AufsError(
            f"{what}: not a valid .tar.gz ({type(exc).__name__})", code="AUFS_TARGET_INVALID"
        ) from None
    missing = [n for n in PACKAGE_FILES if n not in out]
    if missing:
        raise AufsError(f"{what}: {missing[0]} is missing", code="AUFS_TARGET_INVALID")
    return out


# -- runtime wheels ----------------------------------------------------------------------------


def read_wheel(data: bytes, *, max_members: int, max_bytes: int) -> dict[str, bytes]:
    """The regular files of a wheel (zip), every name checked, every size capped."""
    out: dict[str, bytes] = {}
    total = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > max_members:
                raise AufsError(
                    f"wheel: more than {max_members} members", code="AUFS_ARCHIVE_UNSAFE"
                )
            for zi in infos:
                name = _member_name(zi.filename, "wheel")
                mode = zi.external_attr >> 16
                if zi.is_dir():
                    continue
                if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                    raise AufsError(
                        f"wheel: member {name!r} is a link or device", code="AUFS_ARCHIVE_UNSAFE"
                    )
                if name in out:
                    raise AufsError(
                        f"wheel: member {name!r} appears twice", code="AUFS_ARCHIVE_UNSAFE"
                    )
                total += zi.file_size
                if total > max_bytes:
                    raise AufsError(
                        f"wheel: more than {max_bytes} bytes unpacked", code="AUFS_TOO_LARGE"
                    )
                with zf.open(zi) as fh:
                    body = fh.read(zi.file_size + 1)
                if len(body) != zi.file_size:
                    raise AufsError(
                        f"wheel: member {name!r} size mismatch", code="AUFS_TARGET_INVALID"
                    )
                out[name] = body
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise AufsError(
            f"wheel: not a valid zip ({type(exc).__name__})", code="AUFS_TARGET_INVALID"
        ) from None
    return out
