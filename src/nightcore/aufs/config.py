"""AUFS limits (every bound a hostile server could abuse has a name and a default) and the
node's ``aufs.toml`` settings.

``aufs.toml`` (beside ``nightcore.toml``; every field optional, flags override it)::

    [aufs]
    metadata_url = "https://updates.example.org/metadata/"
    target_base_url = "https://updates.example.org/targets/"
    apply_runtime = true          # take runtime releases offered by the channel

    [aufs.limits]                 # any field of Limits below
    download_timeout = 60.0
    gap_timeout = 10.0
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightcore.aufs.errors import AufsError

if TYPE_CHECKING:
    from tuf.ngclient import UpdaterConfig

SETTINGS_NAME = "aufs.toml"
MAX_SETTINGS_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on what the update channel may cost this node."""

    # python-tuf UpdaterConfig fields (metadata size caps: endless-data protection).
    root_max_length: int = 512_000
    timestamp_max_length: int = 16_384
    snapshot_max_length: int = 2_000_000
    targets_max_length: int = 5_000_000
    max_root_rotations: int = 32
    # Transport: the whole of one file must arrive within ``download_timeout`` seconds and
    # no gap between two received chunks may exceed ``gap_timeout`` (slow retrieval).
    download_timeout: float = 60.0
    gap_timeout: float = 10.0
    connect_timeout: float = 10.0
    # Targets and their content.
    max_target_bytes: int = 256 * 1024 * 1024
    max_archive_members: int = 8
    max_extracted_bytes: int = 80 * 1024 * 1024
    max_wheel_members: int = 4096
    max_wheel_bytes: int = 256 * 1024 * 1024
    selftest_timeout: float = 120.0

    def updater_config(self) -> UpdaterConfig:
        from tuf.ngclient import UpdaterConfig

        return UpdaterConfig(
            max_root_rotations=self.max_root_rotations,
            root_max_length=self.root_max_length,
            timestamp_max_length=self.timestamp_max_length,
            snapshot_max_length=self.snapshot_max_length,
            targets_max_length=self.targets_max_length,
            app_user_agent="nightcore-aufs",
        )

    def replace(self, **changes: Any) -> Limits:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Settings:
    metadata_url: str | None = None
    target_base_url: str | None = None
    apply_runtime: bool = True
    limits: Limits = field(default_factory=Limits)


_LIMIT_FIELDS = {f.name: f.type for f in dataclasses.fields(Limits)}


def parse_settings(data: bytes) -> Settings:
    if len(data) > MAX_SETTINGS_BYTES:
        raise AufsError(f"{SETTINGS_NAME} is too large", code="AUFS_CONFIG_INVALID")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AufsError(f"{SETTINGS_NAME}: {exc}", code="AUFS_CONFIG_INVALID") from None
    if set(doc) - {"aufs"}:
        raise AufsError(f"{SETTINGS_NAME}: only an [aufs] table", code="AUFS_CONFIG_INVALID")
    t = doc.get("aufs", {})
    unknown = sorted(set(t) - {"metadata_url", "target_base_url", "apply_runtime", "limits"})
    if unknown:
        raise AufsError(
            f"{SETTINGS_NAME}: unknown field {unknown[0]!r}", code="AUFS_CONFIG_INVALID"
        )
    for name in ("metadata_url", "target_base_url"):
        if name in t:
            check_url(t[name], name)
    apply_runtime = t.get("apply_runtime", True)
    if not isinstance(apply_runtime, bool):
        raise AufsError("aufs.apply_runtime must be true or false", code="AUFS_CONFIG_INVALID")
    limits = Limits()
    raw_limits = t.get("limits", {})
    if not isinstance(raw_limits, dict):
        raise AufsError("[aufs.limits] must be a table", code="AUFS_CONFIG_INVALID")
    changes: dict[str, Any] = {}
    for k, v in raw_limits.items():
        if k not in _LIMIT_FIELDS:
            raise AufsError(f"aufs.limits: unknown field {k!r}", code="AUFS_CONFIG_INVALID")
        want_float = _LIMIT_FIELDS[k] in ("float", float)
        ok = isinstance(v, int | float) if want_float else isinstance(v, int)
        if isinstance(v, bool) or not ok or v <= 0:
            raise AufsError(
                f"aufs.limits.{k} must be a positive number", code="AUFS_CONFIG_INVALID"
            )
        changes[k] = float(v) if want_float else v
    return Settings(
        metadata_url=t.get("metadata_url"),
        target_base_url=t.get("target_base_url"),
        apply_runtime=apply_runtime,
        limits=limits.replace(**changes),
    )


def check_url(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise AufsError(f"{what} must be an http(s) URL", code="AUFS_CONFIG_INVALID")
    if any(c.isspace() for c in value) or len(value) > 2048:
        raise AufsError(f"{what} is not a valid URL", code="AUFS_CONFIG_INVALID")
    return value if value.endswith("/") else value + "/"


def load_settings(ws_root: Path | None) -> Settings:
    if ws_root is None:
        return Settings()
    from nightcore.fsio import open_regular

    path = ws_root / SETTINGS_NAME
    try:
        with open_regular(path) as fh:  # a FIFO or device is refused, not waited on
            data = fh.read(MAX_SETTINGS_BYTES + 1)  # parse_settings refuses one byte more
    except FileNotFoundError:
        return Settings()
    except OSError as exc:
        raise AufsError(f"{SETTINGS_NAME}: {exc.strerror}", code="AUFS_CONFIG_INVALID") from None
    return parse_settings(data)


def render_settings(metadata_url: str | None, target_base_url: str | None) -> bytes:
    lines = ["# Night Core AUFS settings (docs/aufs.md). Flags override these.", "[aufs]"]
    if metadata_url:
        lines.append(f'metadata_url = "{check_url(metadata_url, "metadata_url")}"')
    if target_base_url:
        lines.append(f'target_base_url = "{check_url(target_base_url, "target_base_url")}"')
    lines.append("apply_runtime = true")
    return ("\n".join(lines) + "\n").encode()
