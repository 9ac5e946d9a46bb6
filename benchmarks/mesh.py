"""Night Mesh measured against its floor, all in one run of this script.

(1) floor: a bare nats-py request/reply round trip (one client, one responder, one server):
    nothing on the bus can reach a node faster than this.
(2) revocation propagation to 3 nodes: a signed revocation list published to the trust stream
    (nats-py ``js.publish``), until every one of three ``nightcore node --mesh`` processes (each
    with its own workspace) has verified it with its own registry, applied it through
    ``import_revocations`` (audited, rollback mark written) and logged it. Timed from just before
    the publish to the moment the last node's log line is read. Versions 1..N are signed before
    timing starts (each adds one revoked module digest); the stream sequence in each node's log
    line says which publish it applied.
(3) the same on a three-server cluster (the stream has 3 replicas), ``--cluster``.
(5) in-flight interruption on 3 nodes: a looping tenant (a module of its own each round) runs
    on each node; a signed list revoking that module is published; timed until the last node's
    run call returns (the run stopped by the kill switch, audited, reported). The outcomes are
    counted: REVOKED_IN_FLIGHT, or MODULE_REVOKED when the revocation landed while the run was
    still being verified on its worker.

p50/p99 and the ratio to the floor's p50 are printed. The machine is shared and noisy: the
figures are for comparing within one run.

    .venv/bin/python benchmarks/mesh.py [--quick] [--cluster]

(4) work-queue throughput: ``mesh submit`` of N requests (a tiny tenant) until the results
    stream holds every result, with 1, 2 and 3 node processes of one worker each.

Other parts (audit mirror lag) are added below by their owners.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.mesh.servers import NatsServer, make_cluster, nats_server_binary  # noqa: E402

from nightcore import app  # noqa: E402

NC = [sys.executable, "-m", "nightcore"]
APPLIED = re.compile(r"mesh: trust document (\d+) \(revocations\) applied in ([0-9.]+) ms")


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def show(label: str, xs_ms: list[float], floor_p50: float | None = None) -> None:
    p50, p99 = pct(xs_ms, 50), pct(xs_ms, 99)
    ratio = f"  ({p50 / floor_p50:.1f}x the floor's p50)" if floor_p50 else ""
    print(f"{label:<52} n={len(xs_ms):<5} p50 {p50:8.3f} ms  p99 {p99:8.3f} ms{ratio}")


# -- (1) floor -----------------------------------------------------------------------------------
def request_reply_ms(url: str, n: int) -> list[float]:
    import nats

    async def go() -> list[float]:
        responder = await nats.connect(url)
        client = await nats.connect(url)

        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        await responder.subscribe("bench.echo", cb=echo)
        await responder.flush()
        for _ in range(20):  # warm
            await client.request("bench.echo", b"x", timeout=10)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await client.request("bench.echo", b"x" * 64, timeout=10)
            out.append((time.perf_counter() - t0) * 1000)
        await client.close()
        await responder.close()
        return out

    return asyncio.run(go())


# -- (2) propagation ---------------------------------------------------------------------------
class Node:
    """A ``nightcore node --mesh`` process whose log lines are read by a thread and stamped."""

    def __init__(self, ws: Path, urls: str, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [*NC, "-w", str(ws), "node", "--workers", "1", "--mesh", urls, "--node-name", name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.caught_up = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            now = time.perf_counter()
            if "caught up with the trust stream" in line:
                self.caught_up.set()
            self.lines.put((now, line))

    def applied_at(self, seq: int, timeout_s: float = 60) -> tuple[float, float]:
        """(when the node's "applied" line was read, the node's own apply time in ms)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"node {self.name} never applied sequence {seq}")
            stamp, line = self.lines.get(timeout=left)
            m = APPLIED.search(line)
            if m and int(m.group(1)) == seq:
                return stamp, float(m.group(2))

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=60)
        if self.proc.poll() is None:
            self.proc.kill()


def make_workspaces(root: Path, count: int) -> tuple[list[Path], Any, Any]:
    maint = app.keygen("maint", root / "keys", b"bench-passphrase")
    os.environ["NIGHTCORE_KEY_PASSPHRASE"] = "bench-passphrase"  # noqa: S105 - a throwaway key
    out = []
    for i in range(count):
        ctx = app.init_workspace(root / f"ws{i}")
        app.trust_add_key(ctx, maint.public_path, scope="*", role="maintainer")
        out.append(ctx.root)
    ctx0 = app.open_context(str(out[0]))
    return out, maint, ctx0


def signed_lists(ctx: Any, key_path: Path, n: int) -> list[bytes]:
    from nightcore.trust.keys import load_signer
    from nightcore.trust.registry import RevocationList, sign_revocations

    registry = ctx.load_registry()
    signer = load_signer(str(key_path))
    current = RevocationList()
    out = []
    for i in range(n):
        digest = hashlib.sha256(f"module {i}".encode()).hexdigest()
        current = sign_revocations(current, signer, registry, add_module=(digest, "bench"))
        out.append(current.raw)
    return out


@contextlib.contextmanager
def nodes(workspaces: list[Path], urls: str) -> Iterator[list[Node]]:
    started = [Node(ws, urls, f"b{i + 1}") for i, ws in enumerate(workspaces)]
    try:
        for n in started:
            if not n.caught_up.wait(timeout=120):
                raise RuntimeError(f"node {n.name} never caught up")
        yield started
    finally:
        for n in started:
            n.stop()


def propagation_ms(
    urls: str, workspaces: list[Path], docs: list[bytes]
) -> tuple[list[float], list[float]]:
    """(publish -> applied on every node, each node's own verify+apply time), in ms."""
    import nats

    with nodes(workspaces, urls) as started:

        async def go() -> tuple[list[float], list[float]]:
            nc = await nats.connect(urls.split(","))
            js = nc.jetstream()
            out, apply = [], []
            for data in docs:
                t0 = time.perf_counter()
                ack = await js.publish("nightcore.trust.revocations", data, timeout=30)
                seen = await asyncio.gather(
                    *(asyncio.to_thread(n.applied_at, int(ack.seq)) for n in started)
                )
                out.append((max(s for s, _ in seen) - t0) * 1000)
                apply += [a for _, a in seen]
            await nc.close()
            return out, apply

        return asyncio.run(go())


# -- (4) work-queue throughput ----------------------------------------------------------------
def work_throughput(root: Path, urls: str, node_counts: tuple[int, ...], n: int) -> None:
    """Runs per second through the work queue with 1, 2, 3 node processes (one worker each;
    a tiny tenant), from the first publish of ``mesh submit`` until the results stream holds
    every result. Each count gets its own deployment prefix, so the queues never mix."""
    from tests.conftest import HELLO_WAT, simple_manifest, wat_module, write_tenant

    from nightcore.mesh import workqueue
    from nightcore.mesh.config import MeshConfig

    pub = app.keygen("pub", root / "work-keys", b"bench-passphrase")
    os.environ["NIGHTCORE_KEY_PASSPHRASE"] = "bench-passphrase"  # noqa: S105 - throwaway key
    wasm = wat_module(HELLO_WAT)
    base: float | None = None
    for k in node_counts:
        prefix = f"bench-work{k}"
        wss = []
        for i in range(k):
            ctx = app.init_workspace(root / f"work{k}-ws{i}")
            app.trust_add_key(ctx, pub.public_path, scope="*")
            d = write_tenant(ctx.root, "hello", simple_manifest("hello"), wasm)
            app.sign_tenant(d, str(pub.private_path))
            wss.append(ctx.root)
        config = MeshConfig.from_options(urls, prefix=prefix, node_name="bench-client")
        workqueue.queue(config, workqueue.QueueSettings(ack_wait_s=15))
        procs = [
            subprocess.Popen(
                [
                    *NC,
                    *("-w", str(ws), "node", "--workers", "1", "--mesh", urls),
                    *("--mesh-prefix", prefix, "--node-name", f"w{i}"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i, ws in enumerate(wss)
        ]
        try:
            _wait_admitted(config, k)
            warm = workqueue.submit(config, ["hello"], 10 * k, wait_s=120)  # every node warm
            if warm["results"]["pending"]:
                raise RuntimeError(f"{k} node(s): warm-up requests got no result")
            elapsed = asyncio.run(_timed_work(config, n, 10 * k + n))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=60)
                if p.poll() is None:
                    p.kill()
        rate = n / elapsed
        base = base or rate
        print(
            f"(4) work queue, {k} node(s) x 1 worker, {n} runs{'':<14} "
            f"{rate:8.1f} runs/s  {elapsed * 1000 / n:7.2f} ms/run  ({rate / base:.2f}x 1 node)"
        )


def _wait_admitted(config: Any, k: int) -> None:
    from nightcore.mesh.ops import status

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        nodes_ = status(config)["nodes"]
        if sum(1 for x in nodes_ if x.get("alive") and x.get("admitted")) >= k:
            return
        time.sleep(0.2)  # polling a condition with a deadline
    raise RuntimeError(f"{k} node(s) never caught up")


async def _timed_work(config: Any, n: int, total: int) -> float:
    """Seconds from the first publish of ``n`` requests until the results stream holds
    ``total`` results (polled every 5 ms)."""
    from nightcore.mesh import workqueue

    nc = await workqueue._client(config)
    try:
        js = workqueue._js(nc, config)
        t0 = time.perf_counter()
        await workqueue.submit_async(config, ["hello"], n)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            info = await js.stream_info(config.names.results_stream)
            if int(info.state.messages or 0) >= total:
                return time.perf_counter() - t0
            await asyncio.sleep(0.005)
        raise RuntimeError("the work queue did not drain in 600 s")
    finally:
        await nc.close()


# -- (5) in-flight interruption ------------------------------------------------------------------
LOOP_LIMITS = "[limits]\nfuel = 1000000000000\nwall_ms = 9000\n"


def interrupt_ms(root: Path, url: str, rounds: int) -> tuple[list[float], dict[str, int]]:
    """Each round: a looping tenant (its own module) runs on each of 3 nodes; a signed list
    revoking that module is published; timed until the last node's run call returns (the run
    interrupted, its outcome audited and reported). The codes seen, counted."""
    import wasmtime

    from nightcore.node.client import connect

    workspaces, maint, ctx0 = make_workspaces(root, 3)
    alice = app.keygen("alice", root / "keys", b"bench-passphrase")
    digests = []
    for i in range(rounds):
        wasm = bytes(
            wasmtime.wat2wasm(
                f'(module (memory 1) (data (i32.const 0) "r{i}")'
                ' (func (export "_start") (loop $l (br $l))))'
            )
        )
        digests.append(hashlib.sha256(wasm).hexdigest())
        for ws in workspaces:
            d = ws / "modules" / f"loop{i}"
            d.mkdir(parents=True)
            (d / "module.wasm").write_bytes(wasm)
            (d / "manifest.toml").write_text(
                f'schema = 1\ntenant = "loop{i}"\nversion = "1.0.0"\n{LOOP_LIMITS}'
            )
            app.sign_tenant(d, str(alice.private_path))
    for ws in workspaces:
        app.trust_add_key(app.open_context(str(ws)), alice.public_path, scope="*")
    from nightcore.trust.keys import load_signer
    from nightcore.trust.registry import RevocationList, sign_revocations

    registry = ctx0.load_registry()
    signer = load_signer(str(maint.private_path))
    current, docs = RevocationList(), []
    for digest in digests:
        current = sign_revocations(current, signer, registry, add_module=(digest, "bench"))
        docs.append(current.raw)
    codes: dict[str, int] = {}
    out: list[float] = []
    import nats

    with nodes(workspaces, url):

        def run(ws: Path, tenant: str, done: list[tuple[float, str]]) -> None:
            client = connect(ws / "state" / "node.sock")
            assert client is not None
            report = client.call("run", {"tenants": [tenant]})
            done.append((time.perf_counter(), str(report["runs"][0]["code"])))

        def running(ws: Path, tenant: str) -> bool:
            client = connect(ws / "state" / "node.sock")
            assert client is not None
            return bool(client.call("status", {})["pool"]["running"].get(tenant))

        async def publish(data: bytes) -> float:
            nc = await nats.connect(url)
            js = nc.jetstream()
            await js.stream_info("nightcore-trust")  # connected and warm before timing
            t0 = time.perf_counter()
            await js.publish("nightcore.trust.revocations", data, timeout=30)
            await nc.close()
            return t0

        for i, data in enumerate(docs):
            done: list[tuple[float, str]] = []
            threads = [
                threading.Thread(target=run, args=(ws, f"loop{i}", done)) for ws in workspaces
            ]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while not all(running(ws, f"loop{i}") for ws in workspaces):
                if time.monotonic() > deadline:
                    raise RuntimeError("the looping tenant never started on every node")
                time.sleep(0.005)
            t0 = asyncio.run(publish(data))
            for t in threads:
                t.join(timeout=60)
            for _, code in done:
                codes[code] = codes.get(code, 0) + 1
            out.append((max(stamp for stamp, _ in done) - t0) * 1000)
    return out, codes


def main() -> None:
    if nats_server_binary() is None:
        sys.exit("nats-server is not installed (tools/system_deps.py installs it)")
    quick = "--quick" in sys.argv
    n_rr, n_rev = (200, 20) if quick else (2000, 100)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = NatsServer(root / "nats").start()
        try:
            floor = request_reply_ms(server.url, n_rr)
            floor_p50 = statistics.median(floor)
            show("(1) nats-py request/reply round trip (floor)", floor)
            workspaces, maint, ctx0 = make_workspaces(root / "single", 3)
            docs = signed_lists(ctx0, maint.private_path, n_rev)
            total, apply = propagation_ms(server.url, workspaces, docs)
            show("(2) revocation publish -> applied on 3 nodes", total, floor_p50)
            show("    of which one node's verify + apply + audit", apply)
            work_throughput(root, server.url, (1, 2, 3), 200 if quick else 1000)
            interrupted, codes = interrupt_ms(root / "interrupt", server.url, 5 if quick else 20)
            show(
                "(5) revocation publish -> in-flight runs stopped on 3 nodes",
                interrupted,
                floor_p50,
            )
            print(f"    outcomes: {codes}")
        finally:
            server.stop()
        if "--cluster" in sys.argv:
            cluster = make_cluster(root / "cluster")
            try:
                workspaces, maint, ctx0 = make_workspaces(root / "clustered", 3)
                docs = signed_lists(ctx0, maint.private_path, n_rev)
                total, apply = propagation_ms(cluster.url_list, workspaces, docs)
                show("(3) same, three-server cluster (3 replicas)", total, floor_p50)
                show("    of which one node's verify + apply + audit", apply)
            finally:
                cluster.stop()


if __name__ == "__main__":
    main()
