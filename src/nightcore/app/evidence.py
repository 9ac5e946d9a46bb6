"""The evidence operations of the facade: proof and forensic bundles (export, and offline
verification with only the node's public key), the SBOM, and replay of a recorded run.

The evidence layer takes plain inputs; this module composes them from a node context (the
layout, the node's identity and signer, its transparency log, the dashboard report).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nightcore.context import NodeContext
    from nightcore.evidence.bundle import BundleSource, ForensicExport
    from nightcore.runner.replay import ReplayResult


def bundle_source(ctx: NodeContext) -> BundleSource:
    """The plain inputs of a bundle export, taken from a node context."""
    from nightcore.evidence.bundle import BundleSource

    return BundleSource(
        layout=ctx.layout,
        node_id=ctx.node_key_id(),
        node_name=ctx.config.node_name,
        node_pub_pem=ctx.node_public_pem(),
        signer=ctx.node_signer,
        tlog=ctx.transparency_log(),
        audit_lines=lambda: ctx.audit().iter_lines(),
    )


def export_proof(
    ctx: NodeContext, out: Path, *, since: str | None = None, runs: list[str] | None = None
) -> tuple[str, int]:
    """A proof bundle with the dashboard report: (sha256 of the archive, runs included)."""
    from nightcore.app.dashboard import report_html
    from nightcore.evidence import bundle

    return bundle.export_proof(
        bundle_source(ctx), out, since=since, runs=runs, dashboard=lambda: report_html(ctx)
    )


def export_forensics(
    ctx: NodeContext,
    tenant: str,
    out: Path,
    *,
    run: str | None = None,
    no_checkpoint: bool = False,
) -> ForensicExport:
    """A forensic bundle of one tenant (signing a checkpoint over it unless ``no_checkpoint``)."""
    from nightcore.evidence import bundle

    return bundle.export_forensics(
        bundle_source(ctx), tenant, out, run=run, no_checkpoint=no_checkpoint
    )


def verify_bundle(path: Path, node_public_pem: bytes) -> Any:
    """Offline: check a proof or forensic bundle with only the node's public key."""
    from nightcore.evidence.bundle import verify_bundle as verify

    return verify(path, node_public_pem)


def write_sbom(ctx: NodeContext | None, out: Path) -> str:
    """The CycloneDX SBOM of the runtime (and the tenants ``ctx`` admitted); its sha256."""
    from nightcore.evidence.sbom import write_sbom as write

    return str(write(ctx.audit().iter_lines() if ctx is not None else None, out))


def replay(ctx: NodeContext, run_id: str, *, strongbox: bool = False) -> ReplayResult:
    """Re-run a recorded run from its stored module and manifest; compare with its
    attestation (a deterministic tenant replays exactly, in either isolation mode).
    ``strongbox`` confines the replay (node policy may require it anyway)."""
    from nightcore.runner.replay import replay as do_replay

    return do_replay(ctx, run_id, strongbox=strongbox)
