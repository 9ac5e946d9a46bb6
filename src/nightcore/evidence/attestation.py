"""Run attestations: an in-toto Statement v1 per executed run, DSSE-signed by the node key.

Subjects: the module (``module.wasm``), the run's ``stdout`` and ``stderr``, and every file
the tenant created or changed in its read-write preopens (``fs/<grant>/<path>``).
Predicate (``urn:nightcore:predicate:run:v1``): who signed the manifest, the limits and
capabilities in force after node policy, the outcome and what it cost, the node and runtime
versions, the audit seq of the run's ``run_outcome`` line, and the determinism seed.
Stored as ``state/runs/<run-id>/attestation.intoto.dsse.json``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

FileState = dict[str, tuple[int, int]]  # relative path -> (size, mtime_ns)


def snapshot(preopens: Iterable[tuple[str, Path]]) -> FileState:
    """Sizes and mtimes of regular files under the given (guest name, host dir) pairs."""
    state: FileState = {}
    for guest, host in preopens:
        for dirpath, _dirs, files in os.walk(host, followlinks=False):
            for name in files:
                p = Path(dirpath) / name
                try:
                    st = p.lstat()
                except FileNotFoundError:
                    continue
                if p.is_symlink() or not p.is_file():
                    continue
                rel = f"fs/{guest}/{p.relative_to(host).as_posix()}"
                state[rel] = (st.st_size, st.st_mtime_ns)
                if len(state) > MAX_WRITTEN_FILES * 10:
                    return state
    return state


def written_files(
    before: FileState, preopens: Iterable[tuple[str, Path]]
) -> tuple[list[tuple[str, str]], bool]:
    """(name, sha256) of files created or changed since ``before``; True when truncated."""
    pairs = list(preopens)
    after = snapshot(pairs)
    roots = {f"fs/{g}/": h for g, h in pairs}
    out: list[tuple[str, str]] = []
    total = 0
    truncated = False
    for rel in sorted(after):
        if before.get(rel) == after[rel]:
            continue
        if len(out) >= MAX_WRITTEN_FILES or total + after[rel][0] > MAX_WRITTEN_BYTES:
            truncated = True
            break
        prefix = next(p for p in roots if rel.startswith(p))
        path = roots[prefix] / rel[len(prefix) :]
        h = hashlib.sha256()
        try:
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except OSError:
            continue
        total += after[rel][0]
        out.append((rel, h.hexdigest()))
    return out, truncated


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
    fuel_used: int
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
