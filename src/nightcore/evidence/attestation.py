"""Run attestations: an in-toto Statement v1 per executed run, DSSE-signed by the node key.

Subjects: the module (``module.wasm``), the run's ``stdout`` and ``stderr``, and every file
the tenant created or changed in its read-write preopens (``fs/<grant>/<path>``).
Predicate (``urn:nightcore:predicate:run:v1``): who signed the manifest, the limits and
capabilities in force after node policy, the outcome and what it cost, the node and runtime
versions, the audit seq of the run's ``run_outcome`` line, and the determinism seed.
Stored as ``state/runs/<run-id>/attestation.intoto.dsse.json``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nightcore.canonical import canonical, parse_json
from nightcore.errors import NightCoreError
from nightcore.trust.envelope import (
    MAX_ENVELOPE_BYTES,
    STATEMENT_TYPE,
    make_statement,
    parse_envelope,
    sign_payload_with,
    verify_signature,
)
from nightcore.trust.pubkey import PublicKey

RUN_PREDICATE_TYPE = "urn:nightcore:predicate:run:v1"
ATTESTATION_FILE = "attestation.intoto.dsse.json"
MAX_WRITTEN_FILES = 1000
MAX_WRITTEN_BYTES = 256 * 1024 * 1024

MAX_TREE_DEPTH = 128  # directories below a grant (the same bound as the strongbox hand-over)
MAX_TREE_ENTRIES = 100_000  # directory entries looked at under all grants of one run

FileState = dict[str, tuple[int, int]]  # relative path -> (size, mtime_ns)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file must not block the open; O_NOCTTY: nor a tty.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Errors that mean "the tenant changed or hid this entry while the host looked": the entry is
# not followed and not hashed, and the result says it is incomplete. Anything else is raised.
_RACED = frozenset({errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENXIO, errno.ENOTDIR})


class _Walk:
    """An iterative, descriptor-relative walk of read-write grants.

    Each directory is opened relative to its parent's descriptor with ``O_NOFOLLOW`` (one
    descriptor per level of the current path), so no path is ever resolved again, no link is
    followed, and neither ``PATH_MAX`` nor the recursion limit is involved. A tree deeper than
    ``max_depth`` or with more than ``max_entries`` entries raises ``TREE_LIMIT``; an entry the
    host could not look at (changed under it, unreadable, a name that is not UTF-8) sets
    :attr:`incomplete`.
    """

    def __init__(self, max_depth: int, max_entries: int) -> None:
        self.max_depth = max_depth
        self.max_entries = max_entries
        self.entries = 0
        self.incomplete = False

    def _scan(self, fd: int) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
        files: list[tuple[str, os.stat_result]] = []
        dirs: list[str] = []
        with os.scandir(fd) as it:
            for entry in it:
                self.entries += 1
                if self.entries > self.max_entries:
                    raise NightCoreError(
                        f"a read-write grant has more than {self.max_entries:,} entries",
                        code="TREE_LIMIT",
                    )
                try:
                    entry.name.encode()
                except UnicodeEncodeError:
                    self.incomplete = True  # not nameable in the attestation
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    dirs.append(entry.name)
                elif stat.S_ISREG(st.st_mode):
                    files.append((entry.name, st))
        files.sort()
        dirs.sort()
        return files, dirs

    def _open_dir(self, name: str, dir_fd: int) -> int | None:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in _RACED:
                raise
            self.incomplete = True
            return None

    def files(
        self, preopens: Iterable[tuple[str, Path]]
    ) -> Generator[tuple[int, str, str, os.stat_result], None, None]:
        """(directory fd, name, ``fs/<grant>/<path>``, lstat) of every regular file; the fd
        is open until the next item is asked for."""
        for guest, host in preopens:
            try:
                root = os.open(host, _DIR_FLAGS)
            except FileNotFoundError:
                continue
            # frames: (fd, "fs/<grant>/<dir>/", depth, sub-directories still to visit)
            stack: list[tuple[int, str, int, Iterator[str]]] = []
            fd: int | None = root
            prefix, depth = f"fs/{guest}/", 0
            try:
                while True:
                    if fd is not None:
                        files, dirs = self._scan(fd)
                        stack.append((fd, prefix, depth, iter(dirs)))
                        fd = None
                        for name, st in files:
                            yield stack[-1][0], name, prefix + name, st
                    if not stack:
                        break
                    top, top_prefix, top_depth, pending = stack[-1]
                    sub = next(pending, None)
                    if sub is None:
                        stack.pop()
                        os.close(top)
                        continue
                    if top_depth + 1 > self.max_depth:
                        raise NightCoreError(
                            f"a read-write grant is deeper than {self.max_depth} directories",
                            code="TREE_LIMIT",
                        )
                    fd = self._open_dir(sub, top)
                    prefix, depth = f"{top_prefix}{sub}/", top_depth + 1
            finally:
                if fd is not None:
                    os.close(fd)
                for frame in stack:
                    os.close(frame[0])


def snapshot(
    preopens: Iterable[tuple[str, Path]],
    *,
    max_depth: int = MAX_TREE_DEPTH,
    max_entries: int = MAX_TREE_ENTRIES,
) -> FileState:
    """Sizes and mtimes of regular files under the given (guest name, host dir) pairs.

    Raises ``NightCoreError(TREE_LIMIT)`` for a tree deeper than ``max_depth`` directories or
    with more than ``max_entries`` entries; an OSError other than the tenant's own doing
    (see ``_RACED``) is raised as is. A missing grant directory is empty.
    """
    state: FileState = {}
    for _fd, _name, rel, st in _Walk(max_depth, max_entries).files(preopens):
        state[rel] = (st.st_size, st.st_mtime_ns)
    return state


_Hashed = tuple[Literal["ok", "gone", "raced", "budget"], str, int]


def _hash_at(dir_fd: int, name: str, budget: int) -> _Hashed:
    """(status, sha256, size) of the regular file ``name`` in ``dir_fd``, read through the
    descriptor opened here only. ``gone``: deleted meanwhile; ``raced``: no longer a regular
    file, unreadable, or changed while being read; ``budget``: larger than ``budget`` bytes."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return "gone", "", 0
    except OSError as exc:
        if exc.errno not in _RACED:
            raise
        return "raced", "", 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "raced", "", 0
        if st.st_size > budget:
            return "budget", "", 0
        h = hashlib.sha256()
        left = st.st_size + 1  # one byte more than it claims: a file still growing is refused
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        if left <= 0:
            return "raced", "", 0
        return "ok", h.hexdigest(), st.st_size + 1 - left
    finally:
        os.close(fd)


def written_files(
    before: Mapping[str, tuple[int, int]],
    preopens: Iterable[tuple[str, Path]],
    *,
    max_files: int = MAX_WRITTEN_FILES,
    max_bytes: int = MAX_WRITTEN_BYTES,
    max_depth: int = MAX_TREE_DEPTH,
    max_entries: int = MAX_TREE_ENTRIES,
) -> tuple[list[tuple[str, str]], bool]:
    """(name, sha256) of files created or changed since ``before``, sorted; True when the list
    is incomplete (more than ``max_files`` files or ``max_bytes`` bytes, or entries the tenant
    changed or hid while the host looked). Raises like :func:`snapshot`."""
    walk = _Walk(max_depth, max_entries)
    out: list[tuple[str, str]] = []
    total = 0
    truncated = False
    items = walk.files(preopens)
    try:
        for dir_fd, name, rel, st in items:
            if before.get(rel) == (st.st_size, st.st_mtime_ns):
                continue
            if len(out) >= max_files:
                truncated = True
                break
            status, digest, size = _hash_at(dir_fd, name, max_bytes - total)
            if status == "budget":
                truncated = True
                break
            if status != "ok":
                truncated = truncated or status == "raced"
                continue
            total += size
            out.append((rel, digest))
    finally:
        items.close()
    out.sort()
    return out, truncated or walk.incomplete


@dataclass(frozen=True)
class RunFacts:
    tenant: str
    run_id: str
    module_sha256: str
    envelope_sha256: str
    signer_key_id: str
    limits: dict[str, int]
    capabilities: dict[str, Any]
    argv: list[str]
    code: str
    exit_code: int | None
    detail: str
    fuel_used: int | None  # None when the sandbox could not know it (RunResult.fuel_reported)
    wall_us: int
    memory_bytes: int
    output_bytes: int
    stdout_sha256: str
    stderr_sha256: str
    audit_seq: int
    deterministic: bool
    seed: int
    node_id: str
    node_name: str
    written: list[tuple[str, str]]
    written_truncated: bool
    # How the run was isolated (docs/strongbox.md, "Layers"): {"mode": "in-process"} or
    # {"mode": "strongbox", "seccomp", "no_new_privs", "uid", "gid", "landlock_abi", "netns",
    # "mountns"} as observed by the parent.
    isolation: dict[str, Any] = field(default_factory=lambda: {"mode": "in-process"})


_VERSIONS: dict[str, str] | None = None


def build_statement(f: RunFacts) -> dict[str, Any]:
    from nightcore.versions import runtime_versions

    global _VERSIONS  # noqa: PLW0603 - computed once per process, read-only after
    if _VERSIONS is None:
        _VERSIONS = runtime_versions()
    subjects = [
        ("module.wasm", f.module_sha256),
        ("stdout", f.stdout_sha256),
        ("stderr", f.stderr_sha256),
        *f.written,
    ]
    predicate: dict[str, Any] = {
        "tenant": f.tenant,
        "run_id": f.run_id,
        "manifest_envelope_sha256": f.envelope_sha256,
        "signer_key_id": f.signer_key_id,
        "limits": f.limits,
        "capabilities": f.capabilities,
        "argv": f.argv,
        "outcome": {"code": f.code, "exit_code": f.exit_code, "detail": f.detail[:500]},
        "fuel_used": f.fuel_used,
        "wall_us": f.wall_us,
        "memory_bytes": f.memory_bytes,
        "output_bytes": f.output_bytes,
        "audit_seq": f.audit_seq,
        "deterministic": f.deterministic,
        "node": {"id": f.node_id, "name": f.node_name},
        "runtime": dict(_VERSIONS),
        "written_files_truncated": f.written_truncated,
        "isolation": dict(f.isolation),
    }
    if f.deterministic:
        predicate["seed"] = f.seed
    return make_statement(subjects, RUN_PREDICATE_TYPE, predicate)


def sign_attestation(statement: dict[str, Any], signer: Any) -> bytes:
    return sign_payload_with(canonical(statement), signer) + b"\n"


def open_attestation(data: bytes, node_key: PublicKey) -> dict[str, Any]:
    """Verify an attestation envelope with the node key; return its statement."""
    env = parse_envelope(data)
    if not verify_signature(env, node_key):
        raise NightCoreError(
            "attestation is not signed by this node key", code="ATTESTATION_SIGNATURE_INVALID"
        )
    stmt = parse_json(
        env.payload, max_bytes=MAX_ENVELOPE_BYTES, what="attestation", code="ATTESTATION_INVALID"
    )
    if (
        not isinstance(stmt, dict)
        or stmt.get("_type") != STATEMENT_TYPE
        or stmt.get("predicateType") != RUN_PREDICATE_TYPE
        or not isinstance(stmt.get("predicate"), dict)
        or not isinstance(stmt.get("subject"), list)
    ):
        raise NightCoreError("not a Night Core run attestation", code="ATTESTATION_INVALID")
    return stmt


def subject_digests(stmt: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for s in stmt["subject"]:
        if isinstance(s, dict) and isinstance(s.get("digest"), dict):
            out[str(s.get("name"))] = str(s["digest"].get("sha256", ""))
    return out
