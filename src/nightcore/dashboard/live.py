"""The live console's state: its incrementally refreshed view and its server-sent events.

:class:`LiveState` keeps the audit scanner between requests (each refresh reads only the lines
appended since) and a version that changes whenever anything shown may have changed.
:class:`EventHub` feeds every ``/events`` stream from one poller and caps how many are open.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from nightcore.context import NodeContext
from nightcore.dashboard.collect import collect, full_verify, latest_checkpoint, new_scanner
from nightcore.dashboard.scan import AuditScanner
from nightcore.dashboard.security import problem
from nightcore.dashboard.views import CheckpointView, Snapshot, VerifyView
from nightcore.dashboard_defaults import MAX_ROWS

POLL_INTERVAL = 0.25
PING_EVERY = 5.0
VERIFY_CACHE_SECONDS = 10.0
EVENTS_PER_CLIENT = 8  # open /events streams per client address
EVENTS_TOTAL = 64  # open /events streams in all
EVENTS_RETRY_AFTER = "30"


class LiveState:
    """The console's view of one workspace, refreshed incrementally as the audit log grows."""

    def __init__(self, ws: NodeContext, *, max_rows: int = MAX_ROWS) -> None:
        self.ws = ws
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._scanner: AuditScanner | None = None
        self._snapshot: tuple[str, Snapshot] | None = None
        self._verify_lock = threading.Lock()
        self._verify: tuple[int, float, VerifyView] | None = None
        layout = ws.layout
        # Everything the view shows comes from these (stat'ed for the version).
        self._watched = (
            layout.audit_log,
            layout.audit_tail,
            layout.index_db,
            layout.index_wal,
            layout.cordons_path,
            layout.revocations_path,
            layout.registry_path,
            layout.modules_dir,
        )

    def version(self) -> str:
        """Changes whenever anything the view shows may have changed (cheap: a few stats)."""
        h = hashlib.sha256()
        for p in self._watched:
            try:
                st = p.stat()
                h.update(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                h.update(b"-;")
        return h.hexdigest()[:16]

    def snapshot(self) -> tuple[str, Snapshot]:
        with self._lock:
            version = self.version()
            if self._snapshot is not None and self._snapshot[0] == version:
                return self._snapshot
            checkpoint: tuple[CheckpointView | None, str | None] = latest_checkpoint(self.ws)
            if self._scanner is None:
                self._scanner = new_scanner(self.ws, "quick", checkpoint[0])
            snap = collect(
                self.ws, scanner=self._scanner, checkpoint=checkpoint, max_rows=self.max_rows
            )
            if self._verify is not None:
                snap.audit.last_full = self._verify[2]
            self._snapshot = (version, snap)
            return self._snapshot

    def audit_size(self) -> int:
        try:
            return self.ws.layout.audit_log.stat().st_size
        except OSError:
            return 0

    def verify(self) -> VerifyView:
        """Full verification, cached while the log does not grow (and briefly if it does)."""
        with self._verify_lock:
            size = self.audit_size()
            cached = self._verify
            if cached is not None and (
                cached[0] == size or time.monotonic() - cached[1] < VERIFY_CACHE_SECONDS
            ):
                return cached[2]
            view = full_verify(self.ws)
            self._verify = (size, time.monotonic(), view)
        with self._lock:
            self._snapshot = None  # show the result
        return view


class EventHub:
    """Every ``/events`` stream fed by one poller, with caps on how many streams are open.

    The workspace's version is computed once per tick whatever the number of clients (a few
    stats), and each stream only wakes when it changed or to send a ping. At most
    ``per_client`` streams per client address and ``total`` in all; one more is refused (429
    ``EVENTS_CLIENT_LIMIT``, 503 ``EVENTS_CAPACITY``). Used from the event loop only.
    """

    def __init__(
        self, version: Callable[[], str], *, poll_interval: float, per_client: int, total: int
    ) -> None:
        self._version_of = version
        self.poll_interval = poll_interval
        self.per_client = per_client
        self.total = total
        self.version = ""
        self.changed = asyncio.Event()
        self._clients: dict[str, int] = {}
        self._open = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def open_streams(self) -> int:
        return self._open

    def admit(self, client: str) -> Response | None:
        """Count one more stream for ``client``; a refusal if that is over a cap."""
        retry = {"Retry-After": EVENTS_RETRY_AFTER}
        if self._clients.get(client, 0) >= self.per_client:
            return problem(
                429,
                "EVENTS_CLIENT_LIMIT",
                f"at most {self.per_client} event streams per client address",
                retry,
            )
        if self._open >= self.total:
            return problem(
                503,
                "EVENTS_CAPACITY",
                f"the console serves at most {self.total} event streams",
                retry,
            )
        self._clients[client] = self._clients.get(client, 0) + 1
        self._open += 1
        if self._task is None:
            self.version = self._version_of()
            self._task = asyncio.get_running_loop().create_task(self._poll())
        return None

    def release(self, client: str) -> None:
        left = self._clients.get(client, 0) - 1
        if left > 0:
            self._clients[client] = left
        else:
            self._clients.pop(client, None)
        self._open = max(0, self._open - 1)
        if self._open == 0 and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            version = self._version_of()
            if version != self.version:
                self.version = version
                changed, self.changed = self.changed, asyncio.Event()
                changed.set()

    async def stream(self, ping_every: float) -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        last = None
        while True:
            if self.version != last:
                last = self.version
                yield f"event: update\ndata: {json.dumps({'version': last})}\n\n"
            try:
                await asyncio.wait_for(self.changed.wait(), ping_every)
            except TimeoutError:
                yield ": ping\n\n"


class EventStream(StreamingResponse):
    """An ``/events`` response that gives its slot back however the stream ends."""

    def __init__(self, hub: EventHub, client: str, ping_every: float) -> None:
        super().__init__(
            hub.stream(ping_every),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )
        self.hub = hub
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.release(self.client)
