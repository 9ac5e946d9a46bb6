"""AUFS repository tooling: offline threshold signing over python-tuf's Metadata API.

Layout of a repository directory::

    aufs-repo.json        expiry periods, online key locations, key names and ages
    private/              online snapshot/timestamp keys (0600 files in a 0700 dir)
    staged/root.json      the next root version, collecting signatures offline
    staged/targets.json   the next targets version, collecting signatures offline
    overrides/            working copies of downgrade overrides being signed
    public/               what ``repo serve`` (or any static web server) publishes
      metadata/           N.root.json (every version), root.json, timestamp.json,
                          N.snapshot.json, N.targets.json (consistent snapshots)
      targets/            <dir>/<sha256>.<name> (hash-prefixed target files)

Workflow: ``add-target`` (and ``rotate-key``, ``override``) change a *staged* copy of targets
(or root) whose version is the published one plus one; every change clears the signatures
collected so far, since they no longer cover the content. Each maintainer runs ``sign`` with
their own key. ``publish`` refuses until python-tuf's threshold check passes -- it counts the
distinct key ids of the role whose signatures verify -- then writes root and targets and bumps
snapshot and timestamp (python-tuf's ``Repository.do_snapshot``/``do_timestamp``), signed with
the online keys. The timestamp is written last, so a client never sees a timestamp that
points at files not yet there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer, SSlibKey
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from nightcore.aufs import artifacts
from nightcore.aufs.adapters import AdapterRegistry, default_registry
from nightcore.aufs.errors import AufsError, from_tuf
from nightcore.canonical import parse_json
from nightcore.errors import NightCoreError
from nightcore.fsio import atomic_write, file_lock, read_input
from nightcore.module.manifest import TENANT_ID_RE

CONFIG_NAME = "aufs-repo.json"
ONLINE_PASSPHRASE_ENV = "NIGHTCORE_AUFS_ONLINE_KEY_PASSPHRASE"  # noqa: S105 - a variable name
TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp")
DAY = 86400
DEFAULT_EXPIRY = {"root": 365 * DAY, "targets": 90 * DAY, "snapshot": 7 * DAY, "timestamp": DAY}
KEY_AGE_WARN_DAYS = 90  # threat model section 11: quarterly key rotation
_SERIALIZER = JSONSerializer(compact=False)
# Caps on what the tooling reads from a repository directory (far above what clients accept:
# the client's own limits, aufs.toml, are the real bounds; these only bound memory).
MAX_METADATA_BYTES = 16 * 1024 * 1024
MAX_REPO_CONFIG_BYTES = 1 << 20
MAX_OVERRIDE_BYTES = 1 << 20


def _read_repo_file(path: Path, cap: int, what: str, *, missing_ok: bool = False) -> bytes:
    """A file of the repository directory: ``AUFS_REPOSITORY_ERROR`` for a directory, FIFO or
    device, ``AUFS_TOO_LARGE`` above ``cap``, ``IO_ERROR`` when it cannot be read."""
    return read_input(
        path,
        cap,
        what=what,
        code="AUFS_REPOSITORY_ERROR",
        too_large="AUFS_TOO_LARGE",
        unreadable="IO_ERROR",
        error=AufsError,
        missing_ok=missing_ok,
    )


def _metadata(data: bytes, what: str) -> Metadata[Any]:
    """Parsed metadata of the repository; ``AUFS_METADATA_INVALID`` when it does not parse."""
    from tuf.api.serialization import DeserializationError

    try:
        return Metadata.from_bytes(data)
    except DeserializationError as exc:
        raise from_tuf(exc, what) from None


_SIGNED_INIT: dict[str, Callable[[], Signed]] = {
    "root": Root,
    "targets": Targets,
    "snapshot": Snapshot,
    "timestamp": Timestamp,
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _fmt(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- keys ------------------------------------------------------------------------------------


def key_name(ref: str) -> str:
    name = Path(ref.partition(":")[2] if ref.startswith("nightcore-key:") else ref).name
    for suffix in (".pub.pem", ".key", ".pem"):
        name = name.removesuffix(suffix)
    return name[:64]


def is_private_ref(ref: str) -> bool:
    return not ref.endswith((".pub.pem", ".pub"))


def public_key_of(ref: str) -> SSlibKey:
    """The public half of a key reference (a ``.pub.pem``, a ``.key`` beside its
    ``.pub.pem``, or a private key file that is then decrypted)."""
    from nightcore.trust.keys import MAX_KEY_FILE, load_signer, public_key_from_pem

    def read(p: Path) -> bytes:
        return read_input(
            p,
            MAX_KEY_FILE,
            what="public key",
            code="KEY_INVALID",
            unreadable="KEY_NOT_FOUND",
            error=AufsError,
        )

    path = Path(ref)
    if ref.endswith(".pub.pem"):
        return public_key_from_pem(read(path))
    if ref.endswith(".key"):
        sibling = path.with_name(path.name.removesuffix(".key") + ".pub.pem")
        if sibling.is_file():
            return public_key_from_pem(read(sibling))
    key = load_signer(ref).public_key
    assert isinstance(key, SSlibKey)
    return key


def signer_of(ref: str, passphrase_env: str | None = None) -> Signer:
    from nightcore.trust.keys import PASSPHRASE_ENV, load_signer

    return load_signer(ref, passphrase_env or PASSPHRASE_ENV)


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignStatus:
    role: str
    version: int
    signed: tuple[str, ...]  # distinct key ids whose signatures verify
    threshold: int
    # For root: the previous root's threshold must be met too.
    previous_signed: tuple[str, ...] = ()
    previous_threshold: int = 0

    @property
    def ready(self) -> bool:
        return len(self.signed) >= self.threshold and len(self.previous_signed) >= (
            self.previous_threshold
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "role": self.role,
            "version": self.version,
            "signed": list(self.signed),
            "threshold": self.threshold,
            "ready": self.ready,
        }
        if self.previous_threshold:
            out["previous_root_signed"] = list(self.previous_signed)
            out["previous_root_threshold"] = self.previous_threshold
        return out

    def describe(self) -> str:
        text = (
            f"{self.role} v{self.version}: signed by {len(self.signed)} distinct key(s), "
            f"threshold {self.threshold}"
        )
        if self.previous_threshold:
            text += (
                f"; by {len(self.previous_signed)} of the previous root's keys, threshold "
                f"{self.previous_threshold}"
            )
        return text


@dataclass(frozen=True)
class PublishResult:
    versions: dict[str, int]
    published: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"versions": self.versions, "published": list(self.published)}


@dataclass
class RepoConfig:
    expiry: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_EXPIRY))
    online_keys: dict[str, str] = field(default_factory=dict)
    pending_online_keys: dict[str, str] = field(default_factory=dict)
    keys: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return (
            json.dumps(
                {
                    "format": 1,
                    "expiry_seconds": self.expiry,
                    "online_keys": self.online_keys,
                    "pending_online_keys": self.pending_online_keys,
                    "keys": self.keys,
                },
                indent=2,
                sort_keys=True,
            ).encode()
            + b"\n"
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RepoConfig:
        try:
            doc = parse_json(data, max_bytes=1 << 20, what=CONFIG_NAME)
        except NightCoreError as exc:
            raise AufsError(exc.message, code="AUFS_CONFIG_INVALID") from None
        want = {"format", "expiry_seconds", "online_keys", "pending_online_keys", "keys"}
        if not isinstance(doc, dict) or set(doc) != want or doc["format"] != 1:
            raise AufsError(f"{CONFIG_NAME} has unknown fields", code="AUFS_CONFIG_INVALID")
        expiry = doc["expiry_seconds"]
        if not isinstance(expiry, dict) or set(expiry) != set(TOP_ROLES):
            raise AufsError("expiry_seconds must name the four roles", code="AUFS_CONFIG_INVALID")
        for v in expiry.values():
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise AufsError("expiry_seconds must be positive", code="AUFS_CONFIG_INVALID")
        return cls(expiry, doc["online_keys"], doc["pending_online_keys"], doc["keys"])


# -- the repository --------------------------------------------------------------------------


class AufsRepo(Repository):
    """A file-backed TUF repository; python-tuf's ``Repository`` supplies snapshot/timestamp."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        cfg = self.path / CONFIG_NAME
        try:
            data = read_input(
                cfg,
                MAX_REPO_CONFIG_BYTES,
                what=CONFIG_NAME,
                code="AUFS_CONFIG_INVALID",
                unreadable="AUFS_REPO_NOT_FOUND",
                error=AufsError,
                missing_ok=True,
            )
        except FileNotFoundError:
            raise AufsError(
                f"{self.path} is not an AUFS repository (no {CONFIG_NAME})",
                code="AUFS_REPO_NOT_FOUND",
            ) from None
        self.config = RepoConfig.from_bytes(data)
        self.now = utcnow()

    # paths
    @property
    def metadata_dir(self) -> Path:
        return self.path / "public" / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.path / "public" / "targets"

    @property
    def staged_dir(self) -> Path:
        return self.path / "staged"

    def _save_config(self) -> None:
        atomic_write(self.path / CONFIG_NAME, self.config.to_bytes())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        busy = AufsError("another AUFS command holds the repository lock", code="AUFS_BUSY")
        with file_lock(self.path / ".lock", busy=busy):
            yield

    # -- python-tuf Repository interface ------------------------------------------------------

    def _published_bytes(self, role: str) -> bytes | None:
        path = self.metadata_dir / f"{role}.json"
        try:
            return _read_repo_file(path, MAX_METADATA_BYTES, f"{role}.json", missing_ok=True)
        except FileNotFoundError:
            return None

    def open(self, role: str) -> Metadata[Any]:
        data = self._published_bytes(role)
        if data is None:
            md: Metadata[Any] = Metadata(_SIGNED_INIT[role]())
            md.signed.version = 0
            return md
        return _metadata(data, f"{role}.json")

    def close(self, role: str, md: Metadata[Any]) -> None:
        """Store a new version of an *online* role (snapshot, timestamp)."""
        if role not in ONLINE_ROLES:
            raise AufsError(f"{role} is signed offline: stage and sign it", code="USAGE")
        md.signed.version += 1
        md.signed.expires = self.now + dt.timedelta(seconds=self.config.expiry[role])
        if isinstance(md.signed, Timestamp):
            # Length and hash too, not only the version: a mix-and-match snapshot then fails
            # the hash check before it is even parsed.
            md.signed.snapshot_meta = self.snapshot_info
        md.signatures.clear()
        md.sign(self._online_signer(role), append=True)
        root = self.root()
        root.verify_delegate(role, md.signed_bytes, md.signatures)
        data = md.to_bytes(_SERIALIZER)
        if role == "snapshot":
            atomic_write(self.metadata_dir / f"{md.signed.version}.snapshot.json", data)
        atomic_write(self.metadata_dir / f"{role}.json", data)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        data = self._published_bytes("targets")
        if data is None:
            return {}
        version = _metadata(data, "targets.json").signed.version
        return {"targets.json": MetaFile.from_data(version, data, ["sha256"])}

    @property
    def snapshot_info(self) -> MetaFile:
        data = self._published_bytes("snapshot")
        if data is None:
            return MetaFile(0)
        version = _metadata(data, "snapshot.json").signed.version
        return MetaFile.from_data(version, data, ["sha256"])

    def _online_signer(self, role: str) -> Signer:
        ref = self.config.online_keys.get(role)
        if ref is None:
            raise AufsError(f"no online key configured for {role}", code="AUFS_CONFIG_INVALID")
        path = Path(ref)
        full = path if path.is_absolute() else self.path / path
        # Encrypted online keys take their passphrase from NIGHTCORE_AUFS_ONLINE_KEY_PASSPHRASE
        # when it is set, else from NIGHTCORE_KEY_PASSPHRASE.
        env = ONLINE_PASSPHRASE_ENV if ONLINE_PASSPHRASE_ENV in os.environ else None
        return signer_of(str(full), env)

    # -- staging ------------------------------------------------------------------------------

    def staged(self, role: str) -> Metadata[Any] | None:
        name = f"staged/{role}.json"
        try:
            data = _read_repo_file(self.path / name, MAX_METADATA_BYTES, name, missing_ok=True)
        except FileNotFoundError:
            return None
        return _metadata(data, name)

    def _write_staged(self, role: str, md: Metadata[Any]) -> None:
        self.staged_dir.mkdir(exist_ok=True)
        atomic_write(self.staged_dir / f"{role}.json", md.to_bytes(_SERIALIZER))

    def _stage(self, role: str) -> Metadata[Any]:
        """The staged copy of an offline role, created from the published one if needed."""
        md = self.staged(role)
        if md is not None:
            return md
        md = self.open(role)
        md.signed.version += 1
        md.signed.expires = self.now + dt.timedelta(seconds=self.config.expiry[role])
        md.signatures.clear()
        return md

    def current_root(self) -> Root | None:
        data = self._published_bytes("root")
        if data is None:
            return None
        root = _metadata(data, "root.json").signed
        if not isinstance(root, Root):
            raise AufsError("root.json is not root metadata", code="AUFS_METADATA_INVALID")
        return root

    def effective_root(self) -> Root:
        """The root that will be in force after publishing (staged if any, else current)."""
        staged = self.staged("root")
        if staged is not None:
            assert isinstance(staged.signed, Root)
            return staged.signed
        root = self.current_root()
        if root is None:
            raise AufsError("the repository has no root yet", code="AUFS_NOT_STAGED")
        return root

    def status_of(self, role: str, md: Metadata[Any]) -> SignStatus:
        if role == "root":
            new_root = md.signed
            assert isinstance(new_root, Root)
            previous = self.current_root()
            res = new_root.get_root_verification_result(previous, md.signed_bytes, md.signatures)
            if previous is None:
                return SignStatus(
                    "root", new_root.version, tuple(sorted(res.second.signed)), res.second.threshold
                )
            return SignStatus(
                "root",
                new_root.version,
                tuple(sorted(res.second.signed)),
                res.second.threshold,
                tuple(sorted(res.first.signed)),
                res.first.threshold,
            )
        root = self.effective_root()
        vr = root.get_verification_result(role, md.signed_bytes, md.signatures)
        return SignStatus(role, md.signed.version, tuple(sorted(vr.signed)), vr.threshold)

    def _authorized(self, role: str, keyid: str) -> bool:
        roots = [r for r in (self.current_root(),) if r is not None]
        staged = self.staged("root")
        if staged is not None:
            assert isinstance(staged.signed, Root)
            roots.append(staged.signed)
        if role != "root":
            roots = [self.effective_root()]
        return any(keyid in r.roles[role].keyids for r in roots)

    def sign(self, role: str, signer: Signer) -> SignStatus:
        """Add one maintainer's signature to the staged ``role`` (staging it if needed)."""
        if role not in OFFLINE_ROLES:
            raise AufsError("only root and targets are signed offline", code="USAGE")
        keyid = str(signer.public_key.keyid)
        if not self._authorized(role, keyid):
            raise AufsError(
                f"key {keyid[:16]} is not a {role} key of this repository",
                code="AUFS_KEY_NOT_AUTHORIZED",
            )
        with self.locked():
            md = self._stage(role)
            md.sign(signer, append=True)
            self._write_staged(role, md)
            return self.status_of(role, md)

    # -- targets ------------------------------------------------------------------------------

    def store_target_file(self, target_path: str, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        dirname, _, basename = target_path.rpartition("/")
        dest = self.targets_dir / dirname / f"{digest}.{basename}"
        if not dest.exists():
            atomic_write(dest, data)
        return digest

    def stage_raw_target(self, target_path: str, data: bytes, custom: dict[str, Any]) -> TargetFile:
        """Store ``data`` and list it in the staged targets, *without* content checks.

        ``add_target`` validates first; this lower layer exists so that tests can publish
        hostile content and prove that the client refuses it.
        """
        digest = self.store_target_file(target_path, data)
        tf = TargetFile(len(data), {"sha256": digest}, target_path, {"custom": custom})
        with self.locked():
            md = self._stage("targets")
            targets = md.signed
            assert isinstance(targets, Targets)
            kind = custom.get("nightcore", {}).get("kind")
            prefix = ""
            if kind == "tenant":
                prefix = target_path.rpartition("/")[0] + "/"
            elif kind == "runtime":
                prefix = "runtime/"
            if prefix:
                for other in [p for p in targets.targets if p.startswith(prefix)]:
                    del targets.targets[other]
            targets.targets[target_path] = tf
            md.signatures.clear()
            self._write_staged("targets", md)
        return tf

    def add_target(
        self, source: Path, *, kind: str | None = None, min_runtime: str = "", version: str = ""
    ) -> TargetFile:
        kind = kind or _infer_kind(source)
        path, data, custom = prepare_artifact(
            source, kind, min_runtime=min_runtime, version=version
        )
        return self.stage_raw_target(path, data, custom)

    def remove_target(self, target_path: str) -> None:
        with self.locked():
            md = self._stage("targets")
            assert isinstance(md.signed, Targets)
            if target_path not in md.signed.targets:
                raise AufsError(f"no target {target_path!r}", code="AUFS_TARGET_NOT_FOUND")
            del md.signed.targets[target_path]
            md.signatures.clear()
            self._write_staged("targets", md)

    def listed_target(self, target_path: str) -> TargetFile | None:
        md = self.staged("targets") or self.open("targets")
        assert isinstance(md.signed, Targets)
        return md.signed.targets.get(target_path)

    def stage_override(
        self, tenant: str, version: str, signer: Signer, *, reason: str, days: int = 7
    ) -> tuple[Path, int]:
        """Sign (or co-sign) a downgrade override and list it as a target."""
        from nightcore.aufs import override

        keyid = str(signer.public_key.keyid)
        if not self._authorized("targets", keyid):
            raise AufsError(
                f"key {keyid[:16]} is not a targets (maintainer) key",
                code="AUFS_KEY_NOT_AUTHORIZED",
            )
        pkg_path = artifacts.path_for("tenant", version, tenant=tenant)
        tf = self.listed_target(pkg_path)
        if tf is None:
            raise AufsError(
                f"{pkg_path} is not in the targets: add-target it first",
                code="AUFS_TARGET_NOT_FOUND",
            )
        sha = tf.hashes["sha256"]
        work = self.path / "overrides" / tenant / f"{version}.json"
        try:
            existing: bytes | None = read_input(
                work,
                MAX_OVERRIDE_BYTES,
                what="override",
                code="AUFS_OVERRIDE_INVALID",
                unreadable="IO_ERROR",
                error=AufsError,
                missing_ok=True,
            )
        except FileNotFoundError:
            existing = None
        if existing is not None:
            doc = override.payload_of(existing)
            if (doc.get("tenant"), doc.get("version"), doc.get("sha256")) != (tenant, version, sha):
                existing = None  # stale (the package changed): start a fresh document
        if existing is None:
            payload = override.make_payload(
                tenant, version, sha, reason=reason, expires=self.now + dt.timedelta(days=days)
            )
        else:
            from nightcore.trust.envelope import parse_envelope

            payload = parse_envelope(existing, payload_type=override.PAYLOAD_TYPE).payload
        env = override.sign_override(existing, payload, signer)
        atomic_write(work, env)
        self.stage_raw_target(
            artifacts.path_for("override", version, tenant=tenant),
            env,
            artifacts.custom_for("override", version, tenant=tenant),
        )
        return work, len(json.loads(env)["signatures"])

    # -- rotation -----------------------------------------------------------------------------

    def rotate_key(self, role: str, old: str, new: str) -> SignStatus:
        """Stage a root that replaces ``old`` with ``new`` in ``role``.

        The new root must then be signed by a threshold of the *previous* root keys and a
        threshold of the *new* root keys (python-tuf's root verification checks both).
        """
        if role not in TOP_ROLES:
            raise AufsError(f"unknown role {role!r}", code="USAGE")
        if role in ONLINE_ROLES and not is_private_ref(new):
            raise AufsError(
                f"{role} is an online role: --new must be a private key file", code="USAGE"
            )
        new_key = public_key_of(new)
        with self.locked():
            md = self._stage("root")
            root = md.signed
            assert isinstance(root, Root)
            old_id = self._resolve_keyid(root, role, old)
            if new_key.keyid in root.roles[role].keyids:
                raise AufsError(
                    f"key {new_key.keyid[:16]} already serves {role}", code="KEY_EXISTS"
                )
            root.revoke_key(old_id, role)
            root.add_key(new_key, role)
            if role in ONLINE_ROLES:
                self.config.pending_online_keys[role] = str(Path(new).resolve())
            self.config.keys.setdefault(
                str(new_key.keyid), {"name": key_name(new), "added": _fmt(self.now)}
            )
            self._save_config()
            md.signatures.clear()
            self._write_staged("root", md)
            return self.status_of("root", md)

    @staticmethod
    def _resolve_keyid(root: Root, role: str, ref: str) -> str:
        ids = root.roles[role].keyids
        if Path(ref).exists():
            kid = str(public_key_of(ref).keyid)
        else:
            matches = [k for k in ids if len(ref) >= 8 and k.startswith(ref.lower())]
            kid = matches[0] if len(matches) == 1 else ref
        if kid not in ids:
            raise AufsError(f"key {kid[:16]} is not a {role} key", code="KEY_NOT_FOUND")
        return kid

    # -- publish ------------------------------------------------------------------------------

    def publish(self) -> PublishResult:
        """Publish staged root/targets if their thresholds are met; bump snapshot+timestamp."""
        with self.locked():
            return self._publish()

    def _publish(self) -> PublishResult:
        published: list[str] = []
        staged_root = self.staged("root")
        staged_targets = self.staged("targets")
        if staged_root is not None:
            st = self.status_of("root", staged_root)
            if not st.ready:
                raise AufsError(f"refusing to publish: {st.describe()}", code="AUFS_THRESHOLD")
        new_root = self.effective_root()
        targets_md = staged_targets if staged_targets is not None else self.open("targets")
        if targets_md.signed.version == 0:
            raise AufsError("no targets metadata yet: stage and sign it", code="AUFS_NOT_STAGED")
        vr = new_root.get_verification_result(
            "targets", targets_md.signed_bytes, targets_md.signatures
        )
        if not vr:
            what = (
                "staged"
                if staged_targets is not None
                else "published (re-sign it under the new root)"
            )
            raise AufsError(
                f"refusing to publish: {what} targets v{targets_md.signed.version}: "
                f"signed by {len(vr.signed)} distinct key(s), threshold {vr.threshold}",
                code="AUFS_THRESHOLD",
            )
        if targets_md.signed.is_expired(self.now):
            raise AufsError("targets metadata has expired: re-stage it", code="AUFS_EXPIRED")
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        if staged_root is not None:
            data = staged_root.to_bytes(_SERIALIZER)
            atomic_write(self.metadata_dir / f"{new_root.version}.root.json", data)
            atomic_write(self.metadata_dir / "root.json", data)
            for role, ref in self.config.pending_online_keys.items():
                self.config.online_keys[role] = ref
            self.config.pending_online_keys = {}
            self._save_config()
            published.append("root")
        if staged_targets is not None:
            data = staged_targets.to_bytes(_SERIALIZER)
            atomic_write(self.metadata_dir / f"{staged_targets.signed.version}.targets.json", data)
            atomic_write(self.metadata_dir / "targets.json", data)
            published.append("targets")
        changed_snapshot, _ = self.do_snapshot(force=staged_root is not None)
        if changed_snapshot:
            published.append("snapshot")
        self.do_timestamp(force=True)
        published.append("timestamp")
        for role in ("root", "targets"):
            with contextlib.suppress(FileNotFoundError):
                (self.staged_dir / f"{role}.json").unlink()
        return PublishResult(self.versions(), tuple(published))

    def versions(self) -> dict[str, int]:
        out = {}
        for role in TOP_ROLES:
            data = self._published_bytes(role)
            out[role] = _metadata(data, f"{role}.json").signed.version if data else 0
        return out

    # -- status, backup -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = utcnow()
        roles: dict[str, Any] = {}
        warnings: list[str] = []
        root = self.current_root()
        for role in TOP_ROLES:
            data = self._published_bytes(role)
            entry: dict[str, Any] = {"published_version": 0}
            if data is not None:
                md = _metadata(data, f"{role}.json")
                left = md.signed.expires - now
                entry.update(
                    published_version=md.signed.version,
                    expires=_fmt(md.signed.expires),
                    days_left=round(left.total_seconds() / DAY, 2),
                )
                period = self.config.expiry[role]
                if left.total_seconds() <= 0:
                    warnings.append(f"{role} metadata has EXPIRED")
                elif left.total_seconds() < period / 5:
                    warnings.append(f"{role} metadata expires in {entry['days_left']} days")
            if root is not None:
                r = root.roles[role]
                keys = []
                for kid in r.keyids:
                    info = self.config.keys.get(kid, {})
                    age = None
                    if "added" in info:
                        added = dt.datetime.fromisoformat(info["added"].replace("Z", "+00:00"))
                        age = (now - added).days
                        if age > KEY_AGE_WARN_DAYS:
                            warnings.append(
                                f"{role} key {info.get('name', kid[:16])} is {age} days old "
                                f"(rotate every {KEY_AGE_WARN_DAYS} days)"
                            )
                    keys.append({"keyid": kid, "name": info.get("name", ""), "age_days": age})
                entry.update(threshold=r.threshold, keys=keys)
            staged = self.staged(role) if role in OFFLINE_ROLES else None
            if staged is not None:
                st = self.status_of(role, staged)
                entry["staged"] = st.to_dict()
                warnings.append(f"staged {st.describe()} (not yet published)")
            roles[role] = entry
        return {"repository": str(self.path), "roles": roles, "warnings": warnings}

    def backup(self, out: Path) -> dict[str, Any]:
        """Copy every root version and the current metadata; verify the root chain."""
        stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
        dest = out / f"aufs-backup-{stamp}"
        dest.mkdir(parents=True, exist_ok=False)
        roots = sorted(
            (int(p.name.split(".")[0]), p)
            for p in self.metadata_dir.glob("*.root.json")
            if p.name.split(".")[0].isdigit()
        )
        previous: Root | None = None
        for version, p in roots:
            md = _metadata(_read_repo_file(p, MAX_METADATA_BYTES, p.name), p.name)
            if not isinstance(md.signed, Root):
                raise AufsError(f"{p.name} is not root metadata", code="AUFS_METADATA_INVALID")
            if md.signed.version != version:
                raise AufsError(
                    f"{p.name} holds root v{md.signed.version}", code="AUFS_REPOSITORY_ERROR"
                )
            res = md.signed.get_root_verification_result(previous, md.signed_bytes, md.signatures)
            if not res:
                raise AufsError(f"root chain broken at v{version}", code="AUFS_THRESHOLD")
            previous = md.signed
        sums = []
        files = [p for _, p in roots] + [
            self.metadata_dir / f"{r}.json" for r in ("timestamp", "snapshot", "targets")
        ]
        for p in files:
            if p.exists():
                # Read once (capped, regular files only): the copy is what the sum covers.
                data = _read_repo_file(p, MAX_METADATA_BYTES, p.name)
                (dest / p.name).write_bytes(data)
                sums.append(f"{hashlib.sha256(data).hexdigest()}  {p.name}")
        config = _read_repo_file(self.path / CONFIG_NAME, MAX_REPO_CONFIG_BYTES, CONFIG_NAME)
        (dest / CONFIG_NAME).write_bytes(config)
        (dest / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        return {"backup": str(dest), "root_versions": [v for v, _ in roots], "files": len(sums) + 1}


# -- init ------------------------------------------------------------------------------------


def init_repo(
    path: Path,
    root_keys: list[str],
    *,
    threshold: int = 2,
    targets_keys: list[str] | None = None,
    targets_threshold: int | None = None,
    online_key: str | None = None,
    expiry: dict[str, int] | None = None,
) -> tuple[AufsRepo, PublishResult | None, list[SignStatus]]:
    """Create a repository; sign root v1 and targets v1 with any private keys given and
    publish at once if that meets both thresholds."""
    from nightcore.trust.keys import generate_key

    path = path.resolve()
    if (path / CONFIG_NAME).exists():
        raise AufsError(f"{path} is already an AUFS repository", code="AUFS_REPO_EXISTS")
    targets_keys = targets_keys or list(root_keys)
    targets_threshold = targets_threshold or threshold
    for role, refs, t in (
        ("root", root_keys, threshold),
        ("targets", targets_keys, targets_threshold),
    ):
        if len(set(refs)) != len(refs):
            raise AufsError(f"{role} keys are listed twice", code="USAGE")
        if not 1 <= t <= len(refs):
            raise AufsError(f"{role} threshold {t} needs 1..{len(refs)} keys", code="USAGE")
    # Every key is read before anything is written: a missing or unreadable key leaves no
    # half-made repository behind (a retry would otherwise fail KEY_EXISTS).
    public_keys = {ref: public_key_of(ref) for ref in dict.fromkeys(root_keys + targets_keys)}
    signers: dict[str, Signer] = {ref: signer_of(ref) for ref in public_keys if is_private_ref(ref)}
    online_public = public_key_of(online_key) if online_key is not None else None
    path.mkdir(parents=True, exist_ok=True)
    private = path / "private"
    private.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)
    cfg = RepoConfig(expiry=dict(expiry or DEFAULT_EXPIRY))
    now = utcnow()
    online: dict[str, SSlibKey] = {}
    passphrase = os.environ.get(ONLINE_PASSPHRASE_ENV)
    for role in ONLINE_ROLES:
        if online_key is not None and online_public is not None:
            cfg.online_keys[role] = str(Path(online_key).resolve())
            online[role] = online_public
        else:
            gen = generate_key(
                role, private, passphrase.encode() if passphrase else None, fips=False
            )
            cfg.online_keys[role] = f"private/{gen.name}.key"
            online[role] = public_key_of(str(gen.public_path))
        cfg.keys[str(online[role].keyid)] = {"name": f"online-{role}", "added": _fmt(now)}
    root = Root(expires=now + dt.timedelta(seconds=cfg.expiry["root"]), consistent_snapshot=True)
    for role, refs in (("root", root_keys), ("targets", targets_keys)):
        for ref in refs:
            key = public_keys[ref]
            root.add_key(key, role)
            cfg.keys.setdefault(str(key.keyid), {"name": key_name(ref), "added": _fmt(now)})
    for role in ONLINE_ROLES:
        root.add_key(online[role], role)
    root.roles["root"].threshold = threshold
    root.roles["targets"].threshold = targets_threshold
    atomic_write(path / CONFIG_NAME, cfg.to_bytes())
    (path / "public" / "metadata").mkdir(parents=True, exist_ok=True)
    (path / "public" / "targets").mkdir(parents=True, exist_ok=True)
    repo = AufsRepo(path)
    root_md: Metadata[Root] = Metadata(root)
    targets_md: Metadata[Targets] = Metadata(
        Targets(expires=now + dt.timedelta(seconds=cfg.expiry["targets"]))
    )
    for ref, s in signers.items():
        if ref in root_keys:
            root_md.sign(s, append=True)
        if ref in targets_keys:
            targets_md.sign(s, append=True)
    repo._write_staged("root", root_md)
    repo._write_staged("targets", targets_md)
    statuses = [repo.status_of("root", root_md), repo.status_of("targets", targets_md)]
    result = repo.publish() if all(s.ready for s in statuses) else None
    return repo, result, statuses


# -- preparing artifacts ---------------------------------------------------------------------


def _infer_kind(source: Path) -> str:
    name = source.name
    if source.is_dir() or name.endswith(".tar.gz"):
        return "tenant"
    if name.endswith(".whl"):
        return "runtime"
    if name == "registry.json":
        return "registry"
    if name == "revocations.json":
        return "revocations"
    raise AufsError(f"cannot tell the kind of {name!r}: pass --kind", code="USAGE")


def _read(path: Path, cap: int) -> bytes:
    """An artifact's source file: ``AUFS_TARGET_INVALID`` for a directory, FIFO or device,
    ``AUFS_TOO_LARGE`` above ``cap``, ``IO_ERROR`` when it cannot be read."""
    return read_input(
        path,
        cap,
        what="source",
        code="AUFS_TARGET_INVALID",
        too_large="AUFS_TOO_LARGE",
        unreadable="IO_ERROR",
        error=AufsError,
    )


def package_facts(
    files: dict[str, bytes], adapters: AdapterRegistry | None = None
) -> dict[str, Any]:
    """Tenant, version, ABI and schema of a package (manifest via the adapter registry)."""
    import tomllib

    try:
        table = tomllib.loads(files["manifest.toml"].decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AufsError(f"manifest.toml: {exc}", code="AUFS_TARGET_INVALID") from None
    migrated, applied = (adapters or default_registry()).migrate(table)
    tenant, version = migrated.get("tenant"), migrated.get("version")
    if not isinstance(tenant, str) or not TENANT_ID_RE.fullmatch(tenant):
        raise AufsError("manifest.toml: tenant is missing or invalid", code="AUFS_TARGET_INVALID")
    if not isinstance(version, str) or not artifacts.VERSION_RE.fullmatch(version):
        raise AufsError("manifest.toml: version is missing or invalid", code="AUFS_TARGET_INVALID")
    abi = migrated.get("abi", "wasi_snapshot_preview1")
    return {"tenant": tenant, "version": version, "abi": abi, "translators": applied}


def prepare_artifact(
    source: Path, kind: str, *, min_runtime: str = "", version: str = ""
) -> tuple[str, bytes, dict[str, Any]]:
    """Validate ``source`` as a ``kind`` artifact; return (target path, bytes, custom)."""
    from nightcore.module.package import MAX_MODULE_BYTES

    if kind == "tenant":
        if source.is_dir():
            files = {n: _read(source / n, MAX_MODULE_BYTES) for n in artifacts.PACKAGE_FILES}
            data = artifacts.build_tenant_tarball(files)
        else:
            data = _read(source, 256 * 1024 * 1024)
            files = artifacts.read_tenant_tarball(data, max_members=8, max_bytes=80 * 1024 * 1024)
        facts = package_facts(files)
        _check_envelope_digest(files)
        v, tenant = facts["version"], facts["tenant"]
        abi = facts["abi"] if facts["abi"] != "wasi_snapshot_preview1" else ""
        return (
            artifacts.path_for("tenant", v, tenant=tenant),
            data,
            artifacts.custom_for("tenant", v, tenant=tenant, min_runtime=min_runtime, abi=abi),
        )
    if kind == "registry":
        from nightcore.trust.registry import parse_registry

        data = _read(source, 4 * 1024 * 1024)
        try:
            parse_registry(data)
        except NightCoreError as exc:
            raise AufsError(f"registry: {exc.message}", code="AUFS_TARGET_INVALID") from None
        if not version:
            raise AufsError(
                "a registry target needs --version (an increasing number)", code="USAGE"
            )
        return (
            artifacts.REGISTRY_PATH,
            data,
            artifacts.custom_for("registry", version, min_runtime=min_runtime),
        )
    if kind == "revocations":
        from nightcore.trust.envelope import parse_envelope
        from nightcore.trust.registry import REVOCATIONS_PAYLOAD_TYPE

        data = _read(source, 16 * 1024 * 1024)
        try:
            env = parse_envelope(data, payload_type=REVOCATIONS_PAYLOAD_TYPE)
            doc = parse_json(env.payload, max_bytes=16 << 20, what="revocations payload")
            rl_version = doc["version"]
            if not isinstance(rl_version, int) or isinstance(rl_version, bool) or rl_version < 1:
                raise ValueError("bad version")
        except (NightCoreError, ValueError, TypeError, KeyError) as exc:
            raise AufsError(
                f"revocation list does not parse: {exc}", code="AUFS_TARGET_INVALID"
            ) from None
        return (
            artifacts.REVOCATIONS_PATH,
            data,
            artifacts.custom_for("revocations", str(rl_version), min_runtime=min_runtime),
        )
    if kind == "runtime":
        name = source.name
        if not artifacts.WHEEL_RE.fullmatch(name):
            raise AufsError(f"{name!r} is not a wheel file name", code="AUFS_TARGET_INVALID")
        wheel_version = name.split("-")[1]
        data = _read(source, 256 * 1024 * 1024)
        members = artifacts.read_wheel(data, max_members=4096, max_bytes=256 * 1024 * 1024)
        if "nightcore/__init__.py" not in members:
            raise AufsError(
                "the wheel does not contain the nightcore package", code="AUFS_TARGET_INVALID"
            )
        return (
            f"runtime/{name}",
            data,
            artifacts.custom_for("runtime", wheel_version, min_runtime=min_runtime),
        )
    raise AufsError(f"unknown kind {kind!r} (tenant, registry, revocations, runtime)", code="USAGE")


def _check_envelope_digest(files: dict[str, bytes]) -> None:
    """Refuse at publish time a package whose envelope does not name its module's digest."""
    import base64

    try:
        env = json.loads(files["module.intoto.dsse.json"])
        stmt = json.loads(base64.b64decode(env["payload"]))
        signed = stmt["subject"][0]["digest"]["sha256"]
    except (ValueError, KeyError, TypeError, IndexError):
        raise AufsError(
            "module.intoto.dsse.json is not a signed statement", code="AUFS_TARGET_INVALID"
        ) from None
    if signed != hashlib.sha256(files["module.wasm"]).hexdigest():
        raise AufsError("module.wasm does not match its signed digest", code="AUFS_TARGET_INVALID")
