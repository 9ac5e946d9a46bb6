"""The tenant manifest: schema, strict validation and the signed predicate form.

A publisher writes ``manifest.toml``; ``nightcore sign`` validates it and embeds the same
content, normalised, as the predicate of the signed in-toto statement. Verification
validates the signed predicate with the very same function, so what runs is exactly what was
signed. Validation is strict: unknown fields, wrong types, out-of-range limits and unsafe
paths are refused, never ignored or repaired.

Schema version 1 (docs/formats/manifest.md):

    schema = 1
    tenant = "hello"                      # [a-z0-9][a-z0-9._-]{0,62}
    version = "1.0.0"
    entrypoint = "_start"                 # exported function to call
    args = ["--flag"]                     # argv[1:] seen by the guest
    description = "..."                   # optional, free text, <= 1 KiB
    not_before = 2026-01-01T00:00:00Z     # optional, TOML datetime with offset
    expires = 2027-01-01T00:00:00Z        # optional
    deterministic = false                 # optional
    abi = "wasi_snapshot_preview1"        # optional; the host ABI the module imports

    [capabilities]
    env = { GREETING = "hello" }          # exact variables the guest sees
    net = ["https://api.example.com/v1/*"] # outbound HTTP(S) destinations (docs/net.md)
    [[capabilities.fs]]
    path = "data"                         # guest name == dir under the tenant data root
    mode = "ro"                           # "ro" | "rw"

    [limits]                              # every field optional; node policy fills the rest
    fuel = 50_000_000
    wall_ms = 2000
    memory_bytes = 16_777_216
    stack_bytes = 524_288
    output_bytes = 65_536
    disk_bytes = 16_777_216               # bytes in the rw grants (DISK_LIMIT)
    disk_files = 1_000                    # entries in the rw grants (DISK_LIMIT)
    open_files = 64                       # descriptors held at once (FD_LIMIT)
    compile_ms = 5_000                    # compilation wall time (COMPILE_LIMIT)
    compile_memory_bytes = 536_870_912    # compilation address space (COMPILE_LIMIT)
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nightcore.errors import ManifestError
from nightcore.module.netpolicy import NetPolicyError, parse_grant

SCHEMA_VERSION = 1
SUPPORTED_ABIS = ("wasi_snapshot_preview1",)
TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_PATH_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
_ENTRY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

MAX_ARGS = 64
MAX_ARG_LEN = 4096
MAX_ENV = 64
MAX_ENV_VALUE = 4096
MAX_FS = 16
MAX_NET = 32
MAX_DESCRIPTION = 1024

# Hard bounds of the schema itself; node policy narrows these further.
LIMIT_RANGES: dict[str, tuple[int, int]] = {
    "fuel": (1_000, 10**13),
    "wall_ms": (1, 24 * 3600 * 1000),
    "memory_bytes": (65_536, 4 * 1024**3),
    "stack_bytes": (16_384, 64 * 1024**2),
    "output_bytes": (0, 1024**3),
    "disk_bytes": (0, 1024**4),
    "disk_files": (0, 1_000_000),
    "open_files": (0, 65_536),
    "compile_ms": (1, 600_000),
    "compile_memory_bytes": (16 * 1024**2, 16 * 1024**3),
}
LIMIT_NAMES = tuple(LIMIT_RANGES)


@dataclass(frozen=True)
class FsGrant:
    path: str
    mode: str  # "ro" | "rw"

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "mode": self.mode}


@dataclass(frozen=True)
class Capabilities:
    env: tuple[tuple[str, str], ...] = ()
    fs: tuple[FsGrant, ...] = ()
    net: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "env": dict(self.env),
            "fs": [g.to_dict() for g in self.fs],
            "net": list(self.net),
        }


@dataclass(frozen=True)
class Limits:
    """Requested limits; ``None`` means "the node policy's default"."""

    fuel: int | None = None
    wall_ms: int | None = None
    memory_bytes: int | None = None
    stack_bytes: int | None = None
    output_bytes: int | None = None
    disk_bytes: int | None = None
    disk_files: int | None = None
    open_files: int | None = None
    compile_ms: int | None = None
    compile_memory_bytes: int | None = None

    def to_dict(self) -> dict[str, int]:
        return {k: v for k in LIMIT_NAMES if (v := getattr(self, k)) is not None}


@dataclass(frozen=True)
class Manifest:
    tenant: str
    version: str
    entrypoint: str = "_start"
    args: tuple[str, ...] = ()
    description: str = ""
    not_before: dt.datetime | None = None
    expires: dt.datetime | None = None
    deterministic: bool = False
    abi: str = "wasi_snapshot_preview1"
    capabilities: Capabilities = field(default_factory=Capabilities)
    limits: Limits = field(default_factory=Limits)
    schema: int = SCHEMA_VERSION

    def to_predicate(self) -> dict[str, Any]:
        """The JSON form signed into the statement (datetimes as RFC 3339 UTC strings)."""
        out: dict[str, Any] = {
            "schema": self.schema,
            "tenant": self.tenant,
            "version": self.version,
            "entrypoint": self.entrypoint,
            "args": list(self.args),
            "description": self.description,
            "deterministic": self.deterministic,
            "abi": self.abi,
            "capabilities": self.capabilities.to_dict(),
            "limits": self.limits.to_dict(),
        }
        if self.not_before is not None:
            out["not_before"] = format_time(self.not_before)
        if self.expires is not None:
            out["expires"] = format_time(self.expires)
        return out


def format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, name: str) -> dt.datetime:
    """Accept a TOML datetime or an RFC 3339 string; both must carry a UTC offset."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ManifestError(f"{name}: not an RFC 3339 date-time") from None
    if not isinstance(value, dt.datetime):
        raise ManifestError(f"{name}: expected a date-time with offset")
    if value.tzinfo is None:
        raise ManifestError(f"{name}: date-time needs an explicit offset (e.g. Z)")
    return value.astimezone(dt.UTC)


_TOP_FIELDS = {
    "schema",
    "tenant",
    "version",
    "entrypoint",
    "args",
    "description",
    "not_before",
    "expires",
    "deterministic",
    "abi",
    "capabilities",
    "limits",
}
_REQUIRED = {"schema", "tenant", "version"}


def _expect(value: object, typ: type, name: str) -> Any:
    # bool is an int in Python; a limit of `true` must not pass as 1.
    if typ is int and isinstance(value, bool):
        raise ManifestError(f"{name}: expected an integer, got a boolean")
    if not isinstance(value, typ):
        raise ManifestError(f"{name}: expected {typ.__name__}, got {type(value).__name__}")
    return value


def _check_unknown(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ManifestError(f"{where}: unknown field {unknown[0]!r}")


def validate_tenant_id(tenant: str) -> str:
    if not TENANT_ID_RE.fullmatch(tenant):
        raise ManifestError(
            "tenant: must match [a-z0-9][a-z0-9._-]{0,62} (lower-case, no path or shell characters)"
        )
    return tenant


def validate_fs_path(path: str) -> str:
    if path.startswith("/") or "\\" in path:
        raise ManifestError(f"capabilities.fs.path {path!r}: must be relative")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ManifestError(f"capabilities.fs.path {path!r}: empty, '.' or '..' component")
        if not _PATH_PART_RE.fullmatch(part):
            raise ManifestError(f"capabilities.fs.path {path!r}: unsupported characters")
    return path


def _parse_capabilities(raw: object) -> Capabilities:
    data = _expect(raw, dict, "capabilities")
    _check_unknown(data, {"env", "fs", "net"}, "capabilities")
    env_raw = _expect(data.get("env", {}), dict, "capabilities.env")
    if len(env_raw) > MAX_ENV:
        raise ManifestError(f"capabilities.env: more than {MAX_ENV} variables")
    env: list[tuple[str, str]] = []
    for k, v in env_raw.items():
        if not _ENV_NAME_RE.fullmatch(k):
            raise ManifestError(f"capabilities.env: invalid variable name {k!r}")
        _expect(v, str, f"capabilities.env.{k}")
        if len(v) > MAX_ENV_VALUE or "\x00" in v:
            raise ManifestError(f"capabilities.env.{k}: value too long or contains NUL")
        env.append((k, v))
    fs_raw = _expect(data.get("fs", []), list, "capabilities.fs")
    if len(fs_raw) > MAX_FS:
        raise ManifestError(f"capabilities.fs: more than {MAX_FS} grants")
    fs: list[FsGrant] = []
    seen: set[str] = set()
    for i, item in enumerate(fs_raw):
        g = _expect(item, dict, f"capabilities.fs[{i}]")
        _check_unknown(g, {"path", "mode"}, f"capabilities.fs[{i}]")
        if "path" not in g:
            raise ManifestError(f"capabilities.fs[{i}]: missing 'path'")
        path = validate_fs_path(_expect(g["path"], str, f"capabilities.fs[{i}].path"))
        mode = _expect(g.get("mode", "ro"), str, f"capabilities.fs[{i}].mode")
        if mode not in ("ro", "rw"):
            raise ManifestError(f"capabilities.fs[{i}].mode: must be 'ro' or 'rw'")
        first = path.split("/")[0]
        if path in seen or any(p.split("/")[0] == first for p in seen):
            raise ManifestError(f"capabilities.fs[{i}]: overlapping grant for {path!r}")
        seen.add(path)
        fs.append(FsGrant(path=path, mode=mode))
    net_raw = _expect(data.get("net", []), list, "capabilities.net")
    if len(net_raw) > MAX_NET:
        raise ManifestError(f"capabilities.net: more than {MAX_NET} entries")
    net: list[str] = []
    for i, item in enumerate(net_raw):
        s = _expect(item, str, f"capabilities.net[{i}]")
        try:
            parse_grant(s)  # docs/net.md: no '*', no wildcard host, http(s) only
        except NetPolicyError as exc:
            raise ManifestError(f"capabilities.net[{i}]: {exc}") from None
        net.append(s)
    return Capabilities(
        env=tuple(sorted(env)), fs=tuple(sorted(fs, key=lambda g: g.path)), net=tuple(sorted(net))
    )


def _parse_limits(raw: object) -> Limits:
    data = _expect(raw, dict, "limits")
    _check_unknown(data, set(LIMIT_NAMES), "limits")
    values: dict[str, int] = {}
    for name, (lo, hi) in LIMIT_RANGES.items():
        if name in data:
            v = _expect(data[name], int, f"limits.{name}")
            if not lo <= v <= hi:
                raise ManifestError(f"limits.{name}: {v} is outside [{lo}, {hi}]")
            values[name] = v
    return Limits(**values)


def manifest_from_dict(data: object) -> Manifest:
    """Validate a parsed manifest (TOML table or signed JSON predicate)."""
    d = _expect(data, dict, "manifest")
    _check_unknown(d, _TOP_FIELDS, "manifest")
    missing = sorted(_REQUIRED - set(d))
    if missing:
        raise ManifestError(f"manifest: missing required field {missing[0]!r}")
    schema = _expect(d["schema"], int, "schema")
    if schema != SCHEMA_VERSION:
        raise ManifestError(f"schema: unsupported version {schema} (this runtime reads 1)")
    tenant = validate_tenant_id(_expect(d["tenant"], str, "tenant"))
    version = _expect(d["version"], str, "version")
    if not _VERSION_RE.fullmatch(version):
        raise ManifestError("version: invalid characters or length")
    entrypoint = _expect(d.get("entrypoint", "_start"), str, "entrypoint")
    if not _ENTRY_RE.fullmatch(entrypoint):
        raise ManifestError("entrypoint: not a valid export name")
    args_raw = _expect(d.get("args", []), list, "args")
    if len(args_raw) > MAX_ARGS:
        raise ManifestError(f"args: more than {MAX_ARGS} arguments")
    args = []
    for i, a in enumerate(args_raw):
        _expect(a, str, f"args[{i}]")
        if len(a) > MAX_ARG_LEN or "\x00" in a:
            raise ManifestError(f"args[{i}]: too long or contains NUL")
        args.append(a)
    description = _expect(d.get("description", ""), str, "description")
    if len(description) > MAX_DESCRIPTION:
        raise ManifestError(f"description: longer than {MAX_DESCRIPTION} characters")
    not_before = parse_time(d["not_before"], "not_before") if "not_before" in d else None
    expires = parse_time(d["expires"], "expires") if "expires" in d else None
    if not_before and expires and expires <= not_before:
        raise ManifestError("expires: must be after not_before")
    deterministic = _expect(d.get("deterministic", False), bool, "deterministic")
    abi = _expect(d.get("abi", SUPPORTED_ABIS[0]), str, "abi")
    if abi not in SUPPORTED_ABIS:
        raise ManifestError(f"abi: {abi!r} is not provided by this runtime")
    return Manifest(
        tenant=tenant,
        version=version,
        entrypoint=entrypoint,
        args=tuple(args),
        description=description,
        not_before=not_before,
        expires=expires,
        deterministic=deterministic,
        abi=abi,
        capabilities=_parse_capabilities(d.get("capabilities", {})),
        limits=_parse_limits(d.get("limits", {})),
        schema=schema,
    )


MAX_MANIFEST_BYTES = 64 * 1024


def parse_manifest_toml(data: bytes) -> Manifest:
    """Parse and validate ``manifest.toml`` bytes (size-capped, UTF-8, no duplicate keys)."""
    import tomllib

    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest.toml is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError("manifest.toml is not UTF-8") from None
    try:
        # tomllib refuses duplicate keys itself ("Cannot overwrite a value").
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"manifest.toml: {exc}") from None
    return manifest_from_dict(table)
