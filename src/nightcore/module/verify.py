"""The verification decision: one pure function over bytes and trust state.

    decide(package bytes, registry, revocations, policy, now) -> Decision(OK | code, reason)

Rules, in order (the first failing rule names the code):

1. The envelope parses strictly and carries an in-toto statement  -> ENVELOPE_MALFORMED
2. A signature names a key in the registry                        -> KEY_UNTRUSTED
3. That key's scheme is allowed (FIPS allow-list in FIPS mode)     -> ALGORITHM_NOT_ALLOWED
4. The signature verifies over the DSSE PAE                        -> SIGNATURE_INVALID
5. The key is not revoked, not expired, and is a publisher key     -> KEY_REVOKED, KEY_EXPIRED,
                                                                      KEY_UNTRUSTED
6. The statement and its predicate (the signed manifest) are valid -> MANIFEST_INVALID
7. The signed tenant id is the package's directory name            -> MANIFEST_MISMATCH
8. The key's scope covers the tenant id                            -> KEY_OUT_OF_SCOPE
9. SHA-256(module bytes) equals the statement subject's digest     -> DIGEST_MISMATCH
10. The module digest is not revoked                               -> MODULE_REVOKED
11. The module starts with the wasm magic and version 1            -> MODULE_MALFORMED
12. now is inside [not_before, expires)                            -> MANIFEST_NOT_YET_VALID,
                                                                      MANIFEST_EXPIRED
13. manifest.toml on disk, if present, equals the signed manifest  -> MANIFEST_INVALID,
                                                                      MANIFEST_MISMATCH
14. Node policy allows every capability asked for                  -> CAPABILITY_DENIED

Signature checks come before anything is read from the payload, so unsigned content never
influences the decision. The signed statement is authoritative: manifest.toml is only
compared, never used for the run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from nightcore.canonical import parse_json
from nightcore.errors import NightCoreError, TrustError
from nightcore.module.manifest import Manifest, manifest_from_dict, parse_manifest_toml
from nightcore.trust.envelope import (
    MAX_ENVELOPE_BYTES,
    STATEMENT_TYPE,
    parse_envelope,
    verify_signature,
)
from nightcore.trust.keys import allowed_schemes

if TYPE_CHECKING:
    from nightcore.module.package import TenantPackage
    from nightcore.policy import Policy
    from nightcore.trust.registry import Registry, RevocationList

MANIFEST_PREDICATE_TYPE = "urn:nightcore:predicate:manifest:v1"
WASM_HEADER = b"\x00asm\x01\x00\x00\x00"


@dataclass(frozen=True)
class Decision:
    tenant: str
    code: str
    reason: str
    key_id: str = ""
    module_sha256: str = ""
    manifest: Manifest | None = None
    envelope_sha256: str = ""

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "ok": self.ok,
            "code": self.code,
            "reason": self.reason,
            "key_id": self.key_id,
            "module_sha256": self.module_sha256,
        }


class _Deny(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def policy_violations(m: Manifest, policy: Policy) -> list[str]:
    """What in ``m`` the node policy does not allow (empty list: allowed)."""
    out: list[str] = []
    caps = m.capabilities
    if caps.fs and not policy.allow_fs:
        out.append("filesystem preopens are not allowed on this node")
    if any(g.mode == "rw" for g in caps.fs) and not policy.allow_fs_rw:
        out.append("read-write preopens are not allowed on this node")
    if caps.env and not policy.allow_env:
        out.append("environment variables are not allowed on this node")
    if caps.net and not policy.allow_net:
        out.append("network access is not allowed on this node")
    elif caps.net and policy.net.allow is not None:
        out.extend(_net_not_covered(caps.net, policy.net.allow))
    if m.deterministic and not policy.allow_deterministic:
        out.append("deterministic mode is not allowed on this node")
    for name, asked in m.limits.to_dict().items():
        allowed = getattr(policy.max_limits, name)
        if asked > allowed:
            out.append(f"limits.{name} = {asked} exceeds the node maximum {allowed}")
    return out


def _net_not_covered(asked: tuple[str, ...], allow: tuple[str, ...]) -> list[str]:
    """The manifest's NET grants that no ``[policy.net] allow`` pattern covers."""
    from nightcore.module.netpolicy import covers, parse_grant, parse_grants

    allowed = parse_grants(allow)
    return [
        f"net grant {entry[:80]!r} is not covered by the node's policy.net.allow"
        for entry in asked
        if not all(any(covers(p, g) for p in allowed) for g in parse_grant(entry))
    ]


def decide(
    pkg: TenantPackage,
    registry: Registry,
    revocations: RevocationList,
    policy: Policy,
    now: dt.datetime,
) -> Decision:
    module_sha = hashlib.sha256(pkg.module).hexdigest()
    env_sha = hashlib.sha256(pkg.envelope or b"").hexdigest()
    key_id = ""
    try:
        key_id, manifest = _decide(pkg, module_sha, registry, revocations, policy, now)
    except _Deny as d:
        return Decision(
            pkg.name,
            d.code,
            d.reason,
            key_id=getattr(d, "key_id", key_id),
            module_sha256=module_sha,
            envelope_sha256=env_sha,
        )
    return Decision(
        pkg.name,
        "OK",
        "signature, digest, manifest and policy verified",
        key_id=key_id,
        module_sha256=module_sha,
        manifest=manifest,
        envelope_sha256=env_sha,
    )


def _untrusted_reason(tenant: str, keyids: list[str]) -> str:
    """KEY_UNTRUSTED: which key ids signed (as the envelope claims them; hex only, the rest is
    untrusted text) and the command that would trust the signer for this tenant."""
    ids = [k.lower() for k in keyids if re.fullmatch(r"[0-9a-fA-F]{8,64}", k)][:3]
    by = f"signed by key id {', '.join(ids)}" if ids else "no usable key id in the envelope"
    scope = tenant if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", tenant) else "TENANT"
    return (
        f"no signature is by a key in the trust registry ({by}); to trust the signer: "
        f"nightcore trust add-key PUBKEY.pem --scope '{scope}'"
    )


def _deny(code: str, reason: str, key_id: str = "") -> _Deny:
    d = _Deny(code, reason)
    d.key_id = key_id  # type: ignore[attr-defined]
    return d


# Memos keyed by the SHA-256 of the exact bytes parsed (only successes are kept; bounded). A
# service running the same tenant again skips re-parsing what it already validated; the
# signature over those bytes is still checked on every decision.
_MEMO_MAX = 1024
T = TypeVar("T")
_statement_memo: dict[bytes, tuple[str, Manifest]] = {}
_toml_memo: dict[bytes, Manifest] = {}


def _memoized(memo: dict[bytes, T], data: bytes, parse: Callable[[bytes], T]) -> T:
    """``parse(data)``, remembered by the SHA-256 of ``data`` (exceptions are not)."""
    key = hashlib.sha256(data).digest()
    hit = memo.get(key)
    if hit is None:
        hit = parse(data)
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[key] = hit
    return hit


def signed_manifest(payload: bytes) -> tuple[str, Manifest]:
    """(subject sha256, manifest) of a signed statement payload; raises _Deny."""
    return _memoized(_statement_memo, payload, _parse_statement)


def _parse_statement(payload: bytes) -> tuple[str, Manifest]:
    try:
        stmt = parse_json(
            payload, max_bytes=MAX_ENVELOPE_BYTES, what="statement", code="MANIFEST_INVALID"
        )
    except NightCoreError as exc:
        raise _deny("MANIFEST_INVALID", exc.message) from None
    if (
        not isinstance(stmt, dict)
        or set(stmt) != {"_type", "subject", "predicateType", "predicate"}
        or stmt["_type"] != STATEMENT_TYPE
        or stmt["predicateType"] != MANIFEST_PREDICATE_TYPE
    ):
        raise _deny("MANIFEST_INVALID", "payload is not a Night Core manifest statement")
    subjects = stmt["subject"]
    if (
        not isinstance(subjects, list)
        or len(subjects) != 1
        or not isinstance(subjects[0], dict)
        or not isinstance(subjects[0].get("digest"), dict)
        or not isinstance(subjects[0]["digest"].get("sha256"), str)
    ):
        raise _deny("MANIFEST_INVALID", "statement must have one subject with a sha256 digest")
    try:
        manifest = manifest_from_dict(stmt["predicate"])
    except NightCoreError as exc:
        raise _deny("MANIFEST_INVALID", f"signed manifest: {exc.message}") from None
    return subjects[0]["digest"]["sha256"], manifest


def manifest_toml(data: bytes) -> Manifest:
    """parse_manifest_toml memoized by the exact bytes (Manifest is immutable)."""
    return _memoized(_toml_memo, data, parse_manifest_toml)


def _decide(  # noqa: C901 - each branch is one verification rule; tests/unit/test_verify_rules.py checks them one by one
    pkg: TenantPackage,
    module_sha: str,
    registry: Registry,
    revocations: RevocationList,
    policy: Policy,
    now: dt.datetime,
) -> tuple[str, Manifest]:
    if pkg.envelope is None:
        raise _deny("ENVELOPE_MALFORMED", "module is not signed (no envelope)")
    try:
        env = parse_envelope(pkg.envelope)
    except TrustError as exc:
        raise _deny("ENVELOPE_MALFORMED", exc.message) from None

    known = [(raw, registry.get(raw.keyid)) for raw in env.signatures]
    trusted = [tk for _, tk in known if tk is not None]
    if not trusted:
        raise _deny(
            "KEY_UNTRUSTED", _untrusted_reason(pkg.name, [raw.keyid for raw in env.signatures])
        )
    schemes = allowed_schemes(policy.fips)
    usable = [tk for tk in trusted if tk.key.scheme in schemes]
    if not usable:
        raise _deny(
            "ALGORITHM_NOT_ALLOWED",
            f"signing scheme {trusted[0].key.scheme} is not allowed"
            f"{' in FIPS mode' if policy.fips else ''}",
            trusted[0].key_id,
        )
    signer = next((tk for tk in usable if verify_signature(env, tk.key)), None)
    if signer is None:
        raise _deny(
            "SIGNATURE_INVALID",
            "signature does not verify over the envelope payload",
            usable[0].key_id,
        )
    kid = signer.key_id
    if (rev := revocations.key_revoked(kid)) is not None:
        raise _deny("KEY_REVOKED", f"signing key is revoked: {rev.reason}", kid)
    if signer.expires is not None and now >= signer.expires:
        raise _deny(
            "KEY_EXPIRED", f"signing key expired at {signer.expires:%Y-%m-%dT%H:%M:%SZ}", kid
        )
    if signer.role != "publisher":
        raise _deny("KEY_UNTRUSTED", f"key role {signer.role} may not sign tenant modules", kid)

    try:
        subject_sha, manifest = signed_manifest(env.payload)
    except _Deny as d:
        raise _deny(d.code, d.reason, kid) from None
    if manifest.tenant != pkg.name:
        raise _deny(
            "MANIFEST_MISMATCH",
            f"signed for tenant {manifest.tenant!r}, found in directory {pkg.name!r}",
            kid,
        )
    if not signer.in_scope(manifest.tenant):
        raise _deny(
            "KEY_OUT_OF_SCOPE",
            f"key scope {signer.scope!r} does not cover tenant {manifest.tenant!r}",
            kid,
        )
    if subject_sha != module_sha:
        raise _deny("DIGEST_MISMATCH", "module.wasm does not match the signed digest", kid)
    if (rev := revocations.module_revoked(module_sha)) is not None:
        raise _deny("MODULE_REVOKED", f"module digest is revoked: {rev.reason}", kid)
    if not pkg.module.startswith(WASM_HEADER):
        raise _deny("MODULE_MALFORMED", "module.wasm is not a WebAssembly core module", kid)
    if manifest.not_before is not None and now < manifest.not_before:
        raise _deny(
            "MANIFEST_NOT_YET_VALID",
            f"manifest is valid from {manifest.not_before:%Y-%m-%dT%H:%M:%SZ}",
            kid,
        )
    if manifest.expires is not None and now >= manifest.expires:
        raise _deny(
            "MANIFEST_EXPIRED", f"manifest expired at {manifest.expires:%Y-%m-%dT%H:%M:%SZ}", kid
        )
    if pkg.manifest is not None:
        try:
            on_disk = manifest_toml(pkg.manifest)
        except NightCoreError as exc:
            raise _deny("MANIFEST_INVALID", f"manifest.toml: {exc.message}", kid) from None
        if on_disk != manifest:
            raise _deny(
                "MANIFEST_MISMATCH",
                "manifest.toml differs from the signed manifest (re-sign or restore it)",
                kid,
            )
    problems = policy_violations(manifest, policy)
    if problems:
        raise _deny("CAPABILITY_DENIED", problems[0], kid)
    return kid, manifest
