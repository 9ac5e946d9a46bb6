"""The node's pool of worker processes, with a fair queue and a per-tenant concurrency cap.

Each worker (:mod:`nightcore.node.worker`) is a separate interpreter holding a warm runner of
the workspace: it verifies, admits, runs and records the runs of the batches it is given, in
parallel with the other workers (no GIL between them). The node's own per-run work is a few
dictionary operations and one frame each way.

Fairness: runs wait in one queue per tenant. A free worker takes a batch of runs of distinct
tenants, chosen round-robin over the tenants waiting, skipping any tenant already held by
``tenant_cap`` workers (default: every worker but one). So a tenant with a thousand queued runs
cannot keep another waiting behind all of them, and cannot hold every worker.

Faults: if a worker dies mid-batch (or stops answering), the runs it had started get a closing
``run_outcome`` with ``WORKER_CRASHED`` (``TIMEOUT`` for a hung worker) written by the node, the
runs it had not started are reported with the same code (and one ``worker_crashed`` audit line
names them), and the worker is replaced in the background. A worker dies with its node: it
watches a lifeline pipe whose other end only the node holds.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightcore.errors import NightCoreError, SandboxError
from nightcore.node.worker import decode_run
from nightcore.sandbox import strongbox as sb

if TYPE_CHECKING:
    from nightcore.audit.log import AuditLog

START_TIMEOUT_S = 120.0
MAX_BATCH = 32
MAX_REPLY_JSON = 4 * 1024 * 1024

ProgressFn = Callable[[dict[str, Any]], None]


def _death(status: int) -> str:
    if status < 0:
        try:
            return signal.Signals(-status).name
        except ValueError:
            return f"signal {-status}"
    return f"exit status {status}"


class _Worker:
    """One worker process, its two pipes and its lifeline. Used by one driver thread."""

    def __init__(self, workspace: Path) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        life_r, life_w = os.pipe()
        nudge_r, nudge_w = os.pipe()  # the kill switch: a byte = "re-check the trust state now"
        os.set_blocking(nudge_w, False)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-m",
                    "nightcore.node.worker",
                    "--in",
                    str(req_r),
                    "--out",
                    str(rep_w),
                    "--lifeline",
                    str(life_r),
                    "--nudge",
                    str(nudge_r),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(req_r, rep_w, life_r, nudge_r),
                close_fds=True,
                start_new_session=True,  # a Ctrl-C in the node's terminal is the node's to handle
                env=_worker_env(),
            )
        finally:
            for fd in (req_r, rep_w, life_r, nudge_r):
                os.close(fd)
        self._req = req_w
        self._rep = rep_r
        self._life = life_w  # never written: its closing (the node's death) ends the worker
        self._nudge = nudge_w
        self.seq = 0
        self.batches = 0
        self.dead = False
        sb.write_frame(self._req, {"op": "init", "workspace": str(workspace)})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        try:
            hello, _ = sb.read_frame(
                self._rep, max_json=1024, max_blob=0, deadline=time.monotonic() + timeout
            )
        except sb.FrameError as exc:
            status = self.kill()
            raise SandboxError(
                f"a node worker did not start ({exc}; {_death(status)})",
                code="WORKER_START_FAILED",
            ) from None
        if hello.get("op") != "ready":
            self.kill()
            raise SandboxError("a node worker sent no ready frame", code="WORKER_START_FAILED")

    def send_batch(self, jobs: list[dict[str, str]]) -> int:
        self.seq += 1
        self.batches += 1
        sb.write_frame(self._req, {"op": "batch", "seq": self.seq, "jobs": jobs})
        return self.seq

    def receive(self, deadline: float) -> dict[str, Any]:
        header, _ = sb.read_frame(self._rep, max_json=MAX_REPLY_JSON, max_blob=0, deadline=deadline)
        return header

    def nudge(self) -> None:
        """Make the worker's kill switch re-check the trust state now (never blocks: a full
        pipe already holds a nudge it has not read)."""
        with contextlib.suppress(OSError):
            os.write(self._nudge, b"!")

    def kill(self) -> int:
        """Kill the process (if alive), reap it, close the pipes; its wait status."""
        self.dead = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        try:
            status = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # unkillable (D state): leave it to init
            status = -int(signal.SIGKILL)
        self._close()
        return status

    def stop(self) -> None:
        """End of input: the worker finishes its loop and exits; make sure it did."""
        self.dead = True
        with contextlib.suppress(OSError):
            os.close(self._req)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        self._close()

    def _close(self) -> None:
        for fd in (self._req, self._rep, self._life, self._nudge):
            with contextlib.suppress(OSError):
                os.close(fd)


def _worker_env() -> dict[str, str]:
    # The worker opens the node key itself (it signs its runs' attestations), so it gets the
    # key's passphrase variable if the node has one; nothing else of the node's environment.
    keep = ("NIGHTCORE_NODE_KEY_PASSPHRASE", "PATH", "LANG", "LC_ALL", "TZ", "HOME")
    return {k: v for k, v in os.environ.items() if k in keep}


@dataclass
class _Request:
    jobs: list[dict[str, str]]
    progress: ProgressFn | None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    index_errors: list[list[str]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def deliver(self, run_id: str, run: dict[str, Any]) -> None:
        self.results[run_id] = run
        if len(self.results) >= len(self.jobs):
            self.done.set()


@dataclass
class _Job:
    tenant: str
    run_id: str
    request: _Request


@dataclass
class PoolStats:
    size: int
    alive: int
    busy: int
    queued: int
    tenant_cap: int
    running: dict[str, int] = field(default_factory=dict)
    replaced: int = 0
    runs: int = 0
    worker_pids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "alive": self.alive,
            "busy": self.busy,
            "queued": self.queued,
            "tenant_cap": self.tenant_cap,
            "running": dict(self.running),
            "replaced": self.replaced,
            "runs": self.runs,
            "worker_pids": list(self.worker_pids),
        }


class RunnerPool:
    """``size`` worker processes running the runs of one workspace."""

    def __init__(
        self,
        size: int,
        workspace: Path,
        audit: Callable[[], AuditLog],
        *,
        tenant_cap: int | None = None,
        answer_timeout_s: float = 3600.0,
    ) -> None:
        if not 1 <= size <= 256:
            raise SandboxError("--workers must be between 1 and 256", code="USAGE")
        self.size = size
        self.tenant_cap = tenant_cap if tenant_cap is not None else max(1, size - 1)
        if not 1 <= self.tenant_cap <= size:
            raise SandboxError("--tenant-cap must be between 1 and --workers", code="USAGE")
        self.workspace = workspace
        self._audit = audit
        self._answer_timeout_s = answer_timeout_s
        self._cond = threading.Condition()
        self._waiting: dict[str, deque[_Job]] = {}
        self._order: list[str] = []  # tenants with waiting runs, round-robin
        self._next = 0
        self._holding: Counter[str] = Counter()  # tenant -> workers holding its runs
        self._workers: dict[int, _Worker] = {}
        self._busy: set[int] = set()
        self._drivers: list[threading.Thread] = []
        self._replaced = 0
        self._runs = 0
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start every worker (in parallel), wait until each is ready, start their drivers."""
        workers = [_Worker(self.workspace) for _ in range(self.size)]
        try:
            for w in workers:
                w.wait_ready()
        except BaseException:
            for w in workers:
                w.kill()
            raise
        for w in workers:
            self._adopt(w)

    def _adopt(self, worker: _Worker) -> None:
        with self._cond:
            self._workers[worker.pid] = worker
        t = threading.Thread(target=self._drive, args=(worker,), name=f"nightcore-w{worker.pid}")
        self._drivers.append(t)
        t.start()

    def close(self, grace_s: float = 60.0) -> None:
        """Stop taking batches; give the running ones ``grace_s`` to finish; then kill what is
        left (its runs are closed ``INTERRUPTED`` by their drivers) and stop the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + grace_s
        for t in list(self._drivers):
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._cond:
            left = list(self._workers.values())
        for w in left:
            w.kill()  # a driver still in a batch sees end of stream and closes it
        for t in list(self._drivers):
            t.join(timeout=60)
        with self._cond:
            self._workers.clear()

    # -- observation -----------------------------------------------------------------------
    def stats(self) -> PoolStats:
        with self._cond:
            return PoolStats(
                size=self.size,
                alive=len(self._workers),
                busy=len(self._busy),
                queued=sum(len(q) for q in self._waiting.values()),
                tenant_cap=self.tenant_cap,
                running={t: n for t, n in self._holding.items() if n},
                replaced=self._replaced,
                runs=self._runs,
                worker_pids=sorted(self._workers),
            )

    def nudge(self) -> None:
        """The trust state just changed in this process: every worker's kill switch re-checks
        it now instead of at its next poll (docs/node.md, "Kill switch")."""
        with self._cond:
            workers = list(self._workers.values())
        for w in workers:
            w.nudge()

    def worker_pids(self, *, busy: bool | None = None) -> list[int]:
        with self._cond:
            if busy is None:
                return sorted(self._workers)
            return sorted(p for p in self._workers if (p in self._busy) == busy)

    # -- requests --------------------------------------------------------------------------
    def run(
        self, jobs: list[tuple[str, str]], progress: ProgressFn | None = None
    ) -> tuple[list[dict[str, Any]], list[list[str]]]:
        """Run ``(tenant, run_id)`` jobs; their runs as plain data (in order) and any index
        errors the workers reported. Blocks until every run has its recorded outcome."""
        request = _Request([{"tenant": t, "run_id": r} for t, r in jobs], progress)
        if not jobs:
            return [], []
        with self._cond:
            if self._closed:
                raise NightCoreError("the node is shutting down", code="NODE_SHUTTING_DOWN")
            for tenant, run_id in jobs:
                if tenant not in self._waiting:
                    self._waiting[tenant] = deque()
                    self._order.append(tenant)
                self._waiting[tenant].append(_Job(tenant, run_id, request))
            self._cond.notify_all()
        request.done.wait()
        return [request.results[r] for _, r in jobs], request.index_errors

    def _take_batch(self) -> list[_Job]:
        """Under the lock: the next batch for a free worker (distinct tenants, within the cap)."""
        if not self._order:
            return []
        queued = sum(len(q) for q in self._waiting.values())
        idle = max(1, len(self._workers) - len(self._busy))
        want = min(MAX_BATCH, max(1, math.ceil(queued / idle)))
        batch: list[_Job] = []
        n = len(self._order)
        i = 0
        while len(batch) < want and i < n:
            tenant = self._order[(self._next + i) % n]
            i += 1
            if self._holding[tenant] >= self.tenant_cap:
                continue
            batch.append(self._waiting[tenant].popleft())
        for job in batch:
            self._holding[job.tenant] += 1
            if not self._waiting[job.tenant]:
                del self._waiting[job.tenant]
                self._order.remove(job.tenant)
        self._next = (self._next + i) % len(self._order) if self._order else 0
        return batch

    def _drive(self, worker: _Worker) -> None:
        """One worker's driver thread: take a batch, send it, deliver its runs; repeat."""
        while True:
            with self._cond:
                batch: list[_Job] = []
                while not self._closed:
                    batch = self._take_batch()
                    if batch:
                        break
                    self._cond.wait()
                if not batch:
                    self._workers.pop(worker.pid, None)
                    break
                self._busy.add(worker.pid)
                self._runs += len(batch)
            try:
                healthy = self._run_batch(worker, batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must not leave callers waiting
                worker.kill()
                why = f"failed in the node ({type(exc).__name__})"
                self._close_batch(worker.pid, why, "HOST_ERROR", batch, 0, {})
                healthy = False
            with self._cond:
                self._busy.discard(worker.pid)
                for job in batch:
                    self._holding[job.tenant] -= 1
                    if self._holding[job.tenant] <= 0:
                        del self._holding[job.tenant]
                self._cond.notify_all()
                if not healthy:
                    self._workers.pop(worker.pid, None)
                    if not self._closed:
                        self._replaced += 1
                        threading.Thread(target=self._replace, name="nightcore-respawn").start()
                    return
        worker.stop()  # outside the lock: it waits for the process to end

    def _run_batch(self, worker: _Worker, batch: list[_Job]) -> bool:
        audit = self._audit()
        offset = audit.path.stat().st_size if audit.path.exists() else 0
        pending = {job.run_id: job for job in batch}
        reported: dict[str, dict[str, Any]] = {}  # run_id -> the run as its progress said
        try:
            worker.send_batch([{"tenant": j.tenant, "run_id": j.run_id} for j in batch])
            deadline = time.monotonic() + self._answer_timeout_s
            while True:
                msg = worker.receive(deadline)
                if msg.get("op") == "progress" and isinstance(msg.get("run"), dict):
                    run = decode_run(msg["run"])
                    job = pending.get(str(run.get("run_id"))) or _by_tenant(pending, run)
                    if job is not None:
                        reported[job.run_id] = run
                        if job.request.progress is not None:
                            job.request.progress(run)
                    continue
                if msg.get("op") == "result":
                    break
                raise sb.FrameError("unexpected frame")
        except (sb.FrameError, OSError) as exc:
            hung = isinstance(exc, sb.FrameError) and exc.timeout
            status = worker.kill()
            why = "did not answer in time" if hung else f"died ({_death(status)})"
            code = "TIMEOUT" if hung else "WORKER_CRASHED"
            with self._cond:
                if self._closed:  # killed by close(): the node is stopping
                    why, code = "was stopped with the node", "INTERRUPTED"
            self._close_batch(worker.pid, why, code, batch, offset, reported)
            return False
        if isinstance(msg.get("error"), list):
            code, message = (str(x) for x in msg["error"][:2])
            for job in batch:
                job.request.deliver(job.run_id, _refused(job, code, message))
            return True
        runs = msg.get("runs")
        by_tenant: dict[str, dict[str, Any]] = {
            str(r.get("tenant")): decode_run(r)
            for r in (runs if isinstance(runs, list) else [])
            if isinstance(r, dict)
        }
        for job in batch:
            run = by_tenant.get(job.tenant) or _refused(
                job, "WORKER_REPLY_INVALID", "the worker did not report this run"
            )
            if isinstance(msg.get("index_error"), list):
                job.request.index_errors.append([str(x) for x in msg["index_error"][:2]])
            job.request.deliver(job.run_id, run)
        return True

    def _close_batch(
        self,
        pid: int,
        why: str,
        code: str,
        batch: list[_Job],
        offset: int,
        reported: dict[str, dict[str, Any]],
    ) -> None:
        """A worker is gone mid-batch. Each of its runs ends as the audit log says: reported or
        recorded already (kept as it is), started but open (closed now with ``code``), or never
        started (reported with ``code``; one ``worker_crashed`` line names them)."""
        from nightcore.fsio import open_regular
        from nightcore.layout import Layout
        from nightcore.node.recovery import discard_live_output, interrupted_events, runs_since

        detail = f"worker {pid} {why} during the run; it was replaced"
        starts: dict[str, Any] = {}
        outcomes: dict[str, tuple[str, int]] = {}
        closed: dict[str, int] = {}
        failure = failure_detail = ""
        try:
            audit = self._audit()
            with open_regular(audit.path) as fh:
                fh.seek(offset)
                starts, outcomes = runs_since(fh)
            ids = {j.run_id for j in batch}
            still_open = {
                rid: info for rid, info in starts.items() if rid in ids and rid not in outcomes
            }
            events = interrupted_events(still_open, code=code, detail=detail)
            closed = {e.record["data"]["run_id"]: e.seq for e in audit.append_many(events)}
            discard_live_output(Layout(self.workspace).live_dir, closed)
            unstarted = [j for j in batch if j.run_id not in starts and j.run_id not in reported]
            if unstarted:
                audit.append(
                    "worker_crashed",
                    {"pid": pid, "reason": why, "tenants": [j.tenant for j in unstarted]},
                )
        except (NightCoreError, OSError) as exc:
            # The log cannot close these runs now: every caller still gets an answer, with
            # what the log did record (the node's next start closes a run left open with
            # INTERRUPTED).
            failure = exc.code if isinstance(exc, NightCoreError) else "AUDIT_INVALID"
            failure_detail = f"{detail}; the audit log could not record it ({exc})"
        for job in batch:
            if job.run_id in reported:
                run = reported[job.run_id]
            elif job.run_id in outcomes:  # recorded, but the worker died before saying so
                done_code, seq = outcomes[job.run_id]
                run = _refused(job, done_code, f"recorded; then worker {pid} {why}")
                run["audit_seq"] = seq
            elif job.run_id in closed or not failure:
                run = _refused(job, code, detail)
                run["audit_seq"] = closed.get(job.run_id)
            else:
                run = _refused(job, failure, failure_detail)
            job.request.deliver(job.run_id, run)

    def _replace(self) -> None:
        try:
            w = _Worker(self.workspace)
            w.wait_ready()
        except SandboxError:
            return  # capacity is one worker short; `nightcore node status` shows it
        with self._cond:
            closed = self._closed
        if closed:
            w.stop()
            return
        self._adopt(w)


def _by_tenant(pending: dict[str, _Job], run: dict[str, Any]) -> _Job | None:
    return next((j for j in pending.values() if j.tenant == run.get("tenant")), None)


def _refused(job: _Job, code: str, message: str) -> dict[str, Any]:
    """A run the node reports itself (its worker never did)."""
    return {
        "tenant": job.tenant,
        "code": code,
        "reason": message,
        "exit_code": None,
        "fuel_used": None,
        "wall_ms": 0.0,
        "memory_bytes": 0,
        "output_bytes": 0,
        "key_id": "",
        "module_sha256": "",
        "run_id": job.run_id,
        "audit_seq": None,
    }
