"""One streaming pass over the audit log, incremental: :class:`AuditScanner`.

The report must stay fast for 10^4 tenants and 10^6 audit lines, so the scanner never parses
every line. Each line is classified by byte searches on its canonical (RFC 8785, sorted keys)
form: the top-level ``event``, ``tenant``, ``prev``, ``seq`` and ``ts`` keys all come *after*
``data``, and a string value cannot contain an unescaped ``"``, so the *last* occurrence of
``"event":"`` is the top-level one, and a ``"tenant":"`` after it is the top-level tenant.
Only the lines the report shows are parsed, at the end: each tenant's latest decision
(``verify`` / ``admit`` / ``admission_denied``) and latest ``run_outcome``, the last few runs
and events, and the rare ``cordon`` / ``checkpoint`` lines.

With ``merkle=True`` the RFC 9162 Merkle tree is folded along the way (a compact stack of
perfect-subtree roots, O(log n) memory) so that the root at the size of every ``checkpoint``
event, and at any size asked for, can be compared with the signed checkpoints: that covers
every line up to the latest checkpoint. With ``chain=True`` each line from ``chain_from`` on
(the lines no checkpoint covers yet) has its ``prev`` checked against the SHA-256 of the line
before it, as ``verify_chain`` does, without the strict canonical re-serialisation.
This is the report's *quick* check; ``nightcore audit verify`` (``verify_log``) is the full
one. The byte searches are those of :mod:`nightcore.audit.lines` and the hashing is
:mod:`nightcore.audit.merkle`'s (:func:`~nightcore.audit.merkle.compact_extend`): neither is
written twice.

``update()`` reads only what was appended since the last call, so the live console follows a
growing log in O(new lines). If the file was replaced, shrank, or the last consumed line
changed (torn-tail recovery), the scanner starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nightcore.audit.lines import event_of, is_checkpoint, prev_chain, record_of, tenant_of, ts_of
from nightcore.audit.merkle import EMPTY_ROOT, compact_extend, compact_root
from nightcore.fsio import open_regular

__all__ = ["EMPTY_ROOT", "AuditScanner", "Boundary", "CheckpointEvent", "Hasher", "loads"]

ZERO_HEX = b"0" * 64
DECISION_EVENTS = frozenset({b"verify", b"admit", b"admission_denied"})
CORDON_EVENTS = frozenset({b"cordon", b"uncordon"})
MAX_ROOTS = 4096
STATE_FORMAT = 1  # of export(): bump on any change to what the scan keeps or how
# A first read of at least this many bytes hashes in a worker process (2 SHA-256 per line hold
# the GIL: lines are short), while this process classifies the same lines.
PARALLEL_MIN_BYTES = 32 * 1024 * 1024

# Per-tenant state (a list, for speed): first seq, first ts, latest decision line, latest
# run_outcome line, number of run outcomes.
FIRST_SEQ, FIRST_TS, DECISION, OUTCOME, RUNS = range(5)


@dataclass(frozen=True)
class Boundary:
    """``--diff SINCE``: lines before ``seq`` (a checkpoint size) or with ``ts`` <= ``ts``."""

    label: str
    seq: int | None = None
    ts: bytes | None = None  # the audit log's own ts format, so bytes compare like times


@dataclass
class CheckpointEvent:
    seq: int  # where the event line is
    size: int
    root: str  # as recorded in the event
    computed: str | None  # the Merkle root of the first ``size`` lines, if the scan had it


# A parsed audit record with a dict ``data``, or None (for display: see ``record_of``).
loads = record_of


_BATCH = 4096  # lines hashed per call into the shared core


class Hasher:
    """The quick check's hashing: hash chain from ``chain_from`` on, and the Merkle tree.

    Fed every line in order (in the scanning process, or in a worker process for a big log).
    Lines are hashed in batches (:func:`~nightcore.audit.lines.prev_chain`,
    :func:`~nightcore.audit.merkle.compact_extend`): :meth:`flush` before reading ``head``,
    ``stack``, ``roots`` or ``chain_error`` (the scanner does at the end of each read).
    """

    def __init__(
        self, *, chain: bool, merkle: bool, chain_from: int = 0, sizes: Iterable[int] = ()
    ) -> None:
        self.chain = chain
        self.merkle = merkle
        self.chain_from = chain_from
        self._hash_from = max(0, chain_from - 1)  # the line before: its hash is the next prev
        self.sizes = set(sizes)
        self.head = ZERO_HEX
        self.stack: list[bytes] = []
        self.roots: dict[int, bytes] = {}
        self.chain_error: tuple[int, str, str] | None = None
        self.mismatch: CheckpointEvent | None = None
        self.last_checkpoint: CheckpointEvent | None = None
        self._pending: list[bytes] = []
        self._first = 0  # the index of _pending[0]

    def feed(self, line: bytes, n: int, checkpoint: bool) -> None:
        if checkpoint and self.merkle:
            self.flush()  # the event covers exactly the lines before it
            self._checkpoint_event(line, n)
        pending = self._pending
        if not pending:
            self._first = n
        pending.append(line)
        if len(pending) >= _BATCH or n + 1 in self.sizes:
            self.flush()
            if self.merkle and n + 1 in self.sizes:
                self.roots[n + 1] = compact_root(self.stack)

    def flush(self) -> None:
        """Hash the lines fed since the last flush."""
        lines, first = self._pending, self._first
        if not lines:
            return
        self._pending = []
        if self.chain:
            skip = max(0, self._hash_from - first)
            if skip < len(lines):
                self.head, bad = prev_chain(
                    lines[skip:] if skip else lines, first + skip, self.head, self.chain_from
                )
                if bad is not None and self.chain_error is None:
                    self.chain_error = (
                        bad,
                        "AUDIT_CHAIN_BROKEN",
                        f"line {bad}: prev does not match the previous line's hash "
                        "(a line was edited, deleted, inserted or reordered)",
                    )
        if self.merkle:
            compact_extend(self.stack, lines, first)

    def _checkpoint_event(self, line: bytes, n: int) -> None:
        """A ``checkpoint`` event logged right after signing covers exactly the lines before
        it: its root must be the tree's root there."""
        rec = loads(line)
        data = rec["data"] if rec else {}
        size, root = data.get("size"), data.get("root")
        if not isinstance(size, int) or isinstance(size, bool) or not isinstance(root, str):
            return
        computed: bytes | None = None
        if size == n:
            computed = self.roots[size] = compact_root(self.stack)
        elif size in self.roots:
            computed = self.roots[size]
        if len(self.roots) > MAX_ROOTS:  # only recent sizes matter: drop the oldest half
            for old in sorted(self.roots)[: MAX_ROOTS // 2]:
                del self.roots[old]
        ev = CheckpointEvent(n, size, root, computed.hex() if computed is not None else None)
        self.last_checkpoint = ev
        if ev.computed is not None and ev.computed != root and self.mismatch is None:
            self.mismatch = ev

    def state_at(self, n: int) -> dict[str, Any] | None:
        """What a later scan needs to go on from here, fed the first ``n`` lines (None after a
        broken chain or a mismatched checkpoint event: such a log is always scanned whole).

        Roots at sizes of ``n`` and above are left out: they only exist because this scan asked
        for them (``sizes``), and a later scan asks for its own.
        """
        self.flush()
        if self.chain_error is not None or self.mismatch is not None:
            return None
        return {
            "stack": list(self.stack),
            "roots": {k: v for k, v in self.roots.items() if k < n},
        }

    # -- across a process boundary -------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        self.flush()
        return {
            "head": self.head.decode(),
            "stack": [h.hex() for h in self.stack],
            "roots": {str(k): v.hex() for k, v in self.roots.items()},
            "chain_error": self.chain_error,
            "mismatch": None if self.mismatch is None else vars(self.mismatch),
        }

    def adopt(self, doc: dict[str, Any]) -> None:
        self.head = str(doc["head"]).encode()
        self.stack = [bytes.fromhex(h) for h in doc["stack"]]
        self.roots = {int(k): bytes.fromhex(v) for k, v in doc["roots"].items()}
        err = doc["chain_error"]
        self.chain_error = (int(err[0]), str(err[1]), str(err[2])) if err else None
        self.mismatch = CheckpointEvent(**doc["mismatch"]) if doc["mismatch"] else None


_WORKER_CODE = "from nightcore.dashboard.scan import _hash_worker_main; _hash_worker_main()"


def _hash_worker_main() -> None:
    """Worker process: hash the first ``end`` bytes of the log; args and result are JSON."""
    import sys

    args = json.loads(sys.stdin.readline())
    hasher = Hasher(
        chain=args["chain"],
        merkle=args["merkle"],
        chain_from=args["chain_from"],
        sizes=args["sizes"],
    )
    end, n, offset = int(args["end"]), 0, 0
    snapshot_at = args.get("snapshot_at")
    snapshot: dict[str, Any] | None = None
    with open_regular(args["path"], buffering=1 << 20) as fh:
        for raw in fh:
            if offset >= end or raw[-1:] != b"\n":
                break
            if n == snapshot_at:
                snapshot = _state_to_json(hasher.state_at(n))
            line = raw[:-1]
            hasher.feed(line, n, is_checkpoint(line))
            offset += len(raw)
            n += 1
    if n == snapshot_at:
        snapshot = _state_to_json(hasher.state_at(n))
    doc = {"count": n, "offset": offset, "snapshot": snapshot, **hasher.to_json()}
    sys.stdout.write(json.dumps(doc))


def _state_to_json(state: dict[str, Any] | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {
        "stack": [h.hex() for h in state["stack"]],
        "roots": {str(k): v.hex() for k, v in state["roots"].items()},
    }


def _state_from_json(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    return {
        "stack": [bytes.fromhex(h) for h in doc["stack"]],
        "roots": {int(k): bytes.fromhex(v) for k, v in doc["roots"].items()},
    }


class AuditScanner:
    def __init__(
        self,
        path: Path,
        *,
        chain: bool = True,
        merkle: bool = True,
        since: Boundary | None = None,
        recent_runs: int = 200,
        recent_events: int = 40,
        keep: int = 100,
        merkle_sizes: Iterable[int] = (),
        chain_from: int = 0,
        parallel_min_bytes: int | None = PARALLEL_MIN_BYTES,
        snapshot_at: int | None = None,
    ) -> None:
        self.path = path
        self.chain = chain
        self.chain_from = chain_from
        self.merkle = merkle
        self.since = since
        self._recent_runs = recent_runs
        self._recent_events = recent_events
        self._keep = keep
        self.merkle_sizes = set(merkle_sizes)
        self.parallel_min_bytes = parallel_min_bytes
        self.resets = 0
        self.used_worker = False
        # Between processes (see :meth:`export` and :meth:`resume`): the state after the first
        # ``snapshot_at`` lines, and the state this scan started from.
        self.snapshot_at = snapshot_at
        self._pending: dict[str, Any] | None = None
        self.resumed_at: int | None = None
        self.resumed_hashed = False
        self._reset()

    # -- state -------------------------------------------------------------------------

    def _reset(self) -> None:
        self.offset = 0
        self.count = 0
        self.last_line = b""
        self.torn_bytes = 0
        self._ino: int | None = None
        self.hasher: Hasher | None = None
        if self.chain or self.merkle:
            self.hasher = Hasher(
                chain=self.chain,
                merkle=self.merkle,
                chain_from=self.chain_from,
                sizes=self.merkle_sizes,
            )
        self.checkpoint_event_count = 0
        self.tenants: dict[bytes, list[Any]] = {}
        self.invalid: deque[bytes] = deque(maxlen=self._keep)
        self.cordon_events: deque[bytes] = deque(maxlen=self._keep)
        self.runs: deque[bytes] = deque(maxlen=self._recent_runs)
        self.events: deque[bytes] = deque(maxlen=self._recent_events)
        self.event_counts: dict[bytes, int] = {}
        self.run_outcomes = 0
        # --diff: the per-tenant (decision, outcome) lines as of the boundary.
        self.before: dict[bytes, tuple[bytes | None, bytes | None]] | None = None
        self.boundary_count: int | None = None
        self.boundary_runs = 0
        # For callers that keep the scanner (the live console): views built from a tenant's
        # (decision, outcome) lines, reused while those lines are unchanged.
        self.view_cache: dict[bytes, tuple[Any, Any, int, Any]] = {}
        self.snapshot: dict[str, Any] | None = None
        # SHA-256 of the bytes consumed so far, while a snapshot is still to be taken.
        self._digest: Any = hashlib.sha256() if self.snapshot_at is not None else None

    @property
    def size(self) -> int:
        """Bytes of whole lines consumed."""
        return self.offset

    @property
    def head(self) -> str:
        """SHA-256 of the last line consumed (the chain head)."""
        return hashlib.sha256(self.last_line).hexdigest() if self.count else ZERO_HEX.decode()

    @property
    def chain_error(self) -> tuple[int, str, str] | None:
        if self.hasher is None:
            return None
        self.hasher.flush()
        return self.hasher.chain_error

    @property
    def checkpoint_mismatch(self) -> CheckpointEvent | None:
        if self.hasher is None:
            return None
        self.hasher.flush()
        return self.hasher.mismatch

    def merkle_root(self) -> bytes:
        """Root of the lines consumed so far (``merkle=True`` only)."""
        if self.hasher is None:
            return EMPTY_ROOT
        self.hasher.flush()
        return compact_root(self.hasher.stack)

    def root_at(self, size: int) -> bytes | None:
        if self.hasher is None or not self.merkle:
            return None
        self.hasher.flush()
        if size == self.count:
            return self.merkle_root()
        return self.hasher.roots.get(size)

    # -- reading -----------------------------------------------------------------------

    def update(self) -> bool:
        """Consume the whole lines appended since the last call; True if any were."""
        try:
            fh = open_regular(self.path, buffering=1 << 20)  # a FIFO: OSError, not a hang
        except FileNotFoundError:
            if self.offset:
                self._reset()
                self.resets += 1
                return True
            return False
        with fh:
            st = os.fstat(fh.fileno())
            if self.offset and (
                st.st_ino != self._ino or st.st_size < self.offset or not self._tail_ok(fh)
            ):
                self._reset()
                self.resets += 1
            self._ino = st.st_ino
            before = self.count
            if self._pending is not None:
                state, self._pending = self._pending, None
                if self.offset == 0 and self._prefix_matches(fh, st.st_size, state):
                    self._apply(state)
            if st.st_size == self.offset:
                self.torn_bytes = 0
                return self.count != before
            if (
                self.offset == 0
                and self.hasher is not None
                and self.parallel_min_bytes is not None
                and st.st_size >= self.parallel_min_bytes
            ):
                self._consume_with_worker(fh, st.st_size)
            fh.seek(self.offset)
            self._consume_split(fh)
            return self.count != before

    # -- between processes ---------------------------------------------------------------

    def _params(self) -> tuple[int, ...]:
        return (STATE_FORMAT, self._recent_runs, self._recent_events, self._keep, MAX_ROOTS)

    def export(self) -> dict[str, Any] | None:
        """The scan state after the lines consumed so far, as plain values (see :meth:`resume`);
        None if the hash checks found a problem there."""
        hashed: dict[str, Any] | None = None
        if self.hasher is not None:
            hashed = self.hasher.state_at(self.count)
            if hashed is None:
                return None
        return {
            "params": self._params(),
            "count": self.count,
            "offset": self.offset,
            "last_line": self.last_line,
            "hashed": hashed,
            "checkpoint_event_count": self.checkpoint_event_count,
            "tenants": {k: list(v) for k, v in self.tenants.items()},
            "invalid": list(self.invalid),
            "cordon_events": list(self.cordon_events),
            "runs": list(self.runs),
            "events": list(self.events),
            "event_counts": dict(self.event_counts),
            "run_outcomes": self.run_outcomes,
        }

    def resume(self, state: dict[str, Any]) -> bool:
        """Start from ``state`` (a :attr:`snapshot` of an earlier scan of this log, with the
        SHA-256 of the bytes it had consumed) instead of from line 0.

        Accepted only where it is exactly what this scan would compute itself: same parameters,
        no ``--diff`` boundary, and the hash checks asked for start at or after its end (the
        chain from ``chain_from``, the Merkle roots at ``merkle_sizes``; the Merkle tree of its
        lines is in the state). The first :meth:`update` re-hashes that many bytes of the file
        and starts from line 0 unless they are the same bytes.
        """
        n = state.get("count")
        if (
            self.offset
            or self.since is not None
            or state.get("params") != self._params()
            or not isinstance(n, int)
            or not isinstance(state.get("digest"), bytes)
            or (self.snapshot_at is not None and self.snapshot_at < n)
        ):
            return False
        if self.hasher is not None and (
            state.get("hashed") is None
            or (self.chain and self.chain_from < n)
            or any(size < n for size in self.merkle_sizes)
        ):
            return False
        self._pending = state
        return True

    def _prefix_matches(self, fh: IO[bytes], size: int, state: dict[str, Any]) -> bool:
        end = state["offset"]
        if not isinstance(end, int) or end > size:
            return False
        digest = _prefix_digest(fh.fileno(), end)
        if digest is None:
            return False
        if digest.digest() != state["digest"]:
            return False
        if self._digest is not None:
            self._digest = digest  # goes on over the lines consumed next
        return True

    def _apply(self, state: dict[str, Any]) -> None:
        n = state["count"]
        self.count, self.offset, self.last_line = n, state["offset"], state["last_line"]
        self.checkpoint_event_count = state["checkpoint_event_count"]
        self.tenants = state["tenants"]
        self.invalid.extend(state["invalid"])
        self.cordon_events.extend(state["cordon_events"])
        self.runs.extend(state["runs"])
        self.events.extend(state["events"])
        self.event_counts = state["event_counts"]
        self.run_outcomes = state["run_outcomes"]
        hasher = self.hasher
        if hasher is not None:
            hashed = state["hashed"]
            hasher.stack = list(hashed["stack"])
            hasher.roots = dict(hashed["roots"])
            if n in hasher.sizes:  # a scan from line 0 stores it after line n - 1
                hasher.roots[n] = compact_root(hasher.stack)
            hasher.head = hashlib.sha256(self.last_line).hexdigest().encode() if n else ZERO_HEX
        self.resumed_at = n
        self.resumed_hashed = state["hashed"] is not None

    def _consume_split(self, fh: IO[bytes], limit: int | None = None) -> None:
        """:meth:`_consume`, taking the :attr:`snapshot` after ``snapshot_at`` lines."""
        at = self.snapshot_at
        if at is None or self._digest is None or self.count > at:
            self._consume(fh, limit)
            return
        if self.count < at:
            self._consume(fh, limit, stop=at, digest=self._digest)
            if self.count < at:
                return
        snapshot = self.export()
        if snapshot is not None:
            snapshot["digest"] = self._digest.digest()
        self.snapshot, self._digest = snapshot, None
        self._consume(fh, limit)

    def _consume_with_worker(self, fh: IO[bytes], size: int) -> None:
        """A big first read: classify here while a worker process hashes the same bytes."""
        import subprocess
        import sys

        hasher = self.hasher
        assert hasher is not None
        end = _whole_lines_end(fh, size)
        if end == 0:
            return
        args = {
            "path": str(self.path),
            "end": end,
            "chain": hasher.chain,
            "merkle": hasher.merkle,
            "chain_from": hasher.chain_from,
            "sizes": sorted(hasher.sizes),
            "snapshot_at": self.snapshot_at if self._digest is not None else None,
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            return  # hash in this process instead
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(args).encode() + b"\n")
        proc.stdin.close()
        self.hasher = None
        snapshot_pending = self._digest is not None
        try:
            fh.seek(0)
            self._consume_split(fh, limit=end)
        finally:
            self.hasher = hasher
            out = proc.stdout.read()
            proc.stdout.close()
            proc.wait()
        try:
            doc = json.loads(out) if proc.returncode == 0 else None
        except ValueError:
            doc = None
        # The snapshot, if taken meanwhile, still needs the hashing state at its line.
        snapshot = self.snapshot if snapshot_pending and self._digest is None else None
        if doc is not None and doc.get("count") == self.count and doc.get("offset") == end:
            hasher.adopt(doc)
            self.used_worker = True
            if snapshot is not None:
                snapshot["hashed"] = _state_from_json(doc.get("snapshot"))
        else:  # the worker failed: hash the same lines here
            fh.seek(0)
            offset = 0
            for n, raw in enumerate(fh):
                if offset >= end:
                    break
                if snapshot is not None and n == snapshot["count"]:
                    snapshot["hashed"] = hasher.state_at(n)
                line = raw[:-1]
                hasher.feed(line, n, is_checkpoint(line))
                offset += len(raw)
            hasher.flush()
            if snapshot is not None and self.count == snapshot["count"]:
                snapshot["hashed"] = hasher.state_at(self.count)
        if snapshot is not None and snapshot["hashed"] is None:
            self.snapshot = None  # a hash check failed before its line: nothing to keep

    def _tail_ok(self, fh: IO[bytes]) -> bool:
        n = len(self.last_line) + 1
        if self.offset < n:
            return False
        return os.pread(fh.fileno(), n, self.offset - n) == self.last_line + b"\n"

    def finish(self) -> None:
        """For a one-shot report: a --diff boundary never crossed is at the end."""
        if self.since is not None and self.before is None:
            self._snapshot(self.count)

    def _snapshot(self, n: int) -> None:
        self.before = {k: (v[DECISION], v[OUTCOME]) for k, v in self.tenants.items()}
        self.boundary_count = n
        self.boundary_runs = self.run_outcomes

    def _crossed(self, line: bytes, n: int) -> bool:
        since = self.since
        assert since is not None
        if since.seq is not None:
            return n >= since.seq
        ts = ts_of(line)
        if ts is None or since.ts is None:
            return False
        return ts > since.ts

    def _consume(
        self, fh: IO[bytes], limit: int | None = None, stop: int | None = None, digest: Any = None
    ) -> None:
        """Classify (and feed to the hasher) the whole lines of ``fh`` from :attr:`offset`, up
        to byte ``limit`` or line ``stop``; ``digest`` is updated with the bytes consumed."""
        self._scan_lines(fh, limit, stop, digest)
        if self.hasher is not None:
            self.hasher.flush()

    def _scan_lines(self, fh: IO[bytes], limit: int | None, stop: int | None, digest: Any) -> None:
        """:meth:`_consume`'s loop: one pass, with the hot state in locals."""
        tenants = self.tenants
        counts = self.event_counts
        runs = self.runs
        events = self.events
        hasher = self.hasher
        decisions = DECISION_EVENTS
        n = self.count
        offset = self.offset
        last = self.last_line
        outcomes = self.run_outcomes
        pending_since = self.since is not None and self.before is None
        self.torn_bytes = 0
        for raw in fh:
            if limit is not None and offset >= limit:
                break
            if raw[-1:] != b"\n":
                self.torn_bytes = len(raw)  # a write in progress, or a torn tail
                break
            line = raw[:-1]
            if pending_since and self._crossed(line, n):
                self.run_outcomes = outcomes
                self._snapshot(n)
                pending_since = False
            ev, ei = event_of(line)
            counts[ev] = counts.get(ev, 0) + 1
            events.append(line)
            if ev == b"run_start":
                pass
            elif ev == b"run_outcome" or ev in decisions:
                # The tenant's state, made on first sight (a nested "tenant" key sits inside
                # data: tenant_of ignores it). One expression, not a method: this is per line.
                key = tenant_of(line, ei)
                st = None if key is None else tenants.get(key) or self._new_tenant(line, key, n)
                if ev == b"run_outcome":
                    if st is not None:
                        st[OUTCOME] = line
                        st[RUNS] += 1
                    runs.append(line)
                    outcomes += 1
                elif st is None:
                    self.invalid.append(line)  # a package whose name is not a tenant id
                else:
                    st[DECISION] = line
            elif ev in CORDON_EVENTS:
                self.cordon_events.append(line)
            elif ev == b"checkpoint":
                self.checkpoint_event_count += 1
            if hasher is not None:
                hasher.feed(line, n, ev == b"checkpoint")
            if digest is not None:
                digest.update(raw)
            offset += len(raw)
            n += 1
            last = line
            if n == stop:
                break
        self.count = n
        self.offset = offset
        self.last_line = last
        self.run_outcomes = outcomes

    def _new_tenant(self, line: bytes, key: bytes, n: int) -> list[Any] | None:
        if b"\\" in key:  # an escaped character in the name: take the real value
            rec = loads(line)
            tenant = rec.get("tenant") if rec else None
            if not isinstance(tenant, str):
                return None
            key = tenant.encode("utf-8", "surrogatepass")
            if key in self.tenants:
                return self.tenants[key]
        st = self.tenants[key] = [n, ts_of(line) or b"", None, None, 0]
        return st


def _prefix_digest(fd: int, end: int) -> Any:
    """SHA-256 of the first ``end`` bytes of ``fd`` (None if it has fewer), read through one
    small buffer: fresh 1 MiB chunks cost more in page faults than the hashing."""
    digest = hashlib.sha256()
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    preadv = getattr(os, "preadv", None)
    pos = 0
    while pos < end:
        want = min(len(buf), end - pos)
        if preadv is not None:
            n = preadv(fd, [view[:want]], pos)
        else:  # pragma: no cover - a platform without preadv
            chunk = os.pread(fd, want, pos)
            n = len(chunk)
            view[:n] = chunk
        if n <= 0:
            return None
        digest.update(view[:n])
        pos += n
    return digest


def _whole_lines_end(fh: IO[bytes], size: int) -> int:
    """The offset just after the last newline in the first ``size`` bytes."""
    pos = size
    while pos > 0:
        lo = max(0, pos - 65536)
        idx = os.pread(fh.fileno(), pos - lo, lo).rfind(b"\n")
        if idx >= 0:
            return lo + idx + 1
        pos = lo
    return 0
