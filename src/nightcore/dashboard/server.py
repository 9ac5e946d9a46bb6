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
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nightcore.dashboard import assets, openapi
from nightcore.dashboard.collect import (
    TENANT_ID_RE,
    CheckpointView,
    Snapshot,
    VerifyView,
    collect,
    full_verify,
    latest_checkpoint,
    new_scanner,
    query_runs_ro,
)
from nightcore.dashboard.report import render_content, render_page
from nightcore.dashboard.scan import AuditScanner
from nightcore.dashboard.tokens import TokenError, TokenRecord, TokenStore
from nightcore.dashboard_defaults import DEFAULT_HOST, DEFAULT_PORT, MAX_ROWS
from nightcore.errors import NightCoreError, UsageError
from nightcore.workspace import Workspace

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
MAX_BODY = 16 * 1024
MAX_PAGE = 1000
POLL_INTERVAL = 0.25
PING_EVERY = 5.0
VERIFY_CACHE_SECONDS = 10.0
FAILED_AUTH_LIMIT = 30  # per client address and minute
LISTEN_BACKLOG = 2048  # uvicorn's default
EVENTS_PER_CLIENT = 8  # open /events streams per client address
EVENTS_TOTAL = 64  # open /events streams in all
EVENTS_RETRY_AFTER = "30"

# Which HTTP status a refused mutation gets, by error code (default 400 for usage errors,
# 500 for anything else).
_STATUS = {
    "USAGE": 400,
    "TENANT_NAME_INVALID": 400,
    "TENANT_NOT_FOUND": 404,
    "ALREADY_CORDONED": 409,
    "NOT_CORDONED": 409,
    "BUSY": 409,
}


def problem(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse({"code": code, "error": message}, status_code=status, headers=headers)


def _status_of(exc: NightCoreError) -> int:
    if exc.code in _STATUS:
        return _STATUS[exc.code]
    if isinstance(exc, UsageError):
        return 400
    if exc.code.startswith(("AUDIT_", "CHECKPOINT_")):
        return 409
    return 500


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def events_need_token(bind_host: str) -> bool:
    """Whether ``/events`` needs a bearer token: when the console is not bound to loopback."""
    return not is_loopback(bind_host)


def _hostname(host_header: str) -> str:
    """``Host`` header -> lower-case host name without port (IPv6 brackets removed)."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else ""
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (sliding window)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float | None = None) -> float | None:
        """Record one event; None if allowed, else the seconds until the next is."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._hits.setdefault(key, deque())
            while q and now - q[0] >= self.window:
                q.popleft()
            if len(q) >= self.limit:
                return max(0.0, self.window - (now - q[0]))
            q.append(now)
            return None


class LiveState:
    """The console's view of one workspace, refreshed incrementally as the audit log grows."""

    def __init__(self, ws: Workspace, *, max_rows: int = MAX_ROWS) -> None:
        self.ws = ws
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._scanner: AuditScanner | None = None
        self._snapshot: tuple[str, Snapshot] | None = None
        self._verify_lock = threading.Lock()
        self._verify: tuple[int, float, VerifyView] | None = None

    def _paths(self) -> list[Path]:
        ws = self.ws
        return [
            ws.state_dir / "audit" / "audit.jsonl",
            ws.state_dir / "audit" / "audit.tail",
            ws.state_dir / "nightcore.db",
            ws.state_dir / "nightcore.db-wal",
            ws.state_dir / "cordons.json",
            ws.revocations_path,
            ws.registry_path,
            ws.modules_dir,
        ]

    def version(self) -> str:
        """Changes whenever anything the view shows may have changed (cheap: a few stats)."""
        h = hashlib.sha256()
        for p in self._paths():
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
            return (self.ws.state_dir / "audit" / "audit.jsonl").stat().st_size
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


class SecurityMiddleware:
    """Host check, cross-origin POST refusal, security headers, optional access log."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str],
        scheme: str,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.allowed = {h.strip().lower().strip("[]") for h in allowed_hosts}
        self.scheme = scheme
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        status_seen: list[int] = []

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(int(message["status"]))
                h = MutableHeaders(scope=message)
                if "content-security-policy" not in h:
                    h["Content-Security-Policy"] = API_CSP
                h["X-Content-Type-Options"] = "nosniff"
                h["X-Frame-Options"] = "DENY"
                h["Referrer-Policy"] = "no-referrer"
                h["Cross-Origin-Opener-Policy"] = "same-origin"
                h["Cross-Origin-Resource-Policy"] = "same-origin"
                h["Cache-Control"] = "no-store"
            await send(message)

        refusal: Response | None = None
        if _hostname(host) not in self.allowed:
            refusal = problem(421, "HOST_REJECTED", "this server does not answer to that host name")
        elif scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            site = headers.get("sec-fetch-site")
            if origin is not None and origin.lower() != f"{self.scheme}://{host.lower()}":
                refusal = problem(403, "ORIGIN_REJECTED", "cross-origin request refused")
            elif site is not None and site not in ("same-origin", "none"):
                refusal = problem(403, "ORIGIN_REJECTED", "cross-site request refused")
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)
        if self.log is not None:
            from nightcore.dashboard.text import clean

            status = status_seen[0] if status_seen else 0
            self.log(clean(f"{scope['method']} {scope['path']} {status}", 300))


def create_app(
    ws: Workspace,
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
) -> Starlette:
    """The console as an ASGI app (``allowed_hosts``: the host names clients may use).

    ``events_token``: serve ``/events`` only with a bearer token; by default when a host name
    clients may use is not a loopback name (:func:`serve` says whether it is bound to loopback).
    """
    allowed_hosts = tuple(allowed_hosts)
    if events_token is None:
        events_token = not all(is_loopback(h) for h in allowed_hosts)
    state = LiveState(ws, max_rows=max_rows)
    hub = EventHub(
        state.version, poll_interval=poll_interval, per_client=events_per_client, total=events_total
    )
    tokens = TokenStore(ws)
    limiter = RateLimiter(rate_limit, rate_window)
    failures = RateLimiter(FAILED_AUTH_LIMIT, 60.0)
    run_lock = threading.Lock()
    # One Runner for the console's lifetime (created on the first run, used under run_lock):
    # engines, compiled modules, memoized verifications and the run index stay warm, so a
    # service that runs tenants through POST /api/run pays no cold start per run.
    warm: list[Any] = []
    from nightcore.dashboard.collect import versions

    api_version = versions()["nightcore"]
    page_csp = {"Content-Security-Policy": assets.csp(live=True, header=True)}

    # -- helpers -------------------------------------------------------------------------

    def query(request: Request, allowed: Sequence[str]) -> dict[str, str]:
        params = request.query_params
        for key in params:
            if key not in allowed:
                raise UsageError(f"unknown parameter {key[:40]!r}")
            if len(params.getlist(key)) > 1:
                raise UsageError(f"parameter {key!r} given more than once")
        return dict(params)

    def int_param(params: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
        raw = params.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or len(raw) > 9:
            raise UsageError(f"{name} must be an integer in [{lo}, {hi}]")
        value = int(raw)
        if not lo <= value <= hi:
            raise UsageError(f"{name} must be an integer in [{lo}, {hi}]")
        return value

    def tenant_param(value: str) -> str:
        if not TENANT_ID_RE.fullmatch(value):
            raise NightCoreError("not a valid tenant id", code="TENANT_NAME_INVALID")
        return value

    async def authenticate(request: Request) -> TokenRecord | Response:
        """The request's valid token, or the refusal (failed attempts are rate-limited)."""
        auth = request.headers.get("authorization", "")
        scheme_, _, presented = auth.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="nightcore"'}
        if not auth:
            return problem(401, "TOKEN_MISSING", "a bearer token is required", challenge)
        if scheme_.lower() != "bearer":
            return problem(401, "TOKEN_INVALID", "use Authorization: Bearer <token>", challenge)
        try:
            rec = await run_in_threadpool(tokens.check, presented.strip())
        except TokenError as exc:
            client = request.client.host if request.client else "?"
            if failures.hit(client) is not None:  # guessing tokens: slow down
                return problem(
                    429, "RATE_LIMITED", "too many failed authentications", {"Retry-After": "60"}
                )
            return problem(401, exc.code, exc.message, challenge)
        except NightCoreError as exc:
            return problem(500, exc.code, exc.message)
        return rec

    async def authorize(request: Request) -> TokenRecord | Response:
        """A valid token within its rate of mutations, or the refusal."""
        rec = await authenticate(request)
        if isinstance(rec, Response):
            return rec
        retry = limiter.hit(rec.id)
        if retry is not None:
            return problem(
                429,
                "RATE_LIMITED",
                f"at most {rate_limit} changes per {rate_window:g} s per token",
                {"Retry-After": str(max(1, round(retry)))},
            )
        return rec

    async def json_body(request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            raise UsageError(f"the request body must be at most {MAX_BODY} bytes")
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY:
                raise UsageError(f"the request body must be at most {MAX_BODY} bytes")
        if not data.strip():
            return {}
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise UsageError("the request body must be application/json")
        try:
            doc = json.loads(data)
        except ValueError:
            raise UsageError("the request body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise UsageError("the request body must be a JSON object")
        return doc

    Handler = Callable[[Request], Awaitable[Response]]

    def guarded(fn: Handler) -> Handler:
        """Map Night Core errors to ``{code, error}`` JSON with a fitting status."""

        async def wrapper(request: Request) -> Response:
            try:
                return await fn(request)
            except NightCoreError as exc:
                return problem(_status_of(exc), exc.code, exc.message)

        return wrapper

    # -- pages ---------------------------------------------------------------------------

    async def page(request: Request) -> Response:
        version, snap = await run_in_threadpool(state.snapshot)
        html = render_page(snap, live=True, version=version, events_token=events_token)
        return HTMLResponse(html, headers=page_csp)

    async def fragment(request: Request) -> Response:
        version, snap = await run_in_threadpool(state.snapshot)
        html = render_content(snap, live=True, version=version)
        return HTMLResponse(html, headers=page_csp)

    async def events(request: Request) -> Response:
        if events_token:
            rec = await authenticate(request)
            if isinstance(rec, Response):
                return rec
        client = request.client.host if request.client else "?"
        refusal = hub.admit(client)
        if refusal is not None:
            return refusal
        return EventStream(hub, client, ping_every)

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    # -- read API ------------------------------------------------------------------------

    async def api_tenants(request: Request) -> Response:
        params = query(request, ("offset", "limit", "attention"))
        offset = int_param(params, "offset", 0, 0, 10**9)
        limit = int_param(params, "limit", 100, 1, MAX_PAGE)
        attention = params.get("attention")
        if attention not in (None, "true", "false"):
            raise UsageError("attention must be true or false")
        _, snap = await run_in_threadpool(state.snapshot)
        rows = snap.tenants
        if attention is not None:
            rows = [t for t in rows if t.attention == (attention == "true")]
        page_rows = rows[offset : offset + limit]
        return JSONResponse(
            {
                "total": len(rows),
                "offset": offset,
                "limit": limit,
                "tenants": [t.to_dict() for t in page_rows],
            }
        )

    async def api_runs(request: Request) -> Response:
        params = query(request, ("tenant", "limit"))
        limit = int_param(params, "limit", 50, 1, MAX_PAGE)
        tenant = tenant_param(params["tenant"]) if "tenant" in params else None
        rows = await run_in_threadpool(query_runs_ro, ws, tenant, limit)
        return JSONResponse({"runs": rows or []})

    async def api_verify(request: Request) -> Response:
        query(request, ())
        view = await run_in_threadpool(state.verify)
        return JSONResponse(view.to_dict())

    async def api_checkpoint(request: Request) -> Response:
        if request.method == "POST":
            return await checkpoint_now(request)
        query(request, ())
        cp, err = await run_in_threadpool(latest_checkpoint, ws)
        if err is not None:
            code, _, message = err.partition(": ")
            return problem(409, code, message or err)
        out = None
        if cp is not None:
            out = {
                "origin": cp.origin,
                "size": cp.size,
                "root": cp.root,
                "key_name": cp.key_name,
                "note": cp.note,
                "verified": cp.verified,
            }
        _, snap = await run_in_threadpool(state.snapshot)
        return JSONResponse({"checkpoint": out, "entries": snap.audit.entries})

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi.schema(api_version))

    # -- mutations -----------------------------------------------------------------------

    async def checkpoint_now(request: Request) -> Response:
        rec = await authorize(request)
        if isinstance(rec, Response):
            return rec
        await json_body(request)
        from nightcore.audit import tlog

        def sign() -> dict[str, Any]:
            cp = tlog.transparency_log(
                ws.layout, key_name=ws.config.node_name, signer=ws.node_signer, audit=ws.audit
            ).checkpoint(f"console token:{rec.id}")
            return dict(cp.to_dict())

        return JSONResponse({"checkpoint": await run_in_threadpool(sign)})

    async def cordon_tenant(request: Request) -> Response:
        rec = await authorize(request)
        if isinstance(rec, Response):
            return rec
        tenant = tenant_param(request.path_params["tenant"])
        body = await json_body(request)
        reason = body.get("reason", "")
        if not isinstance(reason, str) or not reason.strip():
            raise UsageError("reason must be a non-empty string")
        from nightcore.runner.cordon import cordon

        entry = await run_in_threadpool(lambda: cordon(ws, tenant, reason, actor=f"token:{rec.id}"))
        return JSONResponse({"tenant": tenant, "cordoned": True, **entry, "actor": rec.id})

    async def uncordon_tenant(request: Request) -> Response:
        rec = await authorize(request)
        if isinstance(rec, Response):
            return rec
        tenant = tenant_param(request.path_params["tenant"])
        body = await json_body(request)
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise UsageError("reason must be a string")
        from nightcore.runner.cordon import uncordon

        await run_in_threadpool(lambda: uncordon(ws, tenant, reason, actor=f"token:{rec.id}"))
        return JSONResponse({"tenant": tenant, "cordoned": False, "actor": rec.id})

    async def run_now(request: Request) -> Response:
        rec = await authorize(request)
        if isinstance(rec, Response):
            return rec
        body = await json_body(request)
        names = body.get("tenants")
        if names is not None and (
            not isinstance(names, list)
            or len(names) > MAX_PAGE
            or not all(isinstance(n, str) and TENANT_ID_RE.fullmatch(n) for n in names)
        ):
            raise UsageError("tenants must be a list of tenant ids")
        if not run_lock.acquire(blocking=False):
            return problem(409, "BUSY", "a run started from the console is still in progress")
        try:

            def execute() -> dict[str, Any]:
                from nightcore.runner.pipeline import Runner

                ws.audit().append(
                    "console_action",
                    {"action": "run", "actor": f"token:{rec.id}", "tenants": names or []},
                )
                if not warm:
                    warm.append(Runner(ws))
                report = warm[0].run(names or None)
                return {
                    "ok": report.ok,
                    "runs": [r.to_dict() for r in report.runs],
                    "checkpoint": getattr(report, "checkpoint", None),
                }

            return JSONResponse(await run_in_threadpool(execute))
        finally:
            run_lock.release()

    # -- errors --------------------------------------------------------------------------

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
        return problem(
            exc.status_code,
            codes.get(exc.status_code, "HTTP_ERROR"),
            str(exc.detail),
            dict(exc.headers or {}),
        )

    routes = [
        Route("/", guarded(page), methods=["GET"]),
        Route("/fragment", guarded(fragment), methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/api/tenants", guarded(api_tenants), methods=["GET"]),
        Route("/api/runs", guarded(api_runs), methods=["GET"]),
        Route("/api/audit/verify", guarded(api_verify), methods=["GET"]),
        Route("/api/checkpoint", guarded(api_checkpoint), methods=["GET", "POST"]),
        Route("/api/tenants/{tenant}/cordon", guarded(cordon_tenant), methods=["POST"]),
        Route("/api/tenants/{tenant}/uncordon", guarded(uncordon_tenant), methods=["POST"]),
        Route("/api/run", guarded(run_now), methods=["POST"]),
    ]

    def close() -> None:
        with run_lock:
            while warm:
                warm.pop().close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.live = state
    app.state.events = hub
    app.state.warm_runners = warm
    app.state.close = close  # the server calls it once it has stopped
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
    ws: Workspace,
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

    def __init__(self, ws: Workspace, **app_options: Any) -> None:
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
