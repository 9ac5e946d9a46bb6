"""Verification of a whole audit directory (reads files, writes nothing): :func:`verify_log`.

Rule 5 of :mod:`nightcore.audit.tlog`: the chain, the tree, every stored checkpoint and every
``checkpoint`` event, recomputed from the files; the first problem is reported.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nightcore.audit import merkle
from nightcore.audit.checkpoint import SignedCheckpoint, stored_checkpoints
from nightcore.audit.keyhistory import HISTORY_FILE, KeyHistory, load_history
from nightcore.audit.parallel import scan_log, tree_of
from nightcore.audit.scan import Scan
from nightcore.audit.tree import TREE_NAME, LogTree, audit_lock, first_difference, log_size_locked
from nightcore.errors import AuditError, NightCoreError
from nightcore.fsio import open_regular
from nightcore.layout import AUDIT_LOG_NAME, AUDIT_TAIL_NAME

__all__ = ["VerifyReport", "verify_log"]


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
    # A mirror judged against the node's own checkpoints (nightcore.audit.anchor), else None.
    anchor: dict[str, Any] | None = None
    scan: Scan | None = field(default=None, repr=False)
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
        if self.anchor is not None:
            out["anchor"] = dict(self.anchor)
        if not self.ok:
            out.update(code=self.code, error=self.message, seq=self.seq)
        return out


def _snapshot_size(audit_dir: Path) -> int:
    """The log's size at a moment no writer is mid-batch (the lock is held only for a stat)."""
    if not audit_dir.is_dir():
        return 0
    with audit_lock(audit_dir):
        return log_size_locked(audit_dir)


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
    scan = scan_log(audit_dir / AUDIT_LOG_NAME, size, workers=workers)
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
        divergence = first_difference(stored, leaves)
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

    tree = tree_of(scan)
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
        if state is None or state.offset > log_size_locked(audit_dir):  # not just growth
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
        history = load_history(audit_dir, public_key_pem)
    except NightCoreError:
        return None
    for label, _named, data in stored_checkpoints(audit_dir):
        try:
            cp = history.open_checkpoint(data, what=label)
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
    stored = stored_checkpoints(audit_dir)
    if not stored:
        return
    if public_key_pem is None:
        report.fail("NODE_KEY_MISSING", "checkpoints exist but no node public key was given", None)
        return
    try:
        history = load_history(audit_dir, public_key_pem)
    except NightCoreError as exc:
        report.fail(exc.code, exc.message, None)
        return
    opened: list[tuple[str, int | None, SignedCheckpoint]] = []
    for label, named, data in stored:
        try:
            cp = history.open_checkpoint(data, what=label)
        except AuditError as exc:
            report.fail(exc.code, exc.message, None)
            return
        opened.append((label, named, cp))
    # Smallest size first: the earliest point where the log and a signature disagree.
    opened.sort(key=lambda t: (t[2].size, t[0] == AUDIT_TAIL_NAME))
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
    if (audit_dir / HISTORY_FILE).exists():
        missing = _transition_problem(audit_dir, history)
        if missing is not None:
            report.fail("NODE_KEY_HISTORY_INVALID", missing[1], missing[0])


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


ROTATION_EVENT = "node_key_rotated"


def _transition_problem(audit_dir: Path, history: KeyHistory) -> tuple[int | None, str] | None:
    """Each key transition of the history must be in the log: a ``node_key_rotated`` event
    carrying the same signed statement, at or after the statement's ``log_size`` and before the
    new key's first checkpoint (so the old key's last checkpoint covers it)."""
    import json

    wanted = {
        k.from_size: (k.transition["statement"]["log_size"], k.transition)
        for k in history.keys[1:]
        if k.transition is not None
    }
    if not wanted:
        return None
    found: set[int] = set()
    end = max(wanted)
    with open_regular(audit_dir / AUDIT_LOG_NAME) as fh:
        for seq, line in enumerate(fh):
            if seq >= end:
                break
            if b'"node_key_rotated"' not in line:
                continue
            rec = json.loads(line)
            if rec.get("event") != ROTATION_EVENT:
                continue
            for start, (log_size, transition) in wanted.items():
                if log_size <= seq < start and rec.get("data") == transition:
                    found.add(start)
    for start in sorted(set(wanted) - found):
        return start, (
            f"the node-key history names a key from size {start} but the log has no "
            "node_key_rotated event with its signed transition before that size"
        )
    return None
