"""HTTP defences of the live console: host check, cross-site refusal, headers, rate limits.

- The ``Host`` header must name this server (a loopback name by default), which defeats DNS
  rebinding for the read-only views too.
- A POST whose ``Origin`` is present and not this server's own origin, or whose
  ``Sec-Fetch-Site`` is present and not ``same-origin``/``none``, gets 403.
- Every response carries CSP, nosniff, ``frame-ancestors 'none'`` + ``X-Frame-Options: DENY``,
  ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def problem(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The console's error response: JSON ``{"code", "error"}``."""
    return JSONResponse({"code": code, "error": message}, status_code=status, headers=headers)


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


def hostname_of(host_header: str) -> str:
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
        if hostname_of(host) not in self.allowed:
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
