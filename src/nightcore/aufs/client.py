"""The AUFS client: python-tuf's ``Updater`` with Night Core's fetcher, limits and codes.

All TUF rules (root chain, thresholds of distinct keys, rollback, freeze, mix-and-match,
lengths and hashes) are python-tuf's ``ngclient``; this module only

* bootstraps trust offline (``init``: a root.json verified against itself, optionally pinned
  by its SHA-256, then stored as the only trust anchor),
* gives ``Updater`` a fetcher that bounds total download time (slow retrieval) and an
  ``UpdaterConfig`` built from :class:`~nightcore.aufs.config.Limits` (endless data),
* translates every python-tuf exception into a stable code (:func:`errors.from_tuf`),
* in FIPS mode (``fips=True``) makes every key whose scheme is not FIPS-approved (Ed25519, RSA;
  :data:`nightcore.trust.keys.FIPS_SCHEMES` are ECDSA P-256/P-384) verify nothing while
  python-tuf loads and verifies metadata: a threshold is met only by approved keys, and metadata
  whose threshold only Ed25519 signatures meet is refused (``ALGORITHM_NOT_ALLOWED``). This is
  done by swapping, under a process-wide lock, securesystemslib's key registry
  (``KEY_FOR_TYPE_AND_SCHEME``) for the duration of the python-tuf calls (docs/keys.md).

The metadata directory holds exactly what python-tuf keeps there: ``root.json`` (a link into
``root_history/``), ``root_history/N.root.json``, ``timestamp.json``, ``snapshot.json``,
``targets.json`` -- each written only after it verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.ngclient import Updater

from nightcore.aufs.config import Limits
from nightcore.aufs.errors import AufsError, from_tuf
from nightcore.aufs.fetcher import BoundedFetcher
from nightcore.aufs.state import is_initialized, trusted_versions
from nightcore.fsio import open_regular, read_input, read_regular_capped

PLACEHOLDER_URL = "http://127.0.0.1:9/"  # init never fetches; Updater wants some base URL
_KEY_REGISTRY_LOCK = threading.RLock()


def _local_caps(limits: Limits) -> dict[str, int]:
    return {
        "root": limits.root_max_length,
        "timestamp": limits.timestamp_max_length,
        "snapshot": limits.snapshot_max_length,
        "targets": limits.targets_max_length,
    }


def read_local_metadata(path: Path, cap: int) -> bytes:
    """A file of the node's trusted metadata directory: ``AUFS_METADATA_INVALID`` for a
    directory, FIFO or device planted there, ``AUFS_TOO_LARGE`` above the role's download
    limit (nothing larger can have been written after verification)."""
    return read_input(
        path,
        cap,
        what="trusted metadata",
        code="AUFS_METADATA_INVALID",
        too_large="AUFS_TOO_LARGE",
        unreadable="IO_ERROR",
        error=AufsError,
    )


def _check_root_history(metadata_dir: Path, cap: int) -> None:
    """python-tuf opens ``root_history/N.root.json`` itself (plain ``open``, whole read) when
    it walks the root chain: refuse beforehand what would block it (a FIFO) or never end (a
    link to a device) or is above the root limit."""
    import os
    import stat

    history = metadata_dir / "root_history"
    try:
        names = os.listdir(history)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise AufsError(
            f"trusted metadata root_history: {exc.strerror}", code="AUFS_METADATA_INVALID"
        ) from None
    for name in names:
        try:
            st = os.stat(history / name)
        except FileNotFoundError:
            continue  # a dangling link: python-tuf sees no such version
        if not stat.S_ISREG(st.st_mode):
            raise AufsError(
                f"trusted metadata root_history/{name} is not a regular file",
                code="AUFS_METADATA_INVALID",
            )
        if st.st_size > cap:
            raise AufsError(
                f"trusted metadata root_history/{name} is larger than {cap} bytes",
                code="AUFS_TOO_LARGE",
            )


class _Updater(Updater):
    """python-tuf's ``Updater`` whose reads of the local metadata and target cache are capped
    reads of regular files: a FIFO, a link to ``/dev/zero`` or a huge file planted in
    ``state/aufs`` never blocks or exhausts memory. In place of the trusted root it is refused
    with a code; in place of another role or a cached target it counts as no local copy (as a
    corrupt one does), so the verified download replaces it."""

    def __init__(self, *args: Any, caps: dict[str, int], **kwargs: Any) -> None:
        self._caps = caps  # before Updater.__init__: it loads the trusted root
        super().__init__(*args, **kwargs)

    def _load_local_metadata(self, rolename: str) -> bytes:
        # Only the top-level roles are ever stored (no delegations are followed).
        cap = self._caps.get(rolename, max(self._caps.values()))
        path = Path(self._dir) / f"{quote(rolename, '')}.json"
        if rolename == "root":
            return read_local_metadata(path, cap)  # the trust anchor: refused with a code
        # An OSError is what python-tuf expects of a local copy that is missing or unusable:
        # it then downloads the role again (verified) and replaces the local file.
        return read_regular_capped(path, cap)

    def find_cached_target(self, targetinfo: TargetFile, filepath: str | None = None) -> str | None:
        from tuf.api.exceptions import LengthOrHashMismatchError

        if filepath is None:
            filepath = self._generate_target_file_path(targetinfo)
        try:
            with open_regular(filepath, cap=targetinfo.length) as fh:
                targetinfo.verify_length_and_hashes(fh)
        except (OSError, LengthOrHashMismatchError):
            return None  # not there, or not the target: download_target replaces it
        return filepath


@contextlib.contextmanager
def approved_keys_only(enabled: bool, ignored: list[str]) -> Iterator[None]:
    """With ``enabled`` (FIPS mode), keys python-tuf deserializes inside the block whose scheme
    is not FIPS-approved verify no signature (their key ids are appended to ``ignored``)."""
    if not enabled:
        with _KEY_REGISTRY_LOCK:  # never while another thread's FIPS swap is in effect
            yield
        return
    from securesystemslib.exceptions import UnverifiedSignatureError
    from securesystemslib.signer import KEY_FOR_TYPE_AND_SCHEME, Signature, SSlibKey

    from nightcore.trust.keys import FIPS_SCHEMES

    class NotApprovedKey(SSlibKey):
        """A key python-tuf may list but whose signatures never count in FIPS mode."""

        def verify_signature(self, signature: Signature, data: bytes) -> None:
            ignored.append(self.keyid)
            raise UnverifiedSignatureError(f"{self.scheme} is not FIPS-approved")

    with _KEY_REGISTRY_LOCK:
        saved = dict(KEY_FOR_TYPE_AND_SCHEME)
        for pair, impl in saved.items():
            if impl is SSlibKey and pair[1] not in FIPS_SCHEMES:
                KEY_FOR_TYPE_AND_SCHEME[pair] = NotApprovedKey
        try:
            yield
        finally:
            KEY_FOR_TYPE_AND_SCHEME.clear()
            KEY_FOR_TYPE_AND_SCHEME.update(saved)


def _fips_refusal(exc: AufsError, ignored: list[str]) -> AufsError:
    """A threshold python-tuf found unmet because only non-approved keys signed."""
    if exc.code != "AUFS_THRESHOLD" or not ignored:
        return exc
    return AufsError(
        f"FIPS mode: {exc.message}; {len(set(ignored))} signing key(s) are not FIPS-approved "
        "(Ed25519/RSA signatures do not count towards a threshold)",
        code="ALGORITHM_NOT_ALLOWED",
    )


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
    metadata_dir: Path,
    root_data: bytes,
    *,
    expect_sha256: str | None = None,
    limits: Limits,
    fips: bool = False,
) -> RootInfo:
    """Bootstrap trust offline from ``root_data`` (verified against its own root role; in FIPS
    mode, by FIPS-approved keys only)."""
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
    ignored: list[str] = []
    try:
        with approved_keys_only(fips, ignored):
            Updater(
                str(metadata_dir),
                PLACEHOLDER_URL,
                config=limits.updater_config(),
                bootstrap=root_data,
            )
    except Exception as exc:  # noqa: BLE001 - python-tuf raises many types; all map to a code
        raise _fips_refusal(from_tuf(exc, "root.json"), ignored) from None
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
        fips: bool = False,
    ) -> None:
        if not is_initialized(metadata_dir):
            raise AufsError(
                f"no trusted root in {metadata_dir}: run 'nightcore aufs client init ROOT_JSON'",
                code="AUFS_NOT_INITIALIZED",
            )
        self.metadata_dir = metadata_dir
        self.limits = limits
        self.fips = fips
        self._ignored: list[str] = []  # key ids whose signatures did not count (FIPS mode)
        fetcher = BoundedFetcher(
            download_timeout=limits.download_timeout,
            gap_timeout=limits.gap_timeout,
            connect_timeout=limits.connect_timeout,
        )
        if target_dir is not None:
            target_dir.mkdir(parents=True, exist_ok=True)
        _check_root_history(metadata_dir, limits.root_max_length)
        try:
            # bootstrap=None: the trust anchor is the root this node already trusts (placed by
            # init_client and moved forward only by verified root rotations).
            with approved_keys_only(fips, self._ignored):
                self.updater = _Updater(
                    str(metadata_dir),
                    metadata_url,
                    str(target_dir) if target_dir is not None else None,
                    target_base_url,
                    fetcher,
                    limits.updater_config(),
                    bootstrap=None,
                    caps=_local_caps(limits),
                )
        except Exception as exc:  # noqa: BLE001
            raise _fips_refusal(from_tuf(exc, "trusted root"), self._ignored) from None
        self._refreshed = False

    def refresh(self) -> dict[str, int]:
        try:
            with approved_keys_only(self.fips, self._ignored):
                self.updater.refresh()
        except Exception as exc:  # noqa: BLE001
            raise _fips_refusal(from_tuf(exc, "refresh"), self._ignored) from None
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
            data = read_local_metadata(
                self.metadata_dir / "targets.json", self.limits.targets_max_length
            )
            md = Metadata[Targets].from_bytes(data)
        except Exception as exc:  # noqa: BLE001
            raise from_tuf(exc, "targets.json") from None
        assert isinstance(md.signed, Targets)
        return dict(md.signed.targets)

    def targetinfo(self, path: str) -> TargetFile:
        try:
            with approved_keys_only(self.fips, self._ignored):
                info = self.updater.get_targetinfo(path)
        except Exception as exc:  # noqa: BLE001
            raise _fips_refusal(from_tuf(exc, "refresh"), self._ignored) from None
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
        data = read_local_metadata(self.metadata_dir / "root.json", self.limits.root_max_length)
        try:
            md = Metadata[Root].from_bytes(data)
        except Exception as exc:  # noqa: BLE001
            raise from_tuf(exc, "root.json") from None
        if not isinstance(md.signed, Root):
            raise AufsError("root.json is not root metadata", code="AUFS_METADATA_INVALID")
        return md.signed
