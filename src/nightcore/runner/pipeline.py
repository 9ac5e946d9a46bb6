"""The main job: verify -> admit -> run -> record, for every selected tenant.

Each package is read once; the verified buffer is the buffer compiled (invariant 1). Every
decision (denial, admission, start, outcome) is an audit event, durable before the next step
is reported. Runs go to a thread pool: Wasmtime releases the GIL during guest execution, and
each run owns its Store, so one hostile tenant costs only its own limits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightcore.audit.log import Event
from nightcore.errors import NightCoreError
from nightcore.evidence.attestation import (
    ATTESTATION_FILE,
    RunFacts,
    build_statement,
    sign_attestation,
    snapshot,
    written_files,
)
from nightcore.module.manifest import LIMIT_NAMES, Manifest
from nightcore.sandbox.types import EffectiveLimits, Preopen, RunConfig, RunResult
from nightcore.workspace import Policy, Workspace

if TYPE_CHECKING:
    from nightcore.sandbox.engine import Sandbox
    from nightcore.sandbox.strongbox import StrongboxSandbox


@dataclass
class TenantRun:
    tenant: str
    code: str
    reason: str = ""
    exit_code: int | None = None
    fuel_used: int = 0
    wall_ms: float = 0.0
    memory_bytes: int = 0
    output_bytes: int = 0
    key_id: str = ""
    module_sha256: str = ""
    run_id: str = ""
    audit_seq: int | None = None
    cache: str = ""
    limits: dict[str, int] | None = None
    ts: str = ""
    envelope_sha256: str = ""
    capabilities: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "code": self.code,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "fuel_used": self.fuel_used,
            "wall_ms": self.wall_ms,
            "memory_bytes": self.memory_bytes,
            "output_bytes": self.output_bytes,
            "key_id": self.key_id,
            "module_sha256": self.module_sha256,
            "run_id": self.run_id,
        }


def effective_limits(m: Manifest, policy: Policy) -> EffectiveLimits:
    """Manifest limits, or the node default where the manifest is silent, never above the max.

    Verification already denied any request above the node maximum (CAPABILITY_DENIED); the
    min() is a second line of defence, not the rule.
    """
    asked = m.limits.to_dict()
    vals = {}
    for name in LIMIT_NAMES:
        value = asked.get(name, getattr(policy.default_limits, name))
        vals[name] = min(value, getattr(policy.max_limits, name))
    return EffectiveLimits(**vals)


def prepare_preopens(ws: Workspace, m: Manifest) -> tuple[Preopen, ...]:
    """Create each granted directory under ``state/tenants/<tenant>/``, refusing symlinks."""
    root = ws.tenant_data_root(m.tenant)
    if not root.is_dir():  # a stat, not a mkdir, on every run after the first
        root.mkdir(parents=True, exist_ok=True)
    out = []
    for grant in m.capabilities.fs:
        path = root
        for part in grant.path.split("/"):
            path = path / part
            if path.is_symlink():
                raise NightCoreError(
                    f"preopen {grant.path!r} crosses a symlink in the data root",
                    code="PREOPEN_INVALID",
                )
            if not path.is_dir():
                path.mkdir(exist_ok=True)
        real = path.resolve()
        if not real.is_relative_to(root.resolve()):
            raise NightCoreError(
                f"preopen {grant.path!r} resolves outside the data root", code="PREOPEN_INVALID"
            )
        out.append(Preopen(host_dir=real, guest_path=grant.path, writable=grant.mode == "rw"))
    return tuple(out)


def _store_content(
    ws: Workspace, module_sha: str, module: bytes, env_sha: str, envelope: bytes
) -> None:
    """Keep each executed module and its envelope by digest (for replay and forensics)."""
    for sub, digest, data, ext in (
        ("modules", module_sha, module, "wasm"),
        ("envelopes", env_sha, envelope, "dsse.json"),
    ):
        if not data:
            continue
        path = ws.state_dir / "content" / sub / f"{digest}.{ext}"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def _start_event(tr: TenantRun, cfg: RunConfig) -> Event:
    return Event("run_start", {"run_id": tr.run_id, "module_sha256": cfg.module_sha256}, cfg.tenant)


def new_run_id(tenant: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{stamp}-{tenant}-{secrets.token_hex(4)}"


def _write_output(path: Path, data: bytes) -> None:
    # Not fsync'd: the durable record of a run is its run_outcome audit line, which carries
    # these files' SHA-256. A crash can lose an output file, never the evidence of what it was.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


@dataclass
class RunReport:
    runs: list[TenantRun]
    checkpoint: dict[str, Any] | None = None  # {size, root} of the checkpoint signed after the run
    checkpoint_error: tuple[str, str] | None = None  # (code, message) when none could be signed
    mirrors: list[dict[str, Any]] = field(default_factory=list)  # audit mirror statuses
    index_error: tuple[str, str] | None = None  # the run index could not be updated

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)


ProgressFn = Callable[[TenantRun], None]


class Runner:
    """Runs tenants of one workspace. Reusable: the sandbox (engines, caches) stays warm."""

    def __init__(self, ws: Workspace, *, strongbox: bool = False) -> None:
        """``strongbox=True`` runs every tenant in a confined worker process (seccomp, no
        network, unprivileged uid; docs/strongbox.md) instead of in this process."""
        self.ws = ws
        self.strongbox = strongbox
        self._sandbox: Sandbox | StrongboxSandbox | None = None
        self._run_index: Any = None
        self._lock = threading.Lock()

    def sandbox(self) -> Sandbox | StrongboxSandbox:
        with self._lock:
            if self._sandbox is None and self.strongbox:
                from nightcore.sandbox.strongbox import StrongboxSandbox, seccomp_available

                why = seccomp_available()
                if why:
                    raise NightCoreError(
                        f"--strongbox is not available here: {why}", code="STRONGBOX_UNAVAILABLE"
                    )
                self._sandbox = StrongboxSandbox(
                    workers=self.ws.config.parallel, on_event=self._on_sandbox_event
                )
            if self._sandbox is None:
                from nightcore.sandbox.engine import Sandbox

                secret = (self.ws.root / "private" / "cache.secret").read_bytes()
                self._sandbox = Sandbox(
                    self.ws.state_dir / "cache", secret, on_event=self._on_sandbox_event
                )
            return self._sandbox

    def close(self) -> None:
        if self._run_index is not None:
            self._run_index.close()
            self._run_index = None
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def _on_sandbox_event(self, event: str, data: dict[str, object]) -> None:
        tenant = data.get("tenant")
        self.ws.audit().append(
            event,
            {k: v for k, v in data.items() if k != "tenant"},
            tenant if isinstance(tenant, str) else None,
        )

    def run(
        self,
        tenants: list[str] | None = None,
        *,
        parallel: int | None = None,
        progress: ProgressFn | None = None,
        checkpoint: bool = True,
    ) -> RunReport:
        """Verify, admit, run and record ``tenants`` (all when None).

        ``checkpoint=True`` (the CLI) signs a checkpoint over everything this call logged;
        services calling many times a second pass False and get one every
        ``[audit] checkpoint_every`` entries instead (plus heartbeats when idle).
        """
        from nightcore import api
        from nightcore.module.package import check_tenant_dir_name
        from nightcore.runner.cordon import load_cordons

        ws = self.ws
        names = api.select_tenants(ws, tenants)
        verified = api.verify_packages(ws, names)
        cordons = load_cordons(ws)
        audit = ws.audit()

        results: dict[str, TenantRun] = {}
        admitted: list[tuple[TenantRun, RunConfig, bytes]] = []
        events: list[Event] = []
        for v in verified:
            d = v.decision
            try:
                check_tenant_dir_name(d.tenant)
                tenant: str | None = d.tenant
            except NightCoreError:
                tenant = None
            data = api.decision_event(d)
            tr = TenantRun(
                tenant=d.tenant,
                code=d.code,
                reason=d.reason,
                key_id=d.key_id,
                module_sha256=d.module_sha256,
            )
            results[d.tenant] = tr
            if not d.ok or d.manifest is None:
                if tenant is None:
                    data["dir_name_sha256"] = hashlib.sha256(d.tenant.encode()).hexdigest()
                events.append(Event("verify", data, tenant))
                continue
            if d.tenant in cordons:
                tr.code, tr.reason = "CORDONED", f"cordoned: {cordons[d.tenant].get('reason', '')}"
                events.append(
                    Event(
                        "admission_denied",
                        {**data, "code": "CORDONED", "reason": tr.reason},
                        d.tenant,
                    )
                )
                continue
            m = d.manifest
            try:
                preopens = prepare_preopens(ws, m)
            except NightCoreError as exc:
                tr.code, tr.reason = exc.code, exc.message
                events.append(
                    Event(
                        "admission_denied",
                        {**data, "code": exc.code, "reason": exc.message},
                        d.tenant,
                    )
                )
                continue
            limits = effective_limits(m, ws.policy)
            tr.limits = limits.to_dict()
            tr.capabilities = m.capabilities.to_dict()
            tr.run_id = new_run_id(d.tenant)
            cfg = RunConfig(
                tenant=d.tenant,
                module_sha256=d.module_sha256,
                entrypoint=m.entrypoint,
                argv=(d.tenant, *m.args),
                env=m.capabilities.env,
                preopens=preopens,
                limits=limits,
                deterministic=m.deterministic,
                # 53 bits: the seed is logged as a JSON integer, exact below 2**53.
                seed=secrets.randbits(53) if m.deterministic else 0,
            )
            events.append(
                Event(
                    "admit",
                    {
                        **data,
                        "run_id": tr.run_id,
                        "limits": limits.to_dict(),
                        "capabilities": m.capabilities.to_dict(),
                        "deterministic": m.deterministic,
                        "seed": cfg.seed,
                    },
                    d.tenant,
                )
            )
            admitted.append((tr, cfg, v.module))
            _store_content(ws, d.module_sha256, v.module, d.envelope_sha256, v.envelope)
            tr.envelope_sha256 = d.envelope_sha256
        workers = max(1, min(parallel or ws.config.parallel, len(admitted) or 1))
        # The first `workers` admitted tenants start the moment the batch is durable, so
        # their run_start lines ride in the same write and fsync; later ones log their own.
        for tr, cfg, _module in admitted[:workers]:
            events.append(_start_event(tr, cfg))
        audit.append_many(events)
        for tr in results.values():
            if tr.code != "OK" and progress is not None:
                progress(tr)

        if admitted:
            sandbox = self.sandbox()
            if self.strongbox:
                # Workers run as an unprivileged uid: hand them their data directories.
                for _tr, cfg, _module in admitted:
                    for p in cfg.preopens:
                        sandbox.grant_access(p.host_dir)  # type: ignore[union-attr]
            logged = {id(item[0]) for item in admitted[:workers]}

            def one(item: tuple[TenantRun, RunConfig, bytes]) -> TenantRun:
                tr, cfg, module = item
                try:
                    if id(tr) not in logged:
                        self.ws.audit().append_many([_start_event(tr, cfg)])
                    return self._execute(sandbox, tr, cfg, module)
                finally:
                    if progress is not None:
                        progress(tr)

            if workers == 1:
                for item in admitted:
                    one(item)
            else:
                with ThreadPoolExecutor(
                    max_workers=workers, thread_name_prefix="nightcore-run"
                ) as pool:
                    list(pool.map(one, admitted))

        report = RunReport([results[n] for n in names])
        try:
            self._index([r for r in results.values() if r.audit_seq is not None])
        except NightCoreError as exc:
            # The index is derived from the audit log (already durable): a broken index is
            # reported, never a reason to call the run failed.
            report.index_error = (exc.code, exc.message)
        self._checkpoint(report, always=checkpoint)
        return report

    def _checkpoint(self, report: RunReport, *, always: bool) -> None:
        """Sign a checkpoint over everything this run logged (C2SP tlog-checkpoint)."""
        from nightcore.audit.tlog import checkpoint_after_run, maybe_checkpoint

        try:
            cp = (
                checkpoint_after_run(self.ws)
                if always
                else maybe_checkpoint(self.ws, self.ws.config.checkpoint_every)
            )
        except NightCoreError as exc:
            report.checkpoint_error = (exc.code, exc.message)
            return
        if cp is None:
            return
        report.checkpoint = {"size": cp.size, "root": cp.root.hex()}
        from nightcore.audit.mirror import mirrors, sync_all

        if mirrors(self.ws):
            # A mirror outage is reported, never fatal: local evidence is already durable.
            report.mirrors = [m.to_dict() for m in sync_all(self.ws)]

    def node_signer(self) -> Any:
        return self.ws.node_signer()

    def _execute(
        self, sandbox: Sandbox | StrongboxSandbox, tr: TenantRun, cfg: RunConfig, module: bytes
    ) -> TenantRun:
        ws = self.ws
        audit = ws.audit()
        rw = [(p.guest_path, p.host_dir) for p in cfg.preopens if p.writable]
        before = snapshot(rw) if rw else {}
        try:
            result: RunResult = sandbox.run(module, cfg)
        except NightCoreError as exc:
            # A sandbox refusal (e.g. a preopen a strongbox worker cannot reach) ends this
            # tenant's run with its code; the run_start already logged gets its outcome.
            result = RunResult(
                code=exc.code,
                exit_code=None,
                fuel_used=0,
                wall_ms=0.0,
                memory_bytes=0,
                stdout=b"",
                stderr=b"",
                detail=exc.message,
            )
        run_dir = ws.state_dir / "runs" / tr.run_id
        run_dir.mkdir(parents=True)
        _write_output(run_dir / "stdout", result.stdout)
        if result.stderr:  # an absent stderr file means an empty stream (its digest is logged)
            _write_output(run_dir / "stderr", result.stderr)
        tr.code = result.code
        tr.reason = result.detail
        tr.exit_code = result.exit_code
        tr.fuel_used = result.fuel_used
        wall_us = round(result.wall_ms * 1000)
        tr.wall_ms = wall_us / 1000
        tr.memory_bytes = result.memory_bytes
        tr.output_bytes = result.output_bytes
        tr.cache = result.cache
        entry = audit.append(
            "run_outcome",
            {
                "run_id": tr.run_id,
                "code": result.code,
                "detail": result.detail[:500],
                "exit_code": result.exit_code,
                "fuel_used": result.fuel_used,
                "wall_us": wall_us,
                "memory_bytes": result.memory_bytes,
                "output_bytes": result.output_bytes,
                "output_truncated": result.output_truncated,
                "stdout_sha256": hashlib.sha256(result.stdout).hexdigest(),
                "stderr_sha256": hashlib.sha256(result.stderr).hexdigest(),
                "key_id": tr.key_id,
                "module_sha256": cfg.module_sha256,
                "limits": cfg.limits.to_dict(),
                "cache": result.cache,
            },
            cfg.tenant,
        )
        tr.audit_seq = entry.seq
        tr.ts = str(entry.record["ts"])
        written, truncated = written_files(before, rw) if rw else ([], False)
        facts = RunFacts(
            tenant=cfg.tenant,
            run_id=tr.run_id,
            module_sha256=cfg.module_sha256,
            envelope_sha256=tr.envelope_sha256,
            signer_key_id=tr.key_id,
            limits=cfg.limits.to_dict(),
            capabilities=tr.capabilities,
            argv=list(cfg.argv),
            code=result.code,
            exit_code=result.exit_code,
            detail=result.detail,
            fuel_used=result.fuel_used,
            wall_us=wall_us,
            memory_bytes=result.memory_bytes,
            output_bytes=result.output_bytes,
            stdout_sha256=hashlib.sha256(result.stdout).hexdigest(),
            stderr_sha256=hashlib.sha256(result.stderr).hexdigest(),
            audit_seq=entry.seq,
            deterministic=cfg.deterministic,
            seed=cfg.seed,
            node_id=ws.node_key_id(),
            node_name=ws.config.node_name,
            written=written,
            written_truncated=truncated,
        )
        _write_output(
            run_dir / ATTESTATION_FILE, sign_attestation(build_statement(facts), self.node_signer())
        )
        return tr

    def _index(self, runs: list[TenantRun]) -> None:
        from nightcore.store.index import RunIndex

        if not runs:
            return
        if self._run_index is None:
            self._run_index = RunIndex(self.ws.state_dir / "nightcore.db")
        self._run_index.add(
            {
                "run_id": r.run_id,
                "tenant": r.tenant,
                "code": r.code,
                "exit_code": r.exit_code,
                "fuel_used": r.fuel_used,
                "wall_ms": r.wall_ms,
                "memory_bytes": r.memory_bytes,
                "output_bytes": r.output_bytes,
                "key_id": r.key_id,
                "module_sha256": r.module_sha256,
                "ts": r.ts,
                "audit_seq": r.audit_seq,
            }
            for r in runs
        )


def run_tenants(
    ws: Workspace,
    tenants: list[str] | None = None,
    *,
    parallel: int | None = None,
    progress: ProgressFn | None = None,
    strongbox: bool = False,
) -> RunReport:
    runner = Runner(ws, strongbox=strongbox)
    try:
        return runner.run(tenants, parallel=parallel, progress=progress)
    finally:
        runner.close()


def rebuild_index(ws: Workspace) -> int:
    from nightcore.audit.log import verify_chain
    from nightcore.store.index import RunIndex, row_from_outcome

    audit = ws.audit()
    verify_chain(audit.iter_lines())  # never index from a log that does not verify
    rows = [r for e in audit.entries() if (r := row_from_outcome(e.record)) is not None]
    index = RunIndex(ws.state_dir / "nightcore.db")
    try:
        return index.rebuild(rows)
    finally:
        index.close()


def query_runs(ws: Workspace, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    from nightcore.store.index import RunIndex

    index = RunIndex(ws.state_dir / "nightcore.db")
    try:
        return index.query(tenant, limit)
    finally:
        index.close()
