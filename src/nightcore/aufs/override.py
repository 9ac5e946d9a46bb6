"""Downgrade overrides: a DSSE document, signed by distinct maintainer keys, that lets one
node-side downgrade through.

A node refuses a tenant version lower than the one installed (``DOWNGRADE_REFUSED``), even
when the targets role signed it: a threshold of targets keys says "this is in the channel",
the override says "we mean to go back to exactly this package". It names the tenant, the
version, the SHA-256 of the package tarball and an expiry, and it counts only if signatures by
at least ``OVERRIDE_THRESHOLD`` *distinct* key ids of the trusted targets role verify (a key
signing twice counts once; a key rotated out of the targets role counts zero).

It travels in the channel itself as the target ``overrides/<tenant>/<version>.json``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nightcore.aufs.errors import AufsError
from nightcore.canonical import canonical, parse_json

if TYPE_CHECKING:
    from securesystemslib.signer import Key, Signer

    from nightcore.trust.envelope import RawSignature

PAYLOAD_TYPE = "application/vnd.nightcore.aufs-override+json"
DOC_TYPE = "nightcore-aufs-downgrade-override"
OVERRIDE_THRESHOLD = 2
MAX_OVERRIDE_BYTES = 64 * 1024
MAX_REASON = 512


def _fmt(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_payload(
    tenant: str, version: str, sha256: str, *, reason: str, expires: dt.datetime
) -> bytes:
    return canonical(
        {
            "type": DOC_TYPE,
            "tenant": tenant,
            "version": version,
            "sha256": sha256,
            "reason": reason[:MAX_REASON],
            "expires": _fmt(expires),
        }
    )


def sign_override(existing: bytes | None, payload: bytes, signer: Signer) -> bytes:
    """Add ``signer``'s signature to an override envelope (creating it if needed)."""
    from securesystemslib.dsse import Envelope

    if existing is None:
        env = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    else:
        try:
            env = Envelope.from_dict(json.loads(existing))
        except (ValueError, KeyError, TypeError) as exc:
            raise AufsError(
                f"existing override does not parse: {exc}", code="AUFS_OVERRIDE_INVALID"
            ) from None
        if env.payload != payload:
            raise AufsError(
                "an override with a different content is already staged for this version",
                code="AUFS_OVERRIDE_INVALID",
            )
    env.sign(signer)
    return canonical(env.to_dict())


@dataclass(frozen=True)
class OverrideInfo:
    tenant: str
    version: str
    sha256: str
    reason: str
    expires: str
    signers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "version": self.version,
            "sha256": self.sha256,
            "reason": self.reason,
            "expires": self.expires,
            "signers": list(self.signers),
        }


def payload_of(data: bytes) -> dict[str, Any]:
    """Decode an override's payload *without* verifying it (for tooling output only)."""
    from nightcore.trust.envelope import parse_envelope

    try:
        env = parse_envelope(data, payload_type=PAYLOAD_TYPE)
        doc = parse_json(env.payload, max_bytes=MAX_OVERRIDE_BYTES, what="override payload")
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same refusal
        raise AufsError(f"override does not parse: {exc}", code="AUFS_OVERRIDE_INVALID") from None
    if not isinstance(doc, dict):
        raise AufsError("override payload is not an object", code="AUFS_OVERRIDE_INVALID")
    return doc


def verify_override(
    data: bytes,
    keys: dict[str, Key],
    *,
    tenant: str,
    version: str,
    sha256: str,
    now: dt.datetime,
    threshold: int = OVERRIDE_THRESHOLD,
) -> OverrideInfo:
    """Verify an override against ``keys`` (the trusted targets role's keys)."""
    from nightcore.errors import NightCoreError
    from nightcore.trust.envelope import parse_envelope

    if len(data) > MAX_OVERRIDE_BYTES:
        raise AufsError("override is too large", code="AUFS_OVERRIDE_INVALID")
    try:
        env = parse_envelope(data, payload_type=PAYLOAD_TYPE)
    except NightCoreError as exc:
        raise AufsError(f"override: {exc.message}", code="AUFS_OVERRIDE_INVALID") from None
    # Distinct key ids whose signature verifies: a key listed twice counts once.
    signers = _verified_key_ids(env.pae(), env.signatures, keys)
    if len(signers) < threshold:
        raise AufsError(
            f"override is signed by {len(signers)} of the {threshold} distinct maintainer keys "
            "it needs",
            code="AUFS_OVERRIDE_INVALID",
        )
    try:
        doc = parse_json(env.payload, max_bytes=MAX_OVERRIDE_BYTES, what="override payload")
    except NightCoreError as exc:
        raise AufsError(exc.message, code="AUFS_OVERRIDE_INVALID") from None
    fields = {"type", "tenant", "version", "sha256", "reason", "expires"}
    if (
        not isinstance(doc, dict)
        or set(doc) != fields
        or doc["type"] != DOC_TYPE
        or not all(isinstance(doc[k], str) for k in fields)
    ):
        raise AufsError(
            "override payload has missing or unknown fields", code="AUFS_OVERRIDE_INVALID"
        )
    if (doc["tenant"], doc["version"], doc["sha256"]) != (tenant, version, sha256):
        raise AufsError(
            "override is for another tenant, version or package digest",
            code="AUFS_OVERRIDE_INVALID",
        )
    try:
        expires = dt.datetime.fromisoformat(doc["expires"].replace("Z", "+00:00"))
    except ValueError:
        raise AufsError(
            "override expiry is not a date-time", code="AUFS_OVERRIDE_INVALID"
        ) from None
    if expires.tzinfo is None or now >= expires:
        raise AufsError(f"override expired at {doc['expires']}", code="AUFS_OVERRIDE_INVALID")
    return OverrideInfo(
        tenant, version, sha256, doc["reason"], doc["expires"], tuple(sorted(signers))
    )


def _verified_key_ids(
    pae: bytes, signatures: tuple[RawSignature, ...], keys: dict[str, Key]
) -> set[str]:
    """Distinct key ids whose signature verifies over ``pae``: each key counts once, however
    many entries name it."""
    from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
    from securesystemslib.signer import Signature

    out: set[str] = set()
    for kid, key in keys.items():
        for raw in signatures:
            if raw.keyid != kid:
                continue
            try:
                key.verify_signature(Signature(kid, raw.sig.hex()), pae)
            except (UnverifiedSignatureError, VerificationError):
                continue
            out.add(kid)
            break
    return out
