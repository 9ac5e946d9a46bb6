"""Facade: Night Core's own releases (``nightcore release verify``; docs/supply-chain.md)."""

from __future__ import annotations

from pathlib import Path

from nightcore.release import ReleaseVerification


def verify_release(directory: Path, release_public_pem: bytes) -> ReleaseVerification:
    """Offline: check a release directory (signatures, checksums, provenance, SBOM) with only
    the release public key. Never raises for a bad release: the result's first failing check
    carries its stable code."""
    from nightcore.release import verify_release as verify

    return verify(directory, release_public_pem)
