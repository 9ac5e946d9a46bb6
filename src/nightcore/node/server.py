"""The node agent: one long-running process per workspace (``nightcore node``).

It owns the warm state every run shares — the worker pool (engines and compiled modules), the
audit writer (one hash chain, group commit), the run index, the node signer — and serves the
application facade on a Unix socket in the workspace (``state/node.sock``, mode 0600; a peer
must be the workspace owner's uid or root, checked with ``SO_PEERCRED``). The CLI becomes a
thin client of it (:mod:`nightcore.node.client`).

Start: take the workspace's node lock (one node per workspace), start the worker pool before
any Wasmtime engine could exist in this process, close the runs a dead node left open
(``INTERRUPTED``), then listen. Stop (SIGTERM/SIGINT): stop admitting, let in-flight requests
finish (each run ends with its audited code), sign a final checkpoint, stop the workers,
remove the socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightcore.errors import NightCoreError
from nightcore.fsio import wait_readable
from nightcore.node import protocol

if TYPE_CHECKING:
    from nightcore.context import NodeContext
    from nightcore.mesh.agent import MeshAgent
    from nightcore.mesh.config import MeshConfig
    from nightcore.node.pool import RunnerPool
    from nightcore.runner.pipeline import Runner

REQUEST_READ_TIMEOUT_S = 30.0
SHUTDOWN_GRACE_S = 120.0
MAX_TENANTS_PER_REQUEST = 10_000
_PEERCRED = struct.Struct("3i")


def log(message: str) -> None:
    """One line on stderr (the node's log; journald keeps it under systemd)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} nightcore-node: {message}", file=sys.stderr, flush=True)


def peer_uid(conn: socket.socket) -> int:
    _pid, uid, _gid = _PEERCRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return int(uid)


def _bad(message: str) -> NightCoreError:
    return NightCoreError(message, code="NODE_REQUEST_INVALID")


def _str_list(args: dict[str, Any], key: str) -> list[str] | None:
    value = args.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) > MAX_TENANTS_PER_REQUEST
        or not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value)
    ):
        raise _bad(f"{key} must be a list of names")
    return value


def _opt_int(args: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _bad(f"{key} must be an integer in [{lo}, {hi}]")
    return value


def _str(args: dict[str, Any], key: str, *, default: str | None = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str) or len(value) > 4096:
        raise _bad(f"{key} must be a string")
    return value


class Node:
    """The node agent of one workspace."""

    def __init__(
        self,
        ctx: NodeContext,
        *,
        workers: int | None = None,
        tenant_cap: int | None = None,
        socket_path: Path | None = None,
        http: tuple[str, int] | None = None,
        mesh: MeshConfig | None = None,
    ) -> None:
        self.ctx = ctx
        self.http = http
        self.mesh_config = mesh
        self.mesh: MeshAgent | None = None
        self.console_url: str | None = None
        self._console: Any = None
        self._console_thread: threading.Thread | None = None
        self.workers = workers or os.cpu_count() or 1
        self.tenant_cap = tenant_cap
        self.socket_path = socket_path or ctx.layout.node_socket
        self.owner_uid = os.getuid()
        self.started = time.time()
        self.pool: RunnerPool | None = None
        self._strongbox_runner: Runner | None = None
        self._listener: socket.socket | None = None
        self._lock: contextlib.AbstractContextManager[int] | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._handlers: set[threading.Thread] = set()
        self._handlers_lock = threading.Lock()
        self._served = 0
        self._refused = 0
        self._unlisten: Callable[[], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        from nightcore.node.pool import RunnerPool
        from nightcore.node.recovery import close_interrupted, discard_live_output

        self._take_lock()
        try:
            layout = self.ctx.layout
            audit = self.ctx.audit()
            # Workers first: they are new interpreters (never forks), started before anything
            # in this process could have built a Wasmtime engine.
            self.pool = RunnerPool(
                self.workers, layout.root, self.ctx.audit, tenant_cap=self.tenant_cap
            )
            self.pool.start()
            self._listen_trust_changes()
            # Before any new work: a run a dead node left open gets its closing outcome. The
            # workers have taken none yet (they take work only from this node's requests).
            closed = close_interrupted(audit)
            discard_live_output(layout.live_dir)
            if closed:
                log(f"closed {len(closed)} run(s) a previous node left open: INTERRUPTED")
            self.ctx.node_signer()  # fail now, not at the first run, if the key cannot load
            self._start_mesh()
            self._listen()
            if self.http is not None:
                self._start_console(*self.http)
            stats = self.pool.stats()
            audit.append(
                "node_start",
                {
                    "pid": os.getpid(),
                    "workers": stats.size,
                    "tenant_cap": stats.tenant_cap,
                    "interrupted_closed": len(closed),
                },
            )
        except BaseException:
            self._cleanup()
            raise
        if self.console_url is not None:
            log(f"console on {self.console_url} (its runs use this node's workers)")
        log(
            f"serving {layout.root} on {self.socket_path} with {self.workers} worker(s) "
            f"(pid {os.getpid()})"
        )

    def _listen_trust_changes(self) -> None:
        """The kill switch: a cordon or revocation applied in this process (a client's
        ``cordon`` op, the console, a mesh broadcast) makes every worker re-check its in-flight
        runs at once; a change made by another process reaches them through their poll."""
        from nightcore.runner.trustwatch import add_listener

        root = self.ctx.layout.root

        def changed(where: Path) -> None:
            pool = self.pool
            if where == root and pool is not None:
                pool.nudge()

        self._unlisten = add_listener(changed)

    def trust_changed(self) -> None:
        """Direct call for code in the node process that changed the trust state without the
        trust operations (which already call it): re-check every in-flight run now."""
        from nightcore.runner.trustwatch import trust_changed

        trust_changed(self.ctx.layout.root)

    def _start_mesh(self) -> None:
        """Night Mesh (``--mesh``): the agent's thread connects and catches up with the trust
        stream; until it has, :meth:`run_tenants` admits nothing (MESH_NOT_CAUGHT_UP)."""
        if self.mesh_config is None:
            return
        from nightcore.mesh.agent import MeshAgent

        self.mesh = MeshAgent(self.mesh_config, self.ctx, self, log=log)
        self.mesh.start()
        log(
            f"mesh: node {self.mesh_config.node_name} on {','.join(self.mesh_config.servers)} "
            f"(prefix {self.mesh_config.prefix})"
        )

    def _start_console(self, host: str, port: int) -> None:
        """The live console in this process (its POST /api/run uses the node's runner)."""
        from nightcore.dashboard import server as console

        console.check_bind(host, allow_remote=False, tls_cert=None, tls_key=None)
        sock = console.bind_socket(host, port)
        app = console.create_app(
            self.ctx,
            allowed_hosts=console.LOOPBACK_NAMES,
            events_token=False,
            run=self.run_for_console,
            log=log,
            mesh=self.mesh.view if self.mesh is not None else None,
        )
        server = console._uvicorn_server(app)
        self._console = (server, sock, app)
        self.console_url = console.url_of(sock, "http")
        self._console_thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="nightcore-console", daemon=True
        )
        self._console_thread.start()

    def _stop_console(self) -> None:
        if self._console is None:
            return
        server, sock, app = self._console
        server.should_exit = True
        if self._console_thread is not None:
            self._console_thread.join(timeout=30)
        sock.close()
        app.state.close()
        self._console = None

    def _take_lock(self) -> None:
        """One node per workspace: ``state/node.lock`` held for this process's lifetime."""
        from nightcore.fsio import file_lock

        layout = self.ctx.layout
        layout.state_dir.mkdir(parents=True, exist_ok=True)
        busy = NightCoreError(f"a node is already running for {layout.root}", code="NODE_RUNNING")
        held = file_lock(layout.node_lock_path, busy=busy)
        held.__enter__()
        self._lock = held

    def _listen(self) -> None:
        path = self.socket_path
        path.unlink(missing_ok=True)  # ours: we hold the node lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is created 0600: no window with a wider mode
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(64)
        self._listener = sock

    def request_stop(self, *_: object) -> None:
        """Signal-safe: stop admitting and wake the accept loop."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def serve_forever(self) -> None:
        assert self._listener is not None
        listener = self._listener
        while not self._stop.is_set():
            ready = wait_readable([listener.fileno(), self._wake_r], None)
            if self._wake_r in ready or self._stop.is_set():
                break
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._handle, args=(conn,), name="nightcore-node-req")
            with self._handlers_lock:
                self._handlers.add(t)
            t.start()
        self.shutdown()

    def shutdown(self) -> None:
        log("stopping: no new requests; waiting for in-flight runs")
        if self.mesh is not None:
            self.mesh.stop()  # no more mesh work; its last heartbeat says not alive
            self.mesh = None
        self._stop_console()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            self.socket_path.unlink(missing_ok=True)
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        with self._handlers_lock:
            handlers = list(self._handlers)
        for t in handlers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.pool is not None:
            # Runs still going after the grace are stopped and closed INTERRUPTED, before the
            # node's last lines, so the final checkpoint covers them.
            self.pool.close(grace_s=max(0.0, deadline - time.monotonic()))
            self.pool = None
        if self._strongbox_runner is not None:
            self._strongbox_runner.close()
            self._strongbox_runner = None
        self.ctx.audit().append(
            "node_stop",
            {"pid": os.getpid(), "requests": self._served, "refused": self._refused},
        )
        checkpoint: dict[str, Any] | None = None
        try:  # the final checkpoint covers everything this node logged, its stop included
            cp = self.ctx.transparency_log().checkpoint("node stop")
            checkpoint = {"size": cp.size, "root": cp.root.hex()}
        except NightCoreError as exc:
            log(f"warning[{exc.code}]: no final checkpoint: {exc.message}")
        if self.mesh_config is not None:
            self._replicate_last_audit_lines(self.mesh_config)
        self._cleanup()
        log(f"stopped (final checkpoint {checkpoint})")

    def _replicate_last_audit_lines(self, config: MeshConfig) -> None:
        """The mesh agent stopped before the node's last lines (node_stop, the final
        checkpoint): send them to the audit stream now; if that fails, the next start does."""
        from nightcore.mesh.auditrepl import flush

        try:
            sent = flush(config, self.ctx, log)
            log(f"mesh: audit stream up to date ({sent} line(s) sent at stop)")
        except NightCoreError as exc:
            log(
                f"warning[{exc.code}]: audit lines not replicated at stop (sent at the next "
                f"start): {exc.message}"
            )

    def _cleanup(self) -> None:
        if self.mesh is not None:
            self.mesh.stop()
            self.mesh = None
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        self._stop_console()
        if self._strongbox_runner is not None:
            self._strongbox_runner.close()
            self._strongbox_runner = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            self.socket_path.unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    # -- requests --------------------------------------------------------------------------
    def _handle(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._serve_one(conn)
        finally:
            with self._handlers_lock:
                self._handlers.discard(threading.current_thread())

    def _serve_one(self, conn: socket.socket) -> None:
        def send(obj: dict[str, Any]) -> None:
            # A client that went away does not stop the request: its runs are recorded whole
            # (the audit log, not the socket, is the record).
            with contextlib.suppress(OSError):
                conn.sendall(protocol.dumps(obj))

        uid = peer_uid(conn)
        if uid not in (self.owner_uid, 0):
            self._refused += 1
            self.ctx.audit().append("node_client_refused", {"uid": uid, "reason": "peer uid"})
            send(
                {
                    "ok": False,
                    "error": {
                        "code": "NODE_PEER_REFUSED",
                        "message": f"uid {uid} may not use this node (owner uid "
                        f"{self.owner_uid} or root only)",
                    },
                }
            )
            return
        conn.settimeout(REQUEST_READ_TIMEOUT_S)
        try:
            line = conn.makefile("rb").readline(protocol.MAX_REQUEST_BYTES + 1)
            op, args = protocol.parse_request(line)
        except (OSError, protocol.ProtocolError) as exc:
            send({"ok": False, "error": {"code": "NODE_REQUEST_INVALID", "message": str(exc)}})
            return
        conn.settimeout(None)
        self._served += 1
        try:
            result = self.dispatch(op, args, lambda ev, data: send({"event": ev, "data": data}))
        except NightCoreError as exc:
            send({"ok": False, "error": {"code": exc.code, "message": exc.message}})
            return
        except Exception as exc:  # noqa: BLE001 - logged with its type; the client gets a code
            log(f"error in {op}: {type(exc).__name__}: {exc}")
            send(
                {
                    "ok": False,
                    "error": {"code": "HOST_ERROR", "message": f"{type(exc).__name__}: {exc}"},
                }
            )
            return
        send({"ok": True, "result": result})

    def dispatch(
        self, op: str, args: dict[str, Any], event: Callable[[str, dict[str, Any]], None]
    ) -> Any:
        """Call the facade for one request; plain data out."""
        from nightcore import app

        ctx = self.ctx
        if self._stop.is_set():
            raise NightCoreError("the node is shutting down", code="NODE_SHUTTING_DOWN")
        if op == "ping":
            return {"pid": os.getpid(), "workspace": str(ctx.root)}
        if op == "status":
            assert self.pool is not None
            return {
                "pid": os.getpid(),
                "workspace": str(ctx.root),
                "uptime_s": round(time.time() - self.started, 3),
                "requests": self._served,
                "refused": self._refused,
                "pool": self.pool.stats().to_dict(),
                "mesh": self.mesh.describe() if self.mesh is not None else None,
            }
        if op == "verify":
            return [d.to_dict() for d in app.verify(ctx, _str_list(args, "tenants"))]
        if op == "run":
            return self._run(args, event)
        if op == "runs":
            limit = _opt_int(args, "limit", 1, 100_000) or 50
            tenant = args.get("tenant")
            if tenant is not None and not isinstance(tenant, str):
                raise _bad("tenant must be a string")
            return app.runs(ctx, tenant, limit)
        if op == "cordon":
            return app.cordon(ctx, _str(args, "tenant"), _str(args, "reason"), actor="node")
        if op == "uncordon":
            return app.uncordon(
                ctx, _str(args, "tenant"), _str(args, "reason", default=""), actor="node"
            )
        if op == "audit_verify":
            from nightcore.app import audit

            source = args.get("source")
            if source is not None and not isinstance(source, str):
                raise _bad("source must be a string")
            return audit.verify_log(ctx, source).to_dict()
        if op == "audit_checkpoint":
            from nightcore.app import audit

            signed, path = audit.checkpoint(ctx, _str(args, "reason", default="manual"))
            return {**signed.to_dict(), "path": str(path)}
        raise _bad(f"operation {op!r} is not served by this node")

    def _run(self, args: dict[str, Any], event: Callable[[str, dict[str, Any]], None]) -> Any:
        from nightcore import app

        names = app.select_tenants(self.ctx, _str_list(args, "tenants"))
        event("selected", {"count": len(names)})
        strongbox = args.get("strongbox", False)
        checkpoint = args.get("checkpoint", True)
        wants_progress = args.get("progress", True)
        if not all(isinstance(x, bool) for x in (strongbox, checkpoint, wants_progress)):
            raise _bad("strongbox, checkpoint and progress must be true or false")
        parallel = _opt_int(args, "parallel", 1, 256)
        out = self.run_tenants(
            names,
            strongbox=strongbox,
            parallel=parallel,
            checkpoint=checkpoint,
            # A caller with no progress bar (a script, --json, a pipe) is spared an event per run.
            progress=(
                (lambda run: event("progress", {"tenant": run["tenant"], "code": run["code"]}))
                if wants_progress
                else None
            ),
        )
        if args.get("dashboard", False):
            out["dashboard"] = _refresh_dashboard(self.ctx)
        return out

    def run_tenants(
        self,
        names: list[str],
        *,
        strongbox: bool = False,
        parallel: int | None = None,
        checkpoint: bool = True,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run selected tenants on the workers (or, ``strongbox``, in confined workers); the
        run report as plain data (``RunReport.to_dict()``'s shape)."""
        from nightcore import app
        from nightcore.runner.pipeline import (
            Runner,
            RunReport,
            TenantRun,
            new_run_id,
            sign_checkpoint,
        )

        ctx = self.ctx
        if self.mesh is not None:
            # A mesh node runs nothing before it has applied every trust change on the bus.
            self.mesh.admit()
        if strongbox:
            if self._strongbox_runner is None:
                self._strongbox_runner = Runner(ctx, strongbox=True)

            def each(tr: TenantRun) -> None:
                if progress is not None:
                    progress(tr.to_dict())

            report = app.run(
                ctx,
                names,
                selected=True,
                parallel=parallel,
                progress=each,
                runner=self._strongbox_runner,
                checkpoint=checkpoint,
            )
            return report.to_dict()
        assert self.pool is not None
        runs, index_errors = self.pool.run([(n, new_run_id(n)) for n in names], progress)
        closing = RunReport([])
        sign_checkpoint(ctx, closing, always=checkpoint)
        out = closing.to_dict()
        out["runs"] = runs
        out["index_error"] = index_errors[0] if index_errors else None
        return out

    def run_for_console(self, names: list[str]) -> dict[str, Any]:
        return self.run_tenants(names)


def _refresh_dashboard(ctx: NodeContext) -> dict[str, str]:
    from nightcore.app.dashboard import build_report

    big = ctx.layout.audit_log.exists() and ctx.layout.audit_log.stat().st_size > 64 << 20
    path, digest = build_report(ctx, verify="none" if big else "quick")
    return {"path": str(path), "sha256": digest}


def run_node(
    ctx: NodeContext,
    *,
    workers: int | None = None,
    tenant_cap: int | None = None,
    http: tuple[str, int] | None = None,
    mesh: MeshConfig | None = None,
) -> int:
    """``nightcore node``: start, serve until SIGTERM/SIGINT, stop cleanly. Exit status 0."""
    node = Node(ctx, workers=workers, tenant_cap=tenant_cap, http=http, mesh=mesh)
    node.start()
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    node.serve_forever()
    return 0
