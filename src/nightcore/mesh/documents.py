"""Signed change documents of the trust broadcast (key registry changes, cordons).

Revocations travel as the revocation list itself (the ``trust revoke`` format,
:mod:`nightcore.trust.registry`). Every other trust change is one DSSE envelope, payload type
``application/vnd.nightcore.mesh-change+json``, signed by a maintainer key, payload::

    {"type": "nightcore-mesh-change", "version": N, "issued": "...Z", "op": OP,
     "target": T, "reason": R, "key": {...} (key_add only)}

``op``: ``cordon``/``uncordon`` (``target``: a tenant id), ``node_cordon``/``node_uncordon``
(``target``: a node name), ``key_add`` (``target``: the key id; ``key``: ``public_pem``,
``role``, ``scope``, ``name``, ``expires`` or null), ``key_remove`` (``target``: a key id).
``version`` is one counter for all change documents of the deployment: a node applies a
document only if its version is above the highest it applied.

A node verifies with its own registry: the signature must verify under a maintainer key it
trusts that has not expired and is not on its revocation list. The bus is not trusted.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nightcore.canonical import canonical, parse_json
from nightcore.errors import NightCoreError, TrustError
from nightcore.trust.envelope import parse_envelope, sign_payload, verify_signature
from nightcore.trust.keys import check_scheme

if TYPE_CHECKING:
    from securesystemslib.signer import Signer

    from nightcore.trust.registry import Registry, RevocationList, TrustedKey

CHANGE_PAYLOAD_TYPE = "application/vnd.nightcore.mesh-change+json"
CHANGE_TYPE = "nightcore-mesh-change"
MAX_DOC_BYTES = 1024 * 1024  # also the trust stream's max message size
MAX_REASON = 512
OPS = ("cordon", "uncordon", "node_cordon", "node_uncordon", "key_add", "key_remove")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_FIELDS = {"public_pem", "role", "scope", "name", "expires"}


def _invalid(message: str) -> TrustError:
    return TrustError(f"mesh change: {message}", code="MESH_DOC_INVALID")


@dataclass(frozen=True)
class Change:
    version: int
    issued: str
    op: str
    target: str
    reason: str = ""
    key: dict[str, Any] = field(default_factory=dict)
    signer: str = ""
    raw: bytes = b""

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": CHANGE_TYPE,
            "version": self.version,
            "issued": self.issued,
            "op": self.op,
            "target": self.target,
            "reason": self.reason,
        }
        if self.op == "key_add":
            out["key"] = self.key
        return out


def check_target(op: str, target: object) -> str:
    from nightcore.mesh.names import check_token
    from nightcore.module.manifest import validate_tenant_id

    if not isinstance(target, str) or not target:
        raise _invalid("target must be a non-empty string")
    try:
        if op in ("cordon", "uncordon"):
            validate_tenant_id(target)
        elif op in ("node_cordon", "node_uncordon"):
            check_token(target, "node name")
        elif not _HEX64.fullmatch(target):
            raise _invalid("target must be a key id (64 lower-case hex characters)")
    except TrustError:
        raise
    except NightCoreError as exc:
        raise _invalid(f"target: {exc.message}") from None
    return target


def check_key(raw: object, target: str) -> dict[str, Any]:
    from nightcore.trust.pubkey import PublicKey
    from nightcore.trust.registry import ROLES, parse_time, validate_scope

    if not isinstance(raw, dict) or set(raw) != _KEY_FIELDS:
        raise _invalid(f"key must have exactly {sorted(_KEY_FIELDS)}")
    if not all(isinstance(raw[k], str) for k in ("public_pem", "role", "scope", "name")):
        raise _invalid("key fields must be strings")
    if raw["role"] not in ROLES or not 0 < len(raw["name"]) <= 64:
        raise _invalid("key role must be publisher or maintainer, name 1-64 characters")
    try:
        validate_scope(raw["scope"])
        if raw["expires"] is not None:
            parse_time(raw["expires"], "expires")
        key = PublicKey.from_pem(raw["public_pem"].encode())
    except NightCoreError as exc:
        raise _invalid(f"key: {exc.message}") from None
    if key.keyid != target:
        raise _invalid("target is not the key id of key.public_pem")
    return dict(raw)


def maintainer_signer(
    env_sigs: Any, registry: Registry, revocations: RevocationList, *, fips: bool, now: dt.datetime
) -> TrustedKey:
    """The trusted maintainer whose signature verifies over ``env_sigs`` (a ParsedEnvelope)."""
    for raw in env_sigs.signatures:
        tk = registry.get(raw.keyid)
        if tk is None:
            continue
        if tk.role != "maintainer":
            raise TrustError(
                "mesh change is signed by a key that is not a maintainer key",
                code="MESH_DOC_SIGNER_INVALID",
            )
        if tk.expires is not None and tk.expires <= now:
            raise TrustError("mesh change signer's key has expired", code="MESH_DOC_SIGNER_INVALID")
        if revocations.key_revoked(tk.key_id) is not None:
            raise TrustError("mesh change signer's key is revoked", code="MESH_DOC_SIGNER_INVALID")
        check_scheme(str(tk.key.scheme), fips)
        if verify_signature(env_sigs, tk.key):
            return tk
        raise TrustError("mesh change signature does not verify", code="SIGNATURE_INVALID")
    raise TrustError(
        "mesh change is not signed by any maintainer key in this node's registry",
        code="MESH_DOC_SIGNER_INVALID",
    )


def parse_change(
    data: bytes,
    registry: Registry,
    revocations: RevocationList,
    *,
    fips: bool,
    now: dt.datetime | None = None,
) -> Change:
    """Verify and parse a change document (see the module docstring)."""
    if len(data) > MAX_DOC_BYTES:
        raise _invalid(f"larger than {MAX_DOC_BYTES} bytes")
    try:
        env = parse_envelope(data, payload_type=CHANGE_PAYLOAD_TYPE)
    except TrustError as exc:
        raise _invalid(exc.message) from None
    signer = maintainer_signer(
        env, registry, revocations, fips=fips, now=now or dt.datetime.now(dt.UTC)
    )
    try:
        doc = parse_json(env.payload, max_bytes=MAX_DOC_BYTES, what="payload")
    except NightCoreError as exc:
        raise _invalid(exc.message) from None
    base = {"type", "version", "issued", "op", "target", "reason"}
    if not isinstance(doc, dict) or doc.get("type") != CHANGE_TYPE:
        raise _invalid(f"payload type must be {CHANGE_TYPE}")
    op = doc.get("op")
    if op not in OPS:
        raise _invalid(f"op must be one of {', '.join(OPS)}")
    if set(doc) != (base | {"key"} if op == "key_add" else base):
        raise _invalid("payload has missing or unknown fields")
    version = doc["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _invalid("version must be a positive integer")
    if not isinstance(doc["issued"], str) or not isinstance(doc["reason"], str):
        raise _invalid("issued and reason must be strings")
    target = check_target(str(op), doc["target"])
    key = check_key(doc["key"], target) if op == "key_add" else {}
    return Change(
        version=version,
        issued=doc["issued"],
        op=str(op),
        target=target,
        reason=doc["reason"][:MAX_REASON],
        key=key,
        signer=signer.key_id,
        raw=data,
    )


def sign_change(change: Change, signer: Signer) -> bytes:
    """The envelope bytes of ``change`` signed by ``signer`` (a maintainer's key)."""
    return sign_payload(canonical(change.payload()), [signer], CHANGE_PAYLOAD_TYPE) + b"\n"
