"""Operations on a node's trust state: trusted keys and the revocation list.

Each change is audited before it is written (a refusal is audited too), and written whole
(``atomic_write``). The application facade (:mod:`nightcore.app`) exposes these; AUFS applies
revocation lists it fetched through :func:`import_revocations`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightcore.errors import NightCoreError, TrustError, UsageError
from nightcore.fsio import atomic_write

if TYPE_CHECKING:
    from nightcore.context import NodeContext
    from nightcore.trust.registry import Revocation, RevocationList, TrustedKey


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _trust_changed(ctx: NodeContext) -> None:
    """The kill switch: this process's in-flight runs (and a node's workers) re-check now."""
    from nightcore.runner.trustwatch import trust_changed

    trust_changed(ctx.layout.root)


def trust_add_key(
    ctx: NodeContext,
    public_pem: Path,
    *,
    scope: str,
    role: str = "publisher",
    expires: dt.datetime | None = None,
    name: str | None = None,
) -> TrustedKey:
    from nightcore.trust.keys import check_scheme
    from nightcore.trust.pubkey import PublicKey, read_public_pem
    from nightcore.trust.registry import ROLES, TrustedKey, validate_scope

    if role not in ROLES:
        raise UsageError("role must be publisher or maintainer")
    validate_scope(scope)
    key = PublicKey.from_pem(read_public_pem(public_pem))
    check_scheme(str(key.scheme), ctx.policy.fips)
    registry = ctx.load_registry()
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
    ctx.audit().append(
        "trust_key_added",
        {
            "key_id": tk.key_id,
            "role": role,
            "scope": scope,
            "scheme": str(key.scheme),
            "expires": tk.to_dict().get("expires"),
        },
    )
    atomic_write(ctx.layout.registry_path, new.to_bytes())
    return tk


KEY_AGE_WARN_DAYS = 90  # as AUFS's maintainer keys: threat model section 11, quarterly rotation


def key_age_warnings(
    ctx: NodeContext, *, now: dt.datetime | None = None, days: int = KEY_AGE_WARN_DAYS
) -> list[dict[str, Any]]:
    """Trusted publisher and maintainer keys added more than ``days`` days ago (oldest first):
    ``{key_id, name, role, age_days}``. Shown by ``doctor`` and the dashboard."""
    now = now or utcnow()
    aged = sorted(
        (
            ((now - k.added).days, k)
            for k in ctx.load_registry().keys
            if (now - k.added).days > days
        ),
        key=lambda pair: pair[0],
    )
    return [
        {"key_id": k.key_id, "name": k.name, "role": k.role, "age_days": age}
        for age, k in reversed(aged)
    ]


def trust_rotate_key(
    ctx: NodeContext, old_key_id: str, new_public_pem: Path, *, grace_days: int = 30
) -> tuple[TrustedKey, TrustedKey]:
    """Publisher-key rotation: trust ``new_public_pem`` with the old key's role, scope and name,
    and let the old key expire after ``grace_days`` (tenants are re-signed with the new key in
    between; nothing signed by the old key is accepted after that). Returns (old, new)."""
    import dataclasses

    if isinstance(grace_days, bool) or not 0 <= grace_days <= 365:
        raise UsageError("--grace-days is 0..365")
    registry = ctx.load_registry()
    old = registry.get(resolve_key_id(ctx, old_key_id))
    if old is None:
        raise TrustError(f"no registry key {old_key_id[:64]!r}", code="KEY_NOT_FOUND")
    new = trust_add_key(
        ctx,
        new_public_pem,
        scope=old.scope,
        role=old.role,
        expires=None,
    )
    until = utcnow().replace(microsecond=0) + dt.timedelta(days=grace_days, seconds=1)
    if old.expires is None or old.expires > until:
        registry = ctx.load_registry()
        retiring = dataclasses.replace(old, expires=until)
        keys = tuple(retiring if k.key_id == old.key_id else k for k in registry.keys)
        atomic_write(ctx.layout.registry_path, type(registry)(keys).to_bytes())
        old = retiring
    ctx.audit().append(
        "trust_key_rotated",
        {
            "old_key_id": old.key_id,
            "new_key_id": new.key_id,
            "role": old.role,
            "scope": old.scope,
            "old_expires": old.to_dict().get("expires"),
        },
    )
    _trust_changed(ctx)
    return old, new


def trust_remove_key(ctx: NodeContext, key_id: str) -> str:
    registry = ctx.load_registry()
    new = registry.without_key(key_id)
    removed = next(k for k in registry.keys if k not in new.keys)
    ctx.audit().append("trust_key_removed", {"key_id": removed.key_id})
    atomic_write(ctx.layout.registry_path, new.to_bytes())
    _trust_changed(ctx)
    return str(removed.key_id)


def trust_list(ctx: NodeContext) -> list[TrustedKey]:
    return list(ctx.load_registry().keys)


def trust_list_states(ctx: NodeContext) -> list[tuple[TrustedKey, Revocation | None]]:
    """Each trusted key with its entry in the (verified) revocation list, or None."""
    registry = ctx.load_registry()
    revocations = ctx.load_revocations(registry)
    return [(k, revocations.key_revoked(k.key_id)) for k in registry.keys]


def revocations_list(ctx: NodeContext) -> tuple[RevocationList, dict[str, str]]:
    """The verified revocation list, and the registry name of each revoked key still there."""
    registry = ctx.load_registry()
    rl = ctx.load_revocations(registry)
    names = {r.subject: tk.name for r in rl.keys if (tk := registry.get(r.subject)) is not None}
    return rl, names


def resolve_key_id(ctx: NodeContext, key_id: str) -> str:
    """A full key id (64 hex) as given, or the one registry key id that a prefix of at least 8
    hex characters starts: KEY_NOT_FOUND when none does, ID_AMBIGUOUS (naming them) when
    several do; USAGE for anything else."""
    from nightcore.ids import resolve_prefix

    key_id = key_id.lower()
    if re.fullmatch(r"[0-9a-f]{64}", key_id):
        return key_id
    if not re.fullmatch(r"[0-9a-f]{8,63}", key_id):
        raise UsageError(
            "the key to revoke must be a key id (64 hex characters) or a unique prefix of at "
            "least 8 hex characters of a key in the trust registry"
        )
    keys = [k.key_id for k in ctx.load_registry().keys]
    return resolve_prefix(key_id, keys, "registry key", code="KEY_NOT_FOUND")


def revoke(ctx: NodeContext, *, kind: str, subject: str, key: str, reason: str) -> RevocationList:
    """Add a key id or module digest to the revocation list, signed by a maintainer key."""
    from nightcore.trust.keys import check_scheme, load_signer
    from nightcore.trust.registry import sign_revocations

    if kind not in ("key", "module"):
        raise UsageError("revoke what: key or module")
    subject = subject.lower()
    if kind == "key":
        subject = resolve_key_id(ctx, subject)
    elif not re.fullmatch(r"[0-9a-f]{64}", subject):
        raise UsageError("the module to revoke must be 64 hex characters (a full sha256)")
    registry = ctx.load_registry()
    current = ctx.load_revocations(registry)
    signer = load_signer(key)
    check_scheme(str(signer.public_key.scheme), ctx.policy.fips)
    audit = ctx.audit()
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
    atomic_write(ctx.layout.revocations_path, new.raw)
    ctx.write_revocation_mark(new.version)
    _trust_changed(ctx)
    return new


def import_revocations(ctx: NodeContext, path: Path) -> RevocationList:
    """Accept a revocation list from elsewhere (mesh, AUFS, an operator) if newer and signed."""
    from nightcore.context import read_capped
    from nightcore.trust.registry import check_not_rollback, parse_revocations

    registry = ctx.load_registry()
    audit = ctx.audit()
    try:
        data = read_capped(path, 16 * 1024 * 1024)
        candidate = parse_revocations(data, registry, fips=ctx.policy.fips)
        current = ctx.load_revocations(registry)
        check_not_rollback(candidate, max(current.version, ctx.revocation_mark()) + 1)
    except (NightCoreError, OSError) as exc:
        code = exc.code if isinstance(exc, NightCoreError) else "IO_ERROR"
        msg = exc.message if isinstance(exc, NightCoreError) else f"{exc.strerror}: {path}"
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
    atomic_write(ctx.layout.revocations_path, data)
    ctx.write_revocation_mark(candidate.version)
    _trust_changed(ctx)
    return candidate
