"""The key registry and the signed revocation list.

Registry (``trust/registry.json``): which publisher keys may sign for which tenants (a glob
over tenant ids) and which maintainer keys may sign revocation lists, each with an optional
expiry. It is the node's local trust root, changed only by ``nightcore trust`` commands (each
change is an audit event). No key is trusted because it sits next to a module.

Revocation list (``trust/revocations.json``): a DSSE envelope (payload type
``application/vnd.nightcore.revocations+json``) signed by a maintainer key in the registry,
with a version that only goes up. The highest version this node has accepted is remembered in
``state/trust/revocations.version``; an older (replayed) or missing list after a newer one was
seen is refused, so deleting or rolling back the file cannot un-revoke anything.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nightcore.canonical import canonical, parse_json
from nightcore.errors import NightCoreError, TrustError
from nightcore.trust.envelope import parse_envelope, sign_payload, verify_signature
from nightcore.trust.keys import check_scheme
from nightcore.trust.pubkey import PublicKey

if TYPE_CHECKING:
    from securesystemslib.signer import Signer

REGISTRY_FORMAT = 1
REVOCATIONS_PAYLOAD_TYPE = "application/vnd.nightcore.revocations+json"
MAX_REGISTRY_BYTES = 4 * 1024 * 1024
MAX_REVOCATIONS_BYTES = 16 * 1024 * 1024
ROLES = ("publisher", "maintainer")
_SCOPE_RE = re.compile(r"^[a-z0-9.*?_\[\]-]{1,64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_REASON = 512


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fmt_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, what: str) -> dt.datetime:
    if not isinstance(value, str):
        raise TrustError(f"{what}: expected an RFC 3339 string", code="REGISTRY_INVALID")
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TrustError(f"{what}: not an RFC 3339 date-time", code="REGISTRY_INVALID") from None
    if t.tzinfo is None:
        raise TrustError(f"{what}: needs an offset", code="REGISTRY_INVALID")
    return t.astimezone(dt.UTC)


def validate_scope(scope: str) -> str:
    if not _SCOPE_RE.fullmatch(scope):
        raise TrustError(
            "scope must be a glob over tenant ids ([a-z0-9._-] and * ? [ ])", code="USAGE"
        )
    return scope


@dataclass(frozen=True)
class TrustedKey:
    key: PublicKey
    name: str
    role: str
    scope: str
    expires: dt.datetime | None
    added: dt.datetime

    @property
    def key_id(self) -> str:
        return str(self.key.keyid)

    def in_scope(self, tenant: str) -> bool:
        return fnmatch.fnmatchcase(tenant, self.scope)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key_id": self.key_id,
            "key": {
                "keytype": self.key.keytype,
                "scheme": self.key.scheme,
                "keyval": dict(self.key.keyval),
            },
            "name": self.name,
            "role": self.role,
            "scope": self.scope,
            "added": fmt_time(self.added),
        }
        if self.expires is not None:
            out["expires"] = fmt_time(self.expires)
        return out


@dataclass(frozen=True)
class Registry:
    keys: tuple[TrustedKey, ...] = ()

    def get(self, key_id: str) -> TrustedKey | None:
        for k in self.keys:
            if k.key_id == key_id:
                return k
        return None

    def with_key(self, key: TrustedKey) -> Registry:
        if self.get(key.key_id) is not None:
            raise TrustError(f"key {key.key_id[:16]} is already in the registry", code="KEY_EXISTS")
        return Registry((*self.keys, key))

    def without_key(self, key_id: str) -> Registry:
        matches = [k for k in self.keys if k.key_id.startswith(key_id)]
        if len(key_id) < 8 or len(matches) != 1:
            raise TrustError(
                f"no unique registry key matches {key_id[:64]!r} (give >= 8 hex chars)",
                code="KEY_NOT_FOUND",
            )
        return Registry(tuple(k for k in self.keys if k is not matches[0]))

    def to_bytes(self) -> bytes:
        # The file keeps its TUF-style "keyid" (docs/formats.md); to_dict() is the --json shape.
        keys = [{"keyid": d.pop("key_id"), **d} for d in (k.to_dict() for k in self.keys)]
        return canonical({"format": REGISTRY_FORMAT, "keys": keys}) + b"\n"


def parse_registry(data: bytes) -> Registry:
    try:
        doc = parse_json(
            data, max_bytes=MAX_REGISTRY_BYTES, what="registry", code="REGISTRY_INVALID"
        )
    except NightCoreError as exc:
        raise TrustError(exc.message, code="REGISTRY_INVALID") from None
    if not isinstance(doc, dict) or set(doc) != {"format", "keys"} or doc["format"] != 1:
        raise TrustError("registry must be {format: 1, keys: [...]}", code="REGISTRY_INVALID")
    if not isinstance(doc["keys"], list):
        raise TrustError("registry keys must be a list", code="REGISTRY_INVALID")
    keys: list[TrustedKey] = []
    seen: set[str] = set()
    allowed = {"keyid", "key", "name", "role", "scope", "added", "expires"}
    for i, e in enumerate(doc["keys"]):
        if (
            not isinstance(e, dict)
            or not set(e) <= allowed
            or not {"keyid", "key", "name", "role", "scope", "added"} <= set(e)
        ):
            raise TrustError(
                f"registry entry {i} has missing or unknown fields", code="REGISTRY_INVALID"
            )
        if not isinstance(e["keyid"], str) or e["keyid"] in seen:
            raise TrustError(f"registry entry {i}: duplicate or bad keyid", code="REGISTRY_INVALID")
        if not isinstance(e["key"], dict):
            raise TrustError(f"registry entry {i}: key must be an object", code="REGISTRY_INVALID")
        try:
            key = PublicKey.from_dict(e["keyid"], e["key"])
        except NightCoreError as exc:
            raise TrustError(exc.message, code="REGISTRY_INVALID") from None
        if e["role"] not in ROLES:
            raise TrustError(
                f"registry entry {i}: role must be publisher or maintainer", code="REGISTRY_INVALID"
            )
        if not isinstance(e["name"], str) or not isinstance(e["scope"], str):
            raise TrustError(
                f"registry entry {i}: name/scope must be strings", code="REGISTRY_INVALID"
            )
        seen.add(e["keyid"])
        keys.append(
            TrustedKey(
                key=key,
                name=e["name"][:64],
                role=e["role"],
                scope=e["scope"],
                expires=parse_time(e["expires"], "expires") if "expires" in e else None,
                added=parse_time(e["added"], "added"),
            )
        )
    return Registry(tuple(keys))


@dataclass(frozen=True)
class Revocation:
    subject: str  # key id or module sha256
    reason: str
    revoked_at: str


@dataclass(frozen=True)
class RevocationList:
    version: int = 0
    issued: str = ""
    keys: tuple[Revocation, ...] = ()
    modules: tuple[Revocation, ...] = ()
    signer: str = ""  # key id that signed it (empty for the implicit empty list)
    raw: bytes = b""  # the envelope bytes as read
    _key_ids: frozenset[str] = field(default=frozenset(), compare=False)
    _module_ids: frozenset[str] = field(default=frozenset(), compare=False)

    def key_revoked(self, key_id: str) -> Revocation | None:
        return next((r for r in self.keys if r.subject == key_id), None)

    def module_revoked(self, sha256: str) -> Revocation | None:
        return next((r for r in self.modules if r.subject == sha256), None)

    def payload(self) -> dict[str, Any]:
        def items(rs: tuple[Revocation, ...], name: str) -> list[dict[str, str]]:
            return [{name: r.subject, "reason": r.reason, "revoked_at": r.revoked_at} for r in rs]

        return {
            "type": "nightcore-revocations",
            "version": self.version,
            "issued": self.issued,
            "keys": items(self.keys, "keyid"),
            "modules": items(self.modules, "sha256"),
        }


def _parse_revocation_items(raw: object, name: str) -> tuple[Revocation, ...]:
    if not isinstance(raw, list):
        raise TrustError(f"revocations.{name}s must be a list", code="REVOCATION_INVALID")
    out = []
    for item in raw:
        if (
            not isinstance(item, dict)
            or set(item) != {name, "reason", "revoked_at"}
            or not all(isinstance(v, str) for v in item.values())
        ):
            raise TrustError(
                f"revocation entry must be {{{name}, reason, revoked_at}}",
                code="REVOCATION_INVALID",
            )
        if not _HEX64.fullmatch(item[name]):
            raise TrustError(
                f"revocation {name} must be 64 lower-case hex characters", code="REVOCATION_INVALID"
            )
        out.append(Revocation(item[name], item["reason"][:MAX_REASON], item["revoked_at"]))
    return tuple(out)


def parse_revocations(data: bytes, registry: Registry, *, fips: bool) -> RevocationList:
    """Verify and parse a revocation list envelope against maintainer keys in ``registry``."""
    try:
        env = parse_envelope(data, payload_type=REVOCATIONS_PAYLOAD_TYPE)
    except TrustError as exc:
        raise TrustError(f"revocation list: {exc.message}", code="REVOCATION_INVALID") from None
    signer: TrustedKey | None = None
    for raw in env.signatures:
        tk = registry.get(raw.keyid)
        if tk is None:
            continue
        if tk.role != "maintainer":
            raise TrustError(
                "revocation list is signed by a key that is not a maintainer key",
                code="REVOCATION_SIGNER_INVALID",
            )
        check_scheme(str(tk.key.scheme), fips)
        if verify_signature(env, tk.key):
            signer = tk
            break
        raise TrustError("revocation list signature does not verify", code="SIGNATURE_INVALID")
    if signer is None:
        raise TrustError(
            "revocation list is not signed by any maintainer key in the registry",
            code="REVOCATION_SIGNER_INVALID",
        )
    try:
        doc = parse_json(
            env.payload,
            max_bytes=MAX_REVOCATIONS_BYTES,
            what="revocation payload",
            code="REVOCATION_INVALID",
        )
    except NightCoreError as exc:
        raise TrustError(exc.message, code="REVOCATION_INVALID") from None
    if (
        not isinstance(doc, dict)
        or set(doc) != {"type", "version", "issued", "keys", "modules"}
        or doc["type"] != "nightcore-revocations"
        or not isinstance(doc["version"], int)
        or isinstance(doc["version"], bool)
        or doc["version"] < 1
        or not isinstance(doc["issued"], str)
    ):
        raise TrustError(
            "revocation payload has missing, unknown or mistyped fields", code="REVOCATION_INVALID"
        )
    keys = _parse_revocation_items(doc["keys"], "keyid")
    modules = _parse_revocation_items(doc["modules"], "sha256")
    return RevocationList(
        version=doc["version"],
        issued=doc["issued"],
        keys=keys,
        modules=modules,
        signer=signer.key_id,
        raw=data,
    )


def sign_revocations(
    current: RevocationList,
    signer: Signer,
    registry: Registry,
    *,
    add_key: tuple[str, str] | None = None,
    add_module: tuple[str, str] | None = None,
    now: dt.datetime | None = None,
) -> RevocationList:
    """Return the next version of the list with one more entry, signed by a maintainer."""
    tk = registry.get(str(signer.public_key.keyid))
    if tk is None or tk.role != "maintainer":
        raise TrustError(
            "revocation lists must be signed by a maintainer key in the registry",
            code="REVOCATION_SIGNER_INVALID",
        )
    stamp = fmt_time(now or utcnow())
    keys, modules = current.keys, current.modules
    if add_key is not None:
        if not _HEX64.fullmatch(add_key[0]):
            raise TrustError("key id must be 64 lower-case hex characters", code="USAGE")
        if current.key_revoked(add_key[0]):
            raise TrustError("key is already revoked", code="ALREADY_REVOKED")
        keys = (*keys, Revocation(add_key[0], add_key[1][:MAX_REASON], stamp))
    if add_module is not None:
        if not _HEX64.fullmatch(add_module[0]):
            raise TrustError("module digest must be 64 lower-case hex characters", code="USAGE")
        if current.module_revoked(add_module[0]):
            raise TrustError("module is already revoked", code="ALREADY_REVOKED")
        modules = (*modules, Revocation(add_module[0], add_module[1][:MAX_REASON], stamp))
    nxt = RevocationList(version=current.version + 1, issued=stamp, keys=keys, modules=modules)
    raw = sign_payload(canonical(nxt.payload()), [signer], REVOCATIONS_PAYLOAD_TYPE) + b"\n"
    return RevocationList(
        version=nxt.version, issued=stamp, keys=keys, modules=modules, signer=tk.key_id, raw=raw
    )


def check_not_rollback(candidate: RevocationList, highest_seen: int) -> None:
    if candidate.version < highest_seen:
        raise TrustError(
            f"revocation list version {candidate.version} is older than version {highest_seen} "
            "already accepted (replay or rollback)",
            code="REVOCATION_ROLLBACK",
        )
