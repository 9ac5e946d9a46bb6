"""End to end: ``nightcore dashboard build``, ``serve`` and ``serve token`` through the CLI."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, CliResult, Env, serving


def nightcore(*args: str, timeout: float = 60) -> CliResult:
    p = subprocess.run(
        [sys.executable, "-m", "nightcore", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    return CliResult(p.returncode, p.stdout, p.stderr)


def test_build_prints_the_sha256_of_the_report(env: Env) -> None:
    env.add_tenant("hello")
    assert env.cli("run").code == 0
    res = env.cli("dashboard", "build")
    assert res.code == 0, res.err
    digest, path = res.out.split()
    assert Path(path) == env.ws / "state" / "dashboard.html"
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest
    assert "1 tenants" in res.err and "verification: OK" in res.err
    out = env.root / "report.html"
    res = env.cli("dashboard", "build", "--out", str(out), "--json", "--diff", "0")
    doc = res.json()
    assert res.code == 0 and doc["path"] == str(out)
    assert doc["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert doc["tenants"] == 1 and doc["runs"] == 1 and doc["verify"]["ok"] is True
    assert doc["diff"]["new_tenants"] == ["hello"]


def test_build_refuses_bad_arguments(env: Env) -> None:
    res = env.cli("dashboard", "build", "--diff", "last tuesday")
    assert res.code == 2 and "error[USAGE]" in res.err
    res = env.cli("dashboard", "build", "--diff", "123456789")
    assert res.code == 2 and "error[USAGE]" in res.err
    res = env.cli("dashboard", "build", "--max-rows", "0")
    assert res.code == 2 and "error[USAGE]" in res.err
    res = env.cli("dashboard")
    assert res.code == 2 and "needs an action" in res.err


def test_serve_refuses_non_loopback_without_remote_and_tls(env: Env, tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not really a certificate\n")
    for extra in ([], ["--allow-remote"], ["--tls-cert", str(cert), "--tls-key", str(cert)]):
        res = env.cli("serve", "--host", "0.0.0.0", *extra)  # noqa: S104 - refused
        assert res.code == 2 and "error[SERVE_REMOTE_REFUSED]" in res.err, extra
    res = env.cli("serve", "--host", "192.0.2.1", "--allow-remote", "--tls-cert", str(cert))
    assert res.code == 2 and "error[USAGE]" in res.err
    # A certificate that does not load is refused before the URL is printed.
    res = env.cli("serve", "--port", "0", "--json", "--tls-cert", str(cert), "--tls-key", str(cert))
    assert res.code == 2 and "error[SERVE_TLS_INVALID]" in res.err
    assert "url" not in res.json() and res.json()["code"] == "SERVE_TLS_INVALID"


def test_token_create_list_revoke(env: Env) -> None:
    res = env.cli("serve", "token", "create", "--expires", "2h", "--json")
    assert res.code == 0, res.err
    new = res.json()
    assert re.fullmatch(r"nct_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", new["token"])
    store = env.ws / "private" / "serve-tokens.json"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert new["token"] not in store.read_text()
    listed = env.cli("serve", "token", "list", "--json").json()
    assert [t["id"] for t in listed] == [new["id"]] and "token" not in listed[0]
    assert env.cli("serve", "token", "create", "--expires", "never").code == 2
    assert env.cli("serve", "token", "revoke", new["id"]).code == 0
    assert env.cli("serve", "token", "list", "--json").json() == []
    res = env.cli("serve", "token", "revoke", new["id"])
    assert res.code == 2 and "error[TOKEN_NOT_FOUND]" in res.err


@pytest.fixture
def served(env: Env) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    env.add_tenant("hello")
    with serving(env.ws) as (first, proc):
        url = first["url"]  # {"url": "http://127.0.0.1:PORT/", ...}
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), first
        yield url, proc


def test_serve_answers_read_only_and_stops_cleanly(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    url, proc = served
    with httpx.Client(base_url=url, timeout=30) as client:
        res = client.get("/api/tenants")
        assert res.status_code == 200 and res.json()["tenants"][0]["tenant"] == "hello"
        assert (
            res.headers["x-frame-options"] == "DENY" and res.headers["cache-control"] == "no-store"
        )
        assert "server" not in res.headers
        res = client.post("/api/tenants/hello/cordon", json={"reason": "no token"})
        assert res.status_code == 401 and res.json()["code"] == "TOKEN_MISSING"
        page = client.get("/")
        assert page.status_code == 200 and "Night Core" in page.text
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert "GET /api/tenants 200" in log and "POST /api/tenants/hello/cordon 401" in log
    assert "console stopped" in log and "Traceback" not in log


def test_serve_json_prints_its_url_only_once_listening(env: Env) -> None:
    """The URL line means "connect now": the first connection must not be refused."""
    env.add_tenant("hello")
    with serving(env.ws) as (first, _proc):
        host, port = first["url"].removeprefix("http://").rstrip("/").rsplit(":", 1)
        # Immediately, no retry: a refused connection here is the bug.
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.sendall(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


def test_build_output_is_deterministic_apart_from_its_timestamp(env: Env) -> None:
    env.add_tenant("hello")
    a = nightcore("-w", str(env.ws), "dashboard", "build", "--json", "--out", str(env.root / "a"))
    time.sleep(0.01)
    b = nightcore("-w", str(env.ws), "dashboard", "build", "--json", "--out", str(env.root / "b"))
    assert a.code == 0 and b.code == 0, a.err + b.err
    strip = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?Z")
    texts = [strip.sub("T", (env.root / n).read_text()) for n in ("a", "b")]
    assert texts[0] == texts[1]
    assert json.loads(a.out)["sha256"] != ""
