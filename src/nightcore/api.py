"""Night Core's public Python API. The CLI is its first user; services can embed it.

    from nightcore import api
    ws = api.init_workspace(Path("ws"))
    key = api.keygen("alice", Path("keys"), passphrase=b"...")
    api.trust_add_key(ws, key.public_path, scope="hello*")
    api.sign_tenant(Path("ws/modules/hello"), str(key.private_path))
    decisions = api.verify_tenants(ws)

Every function raises ``NightCoreError`` (with a stable ``code``) on refusal. Security
decisions are appended to the workspace audit log before the function returns.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightcore.errors import NightCoreError, TrustError, UsageError, WorkspaceError
from nightcore.fsio import atomic_write
from nightcore.workspace import (
    CONFIG_NAME,
    DEFAULT_CONFIG,
    DEFAULT_LIMITS,
    DEFAULT_MAX,
    NODE_PASSPHRASE_ENV,
    Workspace,
)

__all__ = [
    "Workspace",
    "import_revocations",
    "init_workspace",
    "keygen",
    "revoke",
    "select_tenants",
    "sign_tenant",
    "trust_add_key",
    "trust_list",
    "trust_remove_key",
    "verify_packages",
    "verify_tenants",
]

if TYPE_CHECKING:
    from nightcore.module.verify import Decision
    from nightcore.trust.keys import GeneratedKey
    from nightcore.trust.registry import RevocationList, TrustedKey


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- workspace -----------------------------------------------------------------------------


def init_workspace(root: Path, *, name: str = "node", fips: bool = False) -> Workspace:
    """Create a workspace with its node key. Refuses to touch an existing workspace."""
    from nightcore.trust.keys import generate_key

    root = root.resolve()
    if (root / CONFIG_NAME).exists():
        raise WorkspaceError(f"{root} is already a Night Core workspace", code="WORKSPACE_EXISTS")
    for sub in (
        "modules",
        "trust",
        "state/audit",
        "state/trust",
        "state/tenants",
        "state/runs",
        "state/cache",
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
    private = root / "private"
    private.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)
    passphrase = os.environ.get(NODE_PASSPHRASE_ENV)
    # The node key signs unattended (checkpoints, attestations): encrypted only when a
    # passphrase is provided through the environment; otherwise 0600 in a 0700 directory.
    gen = generate_key("node", private, passphrase.encode() if passphrase else None, fips=fips)
    os.replace(gen.public_path, root / "node.pub.pem")
    config = DEFAULT_CONFIG.format(name=name, max=DEFAULT_MAX, default=DEFAULT_LIMITS)
    if fips:
        config = config.replace("fips = false", "fips = true")
    atomic_write(root / CONFIG_NAME, config.encode())
    secret = root / "private" / "cache.secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32))
    finally:
        os.close(fd)
    ws = Workspace(root)
    ws.audit().append(
        "workspace_init",
        {"node_key_id": gen.key_id, "scheme": gen.scheme, "fips": fips, "name": name},
    )
    return ws


def keygen(name: str, out_dir: Path, passphrase: bytes, *, fips: bool = False) -> GeneratedKey:
    from nightcore.trust.keys import generate_key

    return generate_key(name, out_dir, passphrase, fips=fips)


# -- signing (publisher side: needs no workspace) ------------------------------------------


@dataclass(frozen=True)
class SignResult:
    tenant: str
    envelope_path: Path
    key_id: str
    module_sha256: str


def sign_tenant(tenant_dir: Path, key: str, *, fips: bool = False) -> SignResult:
    """Sign ``tenant_dir``'s manifest and module digest into ``module.intoto.dsse.json``."""
    from nightcore.canonical import canonical
    from nightcore.module.manifest import parse_manifest_toml
    from nightcore.module.package import ENVELOPE_FILE, read_package
    from nightcore.module.verify import MANIFEST_PREDICATE_TYPE, WASM_HEADER
    from nightcore.trust.envelope import make_statement, sign_payload
    from nightcore.trust.keys import check_scheme, load_signer

    pkg = read_package(tenant_dir, need_envelope=False)
    if pkg.manifest is None:
        raise NightCoreError(f"{pkg.name}/manifest.toml is missing", code="MANIFEST_INVALID")
    manifest = parse_manifest_toml(pkg.manifest)
    if manifest.tenant != pkg.name:
        raise NightCoreError(
            f"manifest names tenant {manifest.tenant!r} but the directory is {pkg.name!r}",
            code="MANIFEST_MISMATCH",
        )
    if not pkg.module.startswith(WASM_HEADER):
        raise NightCoreError(
            "module.wasm is not a WebAssembly core module", code="MODULE_MALFORMED"
        )
    signer = load_signer(key)
    check_scheme(str(signer.public_key.scheme), fips)
    digest = hashlib.sha256(pkg.module).hexdigest()
    stmt = make_statement(
        [("module.wasm", digest)], MANIFEST_PREDICATE_TYPE, manifest.to_predicate()
    )
    envelope = sign_payload(canonical(stmt), [signer])
    out = tenant_dir / ENVELOPE_FILE
    if out.is_symlink():
        raise NightCoreError(
            f"{out} is a symlink; refusing to write through it", code="PACKAGE_INVALID"
        )
    atomic_write(out, envelope + b"\n")
    return SignResult(pkg.name, out, str(signer.public_key.keyid), digest)


# -- trust ---------------------------------------------------------------------------------


def trust_add_key(
    ws: Workspace,
    public_pem: Path,
    *,
    scope: str,
    role: str = "publisher",
    expires: dt.datetime | None = None,
    name: str | None = None,
) -> TrustedKey:
    from nightcore.trust.keys import check_scheme
    from nightcore.trust.pubkey import PublicKey
    from nightcore.trust.registry import ROLES, TrustedKey, validate_scope

    if role not in ROLES:
        raise UsageError("role must be publisher or maintainer")
    validate_scope(scope)
    try:
        data = public_pem.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {public_pem}: {exc.strerror}") from None
    key = PublicKey.from_pem(data)
    check_scheme(str(key.scheme), ws.policy.fips)
    registry = ws.load_registry()
    if expires is not None and expires <= utcnow():
        raise UsageError("--expires must be in the future")
    tk = TrustedKey(
        key=key,
        name=name or public_pem.name.removesuffix(".pub.pem")[:64],
        role=role,
        scope=scope,
        expires=expires,
        added=utcnow().replace(microsecond=0),
    )
    new = registry.with_key(tk)
    ws.audit().append(
        "trust_key_added",
        {
            "key_id": tk.key_id,
            "role": role,
            "scope": scope,
            "scheme": str(key.scheme),
            "expires": tk.to_dict().get("expires"),
        },
    )
    atomic_write(ws.registry_path, new.to_bytes())
    return tk


def trust_remove_key(ws: Workspace, key_id: str) -> str:
    registry = ws.load_registry()
    new = registry.without_key(key_id)
    removed = next(k for k in registry.keys if k not in new.keys)
    ws.audit().append("trust_key_removed", {"key_id": removed.key_id})
    atomic_write(ws.registry_path, new.to_bytes())
    return str(removed.key_id)


def trust_list(ws: Workspace) -> list[TrustedKey]:
    return list(ws.load_registry().keys)


def revoke(ws: Workspace, *, kind: str, subject: str, key: str, reason: str) -> RevocationList:
    """Add a key id or module digest to the revocation list, signed by a maintainer key."""
    from nightcore.trust.keys import check_scheme, load_signer
    from nightcore.trust.registry import sign_revocations

    if kind not in ("key", "module"):
        raise UsageError("revoke what: key or module")
    subject = subject.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", subject):
        raise UsageError(
            f"the {kind} to revoke must be 64 hex characters (a full "
            f"{'key id' if kind == 'key' else 'sha256'})"
        )
    registry = ws.load_registry()
    current = ws.load_revocations(registry)
    signer = load_signer(key)
    check_scheme(str(signer.public_key.scheme), ws.policy.fips)
    audit = ws.audit()
    try:
        new = sign_revocations(
            current,
            signer,
            registry,
            add_key=(subject, reason) if kind == "key" else None,
            add_module=(subject, reason) if kind == "module" else None,
        )
    except TrustError as exc:
        audit.append(
            "revocation_refused", {"code": exc.code, "reason": exc.message, "subject": subject[:64]}
        )
        raise
    audit.append(
        f"{kind}_revoked",
        {"subject": subject, "reason": reason, "list_version": new.version, "signer": new.signer},
    )
    atomic_write(ws.revocations_path, new.raw)
    ws._write_mark(new.version)
    return new


def import_revocations(ws: Workspace, path: Path) -> RevocationList:
    """Accept a revocation list from elsewhere (mesh, AUFS, an operator) if newer and signed."""
    from nightcore.trust.registry import check_not_rollback, parse_revocations
    from nightcore.workspace import _read_capped

    registry = ws.load_registry()
    audit = ws.audit()
    try:
        data = _read_capped(path, 16 * 1024 * 1024)
        candidate = parse_revocations(data, registry, fips=ws.policy.fips)
        current = ws.load_revocations(registry)
        check_not_rollback(candidate, max(current.version, ws.revocation_mark()) + 1)
    except (NightCoreError, OSError) as exc:
        code = exc.code if isinstance(exc, NightCoreError) else "IO_ERROR"
        msg = exc.message if isinstance(exc, NightCoreError) else str(exc)
        audit.append("revocation_refused", {"code": code, "reason": msg, "source": path.name})
        if isinstance(exc, NightCoreError):
            raise
        raise NightCoreError(msg, code=code) from None
    audit.append(
        "revocations_imported",
        {
            "version": candidate.version,
            "signer": candidate.signer,
            "sha256": hashlib.sha256(data).hexdigest(),
        },
    )
    atomic_write(ws.revocations_path, data)
    ws._write_mark(candidate.version)
    return candidate


# -- verification --------------------------------------------------------------------------


def select_tenants(ws: Workspace, tenants: list[str] | None) -> list[str]:
    from nightcore.module.package import discover

    found = discover(ws.modules_dir)
    if not tenants:
        return found
    missing = [t for t in tenants if t not in found]
    if missing:
        raise NightCoreError(
            f"tenant {missing[0]!r} not found under modules/", code="TENANT_NOT_FOUND"
        )
    return list(dict.fromkeys(tenants))


@dataclass(frozen=True)
class Verified:
    decision: Decision
    module: bytes  # the exact bytes whose digest was verified (empty when denied)
    envelope: bytes = b""  # the envelope those bytes were verified against


def verify_packages(
    ws: Workspace, tenants: list[str], *, now: dt.datetime | None = None
) -> list[Verified]:
    """Read each package once and decide; no audit (callers record the decisions)."""
    from nightcore.module.package import read_package
    from nightcore.module.verify import Decision, decide

    registry = ws.load_registry()
    revocations = ws.load_revocations(registry)
    now = now or utcnow()
    out: list[Verified] = []
    for name in tenants:
        try:
            pkg = read_package(ws.modules_dir / name)
        except NightCoreError as exc:
            out.append(Verified(Decision(name, exc.code, exc.message), b""))
            continue
        d = decide(pkg, registry, revocations, ws.policy, now)
        out.append(Verified(d, pkg.module if d.ok else b"", pkg.envelope or b"" if d.ok else b""))
    return out


def decision_event(d: Decision) -> dict[str, Any]:
    return {
        "code": d.code,
        "reason": d.reason,
        "key_id": d.key_id,
        "module_sha256": d.module_sha256,
        "envelope_sha256": d.envelope_sha256,
    }


def verify_tenants(ws: Workspace, tenants: list[str] | None = None) -> list[Decision]:
    """Verify tenants and append one audit line per decision."""
    from nightcore.audit.log import Event
    from nightcore.module.package import check_tenant_dir_name

    names = select_tenants(ws, tenants)
    results = [v.decision for v in verify_packages(ws, names)]
    events = []
    for d in results:
        try:
            check_tenant_dir_name(d.tenant)
            tenant: str | None = d.tenant
        except NightCoreError:
            tenant = None  # an invalid name is not a tenant id: keep it out of the tenant field
        data = decision_event(d)
        if tenant is None:
            data["dir_name_sha256"] = hashlib.sha256(d.tenant.encode()).hexdigest()
        events.append(Event("verify", data, tenant))
    ws.audit().append_many(events)
    checkpoint_if_due(ws)
    return results


def checkpoint_if_due(ws: Workspace) -> None:
    """Sign a checkpoint when ``[audit] checkpoint_every`` lines went by without one.

    Cheap when nothing is due (it counts new lines). A node whose key cannot sign C2SP notes
    (ECDSA in FIPS mode) keeps its hash chain and Merkle tree and skips this; any other
    failure (a tampered log) is raised.
    """
    from nightcore.audit.tlog import maybe_checkpoint

    try:
        maybe_checkpoint(ws, ws.config.checkpoint_every)
    except NightCoreError as exc:
        if exc.code != "CHECKPOINT_UNSUPPORTED_KEY":
            raise
