"""An authenticated on-disk cache of compiled (serialized) Wasmtime modules.

Wasmtime's ``Module.deserialize`` trusts its input completely: a serialized module is
native code plus metadata, and loading a tampered one is arbitrary code execution in the
node. So every entry carries an HMAC-SHA256 tag under a node secret, and the tag is checked
(in constant time) over the bytes that were read *before* anything is handed to Wasmtime.
The bytes are read once into memory and deserialized from that copy, never re-read from the
file, so the file cannot be swapped between the check and the load.

Layout of an entry (one file per key, named ``<key>.cwasm``)::

    MAGIC (8 bytes) || TAG (32 bytes) || ARTIFACT (Module.serialize() output)

    KEY = SHA-256 over length-prefixed (domain, module sha256, engine fingerprint,
          wasmtime version)
    TAG = HMAC-SHA256(secret, TAG_DOMAIN || KEY (32 raw bytes) || ARTIFACT)

Binding the key into the tag means an authentic entry copied to another key's file name
(say, the artifact of module A filed under module B) fails authentication too.

Entries are written atomically (a temporary file in the same directory, fsync, rename,
fsync of the directory) with mode 0600. This module knows nothing about Wasmtime beyond
its version string: the engine layer deserializes what :meth:`DiskModuleCache.load`
returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nightcore.errors import SandboxError
from nightcore.fsio import atomic_write

MAGIC = b"NCMODC01"
TAG_LEN = 32
HEADER_LEN = len(MAGIC) + TAG_LEN
# A serialized module is a few times the size of its wasm; anything bigger than this is
# not something this cache wrote (and would only cost memory to read).
MAX_ENTRY_BYTES = 1024**3
MIN_SECRET_BYTES = 16
ENTRY_SUFFIX = ".cwasm"

_KEY_DOMAIN = b"nightcore/module-cache-key/v1"
_TAG_DOMAIN = b"nightcore/module-cache-tag/v1\x00"

LoadStatus = Literal["hit", "absent", "rejected"]


def wasmtime_version() -> str:
    """The installed wasmtime-py version (part of every cache key)."""
    from nightcore.versions import distribution_version

    return distribution_version("wasmtime")


def cache_key(module_sha256: str, engine_fingerprint: str, version: str) -> str:
    """SHA-256 (hex) over the module digest, the engine configuration and the runtime version.

    Each part is length-prefixed so that no two different triples can collide by
    shifting bytes from one part into the next.
    """
    h = hashlib.sha256()
    for part in (_KEY_DOMAIN, module_sha256.lower(), engine_fingerprint, version):
        raw = part if isinstance(part, bytes) else part.encode("utf-8")
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
    return h.hexdigest()


def _check_key(key: str) -> bytes:
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise SandboxError(f"invalid module cache key {key[:80]!r}", code="CACHE_KEY_INVALID")
    return bytes.fromhex(key)


@dataclass(frozen=True)
class CacheLoad:
    """What :meth:`DiskModuleCache.load` found.

    ``status`` is ``"hit"`` (``artifact`` is authenticated), ``"absent"`` (no entry) or
    ``"rejected"`` (an entry existed but failed authentication; it has been deleted and
    ``reason`` says why: ``bad_magic``, ``truncated``, ``bad_tag``, ``too_large``,
    ``not_a_file`` or ``unreadable``).
    """

    status: LoadStatus
    artifact: bytes | None = None
    reason: str = ""
    path: str = ""


class DiskModuleCache:
    """Authenticated compiled-module cache in one directory.

    Thread-safe and safe to share between processes: writers race only on an atomic
    rename, and a reader either sees a complete entry or none.
    """

    def __init__(self, directory: Path, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise SandboxError(
                f"the module cache secret must be at least {MIN_SECRET_BYTES} bytes",
                code="CACHE_SECRET_INVALID",
            )
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SandboxError(
                f"cannot create the module cache directory {str(directory)!r}: {exc.strerror}",
                code="CACHE_DIR_INVALID",
            ) from exc
        if not directory.is_dir():
            raise SandboxError(
                f"the module cache path {str(directory)!r} is not a directory",
                code="CACHE_DIR_INVALID",
            )
        self._dir = directory
        self._secret = bytes(secret)

    @property
    def directory(self) -> Path:
        return self._dir

    def path_for(self, key: str) -> Path:
        _check_key(key)
        return self._dir / f"{key}{ENTRY_SUFFIX}"

    def _tag(self, key_raw: bytes, artifact: bytes | memoryview) -> bytes:
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        mac.update(_TAG_DOMAIN)
        mac.update(key_raw)
        mac.update(artifact)
        return mac.digest()

    def load(self, key: str) -> CacheLoad:
        """Read and authenticate the entry for ``key``.

        An entry that fails authentication (or is truncated, oversized or not a regular
        file) is deleted before this returns ``"rejected"``.
        """
        key_raw = _check_key(key)
        path = self.path_for(key)
        try:
            fd = os.open(
                path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
            )
        except FileNotFoundError:
            return CacheLoad("absent", path=str(path))
        except OSError:
            # ELOOP (a symlink) or EACCES: not an entry this cache wrote.
            return self._reject(path, "unreadable")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self._reject(path, "not_a_file")
            if st.st_size > MAX_ENTRY_BYTES:
                return self._reject(path, "too_large")
            chunks: list[bytes] = []
            remaining = MAX_ENTRY_BYTES + 1
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            data = b"".join(chunks)
        except OSError:
            return self._reject(path, "unreadable")
        finally:
            os.close(fd)
        if len(data) > MAX_ENTRY_BYTES:
            return self._reject(path, "too_large")
        if len(data) <= HEADER_LEN:
            return self._reject(path, "truncated")
        if data[: len(MAGIC)] != MAGIC:
            return self._reject(path, "bad_magic")
        tag = data[len(MAGIC) : HEADER_LEN]
        artifact = data[HEADER_LEN:]
        if not hmac.compare_digest(tag, self._tag(key_raw, artifact)):
            return self._reject(path, "bad_tag")
        return CacheLoad("hit", artifact=artifact, path=str(path))

    def _reject(self, path: Path, reason: str) -> CacheLoad:
        self._unlink(path)
        return CacheLoad("rejected", reason=reason, path=str(path))

    def discard(self, key: str) -> None:
        """Delete the entry for ``key`` if there is one."""
        self._unlink(self.path_for(key))

    @staticmethod
    def _unlink(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def store(self, key: str, artifact: bytes) -> Path:
        """Write the entry for ``key`` atomically (mode 0600). Raises ``OSError`` on failure."""
        key_raw = _check_key(key)
        final = self.path_for(key)
        tag = self._tag(key_raw, artifact)
        atomic_write(final, MAGIC + tag + artifact, 0o600)
        return final
