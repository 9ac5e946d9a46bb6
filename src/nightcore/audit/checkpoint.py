"""Checkpoints opened with the node key (pure), and the stored checkpoints of an audit directory.

A checkpoint is a C2SP signed note (c2sp.org/tlog-checkpoint) with origin
``nightcore/<first 16 hex digits of the node key id>`` (the FIRST node key of the log: it does
not change on rotation, :mod:`nightcore.audit.keyhistory`) and the node name as key name. An
Ed25519 node key signs with note signature type 0x01, an ECDSA P-256 node key (FIPS mode) with
type 0x02 (:mod:`nightcore.audit.note`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nightcore.audit import note
from nightcore.errors import AuditError
from nightcore.fsio import open_regular
from nightcore.layout import AUDIT_TAIL_NAME, CHECKPOINTS_DIR_NAME

__all__ = [
    "MAX_PUBLIC_KEY_FILE",
    "NOTE_FILE",
    "ORIGIN_PREFIX",
    "SignedCheckpoint",
    "checkpoint_origin",
    "load_node_public_key",
    "open_node_checkpoint",
    "read_note",
    "stored_checkpoints",
]

ORIGIN_PREFIX: Final = "nightcore/"
MAX_PUBLIC_KEY_FILE: Final = 64 * 1024
NOTE_FILE: Final = re.compile(r"(0|[1-9][0-9]{0,19})\.note")


def checkpoint_origin(node_key_id: str) -> str:
    """The checkpoint origin line of a node: ``nightcore/<first 16 hex of its key id>``."""
    return f"{ORIGIN_PREFIX}{node_key_id[:16]}"


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint whose signature by the node key has been verified."""

    checkpoint: note.Checkpoint
    note: bytes
    key_names: tuple[str, ...]

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root

    @property
    def origin(self) -> str:
        return self.checkpoint.origin

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": self.root.hex(),
            "key_name": self.key_names[0] if self.key_names else "",
            "note": self.note.decode("utf-8"),
        }


def _signature_names(data: bytes) -> list[str]:
    """Key names on the signature lines of a note (structure only; nothing is trusted)."""
    text = data.decode("utf-8", errors="replace")
    split = text.rfind("\n\n")
    names: list[str] = []
    for line in text[split + 2 :].split("\n") if split >= 0 else []:
        if line.startswith("\u2014 "):
            name = line[2:].rpartition(" ")[0]
            if name and name not in names:
                names.append(name)
    return names


def open_node_checkpoint(
    data: bytes, public_key: note.NotePublicKey, origin: str, *, what: str = "checkpoint"
) -> SignedCheckpoint:
    """Verify a signed checkpoint against one node public key and its origin.

    The key name is taken from the note (the note key ID binds it to the key, and only the key is
    trusted). Any signature failure is ``CHECKPOINT_FORGED``.
    """
    names = _signature_names(data) if isinstance(data, bytes) else []
    try:
        opened = note.open_checkpoint(data, [(n, public_key) for n in names if n], origin=origin)
    except AuditError as exc:
        if exc.code.startswith("NOTE_"):
            raise AuditError(
                f"{what} is not validly signed by the node key ({exc.code}: {exc.message})",
                code="CHECKPOINT_FORGED",
            ) from None
        raise AuditError(f"{what}: {exc.message}", code=exc.code) from None
    return SignedCheckpoint(opened.checkpoint, bytes(data), tuple(opened.verified))


def load_node_public_key(pem: bytes) -> tuple[note.NotePublicKey, str]:
    """The node's public key (Ed25519, or ECDSA P-256 in FIPS mode) and the checkpoint origin it
    would give a new log, from ``node.pub.pem`` bytes."""
    from nightcore.trust.pubkey import PublicKey

    if len(pem) > MAX_PUBLIC_KEY_FILE:
        raise AuditError("public key file is too large", code="KEY_INVALID")
    sslib = PublicKey.from_pem(pem)  # KeyError_ (KEY_INVALID) if not a supported key
    key = sslib._crypto  # the cryptography key object the PEM was loaded into
    if sslib.scheme not in ("ed25519", "ecdsa-sha2-nistp256"):
        raise AuditError(
            f"the node key is {sslib.scheme}; checkpoints are signed with an Ed25519 (note type "
            "0x01) or ECDSA P-256 (note type 0x02, SHA-256) node key",
            code="CHECKPOINT_UNSUPPORTED_KEY",
        )
    return key, checkpoint_origin(str(sslib.keyid))


def stored_checkpoints(audit_dir: Path) -> list[tuple[str, int | None, bytes]]:
    """(label, size from the file name or None, bytes) of ``checkpoints/*.note`` and
    ``audit.tail``."""
    found: list[tuple[str, int | None, bytes]] = []
    cdir = audit_dir / CHECKPOINTS_DIR_NAME
    if cdir.is_dir():
        for p in sorted(cdir.iterdir()):
            if p.suffix != ".note":
                continue
            m = NOTE_FILE.fullmatch(p.name)
            found.append(
                (f"{CHECKPOINTS_DIR_NAME}/{p.name}", int(m.group(1)) if m else None, read_note(p))
            )
    tail = audit_dir / AUDIT_TAIL_NAME
    if tail.exists():
        found.append((AUDIT_TAIL_NAME, None, read_note(tail)))
    return found


def read_note(path: Path) -> bytes:
    """A note file, one byte above the cap at most (the parser refuses that); a FIFO or device
    in its place is an ``OSError``, never a hang or an endless read."""
    with open_regular(path) as fh:
        return fh.read(note.MAX_NOTE_SIZE + 1)
