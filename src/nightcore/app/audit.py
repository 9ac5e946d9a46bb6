"""The audit operations of the facade: verify the log (or a mirror of it), sign checkpoints,
prove entries, read entries, keep mirrors in sync, heartbeats.

Offline checks that need no workspace (verifying a proof or a consistency proof with only the
node's public key) live in :mod:`nightcore.audit.proofs` and are re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightcore.errors import AuditError

if TYPE_CHECKING:
    from nightcore.audit.checkpoint import SignedCheckpoint
    from nightcore.audit.proofs import ConsistencyProof
    from nightcore.audit.verify import VerifyReport
    from nightcore.context import NodeContext

__all__ = [
    "checkpoint",
    "consistency",
    "entry",
    "heartbeat",
    "mirror_status",
    "mirror_sync",
    "prove",
    "records",
    "verify_consistency_proof",
    "verify_inclusion_proof",
    "verify_log",
]


def verify_inclusion_proof(
    proof: bytes, entry: bytes, public_key_pem: bytes, history: bytes | None = None
) -> tuple[SignedCheckpoint, dict[str, Any]]:
    """Offline: ``entry`` is in the log, per ``proof`` and its checkpoint signed by the key (or,
    with ``history`` (node-keys.json), by the key of that history whose range covers it)."""
    from nightcore.audit import proofs

    return proofs.verify_inclusion_proof(proof, entry, public_key_pem, history)


def verify_consistency_proof(
    proof: bytes, old_note: bytes, public_key_pem: bytes, history: bytes | None = None
) -> Any:
    """Offline: the checkpoint in ``proof`` extends ``old_note``, both signed by the key (or by
    the keys of ``history`` whose ranges cover them)."""
    from nightcore.audit import proofs

    return proofs.verify_consistency_proof(proof, old_note, public_key_pem, history)


def verify_log(ctx: NodeContext, source: str | None = None) -> VerifyReport:
    """Verify the hash chain, the Merkle tree and every checkpoint of the node's log, or of the
    mirror ``source`` (a configured mirror's name)."""
    if source:
        from nightcore.audit.mirror import mirrors, verify_source

        mirrored: VerifyReport = verify_source(ctx.layout, mirrors(ctx.config.raw), source)
        return mirrored
    return ctx.transparency_log().verify()


def checkpoint(ctx: NodeContext, reason: str) -> tuple[SignedCheckpoint, Path]:
    """Sign a checkpoint now; the checkpoint and the path of its note."""
    tlog = ctx.transparency_log()
    cp = tlog.checkpoint(reason)
    return cp, tlog.checkpoints_dir / f"{cp.size}.note"


def prove(ctx: NodeContext, seq: int) -> bytes:
    """A C2SP tlog-proof of entry ``seq`` against the latest signed checkpoint."""
    return bytes(ctx.transparency_log().prove(seq))


def entry(ctx: NodeContext, seq: int) -> bytes:
    """The exact bytes of entry ``seq`` (what a proof's verifier hashes)."""
    return bytes(ctx.transparency_log().entry(seq))


def consistency(ctx: NodeContext, old_note: bytes) -> ConsistencyProof:
    """A proof that the log extends the checkpoint ``old_note``."""
    return ctx.transparency_log().consistency(old_note)


def records(ctx: NodeContext) -> list[dict[str, Any]]:
    """Every whole entry of the log as a dict (a torn tail is not an entry)."""
    out: list[dict[str, Any]] = []
    for n, raw in enumerate(ctx.audit().iter_lines()):
        if not raw.endswith(b"\n"):
            break
        try:
            rec = json.loads(raw)
        except ValueError:
            raise AuditError(
                f"audit line {n} is not JSON; run 'nightcore audit verify'",
                code="AUDIT_LINE_MALFORMED",
            ) from None
        if not isinstance(rec, dict):
            raise AuditError(f"audit line {n} is not an object", code="AUDIT_LINE_MALFORMED")
        out.append(rec)
    return out


def mirror_status(ctx: NodeContext) -> list[Any]:
    from nightcore.audit.mirror import mirrors, status

    return list(status(ctx.layout, mirrors(ctx.config.raw)))


def mirror_sync(ctx: NodeContext) -> list[Any]:
    from nightcore.audit.mirror import mirrors, sync_all

    return list(sync_all(ctx.layout, mirrors(ctx.config.raw)))


def heartbeat(ctx: NodeContext, idle_seconds: int | None = None) -> SignedCheckpoint | None:
    """Sign a heartbeat checkpoint if the log was idle for ``idle_seconds`` (default: config)."""
    from nightcore.audit.heartbeat import heartbeat as beat

    idle = idle_seconds if idle_seconds is not None else ctx.config.heartbeat_idle_seconds
    return beat(ctx.transparency_log(), idle)
