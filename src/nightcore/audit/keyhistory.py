"""The node-key history: which node key may sign which checkpoints of one audit log.

One audit log spans key generations (``nightcore node-key rotate``). The history is the file
``state/audit/node-keys.json`` (canonical JSON, docs/keys.md)::

    {"format": "nightcore/node-key-history@v1",
     "origin": "nightcore/<first 16 hex of the FIRST node key id>",   # never changes
     "keys": [
       {"key_id", "public_pem", "from_size": 0, "to_size": R1,        # checkpoints 0..R1
        "transition": null, "revoked": null},
       {"key_id", "public_pem", "from_size": R1, "to_size": null,     # checkpoints >= R1
        "transition": {"statement": {...}, "old_signature": hex, "new_signature": hex},
        "revoked": null}],
     "signature": {"key_id": <the last key>, "sig": hex}}

Rules (:meth:`KeyHistory.parse`):

1. Ranges are contiguous: the first key starts at 0, each key starts where the previous one
   ends, the last one is open (``to_size`` null). A checkpoint of size ``n`` signed by key ``k``
   is accepted only if ``k.from_size <= n <= k.to_size`` (``CHECKPOINT_KEY_OUT_OF_RANGE``): an
   old key cannot sign past its rotation, a new key cannot sign the history before it.
2. Every key after the first carries a transition statement ``{type, origin, old_key_id,
   new_key_id, new_public_pem, log_size}`` signed by BOTH the old key (it names its successor)
   and the new key (it names its predecessor), each over ``TRANSITION_CONTEXT || canonical
   JSON``. So pinning any one key of the chain authenticates every key of it.
3. The whole document is signed by its last key (over ``HISTORY_CONTEXT || canonical JSON``
   without ``signature``): ranges and revocations are authenticated by the newest key.
4. A revoked key (``revoked: {"last_trusted_size", "at"}``) signs nothing above its last
   trusted size (``NODE_KEY_REVOKED``); the active key cannot be revoked (rotate first).
5. The verifier pins one key (``node.pub.pem``): it must be in the chain (``NODE_KEY_UNKNOWN``).

Without a history file the history is the single key of ``node.pub.pem`` over ``[0, ∞)``.
Codes: ``NODE_KEY_HISTORY_INVALID``, ``NODE_KEY_UNKNOWN``, ``NODE_KEY_REVOKED``,
``CHECKPOINT_KEY_OUT_OF_RANGE``, ``CHECKPOINT_FORGED``, ``CHECKPOINT_UNSUPPORTED_KEY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nightcore.audit.checkpoint import (
    MAX_PUBLIC_KEY_FILE,
    SignedCheckpoint,
    checkpoint_origin,
    load_node_public_key,
    open_node_checkpoint,
)
from nightcore.canonical import canonical, parse_json
from nightcore.errors import AuditError
from nightcore.fsio import open_regular

__all__ = [
    "HISTORY_FILE",
    "HISTORY_FORMAT",
    "TRANSITION_TYPE",
    "HistoryKey",
    "KeyHistory",
    "load_history",
    "sign_document",
    "transition_statement",
]

HISTORY_FILE: Final = "node-keys.json"
HISTORY_FORMAT: Final = "nightcore/node-key-history@v1"
TRANSITION_TYPE: Final = "nightcore/node-key-transition@v1"
HISTORY_CONTEXT: Final = b"nightcore/node-key-history@v1\n"
TRANSITION_CONTEXT: Final = b"nightcore/node-key-transition@v1\n"
MAX_HISTORY_BYTES: Final = 1 << 20
MAX_KEYS: Final = 1000


def _bad(message: str) -> AuditError:
    return AuditError(f"node-key history: {message}", code="NODE_KEY_HISTORY_INVALID")


def _size(value: object, what: str, *, null: bool = False) -> int | None:
    if value is None and null:
        return None
    if type(value) is not int or value < 0:
        raise _bad(f"{what} is not a non-negative integer")
    return value


@dataclass(frozen=True)
class HistoryKey:
    """One node key of the history and the checkpoint sizes it may sign."""

    key_id: str
    public_pem: bytes
    crypto: Any  # the cryptography public key (Ed25519 or ECDSA P-256)
    from_size: int
    to_size: int | None  # None: the active key
    transition: dict[str, Any] | None = None
    revoked: dict[str, Any] | None = None

    @property
    def last_trusted_size(self) -> int | None:
        return None if self.revoked is None else int(self.revoked["last_trusted_size"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "public_pem": self.public_pem.decode("ascii"),
            "from_size": self.from_size,
            "to_size": self.to_size,
            "transition": self.transition,
            "revoked": self.revoked,
        }

    def covers(self, size: int) -> bool:
        return self.from_size <= size and (self.to_size is None or size <= self.to_size)


def transition_statement(
    origin: str, old_key_id: str, new_key_id: str, new_public_pem: bytes, log_size: int
) -> dict[str, Any]:
    return {
        "type": TRANSITION_TYPE,
        "origin": origin,
        "old_key_id": old_key_id,
        "new_key_id": new_key_id,
        "new_public_pem": new_public_pem.decode("ascii"),
        "log_size": log_size,
    }


def _verify(public_pem: bytes, signature_hex: object, data: bytes) -> bool:
    from nightcore.trust.pubkey import PublicKey

    if not isinstance(signature_hex, str):
        return False
    try:
        sig = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    return PublicKey.from_pem(public_pem).verify(sig, data)


def _unsigned(doc: dict[str, Any]) -> bytes:
    return HISTORY_CONTEXT + canonical({k: v for k, v in doc.items() if k != "signature"})


def sign_document(doc: dict[str, Any], key_id: str, sign: Any) -> dict[str, Any]:
    """``doc`` with ``signature`` by the given signer (``sign(bytes) -> bytes``)."""
    out = {k: v for k, v in doc.items() if k != "signature"}
    out["signature"] = {"key_id": key_id, "sig": bytes(sign(_unsigned(out))).hex()}
    return out


class KeyHistory:
    """The verified key history of one log (see the module docstring)."""

    def __init__(
        self, origin: str, keys: tuple[HistoryKey, ...], document: dict[str, Any] | None
    ) -> None:
        self.origin = origin
        self.keys = keys
        self.document = document  # None: the implicit single-key history

    # -- building --------------------------------------------------------------------------
    @classmethod
    def single(cls, public_pem: bytes) -> KeyHistory:
        key, origin = load_node_public_key(public_pem)
        from nightcore.trust.pubkey import PublicKey

        kid = PublicKey.from_pem(public_pem).keyid
        return cls(origin, (HistoryKey(kid, bytes(public_pem), key, 0, None),), None)

    @classmethod
    def parse(cls, data: bytes, pinned_pem: bytes) -> KeyHistory:
        """Parse and verify a history file against one pinned key (rules 1-5)."""
        from nightcore.trust.pubkey import PublicKey

        if len(pinned_pem) > MAX_PUBLIC_KEY_FILE:
            raise AuditError("public key file is too large", code="KEY_INVALID")
        pinned = PublicKey.from_pem(pinned_pem).keyid
        doc = parse_json(
            data, max_bytes=MAX_HISTORY_BYTES, what=HISTORY_FILE, code="NODE_KEY_HISTORY_INVALID"
        )
        if not isinstance(doc, dict) or set(doc) != {"format", "origin", "keys", "signature"}:
            raise _bad("not a history document")
        if doc["format"] != HISTORY_FORMAT:
            raise _bad(f"format is not {HISTORY_FORMAT}")
        origin, entries = doc["origin"], doc["keys"]
        if not isinstance(origin, str) or not isinstance(entries, list):
            raise _bad("origin or keys malformed")
        if not 1 <= len(entries) <= MAX_KEYS:
            raise _bad(f"1 to {MAX_KEYS} keys")
        keys: list[HistoryKey] = []
        for i, e in enumerate(entries):
            keys.append(_parse_entry(e, i, origin, keys[-1] if keys else None, len(entries)))
        if origin != checkpoint_origin(keys[0].key_id):
            raise _bad("origin is not that of the first key")
        sig = doc["signature"]
        if (
            not isinstance(sig, dict)
            or set(sig) != {"key_id", "sig"}
            or sig["key_id"] != keys[-1].key_id
            or not _verify(keys[-1].public_pem, sig["sig"], _unsigned(doc))
        ):
            raise AuditError(
                "node-key history is not signed by its newest key",
                code="NODE_KEY_HISTORY_INVALID",
            )
        if pinned not in {k.key_id for k in keys}:
            raise AuditError(
                f"the pinned node key {pinned[:16]} is not in the node-key history",
                code="NODE_KEY_UNKNOWN",
            )
        return cls(origin, tuple(keys), doc)

    # -- queries ---------------------------------------------------------------------------
    @property
    def current(self) -> HistoryKey:
        return self.keys[-1]

    def key(self, key_id: str) -> HistoryKey:
        for k in self.keys:
            if k.key_id == key_id or (len(key_id) >= 8 and k.key_id.startswith(key_id)):
                return k
        raise AuditError(f"no node key {key_id} in the history", code="NODE_KEY_UNKNOWN")

    def open_checkpoint(self, data: bytes, *, what: str = "checkpoint") -> SignedCheckpoint:
        """Verify a signed checkpoint against the key whose range covers it.

        Each history key that validly signed the note is checked against its range and its
        revocation; the checkpoint is accepted if one of them may sign it.
        """
        refusal: AuditError | None = None
        forged: AuditError | None = None
        for k in self.keys:
            try:
                cp = open_node_checkpoint(data, k.crypto, self.origin, what=what)
            except AuditError as exc:
                if exc.code != "CHECKPOINT_FORGED":
                    raise
                if "NOTE_UNKNOWN_KEY" not in exc.message:
                    forged = forged or exc
                continue
            problem = self._range_problem(k, cp.size, what)
            if problem is None:
                return cp
            refusal = refusal or problem
        if refusal is not None:
            raise refusal
        if forged is not None:
            raise forged
        raise AuditError(
            f"{what} is not signed by any node key of the history", code="CHECKPOINT_FORGED"
        )

    def _range_problem(self, k: HistoryKey, size: int, what: str) -> AuditError | None:
        trusted = k.last_trusted_size
        if trusted is not None and size > trusted:
            return AuditError(
                f"{what} (size {size}) is signed by node key {k.key_id[:16]}, revoked after "
                f"size {trusted}",
                code="NODE_KEY_REVOKED",
            )
        if not k.covers(size):
            end = "" if k.to_size is None else str(k.to_size)
            return AuditError(
                f"{what} (size {size}) is signed by node key {k.key_id[:16]}, which signs only "
                f"sizes {k.from_size}..{end}",
                code="CHECKPOINT_KEY_OUT_OF_RANGE",
            )
        return None

    def signer_allowed(self, key_id: str, audit_seq: int | None) -> bool:
        """Whether ``key_id`` may have signed a statement about audit line ``audit_seq`` (run
        attestations): a key of the history, not revoked before that line."""
        for k in self.keys:
            if k.key_id == key_id:
                trusted = k.last_trusted_size
                return trusted is None or (audit_seq is not None and audit_seq < trusted)
        return False

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "keys": [
                {
                    "key_id": k.key_id,
                    "from_size": k.from_size,
                    "to_size": k.to_size,
                    "active": k.to_size is None,
                    "revoked": k.revoked,
                }
                for k in self.keys
            ],
        }

    def to_bytes(self) -> bytes:
        if self.document is None:
            raise AuditError("a single-key history has no file", code="INTERNAL")
        return canonical(self.document) + b"\n"


def _parse_entry(e: object, i: int, origin: str, prev: HistoryKey | None, count: int) -> HistoryKey:
    if not isinstance(e, dict) or set(e) != {
        "key_id",
        "public_pem",
        "from_size",
        "to_size",
        "transition",
        "revoked",
    }:
        raise _bad(f"key {i} is malformed")
    pem = e["public_pem"]
    if not isinstance(pem, str) or not pem.isascii() or len(pem) > MAX_PUBLIC_KEY_FILE:
        raise _bad(f"key {i} public_pem is malformed")
    from nightcore.trust.pubkey import PublicKey

    pem_bytes = pem.encode("ascii")
    key_id = PublicKey.from_pem(pem_bytes).keyid
    if e["key_id"] != key_id:
        raise _bad(f"key {i} key_id does not match its public key")
    crypto, _origin = load_node_public_key(pem_bytes)
    start = _size(e["from_size"], f"key {i} from_size")
    end = _size(e["to_size"], f"key {i} to_size", null=True)
    assert start is not None
    last = i == count - 1
    if (end is None) != last:
        raise _bad("only the last key is open-ended")
    if end is not None and end < start:
        raise _bad(f"key {i} ends before it starts")
    revoked = e["revoked"]
    if revoked is not None:
        if last:
            raise _bad("the active key cannot be revoked")
        if not isinstance(revoked, dict) or set(revoked) != {"last_trusted_size", "at"}:
            raise _bad(f"key {i} revocation is malformed")
        _size(revoked["last_trusted_size"], f"key {i} last_trusted_size")
    transition = e["transition"]
    if prev is None:
        if start != 0 or transition is not None:
            raise _bad("the first key starts at 0 with no transition")
    else:
        if start != prev.to_size:
            raise _bad(f"key {i} does not start where key {i - 1} ends")
        _check_transition(transition, i, origin, prev, key_id, pem_bytes, start)
    return HistoryKey(key_id, pem_bytes, crypto, start, end, transition, revoked)


def _check_transition(
    t: object, i: int, origin: str, prev: HistoryKey, key_id: str, pem: bytes, start: int
) -> None:
    if not isinstance(t, dict) or set(t) != {"statement", "old_signature", "new_signature"}:
        raise _bad(f"key {i} has no transition statement")
    stmt = t["statement"]
    if not isinstance(stmt, dict):
        raise _bad(f"key {i} transition statement is malformed")
    log_size = stmt.get("log_size")
    if type(log_size) is not int or not 0 <= log_size < start:
        raise _bad(f"key {i} transition log_size is not below its first checkpoint")
    if stmt != transition_statement(origin, prev.key_id, key_id, pem, log_size):
        raise _bad(f"key {i} transition statement does not name keys {i - 1} and {i}")
    data = TRANSITION_CONTEXT + canonical(stmt)
    if not _verify(prev.public_pem, t["old_signature"], data):
        raise _bad(f"key {i} transition is not signed by the previous key")
    if not _verify(pem, t["new_signature"], data):
        raise _bad(f"key {i} transition is not signed by the new key")


def load_history(audit_dir: Path, public_key_pem: bytes) -> KeyHistory:
    """The history of the log in ``audit_dir`` pinned by ``public_key_pem``: its
    ``node-keys.json`` if there is one, else the single key itself."""
    path = audit_dir / HISTORY_FILE
    try:
        with open_regular(path) as fh:
            data = fh.read(MAX_HISTORY_BYTES + 1)
    except FileNotFoundError:
        return KeyHistory.single(public_key_pem)
    return KeyHistory.parse(data, public_key_pem)
