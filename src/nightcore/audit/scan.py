"""Scanning a byte range of the audit log: the chain rules of ``verify_chain``, the leaf
hashes of the Merkle tree and the ``checkpoint`` events, in one pass over whole lines.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nightcore.audit.lines import parse_line_fast
from nightcore.audit.log import MAX_LINE_BYTES
from nightcore.audit.merkle import leaf_hash
from nightcore.errors import AuditError
from nightcore.fsio import open_regular

__all__ = ["CHECKPOINT_EVENT", "READ_CHUNK", "Scan", "chain_broken", "scan_file", "seq_gap"]

CHECKPOINT_EVENT: Final = "checkpoint"
READ_CHUNK: Final = 16 * 1024 * 1024


@dataclass
class Scan:
    """Result of scanning a byte range of the log from ``seq0``.

    ``prev0`` is the ``prev`` the first line must carry; None accepts whatever it carries and
    records it in ``first_prev`` (a segment of a parallel scan; the caller joins the segments).
    """

    start: int  # absolute offset of the range
    seq0: int
    prev0: str | None
    count: int = 0
    head: str | None = None  # SHA-256 hex of the last accepted line (prev0 before any)
    first_prev: str | None = None
    leaves: bytearray = field(default_factory=bytearray)
    events: list[tuple[int, Any]] = field(default_factory=list)
    end: int = 0  # absolute offset just after the last accepted line
    last_start: int = 0  # absolute offset of the last accepted line
    error: AuditError | None = None
    error_seq: int | None = None
    error_end: int | None = None  # absolute offset after the refused line's newline
    torn: bytes = b""  # bytes after the last newline of the range
    # Parallel scans: (first leaf index, leaf count, interior levels 1.. of the perfect nodes
    # inside that run) per joined run, so the tree is built without rehashing in one process.
    runs: list[tuple[int, int, list[bytes]]] | None = None

    def __post_init__(self) -> None:
        self.head = self.prev0
        self.end = self.start
        self.last_start = self.start

    def fail(self, error: AuditError, seq: int, end: int | None) -> None:
        self.error, self.error_seq, self.error_end = error, seq, end

    @property
    def chain_head(self) -> str:
        """``head`` of a scan whose first ``prev`` was known."""
        if self.head is None:
            raise AuditError("scan without a known chain head", code="INTERNAL")
        return self.head


def seq_gap(seq: int, found: object) -> AuditError:
    return AuditError(
        f"line {seq}: seq is {found}, expected {seq} (a line was deleted, inserted or reordered)",
        code="AUDIT_SEQ_GAP",
    )


def chain_broken(seq: int) -> AuditError:
    return AuditError(
        f"line {seq}: prev does not match the previous line's hash "
        "(an earlier line was edited, deleted or reordered)",
        code="AUDIT_CHAIN_BROKEN",
    )


def scan_buffer(scan: Scan, buf: bytes, base: int) -> int:
    """Consume whole lines of ``buf`` (which starts at absolute offset ``base``).

    Returns the number of bytes consumed; stops at the first refused line (``scan.error``).
    The rules and messages are those of :func:`nightcore.audit.log.verify_chain`.
    """
    find = buf.find
    sha256 = hashlib.sha256
    leaf = leaf_hash
    leaves = scan.leaves
    events = scan.events
    seq = scan.seq0 + scan.count
    prev = scan.head
    pos = 0
    last_start = scan.last_start
    try:
        while True:
            nl = find(b"\n", pos)
            if nl < 0:
                break
            line = buf[pos:nl]
            try:
                rec = parse_line_fast(line, seq_hint=seq)
                if rec["seq"] != seq:
                    raise seq_gap(seq, rec["seq"])
                if prev is None:
                    scan.first_prev = rec["prev"]
                elif rec["prev"] != prev:
                    raise chain_broken(seq)
            except AuditError as exc:
                scan.fail(exc, seq, base + nl + 1)
                break
            prev = sha256(line).hexdigest()
            leaves += leaf(line)  # the chain hashes the line; the tree, 0x00 || line
            if rec["event"] == CHECKPOINT_EVENT:
                events.append((seq, rec["data"]))
            last_start = base + pos
            seq += 1
            pos = nl + 1
    finally:
        scan.count = seq - scan.seq0
        scan.head = prev
        scan.last_start = last_start
        scan.end = base + pos
    return pos


def scan_file(path: Path, start: int, end: int, seq0: int, prev0: str | None) -> Scan:
    """Scan ``[start, end)`` of the log in bounded chunks (one line at most 1 MiB + newline)."""
    scan = Scan(start=start, seq0=seq0, prev0=prev0)
    if end <= start:
        return scan
    with open_regular(path) as fh:  # a FIFO or device in place of a log: OSError, not a hang
        fh.seek(start)
        pos = start
        carry = b""
        while pos < end and scan.error is None:
            chunk = fh.read(min(READ_CHUNK, end - pos))
            if not chunk:
                break
            buf = carry + chunk if carry else chunk
            base = pos - len(carry)
            pos += len(chunk)
            used = scan_buffer(scan, buf, base)
            carry = buf[used:]
            if scan.error is None and len(carry) > MAX_LINE_BYTES + 1 and pos < end:
                n = scan.seq0 + scan.count
                scan.fail(
                    AuditError(
                        f"line {n}: longer than {MAX_LINE_BYTES} bytes",
                        code="AUDIT_LINE_MALFORMED",
                    ),
                    n,
                    None,
                )
        if scan.error is None:
            scan.torn = carry
    return scan
