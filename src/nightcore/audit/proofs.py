"""Proofs, pure and offline: c2sp.org/tlog-proof@v1 inclusion proofs and the
``nightcore/consistency-proof@v1`` text format; both verify with only ``node.pub.pem`` (and,
for a log whose node key was rotated, its node-key history ``node-keys.json``, pinned by that
key: :mod:`nightcore.audit.keyhistory`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from nightcore.audit import merkle, note
from nightcore.audit.checkpoint import SignedCheckpoint
from nightcore.audit.keyhistory import KeyHistory
from nightcore.audit.log import parse_line
from nightcore.errors import AuditError

__all__ = [
    "CONSISTENCY_HEADER",
    "ConsistencyProof",
    "format_consistency_proof",
    "parse_consistency_proof",
    "verify_consistency_proof",
    "verify_inclusion_proof",
]

CONSISTENCY_HEADER: Final = "nightcore/consistency-proof@v1"


def _entry_leaf(entry: bytes) -> tuple[bytes, dict[str, Any]]:
    """An audit line given to a verifier: one optional trailing newline is not part of it."""
    line = entry[:-1] if entry.endswith(b"\n") else entry
    rec = parse_line(line, seq_hint=-1)
    return merkle.leaf_hash(line), rec


def node_keys(public_key_pem: bytes, history: bytes | None = None) -> KeyHistory:
    """The verifier's node keys: the history pinned by ``public_key_pem``, or that key alone."""
    if history is None:
        return KeyHistory.single(public_key_pem)
    return KeyHistory.parse(history, public_key_pem)


def verify_inclusion_proof(
    proof: bytes, entry: bytes, public_key_pem: bytes, history: bytes | None = None
) -> tuple[SignedCheckpoint, dict[str, Any]]:
    """Offline check of ``audit prove`` output: the tlog-proof, the audit line it proves, and
    the node's public key (plus its key history after a rotation); nothing else. Returns the
    verified checkpoint and the entry."""
    keys = node_keys(public_key_pem, history)
    parsed = note.parse_tlog_proof(proof)
    cp = keys.open_checkpoint(parsed.checkpoint)
    leaf, rec = _entry_leaf(entry)
    merkle.verify_inclusion(leaf, parsed.index, cp.size, parsed.proof, cp.root)
    if rec["seq"] != parsed.index:
        raise AuditError(
            f"the entry says seq {rec['seq']} but the proof puts it at index {parsed.index}",
            code="PROOF_INDEX_MISMATCH",
        )
    return cp, rec


@dataclass(frozen=True)
class ConsistencyProof:
    old: note.Checkpoint
    new: SignedCheckpoint
    proof: tuple[bytes, ...]

    def to_text(self) -> bytes:
        return format_consistency_proof(self.old.size, self.proof, self.new.note)

    def to_dict(self) -> dict[str, Any]:
        return {
            "old_size": self.old.size,
            "old_root": self.old.root.hex(),
            "new_size": self.new.size,
            "new_root": self.new.root.hex(),
            "proof": [note._b64(h) for h in self.proof],
            "checkpoint": self.new.note.decode("utf-8"),
        }


def format_consistency_proof(old_size: int, hashes: tuple[bytes, ...], new_note: bytes) -> bytes:
    """``nightcore/consistency-proof@v1`` / ``old <size>`` / base64 hashes / blank / new note."""
    lines = [CONSISTENCY_HEADER, f"old {old_size}", *(note._b64(h) for h in hashes)]
    return ("\n".join(lines) + "\n\n").encode("ascii") + new_note


def parse_consistency_proof(data: bytes) -> tuple[int, tuple[bytes, ...], bytes]:
    """Strict parse of :func:`format_consistency_proof` output (``PROOF_FORMAT_INVALID``)."""

    def bad(msg: str) -> AuditError:
        return AuditError(msg, code="PROOF_FORMAT_INVALID")

    if not isinstance(data, bytes) or len(data) > note.MAX_TLOG_PROOF_SIZE:
        raise bad("consistency proof is not bytes of a bounded size")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("consistency proof is not UTF-8") from None
    split = text.find("\n\n")
    if split < 0:
        raise bad("consistency proof has no empty line before the checkpoint")
    header = text[:split].split("\n")
    if header[0] != CONSISTENCY_HEADER or len(header) < 2 or not header[1].startswith("old "):
        raise bad(f"consistency proof must start with {CONSISTENCY_HEADER!r} and 'old <size>'")
    old_size = note._parse_u64(header[1][4:])
    if old_size is None:
        raise bad("'old' is not a canonical decimal size")
    if len(header) - 2 > note.MAX_PROOF_HASHES:
        raise bad("too many proof hashes")
    hashes: list[bytes] = []
    for line in header[2:]:
        h = note._b64decode(line)
        if h is None or len(h) != merkle.HASH_SIZE:
            raise bad("a proof hash line is not canonical base64 of 32 bytes")
        hashes.append(h)
    return old_size, tuple(hashes), text[split + 2 :].encode("utf-8")


def verify_consistency_proof(
    proof: bytes, old_note: bytes, public_key_pem: bytes, history: bytes | None = None
) -> ConsistencyProof:
    """Offline check that the signed checkpoint inside ``proof`` extends ``old_note``."""
    keys = node_keys(public_key_pem, history)
    old = keys.open_checkpoint(old_note, what="old checkpoint")
    old_size, hashes, new_note = parse_consistency_proof(proof)
    new = keys.open_checkpoint(new_note, what="new checkpoint")
    if old_size != old.size:
        raise AuditError(
            f"the proof starts at size {old_size}, the old checkpoint is {old.size}",
            code="PROOF_SIZE_INVALID",
        )
    try:
        merkle.verify_consistency(old.size, new.size, hashes, old.root, new.root)
    except AuditError as exc:
        if exc.code == "PROOF_ROOT_MISMATCH":
            raise AuditError(
                f"checkpoint {new.size} does not extend checkpoint {old.size}: {exc.message}",
                code="CONSISTENCY_FAILED",
            ) from None
        raise
    return ConsistencyProof(old.checkpoint, new, hashes)
