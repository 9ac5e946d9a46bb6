"""A mirror's verification anchored to the node's own signed checkpoints (reads, writes nothing).

A mirror (directory, S3, NATS stream) that verifies *on its own* proves only that it is a
self-consistent prefix of *some* log signed by the node key. An attacker with write access to
the mirror can cut it short and hide its checkpoints (an S3 delete marker, a new truncated
version of a locked chunk): what is left still verifies on its own. So ``audit verify --source``
run in the node's workspace also checks the mirror against what only the node holds:

- the node's own checkpoints (``state/audit/checkpoints/*.note`` and ``audit.tail``), each
  verified with the node key;
- what the mirror *acknowledged*: the node's cursor for that mirror (lines and checkpoints it
  durably received), plus evidence the mirror itself carries (an S3 chunk whose name says it
  holds lines ``a..b``, a delete marker over a chunk or a checkpoint, a NATS stream's sequence
  numbers).

Verdicts, first match wins (``anchor.status`` in ``--json``):

1. ``tampered`` / ``MIRROR_ROOT_MISMATCH``: a node checkpoint of size ``S`` <= the mirror's
   length whose root is not the mirror's Merkle root at ``S`` (the mirror's history differs).
2. ``tampered`` / ``MIRROR_DIVERGED``: a mirror line is not the node's own line at that
   position (lines past the node's last checkpoint, which no signature covers yet, compared
   byte for byte with the node's ``audit.jsonl``).
3. ``tampered`` / ``MIRROR_AHEAD``: the mirror holds more lines than the node's log (lines the
   node never wrote; the node's lines are counted after the mirror was read).
4. ``tampered`` / ``MIRROR_TRUNCATED``: the mirror holds fewer lines than it acknowledged.
5. ``tampered`` / ``MIRROR_CHECKPOINT_MISSING``: a checkpoint the mirror acknowledged is gone,
   or a node checkpoint is missing below a larger one the mirror holds (checkpoints are sent in
   order, so a hole is a removal).
6. ``lag`` / ``MIRROR_LAG``: none of the above, but the node signed a checkpoint larger than the
   mirror (or one the mirror has not received yet): the mirror is behind, consistent with
   everything it holds. Not tampering: ``nightcore audit mirror sync`` (or the mesh's
   replication) catches it up.
7. ``consistent``: every node checkpoint the mirror covers has its root, and none is newer.
   Unsigned lines the mirror has not received yet are a warning, not a failure.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nightcore.audit.checkpoint import SignedCheckpoint, stored_checkpoints
from nightcore.audit.keyhistory import load_history
from nightcore.audit.verify import VerifyReport
from nightcore.errors import AuditError, NightCoreError
from nightcore.fsio import open_regular
from nightcore.layout import AUDIT_LOG_NAME

__all__ = ["Acknowledged", "anchor_to_node", "node_checkpoints"]


@dataclass
class Acknowledged:
    """What a mirror is known to have durably received, and where each fact comes from."""

    lines: int = 0
    lines_source: str = ""
    checkpoints: dict[int, str] = field(default_factory=dict)  # size -> source

    def claim_lines(self, lines: int, source: str) -> None:
        if lines > self.lines:
            self.lines, self.lines_source = lines, source

    def claim_checkpoints(self, sizes: Iterable[int], source: str) -> None:
        for size in sizes:
            self.checkpoints.setdefault(size, source)


def node_checkpoints(audit_dir: Path, public_key_pem: bytes) -> dict[int, SignedCheckpoint]:
    """The node's own stored checkpoints by size, each verified with the node key (or the key of
    its node-key history whose range covers it).

    A local checkpoint that does not verify is the node's own problem, reported with its code
    (``CHECKPOINT_FORGED`` ...): a mirror is never judged against an unverified anchor.
    """
    history = load_history(audit_dir, public_key_pem)
    out: dict[int, SignedCheckpoint] = {}
    for label, _named, data in stored_checkpoints(audit_dir):
        cp = history.open_checkpoint(data, what=f"the node's own {label}")
        prior = out.get(cp.size)
        if prior is not None and not hmac.compare_digest(prior.root, cp.root):
            raise AuditError(
                f"the node's own checkpoints hold two roots for size {cp.size}",
                code="CHECKPOINT_ROOT_MISMATCH",
            )
        out[cp.size] = cp
    return out


def _mirror_sizes(mirror_dir: Path, node_audit_dir: Path, public_key_pem: bytes) -> set[int]:
    history = load_history(node_audit_dir, public_key_pem)  # the node's history is the anchor
    return {
        history.open_checkpoint(data, what=label).size
        for label, _named, data in stored_checkpoints(mirror_dir)
    }


Problem = tuple[str, str, int | None]  # code, message, seq


def _root_problem(tree: Any, node: dict[int, SignedCheckpoint], size: int) -> Problem | None:
    """(code, message, seq) if a node checkpoint's root is not the mirror's."""
    for cp_size in sorted(node):
        if cp_size > size:
            break
        if not hmac.compare_digest(tree.root(cp_size), node[cp_size].root):
            return (
                "MIRROR_ROOT_MISMATCH",
                f"the mirror's first {cp_size} lines have another Merkle root than the "
                f"checkpoint of size {cp_size} the node signed: the mirror's history was "
                "rewritten (tampering)",
                None,
            )
    return None


def _line_problem(size: int, node_lines: int, differs: int | None) -> Problem | None:
    """(code, message, seq) if the mirror's lines are not the node's own."""
    if differs is not None:
        return (
            "MIRROR_DIVERGED",
            f"the mirror's line {differs} is not the node's line {differs} (a line beyond "
            "the node's checkpoints was forged or altered in the mirror: tampering)",
            differs,
        )
    if size > node_lines:
        return (
            "MIRROR_AHEAD",
            f"the mirror holds {size} lines but the node's log has {node_lines}: lines "
            f"{node_lines}..{size - 1} were never written by the node (forged; tampering)",
            node_lines,
        )
    return None


def _ack_problem(ack: Acknowledged, size: int, held: set[int]) -> Problem | None:
    """(code, message, seq) if the mirror lost what it acknowledged."""
    if ack.lines > size:
        return (
            "MIRROR_TRUNCATED",
            f"the mirror holds {size} lines but acknowledged {ack.lines} ({ack.lines_source}): "
            f"lines {size}..{ack.lines - 1} were removed from it (tampering, not lag)",
            size,
        )
    for cp_size, source in sorted(ack.checkpoints.items()):
        if cp_size not in held:
            return (
                "MIRROR_CHECKPOINT_MISSING",
                f"the checkpoint of size {cp_size} is missing from the mirror, which had "
                f"received it ({source}): it was removed (tampering, not lag)",
                None,
            )
    return None


def _order_problem(node: dict[int, SignedCheckpoint], held: set[int]) -> Problem | None:
    """(code, message, seq) if a node checkpoint is missing below one held."""
    top_held = max(held) if held else -1
    for cp_size in sorted(node):
        if cp_size < top_held and cp_size not in held:
            return (
                "MIRROR_CHECKPOINT_MISSING",
                f"the mirror holds the checkpoint of size {top_held} but not the node's "
                f"earlier one of size {cp_size}: checkpoints are sent in order, so it was "
                "removed (tampering, not lag)",
                None,
            )
    return None


def _compare_logs(mirror_log: Path, node_audit_dir: Path) -> tuple[int, int | None]:
    """(whole lines of the node's log, the first line where the mirror's differs or None)."""
    node_log = node_audit_dir / AUDIT_LOG_NAME
    if not node_log.exists():
        return 0, None
    differs: int | None = None
    n = 0
    with open_regular(node_log) as mine, open_regular(mirror_log) as theirs:
        for line in mine:
            if not line.endswith(b"\n"):
                break  # a torn tail is not a line
            other = theirs.readline() if differs is None else b""
            if differs is None and other and other != line:
                differs = n
            n += 1
    return n, differs


def anchor_to_node(
    report: VerifyReport,
    mirror_dir: Path,
    node_audit_dir: Path,
    public_key_pem: bytes,
    ack: Acknowledged,
    *,
    compare_lines: bool = True,
) -> VerifyReport:
    """Judge a mirror that verified on its own against the node's checkpoints (see module doc).

    ``report`` is :func:`nightcore.audit.verify.verify_log` of ``mirror_dir`` (the mirror in the
    layout of ``state/audit``); it is updated in place (``anchor``, and a failure code).
    """
    if not report.ok or report.tree is None:
        report.anchor = {"status": "invalid"}
        return report
    try:
        node = node_checkpoints(node_audit_dir, public_key_pem)
        held = _mirror_sizes(mirror_dir, node_audit_dir, public_key_pem)
    except NightCoreError as exc:
        report.anchor = {"status": "invalid"}
        return report.fail(exc.code, exc.message, None)
    size = report.entries
    latest = max(node) if node else None
    anchor: dict[str, Any] = {
        "status": "consistent",
        "node_checkpoints": len(node),
        "node_latest_checkpoint": latest,
        "acknowledged_lines": ack.lines,
        "acknowledged_checkpoints": len(ack.checkpoints),
    }
    report.anchor = anchor

    node_lines: int | None = None
    problem = _root_problem(report.tree, node, size)
    if problem is None and compare_lines:
        # The node's own lines, read now (after the mirror was read: never behind it).
        node_lines, differs = _compare_logs(mirror_dir / AUDIT_LOG_NAME, node_audit_dir)
        problem = _line_problem(size, node_lines, differs)
    problem = problem or _ack_problem(ack, size, held) or _order_problem(node, held)
    if problem is not None:
        anchor["status"] = "tampered"
        return report.fail(*problem)
    missing = [s for s in node if s not in held]
    if missing:
        newest = max(missing)
        anchor["status"] = "lag"
        behind = (
            f"holds {size} lines, shorter than the checkpoint of size {newest} the node signed"
            if newest > size
            else f"holds {size} lines but not yet the node's checkpoint of size {newest}"
        )
        return report.fail(
            "MIRROR_LAG",
            f"the mirror {behind}; it is consistent with the {len(node) - len(missing)} "
            "node checkpoint(s) it holds, so it is behind (lag), not tampered: sync it and "
            "verify again",
            None,
        )
    if node_lines is not None and node_lines > size:
        report.warnings.append(
            f"the mirror is {node_lines - size} line(s) behind the node's log (lines not yet "
            "covered by a checkpoint it holds)"
        )
    return report
