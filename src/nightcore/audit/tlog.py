"""The transparency log: an RFC 9162 Merkle tree over the audit log, anchored by signed checkpoints.

Rules (docs/audit.md has the operator's view):

1. **Leaves.** Leaf ``i`` is the bytes of audit line ``i`` without its newline; leaf index ==
   ``seq``. The tree is *derived* data: ``state/audit/tree.bin`` (the append-only
   :class:`~nightcore.audit.merkle.TreeStore` file) plus the sidecar ``tree.state`` (canonical
   JSON: leaves ingested, byte offset of the log already ingested, the last ingested line's start
   offset and SHA-256).
2. **Lazy, incremental sync** (:class:`LogTree`). Under ``flock(audit.lock)`` (the writers' lock,
   so only whole lines are seen) the tree reads the log from the sidecar's offset: O(new lines),
   the old lines are never re-hashed. New lines are checked like ``verify_chain`` does (strict
   canonical parse, ``seq``, ``prev``) before they become leaves, and the log is ``fsync``'d
   before ``tree.bin`` records them. A newline-terminated but unparsable *last* line is a torn
   write that the next writer moves aside: it is not ingested.
3. **Rebuild, but never over evidence.** If ``tree.bin`` or the sidecar is missing or damaged,
   or the last ingested line is no longer where the sidecar says, the tree is rebuilt from the
   whole log. If the rebuilt leaves disagree with the leaves ``tree.bin`` already held (a line
   was changed or removed after ingestion), sync refuses with ``AUDIT_TREE_MISMATCH`` instead of
   adopting the new history. ``audit verify`` (:meth:`TransparencyLog.verify`) is the one place
   that replaces a disagreeing ``tree.bin``, and only after the whole log verified against every
   signed checkpoint; the old file is kept as ``tree.bin.mismatch-<ts>``.
4. **Checkpoints** are C2SP signed notes (c2sp.org/tlog-checkpoint) with origin
   ``nightcore/<first 16 hex digits of the node key id>`` and key name = the node name
   (``[node] name``), signed with the node's Ed25519 key (``private/node.key``; encrypted when
   ``NIGHTCORE_NODE_KEY_PASSPHRASE`` is set). An ECDSA node key (FIPS mode) cannot sign notes:
   ``CHECKPOINT_UNSUPPORTED_KEY``. A checkpoint is signed only if the tree extends the latest
   stored checkpoint (same root at that size): the node never signs a rewritten or truncated
   history. It is stored as ``checkpoints/<size>.note`` and atomically as ``audit.tail``; the
   ``checkpoint`` audit event ``{size, root, reason}`` is appended *after* signing, so a
   checkpoint of size ``n`` covers exactly the lines before its own event.
5. **Verification** (:func:`verify_log`) recomputes everything from the files: the chain (same
   rules and codes as ``verify_chain``), the tree, every stored checkpoint (signature by the node
   public key, origin, size within the log, root equal to the tree root at that size) and every
   ``checkpoint`` event (its root equals the tree root at its size). The first problem is
   reported with its code and the ``seq`` it concerns. Lines are parsed by
   :func:`parse_line_fast` (the same verdicts as ``parse_line``, ~3x faster), and a log of at
   least :data:`PARALLEL_MIN_BYTES` is scanned by one process per core, each over a run of whole
   lines, with ``prev`` checked across the runs: the result is that of one sequential scan.
6. **Proofs** are c2sp.org/tlog-proof@v1 (inclusion) against the latest checkpoint covering the
   entry, and a small text format of the same shape for consistency (:data:`CONSISTENCY_HEADER`).
   Both verify offline with only ``node.pub.pem`` (:func:`verify_inclusion_proof`,
   :func:`verify_consistency_proof`); the key name is read from the note and is not trusted: only
   the key is.

Codes: ``AUDIT_TRUNCATED`` (the log is shorter than a signed checkpoint), ``CHECKPOINT_FORGED``
(not validly signed by the node key), ``CHECKPOINT_ROOT_MISMATCH`` (validly signed, but the log's
root at that size differs: history rewritten), ``CHECKPOINT_ORIGIN_MISMATCH``,
``CHECKPOINT_MALFORMED`` (a stored file whose name is not its size), ``CHECKPOINT_EVENT_MISMATCH``
(a ``checkpoint`` event's root is not the tree root at its size), ``CHECKPOINT_UNSUPPORTED_KEY``,
``NODE_KEY_MISMATCH`` (private key does not match ``node.pub.pem``, from the signer's loader),
``CHECKPOINT_KEY_NAME_INVALID``, ``AUDIT_TREE_MISMATCH``, ``CONSISTENCY_FAILED``,
``PROOF_INDEX_MISMATCH`` (the entry's ``seq`` is not the proof's index), the chain codes of
:mod:`nightcore.audit.log` and the ``PROOF_*`` / ``NOTE_*`` codes of :mod:`~nightcore.audit.merkle`
and :mod:`~nightcore.audit.note`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import itertools
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nightcore.audit import merkle, note
from nightcore.audit.log import _FIELDS, _REQUIRED, MAX_LINE_BYTES, ZERO_HASH, parse_line
from nightcore.canonical import canonical
from nightcore.errors import AuditError, NightCoreError, UsageError
from nightcore.fsio import atomic_write

if TYPE_CHECKING:
    from nightcore.audit.log import AuditLog
    from nightcore.layout import Layout

__all__ = [
    "CHECKPOINT_EVENT",
    "CONSISTENCY_HEADER",
    "DEFAULT_CHECKPOINT_EVERY",
    "ConsistencyProof",
    "LogTree",
    "SignedCheckpoint",
    "TransparencyLog",
    "VerifyReport",
    "checkpoint_after_run",
    "checkpoint_origin",
    "format_consistency_proof",
    "maybe_checkpoint",
    "open_node_checkpoint",
    "parse_consistency_proof",
    "transparency_log",
    "verify_consistency_proof",
    "verify_inclusion_proof",
    "verify_log",
]

TREE_NAME: Final = "tree.bin"
STATE_NAME: Final = "tree.state"
TAIL_NAME: Final = "audit.tail"
CHECKPOINTS_DIR: Final = "checkpoints"
LOG_NAME: Final = "audit.jsonl"
LOCK_NAME: Final = "audit.lock"
CHECKPOINT_EVENT: Final = "checkpoint"
ORIGIN_PREFIX: Final = "nightcore/"
CONSISTENCY_HEADER: Final = "nightcore/consistency-proof@v1"
DEFAULT_CHECKPOINT_EVERY: Final = 1000
MAX_REASON: Final = 200
MAX_PUBLIC_KEY_FILE: Final = 64 * 1024

_READ_CHUNK: Final = 16 * 1024 * 1024
_STATE_VERSION: Final = 1
_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_HEX16: Final = re.compile(r"[0-9a-f]{16}")
_NOTE_FILE: Final = re.compile(r"(0|[1-9][0-9]{0,19})\.note")
_REASON_OK: Final = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
_PARSE_ERRORS: Final = frozenset({"AUDIT_LINE_MALFORMED", "AUDIT_NOT_CANONICAL"})


def checkpoint_origin(node_key_id: str) -> str:
    """The checkpoint origin line of a node: ``nightcore/<first 16 hex of its key id>``."""
    return f"{ORIGIN_PREFIX}{node_key_id[:16]}"


# --------------------------------------------------------------------------------------------
# Fast strict line parsing


class _Slow(Exception):
    """Raised inside the fast decoder when a value needs the reference parser."""


def _refuse_float(_text: str) -> Any:
    raise _Slow


def _small_int(text: str) -> int:
    # 15 characters (sign included) is always inside RFC 8785's +-(2^53 - 1); longer ones take
    # the reference path, which applies the exact bound.
    if len(text) > 15:
        raise _Slow
    return int(text)


_FAST_LOADS: Final = json.JSONDecoder(
    parse_float=_refuse_float, parse_int=_small_int, parse_constant=_refuse_float
).decode
_FAST_DUMPS: Final = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode
# A 4-byte UTF-8 sequence: a non-BMP character, where Python's key order (code points) and
# RFC 8785's (UTF-16 code units) can differ.
_NON_BMP: Final = re.compile(rb"[\xf0-\xff]")


def parse_line_fast(line: bytes, *, seq_hint: int) -> dict[str, Any]:
    """:func:`nightcore.audit.log.parse_line`, about 3x faster on ordinary lines.

    Fast path: the C JSON decoder and encoder; a line is accepted only if re-encoding its value
    with sorted keys, no whitespace and no ASCII escaping reproduces the line byte for byte. On
    the values that path admits (no floats, integers of at most 15 characters, no non-BMP
    characters, no lone surrogates) that encoding *is* RFC 8785, and a duplicate key cannot
    round-trip. Anything else, and every refusal, goes through ``parse_line`` itself, so the
    accepted set and the error codes and messages are the same; the one difference is that a
    value outside RFC 8785's domain (an integer beyond 2^53), which ``parse_line`` lets escape
    as a ``JSON_INVALID`` NightCoreError, is refused here as ``AUDIT_NOT_CANONICAL``.
    """
    if len(line) <= MAX_LINE_BYTES and (line.isascii() or _NON_BMP.search(line) is None):
        try:
            text = line.decode("utf-8")
            rec = _FAST_LOADS(text)
            if (
                type(rec) is dict
                and _REQUIRED <= rec.keys() <= _FIELDS
                and type(rec["seq"]) is int
                and type(rec["prev"]) is str
                and type(rec["event"]) is str
                and type(rec["data"]) is dict
                and _FAST_DUMPS(rec) == text  # same text, so same UTF-8 bytes
            ):
                return rec
        except (_Slow, ValueError, RecursionError):  # UnicodeError is a ValueError
            pass
    try:
        return parse_line(line, seq_hint=seq_hint)
    except AuditError:
        raise
    except NightCoreError as exc:  # canonical() refusing a value outside RFC 8785's domain
        raise AuditError(
            f"audit line {seq_hint}: not RFC 8785 canonical JSON ({exc.message})",
            code="AUDIT_NOT_CANONICAL",
        ) from None


# --------------------------------------------------------------------------------------------
# Scanning the log (chain rules of verify_chain, leaf hashes, checkpoint events)


@dataclass
class _Scan:
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


def _seq_gap(seq: int, found: object) -> AuditError:
    return AuditError(
        f"line {seq}: seq is {found}, expected {seq} (a line was deleted, inserted or reordered)",
        code="AUDIT_SEQ_GAP",
    )


def _chain_broken(seq: int) -> AuditError:
    return AuditError(
        f"line {seq}: prev does not match the previous line's hash "
        "(an earlier line was edited, deleted or reordered)",
        code="AUDIT_CHAIN_BROKEN",
    )


def _scan_buffer(scan: _Scan, buf: bytes, base: int) -> int:
    """Consume whole lines of ``buf`` (which starts at absolute offset ``base``).

    Returns the number of bytes consumed; stops at the first refused line (``scan.error``).
    The rules and messages are those of :func:`nightcore.audit.log.verify_chain`.
    """
    find = buf.find
    sha256 = hashlib.sha256
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
                    raise _seq_gap(seq, rec["seq"])
                if prev is None:
                    scan.first_prev = rec["prev"]
                elif rec["prev"] != prev:
                    raise _chain_broken(seq)
            except AuditError as exc:
                scan.fail(exc, seq, base + nl + 1)
                break
            prev = sha256(line).hexdigest()
            leaves += sha256(_LEAF_PREFIX + line).digest()
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


def _scan_file(path: Path, start: int, end: int, seq0: int, prev0: str | None) -> _Scan:
    """Scan ``[start, end)`` of the log in bounded chunks (one line at most 1 MiB + newline)."""
    scan = _Scan(start=start, seq0=seq0, prev0=prev0)
    if end <= start:
        return scan
    with path.open("rb") as fh:
        fh.seek(start)
        pos = start
        carry = b""
        while pos < end and scan.error is None:
            chunk = fh.read(min(_READ_CHUNK, end - pos))
            if not chunk:
                break
            buf = carry + chunk if carry else chunk
            base = pos - len(carry)
            pos += len(chunk)
            used = _scan_buffer(scan, buf, base)
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


# Parallel scanning of large logs: one process per core, each a contiguous run of whole lines.
# Lines are independent except for ``prev``, which is checked across segment boundaries here.

PARALLEL_MIN_BYTES: Final = 32 * 1024 * 1024
_MAX_WORKERS: Final = 8


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _cuts(path: Path, size: int, parts: int) -> list[int]:
    """Offsets splitting ``[0, size)`` just after newlines into at most ``parts`` runs."""
    cuts = [0]
    with path.open("rb") as fh:
        for i in range(1, parts):
            pos = max(size * i // parts, cuts[-1])
            fh.seek(pos)
            while pos < size:
                block = fh.read(min(1 << 20, size - pos))
                k = block.find(b"\n")
                if k >= 0:
                    pos += k + 1
                    break
                pos += len(block)
            if cuts[-1] < pos < size:
                cuts.append(pos)
    cuts.append(size)
    return cuts


def _first_seqs(path: Path, cuts: list[int]) -> list[int]:
    """The seq of the first line of each run: newlines before its start (the last run's own
    lines are not counted)."""
    seqs = [0]
    with path.open("rb") as fh:
        for a, b in itertools.pairwise(cuts[:-1]):
            fh.seek(a)
            left, n = b - a, 0
            while left > 0:
                block = fh.read(min(_READ_CHUNK, left))
                if not block:
                    break
                n += block.count(b"\n")
                left -= len(block)
            seqs.append(seqs[-1] + n)
    return seqs


def _segments(path: Path, size: int, parts: int) -> list[tuple[int, int, int]]:
    """Split ``[0, size)`` at newlines into at most ``parts`` (start, end, first seq) runs."""
    cuts = _cuts(path, size, parts)
    return [
        (a, b, seq)
        for (a, b), seq in zip(itertools.pairwise(cuts), _first_seqs(path, cuts), strict=True)
    ]


def _run_levels(leaves: bytes, first: int) -> list[bytes]:
    """Interior levels 1.. of the perfect nodes lying wholly inside leaves
    ``[first, first + len(leaves) // 32)``: level ``L`` holds the nodes ``k`` with
    ``ceil(first / 2^L) <= k < floor(end / 2^L)``, in order."""
    sha256 = hashlib.sha256
    end = first + len(leaves) // merkle.HASH_SIZE
    levels: list[bytes] = []
    prev, prev_lo, level = leaves, first, 1
    while True:
        lo, hi = (first + (1 << level) - 1) >> level, end >> level
        if hi <= lo:
            return levels
        a = (2 * lo - prev_lo) * merkle.HASH_SIZE
        cur = b"".join(
            sha256(_NODE_PREFIX + prev[i : i + 2 * merkle.HASH_SIZE]).digest()
            for i in range(a, a + (hi - lo) * 2 * merkle.HASH_SIZE, 2 * merkle.HASH_SIZE)
        )
        levels.append(cur)
        prev, prev_lo, level = cur, lo, level + 1


def _nodes(below: bytes | bytearray, lo: int, hi: int) -> bytes:
    """Nodes ``lo .. hi-1`` of a level, hashed from the complete level below."""
    sha256 = hashlib.sha256
    step = 2 * merkle.HASH_SIZE
    return b"".join(
        sha256(_NODE_PREFIX + below[k * step : (k + 1) * step]).digest() for k in range(lo, hi)
    )


def _tree_of(scan: _Scan) -> merkle.TreeStore:
    """The TreeStore over a scan's leaves; a parallel scan's runs bring most interior nodes."""
    leaves = bytes(scan.leaves)
    if scan.runs is None:
        return merkle.TreeStore.from_bytes(merkle.FILE_MAGIC + leaves)
    n = len(leaves) // merkle.HASH_SIZE
    levels = [bytearray(leaves)]
    level = 1
    while n >> level:
        below, out, expected = levels[-1], bytearray(), 0
        for first, count, run_levels in scan.runs:
            lo, hi = (first + (1 << level) - 1) >> level, (first + count) >> level
            if hi <= lo:
                continue
            if lo > expected:  # the node straddling the runs' boundary
                out += _nodes(below, expected, lo)
            out += run_levels[level - 1]
            expected = hi
        out += _nodes(below, expected, n >> level)
        levels.append(out)
        level += 1
    # The TreeStore layout (merkle.py): level L is one bytearray of the size >> L perfect nodes.
    tree = merkle.TreeStore()
    tree._levels = levels
    tree._size = n
    return tree


def _scan_segment(path: Path, start: int, end: int, seq0: int) -> dict[str, Any]:
    """One run of a parallel scan, as plain values (they cross a process boundary)."""
    scan = _scan_file(path, start, end, seq0, None)
    err = scan.error
    leaves = bytes(scan.leaves)
    return {
        "levels": _run_levels(leaves, seq0),
        "count": scan.count,
        "head": scan.head,
        "first_prev": scan.first_prev,
        "leaves": leaves,
        "events": scan.events,
        "end": scan.end,
        "last_start": scan.last_start,
        "error": None if err is None else [err.code, err.message],
        "error_seq": scan.error_seq,
        "error_end": scan.error_end,
        "torn": scan.torn,
    }


def _segment_worker_main() -> None:
    """Entry point of a scan worker process: reads ``[path, start, end, seq0]`` (JSON, one line)
    from stdin; writes one JSON header line, then the raw leaf hashes and interior levels."""
    import sys

    path, start, end, seq0 = json.loads(sys.stdin.readline())
    res = _scan_segment(Path(path), int(start), int(end), int(seq0))
    blobs = [res.pop("leaves"), *res.pop("levels")]
    res["torn"] = res["torn"].hex()
    res["blob_lengths"] = [len(b) for b in blobs]
    out = sys.stdout.buffer
    out.write(json.dumps(res).encode() + b"\n")
    for blob in blobs:
        out.write(blob)
    out.flush()


_WORKER_CODE: Final = (
    "from nightcore.audit.tlog import _segment_worker_main\n_segment_worker_main()\n"
)


def _read_worker(proc: Any) -> dict[str, Any] | None:
    out = proc.stdout.read()  # not communicate(): stdin is already closed
    proc.stdout.close()
    if proc.wait() != 0:
        return None
    header, sep, body = out.partition(b"\n")
    try:
        res: dict[str, Any] = json.loads(header)
        lengths = [int(n) for n in res["blob_lengths"]]
    except (ValueError, KeyError, TypeError):
        return None
    if not sep or not lengths or sum(lengths) != len(body):
        return None
    blobs, pos = [], 0
    for n in lengths:
        blobs.append(body[pos : pos + n])
        pos += n
    res["leaves"], res["levels"] = blobs[0], blobs[1:]
    res["torn"] = bytes.fromhex(res["torn"])
    res["events"] = [tuple(e) for e in res["events"]]
    return res


def _scan_log(path: Path, size: int, *, workers: int | None = None) -> _Scan:
    """Scan the whole log ``[0, size)`` from seq 0; in parallel when it is large.

    ``workers=None`` picks one process per available core for logs of at least
    :data:`PARALLEL_MIN_BYTES`. Workers are fresh interpreters (``subprocess``, not fork: the
    caller may be threaded); a worker that fails is replaced by scanning its run here. The
    result is the same as one sequential scan.
    """
    if workers is None:
        workers = min(_cpus(), _MAX_WORKERS) if size >= PARALLEL_MIN_BYTES else 1
    if workers <= 1 or size == 0:
        return _scan_file(path, 0, size, 0, ZERO_HASH)
    cuts = _cuts(path, size, workers)
    if len(cuts) <= 2:
        return _scan_file(path, 0, size, 0, ZERO_HASH)
    import subprocess
    import sys

    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (package_root, env.get("PYTHONPATH")) if x)
    # Start the interpreters first: they import while this process counts lines for the seqs.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        for _ in range(len(cuts) - 2)
    ]
    try:
        segments = [
            (a, b, seq)
            for (a, b), seq in zip(itertools.pairwise(cuts), _first_seqs(path, cuts), strict=True)
        ]
        for proc, seg in zip(procs, segments[1:], strict=True):
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps([str(path), *seg]).encode() + b"\n")
                proc.stdin.close()
            except OSError:
                proc.kill()
        a, b, seq0 = segments[0]
        first = _scan_file(path, a, b, seq0, ZERO_HASH)  # this process takes the first run
        first.runs = [(0, first.count, _run_levels(bytes(first.leaves), 0))]
        parts: list[dict[str, Any]] = []
        for proc, seg in zip(procs, segments[1:], strict=True):
            res = _read_worker(proc)
            parts.append(res if res is not None else _scan_segment(path, *seg))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return _join(first, parts)


def _join(scan: _Scan, parts: list[dict[str, Any]]) -> _Scan:
    """Append the segments' results to the first scan, checking ``prev`` at each boundary."""
    for part in parts:
        if scan.error is not None or scan.torn:
            break
        seq = scan.seq0 + scan.count
        if part["count"] and part["first_prev"] != scan.head:
            scan.fail(_chain_broken(seq), seq, None)
            break
        if scan.runs is not None:
            scan.runs.append((seq, part["count"], part["levels"]))
        scan.leaves += part["leaves"]
        scan.events.extend(part["events"])
        scan.count += part["count"]
        if part["count"]:
            scan.head, scan.last_start = part["head"], part["last_start"]
        scan.end = part["end"]
        if part["error"] is not None:
            code, message = part["error"]
            scan.fail(AuditError(message, code=code), part["error_seq"], part["error_end"])
        scan.torn = part["torn"]
    return scan


def _log_size_locked(audit_dir: Path) -> int:
    try:
        return (audit_dir / LOG_NAME).stat().st_size
    except FileNotFoundError:
        return 0


@contextmanager
def _audit_lock(audit_dir: Path) -> Iterator[None]:
    """``flock`` on ``audit.lock``: the writers' lock (a writer holds it for a whole batch)."""
    audit_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(audit_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _first_difference(a: bytes | bytearray, b: bytes | bytearray) -> int:
    """Index of the first differing 32-byte record of two leaf arrays (or the shorter length)."""
    n = min(len(a), len(b)) // merkle.HASH_SIZE
    block = 4096
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        s, e = lo * merkle.HASH_SIZE, hi * merkle.HASH_SIZE
        if a[s:e] != b[s:e]:
            for i in range(lo, hi):
                r = slice(i * merkle.HASH_SIZE, (i + 1) * merkle.HASH_SIZE)
                if a[r] != b[r]:
                    return i
    return n


# --------------------------------------------------------------------------------------------
# tree.bin + tree.state


@dataclass(frozen=True)
class TreeState:
    """The sidecar of ``tree.bin``: what of ``audit.jsonl`` the tree has ingested."""

    size: int  # leaves
    offset: int  # bytes of audit.jsonl ingested (just after the last ingested newline)
    last_start: int  # offset of the last ingested line
    head: str  # SHA-256 hex of the last ingested line (ZERO_HASH when size == 0)
    # Random id of this tree.bin's lineage: new on every rebuild, kept while appending. Lets a
    # process holding the tree in memory read just the new leaf records another process added.
    lineage: str = ZERO_HASH[:16]

    def to_bytes(self) -> bytes:
        return (
            canonical(
                {
                    "v": _STATE_VERSION,
                    "size": self.size,
                    "offset": self.offset,
                    "last_start": self.last_start,
                    "head": self.head,
                    "lineage": self.lineage,
                }
            )
            + b"\n"
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TreeState | None:
        """The sidecar, or None if it is not exactly what :meth:`to_bytes` writes."""
        try:
            rec = json.loads(data)
        except ValueError:
            return None
        if not isinstance(rec, dict) or set(rec) != {
            "v",
            "size",
            "offset",
            "last_start",
            "head",
            "lineage",
        }:
            return None
        nums = [rec["size"], rec["offset"], rec["last_start"]]
        if rec["v"] != _STATE_VERSION or any(
            type(x) is not int or x < 0 or x > merkle.MAX_TREE_SIZE for x in nums
        ):
            return None
        if not isinstance(rec["head"], str) or not _HEX64.fullmatch(rec["head"]):
            return None
        if not isinstance(rec["lineage"], str) or not _HEX16.fullmatch(rec["lineage"]):
            return None
        state = cls(rec["size"], rec["offset"], rec["last_start"], rec["head"], rec["lineage"])
        if state.to_bytes() != data:
            return None
        if state.size == 0 and (state.offset, state.last_start, state.head) != (0, 0, ZERO_HASH):
            return None
        if state.size > 0 and not state.last_start < state.offset:
            return None
        return state


class LogTree:
    """The Merkle tree of one audit directory, kept in step with ``audit.jsonl``.

    Every method that reads or writes ``tree.bin`` / ``tree.state`` runs under the audit lock
    (the ``*_locked`` methods expect the caller to hold it). One instance keeps its tree in
    memory between syncs and reloads it only when another process changed the sidecar.
    """

    def __init__(self, audit_dir: Path) -> None:
        self.dir = audit_dir
        self.log_path = audit_dir / LOG_NAME
        self.tree_path = audit_dir / TREE_NAME
        self.state_path = audit_dir / STATE_NAME
        self._tree: merkle.TreeStore | None = None
        self._state: TreeState | None = None
        self.rebuilds = 0  # how many times this instance rebuilt from the whole log

    @property
    def tree(self) -> merkle.TreeStore:
        """The tree as of the last sync (sync first)."""
        if self._tree is None:
            raise AuditError("the tree has not been synced", code="INTERNAL")
        return self._tree

    @property
    def state(self) -> TreeState:
        if self._state is None:
            raise AuditError("the tree has not been synced", code="INTERNAL")
        return self._state

    def sync(self) -> TreeState:
        """Ingest the log's new whole lines (takes the audit lock)."""
        with _audit_lock(self.dir):
            return self.sync_locked()

    # -- loading -------------------------------------------------------------------------------

    def _read_state(self) -> TreeState | None:
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        return TreeState.from_bytes(data)

    def _stored_leaves(self) -> bytes:
        """The whole leaf records of ``tree.bin`` (empty if missing or not a tree store)."""
        try:
            data = self.tree_path.read_bytes()
        except FileNotFoundError:
            return b""
        if not data.startswith(merkle.FILE_MAGIC):
            return b""
        body = data[len(merkle.FILE_MAGIC) :]
        return body[: len(body) - len(body) % merkle.HASH_SIZE]

    def _load(self, state: TreeState) -> merkle.TreeStore | None:
        """The tree the sidecar describes: the one in memory, extended by the records another
        process appended since (same lineage), or else loaded from tree.bin (O(size))."""
        need = len(merkle.FILE_MAGIC) + merkle.HASH_SIZE * state.size
        if self._tree_file_size() < need:
            return None
        mine, tree = self._state, self._tree
        if mine is not None and tree is not None and tree.size == mine.size:
            if mine == state:
                return tree
            if mine.lineage == state.lineage and mine.size <= state.size:
                first = max(mine.size - 1, 0)
                start = len(merkle.FILE_MAGIC) + merkle.HASH_SIZE * first
                with self.tree_path.open("rb") as fh:
                    fh.seek(start)
                    records = fh.read(need - start)
                known = records[: merkle.HASH_SIZE] if mine.size else b""
                if not mine.size or hmac.compare_digest(known, tree.leaf_hash(mine.size - 1)):
                    new = records[len(known) :]
                    tree.extend(
                        new[i : i + merkle.HASH_SIZE] for i in range(0, len(new), merkle.HASH_SIZE)
                    )
                    return tree
        leaves = self._stored_leaves()
        if len(leaves) < merkle.HASH_SIZE * state.size:  # bad magic, or shorter than said
            return None
        return merkle.TreeStore.from_bytes(
            merkle.FILE_MAGIC + leaves[: merkle.HASH_SIZE * state.size]
        )

    def _tree_file_size(self) -> int:
        try:
            return self.tree_path.stat().st_size
        except FileNotFoundError:
            return -1

    def _tail_ok(self, state: TreeState, tree: merkle.TreeStore, log_size: int) -> bool:
        """Is the last ingested line still where, and what, the sidecar says?"""
        if state.offset > log_size:
            return False
        if state.size == 0:
            return True
        with self.log_path.open("rb") as fh:
            fh.seek(state.last_start)
            raw = fh.read(state.offset - state.last_start)
        if not raw.endswith(b"\n"):
            return False
        line = raw[:-1]
        return hashlib.sha256(line).hexdigest() == state.head and hmac.compare_digest(
            merkle.leaf_hash(line), tree.leaf_hash(state.size - 1)
        )

    # -- syncing -------------------------------------------------------------------------------

    def sync_locked(self) -> TreeState:
        state = self._read_state()
        tree = self._load(state) if state is not None else None
        log_size = _log_size_locked(self.dir)
        if state is None or tree is None or not self._tail_ok(state, tree, log_size):
            self._tree = self._state = None
            return self._rebuild_locked(log_size)
        self._tree, self._state = tree, state
        scan = _scan_file(self.log_path, state.offset, log_size, state.size, state.head)
        self._check_scan(scan, log_size)
        if scan.count:
            self._append_locked(tree, state, scan)
        return self.state

    def _check_scan(self, scan: _Scan, log_size: int) -> None:
        """Raise a scan's error unless it is a torn last line (the next writer moves it aside)."""
        if scan.error is None:
            return
        if (
            scan.error.code in _PARSE_ERRORS
            and scan.error_end is not None
            and not self._newline_after(scan.error_end, log_size)
        ):
            return
        raise AuditError(
            f"cannot extend the Merkle tree: {scan.error.message}; run 'nightcore audit verify'",
            code=scan.error.code,
        )

    def _newline_after(self, offset: int, log_size: int) -> bool:
        with self.log_path.open("rb") as fh:
            fh.seek(offset)
            return b"\n" in fh.read(log_size - offset)

    def _fsync_log(self) -> None:
        # A line reaches tree.bin only once it is durable in the log: a writer killed between its
        # write() and its fsync() leaves lines that a power loss could still take away.
        fd = os.open(self.log_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _append_locked(self, tree: merkle.TreeStore, state: TreeState, scan: _Scan) -> None:
        self._fsync_log()
        want = len(merkle.FILE_MAGIC) + merkle.HASH_SIZE * state.size
        fd = os.open(self.tree_path, os.O_RDWR)
        try:
            if os.fstat(fd).st_size != want:
                os.ftruncate(fd, want)  # records past the sidecar were never committed
            os.pwrite(fd, bytes(scan.leaves), want)
            os.fsync(fd)
        finally:
            os.close(fd)
        leaves = bytes(scan.leaves)
        tree.extend(
            leaves[i : i + merkle.HASH_SIZE] for i in range(0, len(leaves), merkle.HASH_SIZE)
        )
        new = TreeState(tree.size, scan.end, scan.last_start, scan.chain_head, state.lineage)
        _atomic_write(self.state_path, new.to_bytes(), 0o600)
        self._tree, self._state = tree, new

    def _rebuild_locked(self, log_size: int) -> TreeState:
        scan = _scan_log(self.log_path, log_size)
        self._check_scan(scan, log_size)
        stored = self._stored_leaves()
        common = min(len(stored), len(scan.leaves))
        if stored[:common] != scan.leaves[:common]:
            k = _first_difference(stored, scan.leaves)
            raise AuditError(
                f"line {k} of the log is not the line ingested into tree.bin: the log was "
                "changed after it was ingested; run 'nightcore audit verify'",
                code="AUDIT_TREE_MISMATCH",
            )
        if len(stored) > len(scan.leaves):
            raise AuditError(
                f"the log has {scan.count} whole lines but tree.bin ingested "
                f"{len(stored) // merkle.HASH_SIZE}: lines were removed after ingestion; "
                "run 'nightcore audit verify'",
                code="AUDIT_TREE_MISMATCH",
            )
        self._install_locked(bytes(scan.leaves), scan)
        return self.state

    def _install_locked(self, leaves: bytes, scan: _Scan) -> None:
        """Replace tree.bin and its sidecar with the leaves of a scan from offset 0."""
        if scan.count:
            self._fsync_log()
        _atomic_write(self.tree_path, merkle.FILE_MAGIC + leaves, 0o600)
        lineage = os.urandom(8).hex()
        state = TreeState(scan.count, scan.end, scan.last_start, scan.chain_head, lineage)
        _atomic_write(self.state_path, state.to_bytes(), 0o600)
        self._tree = _tree_of(scan)
        self._state = state
        self.rebuilds += 1

    def replace_locked(self, scan: _Scan) -> Path | None:
        """Adopt a verified scan of the log (from offset 0) if ``tree.bin`` disagrees with it.

        ``tree.bin`` agrees if its leaves and the scan's are prefixes of one another and, when
        it holds more, the log still reaches the offset it ingested (it grew since the scan).
        Otherwise the old file is kept aside as evidence and returned. A missing or unreadable
        tree is simply rebuilt (returns None).
        """
        stored = self._stored_leaves()
        state = self._read_state()
        common = min(len(stored), len(scan.leaves))
        diverged = stored[:common] != scan.leaves[:common] or (
            len(stored) > len(scan.leaves)
            and (state is None or state.offset > _log_size_locked(self.dir))
        )
        if not diverged and state is not None and self.tree_path.exists():
            return None  # sync carries on from tree.state
        aside: Path | None = None
        if diverged and self.tree_path.exists():
            aside = self.dir / f"{TREE_NAME}.mismatch-{_stamp()}"
            os.replace(self.tree_path, aside)
        self._install_locked(bytes(scan.leaves), scan)
        return aside


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    atomic_write(path, data, mode)


# --------------------------------------------------------------------------------------------
# Checkpoints: opening with the node key (pure)


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
    data: bytes, public_key: Ed25519PublicKey, origin: str, *, what: str = "checkpoint"
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


def load_node_public_key(pem: bytes) -> tuple[Ed25519PublicKey, str]:
    """The node's Ed25519 public key and its checkpoint origin, from ``node.pub.pem`` bytes."""
    from nightcore.trust.pubkey import PublicKey

    if len(pem) > MAX_PUBLIC_KEY_FILE:
        raise AuditError("public key file is too large", code="KEY_INVALID")
    sslib = PublicKey.from_pem(pem)  # KeyError_ (KEY_INVALID) if not a supported key
    key = sslib._crypto  # the cryptography key object the PEM was loaded into
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(
            f"the node key is {sslib.scheme}; signed-note checkpoints (C2SP) need an Ed25519 "
            "node key, so this node (FIPS mode?) keeps the hash chain and Merkle tree but "
            "cannot sign or verify checkpoints",
            code="CHECKPOINT_UNSUPPORTED_KEY",
        )
    return key, checkpoint_origin(str(sslib.keyid))


# --------------------------------------------------------------------------------------------
# Verification of a whole audit directory (reads files, writes nothing)


@dataclass
class VerifyReport:
    ok: bool
    entries: int
    head: str
    root: str = ""
    checkpoints: int = 0
    latest_checkpoint: int | None = None
    code: str | None = None
    message: str | None = None
    seq: int | None = None
    warnings: list[str] = field(default_factory=list)
    tree_status: str = "unknown"  # match | behind | ahead | missing | diverged | rebuilt
    scan: _Scan | None = field(default=None, repr=False)
    tree: merkle.TreeStore | None = field(default=None, repr=False)

    def fail(self, code: str, message: str, seq: int | None) -> VerifyReport:
        if self.ok:
            self.ok, self.code, self.message, self.seq = False, code, message, seq
        return self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "entries": self.entries,
            "head": self.head,
            "root": self.root,
            "checkpoints": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "tree": self.tree_status,
            "warnings": list(self.warnings),
        }
        if not self.ok:
            out.update(code=self.code, error=self.message, seq=self.seq)
        return out


def _stored_checkpoints(audit_dir: Path) -> list[tuple[str, int | None, bytes]]:
    """(label, size from the file name or None, bytes) of ``checkpoints/*.note`` and
    ``audit.tail``."""
    found: list[tuple[str, int | None, bytes]] = []
    cdir = audit_dir / CHECKPOINTS_DIR
    if cdir.is_dir():
        for p in sorted(cdir.iterdir()):
            if p.suffix != ".note":
                continue
            m = _NOTE_FILE.fullmatch(p.name)
            found.append(
                (f"{CHECKPOINTS_DIR}/{p.name}", int(m.group(1)) if m else None, _read_note(p))
            )
    tail = audit_dir / TAIL_NAME
    if tail.exists():
        found.append((TAIL_NAME, None, _read_note(tail)))
    return found


def _read_note(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(note.MAX_NOTE_SIZE + 1)


def _snapshot_size(audit_dir: Path) -> int:
    """The log's size at a moment no writer is mid-batch (the lock is held only for a stat)."""
    if not audit_dir.is_dir():
        return 0
    with _audit_lock(audit_dir):
        return _log_size_locked(audit_dir)


def verify_log(
    audit_dir: Path, public_key_pem: bytes | None, *, workers: int | None = None
) -> VerifyReport:
    """Recompute and check everything in one audit directory; the first problem is reported.

    Reads ``audit.jsonl`` up to its size at the start (taken under the audit lock, then read
    without blocking writers), ``tree.bin`` (only to compare: it is not trusted), every
    ``checkpoints/*.note`` and ``audit.tail``. ``public_key_pem`` is the node's
    ``node.pub.pem``; it is needed only if checkpoints exist. Writes nothing.
    """
    size = _snapshot_size(audit_dir)
    scan = _scan_log(audit_dir / LOG_NAME, size, workers=workers)
    report = VerifyReport(ok=True, entries=scan.count, head=scan.chain_head, scan=scan)
    leaves = bytes(scan.leaves)

    # tree.bin (derived, unauthenticated): where does it first disagree with the log?
    divergence: int | None = None
    tree_files = LogTree(audit_dir)
    stored = tree_files._stored_leaves()
    tree_file = (audit_dir / TREE_NAME).exists()
    common = min(len(stored), len(leaves))
    if not tree_file:
        report.tree_status = "missing"
    elif stored[:common] != leaves[:common]:
        divergence = _first_difference(stored, leaves)
        report.tree_status = "diverged"
    elif len(stored) > len(leaves):
        report.tree_status = "ahead"
    else:
        report.tree_status = "match" if len(stored) == len(leaves) else "behind"

    if scan.error is None and scan.torn:
        n = scan.count
        scan.error = AuditError(
            f"line {n}: torn tail (no newline): a write was interrupted; the next append "
            "moves it aside",
            code="AUDIT_TORN_TAIL",
        )
        scan.error_seq = n
    chain_error = scan.error

    tree = _tree_of(scan)
    report.tree = tree
    report.root = tree.root().hex()

    if chain_error is not None:
        message = chain_error.message
        if divergence is not None and divergence < (scan.error_seq or 0):
            message += f"; line {divergence} differs from the line ingested into tree.bin"
        truncated = _truncation(audit_dir, public_key_pem, scan.count)
        if chain_error.code == "AUDIT_TORN_TAIL" and truncated is not None:
            return report.fail("AUDIT_TRUNCATED", truncated, scan.count)
        return report.fail(chain_error.code, message, scan.error_seq)

    _check_checkpoints(report, audit_dir, public_key_pem, tree, divergence)
    if not report.ok:
        return report
    for seq, data in scan.events:
        problem = _event_problem(seq, data, tree)
        if problem is not None:
            return report.fail("CHECKPOINT_EVENT_MISMATCH", problem, seq)
    if divergence is not None:
        report.warnings.append(
            f"tree.bin disagrees with the log from line {divergence} (a line not yet covered by "
            "a checkpoint was changed after ingestion, or tree.bin was damaged)"
        )
    elif report.tree_status == "ahead":
        state = tree_files._read_state()
        if state is None or state.offset > _log_size_locked(audit_dir):  # not just growth
            report.warnings.append(
                f"tree.bin ingested {len(stored) // merkle.HASH_SIZE} lines but the log has "
                f"{scan.count}: lines not yet covered by a checkpoint were removed"
            )
    return report


def _truncation(audit_dir: Path, public_key_pem: bytes | None, entries: int) -> str | None:
    """A message if a validly signed stored checkpoint is larger than ``entries``."""
    if public_key_pem is None:
        return None
    try:
        key, origin = load_node_public_key(public_key_pem)
    except NightCoreError:
        return None
    for label, _named, data in _stored_checkpoints(audit_dir):
        try:
            cp = open_node_checkpoint(data, key, origin, what=label)
        except AuditError:
            continue
        if cp.size > entries:
            return (
                f"the log has {entries} whole lines but {label} signed a tree of {cp.size}: "
                f"lines {entries}..{cp.size - 1} were removed"
            )
    return None


def _check_checkpoints(
    report: VerifyReport,
    audit_dir: Path,
    public_key_pem: bytes | None,
    tree: merkle.TreeStore,
    divergence: int | None,
) -> None:
    stored = _stored_checkpoints(audit_dir)
    if not stored:
        return
    if public_key_pem is None:
        report.fail("NODE_KEY_MISSING", "checkpoints exist but no node public key was given", None)
        return
    try:
        key, origin = load_node_public_key(public_key_pem)
    except AuditError as exc:
        report.fail(exc.code, exc.message, None)
        return
    opened: list[tuple[str, int | None, SignedCheckpoint]] = []
    for label, named, data in stored:
        try:
            cp = open_node_checkpoint(data, key, origin, what=label)
        except AuditError as exc:
            report.fail(exc.code, exc.message, None)
            return
        opened.append((label, named, cp))
    # Smallest size first: the earliest point where the log and a signature disagree.
    opened.sort(key=lambda t: (t[2].size, t[0] == TAIL_NAME))
    for label, named, cp in opened:
        if named is not None and named != cp.size:
            report.fail(
                "CHECKPOINT_MALFORMED",
                f"{label} holds a checkpoint of size {cp.size} (renamed?)",
                None,
            )
            return
        if cp.size > tree.size:
            report.fail(
                "AUDIT_TRUNCATED",
                f"the log has {tree.size} lines but {label} signed a tree of {cp.size}: "
                f"lines {tree.size}..{cp.size - 1} were removed",
                tree.size,
            )
            return
        if not hmac.compare_digest(tree.root(cp.size), cp.root):
            changed = divergence is not None and divergence < cp.size
            report.fail(
                "CHECKPOINT_ROOT_MISMATCH",
                f"{label} is validly signed but the log's first {cp.size} lines have a "
                "different Merkle root: history before it was rewritten"
                + (f" (from line {divergence}, by tree.bin)" if changed else ""),
                divergence if changed else None,
            )
            return
    report.checkpoints = len({cp.size for _, _, cp in opened})  # audit.tail repeats one
    report.latest_checkpoint = max(cp.size for _, _, cp in opened)


def _event_problem(seq: int, data: Any, tree: merkle.TreeStore) -> str | None:
    size, root = data.get("size"), data.get("root")
    if type(size) is not int or not 0 <= size <= seq or not isinstance(root, str):
        return f"line {seq}: checkpoint event with an invalid size or root"
    if tree.root(size).hex() != root:
        return (
            f"line {seq}: checkpoint event records root {root[:16]}... for size {size}, "
            "but the log's root at that size differs: history before it was rewritten"
        )
    return None


# --------------------------------------------------------------------------------------------
# Proofs (pure, offline)


def _entry_leaf(entry: bytes) -> tuple[bytes, dict[str, Any]]:
    """An audit line given to a verifier: one optional trailing newline is not part of it."""
    line = entry[:-1] if entry.endswith(b"\n") else entry
    rec = parse_line(line, seq_hint=-1)
    return merkle.leaf_hash(line), rec


def verify_inclusion_proof(
    proof: bytes, entry: bytes, public_key_pem: bytes
) -> tuple[SignedCheckpoint, dict[str, Any]]:
    """Offline check of ``audit prove`` output: the tlog-proof, the audit line it proves, and
    the node's public key; nothing else. Returns the verified checkpoint and the entry."""
    key, origin = load_node_public_key(public_key_pem)
    parsed = note.parse_tlog_proof(proof)
    cp = open_node_checkpoint(parsed.checkpoint, key, origin)
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
    proof: bytes, old_note: bytes, public_key_pem: bytes
) -> ConsistencyProof:
    """Offline check that the signed checkpoint inside ``proof`` extends ``old_note``."""
    key, origin = load_node_public_key(public_key_pem)
    old = open_node_checkpoint(old_note, key, origin, what="old checkpoint")
    old_size, hashes, new_note = parse_consistency_proof(proof)
    new = open_node_checkpoint(new_note, key, origin, what="new checkpoint")
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


# --------------------------------------------------------------------------------------------
# The workspace's transparency log


class TransparencyLog:
    """Tree, checkpoints and proofs of one workspace's audit log (see the module docstring).

    Built from what it uses, never from a workspace: the workspace's :class:`Layout` (the audit
    directory and ``node.pub.pem``), the checkpoint key name (``[node] name``), a zero-argument
    callable returning the node signer (called only when a checkpoint is actually signed) and
    one returning the workspace's :class:`AuditLog` (for the ``checkpoint`` event). Without a
    signer the log is read-only: it syncs, verifies and proves against stored checkpoints, and
    refuses to sign one.

    Thread-safe: one in-process mutex plus the audit ``flock`` across processes. The audit lock
    is never held while appending the ``checkpoint`` event (the writer takes it itself).
    """

    def __init__(
        self,
        layout: Layout,
        *,
        key_name: str = "",
        signer: Callable[[], Any] | None = None,
        audit: Callable[[], AuditLog] | None = None,
    ) -> None:
        self.dir = layout.audit_dir
        self.node_pub_path = layout.node_pub_path
        self._key_name = key_name
        self._load_signer = signer
        self._audit = audit
        self.tree = LogTree(self.dir)
        self.checkpoints_dir = self.dir / CHECKPOINTS_DIR
        self.tail_path = self.dir / TAIL_NAME
        self._mutex = threading.RLock()
        self._signing_key: Ed25519PrivateKey | None = None
        # Memos keyed by the exact bytes read (never by path or stat): a changed file is a miss.
        self._public_key_memo: tuple[bytes, tuple[Ed25519PublicKey, str]] | None = None
        self._opened_memo: dict[tuple[bytes, bytes], SignedCheckpoint] = {}
        self._count_memo: tuple[int, int] | None = None  # (byte offset, lines before it)

    def audit_log(self) -> AuditLog:
        """The workspace's audit log (the one the ``checkpoint`` events go to)."""
        if self._audit is None:
            raise AuditError(
                "this transparency log is read-only (no audit log was given)", code="INTERNAL"
            )
        return self._audit()

    # -- keys ----------------------------------------------------------------------------------

    def public_key_pem(self) -> bytes:
        try:
            with self.node_pub_path.open("rb") as fh:
                return fh.read(MAX_PUBLIC_KEY_FILE + 1)
        except FileNotFoundError:
            raise AuditError("node.pub.pem is missing", code="NODE_KEY_MISSING") from None

    def public_key(self) -> tuple[Ed25519PublicKey, str]:
        _, key, origin = self._public_key_read()
        return key, origin

    def _public_key_read(self) -> tuple[bytes, Ed25519PublicKey, str]:
        """(PEM bytes read now, key, origin); parsed again only when the bytes changed."""
        pem = self.public_key_pem()
        memo = self._public_key_memo
        if memo is None or memo[0] != pem:
            memo = self._public_key_memo = (pem, load_node_public_key(pem))
        return pem, *memo[1]

    def _open_stored(self, path: Path, what: str) -> SignedCheckpoint:
        """A stored note verified with the node key; a note already verified with these exact
        bytes under this exact key is not verified again (the hot path of maybe_checkpoint)."""
        data = _read_note(path)
        pem, key, origin = self._public_key_read()
        cached = self._opened_memo.get((pem, data))
        if cached is not None:
            return cached
        cp = open_node_checkpoint(data, key, origin, what=what)
        if len(self._opened_memo) >= 4:
            self._opened_memo.clear()
        self._opened_memo[(pem, data)] = cp
        return cp

    @property
    def key_name(self) -> str:
        name = self._key_name
        if not note._valid_name(name):
            raise AuditError(
                f"node name {name!r} cannot be a signed-note key name (no spaces, no '+')",
                code="CHECKPOINT_KEY_NAME_INVALID",
            )
        return name

    def _signer(self) -> Ed25519PrivateKey:
        if self._signing_key is not None:
            return self._signing_key
        pem = self.public_key_pem()
        load_node_public_key(pem)  # CHECKPOINT_UNSUPPORTED_KEY for an ECDSA node key
        if self._load_signer is None:
            raise AuditError(
                "this transparency log is read-only (no node signer was given)", code="INTERNAL"
            )
        # The node signer, loaded now: a local key file is read once, with cryptography.
        signer = self._load_signer()
        private = getattr(signer, "_private", None)
        if not isinstance(private, Ed25519PrivateKey):
            raise AuditError(
                "the node signing key is not a local Ed25519 key; signed-note checkpoints need "
                "one (a KMS/HSM signer cannot produce C2SP Ed25519 note signatures here)",
                code="CHECKPOINT_UNSUPPORTED_KEY",
            )
        # The signer's loader already refused a key that does not match node.pub.pem
        # (NODE_KEY_MISMATCH).
        self._signing_key = private
        return private

    # -- state ---------------------------------------------------------------------------------

    def sync(self) -> int:
        """Bring the tree up to date with the log; returns its size."""
        with self._mutex:
            return self.tree.sync().size

    def _latest_locked(self) -> SignedCheckpoint | None:
        """The latest stored checkpoint, verified with the node key; None if there is none.

        ``audit.tail``: checkpoint() writes it before ``checkpoints/<size>.note``, so it is
        never older than a note (a crash between the two leaves a tail without its note, which
        the next checkpoint() writes). Only without a tail are the notes listed: a node signs
        one per ``nightcore run``, so that directory grows without bound.
        """
        try:
            return self._open_stored(self.tail_path, TAIL_NAME)
        except FileNotFoundError:
            pass
        try:
            names = os.listdir(self.checkpoints_dir)
        except FileNotFoundError:
            return None
        sizes = [int(m.group(1)) for n in names if (m := _NOTE_FILE.fullmatch(n))]
        if not sizes:
            return None
        label = f"{CHECKPOINTS_DIR}/{max(sizes)}.note"
        return self._open_stored(self.dir / label, label)

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        with self._mutex, _audit_lock(self.dir):
            return self._latest_locked()

    def _extends(self, cp: SignedCheckpoint) -> None:
        """Refuse unless the current tree extends ``cp`` (the node never signs a fork)."""
        tree = self.tree.tree
        if cp.size > tree.size:
            raise AuditError(
                f"the log has {tree.size} lines but checkpoint {cp.size} was signed: "
                f"lines {tree.size}..{cp.size - 1} were removed; run 'nightcore audit verify'",
                code="AUDIT_TRUNCATED",
            )
        if not hmac.compare_digest(tree.root(cp.size), cp.root):
            raise AuditError(
                f"the log's first {cp.size} lines no longer have the signed root of checkpoint "
                f"{cp.size}: history was rewritten; run 'nightcore audit verify'",
                code="CHECKPOINT_ROOT_MISMATCH",
            )

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoint(self, reason: str) -> SignedCheckpoint:
        """Sync, sign and store a checkpoint of the whole log, then log a ``checkpoint`` event.

        If the latest checkpoint already covers the whole log it is returned unchanged (and no
        event is appended).
        """
        if not isinstance(reason, str) or not _REASON_OK.fullmatch(reason):
            raise UsageError(f"a checkpoint reason is 1-{MAX_REASON} printable characters")
        with self._mutex:
            key = self._signer()
            key_name = self.key_name
            _, origin = self.public_key()
            with _audit_lock(self.dir):
                self.tree.sync_locked()
                tree = self.tree.tree
                latest = self._latest_locked()
                if latest is not None:
                    self._extends(latest)
                    kept = self.checkpoints_dir / f"{latest.size}.note"
                    if not kept.exists():  # a crash came between the tail and its note
                        _atomic_write(kept, latest.note)
                    if latest.size == tree.size:
                        return latest
                body = note.Checkpoint(origin, tree.size, tree.root()).body()
                signed = note.sign_note(body, key_name, key)
                cp = open_node_checkpoint(signed, key.public_key(), origin)
                # The tail first: it is what _latest_locked reads, and never older than a note.
                _atomic_write(self.tail_path, signed)
                _atomic_write(self.checkpoints_dir / f"{cp.size}.note", signed)
            # After signing and outside the lock: the event lands at seq >= cp.size.
            self.audit_log().append(
                CHECKPOINT_EVENT, {"size": cp.size, "root": cp.root.hex(), "reason": reason}
            )
            return cp

    def maybe_checkpoint(self, every: int = DEFAULT_CHECKPOINT_EVERY) -> SignedCheckpoint | None:
        """Checkpoint if at least ``every`` lines were appended since the latest checkpoint.

        Cheap when there is nothing to do: counts the newlines after the ingested offset and
        reads ``audit.tail``; the tree is loaded only when a checkpoint is due.
        """
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UsageError("checkpoint interval must be a positive integer")
        with self._mutex:
            with _audit_lock(self.dir):
                size = self._count_lines_locked()
                latest = self._latest_locked()
            if size - (latest.size if latest is not None else 0) < every:
                return None
            return self.checkpoint(f"every {every} entries")

    def _count_lines_locked(self) -> int:
        state = self.tree._read_state()
        log_size = _log_size_locked(self.dir)
        start, count = (state.offset, state.size) if state is not None else (0, 0)
        # The log only grows between checkpoints, so the newlines counted by the previous call
        # need not be counted again. (A shorter log makes the memo unusable; a rewritten one is
        # the business of checkpoint(), which re-checks the signed root.)
        memo = self._count_memo
        if memo is not None and start <= memo[0] <= log_size and memo[1] >= count:
            start, count = memo
        if start > log_size:
            start, count = 0, 0
        if log_size:
            with self.tree.log_path.open("rb") as fh:
                fh.seek(start)
                while chunk := fh.read(_READ_CHUNK):
                    count += chunk.count(b"\n")
                    start += len(chunk)
        self._count_memo = (start, count)
        return count

    # -- proofs --------------------------------------------------------------------------------

    def prove(self, seq: int) -> bytes:
        """A c2sp.org/tlog-proof@v1 of line ``seq`` against the latest checkpoint covering it
        (a new checkpoint is signed if none does)."""
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise AuditError(f"seq {seq!r} is not a log index", code="PROOF_INDEX_OUT_OF_RANGE")
        with self._mutex:
            with _audit_lock(self.dir):
                self.tree.sync_locked()
                size = self.tree.tree.size
                if seq >= size:
                    raise AuditError(
                        f"seq {seq} is not in the log ({size} entries)",
                        code="PROOF_INDEX_OUT_OF_RANGE",
                    )
                latest = self._latest_locked()
                if latest is not None:
                    self._extends(latest)
            if latest is None or latest.size <= seq:
                latest = self.checkpoint("prove")
            tree = self.tree.tree  # only grows: it has at least latest.size leaves
            proof = tree.inclusion_proof(seq, latest.size)
            merkle.verify_inclusion(tree.leaf_hash(seq), seq, latest.size, proof, latest.root)
            return note.format_tlog_proof(seq, proof, latest.note)

    def prove_at(self, seq: int, checkpoint: SignedCheckpoint) -> bytes:
        """A tlog-proof of line ``seq`` against a given (already verified) checkpoint."""
        with self._mutex:
            with _audit_lock(self.dir):
                self.tree.sync_locked()
            tree = self.tree.tree
            if not 0 <= seq < checkpoint.size <= tree.size:
                raise AuditError(
                    f"seq {seq} is not covered by checkpoint {checkpoint.size}",
                    code="PROOF_INDEX_OUT_OF_RANGE",
                )
            proof = tree.inclusion_proof(seq, checkpoint.size)
            merkle.verify_inclusion(
                tree.leaf_hash(seq), seq, checkpoint.size, proof, checkpoint.root
            )
            return note.format_tlog_proof(seq, proof, checkpoint.note)

    def entry(self, seq: int) -> bytes:
        """The bytes of line ``seq`` (no newline), checked against its leaf in the tree."""
        with self._mutex, _audit_lock(self.dir):
            self.tree.sync_locked()
            tree = self.tree.tree
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < tree.size:
                raise AuditError(
                    f"seq {seq} is not in the log ({tree.size} entries)",
                    code="PROOF_INDEX_OUT_OF_RANGE",
                )
            line = _read_line(self.tree.log_path, seq)
        if line is None or not hmac.compare_digest(merkle.leaf_hash(line), tree.leaf_hash(seq)):
            raise AuditError(
                f"line {seq} of the log is not the line ingested into the tree (changed after "
                "ingestion); run 'nightcore audit verify'",
                code="AUDIT_TREE_MISMATCH",
            )
        return line

    def consistency(self, old_note: bytes) -> ConsistencyProof:
        """Prove that the log (re-verified in full) extends an old signed checkpoint.

        The old checkpoint is checked against the recomputed tree first
        (``CONSISTENCY_FAILED`` / ``AUDIT_TRUNCATED``), then the rest of :meth:`verify`; the
        proof leads to a checkpoint of the whole log (signed now unless the latest covers it).
        """
        key, origin = self.public_key()
        old = open_node_checkpoint(old_note, key, origin, what="old checkpoint")
        with self._mutex:
            report = verify_log(self.dir, self.public_key_pem())
            if report.scan is not None and report.scan.error is None and not report.scan.torn:
                tree = report.tree
                assert tree is not None
                if old.size > tree.size:
                    raise AuditError(
                        f"the log has {tree.size} lines but the old checkpoint signed "
                        f"{old.size}: lines {tree.size}..{old.size - 1} were removed",
                        code="AUDIT_TRUNCATED",
                    )
                if not hmac.compare_digest(tree.root(old.size), old.root):
                    raise AuditError(
                        f"the log's first {old.size} lines do not have the root signed in the "
                        "old checkpoint: history was rewritten",
                        code="CONSISTENCY_FAILED",
                    )
            if not report.ok:
                raise AuditError(
                    report.message or "audit log verification failed", code=str(report.code)
                )
            self._adopt(report)
            # To the whole log as it is now (the latest checkpoint, if it already covers it).
            latest = self.checkpoint("consistency")
            proof = tuple(self.tree.tree.consistency_proof(old.size, latest.size))
            merkle.verify_consistency(old.size, latest.size, proof, old.root, latest.root)
            return ConsistencyProof(old.checkpoint, latest, proof)

    # -- verification --------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """:func:`verify_log` on this workspace; if the log verified and ``tree.bin`` disagrees
        with it (or is missing), ``tree.bin`` is rebuilt from the log (the old one kept aside)."""
        pem: bytes | None
        try:
            pem = self.public_key_pem()
        except AuditError:
            pem = None
        with self._mutex:
            report = verify_log(self.dir, pem)
            if report.ok:
                self._adopt(report)
            return report

    def _adopt(self, report: VerifyReport) -> None:
        if report.scan is None or report.scan.error is not None or report.scan.torn:
            return
        with _audit_lock(self.dir):
            aside = self.tree.replace_locked(report.scan)
        if aside is not None:
            report.tree_status = "rebuilt"
            report.warnings.append(
                f"tree.bin was rebuilt from the log; the old one is {aside.name}"
            )
        elif report.tree_status == "missing":
            report.tree_status = "rebuilt"


def _read_line(path: Path, seq: int) -> bytes | None:
    """Line ``seq`` of the log without its newline (None if the log has fewer whole lines)."""
    seen = 0
    with path.open("rb") as fh:
        carry = b""
        while chunk := fh.read(_READ_CHUNK):
            buf = carry + chunk
            n = buf.count(b"\n")
            if seen + n > seq:
                pos = 0
                for _ in range(seq - seen):
                    pos = buf.index(b"\n", pos) + 1
                return buf[pos : buf.index(b"\n", pos)]
            seen += n
            carry = buf[buf.rfind(b"\n") + 1 :]
    return None


# --------------------------------------------------------------------------------------------
# Entry points for the run pipeline

_LOGS: dict[Path, TransparencyLog] = {}
_LOGS_MUTEX = threading.Lock()


def transparency_log(
    layout: Layout,
    *,
    key_name: str,
    signer: Callable[[], Any],
    audit: Callable[[], AuditLog],
) -> TransparencyLog:
    """The process-wide :class:`TransparencyLog` of a workspace (its tree stays in memory).

    Keyed by the audit directory: the first caller's key name, signer and audit log are kept.
    """
    with _LOGS_MUTEX:
        log = _LOGS.get(layout.audit_dir)
        if log is None:
            log = _LOGS[layout.audit_dir] = TransparencyLog(
                layout, key_name=key_name, signer=signer, audit=audit
            )
        return log


def checkpoint_after_run(log: TransparencyLog) -> SignedCheckpoint:
    """Checkpoint after a run (the run pipeline calls this once per ``nightcore run``).

    Raises :class:`AuditError` (e.g. ``CHECKPOINT_UNSUPPORTED_KEY`` on an ECDSA node,
    ``AUDIT_TREE_MISMATCH`` / ``CHECKPOINT_ROOT_MISMATCH`` if the log was tampered with).
    """
    return log.checkpoint("run")


def maybe_checkpoint(
    log: TransparencyLog, every: int = DEFAULT_CHECKPOINT_EVERY
) -> SignedCheckpoint | None:
    """Checkpoint when ``every`` or more entries were appended since the latest checkpoint."""
    return log.maybe_checkpoint(every)
