"""Work across nodes, as an operator runs it: real ``nats-server`` processes, real ``nightcore
node --mesh`` processes (each with its own workspace holding the same signed tenants and
trusting the same keys), and the CLI (``mesh queue``, ``mesh submit``, ``mesh runs``).

Exactly once is checked twice: on the results stream (one result per submitted request id) and
in the nodes' own audit logs (one ``mesh_work_result`` with ``recorded: true`` per request id,
across all nodes). Readiness is always a condition polled with a deadline, never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nightcore import app
from nightcore.canonical import canonical
from nightcore.mesh.work import WorkResult
from nightcore.mesh.workqueue import open_requests
from nightcore.trust.keys import GeneratedKey
from tests.conftest import HELLO_WAT, run_cli_subprocess, simple_manifest, wat_module, write_tenant
from tests.mesh.servers import NatsCluster, NatsServer

START_TIMEOUT_S = 120.0
WAIT_S = 180.0
ACK_WAIT_S = "2"  # short for tests: a SIGKILLed node's requests come back after 2 s

# ~3M loop iterations: a run of a few tens of milliseconds, so a node always holds unacked
# requests while the queue is not empty (the SIGKILL test needs some in flight).
SPIN_WAT = """
(module
  (func (export "_start") (local $i i32)
    (local.set $i (i32.const 3000000))
    (loop $l
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (local.get $i)))))
"""


# -- workspaces and nodes ---------------------------------------------------------------------
def make_workspaces(
    root: Path, keys: dict[str, GeneratedKey], n: int, tenants: dict[str, str]
) -> list[Path]:
    """``n`` workspaces trusting the same publisher and maintainer keys, each holding the same
    signed tenants (signed once, the package copied: what AUFS or an operator deploys)."""
    out = []
    for i in range(n):
        ws = app.init_workspace(root / f"ws{i + 1}")
        app.trust_add_key(ws, keys["alice"].public_path, scope="*")
        app.trust_add_key(ws, keys["maint"].public_path, scope="*", role="maintainer")
        out.append(ws.root)
    for name, wat in tenants.items():
        d = write_tenant(out[0], name, simple_manifest(name), wat_module(wat))
        app.sign_tenant(d, str(keys["alice"].private_path))
        for ws_root in out[1:]:
            shutil.copytree(d, ws_root / "modules" / name)
    return out


class MeshNode:
    """``nightcore node --mesh ...`` in its own process; its log in a file."""

    def __init__(
        self, ws: Path, name: str, urls: str, workers: int = 2, extra: tuple[str, ...] = ()
    ) -> None:
        self.ws, self.name, self.urls, self.workers, self.extra = ws, name, urls, workers, extra
        self.log_path = ws.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "nightcore", "-w", str(self.ws), "node"),
                    *("--workers", str(self.workers), "--mesh", self.urls),
                    *("--node-name", self.name),
                    *self.extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=dict(os.environ),
            )
        self.await_log("caught up", count=self.log().count("caught up") + 1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def await_log(self, needle: str, count: int = 1) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.log().count(needle) >= count:
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.name} exited: {self.log()[-3000:]}")
            time.sleep(0.05)  # polling a condition with a deadline
        raise AssertionError(f"node {self.name} never logged {needle!r}: {self.log()[-3000:]}")

    def audit(self) -> list[dict[str, Any]]:
        text = (self.ws / "state" / "audit" / "audit.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r["data"] for r in self.audit() if r["event"] == event]

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=START_TIMEOUT_S)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=60)


@pytest.fixture
def nodes() -> Iterator[list[MeshNode]]:
    started: list[MeshNode] = []
    yield started
    for n in started:
        if n.proc is not None and n.proc.poll() is None:
            n.kill()


# -- the CLI ----------------------------------------------------------------------------------
def mesh(urls: str, *args: str, ws: Path | None = None) -> Any:
    pre = ("-w", str(ws)) if ws is not None else ()
    r = run_cli_subprocess(*pre, "mesh", *args, "--mesh", urls, "--json", timeout=300)
    assert r.code == 0, (r.out, r.err)
    assert "Traceback" not in r.err
    return r.json()


def wait_for(condition: Any, what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)  # polling a condition with a deadline
    raise AssertionError(f"timed out waiting for {what}")


def results_by_request(urls: str, limit: int = 100_000) -> dict[str, list[dict[str, Any]]]:
    rows = mesh(urls, "runs", "--limit", str(limit))["rows"]
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["request_id"], []).append(row)
    return out


def results_at_least(urls: str, n: int) -> dict[str, list[dict[str, Any]]]:
    """Poll ``mesh runs`` until it shows results for ``n`` requests."""

    def enough() -> dict[str, list[dict[str, Any]]] | None:
        r = results_by_request(urls)
        return r if len(r) >= n else None

    found: dict[str, list[dict[str, Any]]] = wait_for(enough, f"{n} results")
    return found


def recorded_in_audit(all_nodes: list[MeshNode]) -> Counter[str]:
    """Request id -> how many nodes' audit logs record its outcome as the recorded one."""
    c: Counter[str] = Counter()
    for n in all_nodes:
        for d in n.events("mesh_work_result") + n.events("mesh_work_refused"):
            if d["recorded"]:
                c[d["request_id"]] += 1
    return c


def queue_empty(urls: str, *args: str) -> bool:
    q = mesh(urls, "queue", *args)
    return bool(q["waiting"] == 0 and q["in_flight"] == 0)


# -- tests --------------------------------------------------------------------------------------
def test_300_runs_exactly_once_across_three_nodes_with_one_sigkilled(
    tmp_path: Path,
    keys_dir: dict[str, GeneratedKey],
    nats_cluster: NatsCluster,
    nodes: list[MeshNode],
) -> None:
    urls = nats_cluster.url_list
    wss = make_workspaces(tmp_path, keys_dir, 3, {"spin": SPIN_WAT})
    q = mesh(urls, "queue", "--ack-wait", ACK_WAIT_S, "--max-deliver", "5")
    assert q["ack_wait_s"] == float(ACK_WAIT_S) and q["max_deliver"] == 5
    nodes += [MeshNode(ws, f"n{i + 1}", urls) for i, ws in enumerate(wss)]
    victim = nodes[2]

    submitted = mesh(urls, "submit", "spin", "--count", "300")["request_ids"]
    assert len(set(submitted)) == 300

    # Midway (100 results in), SIGKILL n3 while it holds a request it started, not finished.
    results_at_least(urls, 100)
    wait_for(lambda: open_requests(_lines(victim.ws)), "n3 to be running a request")
    victim.kill()
    orphans = open_requests(_lines(victim.ws))
    done = len(results_by_request(urls))
    print(f"n3 killed with {len(orphans)} request(s) in flight, {done} results in")  # -s
    assert orphans, "n3 was killed with no request in flight"

    results = results_at_least(urls, 300)
    assert set(results) == set(submitted)
    assert all(len(rows) == 1 for rows in results.values())  # one result (one run) each
    assert {rows[0]["code"] for rows in results.values()} == {"OK"}
    assert wait_for(lambda: queue_empty(urls), "an empty queue")

    # The requests n3 died with were redelivered and recorded by the others — except any n3
    # had published in the instant before the kill (its log lacks only the closing line).
    rerun = {rid for rid in orphans if results[rid][0]["node"] != "n3"}
    assert rerun, "no request of n3 was redelivered"
    assert all(results[rid][0]["node"] in ("n1", "n2") for rid in rerun)

    # n3 restarts: it closes what it left open from the results stream, before new work.
    victim.start()
    wait_for(lambda: not open_requests(_lines(victim.ws)), "n3 to close its open requests")
    for n in nodes:
        assert n.stop() == 0, n.log()[-3000:]

    # Every node's audit log: each submitted request recorded exactly once across the nodes.
    recorded = recorded_in_audit(nodes)
    assert set(recorded) == set(submitted)
    assert max(recorded.values()) == 1
    by_node = Counter(results[rid][0]["node"] for rid in submitted)
    assert set(by_node) <= {"n1", "n2", "n3"} and by_node["n1"] and by_node["n2"]
    redelivered = [
        d
        for n in nodes[:2]
        for d in n.events("mesh_work_result")
        if d["recorded"] and d["request_id"] in orphans
    ]
    assert {d["request_id"] for d in redelivered} == rerun
    assert all(d["delivery"] >= 2 for d in redelivered)
    # Nothing that already had a result ran again: only the requests n3 died with ran twice.
    starts = Counter(d["request_id"] for n in nodes for d in n.events("mesh_work_start"))
    assert set(starts) == set(submitted)
    assert {rid for rid, k in starts.items() if k > 1} == rerun
    assert all(starts[rid] == 2 for rid in rerun)
    # n3's closing lines, from the results stream (every orphan has its result by then):
    # recorded by n3 itself (published just before the kill) or by the node that re-ran it.
    recovered = {
        d["request_id"]: d for d in victim.events("mesh_work_result") if d.get("recovered")
    }
    assert set(recovered) == set(orphans)
    assert {rid for rid, d in recovered.items() if d["recorded"]} == set(orphans) - rerun
    assert {rid for rid, d in recovered.items() if d["recorded_by"] != "n3"} == rerun
    # Each run in the results is one this node's own log recorded (the result's run id).
    for n in nodes:
        outcomes = {r["data"]["run_id"] for r in n.audit() if r["event"] == "run_outcome"}
        mine = [rows[0]["run_id"] for rows in results.values() if rows[0]["node"] == n.name]
        assert set(mine) <= outcomes
    r = run_cli_subprocess("-w", str(victim.ws), "audit", "verify")
    assert r.code == 0, r.out + r.err


def _lines(ws: Path) -> list[bytes]:
    path = ws / "state" / "audit" / "audit.jsonl"
    return path.read_bytes().splitlines() if path.exists() else []


async def _publish_raw(
    url: str, items: list[tuple[bytes, str | None]], subject: str = "nightcore.work.req"
) -> None:
    """What a client with publish rights on the work subject can put there (hostile input)."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for data, msg_id in items:
            headers = {"Nats-Msg-Id": msg_id} if msg_id else None
            await js.publish(subject, data, headers=headers)
    finally:
        await nc.close()


def test_malformed_oversized_and_tampered_requests_get_their_codes_and_cordon_stops_pulling(
    tmp_path: Path,
    keys_dir: dict[str, GeneratedKey],
    nats_server: NatsServer,
    nodes: list[MeshNode],
) -> None:
    url = nats_server.url
    ws_a, ws_b = make_workspaces(tmp_path, keys_dir, 2, {"hello": HELLO_WAT})
    # On node b only, hello's module is tampered after signing: it must refuse to run it.
    wasm = ws_b / "modules" / "hello" / "module.wasm"
    wasm.write_bytes(wasm.read_bytes() + b"\x00")
    mesh(url, "queue", "--ack-wait", ACK_WAIT_S)
    nodes += [MeshNode(ws_a, "a", url), MeshNode(ws_b, "b", url)]
    a, b = nodes
    maint = str(keys_dir["maint"].private_path)

    # Node a cordoned (a signed broadcast): from then on it takes no work.
    mesh(url, "cordon", "--node", "a", "--key", maint, "--reason", "maintenance", ws=ws_a)
    wait_for(lambda: _cordoned(ws_a), "node a to apply its cordon")
    taken_before = len(a.events("mesh_work_start"))
    ids = mesh(url, "submit", "hello", "--count", "10")["request_ids"]

    good = canonical(
        {
            "schema": 1,
            "request_id": "feedfacefeedface0001",
            "tenants": ["hello"],
            "submitted_at": "x",
        }
    )
    hostile = [
        (b"{not json", "badjson000000001"),
        (b'{"pad": "' + b"x" * 20_000 + b'"}', "toolarge00000001"),
        (good.replace(b'"hello"', b'"../etc"').replace(b"0001", b"0002"), None),
        (good.replace(b"0001", b"0003"), "another-id-000003"),  # header != request id
    ]
    asyncio.run(_publish_raw(url, hostile))
    # A request that already has a result (as a redelivery after its node published and died
    # before acking would be) is acked without running.
    done = "feedfacefeedface0009"
    ghost = WorkResult(done, "ghost", "", "OK", finished_at="x").encode()
    asyncio.run(_publish_raw(url, [(ghost, done)], f"nightcore.results.{done}"))
    asyncio.run(_publish_raw(url, [(good.replace(b"0001", b"0009"), done)]))

    results = results_at_least(url, 15)
    assert results[done][0]["node"] == "ghost"
    wait_for(lambda: b.events("mesh_work_skipped"), "b to skip the request already done")
    assert [d["recorded_by"] for d in b.events("mesh_work_skipped")] == ["ghost"]
    assert done not in {d["request_id"] for d in b.events("mesh_work_start")}
    for rid in ids:  # every hello request: run by b, refused by b's verification
        (row,) = results[rid]
        assert (row["node"], row["code"], row["run_id"]) == ("b", "DIGEST_MISMATCH", None)
    assert results["badjson000000001"][0]["code"] == "MESH_WORK_REQUEST_INVALID"
    assert results["toolarge00000001"][0]["code"] == "MESH_WORK_REQUEST_TOO_LARGE"
    assert results["another-id-000003"][0]["code"] == "MESH_WORK_REQUEST_INVALID"
    no_id = [rows[0] for rid, rows in results.items() if rid.startswith("seq-")]
    assert [r["code"] for r in no_id] == ["TENANT_NAME_INVALID"]
    assert len(a.events("mesh_work_start")) == taken_before  # a cordoned node took nothing
    refused = {d["request_id"]: d["code"] for d in b.events("mesh_work_refused")}
    assert refused["badjson000000001"] == "MESH_WORK_REQUEST_INVALID"
    assert refused["toolarge00000001"] == "MESH_WORK_REQUEST_TOO_LARGE"
    assert wait_for(lambda: queue_empty(url), "terminated requests to leave the queue")

    # Now a is uncordoned and b cordoned: the same tenant runs on a, verified, attested.
    mesh(url, "uncordon", "--node", "a", "--key", maint, ws=ws_a)
    mesh(url, "cordon", "--node", "b", "--key", maint, "--reason", "tampered", ws=ws_a)
    wait_for(lambda: _cordoned(ws_b) and not _cordoned(ws_a), "the cordons to swap")
    ids2 = mesh(url, "submit", "hello", "--count", "5")["request_ids"]
    results = results_at_least(url, 20)
    for rid in ids2:
        (row,) = results[rid]
        assert (row["node"], row["code"], row["exit_code"]) == ("a", "OK", 0)
    # The result carries the run's attestation, signed by node a's key.
    _check_attestation(url, ids2[0], ws_a)
    # `mesh status` shows the queue's depth (its work_queue section) and each node's work.
    status = mesh(url, "status")
    assert status["work_queue"]["exists"] and status["work_queue"]["waiting"] == 0
    assert {n["node"]: "work" in n for n in status["nodes"]} == {"a": True, "b": True}
    for n in nodes:
        assert n.stop() == 0
    assert recorded_in_audit(nodes) == Counter({rid: 1 for rid in results if rid != done})


def _cordoned(ws: Path) -> bool:
    path = ws / "state" / "mesh" / "trust.json"
    if not path.exists():
        return False
    return bool(json.loads(path.read_text()).get("node_cordon", {}).get("cordoned"))


def _check_attestation(url: str, rid: str, ws: Path) -> None:
    from nightcore.evidence.attestation import open_attestation
    from nightcore.mesh.work import parse_result
    from nightcore.trust.pubkey import PublicKey

    async def fetch() -> bytes:
        import nats

        nc = await nats.connect(url)
        try:
            raw = await nc.jetstream().get_last_msg("nightcore-results", f"nightcore.results.{rid}")
            return bytes(raw.data or b"")
        finally:
            await nc.close()

    result = parse_result(asyncio.run(fetch()))
    (att,) = result["attestations"]
    assert att["run_id"] == result["runs"][0]["run_id"]
    node_key = PublicKey.from_pem((ws / "node.pub.pem").read_bytes())
    statement = open_attestation(json.dumps(att["envelope"]).encode(), node_key)
    assert statement["predicate"]["run_id"] == att["run_id"]


def test_a_node_with_only_the_documented_permissions_takes_work(
    tmp_path: Path, keys_dir: dict[str, GeneratedKey], nodes: list[MeshNode]
) -> None:
    from tests.mesh.test_permissions import _creds, _doc_authorization

    server = NatsServer(tmp_path / "nats", extra_conf=_doc_authorization()).start()
    try:
        ops = _creds(tmp_path / "ops.creds", "ops:ops-pw")
        edge = _creds(tmp_path / "edge.creds", "edge-1:edge-pw")
        (ws,) = make_workspaces(tmp_path, keys_dir, 1, {"hello": HELLO_WAT})
        created = mesh(server.url, "init", "--mesh-creds", ops, ws=ws)["created_or_present"]
        assert "nightcore-work" in created and "nightcore-results" in created
        nodes.append(MeshNode(ws, "edge-1", server.url, extra=("--mesh-creds", edge)))
        out = mesh(
            server.url, "submit", "hello", "--count", "3", "--wait", "120", "--mesh-creds", ops
        )
        assert out["results"] == {"done": 3, "pending": [], "codes": {"OK": 3}}
        rows = mesh(server.url, "runs", "--mesh-creds", ops)["rows"]
        assert {(r["node"], r["code"]) for r in rows} == {("edge-1", "OK")}
        assert wait_for(lambda: queue_empty(server.url, "--mesh-creds", ops), "acks")
        assert nodes[0].stop() == 0
        warnings = [line for line in nodes[0].log().splitlines() if "warning[" in line]
        assert not [w for w in warnings if "service work" in w or "work request" in w], warnings
    finally:
        server.stop()


def test_tenant_packages_from_the_object_store_are_verified_before_install(
    tmp_path: Path,
    keys_dir: dict[str, GeneratedKey],
    nats_server: NatsServer,
    nodes: list[MeshNode],
) -> None:
    url = nats_server.url
    (ws,) = make_workspaces(tmp_path, keys_dir, 1, {})  # the node has no tenant of its own
    pub = tmp_path / "publisher"
    good = write_tenant(pub, "hello", simple_manifest("hello"), wat_module(HELLO_WAT))
    app.sign_tenant(good, str(keys_dir["alice"].private_path))
    tampered = tmp_path / "tampered" / "hello"
    shutil.copytree(good, tampered)
    (tampered / "module.wasm").write_bytes((good / "module.wasm").read_bytes() + b"\x00")
    nodes.append(MeshNode(ws, "p", url))
    node = nodes[0]
    installed = ws / "modules" / "hello" / "module.wasm"

    def run_once() -> dict[str, Any]:
        out = mesh(url, "submit", "hello", "--wait", "120")
        (rid,) = out["request_ids"]
        (row,) = results_by_request(url)[rid]
        return row

    assert run_once()["code"] == "TENANT_NOT_FOUND"  # nothing deployed, nothing published

    published = mesh(url, "publish-tenant", str(good))
    assert published["tenant"] == "hello" and published["store"] == "nightcore-packages"
    row = run_once()
    assert (row["code"], row["exit_code"]) == ("OK", 0)
    assert installed.read_bytes() == (good / "module.wasm").read_bytes()

    # A tampered package on the bus: refused with the verifier's code, the node's copy kept.
    mesh(url, "publish-tenant", str(tampered))
    assert run_once()["code"] == "DIGEST_MISMATCH"
    assert installed.read_bytes() == (good / "module.wasm").read_bytes()
    # Not a package object at all (written by anyone with object-store rights).
    asyncio.run(_put_object(url, "hello", b'{"schema": 1, "tenant": "other", "files": {}}'))
    assert run_once()["code"] == "MESH_PACKAGE_INVALID"
    assert installed.read_bytes() == (good / "module.wasm").read_bytes()

    mesh(url, "publish-tenant", str(good))
    assert run_once()["code"] == "OK"
    assert node.stop() == 0
    events = [
        (r["event"], r["data"]["code"])
        for r in node.audit()
        if r["event"].startswith("mesh_package_")
    ]
    assert events == [
        ("mesh_package_installed", "OK"),
        ("mesh_package_refused", "DIGEST_MISMATCH"),
        ("mesh_package_refused", "MESH_PACKAGE_INVALID"),
        ("mesh_package_installed", "OK"),
    ]
    assert not list((ws / "state" / "mesh" / "staging").iterdir())  # nothing left staged


async def _put_object(url: str, name: str, data: bytes) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        store = await nc.jetstream().object_store("nightcore-packages")
        await store.put(name, data)
    finally:
        await nc.close()


def test_the_results_stream_records_one_result_per_request(nats_server: NatsServer) -> None:
    """The idempotency record itself: a second node's result for a request is refused by the
    server (not only inside the dedup window) and reported as not recorded; the first node's
    retry of its own result is reported as recorded."""
    from nightcore.mesh.config import MeshConfig
    from nightcore.mesh.workqueue import ensure_queue, lookup_result, publish_result

    config = MeshConfig(servers=(nats_server.url,), node_name="t")
    rid = "0123456789abcdef0123"

    def result(node: str, run_id: str) -> WorkResult:
        run = {"tenant": "hello", "code": "OK", "run_id": run_id}
        return WorkResult(rid, node, "", "OK", runs=[run], finished_at="x")

    async def go() -> list[Any]:
        import nats

        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            await ensure_queue(js, config.names, 1)
            assert await lookup_result(js, config.names, rid) is None
            first = await publish_result(js, config.names, result("a", "r1"))
            again = await publish_result(js, config.names, result("a", "r1"))
            other = await publish_result(js, config.names, result("b", "r2"))
            found = await lookup_result(js, config.names, rid)
            # Past the dedup window (another msg id): the server itself refuses a second one.
            from nats.js.errors import APIError

            try:
                await js.publish(
                    config.names.results_subject(rid),
                    result("c", "r3").encode(),
                    headers={"Nats-Msg-Id": "another-msg-id"},
                )
                refused = None
            except APIError as exc:
                refused = exc.err_code
            return [first, again, other, found, refused]
        finally:
            await nc.close()

    first, again, other, found, refused = asyncio.run(go())
    assert refused == 10077  # "maximum messages per subject exceeded"
    assert first[0] is True and first[2] == "a"
    assert again == (True, first[1], "a")
    assert other == (False, first[1], "a")
    assert found is not None and found["node"] == "a" and found["runs"][0]["run_id"] == "r1"
