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
   ``NIGHTCORE_NODE_KEY_PASSPHRASE`` is set, or any securesystemslib signer URI: KMS, HSM). An
   ECDSA P-256 node key (FIPS mode) signs notes with signature type 0x02 (SHA-256, DER). Which
   key may sign which sizes is the node-key history (:mod:`nightcore.audit.keyhistory`); the
   origin is that of the log's first key. A checkpoint is signed only if the tree extends the latest
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

import hmac
import os
import re
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nightcore.audit import merkle, note
from nightcore.audit.checkpoint import (
    MAX_PUBLIC_KEY_FILE,
    NOTE_FILE,
    SignedCheckpoint,
    checkpoint_origin,
    load_node_public_key,
    open_node_checkpoint,
    read_note,
)
from nightcore.audit.keyhistory import HISTORY_FILE, MAX_HISTORY_BYTES, KeyHistory
from nightcore.audit.lines import parse_line_fast
from nightcore.audit.scan import CHECKPOINT_EVENT, READ_CHUNK
from nightcore.audit.tree import LogTree, TreeState, audit_lock, log_size_locked
from nightcore.errors import AuditError, UsageError
from nightcore.fsio import atomic_write, open_regular
from nightcore.layout import AUDIT_TAIL_NAME, CHECKPOINTS_DIR_NAME

if TYPE_CHECKING:
    from nightcore.audit.log import AuditLog
    from nightcore.audit.proofs import (
        CONSISTENCY_HEADER,
        ConsistencyProof,
        format_consistency_proof,
        parse_consistency_proof,
        verify_consistency_proof,
        verify_inclusion_proof,
    )
    from nightcore.audit.verify import VerifyReport, verify_log
    from nightcore.layout import Layout

# The transparency log's public names; the ones defined in the modules of each job
# (lines, scan, parallel, tree, checkpoint, verify, proofs) are re-exported here.
__all__ = [
    "CHECKPOINT_EVENT",
    "CONSISTENCY_HEADER",
    "DEFAULT_CHECKPOINT_EVERY",
    "ConsistencyProof",
    "LogTree",
    "SignedCheckpoint",
    "TransparencyLog",
    "TreeState",
    "VerifyReport",
    "checkpoint_after_run",
    "checkpoint_origin",
    "format_consistency_proof",
    "load_node_public_key",
    "maybe_checkpoint",
    "open_node_checkpoint",
    "parse_consistency_proof",
    "parse_line_fast",
    "transparency_log",
    "verify_consistency_proof",
    "verify_inclusion_proof",
    "verify_log",
]

# Proofs and full verification are not on the run path (a run only signs a checkpoint): their
# modules load on first use, and their names are still importable from here.
_LAZY: Final = {
    "CONSISTENCY_HEADER": "nightcore.audit.proofs",
    "ConsistencyProof": "nightcore.audit.proofs",
    "format_consistency_proof": "nightcore.audit.proofs",
    "parse_consistency_proof": "nightcore.audit.proofs",
    "verify_consistency_proof": "nightcore.audit.proofs",
    "verify_inclusion_proof": "nightcore.audit.proofs",
    "VerifyReport": "nightcore.audit.verify",
    "verify_log": "nightcore.audit.verify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


DEFAULT_CHECKPOINT_EVERY: Final = 1000
MAX_REASON: Final = 200
_REASON_OK: Final = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


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
        self.checkpoints_dir = self.dir / CHECKPOINTS_DIR_NAME
        self.tail_path = self.dir / AUDIT_TAIL_NAME
        self._mutex = threading.RLock()
        self._signing_key: note.NoteSigner | None = None
        self._signing_key_id = ""
        # Memos keyed by the exact bytes read (never by path or stat): a changed file is a miss.
        self._public_key_memo: tuple[bytes, KeyHistory] | None = None
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
            with open_regular(self.node_pub_path) as fh:
                return fh.read(MAX_PUBLIC_KEY_FILE + 1)
        except FileNotFoundError:
            raise AuditError("node.pub.pem is missing", code="NODE_KEY_MISSING") from None

    def public_key(self) -> tuple[note.NotePublicKey, str]:
        """The active node key and the log's origin (that of its first key)."""
        history = self.history()
        return history.current.crypto, history.origin

    def history(self) -> KeyHistory:
        """The node-key history (``node-keys.json``, else the single key of node.pub.pem)."""
        return self._history_read()[1]

    def _history_read(self) -> tuple[bytes, KeyHistory]:
        """(bytes read now, history); parsed again only when node.pub.pem or the history
        file changed. ``node.pub.pem`` must be the history's active key."""
        pem = self.public_key_pem()
        try:
            with open_regular(self.dir / HISTORY_FILE) as fh:
                hist: bytes | None = fh.read(MAX_HISTORY_BYTES + 1)
        except FileNotFoundError:
            hist = None
        memo_key = pem + b"\0" + (hist if hist is not None else b"")
        memo = self._public_key_memo
        if memo is None or memo[0] != memo_key:
            if hist is None:
                history = KeyHistory.single(pem)
            else:
                history = KeyHistory.parse(hist, pem)
                if history.current.public_pem.strip() != pem.strip():
                    raise AuditError(
                        "node.pub.pem is not the active key of the node-key history",
                        code="NODE_KEY_MISMATCH",
                    )
            memo = self._public_key_memo = (memo_key, history)
        return memo

    def _open_stored(self, path: Path, what: str) -> SignedCheckpoint:
        """A stored note verified with the node-key history; a note already verified with
        these exact bytes under this exact history is not verified again (the hot path of
        maybe_checkpoint)."""
        data = read_note(path)
        memo_key, history = self._history_read()
        cached = self._opened_memo.get((memo_key, data))
        if cached is not None:
            return cached
        cp = history.open_checkpoint(data, what=what)
        if len(self._opened_memo) >= 4:
            self._opened_memo.clear()
        self._opened_memo[(memo_key, data)] = cp
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

    def _signer(self) -> note.NoteSigner:
        """The active node key as a note signer: a local key file (read with cryptography) or
        any securesystemslib signer (KMS/HSM) behind the node signer's ``sign(bytes)``."""
        current = self.history().current
        rotated = False
        if self._signing_key is not None:
            if self._signing_key_id == current.key_id:
                return self._signing_key
            # The node key was rotated since: load the signer again (it must be the new key).
            self._signing_key, rotated = None, True
        if self._load_signer is None:
            raise AuditError(
                "this transparency log is read-only (no node signer was given)", code="INTERNAL"
            )
        signer = self._load_signer()
        if getattr(signer, "key_id", None) != current.key_id:
            if rotated:
                raise AuditError(
                    "the node key was rotated after this process loaded it; restart it",
                    code="NODE_KEY_ROTATED",
                )
            raise AuditError(
                "the node signer is not the active key of the node-key history",
                code="NODE_KEY_MISMATCH",
            )
        # Its signatures are checked against the public key right after each signing.
        self._signing_key = note.NoteSigner(current.crypto, signer.sign)
        self._signing_key_id = current.key_id
        return self._signing_key

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
            return self._open_stored(self.tail_path, AUDIT_TAIL_NAME)
        except FileNotFoundError:
            pass
        try:
            names = os.listdir(self.checkpoints_dir)
        except FileNotFoundError:
            return None
        sizes = [int(m.group(1)) for n in names if (m := NOTE_FILE.fullmatch(n))]
        if not sizes:
            return None
        label = f"{CHECKPOINTS_DIR_NAME}/{max(sizes)}.note"
        return self._open_stored(self.dir / label, label)

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        with self._mutex, audit_lock(self.dir):
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
            history = self.history()
            origin = history.origin
            with audit_lock(self.dir):
                self.tree.sync_locked()
                tree = self.tree.tree
                latest = self._latest_locked()
                if latest is not None:
                    self._extends(latest)
                    kept = self.checkpoints_dir / f"{latest.size}.note"
                    if not kept.exists():  # a crash came between the tail and its note
                        atomic_write(kept, latest.note)
                    if latest.size == tree.size:
                        return latest
                body = note.Checkpoint(origin, tree.size, tree.root()).body()
                signed = note.sign_note(body, key_name, key)
                cp = history.open_checkpoint(signed)  # a KMS/HSM signer's output is checked too
                # The tail first: it is what _latest_locked reads, and never older than a note.
                atomic_write(self.tail_path, signed)
                atomic_write(self.checkpoints_dir / f"{cp.size}.note", signed)
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
            with audit_lock(self.dir):
                size = self._count_lines_locked()
                latest = self._latest_locked()
            if size - (latest.size if latest is not None else 0) < every:
                return None
            return self.checkpoint(f"every {every} entries")

    def _count_lines_locked(self) -> int:
        state = self.tree._read_state()
        log_size = log_size_locked(self.dir)
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
            with open_regular(self.tree.log_path) as fh:
                fh.seek(start)
                while chunk := fh.read(READ_CHUNK):
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
            with audit_lock(self.dir):
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
            with audit_lock(self.dir):
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
        with self._mutex, audit_lock(self.dir):
            self.tree.sync_locked()
            tree = self.tree.tree
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < tree.size:
                raise AuditError(
                    f"seq {seq} is not in the log ({tree.size} entries)",
                    code="PROOF_INDEX_OUT_OF_RANGE",
                )
            line = read_line(self.tree.log_path, seq)
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
        from nightcore.audit.proofs import ConsistencyProof
        from nightcore.audit.verify import verify_log

        old = self.history().open_checkpoint(old_note, what="old checkpoint")
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
        from nightcore.audit.verify import verify_log

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
        with audit_lock(self.dir):
            aside = self.tree.replace_locked(report.scan)
        if aside is not None:
            report.tree_status = "rebuilt"
            report.warnings.append(
                f"tree.bin was rebuilt from the log; the old one is {aside.name}"
            )
        elif report.tree_status == "missing":
            report.tree_status = "rebuilt"


def read_line(path: Path, seq: int) -> bytes | None:
    """Line ``seq`` of the log without its newline (None if the log has fewer whole lines)."""
    seen = 0
    with open_regular(path) as fh:
        carry = b""
        while chunk := fh.read(READ_CHUNK):
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

# Weak: a log lives as long as a context that uses it (a node's for its lifetime), so a process
# that opens many workspaces (tests, a console over several) does not keep every tree and
# every audit descriptor forever.
_LOGS: weakref.WeakValueDictionary[Path, TransparencyLog] = weakref.WeakValueDictionary()
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
