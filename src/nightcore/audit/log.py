"""The hash-chained audit log: ``state/audit/audit.jsonl``.

One RFC 8785 canonical JSON object per line::

    {"data": {...}, "event": "verify", "node": "<node key id>", "prev": "<hex>",
     "seq": 0, "tenant": "hello", "ts": "2026-11-28T21:00:00.000000Z", "v": 1}

``prev`` is the SHA-256 of the previous line's bytes (without its newline); the first line's
``prev`` is 64 zeros. Each line is also a leaf of the RFC 9162 Merkle tree (its bytes
without the newline; leaf index = seq).

Rules that make it trustworthy:
- Writers serialise through ``flock`` on ``audit.lock`` (:func:`nightcore.fsio.hold_lock` on a
  descriptor kept open between appends, held for one batch); lines are built under the lock
  from the file's real last line, so concurrent processes never interleave or fork the chain.
- A batch of lines is written with one ``write`` and ``fsync``'d before ``append`` returns:
  an event is acknowledged only once durable.
- A torn tail (bytes after the last newline, or a last line that is not valid JSON, left by a
  crash mid-write) is moved aside to ``audit.jsonl.torn-<ts>`` and the recovery is itself
  logged: never silently dropped, never kept in the chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nightcore.canonical import canonical, parse_json
from nightcore.errors import AuditError, NightCoreError
from nightcore.fsio import hold_lock, open_regular

ZERO_HASH = "0" * 64
LINE_VERSION = 1
MAX_LINE_BYTES = 1024 * 1024
_FIELDS = {"v", "seq", "ts", "node", "event", "tenant", "data", "prev"}
_REQUIRED = _FIELDS - {"tenant"}


def now_ts() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Entry:
    seq: int
    line: bytes  # canonical bytes, no newline
    record: dict[str, Any]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.line).hexdigest()


@dataclass
class _Request:
    events: list[Event]
    entries: list[Entry] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


@dataclass(frozen=True)
class Event:
    event: str
    data: dict[str, Any]
    tenant: str | None = None


def parse_line(line: bytes, *, seq_hint: int) -> dict[str, Any]:
    """Strictly parse one audit line: canonical JSON with exactly the known fields."""
    try:
        rec = parse_json(
            line,
            max_bytes=MAX_LINE_BYTES,
            what=f"audit line {seq_hint}",
            code="AUDIT_LINE_MALFORMED",
        )
    except NightCoreError as exc:
        raise AuditError(exc.message, code="AUDIT_LINE_MALFORMED") from None
    if not isinstance(rec, dict) or not set(rec) >= _REQUIRED or not set(rec) <= _FIELDS:
        raise AuditError(
            f"audit line {seq_hint}: missing or unknown fields", code="AUDIT_LINE_MALFORMED"
        )
    if (
        not isinstance(rec["seq"], int)
        or isinstance(rec["seq"], bool)
        or not isinstance(rec["prev"], str)
        or not isinstance(rec["event"], str)
        or not isinstance(rec["data"], dict)
    ):
        raise AuditError(f"audit line {seq_hint}: mistyped fields", code="AUDIT_LINE_MALFORMED")
    try:
        again = canonical(rec)
    except NightCoreError:  # e.g. an integer outside the IEEE-754 exact range
        again = b""
    if again != line:
        raise AuditError(
            f"audit line {seq_hint}: not RFC 8785 canonical JSON", code="AUDIT_NOT_CANONICAL"
        )
    return rec


class AuditLog:
    """Appends to and reads one workspace's audit log."""

    def __init__(self, directory: Path, node_id: str) -> None:
        self.dir = directory
        self.path = directory / "audit.jsonl"
        self.lock_path = directory / "audit.lock"
        self.node_id = node_id
        # (file size, last line digest, next seq) as of our last look under the lock.
        self._cursor: tuple[int, str, int] | None = None
        self.recovered: list[Path] = []
        self._scan_pending = True  # look for unfinished torn-tail recoveries on first write
        # Group commit: threads of one process queue their batches; whichever thread holds
        # the writer lock writes every queued batch with one write() and one fsync().
        self._fds: tuple[int, int] | None = None  # (lock fd, log fd), kept between appends
        self._queue: list[_Request] = []
        self._queue_lock = threading.Lock()
        self._writer_lock = threading.Lock()

    # -- writing -----------------------------------------------------------------------

    def append(self, event: str, data: dict[str, Any], tenant: str | None = None) -> Entry:
        return self.append_many([Event(event, data, tenant)])[0]

    def append_many(self, events: list[Event]) -> list[Entry]:
        """Append ``events`` as consecutive lines; returns once they are durable.

        Concurrent callers in one process are group-committed: one ``fsync`` may cover the
        batches of several threads, and no caller returns before its own lines are durable.
        """
        if not events:
            return []
        req = _Request(list(events))
        with self._queue_lock:
            self._queue.append(req)
        with self._writer_lock:
            if not req.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                flat = [ev for r in batch for ev in r.events]
                try:
                    entries = self._write(flat)
                except BaseException as exc:  # noqa: BLE001 - re-raised in each caller
                    if len(batch) == 1:
                        req.error, req.done = exc, True
                    else:
                        # Nothing was written (lines are built before the write): retry each
                        # caller alone so one bad event cannot fail its neighbours.
                        for r in batch:
                            try:
                                r.entries = self._write(r.events)
                            except BaseException as one:  # noqa: BLE001 - handed to its caller
                                r.error = one
                            r.done = True
                else:
                    pos = 0
                    for r in batch:
                        r.entries = entries[pos : pos + len(r.events)]
                        pos += len(r.events)
                        r.done = True
        if req.error is not None:
            raise req.error
        return req.entries

    @contextmanager
    def _locked(self) -> Iterator[int]:
        """Hold the writer flock; yields the log fd. Both descriptors name the current files.

        The descriptors are kept between appends (opening files is the dominant cost of a
        small durable append here), so the lock is :func:`~nightcore.fsio.hold_lock` on the
        kept descriptor rather than a ``file_lock`` that opens and closes the file each time;
        both are re-opened whenever the path names another inode.
        """
        while True:
            if self._fds is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                self._fds = (lock_fd, -1)
            lock_fd = self._fds[0]
            with hold_lock(lock_fd):
                try:
                    same_lock = os.stat(self.lock_path).st_ino == os.fstat(lock_fd).st_ino
                except FileNotFoundError:
                    same_lock = False
                if same_lock:
                    yield self._log_fd()
                    return
            self.close()  # the lock file was replaced: lock the new one instead

    def _log_fd(self) -> int:
        """The log's descriptor, re-opened if the path names another file (lock held)."""
        assert self._fds is not None
        lock_fd, fd = self._fds
        try:
            same_log = fd >= 0 and os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_log = False
        if not same_log:
            if fd >= 0:
                os.close(fd)
            fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | os.O_NOCTTY, 0o600
            )
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                # A FIFO would swallow (or block) the events, a link to /dev/null or /dev/zero
                # would lose them: nothing is recorded anywhere but in a regular file.
                os.close(fd)
                self._fds = (lock_fd, -1)
                raise AuditError(
                    f"{self.path} is not a regular file; no event can be recorded",
                    code="AUDIT_INVALID",
                )
            os.set_blocking(fd, True)
            self._fds = (lock_fd, fd)
            self._cursor = None
        return fd

    def __del__(self) -> None:
        # The kept descriptors are plain ints: without this a dropped log would leak them.
        self.close()

    def close(self) -> None:
        fds: tuple[int, int] | None = getattr(self, "_fds", None)
        if fds is not None:
            self._fds = None
            for fd in fds:
                if fd >= 0:
                    os.close(fd)

    def _write(self, events: list[Event]) -> list[Entry]:
        with self._locked() as fd:
            size, prev, seq = self._tail_state(fd)
            # A recovered torn tail is itself evidence: log it ahead of the new events.
            pending = self._pending_recoveries(fd, size) if self._scan_pending else []
            recovery = [
                Event("audit_torn_tail_recovered", info) for _, info in pending if info is not None
            ]
            events = recovery + list(events)
            entries: list[Entry] = []
            out = bytearray()
            for ev in events:
                rec: dict[str, Any] = {
                    "v": LINE_VERSION,
                    "seq": seq,
                    "ts": now_ts(),
                    "node": self.node_id,
                    "event": ev.event,
                    "data": ev.data,
                    "prev": prev,
                }
                if ev.tenant is not None:
                    rec["tenant"] = ev.tenant
                line = canonical(rec)
                if len(line) > MAX_LINE_BYTES:
                    raise AuditError(
                        f"audit event {ev.event} is larger than {MAX_LINE_BYTES} bytes",
                        code="AUDIT_LINE_TOO_LARGE",
                    )
                entry = Entry(seq, line, rec)
                entries.append(entry)
                out += line + b"\n"
                prev = entry.digest
                seq += 1
            written = os.write(fd, bytes(out))
            if written != len(out):
                raise AuditError("short write to the audit log", code="AUDIT_WRITE_FAILED")
            os.fsync(fd)
            self._cursor = (size + len(out), prev, seq)
            self._finish_recoveries(pending)
            return entries[len(recovery) :]

    def _tail_state(self, fd: int) -> tuple[int, str, int]:
        size = os.fstat(fd).st_size
        if self._cursor is not None and self._cursor[0] == size:
            return self._cursor
        if size == 0:
            return (0, ZERO_HASH, 0)
        last_byte = os.pread(fd, 1, size - 1)
        if last_byte != b"\n":
            size = self._move_torn_tail(fd, size)
            if size == 0:
                return (0, ZERO_HASH, 0)
        last = _last_line(fd, size)
        try:
            rec = parse_line(last, seq_hint=-1)
        except AuditError:
            # A newline-terminated but unparsable last line is also a torn write.
            size = self._move_torn_tail(fd, size, whole_last_line=True)
            if size == 0:
                return (0, ZERO_HASH, 0)
            last = _last_line(fd, size)
            rec = parse_line(last, seq_hint=-1)
        return (size, hashlib.sha256(last).hexdigest(), int(rec["seq"]) + 1)

    def _move_torn_tail(self, fd: int, size: int, *, whole_last_line: bool = False) -> int:
        head = size - 1 if whole_last_line else size
        start = _line_start(fd, head)
        torn = os.pread(fd, size - start, start)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        # Crash-safe in three durable steps: (1) the torn bytes go to a ``.pending`` file,
        # (2) the log is truncated, (3) the recovery event is appended, then the file loses
        # its ``.pending`` suffix. A crash anywhere leaves a ``.pending`` file that the next
        # writer finishes: it logs the event unless the log's tail already names the file.
        aside = self.dir / f"audit.jsonl.torn-{stamp}{PENDING_SUFFIX}"
        afd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(afd, torn)
            os.fsync(afd)
        finally:
            os.close(afd)
        _fsync_dir(self.dir)
        os.ftruncate(fd, start)
        os.fsync(fd)
        self._scan_pending = True
        self._cursor = None
        return start

    def _pending_recoveries(self, fd: int, size: int) -> list[tuple[Path, dict[str, Any] | None]]:
        """Unfinished recoveries: (pending file, event data, or None if already logged)."""
        self._scan_pending = False
        files = sorted(self.dir.glob(f"audit.jsonl.torn-*{PENDING_SUFFIX}"))
        if not files:
            return []
        tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
        out: list[tuple[Path, dict[str, Any] | None]] = []
        for path in files:
            final = path.name.removesuffix(PENDING_SUFFIX)
            with open_regular(path, follow=False) as fh:  # named by a glob of the audit dir
                data = fh.read()
            logged = f'"moved_to":"{final}"'.encode() in tail
            out.append(
                (
                    path,
                    None
                    if logged
                    else {
                        "moved_to": final,
                        "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    },
                )
            )
        return out

    def _finish_recoveries(self, pending: list[tuple[Path, dict[str, Any] | None]]) -> None:
        for path, _info in pending:
            final = path.with_name(path.name.removesuffix(PENDING_SUFFIX))
            os.replace(path, final)
            self.recovered.append(final)
        if pending:
            _fsync_dir(self.dir)

    # -- reading -----------------------------------------------------------------------

    def iter_lines(self) -> Iterator[bytes]:
        if not self.path.exists():
            return
        with open_regular(self.path) as fh:
            yield from fh

    def entries(self) -> Iterator[Entry]:
        for i, raw in enumerate(self.iter_lines()):
            line = raw[:-1] if raw.endswith(b"\n") else raw
            yield Entry(i, line, json.loads(line))


PENDING_SUFFIX = ".pending"


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _line_start(fd: int, end: int) -> int:
    """Offset just after the last newline before ``end`` (0 if none)."""
    pos = end
    while pos > 0:
        lo = max(0, pos - 4096)
        idx = os.pread(fd, pos - lo, lo).rfind(b"\n")
        if idx >= 0:
            return lo + idx + 1
        pos = lo
    return 0


def _last_line(fd: int, size: int) -> bytes:
    """The last newline-terminated line of the first ``size`` bytes, without its newline."""
    start = _line_start(fd, size - 1)
    return os.pread(fd, size - 1 - start, start)


@dataclass(frozen=True)
class ChainReport:
    entries: int
    head: str  # digest of the last line
    torn_tail: bool


def verify_chain(lines: Iterator[bytes]) -> ChainReport:
    """Check every line parses, is canonical, and chains to its predecessor by seq and hash.

    Raises AuditError naming the first bad line (0-based seq) with a specific code.
    """
    prev = ZERO_HASH
    n = 0
    torn = False
    for raw in lines:
        if not raw.endswith(b"\n"):
            torn = True
            raise AuditError(
                f"line {n}: torn tail (no newline): a write was interrupted", code="AUDIT_TORN_TAIL"
            )
        line = raw[:-1]
        rec = parse_line(line, seq_hint=n)
        if rec["seq"] != n:
            raise AuditError(
                f"line {n}: seq is {rec['seq']}, expected {n} "
                "(a line was deleted, inserted or reordered)",
                code="AUDIT_SEQ_GAP",
            )
        if rec["prev"] != prev:
            raise AuditError(
                f"line {n}: prev does not match the previous line's hash "
                "(an earlier line was edited, deleted or reordered)",
                code="AUDIT_CHAIN_BROKEN",
            )
        prev = hashlib.sha256(line).hexdigest()
        n += 1
    return ChainReport(entries=n, head=prev, torn_tail=torn)
