"""The AUFS client: python-tuf's ``Updater`` with Night Core's fetcher, limits and codes.

All TUF rules (root chain, thresholds of distinct keys, rollback, freeze, mix-and-match,
lengths and hashes) are python-tuf's ``ngclient``; this module only

* bootstraps trust offline (``init``: a root.json verified against itself, optionally pinned
  by its SHA-256, then stored as the only trust anchor),
* gives ``Updater`` a fetcher that bounds total download time (slow retrieval) and an
  ``UpdaterConfig`` built from :class:`~nightcore.aufs.config.Limits` (endless data),
* translates every python-tuf exception into a stable code (:func:`errors.from_tuf`).

The metadata directory holds exactly what python-tuf keeps there: ``root.json`` (a link into
``root_history/``), ``root_history/N.root.json``, ``timestamp.json``, ``snapshot.json``,
``targets.json`` -- each written only after it verified.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.ngclient import Updater

from nightcore.aufs.config import Limits
from nightcore.aufs.errors import AufsError, from_tuf
from nightcore.aufs.fetcher import BoundedFetcher
from nightcore.aufs.state import is_initialized, trusted_versions

PLACEHOLDER_URL = "http://127.0.0.1:9/"  # init never fetches; Updater wants some base URL


@dataclass(frozen=True)
class RootInfo:
    version: int
    expires: str
    sha256: str
    roles: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "expires": self.expires,
            "sha256": self.sha256,
            "roles": self.roles,
        }


def root_info(data: bytes) -> RootInfo:
    md = Metadata[Root].from_bytes(data)
    root = md.signed
    assert isinstance(root, Root)
    roles = {
        name: {"threshold": r.threshold, "keyids": list(r.keyids)} for name, r in root.roles.items()
    }
    return RootInfo(
        root.version,
        root.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        hashlib.sha256(data).hexdigest(),
        roles,
    )


def init_client(
    metadata_dir: Path, root_data: bytes, *, expect_sha256: str | None = None, limits: Limits
) -> RootInfo:
    """Bootstrap trust offline from ``root_data`` (verified against its own root role)."""
    if len(root_data) > limits.root_max_length:
        raise AufsError("root.json is larger than the root size limit", code="AUFS_TOO_LARGE")
    digest = hashlib.sha256(root_data).hexdigest()
    if expect_sha256 is not None and digest != expect_sha256.lower():
        raise AufsError(
            f"root.json has SHA-256 {digest[:16]}..., not the pinned {expect_sha256[:16]}...",
            code="AUFS_ROOT_MISMATCH",
        )
    if is_initialized(metadata_dir) or (metadata_dir / "root_history").exists():
        raise AufsError(
            f"{metadata_dir} already holds a trusted root; trust moves only by root rotation",
            code="AUFS_ALREADY_INITIALIZED",
        )
    metadata_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        Updater(
            str(metadata_dir), PLACEHOLDER_URL, config=limits.updater_config(), bootstrap=root_data
        )
    except Exception as exc:  # noqa: BLE001 - python-tuf raises many types; all map to a code
        raise from_tuf(exc, "root.json") from None
    return root_info(root_data)


class AufsClient:
    """One refresh-and-download session (python-tuf allows one ``refresh`` per ``Updater``)."""

    def __init__(
        self,
        metadata_dir: Path,
        metadata_url: str,
        *,
        limits: Limits,
        target_dir: Path | None = None,
        target_base_url: str | None = None,
    ) -> None:
        if not is_initialized(metadata_dir):
            raise AufsError(
                f"no trusted root in {metadata_dir}: run 'nightcore aufs client init ROOT_JSON'",
                code="AUFS_NOT_INITIALIZED",
            )
        self.metadata_dir = metadata_dir
        self.limits = limits
        fetcher = BoundedFetcher(
            download_timeout=limits.download_timeout,
            gap_timeout=limits.gap_timeout,
            connect_timeout=limits.connect_timeout,
        )
        if target_dir is not None:
            target_dir.mkdir(parents=True, exist_ok=True)
        try:
            # bootstrap=None: the trust anchor is the root this node already trusts (placed by
            # init_client and moved forward only by verified root rotations).
            self.updater = Updater(
                str(metadata_dir),
                metadata_url,
                str(target_dir) if target_dir is not None else None,
                target_base_url,
                fetcher,
                limits.updater_config(),
                bootstrap=None,
            )
        except Exception as exc:  # noqa: BLE001
            raise from_tuf(exc, "trusted root") from None
        self._refreshed = False

    def refresh(self) -> dict[str, int]:
        try:
            self.updater.refresh()
        except Exception as exc:  # noqa: BLE001
            raise from_tuf(exc, "refresh") from None
        self._refreshed = True
        return self.versions()

    def versions(self) -> dict[str, int]:
        return trusted_versions(self.metadata_dir)

    def targets(self) -> dict[str, TargetFile]:
        """Every target the trusted top-level targets role lists (after ``refresh``).

        The listing comes from the verified ``targets.json`` on disk; lengths and hashes used
        for downloads always come from :meth:`targetinfo` (python-tuf's trusted set).
        """
        if not self._refreshed:
            self.refresh()
        try:
            md = Metadata[Targets].from_bytes((self.metadata_dir / "targets.json").read_bytes())
        except Exception as exc:  # noqa: BLE001
            raise from_tuf(exc, "targets.json") from None
        assert isinstance(md.signed, Targets)
        return dict(md.signed.targets)

    def targetinfo(self, path: str) -> TargetFile:
        try:
            info = self.updater.get_targetinfo(path)
        except Exception as exc:  # noqa: BLE001
            raise from_tuf(exc, "refresh") from None
        if info is None:
            raise AufsError(
                f"target {path[:120]!r} is not in the signed targets", code="AUFS_TARGET_NOT_FOUND"
            )
        return info

    def download(self, info: TargetFile, filepath: Path | None = None) -> Path:
        """Download (or reuse a verified cached copy of) a target; returns its local path."""
        if info.length > self.limits.max_target_bytes:
            raise AufsError(
                f"target {info.path[:80]!r} is {info.length} bytes, above the "
                f"{self.limits.max_target_bytes}-byte limit",
                code="AUFS_TOO_LARGE",
            )
        fp = str(filepath) if filepath is not None else None
        cached = self.updater.find_cached_target(info, fp)
        if cached is not None:
            return Path(cached)
        try:
            return Path(self.updater.download_target(info, fp))
        except Exception as exc:  # noqa: BLE001
            raise from_tuf(exc, info.path[:120]) from None

    def trusted_root(self) -> Root:
        md = Metadata[Root].from_bytes((self.metadata_dir / "root.json").read_bytes())
        assert isinstance(md.signed, Root)
        return md.signed
