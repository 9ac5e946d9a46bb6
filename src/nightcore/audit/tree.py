"""``tree.bin`` and its sidecar ``tree.state``: the Merkle tree of one audit directory, kept in
step with ``audit.jsonl`` under the writers' lock (rules 2 and 3 of :mod:`nightcore.audit.tlog`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nightcore.audit import merkle
from nightcore.audit.log import ZERO_HASH
from nightcore.audit.parallel import scan_log, tree_of
from nightcore.audit.scan import Scan, scan_file
from nightcore.canonical import canonical
from nightcore.errors import AuditError
from nightcore.fsio import atomic_write, file_lock, open_regular, read_regular_capped
from nightcore.layout import AUDIT_LOCK_NAME, AUDIT_LOG_NAME

__all__ = ["STATE_NAME", "TREE_NAME", "LogTree", "TreeState", "audit_lock", "log_size_locked"]

TREE_NAME: Final = "tree.bin"
STATE_NAME: Final = "tree.state"
_STATE_VERSION: Final = 1
MAX_STATE_BYTES: Final = 4096  # tree.state is one short JSON line
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_HEX16: Final = re.compile(r"[0-9a-f]{16}")
_PARSE_ERRORS: Final = frozenset({"AUDIT_LINE_MALFORMED", "AUDIT_NOT_CANONICAL"})


def log_size_locked(audit_dir: Path) -> int:
    try:
        return (audit_dir / AUDIT_LOG_NAME).stat().st_size
    except FileNotFoundError:
        return 0


@contextmanager
def audit_lock(audit_dir: Path) -> Iterator[None]:
    """``flock`` on ``audit.lock``: the writers' lock (a writer holds it for a whole batch)."""
    audit_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(audit_dir / AUDIT_LOCK_NAME):
        yield


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def first_difference(a: bytes | bytearray, b: bytes | bytearray) -> int:
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
        self.log_path = audit_dir / AUDIT_LOG_NAME
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
        with audit_lock(self.dir):
            return self.sync_locked()

    # -- loading -------------------------------------------------------------------------------

    def _read_state(self) -> TreeState | None:
        try:
            data = read_regular_capped(self.state_path, MAX_STATE_BYTES)
        except OSError:
            # Missing, or not a regular file of a sidecar's size (a FIFO, a link to a
            # device...): like a corrupt sidecar, the tree is rebuilt from the log.
            return None
        return TreeState.from_bytes(data)

    def _stored_leaves(self) -> bytes:
        """The whole leaf records of ``tree.bin`` (empty if missing or not a tree store)."""
        try:
            # Uncapped: a regular file's size bounds it (32 bytes a line, less than the log).
            with open_regular(self.tree_path) as fh:
                data = fh.read()
        except OSError:
            return b""  # missing, or not a regular file: not a tree store either
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
                with open_regular(self.tree_path) as fh:
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
        with open_regular(self.log_path) as fh:
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
        log_size = log_size_locked(self.dir)
        if state is None or tree is None or not self._tail_ok(state, tree, log_size):
            self._tree = self._state = None
            return self._rebuild_locked(log_size)
        self._tree, self._state = tree, state
        scan = scan_file(self.log_path, state.offset, log_size, state.size, state.head)
        self._check_scan(scan, log_size)
        if scan.count:
            self._append_locked(tree, state, scan)
        return self.state

    def _check_scan(self, scan: Scan, log_size: int) -> None:
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
        with open_regular(self.log_path) as fh:
            fh.seek(offset)
            return b"\n" in fh.read(log_size - offset)

    def _fsync_log(self) -> None:
        # A line reaches tree.bin only once it is durable in the log: a writer killed between its
        # write() and its fsync() leaves lines that a power loss could still take away.
        fd = os.open(self.log_path, os.O_RDONLY | os.O_NONBLOCK)  # never waits on a FIFO
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _append_locked(self, tree: merkle.TreeStore, state: TreeState, scan: Scan) -> None:
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
        atomic_write(self.state_path, new.to_bytes(), 0o600)
        self._tree, self._state = tree, new

    def _rebuild_locked(self, log_size: int) -> TreeState:
        scan = scan_log(self.log_path, log_size)
        self._check_scan(scan, log_size)
        stored = self._stored_leaves()
        common = min(len(stored), len(scan.leaves))
        if stored[:common] != scan.leaves[:common]:
            k = first_difference(stored, scan.leaves)
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

    def _install_locked(self, leaves: bytes, scan: Scan) -> None:
        """Replace tree.bin and its sidecar with the leaves of a scan from offset 0."""
        if scan.count:
            self._fsync_log()
        atomic_write(self.tree_path, merkle.FILE_MAGIC + leaves, 0o600)
        lineage = os.urandom(8).hex()
        state = TreeState(scan.count, scan.end, scan.last_start, scan.chain_head, lineage)
        atomic_write(self.state_path, state.to_bytes(), 0o600)
        self._tree = tree_of(scan)
        self._state = state
        self.rebuilds += 1

    def replace_locked(self, scan: Scan) -> Path | None:
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
            and (state is None or state.offset > log_size_locked(self.dir))
        )
        if not diverged and state is not None and self.tree_path.exists():
            return None  # sync carries on from tree.state
        aside: Path | None = None
        if diverged and self.tree_path.exists():
            aside = self.dir / f"{TREE_NAME}.mismatch-{_stamp()}"
            os.replace(self.tree_path, aside)
        self._install_locked(bytes(scan.leaves), scan)
        return aside
