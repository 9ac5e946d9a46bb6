"""Facade: Night Core's own releases (``nightcore release verify``; docs/supply-chain.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nightcore.release import ReleaseVerification


def verify_release(directory: Path, release_public_pem: bytes) -> ReleaseVerification:
    """Offline: check a release directory (signatures, checksums, provenance, SBOM) with only
    the release public key. Never raises for a bad release: the result's first failing check
    carries its stable code."""
    from nightcore.release import verify_release as verify

    return verify(directory, release_public_pem)


def stage_release_in_aufs(
    repo_dir: Path, release_dir: Path, release_public_pem: bytes, *, min_runtime: str = ""
) -> dict[str, Any]:
    """Verify a release, then stage exactly its wheel as the AUFS repository's runtime target
    (the release's bytes, checked again against its signed ``SHA256SUMS`` after staging).
    A release that does not verify stages nothing and raises with its code."""
    from nightcore.aufs.repo import AufsRepo
    from nightcore.release import WHEEL_RE, ReleaseError

    res = verify_release(release_dir, release_public_pem)
    failure = res.first_failure
    if failure is not None:
        raise ReleaseError(f"the release does not verify: {failure.detail}", code=failure.code)
    wheel = next(n for n in res.artifacts if WHEEL_RE.match(n))
    repo = AufsRepo(repo_dir)
    tf = repo.add_target(
        release_dir / wheel, kind="runtime", min_runtime=min_runtime, version=res.version
    )
    if tf.hashes.get("sha256") != res.artifacts[wheel]:
        repo.remove_target(tf.path)
        raise ReleaseError(
            f"{wheel} changed while it was staged: not the released bytes",
            code="RELEASE_DIGEST_MISMATCH",
        )
    return {
        "target": tf.path,
        "sha256": res.artifacts[wheel],
        "length": tf.length,
        "version": res.version,
        "commit": res.commit,
        "release_key_id": res.key_id,
    }
