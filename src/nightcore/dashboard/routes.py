"""The live console's endpoints: one module-level handler per route, over a :class:`Console`.

Handlers find their :class:`Console` (the explicit state: workspace view, event hub, tokens,
rate limits, actions) on ``request.app.state.console``. They parse and check requests, read
through :class:`~nightcore.dashboard.live.LiveState`, and change the workspace only through
:class:`~nightcore.dashboard.actions.ConsoleActions`. Night Core errors become JSON
``{"code", "error"}`` with a status chosen by code (docs/dashboard.md).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from nightcore.context import NodeContext
from nightcore.dashboard import assets, openapi
from nightcore.dashboard.actions import ConsoleActions
from nightcore.dashboard.collect import TENANT_ID_RE, latest_checkpoint, query_runs_ro
from nightcore.dashboard.live import EventHub, EventStream, LiveState
from nightcore.dashboard.report import render_content, render_page
from nightcore.dashboard.security import RateLimiter, problem
from nightcore.dashboard.tokens import TokenError, TokenRecord, TokenStore
from nightcore.errors import NightCoreError, UsageError

MAX_BODY = 16 * 1024
MAX_PAGE = 1000
FAILED_AUTH_LIMIT = 30  # per client address and minute

# Which HTTP status a refused request gets, by error code (default 400 for usage errors,
# 500 for anything else).
_STATUS = {
    "USAGE": 400,
    "TENANT_NAME_INVALID": 400,
    "TENANT_NOT_FOUND": 404,
    "ALREADY_CORDONED": 409,
    "NOT_CORDONED": 409,
    "BUSY": 409,
}


def status_of(exc: NightCoreError) -> int:
    if exc.code in _STATUS:
        return _STATUS[exc.code]
    if isinstance(exc, UsageError):
        return 400
    if exc.code.startswith(("AUDIT_", "CHECKPOINT_")):
        return 409
    return 500


@dataclass
class Console:
    """Everything the handlers share, for one workspace and one server."""

    ws: NodeContext
    live: LiveState
    hub: EventHub
    actions: ConsoleActions
    tokens: TokenStore
    limiter: RateLimiter  # mutations per token
    events_token: bool  # /events needs a bearer token
    ping_every: float
    api_version: str
    failures: RateLimiter = field(default_factory=lambda: RateLimiter(FAILED_AUTH_LIMIT, 60.0))
    # The host's Night Mesh view (the node agent with --mesh passes one; docs/mesh.md).
    mesh: Callable[[], dict[str, Any]] | None = None
    page_headers: dict[str, str] = field(
        default_factory=lambda: {"Content-Security-Policy": assets.csp(live=True, header=True)}
    )


def console_of(request: Request) -> Console:
    console = request.app.state.console
    assert isinstance(console, Console)
    return console


# -- request parsing --------------------------------------------------------------------------


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


def client_of(request: Request) -> str:
    return request.client.host if request.client else "?"


# -- authentication ---------------------------------------------------------------------------


async def authenticate(request: Request) -> TokenRecord | Response:
    """The request's valid token, or the refusal (failed attempts are rate-limited)."""
    console = console_of(request)
    auth = request.headers.get("authorization", "")
    scheme, _, presented = auth.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="nightcore"'}
    if not auth:
        return problem(401, "TOKEN_MISSING", "a bearer token is required", challenge)
    if scheme.lower() != "bearer":
        return problem(401, "TOKEN_INVALID", "use Authorization: Bearer <token>", challenge)
    try:
        return await run_in_threadpool(console.tokens.check, presented.strip())
    except TokenError as exc:
        if console.failures.hit(client_of(request)) is not None:  # guessing tokens: slow down
            return problem(
                429, "RATE_LIMITED", "too many failed authentications", {"Retry-After": "60"}
            )
        return problem(401, exc.code, exc.message, challenge)
    except NightCoreError as exc:
        return problem(500, exc.code, exc.message)


async def authorize(request: Request) -> TokenRecord | Response:
    """A valid token within its rate of mutations, or the refusal."""
    rec = await authenticate(request)
    if isinstance(rec, Response):
        return rec
    limiter = console_of(request).limiter
    retry = limiter.hit(rec.id)
    if retry is not None:
        return problem(
            429,
            "RATE_LIMITED",
            f"at most {limiter.limit} changes per {limiter.window:g} s per token",
            {"Retry-After": str(max(1, round(retry)))},
        )
    return rec


Handler = Callable[[Request], Awaitable[Response]]


def guarded(fn: Handler) -> Handler:
    """Map Night Core errors to ``{code, error}`` JSON with a fitting status."""

    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except NightCoreError as exc:
            return problem(status_of(exc), exc.code, exc.message)

    wrapper.__name__ = fn.__name__
    return wrapper


# -- pages ------------------------------------------------------------------------------------


async def page(request: Request) -> Response:
    console = console_of(request)
    version, snap = await run_in_threadpool(console.live.snapshot)
    html = render_page(snap, live=True, version=version, events_token=console.events_token)
    return HTMLResponse(html, headers=console.page_headers)


async def fragment(request: Request) -> Response:
    console = console_of(request)
    version, snap = await run_in_threadpool(console.live.snapshot)
    html = render_content(snap, live=True, version=version)
    return HTMLResponse(html, headers=console.page_headers)


async def events(request: Request) -> Response:
    console = console_of(request)
    if console.events_token:
        rec = await authenticate(request)
        if isinstance(rec, Response):
            return rec
    client = client_of(request)
    refusal = console.hub.admit(client)
    if refusal is not None:
        return refusal
    return EventStream(console.hub, client, console.ping_every)


async def favicon(request: Request) -> Response:
    return Response(status_code=204)


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi.schema(console_of(request).api_version))


# -- read API ---------------------------------------------------------------------------------


async def api_tenants(request: Request) -> Response:
    params = query(request, ("offset", "limit", "attention"))
    offset = int_param(params, "offset", 0, 0, 10**9)
    limit = int_param(params, "limit", 100, 1, MAX_PAGE)
    attention = params.get("attention")
    if attention not in (None, "true", "false"):
        raise UsageError("attention must be true or false")
    _, snap = await run_in_threadpool(console_of(request).live.snapshot)
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
    rows = await run_in_threadpool(query_runs_ro, console_of(request).ws, tenant, limit)
    return JSONResponse({"runs": rows or []})


async def api_mesh(request: Request) -> Response:
    query(request, ())
    view = console_of(request).mesh
    return JSONResponse({"mesh": await run_in_threadpool(view) if view is not None else None})


async def api_verify(request: Request) -> Response:
    query(request, ())
    view = await run_in_threadpool(console_of(request).live.verify)
    return JSONResponse(view.to_dict())


async def api_checkpoint(request: Request) -> Response:
    if request.method == "POST":
        return await checkpoint_now(request)
    query(request, ())
    console = console_of(request)
    cp, err = await run_in_threadpool(latest_checkpoint, console.ws)
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
    _, snap = await run_in_threadpool(console.live.snapshot)
    return JSONResponse({"checkpoint": out, "entries": snap.audit.entries})


# -- mutations (through ConsoleActions only) ---------------------------------------------------


async def checkpoint_now(request: Request) -> Response:
    rec = await authorize(request)
    if isinstance(rec, Response):
        return rec
    await json_body(request)
    actions = console_of(request).actions
    signed = await run_in_threadpool(actions.checkpoint, f"console token:{rec.id}")
    return JSONResponse({"checkpoint": signed})


async def cordon_tenant(request: Request) -> Response:
    rec = await authorize(request)
    if isinstance(rec, Response):
        return rec
    tenant = tenant_param(request.path_params["tenant"])
    body = await json_body(request)
    reason = body.get("reason", "")
    if not isinstance(reason, str) or not reason.strip():
        raise UsageError("reason must be a non-empty string")
    actions = console_of(request).actions
    entry = await run_in_threadpool(actions.cordon, tenant, reason, f"token:{rec.id}")
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
    actions = console_of(request).actions
    await run_in_threadpool(actions.uncordon, tenant, reason, f"token:{rec.id}")
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
    actions = console_of(request).actions
    return JSONResponse(await run_in_threadpool(actions.run, names, f"token:{rec.id}"))


# -- errors and the route table ----------------------------------------------------------------


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
    return problem(
        exc.status_code,
        codes.get(exc.status_code, "HTTP_ERROR"),
        str(exc.detail),
        dict(exc.headers or {}),
    )


ROUTES = [
    Route("/", guarded(page), methods=["GET"]),
    Route("/fragment", guarded(fragment), methods=["GET"]),
    Route("/events", events, methods=["GET"]),
    Route("/favicon.ico", favicon, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/api/tenants", guarded(api_tenants), methods=["GET"]),
    Route("/api/runs", guarded(api_runs), methods=["GET"]),
    Route("/api/audit/verify", guarded(api_verify), methods=["GET"]),
    Route("/api/mesh", guarded(api_mesh), methods=["GET"]),
    Route("/api/checkpoint", guarded(api_checkpoint), methods=["GET", "POST"]),
    Route("/api/tenants/{tenant}/cordon", guarded(cordon_tenant), methods=["POST"]),
    Route("/api/tenants/{tenant}/uncordon", guarded(uncordon_tenant), methods=["POST"]),
    Route("/api/run", guarded(run_now), methods=["POST"]),
]
