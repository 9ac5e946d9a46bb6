"""DSSE envelopes around in-toto Statement v1 payloads.

Signing uses securesystemslib's ``dsse.Envelope`` (PAE as the DSSE spec defines it).
Parsing is our own strict front door: the envelope JSON is size-capped, must have exactly
the DSSE fields with the right types and strict base64, and at most a few signatures, before
securesystemslib sees it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nightcore.canonical import canonical, parse_json
from nightcore.errors import NightCoreError, TrustError

if TYPE_CHECKING:
    from securesystemslib.signer import Signer

    from nightcore.trust.pubkey import PublicKey

PAYLOAD_TYPE_INTOTO = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
MAX_ENVELOPE_BYTES = 1024 * 1024
MAX_SIGNATURES = 16


@dataclass(frozen=True)
class RawSignature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class ParsedEnvelope:
    payload_type: str
    payload: bytes
    signatures: tuple[RawSignature, ...]

    def pae(self) -> bytes:
        t = self.payload_type.encode()
        return b"DSSEv1 %d %b %d %b" % (len(t), t, len(self.payload), self.payload)


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise TrustError(f"{what} is not a string", code="ENVELOPE_MALFORMED")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TrustError(f"{what} is not valid base64", code="ENVELOPE_MALFORMED") from None


def parse_envelope(data: bytes, *, payload_type: str = PAYLOAD_TYPE_INTOTO) -> ParsedEnvelope:
    try:
        doc = parse_json(
            data, max_bytes=MAX_ENVELOPE_BYTES, what="envelope", code="ENVELOPE_MALFORMED"
        )
    except NightCoreError as exc:
        raise TrustError(exc.message, code="ENVELOPE_MALFORMED") from None
    if not isinstance(doc, dict) or set(doc) != {"payload", "payloadType", "signatures"}:
        raise TrustError(
            "envelope must have exactly payload, payloadType, signatures", code="ENVELOPE_MALFORMED"
        )
    if doc["payloadType"] != payload_type:
        raise TrustError(
            f"envelope payloadType is {str(doc['payloadType'])[:80]!r}, expected {payload_type}",
            code="ENVELOPE_MALFORMED",
        )
    payload = _b64(doc["payload"], "payload")
    sigs = doc["signatures"]
    if not isinstance(sigs, list) or not 1 <= len(sigs) <= MAX_SIGNATURES:
        raise TrustError(
            f"envelope needs 1..{MAX_SIGNATURES} signatures", code="ENVELOPE_MALFORMED"
        )
    out: list[RawSignature] = []
    for s in sigs:
        if not isinstance(s, dict) or not set(s) <= {"keyid", "sig"} or "sig" not in s:
            raise TrustError("signature entry must be {keyid, sig}", code="ENVELOPE_MALFORMED")
        keyid = s.get("keyid", "")
        if not isinstance(keyid, str) or len(keyid) > 128:
            raise TrustError("signature keyid is not a short string", code="ENVELOPE_MALFORMED")
        out.append(RawSignature(keyid, _b64(s["sig"], "signature")))
    return ParsedEnvelope(payload_type, payload, tuple(out))


def sign_payload(
    payload: bytes, signers: list[Signer], payload_type: str = PAYLOAD_TYPE_INTOTO
) -> bytes:
    """Return envelope JSON bytes (canonical) signed by every signer."""
    from securesystemslib.dsse import Envelope

    env = Envelope(payload=payload, payload_type=payload_type, signatures={})
    for signer in signers:
        env.sign(signer)
    return canonical(env.to_dict())


def sign_payload_with(
    payload: bytes, signer: Any, payload_type: str = PAYLOAD_TYPE_INTOTO
) -> bytes:
    """DSSE envelope JSON (canonical) from a ``keys.FileSigner`` (``sign(bytes)``, ``key_id``).

    Byte-compatible with ``sign_payload``: the same PAE, the same ``{keyid, sig}`` entries.
    """
    env = ParsedEnvelope(payload_type, payload, ())
    sig = signer.sign(env.pae())
    return canonical(
        {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": payload_type,
            "signatures": [{"keyid": signer.key_id, "sig": base64.b64encode(sig).decode()}],
        }
    )


def verify_signature(env: ParsedEnvelope, key: PublicKey) -> bool:
    """True when some signature in ``env`` by ``key.keyid`` verifies under ``key``."""
    pae = env.pae()
    return any(raw.keyid == key.keyid and key.verify(raw.sig, pae) for raw in env.signatures)


def verified_key_ids(env: ParsedEnvelope, keys: list[PublicKey]) -> set[str]:
    """Distinct key ids whose signature verifies: thresholds count these, never entries."""
    return {k.keyid for k in keys if verify_signature(env, k)}


def make_statement(
    subjects: list[tuple[str, str]], predicate_type: str, predicate: dict[str, Any]
) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": d}} for n, d in subjects],
        "predicateType": predicate_type,
        "predicate": predicate,
    }
