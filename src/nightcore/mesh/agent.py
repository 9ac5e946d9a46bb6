"""The node's mesh agent: an asyncio loop in its own thread running the mesh services.

``nightcore node --mesh ...`` makes one :class:`MeshAgent`. It connects (retrying until a
server answers: the node keeps serving its socket meanwhile, but admits no run), then runs
each service of :data:`SERVICES` as a task, restarting one that fails (with a logged code).

A service is any object with ``name: str`` and ``async def run(self, agent) -> None`` (the
:class:`MeshService` protocol), made by a factory ``factory(agent) -> MeshService`` named in
:data:`SERVICES` as ``"module:attribute"``. It gets everything from the agent:

- ``agent.nc`` / ``agent.js``: the nats-py client and its JetStream context,
- ``agent.config`` / ``agent.names``: the :class:`MeshConfig` and every NATS name,
- ``agent.ctx``: the node's :class:`~nightcore.context.NodeContext`,
- ``agent.node``: the node (``run_tenants(names, ...)`` runs through its worker pool;
  blocking: call it with ``await asyncio.to_thread(...)``),
- ``agent.stopping``: an asyncio Event set when the node stops (finish and return),
- ``agent.admitted`` / ``await agent.wait_admitted()``: the node applied every trust change
  on the bus (take no work before), ``agent.node_cordoned()``: this node is cordoned (take no
  work),
- ``agent.heartbeat_fields``: a dict a service may set a key of (plain JSON data) to have it
  published in the node's heartbeat and shown by ``mesh status``; ``agent.beat.set()`` sends
  the next heartbeat at once,
- ``agent.ensure_stream(...)`` / ``agent.ensure_kv(...)``: create-or-open with the
  deployment's replica count.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from nightcore.errors import NightCoreError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

    from nightcore.context import NodeContext
    from nightcore.mesh.config import MeshConfig
    from nightcore.mesh.names import Names

# The services every mesh node runs, in start order ("module:factory"; a factory takes the
# agent and returns a MeshService). Helpers add theirs here.
SERVICES: list[str] = [
    "nightcore.mesh.trust:TrustService",
    "nightcore.mesh.heartbeat:HeartbeatService",
    "nightcore.mesh.workqueue:WorkService",
    "nightcore.mesh.auditrepl:AuditReplicationService",
]

RESTART_BACKOFF_S = 1.0
CONNECT_RETRY_S = 1.0


class NodeHandle(Protocol):
    """What the agent needs of the node (``nightcore.node.server.Node``)."""

    ctx: NodeContext

    def run_tenants(
        self,
        names: list[str],
        *,
        strongbox: bool = ...,
        parallel: int | None = ...,
        checkpoint: bool = ...,
        progress: Callable[[dict[str, Any]], None] | None = ...,
    ) -> dict[str, Any]: ...


class MeshService(Protocol):
    name: str

    async def run(self, agent: MeshAgent) -> None: ...


def load_service(spec: str, agent: MeshAgent) -> MeshService:
    module, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module), attr)
    service: MeshService = factory(agent)
    return service


def mesh_error(exc: BaseException, doing: str) -> NightCoreError:
    """A NATS/JetStream exception as MESH_ERROR (MESH_UNREACHABLE for timeouts and lost
    connections), one line."""
    if isinstance(exc, NightCoreError):
        return exc
    kind = type(exc).__name__
    text = f"{doing}: {kind}: {exc}".replace("\n", " ")[:400]
    lost = isinstance(exc, TimeoutError | ConnectionError) or kind in (
        "TimeoutError",
        "ConnectionClosedError",
        "NoRespondersError",
        "NoServersError",
        "StaleConnectionError",
        "ServiceUnavailableError",
    )
    return NightCoreError(text, code="MESH_UNREACHABLE" if lost else "MESH_ERROR")


def default_replicas(config: MeshConfig) -> int:
    """Replicas of the streams and buckets this deployment creates: 3 with three or more
    servers given, else one per server given."""
    return max(1, min(3, len(config.servers)))


async def ensure_stream(js: JetStreamContext, config: Any, **params: Any) -> Any:
    """Create stream ``config`` (a StreamConfig) or open it if it exists; its StreamInfo."""
    from nats.js.errors import BadRequestError, NotFoundError

    cfg = config.evolve(**params) if params else config
    try:
        return await js.stream_info(cfg.name)
    except NotFoundError:
        pass
    try:
        return await js.add_stream(cfg)
    except BadRequestError:  # created by another node at the same moment
        return await js.stream_info(cfg.name)


async def ensure_kv(js: JetStreamContext, bucket: str, **params: Any) -> KeyValue:
    from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError

    try:
        return await js.key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        pass
    try:
        return await js.create_key_value(bucket=bucket, **params)
    except BadRequestError:
        return await js.key_value(bucket)


class MeshAgent:
    """Runs the mesh services of one node in a thread of its own."""

    def __init__(
        self,
        config: MeshConfig,
        ctx: NodeContext,
        node: NodeHandle | None,
        *,
        services: list[str] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.names: Names = config.names
        self.ctx = ctx
        self.node = node
        self.log = log
        self.replicas = default_replicas(config)
        self._specs = list(SERVICES if services is None else services)
        self.services: list[MeshService] = []
        self.nc: Client | None = None
        self._js: JetStreamContext | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        # Set by the trust service when every trust change on the bus is applied; cleared on
        # a disconnect (the node admits no run until it has caught up again).
        self.admitted = threading.Event()
        self.connected = threading.Event()
        self.generation = 0  # bumped on every disconnect
        self.wake: asyncio.Event | None = None  # set on reconnect: services re-check
        self.beat: asyncio.Event | None = None  # set: send a heartbeat now (state changed)
        self.heartbeat_fields: dict[str, Any] = {}
        self.started = time.time()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.last_error: str | None = None
        self._error_seen: dict[str, float] = {}

    # -- what services use ----------------------------------------------------------------
    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "not connected yet"
        return self._js

    async def wait_admitted(self) -> None:
        """Until this node has applied every trust change on the bus (or it stops)."""
        while not self.admitted.is_set():
            assert self.stopping is not None
            if self.stopping.is_set():
                return
            await asyncio.sleep(0.05)  # polls a threading.Event set by another task

    def node_cordoned(self) -> bool:
        from nightcore.mesh.state import load_state

        return bool(load_state(self.ctx.layout).node_cordon.get("cordoned", False))

    async def ensure_stream(self, config: Any, **params: Any) -> Any:
        params.setdefault("num_replicas", self.replicas)
        return await ensure_stream(self.js, config, **params)

    async def ensure_kv(self, bucket: str, **params: Any) -> KeyValue:
        params.setdefault("replicas", self.replicas)
        return await ensure_kv(self.js, bucket, **params)

    # -- what the node uses ---------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (returns once its loop runs; the connection comes later)."""
        self.services = [load_service(s, self) for s in self._specs]
        self._thread = threading.Thread(
            target=self._thread_main, name="nightcore-mesh", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise NightCoreError("the mesh agent did not start", code="MESH_ERROR")

    def admit(self, timeout_s: float | None = None) -> None:
        """Block a run until the node has caught up with the bus; MESH_NOT_CAUGHT_UP after
        ``timeout_s`` (default: the config's ``admit_timeout_s``)."""
        wait = self.config.admit_timeout_s if timeout_s is None else timeout_s
        if self.admitted.wait(timeout=wait):
            return
        why = (
            "not connected to any NATS server"
            if not self.connected.is_set()
            else ("still applying trust changes from the bus")
        )
        raise NightCoreError(
            f"the node admits no run until it has applied every mesh trust change ({why})",
            code="MESH_NOT_CAUGHT_UP",
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        loop, stopping, beat = self.loop, self.stopping, self.beat
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)
                if beat is not None:
                    loop.call_soon_threadsafe(beat.set)
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def describe(self) -> dict[str, Any]:
        return {
            **self.config.describe(),
            "connected": self.connected.is_set(),
            "admitted": self.admitted.is_set(),
            "last_error": self.last_error,
        }

    def view(self) -> dict[str, Any]:
        """This node's mesh state for the console (``GET /api/mesh``): :meth:`describe`, its
        own cordon, the trust-document versions applied. No NATS request."""
        from nightcore.mesh.state import trust_versions

        return {
            **self.describe(),
            "cordoned": self.node_cordoned(),
            "trust": trust_versions(self.ctx),
        }

    # -- the loop ---------------------------------------------------------------------------
    def _thread_main(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.beat = asyncio.Event()
        self._ready.set()
        try:
            if not await self._connect():
                return
            self._tasks = [
                asyncio.create_task(self._supervise(s), name=f"mesh-{s.name}")
                for s in self.services
            ]
            await self.stopping.wait()
            _done, pending = await asyncio.wait(self._tasks, timeout=10)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        finally:
            if self.nc is not None:
                from nats.errors import Error as NatsError

                with contextlib.suppress(NatsError, TimeoutError, OSError):  # closing anyway
                    await asyncio.wait_for(self.nc.drain(), timeout=5)
            self.admitted.clear()
            self.connected.clear()

    async def _connect(self) -> bool:
        from nightcore.mesh.connect import connect

        assert self.stopping is not None
        warned = False
        while not self.stopping.is_set():
            try:
                self.nc = await connect(
                    self.config,
                    disconnected_cb=self._on_disconnect,
                    reconnected_cb=self._on_reconnect,
                    error_log=self._on_nats_error,
                )
            except NightCoreError as exc:
                self.last_error = f"{exc.code}: {exc.message}"
                if not warned:
                    self.log(
                        f"mesh: warning[{exc.code}]: {exc.message} (retrying; no run admitted)"
                    )
                    warned = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=CONNECT_RETRY_S)
                continue
            self._js = (
                self.nc.jetstream(domain=self.config.js_domain)
                if self.config.js_domain
                else self.nc.jetstream()
            )
            self.connected.set()
            url = self.nc.connected_url
            where = url.netloc if url is not None else "?"
            self.log(f"mesh: connected to {where} as node {self.config.node_name}")
            return True
        return False

    def _on_nats_error(self, line: str) -> None:
        """Log an asynchronous NATS error once per distinct message and minute."""
        now = time.monotonic()
        if now - self._error_seen.get(line, -3600.0) >= 60:
            self._error_seen[line] = now
            if len(self._error_seen) > 256:
                self._error_seen.clear()
            self.log(f"mesh: NATS error: {line}")

    async def _on_disconnect(self) -> None:
        self.generation += 1
        self.admitted.clear()
        self.connected.clear()
        assert self.stopping is not None
        if not self.stopping.is_set():
            self.log("mesh: disconnected: no run admitted until caught up again")

    async def _on_reconnect(self) -> None:
        self.connected.set()
        if self.wake is not None:
            self.wake.set()
        self.log("mesh: reconnected: catching up")

    async def _supervise(self, service: MeshService) -> None:
        assert self.stopping is not None
        while not self.stopping.is_set():
            try:
                await service.run(self)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged with its code; the service restarts
                err = mesh_error(exc, f"service {service.name}")
                self.last_error = f"{err.code}: {err.message}"
                self.log(f"mesh: warning[{err.code}]: {err.message} (restarting)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=RESTART_BACKOFF_S)
