"""The NET capability end to end (issue 14, docs/net.md): real `nightcore run`s of guests that
call `nightcore.http_request` against HTTP servers on 127.0.0.1 started here (port 0).

Every case runs a real Wasmtime guest through the CLI (in-process, so the one test that needs
a name to resolve to an address of its choosing can replace the resolver: see
``test_a_name_resolving_to_a_denied_address``), then reads the run's stdout, the run table and
the audit log, and checks that `audit verify` still passes.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from nightcore.canonical import canonical
from nightcore.module.manifest import parse_manifest_toml
from nightcore.module.verify import MANIFEST_PREDICATE_TYPE
from nightcore.sandbox import net as net_host
from nightcore.trust.envelope import make_statement, sign_payload
from nightcore.trust.keys import load_signer
from tests.conftest import REPO, Env, wat_module

HTTP_GET = wat_module((REPO / "examples" / "net" / "http-get" / "module.wat").read_text())
BODY = b"hello from the test server"
CAP = 65_536  # [policy.net] max_response_bytes of these tests


@dataclass
class Server:
    port: int
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def _start(routes: dict[str, Any]) -> tuple[http.server.ThreadingHTTPServer, Server]:
    state = Server(0)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return

        def do_GET(self) -> None:
            state.requests.append((self.path, {k: v for k, v in self.headers.items()}))
            route = routes.get(self.path.split("?")[0])
            if route is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            route(self, state)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    state.port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, state


def _hello(h: http.server.BaseHTTPRequestHandler, s: Server) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(len(BODY)))
    h.end_headers()
    h.wfile.write(BODY)


def _huge(h: http.server.BaseHTTPRequestHandler, s: Server) -> None:
    """Announces 1 GiB and streams until the client hangs up."""
    h.send_response(200)
    h.send_header("Content-Length", str(1 << 30))
    h.end_headers()
    _stream_until_closed(h)


def _chunked(h: http.server.BaseHTTPRequestHandler, s: Server) -> None:
    """No length at all: chunks until the client hangs up."""
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    chunk = b"x" * 16384
    try:
        for _ in range(1 << 16):  # 1 GiB at most
            h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except OSError:
        return


def _stream_until_closed(h: http.server.BaseHTTPRequestHandler) -> None:
    chunk = b"y" * 16384
    try:
        for _ in range(1 << 16):
            h.wfile.write(chunk)
    except OSError:
        return


def _stall(h: http.server.BaseHTTPRequestHandler, s: Server) -> None:
    """Never answers (until the test ends)."""
    s.release.wait(60)


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """The granted server, and another one (the redirect target) that must never be reached."""
    other_srv, other = _start({"/secret": _hello})
    routes = {
        "/hello": _hello,
        "/huge": _huge,
        "/chunked": _chunked,
        "/stall": _stall,
        "/redirect": lambda h, s: _redirect(h, f"http://127.0.0.1:{other.port}/secret"),
    }
    main_srv, main = _start(routes)
    try:
        yield main, other
    finally:
        main.release.set()
        for srv in (main_srv, other_srv):
            srv.shutdown()
            srv.server_close()


def _redirect(h: http.server.BaseHTTPRequestHandler, location: str) -> None:
    h.send_response(302)
    h.send_header("Location", location)
    h.send_header("Content-Length", "0")
    h.end_headers()


def allow_net(env: Env, extra: str = "") -> None:
    cfg = env.ws / "nightcore.toml"
    text = cfg.read_text().replace("allow_net = false", "allow_net = true")
    cfg.write_text(text + f"\n[policy.net]\nmax_response_bytes = {CAP}\n{extra}")


def toml_list(items: list[str]) -> str:
    return (
        "["
        + ", ".join(
            '"' + i.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n") + '"'
            for i in items
        )
        + "]"
    )


def add_net_tenant(
    env: Env,
    tenant: str,
    grants: list[str],
    urls: list[str],
    wasm: bytes = HTTP_GET,
    wall_ms: int = 8000,
) -> None:
    env.add_tenant(
        tenant,
        f"args = {toml_list(urls)}\n[capabilities]\nnet = {toml_list(grants)}\n"
        f"[limits]\nwall_ms = {wall_ms}\noutput_bytes = 262144\n",
        wasm=wasm,
    )


def _strongbox_missing() -> str:
    from nightcore.sandbox.strongbox import seccomp_available

    return seccomp_available()


# In process, and under --strongbox (the parent makes the worker's requests).
MODES = [
    "in-process",
    pytest.param(
        "strongbox", marks=pytest.mark.skipif(bool(_strongbox_missing()), reason="no strongbox")
    ),
]


def run(env: Env, *args: str, mode: str = "in-process") -> dict[str, dict[str, Any]]:
    extra = ("--strongbox",) if mode == "strongbox" else ()
    res = env.cli("run", "--json", "--no-dashboard", *extra, *args)
    assert res.code in (0, 1), res.err
    return {r["tenant"]: r for r in res.json()}


def stdout_of(env: Env, row: dict[str, Any]) -> str:
    return (env.ws / "state" / "runs" / str(row["run_id"]) / "stdout").read_text()


def net_events(env: Env, tenant: str) -> list[dict[str, Any]]:
    return [e for e in env.audit_lines() if e["event"] == "net_request" and e["tenant"] == tenant]


def rc_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("rc=")]


def audit_verifies(env: Env) -> None:
    res = env.cli("audit", "verify")
    assert res.code == 0, res.out + res.err


@pytest.mark.parametrize("mode", MODES)
def test_allowed_get_returns_the_body_and_a_neighbour_completes(
    env: Env, servers: tuple[Server, Server], mode: str
) -> None:
    main, _ = servers
    allow_net(env)
    add_net_tenant(
        env,
        "fetcher",
        [f"http://127.0.0.1:{main.port}/*"],
        [f"http://127.0.0.1:{main.port}/hello?q=1"],
    )
    env.add_tenant("neighbour")
    rows = run(env, mode=mode)
    assert rows["fetcher"]["code"] == "OK", rows["fetcher"]
    out = stdout_of(env, rows["fetcher"])
    assert out == f"rc={len(BODY)} status=200\n{BODY.decode()}\n"
    assert rows["neighbour"]["code"] == "OK" and stdout_of(env, rows["neighbour"]) == "hello\n"
    # The request the server saw: the checked address, the granted name in Host, no extras.
    path, headers = main.requests[-1]
    assert path == "/hello?q=1"
    assert headers["Host"] == f"127.0.0.1:{main.port}"
    assert headers["User-Agent"] == net_host.USER_AGENT
    (ev,) = net_events(env, "fetcher")
    d = ev["data"]
    assert d["code"] == "OK" and d["status"] == 200 and d["address"] == "127.0.0.1"
    assert d["response_bytes"] == len(BODY) and d["run_id"] == rows["fetcher"]["run_id"]
    # The net_request line sits between the run's start and its outcome.
    order = [
        e["event"]
        for e in env.audit_lines()
        if e.get("tenant") == "fetcher"
        and e["event"] in ("run_start", "net_request", "run_outcome")
    ]
    assert order == ["run_start", "net_request", "run_outcome"]
    audit_verifies(env)


@pytest.mark.parametrize("mode", MODES)
def test_refusals_are_refused_audited_and_leave_the_server_untouched(
    env: Env, servers: tuple[Server, Server], mode: str
) -> None:
    main, other = servers
    allow_net(env)
    base = f"http://127.0.0.1:{main.port}"
    urls = [
        "http://not-granted.invalid/x",  # a host not in the list
        f"http://127.0.0.2:{main.port}/hello",  # another loopback literal
        f"{base}/redirect",  # answered 302 to the other server: not followed
        f"http://127.0.0.1:{other.port}/secret",  # the guest following it itself
        f"{base}/huge",  # 1 GiB announced
        f"{base}/chunked",  # no length, endless
        f"{base}/hello\r\nX-Injected: 1",  # header injection
        f"{base}/hello HTTP/1.1",  # request-line injection
        f"{base}/a/%2e%2e/hello",  # dot segment, encoded
        "ftp://127.0.0.1/x",
    ]
    add_net_tenant(env, "prober", [f"{base}/*"], urls)
    env.add_tenant("neighbour")
    rows = run(env, mode=mode)
    assert rows["prober"]["code"] == "EXIT_NONZERO"  # the guest exits 1 when a request failed
    assert rows["neighbour"]["code"] == "OK"
    lines = rc_lines(stdout_of(env, rows["prober"]))
    assert lines == [
        "rc=-3 status=0",
        "rc=-3 status=0",
        "rc=0 status=302",
        "rc=-3 status=0",
        "rc=-9 status=200",
        "rc=-9 status=200",
        "rc=-2 status=0",
        "rc=-2 status=0",
        "rc=-2 status=0",
        "rc=-2 status=0",
    ]
    assert other.requests == []  # the redirect was never followed
    assert all("X-Injected" not in h and "x-injected" not in h for _, h in main.requests)
    assert [p for p, _ in main.requests] == ["/redirect", "/huge", "/chunked"]
    codes = [e["data"]["code"] for e in net_events(env, "prober")]
    assert codes == [
        "NET_DENIED",
        "NET_DENIED",
        "OK",
        "NET_DENIED",
        "NET_RESPONSE_TOO_LARGE",
        "NET_RESPONSE_TOO_LARGE",
        "NET_URL_INVALID",
        "NET_URL_INVALID",
        "NET_URL_INVALID",
        "NET_URL_INVALID",
    ]
    big = net_events(env, "prober")[5]["data"]
    assert big["response_bytes"] <= CAP + 65536  # read stopped at the cap
    injected = net_events(env, "prober")[6]["data"]
    assert "\\x0d\\x0a" in injected["url"] and "\r" not in injected["url"]
    audit_verifies(env)


def test_an_ip_literal_when_only_a_name_is_granted(
    env: Env, servers: tuple[Server, Server]
) -> None:
    main, _ = servers
    allow_net(env)
    add_net_tenant(
        env,
        "named",
        [f"http://localhost:{main.port}/*"],
        [f"http://127.0.0.1:{main.port}/hello", f"http://localhost:{main.port}/hello"],
    )
    rows = run(env)
    assert rc_lines(stdout_of(env, rows["named"])) == [
        "rc=-3 status=0",
        f"rc={len(BODY)} status=200",
    ]
    evs = [e["data"] for e in net_events(env, "named")]
    assert [e["code"] for e in evs] == ["NET_DENIED", "OK"]
    assert evs[1]["address"] in ("127.0.0.1", "::1")
    audit_verifies(env)


@pytest.mark.parametrize("mode", MODES)
def test_a_name_resolving_to_a_denied_address(
    env: Env, servers: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A granted *name* that resolves to loopback is refused: only a literal grant may reach a
    non-public address. The name is made to resolve to 127.0.0.1 by replacing the resolver for
    this test only (``nightcore.sandbox.net.resolve``, the one injection point; /etc/hosts is
    shared and must not be edited); the address check and the connection are the real ones."""
    main, _ = servers
    allow_net(env)
    real = net_host.system_resolve

    def resolve(host: str, port: int, timeout: float) -> list[str]:
        if host == "rebind.nightcore.test":
            return ["127.0.0.1"]
        if host == "mixed.nightcore.test":
            return ["93.184.216.34", "10.0.0.7"]  # one public, one private: refused
        return real(host, port, timeout)

    monkeypatch.setattr(net_host, "resolve", resolve)
    add_net_tenant(
        env,
        "rebinder",
        [f"http://rebind.nightcore.test:{main.port}/*", "http://mixed.nightcore.test/*"],
        [f"http://rebind.nightcore.test:{main.port}/hello", "http://mixed.nightcore.test/x"],
    )
    rows = run(env, mode=mode)
    assert rc_lines(stdout_of(env, rows["rebinder"])) == ["rc=-4 status=0", "rc=-4 status=0"]
    evs = [e["data"] for e in net_events(env, "rebinder")]
    assert [e["code"] for e in evs] == ["NET_ADDRESS_DENIED", "NET_ADDRESS_DENIED"]
    assert "127.0.0.1" in evs[0]["reason"] and "10.0.0.7" in evs[1]["reason"]
    assert main.requests == []
    audit_verifies(env)


def test_the_hosts_own_name_resolving_to_a_non_public_address(
    env: Env, servers: tuple[Server, Server]
) -> None:
    """The same with the system resolver: this machine's host name, when it resolves to a
    loopback or private address (as containers usually have it in /etc/hosts)."""
    import ipaddress

    main, _ = servers
    name = socket.gethostname().lower()
    try:
        addrs = {str(i[4][0]) for i in socket.getaddrinfo(name, main.port, type=socket.SOCK_STREAM)}
    except OSError:
        pytest.skip(f"the host name {name!r} does not resolve here")
    if any(ipaddress.ip_address(a.split("%")[0]).is_global for a in addrs):
        pytest.skip(f"the host name {name!r} resolves to a public address here")
    try:
        from nightcore.module.netpolicy import parse_grant

        parse_grant(f"http://{name}:{main.port}/*")
    except ValueError:
        pytest.skip(f"the host name {name!r} is not a grantable DNS name")
    allow_net(env)
    add_net_tenant(
        env, "selfname", [f"http://{name}:{main.port}/*"], [f"http://{name}:{main.port}/hello"]
    )
    rows = run(env)
    assert rc_lines(stdout_of(env, rows["selfname"])) == ["rc=-4 status=0"]
    assert [e["data"]["code"] for e in net_events(env, "selfname")] == ["NET_ADDRESS_DENIED"]
    assert main.requests == []
    audit_verifies(env)


OOB_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "nightcore" "http_request"
    (func $req (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 32) "GET")
  (data (i32.const 64) "URL_PLACEHOLDER")
  ;; one byte per result: 'A' - rc (rc = -1 gives 'B')
  (func $out (param $rc i32)
    (i32.store8 (i32.const 200) (i32.sub (i32.const 65) (local.get $rc)))
    (i32.store (i32.const 0) (i32.const 200))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    ;; url beyond memory
    (call $out (call $req (i32.const 32) (i32.const 3) (i32.const 65530) (i32.const 100)
      (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 1024) (i32.const 16)))
    ;; pointer + length wrapping around 2^32
    (call $out (call $req (i32.const 32) (i32.const 3) (i32.const 64) (i32.const -1)
      (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 1024) (i32.const 16)))
    ;; response buffer larger than memory
    (call $out (call $req (i32.const 32) (i32.const 3) (i32.const 64) (i32.const URL_LEN)
      (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 0x7fffffff) (i32.const 16)))
    ;; status pointer at the last byte
    (call $out (call $req (i32.const 32) (i32.const 3) (i32.const 64) (i32.const URL_LEN)
      (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 1024) (i32.const 65535)))
    ;; body pointer negative
    (call $out (call $req (i32.const 32) (i32.const 3) (i32.const 64) (i32.const URL_LEN)
      (i32.const -8) (i32.const 8) (i32.const 1024) (i32.const 1024) (i32.const 16)))
    ;; method pointer out of bounds
    (call $out (call $req (i32.const 70000) (i32.const 3) (i32.const 64) (i32.const URL_LEN)
      (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 1024) (i32.const 16)))
    ;; and a good request after all that: the host is still fine
    (call $out (call $req (i32.const 32) (i32.const 3) (i32.const 64) (i32.const URL_LEN)
      (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 1024) (i32.const 16)))))
"""


@pytest.mark.parametrize("mode", MODES)
def test_out_of_bounds_pointers_and_lengths(
    env: Env, servers: tuple[Server, Server], mode: str
) -> None:
    main, _ = servers
    allow_net(env)
    url = f"http://127.0.0.1:{main.port}/hello"
    wat = OOB_WAT.replace("URL_PLACEHOLDER", url).replace("URL_LEN", str(len(url)))
    add_net_tenant(env, "oob", [f"http://127.0.0.1:{main.port}/*"], [], wasm=wat_module(wat))
    env.add_tenant("neighbour")
    rows = run(env, mode=mode)
    assert rows["oob"]["code"] == "OK", rows["oob"]  # no trap, no host crash
    out = stdout_of(env, rows["oob"]).encode("latin-1")
    assert out[:6] == b"B" * 6  # NC_EFAULT = -1, six times
    assert out[6] == 65 - len(BODY)  # then the good request: len(BODY) bytes
    assert rows["neighbour"]["code"] == "OK"
    evs = [e["data"] for e in net_events(env, "oob")]
    assert [e["code"] for e in evs] == ["NET_FAULT"] * 6 + ["OK"]
    assert "out of bounds" in evs[0]["reason"]
    audit_verifies(env)


@pytest.mark.parametrize("mode", MODES)
def test_importing_the_api_without_the_grant_fails_to_link(env: Env, mode: str) -> None:
    allow_net(env)
    env.add_tenant("sneaky", "[limits]\nwall_ms = 3000\n", wasm=HTTP_GET)
    env.add_tenant("neighbour")
    rows = run(env, mode=mode)
    assert rows["sneaky"]["code"] == "INSTANTIATE_ERROR"
    assert "nightcore::http_request" in rows["sneaky"]["reason"]
    assert rows["neighbour"]["code"] == "OK"


def test_node_policy_off_denies_a_net_manifest(env: Env) -> None:
    add_net_tenant(env, "netty", ["http://127.0.0.1:8080/*"], ["http://127.0.0.1:8080/x"])
    rows = run(env)
    assert rows["netty"]["code"] == "CAPABILITY_DENIED"


def test_node_policy_narrows_the_grants(env: Env, servers: tuple[Server, Server]) -> None:
    main, _ = servers
    base = f"http://127.0.0.1:{main.port}"
    allow_net(env, f'allow = ["{base}/public/*", "{base}/hello"]\n')
    add_net_tenant(env, "wide", [f"{base}/*"], [f"{base}/hello"])
    add_net_tenant(env, "narrow", [f"{base}/hello"], [f"{base}/hello"])
    rows = run(env)
    assert rows["wide"]["code"] == "CAPABILITY_DENIED"
    assert "policy.net.allow" in rows["wide"]["reason"]
    assert rows["narrow"]["code"] == "OK"
    denied = [e for e in env.audit_lines() if e["event"] == "verify" and e["tenant"] == "wide"]
    assert denied and denied[0]["data"]["code"] == "CAPABILITY_DENIED"


@pytest.mark.parametrize(
    "entry", ["*", "https://*.example.com/*", "http://*/x", "*.example.com:443", "http://h/x*y"]
)
def test_a_manifest_asking_for_wildcards_is_refused_at_verification(env: Env, entry: str) -> None:
    """`nightcore sign` refuses it, and so does verification of an envelope signed elsewhere
    (the statement is made and signed here by hand, as an older or hostile signer would)."""
    d = env.add_tenant("greedy", sign=False)
    manifest = (d / "manifest.toml").read_text()
    (d / "manifest.toml").write_text(manifest + f"[capabilities]\nnet = {toml_list([entry])}\n")
    res = env.cli("sign", str(d), "--key", str(env.publisher.private_path))
    assert res.code == 2 and "MANIFEST_INVALID" in res.err
    predicate = parse_manifest_toml(manifest.encode()).to_predicate()
    predicate["capabilities"]["net"] = [entry]
    digest = hashlib.sha256((d / "module.wasm").read_bytes()).hexdigest()
    stmt = make_statement([("module.wasm", digest)], MANIFEST_PREDICATE_TYPE, predicate)
    signer = load_signer(str(env.publisher.private_path))
    (d / "module.intoto.dsse.json").write_bytes(sign_payload(canonical(stmt), [signer]) + b"\n")
    (d / "manifest.toml").unlink()
    allow_net(env)
    rows = run(env)
    assert rows["greedy"]["code"] == "MANIFEST_INVALID"
    assert "net" in rows["greedy"]["reason"]
    (ev,) = [e for e in env.audit_lines() if e["event"] == "verify" and e["tenant"] == "greedy"]
    assert ev["data"]["code"] == "MANIFEST_INVALID"
    audit_verifies(env)


@pytest.mark.parametrize("mode", MODES)
def test_a_stalled_server_costs_only_the_runs_wall_time(
    env: Env, servers: tuple[Server, Server], mode: str
) -> None:
    main, _ = servers
    allow_net(env)
    base = f"http://127.0.0.1:{main.port}"
    add_net_tenant(env, "staller", [f"{base}/*"], [f"{base}/stall"], wall_ms=1500)
    env.add_tenant("neighbour")
    rows = run(env, mode=mode)
    assert rows["staller"]["code"] == "TIMEOUT"
    assert rows["neighbour"]["code"] == "OK"
    assert [e["data"]["code"] for e in net_events(env, "staller")] == ["NET_TIMEOUT"]
    audit_verifies(env)


@pytest.mark.parametrize("mode", MODES)
def test_request_count_cap_and_bounded_audit(env: Env, mode: str) -> None:
    allow_net(env, "max_requests = 40\n")
    urls = [f"http://denied-{i}.invalid/" for i in range(45)]
    add_net_tenant(env, "chatty", ["http://granted.invalid/*"], urls)
    rows = run(env, mode=mode)
    lines = rc_lines(stdout_of(env, rows["chatty"]))
    assert lines == ["rc=-3 status=0"] * 40 + ["rc=-10 status=0"] * 5
    assert len(net_events(env, "chatty")) == net_host.MAX_AUDITED
    (summary,) = [e["data"] for e in env.audit_lines() if e["event"] == "net_summary"]
    assert summary["requests"] == 45 and summary["refused"] == 45
    assert summary["not_itemised"] == 45 - net_host.MAX_AUDITED
    audit_verifies(env)


def test_the_sample_tenants_manifests_are_loopback_only() -> None:
    for d in sorted((REPO / "examples" / "net").iterdir()):
        if not (d / "manifest.toml").is_file():
            continue
        m = parse_manifest_toml((d / "manifest.toml").read_bytes())
        assert m.capabilities.net and all("127.0.0.1" in g for g in m.capabilities.net)


@pytest.mark.parametrize("mode", MODES)
def test_the_c_sample_fetches_through_the_host_api(
    env: Env, servers: tuple[Server, Server], mode: str
) -> None:
    main, _ = servers
    allow_net(env)
    wasm = (REPO / "examples" / "net" / "http-get-c" / "module.wasm").read_bytes()
    base = f"http://127.0.0.1:{main.port}"
    add_net_tenant(env, "c-get", [f"{base}/hello"], [f"{base}/hello"], wasm=wasm)
    add_net_tenant(env, "c-denied", [f"{base}/hello"], [f"{base}/huge"], wasm=wasm)
    rows = run(env, mode=mode)
    assert rows["c-get"]["code"] == "OK", rows["c-get"]
    assert stdout_of(env, rows["c-get"]) == f"status=200 bytes={len(BODY)}\n{BODY.decode()}\n"
    assert rows["c-denied"]["code"] == "EXIT_NONZERO"
    assert stdout_of(env, rows["c-denied"]) == "error=-3 (NET_DENIED) status=0\n"
    audit_verifies(env)


def test_replay_of_a_net_run_makes_no_request(env: Env, servers: tuple[Server, Server]) -> None:
    main, _ = servers
    allow_net(env)
    base = f"http://127.0.0.1:{main.port}"
    add_net_tenant(env, "fetcher", [f"{base}/*"], [f"{base}/hello"])
    row = run(env)["fetcher"]
    assert row["code"] == "OK" and len(main.requests) == 1
    res = env.cli("replay", str(row["run_id"]), "--json")
    # The replayed guest got NC_ELIMIT instead of a response: its output differs.
    assert res.code == 1 and res.json()["code"] == "REPLAY_DIVERGED"
    assert len(main.requests) == 1


def _self_signed(tmp: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 that no trust store knows (made here, at test time)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nightcore-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.mark.parametrize("mode", MODES)
def test_https_verifies_the_certificate(env: Env, mode: str) -> None:
    """https uses the default trust store and host check: a self-signed server is refused
    (NET_CONNECT_FAILED), nothing is sent to it."""
    import ssl

    srv, state = _start({"/hello": _hello})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*_self_signed(env.root))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    try:
        allow_net(env)
        base = f"https://127.0.0.1:{state.port}"
        add_net_tenant(env, "tls", [f"{base}/*"], [f"{base}/hello"])
        rows = run(env, mode=mode)
        assert rc_lines(stdout_of(env, rows["tls"])) == ["rc=-6 status=0"]
        (ev,) = net_events(env, "tls")
        assert ev["data"]["code"] == "NET_CONNECT_FAILED" and "TLS" in ev["data"]["reason"]
        assert state.requests == []
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_net_run_through_the_node_agent(env: Env, servers: tuple[Server, Server]) -> None:
    """The same through `nightcore node` (its worker processes run the tenants)."""
    from tests.conftest import run_cli_subprocess
    from tests.node.test_node import NodeProcess

    main, _ = servers
    allow_net(env)
    base = f"http://127.0.0.1:{main.port}"
    add_net_tenant(env, "fetcher", [f"{base}/*"], [f"{base}/hello", "http://elsewhere.invalid/"])
    node = NodeProcess(env.ws)
    try:
        res = run_cli_subprocess("-w", str(env.ws), "run", "--json", "--no-dashboard")
        assert res.code == 1, res.err  # the guest exits 1: one request was refused
        (row,) = res.json()
        assert rc_lines(stdout_of(env, row)) == [f"rc={len(BODY)} status=200", "rc=-3 status=0"]
        assert [e["data"]["code"] for e in net_events(env, "fetcher")] == ["OK", "NET_DENIED"]
        assert node.stop() == 0
    finally:
        if node.proc.poll() is None:
            node.kill()
    audit_verifies(env)
