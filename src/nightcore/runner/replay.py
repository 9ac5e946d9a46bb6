"""``nightcore replay RUN_ID``: re-execute a recorded run and compare its output digests.

Inputs come from evidence only: the run's node-signed attestation (verified with
``node.pub.pem``), the module and manifest envelope stored by digest under
``state/content/`` at admission, the recorded limits, argv and determinism seed. Preopened
directories are copies of the tenant's *current* data directories in a scratch dir, so a
replay never changes tenant state (and a tenant whose inputs changed since can diverge).
The copy reads tenant files like every other host-side read (docs/limits.md): descriptor-
relative opens with ``O_NOFOLLOW``, never a path resolved again, regular files only (links
are re-created as links, FIFOs and devices skipped), capped by the run's ``disk_files`` and
``disk_bytes`` (``DISK_LIMIT`` past them) and 128 directories deep.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import stat
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
MAX_COPY_DEPTH = 128
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# An entry changed or vanished under the copy (the tenant's own doing): skipped.
_RACED = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EACCES})


class _Budget:
    def __init__(self, limits: EffectiveLimits) -> None:
        self.entries = limits.disk_files
        self.bytes = limits.disk_bytes

    def take(self, entries: int = 0, nbytes: int = 0) -> None:
        self.entries -= entries
        self.bytes -= nbytes
        if self.entries < 0 or self.bytes < 0:
            raise NightCoreError(
                "the tenant's data is over the run's disk_files / disk_bytes: not copied "
                "for the replay",
                code="DISK_LIMIT",
            )


def _copy_file(name: str, dir_fd: int, dst: Path, budget: _Budget) -> None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _RACED:
            return
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return  # swapped for something else meanwhile
        budget.take(nbytes=st.st_size)
        left = st.st_size
        with open(dst, "xb") as out:
            while left > 0:  # never more than it claimed: a growing file is cut there
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)
    finally:
        os.close(fd)


def copy_grant(src: Path, dst: Path, limits: EffectiveLimits) -> None:
    """Copy the grant directory ``src`` (absent: empty) to the new directory ``dst``."""
    dst.mkdir(parents=True)
    budget = _Budget(limits)
    try:
        root = os.open(src, _DIR_FLAGS)
    except FileNotFoundError:
        return
    stack: list[tuple[int, Path, int]] = [(root, dst, 0)]
    try:
        while stack:
            fd, out, depth = stack[-1]
            stack.pop()
            try:
                with os.scandir(fd) as it:
                    entries = [(e.name, e.stat(follow_symlinks=False).st_mode) for e in it]
                budget.take(entries=len(entries))
                for name, mode in entries:
                    if stat.S_ISREG(mode):
                        _copy_file(name, fd, out / name, budget)
                    elif stat.S_ISLNK(mode):
                        os.symlink(os.readlink(name, dir_fd=fd), out / name)
                    elif stat.S_ISDIR(mode):
                        if depth + 1 > MAX_COPY_DEPTH:
                            raise NightCoreError(
                                f"the tenant's data is deeper than {MAX_COPY_DEPTH} "
                                "directories: not copied for the replay",
                                code="TREE_LIMIT",
                            )
                        try:
                            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                        except OSError as exc:
                            if exc.errno in _RACED:
                                continue
                            raise
                        (out / name).mkdir()
                        stack.append((child, out / name, depth + 1))
            finally:
                os.close(fd)
    finally:
        for fd, _out, _depth in stack:
            os.close(fd)


@dataclass(frozen=True)
class ReplayResult:
    run_id: str
    code: str  # REPLAY_MATCH | REPLAY_DIVERGED
    diverged: str  # "" or the first differing stream: outcome, stdout, stderr
    deterministic: bool
    original: dict[str, str]
    replayed: dict[str, str]
    # How the replay ran and how the run was attested ("in-process" / "strongbox"; "" for
    # an attestation from before the isolation was recorded). Fuel, and so a deterministic
    # run's clocks, is the same in both modes (docs/strongbox.md, "Fuel").
    isolation: str = "in-process"
    attested_isolation: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "code": self.code,
            "diverged": self.diverged,
            "deterministic": self.deterministic,
            "original": self.original,
            "replayed": self.replayed,
            "isolation": self.isolation,
            "attested_isolation": self.attested_isolation,
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
    node_key = PublicKey.from_pem(ws.node_public_pem())
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


def _replay_sandbox(ws: NodeContext, tenant: str, preopens: list[Preopen], scratch: str) -> Any:
    """A one-worker strongbox for a confined replay: the tenant's own uid owns the scratch
    copies of its grants; the workspace's keys and state stay out of reach."""
    from nightcore.sandbox.isolation import TenantIds, strongbox_unavailable
    from nightcore.sandbox.strongbox import StrongboxSandbox

    why = strongbox_unavailable()
    if why:
        raise NightCoreError(
            f"this replay must run confined (strongbox), which is not available here: {why}",
            code="STRONGBOX_UNAVAILABLE",
        )
    layout, config = ws.layout, ws.config
    ids = TenantIds(
        layout.state_dir / "strongbox" / "ids.json",
        config.strongbox_uid_base,
        config.strongbox_uid_count,
    )
    box = StrongboxSandbox(
        workers=1, ids=ids, hide=(layout.private_dir.resolve(), layout.state_dir.resolve())
    )
    try:
        os.chmod(scratch, 0o711)  # noqa: S103 - the tenant's uid reaches its copies only
        for p in preopens:
            box.grant_access(p.host_dir, tenant)
    except BaseException:
        box.close()
        raise
    return box


def replay(ws: NodeContext, run_id: str, *, strongbox: bool = False) -> ReplayResult:
    """Re-run ``run_id`` and compare with its attestation. In process, or confined when
    ``strongbox`` is asked or node policy requires it for the tenant (``[policy]
    isolation`` / ``strongbox_tenants``): a replay runs tenant code like any run."""
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
            copy_grant(src, dst, limits)
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
        confined = strongbox or ws.policy.requires_strongbox(manifest.tenant)
        sandbox: Any = (
            _replay_sandbox(ws, manifest.tenant, preopens, scratch)
            if confined
            else Sandbox(None, b"")
        )
        with sandbox:
            result = sandbox.run(module, cfg)
    attested = pred.get("isolation")
    attested_mode = str(attested.get("mode", "")) if isinstance(attested, dict) else ""
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
        "strongbox" if confined else "in-process",
        attested_mode,
    )
    ws.audit().append(
        "replay",
        {
            "run_id": run_id,
            "code": res.code,
            "diverged": diverged,
            "replayed": replayed,
            "isolation": res.isolation,
        },
        manifest.tenant,
    )
    return res
