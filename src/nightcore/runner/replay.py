"""``nightcore replay RUN_ID``: re-execute a recorded run and compare its output digests.

Inputs come from evidence only: the run's node-signed attestation (verified with
``node.pub.pem``), the module and manifest envelope stored by digest under
``state/content/`` at admission, the recorded limits, argv and determinism seed. Preopened
directories are copies of the tenant's *current* data directories in a scratch dir, so a
replay never changes tenant state (and a tenant whose inputs changed since can diverge).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nightcore.context import NodeContext
from nightcore.errors import NightCoreError
from nightcore.evidence.attestation import ATTESTATION_FILE, open_attestation, subject_digests
from nightcore.module.manifest import manifest_from_dict
from nightcore.module.package import read_capped
from nightcore.sandbox.types import EffectiveLimits, NetAccess, Preopen, RunConfig
from nightcore.trust.pubkey import PublicKey

_RUN_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")


@dataclass(frozen=True)
class ReplayResult:
    run_id: str
    code: str  # REPLAY_MATCH | REPLAY_DIVERGED
    diverged: str  # "" or the first differing stream: outcome, stdout, stderr
    deterministic: bool
    original: dict[str, str]
    replayed: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "code": self.code,
            "diverged": self.diverged,
            "deterministic": self.deterministic,
            "original": self.original,
            "replayed": self.replayed,
        }


def _content(ws: NodeContext, sub: str, digest: str, ext: str, cap: int) -> bytes:
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise NightCoreError("attestation names a malformed digest", code="ATTESTATION_INVALID")
    data = read_capped(ws.layout.content_dir / sub / f"{digest}.{ext}", cap, f"{sub}/{digest}")
    if hashlib.sha256(data).hexdigest() != digest:
        raise NightCoreError(
            f"stored {sub} {digest[:16]} does not match its digest", code="CONTENT_TAMPERED"
        )
    return data


def _open_attestation(ws: NodeContext, data: bytes) -> dict[str, Any]:
    """The attestation, signed by the node key, or (a run before a node-key rotation) by the
    key of the node-key history that was active then and is not revoked for its audit line."""
    node_key = PublicKey.from_pem(ws.layout.node_pub_path.read_bytes())
    try:
        return open_attestation(data, node_key)
    except NightCoreError as exc:
        if exc.code != "ATTESTATION_SIGNATURE_INVALID":
            raise
        history = ws.transparency_log().history()
        for k in history.keys[:-1]:
            key = PublicKey.from_pem(k.public_pem)
            try:
                stmt = open_attestation(data, key)
            except NightCoreError:
                continue
            seq = stmt["predicate"].get("audit_seq")
            if history.signer_allowed(key.keyid, seq if type(seq) is int else None):
                return stmt
        raise


def replay(ws: NodeContext, run_id: str) -> ReplayResult:
    from nightcore.sandbox.engine import Sandbox

    if not _RUN_ID.fullmatch(run_id):
        raise NightCoreError("not a run id", code="USAGE")
    run_dir = ws.layout.run_dir(run_id)
    if not run_dir.is_dir():
        raise NightCoreError(f"run {run_id} not found", code="RUN_NOT_FOUND")
    stmt = _open_attestation(ws, read_capped(run_dir / ATTESTATION_FILE, 1 << 20, "attestation"))
    pred = stmt["predicate"]
    subjects = subject_digests(stmt)
    module = _content(ws, "modules", subjects["module.wasm"], "wasm", 64 << 20)
    envelope = json.loads(
        _content(ws, "envelopes", str(pred["manifest_envelope_sha256"]), "dsse.json", 1 << 20)
    )
    manifest = manifest_from_dict(json.loads(base64.b64decode(envelope["payload"]))["predicate"])
    limits = EffectiveLimits(**pred["limits"])
    with tempfile.TemporaryDirectory(prefix="nightcore-replay-") as scratch:
        preopens = []
        for grant in manifest.capabilities.fs:
            src = ws.layout.tenant_data_root(manifest.tenant) / grant.path
            dst = Path(scratch) / grant.path
            if src.is_dir():
                shutil.copytree(src, dst, symlinks=True)
            else:
                dst.mkdir(parents=True)
            preopens.append(
                Preopen(host_dir=dst, guest_path=grant.path, writable=grant.mode == "rw")
            )
        cfg = RunConfig(
            tenant=manifest.tenant,
            module_sha256=subjects["module.wasm"],
            entrypoint=manifest.entrypoint,
            argv=tuple(pred["argv"]),
            env=manifest.capabilities.env,
            preopens=tuple(preopens),
            limits=limits,
            deterministic=bool(pred["deterministic"]),
            seed=int(pred.get("seed", 0)),
            # A replay makes no network request: the NET API links, and every call returns
            # NC_ELIMIT (-10), as with max_requests = 0 (docs/net.md, "Replay").
            net=NetAccess(manifest.capabilities.net, 0, 0, 0)
            if manifest.capabilities.net
            else None,
        )
        with Sandbox(None, b"") as sandbox:
            result = sandbox.run(module, cfg)
    original = {
        "outcome": str(pred["outcome"]["code"]),
        "stdout": subjects["stdout"],
        "stderr": subjects["stderr"],
    }
    replayed = {
        "outcome": result.code,
        "stdout": hashlib.sha256(result.stdout).hexdigest(),
        "stderr": hashlib.sha256(result.stderr).hexdigest(),
    }
    diverged = next((k for k in ("outcome", "stdout", "stderr") if original[k] != replayed[k]), "")
    res = ReplayResult(
        run_id,
        "REPLAY_DIVERGED" if diverged else "REPLAY_MATCH",
        diverged,
        bool(pred["deterministic"]),
        original,
        replayed,
    )
    ws.audit().append(
        "replay",
        {"run_id": run_id, "code": res.code, "diverged": diverged, "replayed": replayed},
        manifest.tenant,
    )
    return res
