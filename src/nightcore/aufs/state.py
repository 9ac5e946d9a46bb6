"""Where a node keeps its AUFS state, and reading it without python-tuf (the dashboard and
status views read these without loading the TUF client)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nightcore.aufs.errors import AufsError
from nightcore.context import NodeContext
from nightcore.fsio import read_input, read_regular_capped

STATE_FORMAT = 1
MAX_INSTALLED_BYTES = 16 * 1024 * 1024
MAX_TRUSTED_METADATA_BYTES = 32 * 1024 * 1024  # above every role's download limit


@dataclass(frozen=True)
class NodePaths:
    ws: NodeContext

    @property
    def base(self) -> Path:
        return self.ws.layout.aufs_state_dir

    @property
    def metadata(self) -> Path:
        return self.base / "metadata"

    @property
    def targets(self) -> Path:
        return self.base / "targets"

    @property
    def installed(self) -> Path:
        return self.base / "installed.json"

    @property
    def staging(self) -> Path:
        return self.ws.layout.modules_dir / ".aufs-staging"

    @property
    def previous(self) -> Path:
        return self.ws.layout.modules_dir / ".aufs-previous"


def load_state(paths: NodePaths) -> dict[str, Any]:
    try:
        data = read_input(
            paths.installed,
            MAX_INSTALLED_BYTES,
            what="state/aufs/installed.json",
            code="STATE_INVALID",
            unreadable="IO_ERROR",
            error=AufsError,
            missing_ok=True,
        )
        doc = json.loads(data)
    except FileNotFoundError:
        return {"format": STATE_FORMAT, "tenants": {}, "trust": {}, "runtime": {}}
    except ValueError:
        raise AufsError("state/aufs/installed.json is corrupt", code="STATE_INVALID") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise AufsError("state/aufs/installed.json has an unknown format", code="STATE_INVALID")
    return doc


def is_initialized(metadata_dir: Path) -> bool:
    return (metadata_dir / "root.json").exists()


def trusted_versions(metadata_dir: Path) -> dict[str, int]:
    """Versions of the trusted metadata on disk (0 for a role not loaded yet)."""
    out: dict[str, int] = {}
    for role in ("root", "timestamp", "snapshot", "targets"):
        try:
            path = metadata_dir / f"{role}.json"
            out[role] = _version_of(read_regular_capped(path, MAX_TRUSTED_METADATA_BYTES))
        except (OSError, ValueError, KeyError, TypeError):
            out[role] = 0
    return out


def _version_of(data: bytes) -> int:
    import json

    doc = json.loads(data)
    version = doc["signed"]["version"]
    if not isinstance(version, int):
        raise ValueError("version")
    return version
