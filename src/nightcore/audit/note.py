"""C2SP signed notes, tlog checkpoints, verifier keys (vkeys) and tlog-proofs. Pure: no I/O.

Spec revisions followed (C2SP/C2SP repository):

- ``signed-note.md`` (c2sp.org/signed-note, v1.0.0 text as of commit 05528762): a note is UTF-8
  text without ASCII control characters other than newline; text ending in ``\\n``, a blank
  line, then one or more lines ``— <key name> <base64(4-byte key ID || signature)>\\n`` (em dash
  U+2014, space). The text is separated from the signatures by the *last* blank line. Key names
  are non-empty and contain no Unicode space and no ``+``. Ed25519 (signature type ``0x01``) key
  ID = ``SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4]``. A signature whose
  (name, key ID) pair matches no known key is ignored; one that matches must verify; at least one
  must verify.
- ECDSA (signature type ``0x02``, "ECDSA signatures as implemented by
  github.com/transparency-dev/witness", the type the spec assigns; used by a FIPS node, whose key
  is ECDSA P-256): the key ID is ``SHA-256(DER SubjectPublicKeyInfo)[:4]`` (no name, as that
  implementation computes it), the signature is the ASN.1 DER ECDSA signature over
  ``SHA-256(note text)`` (SHA-256 for every curve, as the witness verifier does), the vkey is
  ``<name>+<key ID>+<base64(0x02 || DER SPKI)>``. Curves: NIST P-256 (what this product
  generates), P-384, P-521.
- ``tlog-checkpoint.md`` (c2sp.org/tlog-checkpoint, commit 27938939): the note text is the
  origin line (non-empty), the tree size in ASCII decimal without leading zeros (``0`` for the
  empty tree), the base64 RFC 6962 root hash, then optional non-empty extension lines.
- vkeys as in golang.org/x/mod/sumdb/note: ``<name>+<8 hex digits key ID>+<base64(0x01 || key)>``.
- ``tlog-proof.md`` (c2sp.org/tlog-proof@v1, commit 0065ea5b)::

      c2sp.org/tlog-proof@v1
      extra <base64 opaque data>      (optional; not authenticated)
      index <decimal, no leading zeros>
      <base64 proof hash>             (zero or more lines, leaf's sibling first, 32 bytes each)
      <empty line>
      <the signed checkpoint note, verbatim>

Strictness beyond the specs (all documented refusals): base64 must be canonical standard base64
with padding (re-encoding gives the same text); a note is at most ``MAX_NOTE_SIZE`` (1 MiB) and
has at most ``MAX_SIGNATURES`` (100) signature lines; two signature lines for the same *known*
(name, key ID) are refused (``NOTE_SIGNATURE_DUPLICATE``; Go silently keeps the first); two
verifiers with the same (name, key ID) but different keys make that key ambiguous; sizes and
indexes must fit in 64 bits.

Codes: ``NOTE_TOO_LARGE``, ``NOTE_ENCODING_INVALID``, ``NOTE_MALFORMED``,
``NOTE_KEY_NAME_INVALID``, ``NOTE_SIGNATURE_ENCODING_INVALID``, ``NOTE_TOO_MANY_SIGNATURES``,
``NOTE_SIGNATURE_DUPLICATE``, ``NOTE_SIGNATURE_INVALID``, ``NOTE_SIGNER_INVALID``,
``NOTE_UNKNOWN_KEY`` (no signature from a known key), ``NOTE_VERIFIER_INVALID``,
``NOTE_VERIFIER_AMBIGUOUS``; ``VKEY_INVALID``,
``VKEY_ALGORITHM_UNSUPPORTED``, ``VKEY_KEY_ID_MISMATCH``; ``CHECKPOINT_MALFORMED``,
``CHECKPOINT_SIZE_INVALID``, ``CHECKPOINT_ROOT_INVALID``, ``CHECKPOINT_ORIGIN_MISMATCH``;
``PROOF_FORMAT_INVALID`` (the tlog-proof envelope) and the ``PROOF_*`` codes of
:mod:`nightcore.audit.merkle` when a proof does not verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nightcore.audit import merkle
from nightcore.errors import AuditError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import (
        EllipticCurvePrivateKey,
        EllipticCurvePublicKey,
    )

NotePublicKey: TypeAlias = "Ed25519PublicKey | EllipticCurvePublicKey"
NotePrivateKey: TypeAlias = "Ed25519PrivateKey | EllipticCurvePrivateKey"

__all__ = [
    "MAX_NOTE_SIZE",
    "MAX_PROOF_HASHES",
    "MAX_SIGNATURES",
    "MAX_TLOG_PROOF_SIZE",
    "NOTE_ECDSA_CURVES",
    "SIG_ECDSA",
    "SIG_ED25519",
    "TLOG_PROOF_HEADER",
    "Checkpoint",
    "NoteSigner",
    "OpenedCheckpoint",
    "OpenedNote",
    "TlogProof",
    "Verifier",
    "Verifiers",
    "add_signature",
    "encode_vkey",
    "format_tlog_proof",
    "key_id",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "parse_tlog_proof",
    "parse_vkey",
    "sign_note",
    "verify_tlog_proof",
]

SIG_ED25519: Final = 0x01
SIG_ECDSA: Final = 0x02
NOTE_ECDSA_CURVES: Final = frozenset({"secp256r1", "secp384r1", "secp521r1"})
MAX_NOTE_SIZE: Final = 1 << 20
MAX_SIGNATURES: Final = 100
MAX_PROOF_HASHES: Final = 64  # a tree of at most 2^64 - 1 leaves has proofs of at most 64 hashes
MAX_TLOG_PROOF_SIZE: Final = MAX_NOTE_SIZE + 16 * 1024
TLOG_PROOF_HEADER: Final = "c2sp.org/tlog-proof@v1"

_SIG_PREFIX: Final = "\u2014 "
_ED25519_SIG_SIZE: Final = 64
_ECDSA_MAX_SIG_SIZE: Final = 139  # DER of two P-521 integers
_DECIMAL: Final = re.compile(r"0|[1-9][0-9]{0,19}")
_CONTROL: Final = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX_ID: Final = re.compile(r"[0-9a-f]{8}")


# --------------------------------------------------------------------------------------------
# Small strict helpers


def _b64decode(text: str) -> bytes | None:
    """Canonical standard base64 with padding, or None."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _parse_u64(text: str) -> int | None:
    """ASCII decimal, no sign, no spaces, no leading zeros, at most 2^64 - 1; or None."""
    if _DECIMAL.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value <= merkle.MAX_TREE_SIZE else None


def _valid_name(name: object) -> bool:
    if not isinstance(name, str) or not name or "+" in name:
        return False
    if any(c.isspace() or c < " " for c in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _check_name(name: object) -> str:
    if not _valid_name(name):
        raise AuditError(
            f"key name {name!r} is invalid (empty, or contains a space, '+' or a control char)",
            code="NOTE_KEY_NAME_INVALID",
        )
    assert isinstance(name, str)
    return name


def _raw_public(key: Ed25519PublicKey) -> bytes:
    # public_bytes(Encoding.Raw, PublicFormat.Raw), without importing cryptography's
    # serialization package (and its SSH/RSA/EC modules) on every checkpoint.
    return key.public_bytes_raw()


def _decode_text(data: bytes, code: str, what: str) -> str:
    """UTF-8 without ASCII control characters other than newline."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise AuditError(f"{what} is not valid UTF-8", code=code) from None
    if _CONTROL.search(text):
        raise AuditError(f"{what} contains a control character", code=code)
    return text


# --------------------------------------------------------------------------------------------
# Keys


def _ecdsa_spki(public_key: Any) -> bytes | None:
    """The DER SubjectPublicKeyInfo of an ECDSA key on a note curve; None for any other key."""
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return None
    if public_key.curve.name not in NOTE_ECDSA_CURVES:
        return None
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_material(public_key: object) -> tuple[int, bytes]:
    """(signature type, encoded public key) of a note key; ``NOTE_VERIFIER_INVALID`` otherwise."""
    if isinstance(public_key, Ed25519PublicKey):
        return SIG_ED25519, _raw_public(public_key)
    spki = _ecdsa_spki(public_key)
    if spki is None:
        raise AuditError(
            "a note key is Ed25519 or ECDSA on P-256/P-384/P-521", code="NOTE_VERIFIER_INVALID"
        )
    return SIG_ECDSA, spki


def key_id(name: str, public_key: NotePublicKey) -> bytes:
    """The 4-byte key ID: Ed25519 ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``; ECDSA
    (type 0x02) ``SHA-256(DER SPKI)[:4]``."""
    _check_name(name)
    sig_type, material = _key_material(public_key)
    if sig_type == SIG_ECDSA:
        return hashlib.sha256(material).digest()[:4]
    material = name.encode("utf-8") + b"\n" + bytes([SIG_ED25519]) + material
    return hashlib.sha256(material).digest()[:4]


class Verifier(NamedTuple):
    """A trusted note key: a name and an Ed25519 or ECDSA public key (a ``(name, key)`` pair)."""

    name: str
    public_key: NotePublicKey

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)


Verifiers = Mapping[str, NotePublicKey] | Iterable[tuple[str, NotePublicKey]]
"""A ``{name: public key}`` mapping, or any iterable of ``(name, public key)`` pairs
(``Verifier`` values included). One name may carry several keys (rotation)."""


def encode_vkey(name: str, public_key: NotePublicKey) -> str:
    """``<name>+<hex key ID>+<base64(type || public key)>`` (type 0x01 Ed25519 with the 32-byte
    key, 0x02 ECDSA with the DER SubjectPublicKeyInfo)."""
    kid = key_id(name, public_key)
    sig_type, material = _key_material(public_key)
    return f"{name}+{kid.hex()}+{_b64(bytes([sig_type]) + material)}"


def parse_vkey(vkey: str) -> Verifier:
    """Parse and check a vkey (the key ID must match the name and key)."""
    if not isinstance(vkey, str):
        raise AuditError("a vkey is a string", code="VKEY_INVALID")
    parts = vkey.split("+", 2)  # the base64 key may itself contain '+'
    if len(parts) != 3:
        raise AuditError("a vkey is <name>+<key id>+<key>", code="VKEY_INVALID")
    name, hex_id, b64_key = parts
    if not _valid_name(name):
        raise AuditError("the vkey key name is invalid", code="VKEY_INVALID")
    if _HEX_ID.fullmatch(hex_id) is None:
        raise AuditError("the vkey key ID is not 8 lowercase hex digits", code="VKEY_INVALID")
    raw = _b64decode(b64_key)
    if raw is None or not raw:
        raise AuditError("the vkey key is not canonical base64", code="VKEY_INVALID")
    public_key: NotePublicKey
    if raw[0] == SIG_ECDSA:
        public_key = _parse_ecdsa_vkey(raw[1:])
    elif raw[0] != SIG_ED25519:
        raise AuditError(
            f"vkey signature type {raw[0]:#04x} is not Ed25519 (0x01) or ECDSA (0x02)",
            code="VKEY_ALGORITHM_UNSUPPORTED",
        )
    elif len(raw) != 33:
        raise AuditError("an Ed25519 vkey holds a 32-byte key", code="VKEY_INVALID")
    else:
        try:
            public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
        except ValueError:
            raise AuditError("the vkey key is not an Ed25519 key", code="VKEY_INVALID") from None
    if key_id(name, public_key).hex() != hex_id:
        raise AuditError(
            "the vkey key ID does not match its name and key", code="VKEY_KEY_ID_MISMATCH"
        )
    return Verifier(name, public_key)


def _parse_ecdsa_vkey(der: bytes) -> NotePublicKey:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        key = load_der_public_key(der)
    except (ValueError, TypeError):
        raise AuditError(
            "the vkey key is not a DER SubjectPublicKeyInfo", code="VKEY_INVALID"
        ) from None
    spki = _ecdsa_spki(key)
    if spki is None:
        raise AuditError(
            "an ECDSA (0x02) vkey holds a P-256, P-384 or P-521 key",
            code="VKEY_ALGORITHM_UNSUPPORTED",
        )
    if spki != der:
        raise AuditError("the vkey key is not canonical DER", code="VKEY_INVALID")
    return key  # type: ignore[return-value]  # _ecdsa_spki checked it is an ECDSA key


@dataclass(frozen=True)
class NoteSigner:
    """A note signing key behind any interface (a KMS/HSM signer, a local key): its public key
    and a function that signs bytes the way the key's signature type requires (Ed25519: the
    64-byte signature of the text; ECDSA: the DER signature over SHA-256 of the text)."""

    public_key: NotePublicKey
    sign: Any  # Callable[[bytes], bytes]


def _as_signer(private_key: object) -> NoteSigner:
    if isinstance(private_key, NoteSigner):
        _key_material(private_key.public_key)
        return private_key
    if isinstance(private_key, Ed25519PrivateKey):
        return NoteSigner(private_key.public_key(), private_key.sign)
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        from cryptography.hazmat.primitives import hashes

        key = private_key

        def sign(data: bytes) -> bytes:
            return key.sign(data, ec.ECDSA(hashes.SHA256()))

        return NoteSigner(key.public_key(), sign)
    raise AuditError(
        "a note signing key is an Ed25519 or ECDSA private key, or a NoteSigner",
        code="NOTE_SIGNER_INVALID",
    )


# --------------------------------------------------------------------------------------------
# Signed notes


class _Signature(NamedTuple):
    name: str
    key_id: bytes
    signature: bytes


class OpenedNote(NamedTuple):
    body: bytes
    verified: list[str]  # names of the known keys whose signatures verified, in note order


def _check_body(body: bytes) -> str:
    if not isinstance(body, bytes | bytearray):
        raise AuditError("a note text is bytes", code="NOTE_MALFORMED")
    if len(body) > MAX_NOTE_SIZE:
        raise AuditError("note text too large", code="NOTE_TOO_LARGE")
    text = _decode_text(body, "NOTE_ENCODING_INVALID", "note text")
    if not text.endswith("\n"):
        raise AuditError("a note text must end with a newline", code="NOTE_MALFORMED")
    return text


def _split_note(note: bytes) -> tuple[bytes, list[_Signature]]:
    """Structural parse of a signed note (no verification)."""
    if not isinstance(note, bytes | bytearray):
        raise AuditError("a signed note is bytes", code="NOTE_MALFORMED")
    if len(note) > MAX_NOTE_SIZE:
        raise AuditError(f"signed note larger than {MAX_NOTE_SIZE} bytes", code="NOTE_TOO_LARGE")
    text = _decode_text(note, "NOTE_ENCODING_INVALID", "signed note")
    split = text.rfind("\n\n")
    if split < 0:
        raise AuditError(
            "no blank line separates the note text from its signatures", code="NOTE_MALFORMED"
        )
    body, block = text[: split + 1], text[split + 2 :]
    if not block or not block.endswith("\n"):
        raise AuditError("the signature block is empty or unterminated", code="NOTE_MALFORMED")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise AuditError(f"more than {MAX_SIGNATURES} signatures", code="NOTE_TOO_MANY_SIGNATURES")
    sigs: list[_Signature] = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise AuditError("a signature line must start with '— '", code="NOTE_MALFORMED")
        name, sep, b64 = line[len(_SIG_PREFIX) :].rpartition(" ")  # base64 has no spaces
        if not sep:
            raise AuditError("a signature line is '— <name> <signature>'", code="NOTE_MALFORMED")
        _check_name(name)
        raw = _b64decode(b64)
        if raw is None or len(raw) < 5:
            raise AuditError(
                f"signature of {name!r} is not canonical base64 of a key ID and a signature",
                code="NOTE_SIGNATURE_ENCODING_INVALID",
            )
        sigs.append(_Signature(name, raw[:4], raw[4:]))
    return body.encode("utf-8"), sigs


def _signature_line(body: bytes, key_name: str, signer: NoteSigner) -> bytes:
    _check_name(key_name)
    try:
        kid = key_id(key_name, signer.public_key)
    except AuditError:
        raise AuditError(
            "a note signing key is Ed25519 or ECDSA P-256/P-384/P-521", code="NOTE_SIGNER_INVALID"
        ) from None
    signature = bytes(signer.sign(bytes(body)))
    return f"{_SIG_PREFIX}{key_name} {_b64(kid + signature)}\n".encode()


def sign_note(body: bytes, key_name: str, private_key: NotePrivateKey | NoteSigner) -> bytes:
    """``body || "\\n" || "— <key_name> <base64(key ID || signature(body))>\\n"`` (Ed25519, or
    ECDSA type 0x02 for an ECDSA key or signer)."""
    _check_body(body)
    note = bytes(body) + b"\n" + _signature_line(body, key_name, _as_signer(private_key))
    if len(note) > MAX_NOTE_SIZE:
        raise AuditError("signed note too large", code="NOTE_TOO_LARGE")
    return note


def add_signature(note: bytes, key_name: str, private_key: NotePrivateKey | NoteSigner) -> bytes:
    """Append one more signature (a cosignature) to a structurally valid signed note.

    Existing signatures are not verified here. Refuses a second signature by the same key.
    """
    body, sigs = _split_note(note)
    signer = _as_signer(private_key)
    kid = key_id(key_name, signer.public_key)
    if any(s.name == key_name and s.key_id == kid for s in sigs):
        raise AuditError(
            f"the note is already signed by {key_name}", code="NOTE_SIGNATURE_DUPLICATE"
        )
    if len(sigs) >= MAX_SIGNATURES:
        raise AuditError(f"more than {MAX_SIGNATURES} signatures", code="NOTE_TOO_MANY_SIGNATURES")
    out = bytes(note) + _signature_line(body, key_name, signer)
    if len(out) > MAX_NOTE_SIZE:
        raise AuditError("signed note too large", code="NOTE_TOO_LARGE")
    return out


def _verifier_table(
    verifiers: Verifiers,
) -> tuple[dict[tuple[str, bytes], NotePublicKey], set[tuple[str, bytes]]]:
    items: Iterable[tuple[str, NotePublicKey]]
    items = verifiers.items() if isinstance(verifiers, Mapping) else verifiers
    table: dict[tuple[str, bytes], NotePublicKey] = {}
    ambiguous: set[tuple[str, bytes]] = set()
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise AuditError(
                "a verifier is a (name, public key) pair", code="NOTE_VERIFIER_INVALID"
            )
        name, key = item
        try:
            material = _key_material(key)
        except AuditError:
            raise AuditError(
                f"verifier {name!r} is not an Ed25519 or ECDSA (P-256/P-384/P-521) public key",
                code="NOTE_VERIFIER_INVALID",
            ) from None
        k = (name, key_id(name, key))
        previous = table.get(k)
        if previous is not None and _key_material(previous) != material:
            ambiguous.add(k)
        table[k] = key
    return table, ambiguous


def _verify_one(key: NotePublicKey, sig: _Signature, body: bytes) -> None:
    """Raises InvalidSignature (or NOTE_SIGNATURE_INVALID for a malformed one)."""
    if isinstance(key, Ed25519PublicKey):
        if len(sig.signature) != _ED25519_SIG_SIZE:
            raise AuditError(
                f"signature of {sig.name} has the wrong length", code="NOTE_SIGNATURE_INVALID"
            )
        key.verify(sig.signature, body)
        return
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if len(sig.signature) > _ECDSA_MAX_SIG_SIZE:
        raise AuditError(
            f"signature of {sig.name} has the wrong length", code="NOTE_SIGNATURE_INVALID"
        )
    try:
        key.verify(sig.signature, body, ec.ECDSA(hashes.SHA256()))
    except ValueError:  # not DER
        raise InvalidSignature from None


def open_note(note: bytes, verifiers: Verifiers) -> OpenedNote:
    """Parse a signed note strictly and verify it; returns the text and the verified names.

    Signatures whose (name, key ID) matches no verifier are ignored (as the spec requires); a
    signature from a known key must verify, a known key may sign only once, and at least one
    known key must have signed.
    """
    body, sigs = _split_note(note)
    table, ambiguous = _verifier_table(verifiers)
    seen: set[tuple[str, bytes]] = set()
    verified: list[str] = []
    for sig in sigs:
        k = (sig.name, sig.key_id)
        key = table.get(k)
        if key is None:
            continue
        if k in ambiguous:
            raise AuditError(
                f"several verifiers share key {sig.name}+{sig.key_id.hex()}",
                code="NOTE_VERIFIER_AMBIGUOUS",
            )
        if k in seen:
            raise AuditError(
                f"key {sig.name}+{sig.key_id.hex()} signed the note twice",
                code="NOTE_SIGNATURE_DUPLICATE",
            )
        seen.add(k)
        try:
            _verify_one(key, sig, body)
        except InvalidSignature:
            raise AuditError(
                f"signature of {sig.name}+{sig.key_id.hex()} does not verify",
                code="NOTE_SIGNATURE_INVALID",
            ) from None
        if sig.name not in verified:
            verified.append(sig.name)
    if not verified:
        raise AuditError("the note carries no signature from a known key", code="NOTE_UNKNOWN_KEY")
    return OpenedNote(body, verified)


# --------------------------------------------------------------------------------------------
# Checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """The text of a tlog checkpoint (c2sp.org/tlog-checkpoint)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        origin = self.origin
        if not isinstance(origin, str) or not origin or "\n" in origin or _CONTROL.search(origin):
            raise AuditError(
                "checkpoint origin must be one non-empty line", code="CHECKPOINT_MALFORMED"
            )
        size = self.size
        if (
            isinstance(size, bool)
            or not isinstance(size, int)
            or not 0 <= size <= merkle.MAX_TREE_SIZE
        ):
            raise AuditError(
                "checkpoint size must be in [0, 2^64-1]", code="CHECKPOINT_SIZE_INVALID"
            )
        if not isinstance(self.root, bytes) or len(self.root) != merkle.HASH_SIZE:
            raise AuditError("checkpoint root must be 32 bytes", code="CHECKPOINT_ROOT_INVALID")
        extensions = tuple(self.extensions)
        for line in extensions:
            if not isinstance(line, str) or not line or "\n" in line or _CONTROL.search(line):
                raise AuditError(
                    "checkpoint extension lines must be non-empty single lines",
                    code="CHECKPOINT_MALFORMED",
                )
        object.__setattr__(self, "extensions", extensions)
        try:
            self.body()
        except UnicodeEncodeError:
            raise AuditError(
                "checkpoint text is not valid UTF-8", code="CHECKPOINT_MALFORMED"
            ) from None

    def body(self) -> bytes:
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines).encode("utf-8")


class OpenedCheckpoint(NamedTuple):
    checkpoint: Checkpoint
    verified: list[str]


def parse_checkpoint(body: bytes) -> Checkpoint:
    """Strictly parse a checkpoint note text (the body of the signed note)."""
    if not isinstance(body, bytes | bytearray) or len(body) > MAX_NOTE_SIZE:
        raise AuditError(
            "checkpoint text is not bytes of at most 1 MiB", code="CHECKPOINT_MALFORMED"
        )
    text = _decode_text(body, "CHECKPOINT_MALFORMED", "checkpoint text")
    if not text.endswith("\n"):
        raise AuditError("checkpoint text must end with a newline", code="CHECKPOINT_MALFORMED")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise AuditError(
            "checkpoint text is at least three non-empty lines", code="CHECKPOINT_MALFORMED"
        )
    origin, size_text, root_text, *extensions = lines
    size = _parse_u64(size_text)
    if size is None:
        raise AuditError(
            "checkpoint tree size is not a canonical decimal in [0, 2^64-1]",
            code="CHECKPOINT_SIZE_INVALID",
        )
    root = _b64decode(root_text)
    if root is None or len(root) != merkle.HASH_SIZE:
        raise AuditError(
            "checkpoint root is not canonical base64 of 32 bytes", code="CHECKPOINT_ROOT_INVALID"
        )
    return Checkpoint(origin, size, root, tuple(extensions))


def open_checkpoint(
    note: bytes, verifiers: Verifiers, *, origin: str | None = None
) -> OpenedCheckpoint:
    """Verify a signed checkpoint and parse it; with ``origin``, require that origin.

    The caller decides which of the returned verified names it needs (the log's key, a quorum
    of witnesses).
    """
    opened = open_note(note, verifiers)
    checkpoint = parse_checkpoint(opened.body)
    if origin is not None and checkpoint.origin != origin:
        raise AuditError(
            f"checkpoint origin {checkpoint.origin!r} is not {origin!r}",
            code="CHECKPOINT_ORIGIN_MISMATCH",
        )
    return OpenedCheckpoint(checkpoint, opened.verified)


# --------------------------------------------------------------------------------------------
# tlog-proof


@dataclass(frozen=True)
class TlogProof:
    index: int
    proof: tuple[bytes, ...]
    checkpoint: bytes  # the signed checkpoint note, verbatim (not yet verified)
    extra: bytes | None = None  # opaque, NOT authenticated


def _proof_error(message: str) -> AuditError:
    return AuditError(message, code="PROOF_FORMAT_INVALID")


def format_tlog_proof(
    index: int,
    proof_hashes: Sequence[bytes],
    signed_checkpoint: bytes,
    *,
    extra: bytes | None = None,
) -> bytes:
    """Encode a c2sp.org/tlog-proof@v1 proof."""
    if (
        isinstance(index, bool)
        or not isinstance(index, int)
        or not 0 <= index < merkle.MAX_TREE_SIZE
    ):
        raise _proof_error("proof index must be in [0, 2^64-2]")
    if len(proof_hashes) > MAX_PROOF_HASHES:
        raise _proof_error(f"more than {MAX_PROOF_HASHES} proof hashes")
    for h in proof_hashes:
        if not isinstance(h, bytes) or len(h) != merkle.HASH_SIZE:
            raise _proof_error("proof hashes are 32 bytes")
    _split_note(signed_checkpoint)
    lines = [TLOG_PROOF_HEADER]
    if extra is not None:
        if not isinstance(extra, bytes) or not extra:
            raise _proof_error("extra data, when present, is non-empty bytes")
        lines.append("extra " + _b64(extra))
    lines.append(f"index {index}")
    lines.extend(_b64(h) for h in proof_hashes)
    out = ("\n".join(lines) + "\n\n").encode("ascii") + bytes(signed_checkpoint)
    if len(out) > MAX_TLOG_PROOF_SIZE:
        raise _proof_error("tlog-proof too large")
    return out


def parse_tlog_proof(data: bytes) -> TlogProof:
    """Strictly parse a c2sp.org/tlog-proof@v1 proof (the checkpoint is checked structurally,
    with the ``NOTE_*`` codes, but not verified: use :func:`verify_tlog_proof`)."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_TLOG_PROOF_SIZE:
        raise _proof_error("tlog-proof is not bytes of a bounded size")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise _proof_error("tlog-proof is not valid UTF-8") from None
    split = text.find("\n\n")
    if split < 0:
        raise _proof_error("tlog-proof has no empty line before the checkpoint")
    header, checkpoint_text = text[:split].split("\n"), text[split + 2 :]
    if header[0] != TLOG_PROOF_HEADER:
        raise _proof_error(f"tlog-proof must start with {TLOG_PROOF_HEADER!r}")
    pos = 1
    extra: bytes | None = None
    if pos < len(header) and header[pos].startswith("extra "):
        extra = _b64decode(header[pos][len("extra ") :])
        if not extra:
            raise _proof_error("tlog-proof extra data is not canonical non-empty base64")
        pos += 1
    if pos >= len(header) or not header[pos].startswith("index "):
        raise _proof_error("tlog-proof has no 'index <n>' line")
    index = _parse_u64(header[pos][len("index ") :])
    if index is None or index >= merkle.MAX_TREE_SIZE:
        raise _proof_error("tlog-proof index is not a canonical decimal in [0, 2^64-2]")
    hash_lines = header[pos + 1 :]
    if len(hash_lines) > MAX_PROOF_HASHES:
        raise _proof_error(f"more than {MAX_PROOF_HASHES} proof hashes")
    proof: list[bytes] = []
    for line in hash_lines:
        h = _b64decode(line)
        if h is None or len(h) != merkle.HASH_SIZE:
            raise _proof_error("a tlog-proof hash line is not canonical base64 of 32 bytes")
        proof.append(h)
    checkpoint = checkpoint_text.encode("utf-8")
    _split_note(checkpoint)
    return TlogProof(index, tuple(proof), checkpoint, extra)


def verify_tlog_proof(
    data: bytes, leaf_hash: bytes, verifiers: Verifiers, *, origin: str
) -> OpenedCheckpoint:
    """Parse a tlog-proof, verify its checkpoint (signatures, origin) and the inclusion of
    ``leaf_hash`` at the proof's index in the checkpointed tree."""
    parsed = parse_tlog_proof(data)
    opened = open_checkpoint(parsed.checkpoint, verifiers, origin=origin)
    cp = opened.checkpoint
    merkle.verify_inclusion(leaf_hash, parsed.index, cp.size, parsed.proof, cp.root)
    return opened
