"""``nightcore aufs update``: refresh, download what changed, apply it -- fail closed.

Order of one update (under ``state/aufs/lock``, one updater at a time):

1. ``refresh`` the TUF metadata (python-tuf: root chain, timestamp, snapshot, targets).
   A refusal here aborts the whole update; nothing is downloaded.
2. Plan: every target carrying ``custom.nightcore`` is parsed and checked against its path;
   each is compared with what is installed (SHA-256, version). Trust material comes first,
   so that tenants are verified against the newest registry and revocations, then tenants,
   then the runtime.
3. Per artifact: download (python-tuf checks length and hash; the fetcher bounds time),
   check ``min_runtime``, refuse downgrades without a dual-signed override, then apply:

   * registry: strict parse, and the current revocation list must still verify under it;
   * revocations: ``trustops.import_revocations`` (signature, monotonic version);
   * tenant: safe extraction into ``modules/.aufs-staging/<id>/<tenant>/`` (same file system
     as ``modules/``), schema/ABI check through the adapter registry, the trust layer's
     ``decide`` on the staged bytes, then an atomic swap into ``modules/<tenant>`` (Linux
     ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames). The replaced version is kept
     as ``modules/.aufs-previous/<tenant>-<version>``;
   * runtime: :mod:`nightcore.aufs.runtime` (stage, self-test, switch, roll back).

   Each artifact succeeds or is refused on its own; every download, apply, rollback and
   refusal is an audit event.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nightcore.audit.log import Event
from nightcore.aufs import artifacts
from nightcore.aufs.adapters import AdapterRegistry, default_registry, runtime_version
from nightcore.aufs.client import AufsClient
from nightcore.aufs.config import Limits, Settings
from nightcore.aufs.errors import AufsError
from nightcore.aufs.state import NodePaths, load_state
from nightcore.context import MAX_REVOCATIONS_BYTES, NodeContext, read_capped
from nightcore.errors import NightCoreError
from nightcore.fsio import atomic_write, file_lock, read_regular_capped


@dataclass
class Outcome:
    path: str
    kind: str
    version: str
    code: str = "OK"
    action: str = "unchanged"  # unchanged | installed | refused | rolled-back
    reason: str = ""
    tenant: str = ""
    previous_version: str = ""

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "version": self.version,
            "tenant": self.tenant,
            "code": self.code,
            "action": self.action,
            "reason": self.reason,
            "previous_version": self.previous_version,
        }


@dataclass
class UpdateReport:
    versions: dict[str, int]
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "metadata_versions": self.versions,
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


# -- installed state -----------------------------------------------------------------------


def save_state(paths: NodePaths, state: dict[str, Any]) -> None:
    atomic_write(paths.installed, json.dumps(state, indent=2, sort_keys=True).encode() + b"\n")


@contextlib.contextmanager
def node_lock(paths: NodePaths) -> Iterator[None]:
    paths.base.mkdir(parents=True, exist_ok=True)
    busy = AufsError("another AUFS update is running on this workspace", code="AUFS_BUSY")
    with file_lock(paths.base / "lock", busy=busy):
        yield


# -- atomic directory swap -------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (38, 22, 95):  # ENOSYS, EINVAL, EOPNOTSUPP: fall back
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(staged: Path, dest: Path, keep_as: Path | None) -> None:
    """Make ``staged`` live at ``dest``; the old ``dest`` (if any) moves to ``keep_as``."""
    exists = dest.exists() or dest.is_symlink()
    if not exists:
        os.rename(staged, dest)
    else:
        if keep_as is not None and (keep_as.exists() or keep_as.is_symlink()):
            shutil.rmtree(
                keep_as
            ) if keep_as.is_dir() and not keep_as.is_symlink() else keep_as.unlink()
        if _exchange(staged, dest):
            # ``staged`` now holds the old version.
            if keep_as is not None:
                keep_as.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staged, keep_as)
            else:
                shutil.rmtree(staged)
        else:
            if keep_as is not None:
                keep_as.parent.mkdir(parents=True, exist_ok=True)
                os.rename(dest, keep_as)
            else:
                shutil.rmtree(dest)
            os.rename(staged, dest)
    _fsync_dir(dest.parent)


# -- the updater -----------------------------------------------------------------------------


class Updater:
    def __init__(
        self,
        ws: NodeContext,
        settings: Settings,
        *,
        metadata_url: str | None = None,
        target_base_url: str | None = None,
        adapters: AdapterRegistry | None = None,
        now: dt.datetime | None = None,
    ) -> None:
        self.ws = ws
        self.paths = NodePaths(ws)
        self.limits: Limits = settings.limits
        self.apply_runtime = settings.apply_runtime
        self.metadata_url = metadata_url or settings.metadata_url
        self.target_base_url = target_base_url or settings.target_base_url
        if not self.metadata_url or not self.target_base_url:
            raise AufsError(
                "no metadata/target URL: pass --metadata-url and --target-base-url or set them "
                "in aufs.toml",
                code="USAGE",
            )
        self.adapters = adapters or default_registry()
        self.now = now or dt.datetime.now(dt.UTC)
        self.audit = ws.audit()
        # Events of one artifact are committed together (one fsync) before its outcome is
        # reported; see _flush.
        self._pending: list[Event] = []

    def _record(self, event: str, data: dict[str, Any], tenant: str | None = None) -> None:
        self._pending.append(Event(event, data, tenant))

    def _flush(self) -> None:
        if self._pending:
            events, self._pending = self._pending, []
            self.audit.append_many(events)

    def _refused(self, o: Outcome, exc: NightCoreError, stage: str) -> Outcome:
        o.code, o.reason, o.action = exc.code, exc.message, "refused"
        self._record(
            "aufs_refused",
            {
                "stage": stage,
                "path": o.path,
                "kind": o.kind,
                "version": o.version,
                "code": exc.code,
                "reason": exc.message[:400],
            },
            o.tenant or None,
        )
        return o

    def client(self) -> AufsClient:
        return AufsClient(
            self.paths.metadata,
            self.metadata_url or "",
            limits=self.limits,
            target_dir=self.paths.targets,
            target_base_url=self.target_base_url,
            fips=self.ws.policy.fips,
        )

    def refresh(self) -> tuple[AufsClient, dict[str, int]]:
        try:
            client = self.client()
            before = client.versions()
            versions = client.refresh()
        except AufsError as exc:
            self.audit.append(
                "aufs_refused", {"stage": "refresh", "code": exc.code, "reason": exc.message[:400]}
            )
            raise
        self.audit.append(
            "aufs_refresh", {"versions": versions, "changed": versions != before, "before": before}
        )
        return client, versions

    def run(self) -> UpdateReport:
        with node_lock(self.paths):
            self._clean_staging()
            client, versions = self.refresh()
            report = UpdateReport(versions)
            listing = client.targets()
            planned: list[artifacts.Artifact] = []
            for path, tf in sorted(listing.items()):
                try:
                    art = artifacts.parse_artifact(
                        path, tf.custom, tf.hashes.get("sha256", ""), tf.length
                    )
                except AufsError as exc:
                    report.outcomes.append(self._refused(Outcome(path, "?", ""), exc, "plan"))
                    continue
                if art is not None:
                    planned.append(art)
            self._flush()
            state = load_state(self.paths)
            try:
                for art in self._order(planned):
                    o = Outcome(art.path, art.kind, art.version, tenant=art.tenant)
                    try:
                        self._apply_one(client, art, state, o, listing)
                    except NightCoreError as exc:
                        self._refused(o, exc, "apply")
                    except OSError as exc:
                        err = AufsError(f"{exc.strerror or exc}", code="IO_ERROR")
                        self._refused(o, err, "apply")
                    finally:
                        self._flush()
                    report.outcomes.append(o)
            finally:
                # installed.json is a cache of what is live (versions are re-read from the
                # live manifests), so it is written once per run, not once per artifact.
                save_state(self.paths, state)
                self._clean_staging()
            return report

    @staticmethod
    def _order(arts: list[artifacts.Artifact]) -> list[artifacts.Artifact]:
        rank = {"registry": 0, "revocations": 1, "tenant": 2, "runtime": 3}
        best: dict[tuple[str, str], artifacts.Artifact] = {}
        for a in arts:
            if a.kind not in rank:
                continue  # overrides are fetched on demand
            key = (a.kind, a.tenant)
            cur = best.get(key)
            if cur is None or artifacts.compare_versions(a.version, cur.version) > 0:
                best[key] = a
        return sorted(best.values(), key=lambda a: (rank[a.kind], a.tenant, a.path))

    def _fetch(self, client: AufsClient, path: str) -> tuple[bytes, Path]:
        info = client.targetinfo(path)
        local = client.download(info)
        try:
            data = read_regular_capped(local, info.length)
        except OSError as exc:
            raise AufsError(
                f"{path}: cached copy unusable ({exc.strerror})", code="AUFS_HASH_MISMATCH"
            ) from None
        # Re-check what we are about to use (the cache is ours, but check the very bytes).
        if len(data) != info.length or hashlib.sha256(data).hexdigest() != info.hashes.get(
            "sha256"
        ):
            raise AufsError(f"{path}: cached copy changed under us", code="AUFS_HASH_MISMATCH")
        self._record(
            "aufs_download",
            {"path": path, "sha256": info.hashes.get("sha256"), "length": info.length},
        )
        return data, local

    def _apply_one(
        self,
        client: AufsClient,
        art: artifacts.Artifact,
        state: dict[str, Any],
        o: Outcome,
        listing: dict[str, Any],
    ) -> None:
        rv = runtime_version()
        if (
            art.kind != "runtime"
            and art.min_runtime
            and artifacts.compare_versions(art.min_runtime, rv) > 0
        ):
            raise AufsError(
                f"{art.path} needs Night Core >= {art.min_runtime}; this runtime is {rv}",
                code="RUNTIME_TOO_OLD",
            )
        if art.kind == "tenant":
            self._tenant(client, art, state, o, listing)
        elif art.kind == "registry":
            self._registry(client, art, state, o)
        elif art.kind == "revocations":
            self._revocations(client, art, state, o)
        elif art.kind == "runtime":
            self._runtime(client, art, state, o)

    # -- trust material ----------------------------------------------------------------------

    def _file_sha(self, path: Path) -> str:
        """The SHA-256 of an installed trust file; "" when it is missing or unusable (a FIFO,
        a directory, too large): then the signed target replaces it."""
        try:
            return hashlib.sha256(read_regular_capped(path, MAX_REVOCATIONS_BYTES)).hexdigest()
        except OSError:
            return ""

    def _registry(
        self, client: AufsClient, art: artifacts.Artifact, state: dict[str, Any], o: Outcome
    ) -> None:
        from nightcore.trust.registry import parse_registry, parse_revocations

        if self._file_sha(self.ws.layout.registry_path) == art.sha256:
            return
        prev = state["trust"].get("registry", {}).get("version", "")
        if prev and artifacts.compare_versions(art.version, prev) < 0:
            raise AufsError(
                f"registry version {art.version} is lower than installed {prev}",
                code="DOWNGRADE_REFUSED",
            )
        data, _ = self._fetch(client, art.path)
        registry = parse_registry(data)
        if self.ws.layout.revocations_path.exists():
            # The revocation list in force must still verify: a registry that drops its
            # signer would silently un-revoke everything.
            current = read_capped(self.ws.layout.revocations_path, MAX_REVOCATIONS_BYTES)
            parse_revocations(current, registry, fips=self.ws.policy.fips)
        atomic_write(self.ws.layout.registry_path, data)
        state["trust"]["registry"] = {"version": art.version, "sha256": art.sha256}
        self._record(
            "aufs_apply",
            {
                "kind": "registry",
                "path": art.path,
                "version": art.version,
                "sha256": art.sha256,
                "keys": len(registry.keys),
                "previous_version": prev,
            },
        )
        o.action, o.previous_version = "installed", prev

    def _revocations(
        self, client: AufsClient, art: artifacts.Artifact, state: dict[str, Any], o: Outcome
    ) -> None:
        from nightcore.trustops import import_revocations

        if self._file_sha(self.ws.layout.revocations_path) == art.sha256:
            return
        _, local = self._fetch(client, art.path)
        self._flush()  # import_revocations appends its own events
        prev = str(self.ws.revocation_mark())
        rl = import_revocations(self.ws, local)  # audits revocations_imported/refused itself
        state["trust"]["revocations"] = {"version": str(rl.version), "sha256": art.sha256}
        self._record(
            "aufs_apply",
            {
                "kind": "revocations",
                "path": art.path,
                "version": str(rl.version),
                "sha256": art.sha256,
                "previous_version": prev,
            },
        )
        o.action, o.previous_version = "installed", prev

    # -- tenants -----------------------------------------------------------------------------

    def installed_version(self, tenant: str, state: dict[str, Any]) -> str:
        """The version live in ``modules/<tenant>`` (its manifest, which the trust layer
        checked against the signed one at install), else what installed.json remembers."""
        import tomllib

        live = self.ws.layout.modules_dir / tenant
        if not live.is_dir():
            return ""
        # Validated: the version names a directory under modules/.aufs-previous/.
        try:
            text = read_regular_capped(live / "manifest.toml", 1 << 20).decode("utf-8")
            v = tomllib.loads(text).get("version", "")
            if isinstance(v, str) and artifacts.VERSION_RE.fullmatch(v):
                return v
        except (OSError, ValueError):
            pass
        rec = state["tenants"].get(tenant)
        v = str(rec["version"]) if rec else ""
        return v if artifacts.VERSION_RE.fullmatch(v) else ""

    def _tenant(
        self,
        client: AufsClient,
        art: artifacts.Artifact,
        state: dict[str, Any],
        o: Outcome,
        listing: dict[str, Any],
    ) -> None:
        from nightcore.aufs.repo import package_facts
        from nightcore.module.package import read_package
        from nightcore.module.verify import decide

        t = art.tenant
        rec = state["tenants"].get(t)
        live = self.ws.layout.modules_dir / t
        if rec and rec.get("sha256") == art.sha256 and live.is_dir():
            return
        installed = self.installed_version(t, state)
        o.previous_version = installed
        override_info: dict[str, Any] | None = None
        if installed and artifacts.compare_versions(art.version, installed) < 0:
            override_info = self._check_override(client, art, installed, listing)
        data, _ = self._fetch(client, art.path)
        files = artifacts.read_tenant_tarball(
            data,
            max_members=self.limits.max_archive_members,
            max_bytes=self.limits.max_extracted_bytes,
        )
        facts = package_facts(files, self.adapters)
        if (facts["tenant"], facts["version"]) != (t, art.version):
            raise AufsError(
                f"package says {facts['tenant']} {facts['version']}, target says {t} {art.version}",
                code="AUFS_TARGET_INVALID",
            )
        self.adapters.check_abi(str(facts["abi"]), runtime_version(), min_runtime=art.min_runtime)
        stage_dir = self.paths.staging / uuid.uuid4().hex[:12] / t
        stage_dir.mkdir(parents=True)
        for name, body in files.items():
            fd = os.open(
                stage_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644
            )
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
        registry = self.ws.load_registry()
        revocations = self.ws.load_revocations(registry)
        pkg = read_package(stage_dir)
        decision = decide(pkg, registry, revocations, self.ws.policy, self.now)
        if not decision.ok:
            raise AufsError(f"{t} {art.version}: {decision.reason}", code=decision.code)
        if override_info is not None:
            self._record(
                "aufs_downgrade_override",
                {**override_info, "from_version": installed},
                t,
            )
        keep_as: Path | None = None
        if live.exists() or live.is_symlink():
            keep_as = self.paths.previous / f"{t}-{installed or 'unknown'}"
        old_prev = (rec or {}).get("previous")
        swap_in(stage_dir, live, keep_as)
        if old_prev and (keep_as is None or old_prev != keep_as.name):
            shutil.rmtree(self.paths.previous / old_prev, ignore_errors=True)
        state["tenants"][t] = {
            "version": art.version,
            "sha256": art.sha256,
            "path": art.path,
            "previous": keep_as.name if keep_as is not None else None,
            "previous_version": installed,
        }
        self._record(
            "aufs_apply",
            {
                "kind": "tenant",
                "path": art.path,
                "version": art.version,
                "previous_version": installed,
                "sha256": art.sha256,
                "module_sha256": decision.module_sha256,
                "key_id": decision.key_id,
                "override": override_info is not None,
                "translators": facts["translators"],
            },
            t,
        )
        o.action = "installed"

    def _check_override(
        self, client: AufsClient, art: artifacts.Artifact, installed: str, listing: dict[str, Any]
    ) -> dict[str, Any]:
        from nightcore.aufs import override

        base = f"{art.tenant}: version {art.version} is lower than installed {installed}"
        ov_path = artifacts.path_for("override", art.version, tenant=art.tenant)
        if ov_path not in listing:
            raise AufsError(f"{base} (no dual-signed override)", code="DOWNGRADE_REFUSED")
        data, _ = self._fetch(client, ov_path)
        root = client.trusted_root()
        keys = {kid: root.keys[kid] for kid in root.roles["targets"].keyids if kid in root.keys}
        try:
            info = override.verify_override(
                data, keys, tenant=art.tenant, version=art.version, sha256=art.sha256, now=self.now
            )
        except AufsError as exc:
            raise AufsError(
                f"{base}; override refused: {exc.message}", code="DOWNGRADE_REFUSED"
            ) from None
        return info.to_dict()

    # -- runtime -----------------------------------------------------------------------------

    def _runtime(
        self, client: AufsClient, art: artifacts.Artifact, state: dict[str, Any], o: Outcome
    ) -> None:
        from nightcore.aufs import runtime

        if not self.apply_runtime:
            o.reason = "runtime updates are disabled (aufs.apply_runtime = false)"
            return
        current = runtime.current_version(self.ws.layout.state_dir)
        o.previous_version = current or ""
        if current is not None:
            if current == art.version:
                return
            if artifacts.compare_versions(art.version, current) < 0:
                raise AufsError(
                    f"runtime {art.version} is lower than current {current}",
                    code="DOWNGRADE_REFUSED",
                )
        data, _ = self._fetch(client, art.path)
        res = runtime.install_runtime(self.ws.layout.state_dir, art.version, data, self.limits)
        if not res.switched:
            if res.stage == "unchanged":
                return
            self._record(
                "aufs_rollback",
                {
                    "kind": "runtime",
                    "version": art.version,
                    "stage": res.stage,
                    "detail": res.detail,
                    "current": res.previous,
                },
            )
            raise AufsError(
                f"runtime {art.version} failed its self-test ({res.stage}): {res.detail}; "
                f"runtime {res.previous or '(none)'} stays current",
                code="RUNTIME_SELFTEST_FAILED",
            )
        state["runtime"] = {"version": art.version, "sha256": art.sha256, "previous": res.previous}
        self._record(
            "aufs_apply",
            {
                "kind": "runtime",
                "path": art.path,
                "version": art.version,
                "sha256": art.sha256,
                "previous_version": res.previous or "",
            },
        )
        o.action = "installed"

    def _clean_staging(self) -> None:
        if self.paths.staging.exists():
            shutil.rmtree(self.paths.staging, ignore_errors=True)


# -- manual rollback -------------------------------------------------------------------------


def rollback_tenant(ws: NodeContext, tenant: str) -> dict[str, Any]:
    """Put back the version AUFS kept when it last replaced ``tenant`` (audited)."""
    paths = NodePaths(ws)
    with node_lock(paths):
        state = load_state(paths)
        rec = state["tenants"].get(tenant)
        prev = (rec or {}).get("previous")
        if not rec or not prev or not (paths.previous / prev).is_dir():
            raise AufsError(
                f"no previous version of {tenant} is kept", code="AUFS_NOTHING_TO_ROLL_BACK"
            )
        prev_version = str(rec.get("previous_version") or "")
        live = ws.layout.modules_dir / tenant
        displaced = f"{tenant}-{rec['version']}"
        staged = paths.staging / uuid.uuid4().hex[:12] / tenant
        staged.parent.mkdir(parents=True)
        os.rename(paths.previous / prev, staged)
        swap_in(staged, live, paths.previous / displaced)
        shutil.rmtree(paths.staging, ignore_errors=True)
        state["tenants"][tenant] = {
            "version": prev_version,
            "sha256": "",
            "path": "",
            "previous": displaced,
            "previous_version": rec["version"],
        }
        save_state(paths, state)
        ws.audit().append(
            "aufs_rollback",
            {"kind": "tenant", "from_version": rec["version"], "to_version": prev_version},
            tenant,
        )
        return {"tenant": tenant, "from_version": rec["version"], "to_version": prev_version}
