"""The console's server-sent events (``GET /events``) against a real server on 127.0.0.1.

Streams are capped per client address and in total, and a console that is not bound to loopback
only serves them with a bearer token. Other client addresses are real: Linux routes all of
127.0.0.0/8 to the loopback interface, so a socket bound to 127.0.0.2 is another client.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from nightcore.context import NodeContext
from nightcore.dashboard.server import ServerThread
from nightcore.dashboard.tokens import TokenStore, parse_expires
from tests.conftest import Env

DEADLINE = 20.0  # seconds: only an upper bound for a broken server, never waited out


def request(
    url: str, path: str, *, source: str = "127.0.0.1", token: str | None = None
) -> socket.socket:
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    conn = socket.create_connection((host, int(port)), timeout=DEADLINE, source_address=(source, 0))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode())
    return conn


def read_head(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def open_stream(url: str, *, source: str = "127.0.0.1", token: str | None = None) -> socket.socket:
    """An accepted event stream, read up to its first ``update`` event."""
    conn = request(url, "/events", source=source, token=token)
    status, headers, rest = read_head(conn)
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), rest
    while b"event: update" not in rest:
        chunk = conn.recv(4096)
        assert chunk, rest
        rest += chunk
    return conn


def refused(url: str, *, source: str = "127.0.0.1", token: str | None = None) -> Any:
    """The status, ``Retry-After`` and JSON code of a refused ``/events`` request."""
    conn = request(url, "/events", source=source, token=token)
    with conn:
        status, headers, rest = read_head(conn)
        assert status != 200, "the stream was accepted"
        length = int(headers["content-length"])
        while len(rest) < length:
            rest += conn.recv(4096)
    body = json.loads(rest)
    assert set(body) == {"code", "error"}, body
    return status, headers.get("retry-after"), headers.get("www-authenticate"), body["code"]


@pytest.fixture
def ws(env: Env) -> NodeContext:
    env.add_tenant("hello")
    return NodeContext(env.ws)


@pytest.fixture
def capped(ws: NodeContext) -> Iterator[ServerThread]:
    with ServerThread(ws, events_per_client=2, events_total=3) as server:
        yield server


def test_event_streams_are_capped_per_client_and_in_total(capped: ServerThread) -> None:
    url = capped.url
    a1 = open_stream(url)
    a2 = open_stream(url)
    # A third stream from the same address: 429, although the server has room.
    assert refused(url) == (429, "30", None, "EVENTS_CLIENT_LIMIT")
    b1 = open_stream(url, source="127.0.0.2")
    # The server is full: 503 for an address that has no stream yet.
    assert refused(url, source="127.0.0.3") == (503, "30", None, "EVENTS_CAPACITY")
    # The read-only views still answer while /events is full.
    with request(url, "/api/tenants", source="127.0.0.3") as conn:
        assert read_head(conn)[0] == 200
    # A closed stream gives its slot back (as soon as the server sees the disconnect).
    a1.close()
    deadline = time.monotonic() + DEADLINE
    while True:
        conn = request(url, "/events", source="127.0.0.3")
        status, _, _ = read_head(conn)
        if status == 200:
            break
        conn.close()
        assert time.monotonic() < deadline, "the closed stream's slot was never released"
        time.sleep(0.05)  # polling for the disconnect to be seen, not a readiness guess
    assert capped.app.state.events.open_streams == 3
    for c in (a2, b1, conn):
        c.close()


def test_streams_carry_updates_to_every_client(ws: NodeContext, capped: ServerThread) -> None:
    first, second = open_stream(capped.url), open_stream(capped.url, source="127.0.0.2")
    from nightcore.runner.cordon import cordon

    cordon(ws, "hello", "test", actor="test")  # changes cordons.json and the audit log
    for conn in (first, second):
        seen = b""
        while b"event: update" not in seen:
            chunk = conn.recv(4096)
            assert chunk, seen
            seen += chunk
        conn.close()


def test_events_need_a_token_when_not_loopback_only(ws: NodeContext) -> None:
    token = TokenStore(ws).create(parse_expires("1h")).token
    with ServerThread(ws, events_token=True) as server:
        status, _, challenge, code = refused(server.url)
        assert (status, code) == (401, "TOKEN_MISSING") and challenge is not None
        bad = token[:-4] + "AAAA"
        assert refused(server.url, token=bad)[::3] == (401, "TOKEN_INVALID")
        open_stream(server.url, token=token).close()
        # The page tells its script to send the token with the stream.
        with request(server.url, "/") as conn:
            page = b""
            while b"</body>" not in page:
                chunk = conn.recv(65536)
                assert chunk
                page += chunk
        assert b'data-events-token="1"' in page
    # Loopback only (the default here): no token needed, and the page does not ask for one.
    with ServerThread(ws) as server:
        open_stream(server.url).close()


def test_serve_on_a_non_loopback_address_asks_for_the_token() -> None:
    from nightcore.dashboard.server import events_need_token

    assert not events_need_token("127.0.0.1") and not events_need_token("::1")
    assert events_need_token("0.0.0.0") and events_need_token("192.0.2.7")  # noqa: S104
