"""NET capability cost, all in one run of this script (Linux; strongbox rows need root).

One HTTP GET of a small body from a server on 127.0.0.1, measured per request:

(a) baseline: Python's http.client from this process (new connection per request)
(b) a guest's ``nightcore.http_request`` in the in-process Sandbox (checks + the same exchange)
(c) the same under ``--strongbox`` (the worker forwards it to the parent over its pipe)

Each guest run makes N requests (the http-get sample with N URLs); per-request figures are
(run with N requests - run with 1 request) / (N - 1), so module instantiation cancels out.
The figures include the guest printing each response (fd_write through Wasmtime's output
callbacks) and share one GIL with the test server's threads; under --strongbox the guest and its
output run in the worker process, which is why (c) can come out below (b) on a busy machine.

    .venv/bin/python benchmarks/net.py [--quick]
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import statistics
import sys
import threading
import time
from pathlib import Path

import wasmtime

from nightcore.sandbox.engine import Sandbox
from nightcore.sandbox.strongbox import StrongboxSandbox, seccomp_available
from nightcore.sandbox.types import EffectiveLimits, NetAccess, RunConfig

REPO = Path(__file__).resolve().parents[1]
WASM = bytes(wasmtime.wat2wasm((REPO / "examples/net/http-get/module.wat").read_text()))
BODY = b"x" * 512


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        return


def config(port: int, n: int) -> RunConfig:
    url = f"http://127.0.0.1:{port}/x"
    return RunConfig(
        tenant="bench",
        module_sha256=hashlib.sha256(WASM).hexdigest(),
        entrypoint="_start",
        argv=("bench", *([url] * n)),
        env=(),
        preopens=(),
        limits=EffectiveLimits(
            fuel=10**9,
            wall_ms=60_000,
            memory_bytes=16 << 20,
            stack_bytes=512 * 1024,
            output_bytes=1 << 22,
        ),
        net=NetAccess((f"http://127.0.0.1:{port}/*",), 1024, 1 << 20, 10_000),
        run_id="bench",
    )


def per_request(sandbox: object, port: int, n: int, repeats: int) -> float:
    run = sandbox.run  # type: ignore[attr-defined]
    one, many = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        assert run(WASM, config(port, 1)).code == "OK"
        one.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert run(WASM, config(port, n)).code == "OK"
        many.append(time.perf_counter() - t)
    return (statistics.median(many) - statistics.median(one)) / (n - 1) * 1e3


def baseline(port: int, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/x", headers={"Connection": "close"})
        assert conn.getresponse().read() == BODY
        conn.close()
    return (time.perf_counter() - t) / n * 1e3


def main() -> int:
    quick = "--quick" in sys.argv
    n, repeats = (20, 3) if quick else (100, 7)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = statistics.median(baseline(port, n) for _ in range(repeats))
    print(f"(a) http.client, new connection per request: {base:.3f} ms/request")
    with Sandbox(None, b"") as sb:
        inproc = per_request(sb, port, n, repeats)
    print(
        f"(b) nightcore.http_request in process: {inproc:.3f} ms/request ({inproc / base:.2f}x a)"
    )
    why = seccomp_available()
    if why:
        print(f"(c) strongbox: skipped ({why})")
    else:
        with StrongboxSandbox(workers=1) as sb:
            boxed = per_request(sb, port, n, repeats)
        print(
            f"(c) nightcore.http_request under --strongbox: {boxed:.3f} ms/request "
            f"({boxed / base:.2f}x a, +{boxed - inproc:.3f} ms over b)"
        )
    srv.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
