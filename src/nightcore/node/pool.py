"""The node's pool of worker processes, with a fair queue and a per-tenant concurrency cap.

:class:`WorkerPool` has the interface of :class:`nightcore.sandbox.engine.Sandbox`
(``run(module_bytes, config) -> RunResult``, ``close()``), so the runner uses it unchanged.
Each worker (:mod:`nightcore.node.worker`) is a separate interpreter with its own warm engine
and compiled-module cache; runs on different workers execute in parallel, with no GIL between
them.

Fairness: runs wait in one queue per tenant, and a free worker goes to the next tenant in
round-robin order whose running count is below the cap (default: every worker but one), so a
tenant with a thousand queued runs cannot keep another tenant waiting behind all of them, and
cannot hold every worker.

Faults: a worker that dies mid-run ends that run with ``WORKER_CRASHED``; one that does not
answer by the run's wall-time limit plus a grace period is killed and the run ends ``TIMEOUT``;
one whose reply breaks the format is killed and the run ends ``WORKER_REPLY_INVALID``. In each
case the worker is replaced in the background and other runs are unaffected.
"""

from __future__ import annotations

import contextlib
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
from typing import Any

from nightcore.errors import SandboxError
from nightcore.sandbox import strongbox as sb
from nightcore.sandbox.types import RunConfig, RunResult

START_TIMEOUT_S = 120.0
# A worker compiles a module it has not seen before the run's wall clock starts: the watchdog
# allows that much on top of the wall-time limit before it calls the worker hung.
WATCHDOG_GRACE_S = 60.0
MAX_REPLY_JSON = 256 * 1024
MAX_EVENTS = 16

EventSink = Callable[[str, dict[str, object]], None]


class _Worker:
    """One worker process and its two pipes. Used by one run at a time (the pool hands it out)."""

    def __init__(self, cache_dir: Path | None, secret: bytes) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
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
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(req_r, rep_w),
                close_fds=True,
                start_new_session=True,  # a Ctrl-C in the node's terminal is the node's to handle
            )
        finally:
            os.close(req_r)
            os.close(rep_w)
        self._req = req_w
        self._rep = rep_r
        self.seq = 0
        self.runs = 0
        self.dead = False
        sb.write_frame(self._req, {"op": "init", "cache_dir": str(cache_dir or "")}, secret)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        try:
            hello, _ = sb.read_frame(
                self._rep, max_json=1024, max_blob=0, deadline=time.monotonic() + timeout
            )
        except sb.FrameError as exc:
            self.kill()
            raise SandboxError(
                f"a node worker did not start: {exc}", code="WORKER_START_FAILED"
            ) from None
        if hello.get("op") != "ready":
            self.kill()
            raise SandboxError("a node worker sent no ready frame", code="WORKER_START_FAILED")

    def call(
        self, module: bytes, config: RunConfig, deadline: float
    ) -> tuple[dict[str, Any], bytes]:
        self.seq += 1
        self.runs += 1
        sb.write_frame(
            self._req, {"op": "run", "seq": self.seq, "config": sb.config_to_json(config)}, module
        )
        return sb.read_frame(
            self._rep,
            max_json=MAX_REPLY_JSON,
            max_blob=config.limits.output_bytes,
            deadline=deadline,
        )

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
        """Ask the worker to end (end of input), then make sure it did."""
        self.dead = True
        with contextlib.suppress(OSError):
            os.close(self._req)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(self._rep)

    def _close(self) -> None:
        for fd in (self._req, self._rep):
            with contextlib.suppress(OSError):
                os.close(fd)


def _death(status: int) -> str:
    if status < 0:
        try:
            return signal.Signals(-status).name
        except ValueError:
            return f"signal {-status}"
    return f"exit status {status}"


@dataclass
class _Ticket:
    tenant: str
    worker: _Worker | None = None


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


class WorkerPool:
    """``size`` worker processes sharing one compiled-module cache directory."""

    def __init__(
        self,
        size: int,
        cache_dir: Path | None,
        cache_secret: bytes,
        *,
        tenant_cap: int | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        if not 1 <= size <= 256:
            raise SandboxError("--workers must be between 1 and 256", code="USAGE")
        self.size = size
        self.tenant_cap = tenant_cap if tenant_cap is not None else max(1, size - 1)
        if not 1 <= self.tenant_cap <= size:
            raise SandboxError("--tenant-cap must be between 1 and --workers", code="USAGE")
        self._cache_dir = cache_dir
        self._secret = cache_secret
        self._on_event = on_event
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._busy: dict[int, _Worker] = {}
        self._starting = 0
        self._waiting: dict[str, deque[_Ticket]] = {}
        self._order: list[str] = []  # tenants with waiting runs, in round-robin order
        self._next = 0
        self._running: Counter[str] = Counter()
        self._replacers: list[threading.Thread] = []
        self._replaced = 0
        self._runs = 0
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start every worker (in parallel) and wait until each is ready."""
        workers = [_Worker(self._cache_dir, self._secret) for _ in range(self.size)]
        try:
            for w in workers:
                w.wait_ready()
        except BaseException:
            for w in workers:
                w.kill()
            raise
        with self._cond:
            self._idle.extend(workers)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for w in idle:
            w.stop()
        for t in list(self._replacers):
            t.join(timeout=START_TIMEOUT_S)
        with self._cond:
            busy = list(self._busy.values())
        for w in busy:  # only when close() races a run: its caller gets WORKER_CRASHED
            w.kill()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observation -----------------------------------------------------------------------
    def stats(self) -> PoolStats:
        with self._cond:
            return PoolStats(
                size=self.size,
                alive=len(self._idle) + len(self._busy),
                busy=len(self._busy),
                queued=sum(len(q) for q in self._waiting.values()),
                tenant_cap=self.tenant_cap,
                running={t: n for t, n in self._running.items() if n},
                replaced=self._replaced,
                runs=self._runs,
                worker_pids=sorted(w.pid for w in [*self._idle, *self._busy.values()]),
            )

    def worker_pids(self, *, busy: bool | None = None) -> list[int]:
        with self._cond:
            if busy is True:
                return sorted(self._busy)
            if busy is False:
                return sorted(w.pid for w in self._idle)
            return sorted([*self._busy, *(w.pid for w in self._idle)])

    # -- scheduling ------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Hand idle workers to waiting runs: round-robin over tenants, within the cap."""
        handed = False
        while self._idle and self._order:
            n = len(self._order)
            for i in range(n):
                idx = (self._next + i) % n
                tenant = self._order[idx]
                if self._running[tenant] >= self.tenant_cap:
                    continue
                queue = self._waiting[tenant]
                ticket = queue.popleft()
                if not queue:
                    del self._waiting[tenant]
                    self._order.pop(idx)
                    self._next = idx % len(self._order) if self._order else 0
                else:
                    self._next = (idx + 1) % n
                worker = self._idle.pop()
                ticket.worker = worker
                self._busy[worker.pid] = worker
                self._running[tenant] += 1
                handed = True
                break
            else:
                break  # every waiting tenant is at its cap
        if handed:
            self._cond.notify_all()

    def _acquire(self, tenant: str) -> _Worker:
        ticket = _Ticket(tenant)
        with self._cond:
            if self._closed:
                raise SandboxError("the node is shutting down", code="NODE_SHUTTING_DOWN")
            if tenant not in self._waiting:
                self._waiting[tenant] = deque()
                self._order.append(tenant)
            self._waiting[tenant].append(ticket)
            self._dispatch()
            while ticket.worker is None:
                if self._closed:
                    queue = self._waiting.get(tenant)
                    if queue is not None and ticket in queue:
                        queue.remove(ticket)
                    raise SandboxError("the node is shutting down", code="NODE_SHUTTING_DOWN")
                self._cond.wait()
            return ticket.worker

    def _release(self, worker: _Worker, tenant: str, healthy: bool) -> None:
        with self._cond:
            self._busy.pop(worker.pid, None)
            self._running[tenant] -= 1
            if self._running[tenant] <= 0:
                del self._running[tenant]
            if healthy and not self._closed:
                self._idle.append(worker)
            elif not self._closed:
                self._replaced += 1
                t = threading.Thread(target=self._replace, name="nightcore-worker-replace")
                self._replacers.append(t)
                t.start()
            self._dispatch()
        if healthy and self._closed:
            worker.stop()

    def _replace(self) -> None:
        try:
            w = _Worker(self._cache_dir, self._secret)
            w.wait_ready()
        except SandboxError:
            return  # the next run's failure will say so; nothing waits on this thread
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                self._idle.append(w)
                self._dispatch()
            self._replacers = [t for t in self._replacers if t is not threading.current_thread()]
        if closed:
            w.stop()

    # -- runs ------------------------------------------------------------------------------
    def run(self, module_bytes: bytes, config: RunConfig) -> RunResult:
        worker = self._acquire(config.tenant)
        with self._cond:
            self._runs += 1
        healthy = False
        try:
            deadline = time.monotonic() + config.limits.wall_ms / 1000 + WATCHDOG_GRACE_S
            t0 = time.perf_counter()
            try:
                header, blob = worker.call(module_bytes, config, deadline)
            except (sb.FrameError, OSError) as exc:
                timeout = isinstance(exc, sb.FrameError) and exc.timeout
                status = worker.kill()
                if timeout:
                    return RunResult.refused(
                        "TIMEOUT",
                        f"worker {worker.pid} did not answer within the wall-time limit "
                        "plus grace; it was killed and replaced",
                    )
                return RunResult.refused(
                    "WORKER_CRASHED",
                    f"worker {worker.pid} died during the run ({_death(status)}); it was replaced",
                )
            wall_ms = (time.perf_counter() - t0) * 1000
            events = header.pop("events", [])
            try:
                result = sb.result_from_frame(header, blob, config.limits, worker.seq)
            except sb.ReplyInvalid as exc:
                worker.kill()
                return RunResult.refused(
                    "WORKER_REPLY_INVALID", f"worker {worker.pid}: {exc}; it was replaced"
                )
            self._forward(events, config.tenant)
            result.wall_ms = wall_ms
            healthy = True
            return result
        finally:
            self._release(worker, config.tenant, healthy)

    def _forward(self, events: Any, tenant: str) -> None:
        if self._on_event is None or not isinstance(events, list):
            return
        for ev in events[:MAX_EVENTS]:
            if (
                isinstance(ev, dict)
                and ev.get("event") == "cache_rejected"
                and isinstance(ev.get("data"), dict)
            ):
                data = {str(k)[:64]: str(v)[:200] for k, v in ev["data"].items()}
                self._on_event("cache_rejected", {**data, "tenant": tenant})
