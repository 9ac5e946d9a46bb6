"""The node context: one workspace's layout and configuration, and the services built on them.

A :class:`NodeContext` composes what every operation of a node shares — the audit log, the
transparency log, the key registry and revocation list, and the node signer — each built
once, on first use, from the workspace's :class:`~nightcore.layout.Layout` and
:class:`~nightcore.config.Config`. Lower layers never see the context: the audit package gets
an audit directory and a signer, the sandbox gets a cache directory and a secret, the
dashboard's collectors get a layout. Only the runner, AUFS and the application facade
(:mod:`nightcore.app`) hold a context.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from nightcore.config import NODE_PASSPHRASE_ENV, Config, Policy, parse_config
from nightcore.errors import TrustError, WorkspaceError
from nightcore.fsio import atomic_write, open_regular, read_input, read_regular_capped
from nightcore.layout import CONFIG_NAME, Layout, find_root

if TYPE_CHECKING:
    from nightcore.audit.log import AuditLog
    from nightcore.audit.tlog import TransparencyLog
    from nightcore.trust.registry import Registry, RevocationList

MAX_CONFIG_READ = 256 * 1024 + 1
MAX_REGISTRY_BYTES = 4 * 1024 * 1024
MAX_REVOCATIONS_BYTES = 16 * 1024 * 1024


def find_workspace(explicit: str | None) -> Path:
    """``-w`` beats ``NIGHTCORE_HOME`` beats the current directory."""
    root = find_root(explicit)
    if not (root / CONFIG_NAME).is_file():
        raise WorkspaceError(
            f"{root} is not a Night Core workspace (no {CONFIG_NAME}); "
            "run 'nightcore init' or pass -w DIR",
            code="WORKSPACE_NOT_FOUND",
        )
    return root


class NodeContext:
    """One workspace's layout, configuration and services. Cheap to open; loads lazily.

    Safe to share between threads: the audit log serialises its writers, the signer is
    loaded under a lock, and the trust caches are keyed by file identity.
    """

    def __init__(self, root: Path, *, fips: bool | None = None) -> None:
        self.layout = Layout(root)
        self.config: Config = parse_config(self._read_config(), fips_override=fips)
        self._node_key_id: str | None = None
        self._node_pub_pem: bytes | None = None
        self._audit: AuditLog | None = None
        self._tlog: TransparencyLog | None = None
        self._parsed: dict[str, tuple[Any, Any]] = {}
        self._node_signer: Any = None
        self._lock = threading.Lock()

    def _read_config(self) -> bytes:
        """``nightcore.toml``, at most one byte above its cap (``parse_config`` refuses that)."""
        path = self.layout.config_path
        try:
            with open_regular(path) as fh:
                return fh.read(MAX_CONFIG_READ)
        except OSError as exc:
            raise WorkspaceError(f"cannot read {path}: {exc.strerror}") from None

    @classmethod
    def open(cls, explicit: str | None = None, *, fips: bool | None = None) -> Self:
        return cls(find_workspace(explicit), fips=fips)

    @property
    def root(self) -> Path:
        return self.layout.root

    @property
    def policy(self) -> Policy:
        return self.config.policy

    # -- the node's identity ---------------------------------------------------------------
    def node_public_pem(self) -> bytes:
        if self._node_pub_pem is None:
            from nightcore.trust.pubkey import MAX_PUBLIC_PEM

            try:
                self._node_pub_pem = read_regular_capped(self.layout.node_pub_path, MAX_PUBLIC_PEM)
            except FileNotFoundError:
                raise WorkspaceError("node.pub.pem is missing", code="NODE_KEY_MISSING") from None
            except OSError as exc:
                raise WorkspaceError(
                    f"node.pub.pem is unusable: {exc.strerror}", code="KEY_INVALID"
                ) from None
        return self._node_pub_pem

    def node_key_id(self) -> str:
        if self._node_key_id is None:
            from nightcore.trust.pubkey import PublicKey

            self._node_key_id = PublicKey.from_pem(self.node_public_pem()).keyid
        return self._node_key_id

    def node_key_uri(self) -> str:
        key = self.config.node_key
        scheme, sep, _ = key.partition(":")
        if sep and len(scheme) > 1:
            return key
        path = Path(key)
        return str(path if path.is_absolute() else self.layout.root / path)

    def node_signer(self) -> Any:
        """The node's signer (attestations, bundle indexes, checkpoints), loaded once.

        A local key file is read with ``cryptography`` (``FileSigner``); a KMS/HSM URI goes
        through securesystemslib. Either must match ``node.pub.pem``.
        """
        with self._lock:
            if self._node_signer is None:
                from nightcore.trust.keys import (
                    SslibSignerAdapter,
                    load_file_signer,
                    load_signer,
                )

                uri = self.node_key_uri()
                signer: Any = load_file_signer(uri, NODE_PASSPHRASE_ENV)
                if signer is None:
                    from nightcore.trust.pubkey import PublicKey

                    pub = PublicKey.from_pem(self.node_public_pem())
                    signer = SslibSignerAdapter(
                        load_signer(uri, NODE_PASSPHRASE_ENV, pub.to_sslib())
                    )
                if signer.key_id != self.node_key_id():
                    raise WorkspaceError(
                        "the node key does not match node.pub.pem", code="NODE_KEY_MISMATCH"
                    )
                self._node_signer = signer
            return self._node_signer

    def forget_node_key(self) -> None:
        """Drop the cached node key, signer and transparency log, and read ``[node] key``
        again (after a key rotation); a ``--fips`` tightening is kept."""
        self.config = parse_config(
            self._read_config(), fips_override=True if self.policy.fips else None
        )
        with self._lock:
            self._node_signer = None
            self._node_pub_pem = None
            self._node_key_id = None
            self._tlog = None
            self._audit = None

    # -- audit -----------------------------------------------------------------------------
    def audit(self) -> AuditLog:
        """The workspace's audit log (one instance, so its tail cursor stays warm).

        Safe across threads and processes: every append takes the file lock and re-checks the
        file size against its cursor.
        """
        if self._audit is None:
            from nightcore.audit.log import AuditLog

            self._audit = AuditLog(self.layout.audit_dir, self.node_key_id())
        return self._audit

    def transparency_log(self) -> TransparencyLog:
        """The audit log as a Merkle tree with signed checkpoints (one per audit directory in
        this process, so its tree stays in memory); signs with the node signer, loaded only
        when a checkpoint is actually signed."""
        if self._tlog is None:
            from nightcore.audit.tlog import transparency_log

            self._tlog = transparency_log(
                self.layout,
                key_name=self.config.node_name,
                signer=self.node_signer,
                audit=self.audit,
            )
        return self._tlog

    # -- trust -----------------------------------------------------------------------------
    def load_registry(self) -> Registry:
        from nightcore.trust.registry import Registry, parse_registry

        path = self.layout.registry_path
        key = file_identity(path)
        if key is None:
            return Registry()
        cached = self._parsed.get("registry")
        if cached is not None and cached[0] == key:
            return cached[1]  # type: ignore[no-any-return]
        registry = parse_registry(read_capped(path, MAX_REGISTRY_BYTES))
        self._parsed["registry"] = (key, registry)
        return registry

    def revocation_mark(self) -> int:
        path = self.layout.revocation_mark_path
        key = file_identity(path)
        cached = self._parsed.get("mark")
        if key is not None and cached is not None and cached[0] == key:
            return int(cached[1])
        try:
            raw = read_input(
                path,
                64,
                what="state/trust/revocations.version",
                code="STATE_INVALID",
                error=TrustError,
                missing_ok=True,
            )
        except FileNotFoundError:
            return 0
        text = raw.decode("ascii", errors="replace").strip()
        if not text.isascii() or not text.isdigit():
            raise TrustError("state/trust/revocations.version is corrupt", code="STATE_INVALID")
        if key is not None:
            self._parsed["mark"] = (key, int(text))
        return int(text)

    def load_revocations(self, registry: Registry) -> RevocationList:
        from nightcore.trust.registry import RevocationList, check_not_rollback, parse_revocations

        mark = self.revocation_mark()
        path = self.layout.revocations_path
        key = file_identity(path)
        if key is None:
            if mark > 0:
                raise TrustError(
                    f"revocation list is missing but version {mark} was accepted "
                    "before (deleted or rolled back)",
                    code="REVOCATION_ROLLBACK",
                )
            return RevocationList()
        cached = self._parsed.get("revocations")
        if (
            cached is not None
            and cached[0][0] == key
            and cached[0][1] is registry
            and cached[0][2] == self.policy.fips
        ):
            rl: RevocationList = cached[1]
        else:
            data = read_capped(path, MAX_REVOCATIONS_BYTES)
            rl = parse_revocations(data, registry, fips=self.policy.fips)
            self._parsed["revocations"] = ((key, registry, self.policy.fips), rl)
        check_not_rollback(rl, mark)
        if rl.version > mark:
            self.write_revocation_mark(rl.version)
        return rl

    def write_revocation_mark(self, version: int) -> None:
        atomic_write(self.layout.revocation_mark_path, f"{version}\n".encode())


def file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """Identity of a file's current content for parse caches: inode, size, mtime and ctime.

    ctime cannot be set from user space, so a rewrite (even one that restores the mtime and
    the size) changes the key; a cache hit means the very same bytes are still there.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_capped(path: Path, cap: int) -> bytes:
    """A trust file of the workspace (registry, revocation list): ``TRUST_FILE_TOO_LARGE``
    above ``cap``; a directory, FIFO or device is an ``OSError`` (``IO_ERROR``), never a
    hang or an endless read."""
    try:
        return read_regular_capped(path, cap)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise TrustError(
                f"{path.name} is larger than {cap} bytes", code="TRUST_FILE_TOO_LARGE"
            ) from None
        raise
