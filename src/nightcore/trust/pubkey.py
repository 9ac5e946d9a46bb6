"""Public keys on the verification path, without importing securesystemslib.

The key *model* is securesystemslib's (``keytype``, ``scheme``, ``keyval``; key id = SHA-256
of its canonical JSON), so registry entries, DSSE key ids and python-tuf metadata agree. But
``import securesystemslib.signer`` costs ~100 ms (it probes every cloud KMS SDK, boto3
included), and ``nightcore verify``/``run`` only need to check Ed25519/ECDSA signatures, which
``cryptography`` does directly. Signing, key generation and AUFS still use securesystemslib;
``to_sslib()`` converts when needed. ``tests/unit/test_trust_core.py`` checks that key ids
and verification results agree with securesystemslib.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nightcore.errors import KeyError_

ED25519 = "ed25519"
MAX_PUBLIC_PEM = 64 * 1024
ECDSA_SCHEMES = {"ecdsa-sha2-nistp256": "SHA256", "ecdsa-sha2-nistp384": "SHA384"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# (key id, signature, sha256(message)) of signatures that verified in this process (bounded).
_VERIFIED: set[tuple[str, bytes, bytes]] = set()
_VERIFIED_MAX = 4096
# RFC 8410: the DER SubjectPublicKeyInfo of an Ed25519 key is this prefix + 32 key bytes.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def ed25519_raw_from_pem(data: bytes) -> bytes | None:
    """The 32 raw bytes of a PEM Ed25519 public key, or None for anything else (the caller
    then uses cryptography's full PEM loader). Spares the cold path its ~8 ms import."""
    import base64
    import binascii

    lines = data.strip().split(b"\n")
    if (
        len(lines) < 3
        or lines[0].strip() != b"-----BEGIN PUBLIC KEY-----"
        or lines[-1].strip() != b"-----END PUBLIC KEY-----"
    ):
        return None
    try:
        der = base64.b64decode(b"".join(x.strip() for x in lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(der) != 44 or not der.startswith(_ED25519_SPKI_PREFIX):
        return None
    return der[len(_ED25519_SPKI_PREFIX) :]


def _olpc_string(s: str) -> str:
    # securesystemslib's canonical JSON (OLPC) escapes only backslash and quote.
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def compute_key_id(keytype: str, scheme: str, public: str) -> str:
    """securesystemslib's default key id for a key whose keyval is ``{"public": ...}``."""
    text = (
        '{"keytype":'
        + _olpc_string(keytype)
        + ',"keyval":{"public":'
        + _olpc_string(public)
        + '},"scheme":'
        + _olpc_string(scheme)
        + "}"
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    keyid: str
    keytype: str
    scheme: str
    keyval: dict[str, str]
    _crypto: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_fields(cls, keytype: str, scheme: str, public: str) -> PublicKey:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        try:
            crypto: Any
            if keytype == ED25519 and scheme == ED25519:
                if not _HEX64.fullmatch(public):
                    raise ValueError("ed25519 public key must be 64 hex characters")
                crypto = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
            elif keytype in ("ecdsa", scheme) and scheme in ECDSA_SCHEMES:
                # ECDSA only: these imports cost ~10 ms of a cold Ed25519-only start.
                from cryptography.hazmat.primitives.asymmetric import ec
                from cryptography.hazmat.primitives.serialization import load_pem_public_key

                crypto = load_pem_public_key(public.encode())
                want = ec.SECP256R1 if scheme.endswith("256") else ec.SECP384R1
                if not isinstance(crypto, ec.EllipticCurvePublicKey) or not isinstance(
                    crypto.curve, want
                ):
                    raise ValueError(f"key does not match scheme {scheme}")
            else:
                raise ValueError(f"unsupported key type/scheme {keytype}/{scheme}")
        except (ValueError, TypeError) as exc:
            raise KeyError_(f"invalid public key: {exc}") from None
        return cls(
            compute_key_id(keytype, scheme, public), keytype, scheme, {"public": public}, crypto
        )

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        if len(data) > MAX_PUBLIC_PEM:
            raise KeyError_("public key file is too large")
        raw = ed25519_raw_from_pem(data)
        if raw is not None:
            return cls.from_fields(ED25519, ED25519, raw.hex())
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519

        try:
            pub = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyError_(f"not a supported PEM public key ({type(exc).__name__})") from None
        if isinstance(pub, ed25519.Ed25519PublicKey):
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return cls.from_fields(ED25519, ED25519, raw.hex())
        if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name in (
            "secp256r1",
            "secp384r1",
        ):
            scheme = (
                "ecdsa-sha2-nistp256" if pub.curve.name == "secp256r1" else ("ecdsa-sha2-nistp384")
            )
            pem = pub.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
            return cls.from_fields("ecdsa", scheme, pem)
        raise KeyError_("unsupported public key type (Ed25519, ECDSA P-256/P-384 only)")

    @classmethod
    def from_dict(cls, key_id: str, data: dict[str, Any]) -> PublicKey:
        if (
            not isinstance(data, dict)
            or set(data) != {"keytype", "scheme", "keyval"}
            or not isinstance(data["keyval"], dict)
            or set(data["keyval"]) != {"public"}
            or not all(
                isinstance(v, str)
                for v in (data["keytype"], data["scheme"], data["keyval"]["public"])
            )
        ):
            raise KeyError_(f"invalid key entry {key_id[:16]}")
        key = cls.from_fields(data["keytype"], data["scheme"], data["keyval"]["public"])
        if key.keyid != key_id:
            raise KeyError_(
                f"key id {key_id[:16]} does not match its key material", code="KEY_ID_MISMATCH"
            )
        return key

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` over ``data`` verifies under this key.

        A verification that succeeded is remembered in this process by (key id, signature,
        SHA-256 of the data): checking the same exact bytes again returns the same answer
        without the ~0.1 ms public-key operation. Failures are never remembered.
        """
        from cryptography.exceptions import InvalidSignature

        memo_key = (self.keyid, bytes(signature), hashlib.sha256(data).digest())
        if memo_key in _VERIFIED:
            return True
        try:
            if self.scheme == ED25519:
                self._crypto.verify(signature, data)
            else:
                from cryptography.hazmat.primitives import hashes
                from cryptography.hazmat.primitives.asymmetric import ec

                algo = (
                    hashes.SHA256() if ECDSA_SCHEMES[self.scheme] == "SHA256" else (hashes.SHA384())
                )
                self._crypto.verify(signature, data, ec.ECDSA(algo))
        except InvalidSignature:
            return False
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED.add(memo_key)
        return True

    def to_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(
            self._crypto.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def to_sslib(self) -> Any:
        """The securesystemslib ``SSlibKey`` (for signing APIs and python-tuf)."""
        from securesystemslib.signer import SSlibKey

        return SSlibKey(self.keyid, self.keytype, self.scheme, dict(self.keyval))


def read_public_pem(path: str | Path, what: str = "public key") -> bytes:
    """The bytes of a public-key PEM file named by a user (``--key``, ``trust add-key``):
    ``KEY_INVALID`` for a directory, FIFO, device or a file above 64 KiB, ``USAGE`` for a
    file that cannot be read (missing, no permission). Never blocks, never reads endlessly."""
    from nightcore.fsio import read_input

    return read_input(
        path, MAX_PUBLIC_PEM, what=what, code="KEY_INVALID", unreadable="USAGE", error=KeyError_
    )
