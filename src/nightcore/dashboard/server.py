"""The live console: the report's views over HTTP, updated by server-sent events, plus a JSON API.

Security model (docs/dashboard.md):

- **Read-only without credentials.** Mutations (cordon, uncordon, run, checkpoint) need
  ``Authorization: Bearer <token>`` (:mod:`nightcore.dashboard.tokens`); cookies are never
  read or set, so a browser never attaches a credential on its own (no CSRF by design).
- **Cross-site requests refused.** A POST whose ``Origin`` is present and not this server's
  own origin, or whose ``Sec-Fetch-Site`` is present and not ``same-origin``/``none``, gets 403.
  The ``Host`` header must name this server (a loopback name by default), which defeats DNS
  rebinding for the read-only views too.
- **Rate-limited and audited.** Each token may make ``rate_limit`` mutations per
  ``rate_window`` seconds (429 with ``Retry-After``); every mutation is audited with
  ``token:<id>`` as the actor.
- **Headers on every response**: CSP (the page: hash-pinned script and style only), nosniff,
  ``frame-ancestors 'none'`` + ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``,
  ``Cache-Control: no-store``.
- **Loopback by default.** :func:`serve` refuses a non-loopback address unless both
  ``allow_remote`` and a TLS certificate and key are given.

This module assembles the app and runs it; the pieces live beside it: the endpoints in
:mod:`~nightcore.dashboard.routes`, the write actions in :mod:`~nightcore.dashboard.actions`,
the live view and event streams in :mod:`~nightcore.dashboard.live`, the HTTP defences in
:mod:`~nightcore.dashboard.security`.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from nightcore.context import NodeContext
from nightcore.dashboard.actions import ConsoleActions
from nightcore.dashboard.live import (
    EVENTS_PER_CLIENT,
    EVENTS_TOTAL,
    PING_EVERY,
    POLL_INTERVAL,
    EventHub,
    LiveState,
)
from nightcore.dashboard.routes import ROUTES, Console, http_error
from nightcore.dashboard.security import (
    LOOPBACK_NAMES,
    RateLimiter,
    SecurityMiddleware,
    events_need_token,
    is_loopback,
)
from nightcore.dashboard.tokens import TokenStore
from nightcore.dashboard_defaults import DEFAULT_HOST, DEFAULT_PORT, MAX_ROWS
from nightcore.errors import NightCoreError, UsageError

__all__ = [
    "LOOPBACK_NAMES",
    "LiveState",
    "RateLimiter",
    "ServerThread",
    "create_app",
    "events_need_token",
    "is_loopback",
    "serve",
]

LISTEN_BACKLOG = 2048  # uvicorn's default


def create_app(
    ws: NodeContext,
    *,
    allowed_hosts: Iterable[str] = LOOPBACK_NAMES,
    scheme: str = "http",
    rate_limit: int = 10,
    rate_window: float = 60.0,
    poll_interval: float = POLL_INTERVAL,
    ping_every: float = PING_EVERY,
    events_per_client: int = EVENTS_PER_CLIENT,
    events_total: int = EVENTS_TOTAL,
    events_token: bool | None = None,
    max_rows: int = MAX_ROWS,
    log: Callable[[str], None] | None = None,
    run: Callable[[list[str]], dict[str, Any]] | None = None,
    mesh: Callable[[], dict[str, Any]] | None = None,
) -> Starlette:
    """The console as an ASGI app (``allowed_hosts``: the host names clients may use).

    ``events_token``: serve ``/events`` only with a bearer token; by default when a host name
    clients may use is not a loopback name (:func:`serve` says whether it is bound to loopback).
    ``run``: the host's way to run tenants for ``POST /api/run`` (the node agent passes its
    own, so the console's runs use its worker pool); by default the console keeps a warm runner.
    ``mesh``: the host's Night Mesh view for ``GET /api/mesh`` (a mesh node passes its own).
    """
    from nightcore.dashboard.collect import versions

    allowed_hosts = tuple(allowed_hosts)
    if events_token is None:
        events_token = not all(is_loopback(h) for h in allowed_hosts)
    live = LiveState(ws, max_rows=max_rows)
    actions = ConsoleActions(ws, run=run)
    console = Console(
        ws=ws,
        live=live,
        hub=EventHub(
            live.version,
            poll_interval=poll_interval,
            per_client=events_per_client,
            total=events_total,
        ),
        actions=actions,
        tokens=TokenStore(ws),
        limiter=RateLimiter(rate_limit, rate_window),
        events_token=events_token,
        ping_every=ping_every,
        api_version=versions()["nightcore"],
        mesh=mesh,
    )
    app = Starlette(routes=ROUTES, exception_handlers={HTTPException: http_error})
    app.state.console = console
    app.state.live = live
    app.state.events = console.hub
    app.state.warm_runners = actions.warm_runners
    app.state.close = actions.close  # the server calls it once it has stopped
    app.add_middleware(SecurityMiddleware, allowed_hosts=allowed_hosts, scheme=scheme, log=log)
    return app


# -- running it ------------------------------------------------------------------------------


def check_bind(host: str, *, allow_remote: bool, tls_cert: str | None, tls_key: str | None) -> None:
    """Refuse a non-loopback address without ``allow_remote`` and TLS."""
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    for path in (tls_cert, tls_key):
        if path and not Path(path).is_file():
            raise UsageError(f"no such file: {path}")
    if is_loopback(host):
        return
    if not allow_remote or not tls_cert:
        raise NightCoreError(
            f"refusing to serve on non-loopback address {host!r}: that needs --allow-remote "
            "and --tls-cert/--tls-key (the console would otherwise expose audit data, and "
            "tokens would cross the network in clear text)",
            code="SERVE_REMOTE_REFUSED",
        )


def bind_socket(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise UsageError("--port must be in [0, 65535]")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise NightCoreError(
            f"cannot listen on {host} port {port}: {exc.strerror}", code="SERVE_BIND_FAILED"
        ) from None
    # Listen now: the kernel completes connections (up to the backlog) before uvicorn's loop
    # accepts them, so the URL printed next is connectable at once (no refused first request).
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: ASGIApp, tls_cert: str | None = None, tls_key: str | None = None) -> Any:
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,  # our middleware logs, with control characters stripped
        server_header=False,
        proxy_headers=False,  # never trust X-Forwarded-* from clients
        lifespan="off",
        timeout_graceful_shutdown=2,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )
    return uvicorn.Server(config)


def url_of(sock: socket.socket, scheme: str) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}/"


def serve(
    ws: NodeContext,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    allow_remote: bool = False,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    allowed_hosts: Sequence[str] = (),
    ready: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> None:
    """Run the console until interrupted (SIGINT/SIGTERM); ``ready`` gets its URL first."""
    check_bind(host, allow_remote=allow_remote, tls_cert=tls_cert, tls_key=tls_key)
    names = set(allowed_hosts)
    names.add(host)
    if is_loopback(host):
        names.update(LOOPBACK_NAMES)
    scheme = "https" if tls_cert else "http"
    sock = bind_socket(host, port)
    app = create_app(
        ws, allowed_hosts=names, scheme=scheme, events_token=events_need_token(host), log=log
    )
    server = _uvicorn_server(app, tls_cert, tls_key)
    try:
        server.config.load()  # the TLS context too: a bad certificate fails before "ready"
    except OSError as exc:  # ssl.SSLError is an OSError
        sock.close()
        raise NightCoreError(
            f"cannot use the TLS certificate or key: {exc}", code="SERVE_TLS_INVALID"
        ) from None
    if ready is not None:
        ready(url_of(sock, scheme))  # the socket listens already: connectable now
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: make both
    # end here, so that stopping the console is a clean exit (status 0).
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        sock.close()
        app.state.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class ServerThread:
    """The console on a free loopback port in a background thread (tests, embedding)."""

    def __init__(self, ws: NodeContext, **app_options: Any) -> None:
        self.sock = bind_socket("127.0.0.1", 0)
        self.app = create_app(ws, **app_options)
        self.server = _uvicorn_server(self.app)
        self.url = url_of(self.sock, "http")
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the console server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self.sock.close()
        self.app.state.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
