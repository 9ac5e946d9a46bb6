"""AUFS refusals: one exception type, stable codes, and the python-tuf mapping.

python-tuf raises a precise exception for every rule of the TUF client workflow; the CLI,
the audit log and scripts need a stable code instead. :func:`from_tuf` is the one place
where that translation happens, so the table in ``docs/aufs.md`` is this function.
"""

from __future__ import annotations

from nightcore.errors import NightCoreError

# Every code this package raises (docs/aufs.md explains each one).
AUFS_CODES = (
    "AUFS_ROLLBACK",  # a metadata version went backwards (or a snapshot/targets replay)
    "AUFS_EXPIRED",  # the newest trusted metadata of some role has expired (freeze attack)
    "AUFS_HASH_MISMATCH",  # a file does not match the length/hash its signed parent names
    "AUFS_THRESHOLD",  # not signed by a threshold of distinct authorised keys
    "AUFS_METADATA_INVALID",  # metadata does not parse or has the wrong type
    "AUFS_REPOSITORY_ERROR",  # any other inconsistency python-tuf refuses
    "AUFS_DOWNLOAD",  # the transport failed (HTTP error, reset, truncated body)
    "AUFS_TOO_LARGE",  # more bytes than the signed length or a configured cap (endless data)
    "AUFS_SLOW_RETRIEVAL",  # the server trickles bytes slower than the deadline allows
    "AUFS_TARGET_INVALID",  # a target's path, custom metadata or content breaks our rules
    "AUFS_TARGET_NOT_FOUND",  # the signed targets do not list the requested path
    "AUFS_ARCHIVE_UNSAFE",  # a tarball/wheel member is absolute, has '..', a link, a device...
    "DOWNGRADE_REFUSED",  # a lower version than installed, without a valid override
    "AUFS_OVERRIDE_INVALID",  # a downgrade override that does not verify or does not match
    "ABI_UNSUPPORTED",  # the module needs a host ABI this runtime lacks
    "SCHEMA_UNSUPPORTED",  # a manifest schema no translator can bring to the current one
    "RUNTIME_TOO_OLD",  # the target needs a newer Night Core runtime
    "RUNTIME_SELFTEST_FAILED",  # a staged runtime release failed its self-test
    "AUFS_NOT_INITIALIZED",  # no trusted root yet (run aufs client init)
    "AUFS_ALREADY_INITIALIZED",  # client init over an existing trusted root
    "AUFS_ROOT_MISMATCH",  # client init: root.json is not the one pinned by --expect-sha256
    "AUFS_CONFIG_INVALID",  # aufs.toml or aufs-repo.json is malformed
    "AUFS_NOT_STAGED",  # sign/publish with nothing staged
    "AUFS_KEY_NOT_AUTHORIZED",  # a key that the role does not list
    "AUFS_REPO_EXISTS",  # repo init over an existing repository
    "AUFS_REPO_NOT_FOUND",  # not an AUFS repository directory
    "AUFS_BUSY",  # another update or publish holds the lock
    "AUFS_NOTHING_TO_ROLL_BACK",  # rollback without a previous version kept
)


class AufsError(NightCoreError):
    code = "AUFS_REPOSITORY_ERROR"


def from_tuf(exc: BaseException, what: str = "") -> AufsError:
    """Translate a python-tuf (or transport) exception into an :class:`AufsError`.

    Order matters: the subclasses are tested before their parents.
    """
    from tuf.api import exceptions as tx
    from tuf.api.serialization import DeserializationError

    prefix = f"{what}: " if what else ""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, AufsError):
        return exc
    if isinstance(exc, tx.DownloadLengthMismatchError):
        return AufsError(f"{prefix}endless data refused: {detail}", code="AUFS_TOO_LARGE")
    if isinstance(exc, tx.SlowRetrievalError):
        return AufsError(
            f"{prefix}slow retrieval refused: {detail or 'deadline passed'}",
            code="AUFS_SLOW_RETRIEVAL",
        )
    if isinstance(exc, tx.DownloadHTTPError):
        return AufsError(f"{prefix}HTTP {exc.status_code}: {detail}", code="AUFS_DOWNLOAD")
    if isinstance(exc, tx.DownloadError):
        cause = exc.__cause__ or exc.__context__
        extra = f" ({type(cause).__name__})" if cause is not None else ""
        return AufsError(f"{prefix}download failed: {detail}{extra}", code="AUFS_DOWNLOAD")
    if isinstance(exc, tx.BadVersionNumberError):
        return AufsError(f"{prefix}rollback refused: {detail}", code="AUFS_ROLLBACK")
    if isinstance(exc, tx.ExpiredMetadataError):
        return AufsError(f"{prefix}freeze refused: {detail}", code="AUFS_EXPIRED")
    if isinstance(exc, tx.LengthOrHashMismatchError):
        return AufsError(f"{prefix}{detail}", code="AUFS_HASH_MISMATCH")
    if isinstance(exc, tx.UnsignedMetadataError):
        return AufsError(f"{prefix}threshold not met: {detail}", code="AUFS_THRESHOLD")
    if isinstance(exc, DeserializationError):
        cause_text = str(exc.__cause__ or "")
        if "Multiple signatures found for keyid" in cause_text:
            # A list naming one key twice can only be an attempt to inflate the count: the
            # key counts once, so the threshold is not met.
            return AufsError(
                f"{prefix}threshold not met: the same key's signature appears twice "
                "(distinct key ids are counted, each once)",
                code="AUFS_THRESHOLD",
            )
        return AufsError(
            f"{prefix}metadata does not parse: {cause_text or detail}"[:300],
            code="AUFS_METADATA_INVALID",
        )
    if isinstance(exc, tx.RepositoryError):
        return AufsError(f"{prefix}{detail}", code="AUFS_REPOSITORY_ERROR")
    if isinstance(exc, OSError):
        return AufsError(f"{prefix}{exc.strerror or detail}", code="IO_ERROR")
    return AufsError(f"{prefix}{type(exc).__name__}: {detail}"[:300], code="AUFS_REPOSITORY_ERROR")
