"""The main job: verify -> admit -> run -> record, for every selected tenant.

Each package is read once; the verified buffer is the buffer compiled (invariant 1). Every
decision (denial, admission, start, outcome) is an audit event, durable before the next step
is reported. Runs go to a thread pool: Wasmtime releases the GIL during guest execution, and
each run owns its Store, so one hostile tenant costs only its own limits.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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
from nightcore.fsio import atomic_write
from nightcore.module.manifest import LIMIT_NAMES, Manifest
from nightcore.sandbox.types import (
    EffectiveLimits,
    Interrupt,
    NetAccess,
    Preopen,
    RunConfig,
    RunResult,
)

if TYPE_CHECKING:
    from nightcore.config import Policy
    from nightcore.context import NodeContext
    from nightcore.layout import Layout


@dataclass
class TenantRun:
    tenant: str
    code: str
    reason: str = ""
    exit_code: int | None = None
    fuel_used: int | None = 0  # None: unknown (Wasmtime never wrote its counter back)
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
        """The ``run`` object of ``nightcore run --json`` and ``POST /api/run`` (docs/json.md,
        docs/schemas/run.schema.json): what a run that never ran (denied, cordoned) does not
        have is null, never "" or 0."""
        ran = bool(self.run_id) and self.code != "CORDONED"
        return {
            "tenant": self.tenant,
            "code": self.code,
            "reason": self.reason,
            "exit_code": self.exit_code if ran else None,
            "fuel_used": self.fuel_used if ran else None,
            "wall_ms": self.wall_ms if ran else None,
            "memory_bytes": self.memory_bytes if ran else None,
            "output_bytes": self.output_bytes if ran else None,
            "key_id": self.key_id,
            "module_sha256": self.module_sha256,
            "run_id": self.run_id if ran else None,
            "audit_seq": self.audit_seq if ran else None,
        }


def effective_limits(
    m: Manifest, policy: Policy, dev_limits: Mapping[str, int] | None = None
) -> EffectiveLimits:
    """Manifest limits, or the node default where the manifest is silent, never above the max.
    ``dev_limits`` (development mode only: ``run --dev-limits``) replace the manifest's values.

    Verification already denied any request above the node maximum (CAPABILITY_DENIED); the
    min() is a second line of defence, not the rule.
    """
    asked = m.limits.to_dict()
    vals = {}
    for name in LIMIT_NAMES:
        value = asked.get(name, getattr(policy.default_limits, name))
        if dev_limits and name in dev_limits:
            value = dev_limits[name]
        vals[name] = min(value, getattr(policy.max_limits, name))
    return EffectiveLimits(**vals)


def net_access(m: Manifest, policy: Policy) -> NetAccess | None:
    """The run's NET capability (docs/net.md): the signed grants, which verification already
    checked against ``allow_net`` and ``[policy.net] allow``, with the node's per-run caps;
    None (no ``nightcore`` host module at all) without grants or when the node forbids NET."""
    if not m.capabilities.net or not policy.allow_net:
        return None
    caps = policy.net
    return NetAccess(
        grants=m.capabilities.net,
        max_request_bytes=caps.max_request_bytes,
        max_response_bytes=caps.max_response_bytes,
        max_requests=caps.max_requests,
    )


def prepare_preopens(layout: Layout, m: Manifest) -> tuple[Preopen, ...]:
    """Create each granted directory under ``state/tenants/<tenant>/``, refusing symlinks."""
    root = layout.tenant_data_root(m.tenant)
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
    layout: Layout, module_sha: str, module: bytes, env_sha: str, envelope: bytes
) -> None:
    """Keep each executed module and its envelope by digest (for replay and forensics)."""
    for sub, digest, data, ext in (
        ("modules", module_sha, module, "wasm"),
        ("envelopes", env_sha, envelope, "dsse.json"),
    ):
        if not data:
            continue
        path = layout.content_dir / sub / f"{digest}.{ext}"
        if not path.exists():
            atomic_write(path, data, durable=False)  # re-created from the package if lost


def _start_event(tr: TenantRun, cfg: RunConfig) -> Event:
    return Event("run_start", {"run_id": tr.run_id, "module_sha256": cfg.module_sha256}, cfg.tenant)


def _random_seed() -> int:
    import secrets

    return secrets.randbits(53)


def host_error(exc: Exception, step: str) -> tuple[str, str]:
    """(code, one-line message) for a failure of the host while handling one tenant's run:
    the error's own code when it has one, else ``HOST_ERROR`` naming the step and the error."""
    if isinstance(exc, NightCoreError):
        return exc.code, exc.message
    text = " ".join(str(exc).split())[:300]
    return "HOST_ERROR", f"host error {step}: {type(exc).__name__}: {text}".rstrip(": ")


def new_run_id(tenant: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{stamp}-{tenant}-{os.urandom(4).hex()}"  # secrets.token_hex(4)


def _write_output(path: Path, data: bytes) -> None:
    # Whole or absent, and not fsync'd: the durable record of a run is its run_outcome audit
    # line, which carries these files' SHA-256. A crash can lose an output file, never the
    # evidence of what it was, and a killed process never leaves a torn one
    # (tests/fault/test_run_kill.py).
    atomic_write(path, data, 0o640, durable=False)


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

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what the node's API returns; the CLI renders the same dict)."""
        return {
            "runs": [r.to_dict() for r in self.runs],
            "checkpoint": self.checkpoint,
            "checkpoint_error": list(self.checkpoint_error) if self.checkpoint_error else None,
            "mirrors": self.mirrors,
            "index_error": list(self.index_error) if self.index_error else None,
        }


ProgressFn = Callable[[TenantRun], None]


class SandboxLike(Protocol):
    """What the runner needs of a sandbox: the in-process one, the strongbox pool, or the
    node's worker pool."""

    def run(
        self, module_bytes: bytes, config: RunConfig, interrupt: Interrupt | None = None
    ) -> RunResult: ...

    def close(self) -> None: ...


Admitted = tuple[TenantRun, RunConfig, bytes]

# Up to COMMIT_GROUP run_start lines are made durable together, and a worker's outcome lines
# are made durable together at most COMMIT_WINDOW_S after the first of them was ready (or when
# its work runs out), so a busy node fsyncs once per group instead of twice per run.
COMMIT_GROUP = 32
COMMIT_WINDOW_S = 0.025


class _Schedule:
    """Admitted runs not yet started, and runs whose run_start is durable but which no worker
    has taken yet (any worker may take those: no worker waits behind a slow neighbour)."""

    def __init__(self, admitted: list[Admitted], workers: int) -> None:
        self._unstarted = deque(admitted)
        self._started: deque[Admitted] = deque()
        self._lock = threading.Lock()
        self.group = max(1, min(COMMIT_GROUP, -(-len(admitted) // workers)))

    def reserve(self) -> list[Admitted]:
        """The next group to start (its run_start lines must be durable before release)."""
        with self._lock:
            return [self._unstarted.popleft() for _ in range(min(self.group, len(self._unstarted)))]

    def release(self, group: list[Admitted]) -> None:
        with self._lock:
            self._started.extend(group)

    def next_started(self) -> Admitted | None:
        with self._lock:
            return self._started.popleft() if self._started else None


@dataclass
class _Executed:
    """A run that finished in the sandbox and whose outcome line is not yet durable."""

    tr: TenantRun
    cfg: RunConfig
    result: RunResult
    run_dir: Path
    outcome: Event
    written: list[Any]
    written_truncated: bool


class Runner:
    """Runs tenants of one workspace. Reusable: the sandbox (engines, caches) stays warm."""

    def __init__(
        self,
        ctx: NodeContext,
        *,
        strongbox: bool = False,
        sandbox: SandboxLike | None = None,
    ) -> None:
        """``strongbox=True`` runs every tenant in a confined worker process (seccomp, no
        network, unprivileged uid; docs/strongbox.md) instead of in this process. A caller that
        owns its own sandbox (the node's worker pool) passes it as ``sandbox``; the runner then
        uses it and leaves closing it to that caller."""
        self.ctx = ctx
        self.strongbox = strongbox
        self._sandbox: SandboxLike | None = sandbox
        self._owns_sandbox = sandbox is None
        # Tenants that node policy requires confined ([policy] isolation / strongbox_tenants)
        # run here when this runner's own sandbox is not a strongbox (docs/strongbox.md).
        self._confined: Any = None
        self._strongbox_why: str | None = None
        self._run_index: Any = None
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._killswitch: Any = None  # nightcore.runner.killswitch.KillSwitch, on first run

    def sandbox(self) -> SandboxLike:
        with self._lock:
            if self._sandbox is None and self.strongbox:
                self._sandbox = self._new_strongbox()
            if self._sandbox is None:
                from nightcore.fsio import read_input
                from nightcore.sandbox.engine import Sandbox

                # Non-blocking, regular, capped: a FIFO or a link to /dev/zero in its place
                # is refused instead of hanging or exhausting the run.
                secret = read_input(
                    self.ctx.layout.cache_secret_path,
                    4096,
                    what="the module cache secret",
                    code="CACHE_SECRET_INVALID",
                )
                self._sandbox = Sandbox(
                    self.ctx.layout.cache_dir, secret, on_event=self._on_sandbox_event
                )
            return self._sandbox

    def strongbox_unavailable(self) -> str:
        """Why confined runs cannot work here ("" when they can); computed once."""
        if self._strongbox_why is None:
            from nightcore.sandbox.isolation import strongbox_unavailable

            self._strongbox_why = strongbox_unavailable()
        return self._strongbox_why

    def _new_strongbox(self) -> Any:
        """A strongbox pool for this workspace: per-tenant uids from its map, the node's
        state and keys out of the workers' reach (modes, mount namespace, Landlock)."""
        from nightcore.sandbox.isolation import TenantIds, harden_workspace
        from nightcore.sandbox.strongbox import StrongboxSandbox

        why = self.strongbox_unavailable()
        if why:
            raise NightCoreError(
                f"--strongbox is not available here: {why}", code="STRONGBOX_UNAVAILABLE"
            )
        layout, config = self.ctx.layout, self.ctx.config
        harden_workspace(layout.state_dir, layout.tenants_data_dir)
        ids = TenantIds(
            layout.state_dir / "strongbox" / "ids.json",
            config.strongbox_uid_base,
            config.strongbox_uid_count,
        )
        return StrongboxSandbox(
            workers=config.parallel,
            on_event=self._on_sandbox_event,
            ids=ids,
            hide=(layout.private_dir.resolve(), layout.state_dir.resolve()),
        )

    def _held_back(self, tenant: str, cordons: Mapping[str, Any]) -> tuple[str, str] | None:
        """(code, reason) when a verified tenant may not run now: it is cordoned, or node
        policy requires it confined where confinement cannot work (it is then not run at
        all, never run unconfined: docs/strongbox.md, "Policy")."""
        if tenant in cordons:
            return "CORDONED", f"cordoned: {cordons[tenant].get('reason', '')}"
        why = self.strongbox_unavailable() if self.ctx.policy.requires_strongbox(tenant) else ""
        if why:
            return (
                "STRONGBOX_UNAVAILABLE",
                f"node policy requires strongbox isolation for this tenant: {why}",
            )
        return None

    def _sandbox_for(self, sandbox: SandboxLike, tenant: str) -> tuple[SandboxLike, bool]:
        """The sandbox ``tenant`` runs in, and whether it is a strongbox: node policy may
        require confinement where this runner's own sandbox is not one."""
        if self.strongbox:
            return sandbox, True
        if not self.ctx.policy.requires_strongbox(tenant):
            return sandbox, False
        with self._lock:
            if self._confined is None:
                self._confined = self._new_strongbox()
            return self._confined, True

    def killswitch(self) -> Any:
        """The kill switch watching this runner's in-flight runs (docs/security.md)."""
        with self._lock:
            if self._killswitch is None:
                from nightcore.runner.killswitch import KillSwitch

                self._killswitch = KillSwitch(self.ctx)
            return self._killswitch

    def close(self) -> None:
        if self._killswitch is not None:
            self._killswitch.close()
        with self._index_lock:
            if self._run_index is not None:
                self._run_index.close()
                self._run_index = None
        if self._sandbox is not None and self._owns_sandbox:
            self._sandbox.close()
            self._sandbox = None
        if self._confined is not None:
            self._confined.close()
            self._confined = None

    def _on_sandbox_event(self, event: str, data: dict[str, object]) -> None:
        tenant = data.get("tenant")
        self.ctx.audit().append(
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
        checkpoint: bool | None = True,
        run_ids: dict[str, str] | None = None,
        dev_limits: Mapping[str, int] | None = None,
    ) -> RunReport:
        """Verify, admit, run and record ``tenants``: names already selected by the caller
        (:func:`nightcore.runner.admission.select_tenants`), or every tenant when None.

        ``checkpoint=True`` (the CLI) signs a checkpoint over everything this call logged;
        services calling many times a second pass False and get one every
        ``[audit] checkpoint_every`` entries instead (plus heartbeats when idle); ``None``
        signs none (a node worker: the node signs once its request is done). ``run_ids``
        assigns the run id of each tenant (the node names runs before a worker starts them, so
        it can close them if that worker dies). ``dev_limits`` override the manifests' limits
        (development policy only; the facade audits a refusal; each admit records them).
        """
        from nightcore.runner.admission import (
            decision_data,
            select_tenants,
            verify_event,
            verify_packages,
        )
        from nightcore.runner.cordon import load_cordons

        ctx = self.ctx
        if dev_limits and not ctx.policy.development:
            raise NightCoreError(
                "--dev-limits needs [policy] development = true", code="DEV_MODE_DISABLED"
            )
        names = select_tenants(ctx.layout, None) if tenants is None else tenants
        verified = verify_packages(ctx, names)
        cordons = load_cordons(ctx.layout)
        audit = ctx.audit()

        results: dict[str, TenantRun] = {}
        admitted: list[tuple[TenantRun, RunConfig, bytes]] = []
        events: list[Event] = []
        for v in verified:
            d = v.decision
            tr = TenantRun(
                tenant=d.tenant,
                code=d.code,
                reason=d.reason,
                key_id=d.key_id,
                module_sha256=d.module_sha256,
            )
            results[d.tenant] = tr
            if not d.ok or d.manifest is None:
                events.append(verify_event(d))
                continue
            data = decision_data(d)
            denied = self._held_back(d.tenant, cordons)
            if denied:
                tr.code, tr.reason = denied
                events.append(
                    Event(
                        "admission_denied",
                        {**data, "code": tr.code, "reason": tr.reason},
                        d.tenant,
                    )
                )
                continue
            m = d.manifest
            try:
                preopens = prepare_preopens(ctx.layout, m)
                _store_content(ctx.layout, d.module_sha256, v.module, d.envelope_sha256, v.envelope)
            except Exception as exc:  # noqa: BLE001 - becomes this tenant's audited denial
                tr.code, tr.reason = host_error(exc, "preparing the run")
                events.append(
                    Event(
                        "admission_denied",
                        {**data, "code": tr.code, "reason": tr.reason},
                        d.tenant,
                    )
                )
                continue
            limits = effective_limits(m, ctx.policy, dev_limits)
            tr.limits = limits.to_dict()
            tr.capabilities = m.capabilities.to_dict()
            tr.run_id = (run_ids or {}).get(d.tenant) or new_run_id(d.tenant)
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
                seed=_random_seed() if m.deterministic else 0,
                net=net_access(m, ctx.policy),
                run_id=tr.run_id,
                live_dir=str(ctx.layout.live_dir),
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
                        **({"dev_limits": dict(dev_limits)} if dev_limits else {}),
                    },
                    d.tenant,
                )
            )
            admitted.append((tr, cfg, v.module))
            tr.envelope_sha256 = d.envelope_sha256
        workers = max(1, min(parallel or ctx.config.parallel, len(admitted) or 1))
        # The first groups start the moment this batch is durable, so their run_start lines
        # ride in the same write and fsync (see _Schedule and _work).
        schedule = _Schedule(admitted, workers)
        first = [schedule.reserve() for _ in range(workers)]
        for group in first:
            events.extend(_start_event(tr, cfg) for tr, cfg, _module in group)
        audit.append_many(events)
        for group in first:
            schedule.release(group)
        for tr in results.values():
            if tr.code != "OK" and progress is not None:
                progress(tr)

        if admitted:
            sandbox = self.sandbox()
            if workers == 1:
                self._work(sandbox, schedule, progress)
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(
                    max_workers=workers, thread_name_prefix="nightcore-run"
                ) as pool:
                    futures = [
                        pool.submit(self._work, sandbox, schedule, progress) for _ in range(workers)
                    ]
                    for fut in futures:
                        fut.result()

        report = RunReport([results[n] for n in names])
        try:
            self._index([r for r in results.values() if r.audit_seq is not None])
        except Exception as exc:  # noqa: BLE001 - reported; the audit log holds the runs
            # The index is derived from the audit log (already durable): a broken index is
            # reported, never a reason to call the run failed.
            report.index_error = host_error(exc, "updating the run index")
        if checkpoint is not None:
            sign_checkpoint(self.ctx, report, always=checkpoint)
        return report

    def node_signer(self) -> Any:
        return self.ctx.node_signer()

    def _work(
        self,
        sandbox: SandboxLike,
        schedule: _Schedule,
        progress: ProgressFn | None,
    ) -> None:
        """One worker: run started runs until none is left, then start the next group.

        A run's start is durable before it executes and its outcome before it is reported
        (invariant 7). One write + fsync carries this worker's pending outcomes together with
        the run_start lines of the group it starts next; pending outcomes are also committed
        once the oldest has waited COMMIT_WINDOW_S (checked between runs, so an outcome waits
        at most that long plus the run in progress)."""
        audit = self.ctx.audit()
        done: list[_Executed] = []
        t0 = 0.0
        try:
            while True:
                item = schedule.next_started()
                if item is None:
                    group = schedule.reserve()
                    starts = [_start_event(tr, cfg) for tr, cfg, _module in group]
                    pending, done = done, []
                    self._record(audit, pending, starts, progress)
                    if not group:
                        return
                    schedule.release(group)
                    continue
                done.append(self._execute(sandbox, *item))
                if len(done) == 1:
                    t0 = time.monotonic()
                elif time.monotonic() - t0 > COMMIT_WINDOW_S:
                    pending, done = done, []
                    self._record(audit, pending, [], progress)
        finally:
            if done:  # a failure mid-group still records the outcomes already produced
                self._record(audit, done, [], progress)

    def _record(
        self,
        audit: Any,
        done: list[_Executed],
        starts: list[Event],
        progress: ProgressFn | None,
    ) -> None:
        """Make the outcomes in ``done`` (and ``starts``) durable, then sign each run's
        attestation with its audit seq and report it."""
        entries = audit.append_many([x.outcome for x in done] + starts)
        failed: list[Event] = []
        for x, entry in zip(done, entries, strict=False):
            try:
                self._attest(x, entry)
            except Exception as exc:  # noqa: BLE001 - audited below; neighbours still attested
                # The outcome line is durable (the run's evidence of record); the signed
                # attestation is missing, and that is itself audited and reported.
                code, message = host_error(exc, "writing the attestation")
                x.tr.reason = f"{x.tr.reason}; attestation not written: {code}".lstrip("; ")
                failed.append(
                    Event(
                        "attestation_failed",
                        {"run_id": x.tr.run_id, "code": code, "reason": message},
                        x.cfg.tenant,
                    )
                )
            finally:
                if progress is not None:
                    progress(x.tr)
        if failed:
            audit.append_many(failed)

    def _execute(
        self, sandbox: SandboxLike, tr: TenantRun, cfg: RunConfig, module: bytes
    ) -> _Executed:
        """Run one admitted tenant and build its outcome event.

        Whatever fails here — the sandbox, the host's bookkeeping of this tenant's files, an
        I/O error — ends this tenant's run with its own code (``HOST_ERROR`` when the failure
        has none), never the whole batch: its run_start is already durable and must get its
        outcome, and its neighbours must get theirs (issue 16, item 2).
        """
        ctx = self.ctx
        rw = [(p.guest_path, p.host_dir) for p in cfg.preopens if p.writable]
        before: dict[str, Any] = {}
        result: RunResult | None = None
        interrupted_by: dict[str, object] = {}
        snapped = False
        confined = self.strongbox
        try:
            sandbox, confined = self._sandbox_for(sandbox, cfg.tenant)
            if confined:
                # Workers run as the tenant's own uid: hand it its data root (0700).
                root = ctx.layout.tenant_data_root(cfg.tenant)
                sandbox.grant_access(root, cfg.tenant)  # type: ignore[attr-defined]
            before = snapshot(rw) if rw else {}
            snapped = True
        except Exception as exc:  # noqa: BLE001 - recorded as this tenant's outcome
            result = RunResult.refused(*host_error(exc, "before the run"))
        if result is None:
            try:
                # The kill switch: a cordon or revocation made while this run is in flight
                # trips its interrupt, and the sandbox stops it (CORDONED/REVOKED_IN_FLIGHT).
                switch = self.killswitch()
                interrupt = switch.watch(cfg.tenant, tr.key_id, cfg.module_sha256)
                try:
                    result = sandbox.run(module, cfg, interrupt=interrupt)
                finally:
                    switch.release(interrupt)
                if interrupt.code and result.code == interrupt.code:
                    interrupted_by = interrupt.cause
            except Exception as exc:  # noqa: BLE001 - recorded as this tenant's outcome
                # A sandbox refusal (e.g. a preopen a strongbox worker cannot reach) ends this
                # tenant's run with its code; the run_start already logged gets its outcome.
                result = RunResult.refused(*host_error(exc, "in the sandbox"))
        if not result.isolation:  # in process, or refused before a worker took it
            result.isolation = {"mode": "strongbox" if confined else "in-process"}
        run_dir = ctx.layout.run_dir(tr.run_id)
        try:
            run_dir.mkdir(parents=True)
            _write_output(run_dir / "stdout", result.stdout)
            if result.stderr:  # an absent stderr file means an empty stream (digest is logged)
                _write_output(run_dir / "stderr", result.stderr)
        except Exception as exc:  # noqa: BLE001 - recorded as this tenant's outcome
            result.code, result.detail = host_error(exc, "storing the run's output")
        finally:
            _discard_live(ctx.layout, tr.run_id)
        written: list[Any] = []
        truncated = False
        if rw and snapped:
            try:
                written, truncated = written_files(before, rw)
            except Exception as exc:  # noqa: BLE001 - recorded as this tenant's outcome
                result.code, result.detail = host_error(exc, "recording the files it wrote")
                truncated = True
        tr.code = result.code
        tr.reason = result.detail
        tr.exit_code = result.exit_code
        tr.fuel_used = result.fuel_reported
        wall_us = round(result.wall_ms * 1000)
        tr.wall_ms = wall_us / 1000
        tr.memory_bytes = result.memory_bytes
        tr.output_bytes = result.output_bytes
        tr.cache = result.cache
        stdout_sha = hashlib.sha256(result.stdout).hexdigest()
        stderr_sha = hashlib.sha256(result.stderr).hexdigest()
        outcome = Event(
            "run_outcome",
            {
                "run_id": tr.run_id,
                "code": result.code,
                "detail": result.detail[:500],
                "exit_code": result.exit_code,
                "fuel_used": result.fuel_reported,
                "wall_us": wall_us,
                "memory_bytes": result.memory_bytes,
                "output_bytes": result.output_bytes,
                "output_truncated": result.output_truncated,
                "stdout_sha256": stdout_sha,
                "stderr_sha256": stderr_sha,
                "key_id": tr.key_id,
                "module_sha256": cfg.module_sha256,
                "limits": cfg.limits.to_dict(),
                "cache": result.cache,
                **({"interrupted_by": interrupted_by} if interrupted_by else {}),
            },
            cfg.tenant,
        )
        return _Executed(tr, cfg, result, run_dir, outcome, written, truncated)

    def _attest(self, x: _Executed, entry: Any) -> None:
        ctx, tr, cfg, result = self.ctx, x.tr, x.cfg, x.result
        tr.audit_seq = entry.seq
        tr.ts = str(entry.record["ts"])
        data = x.outcome.data
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
            fuel_used=result.fuel_reported,
            wall_us=data["wall_us"],
            memory_bytes=result.memory_bytes,
            output_bytes=result.output_bytes,
            stdout_sha256=data["stdout_sha256"],
            stderr_sha256=data["stderr_sha256"],
            audit_seq=entry.seq,
            deterministic=cfg.deterministic,
            seed=cfg.seed,
            node_id=ctx.node_key_id(),
            node_name=ctx.config.node_name,
            written=x.written,
            written_truncated=x.written_truncated,
            isolation=result.isolation,
        )
        _write_output(
            x.run_dir / ATTESTATION_FILE,
            sign_attestation(build_statement(facts), self.node_signer()),
        )

    def _index(self, runs: list[TenantRun]) -> None:

        if not runs:
            return
        with self._index_lock:  # one connection, shared by concurrent run() calls
            self._index_locked(runs)

    def _index_locked(self, runs: list[TenantRun]) -> None:
        from nightcore.store.index import RunIndex

        if self._run_index is None:
            self._run_index = RunIndex(self.ctx.layout.index_db)
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
    ctx: NodeContext,
    tenants: list[str] | None = None,
    *,
    parallel: int | None = None,
    progress: ProgressFn | None = None,
    strongbox: bool = False,
) -> RunReport:
    runner = Runner(ctx, strongbox=strongbox)
    try:
        return runner.run(tenants, parallel=parallel, progress=progress)
    finally:
        runner.close()


def sign_checkpoint(ctx: NodeContext, report: RunReport, *, always: bool) -> None:
    """Sign a checkpoint over everything a run logged (C2SP tlog-checkpoint) — or only when
    ``[audit] checkpoint_every`` entries went by, with ``always=False`` — and sync the audit
    mirrors after it; the outcome goes into ``report``."""
    try:
        tlog = ctx.transparency_log()
        every = ctx.config.checkpoint_every
        cp = tlog.checkpoint("run") if always else tlog.maybe_checkpoint(every)
    except NightCoreError as exc:
        report.checkpoint_error = (exc.code, exc.message)
        return
    if cp is None:
        return
    report.checkpoint = {"size": cp.size, "root": cp.root.hex()}
    if not ctx.config.has_mirrors:
        return
    from nightcore.audit.mirror import mirrors, sync_all

    configured = mirrors(ctx.config.raw)
    if configured:
        # A mirror outage is reported, never fatal: local evidence is already durable.
        report.mirrors = [m.to_dict() for m in sync_all(ctx.layout, configured)]


def rebuild_index(ctx: NodeContext) -> int:
    from nightcore.audit.log import verify_chain
    from nightcore.store.index import RunIndex, row_from_outcome

    audit = ctx.audit()
    verify_chain(audit.iter_lines())  # never index from a log that does not verify
    rows = [r for e in audit.entries() if (r := row_from_outcome(e.record)) is not None]
    index = RunIndex(ctx.layout.index_db)
    try:
        return index.rebuild(rows)
    finally:
        index.close()


def query_runs(
    ctx: NodeContext, tenant: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    from nightcore.store.index import RunIndex

    index = RunIndex(ctx.layout.index_db)
    try:
        return index.query(tenant, limit)
    finally:
        index.close()


def _discard_live(layout: Layout, run_id: str) -> None:
    """Remove a run's live output once its own output files are written (or failed to be):
    ``logs --follow`` then reads the run's files. A live file that cannot be removed is only
    a stale view (a node's start clears the directory)."""
    base = os.path.join(layout.live_dir, run_id)  # strings: this runs once per run
    for stream in ("stdout", "stderr"):
        with contextlib.suppress(OSError):
            os.unlink(f"{base}.{stream}")
