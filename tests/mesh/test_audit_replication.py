"""Audit replication through Night Mesh: a real ``nightcore node --mesh`` process publishes its
audit lines and checkpoints to the JetStream audit stream on a real ``nats-server`` (JetStream
domain ``hub``); a second region (its own domain ``west``, joined as a leafnode) holds a mirror
stream; ``nightcore audit verify --source nats://...`` rebuilds the log from either stream and
holds it to the node's own signed checkpoints.

Waiting is polling a condition with a deadline (the stream holding every local line), never a
sleep for readiness.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nightcore.canonical import canonical
from nightcore.trust.keys import GeneratedKey
from tests.conftest import Env
from tests.mesh.servers import NatsCluster, NatsServer
from tests.node.test_node import NodeProcess

WAIT_S = 90.0
PREFIX = "nightcore"
NODE = "n1"
STREAM = f"{PREFIX}-audit"
MIRROR = f"{PREFIX}-audit-west"
LINE_SUBJECT = f"{PREFIX}.audit.{NODE}.line"
CP_SUBJECT = f"{PREFIX}.audit.{NODE}.checkpoint"


def _local_lines(env: Env) -> list[bytes]:
    return (env.ws / "state/audit/audit.jsonl").read_bytes().splitlines(keepends=True)


def _js_call(url: str, fn: Any, domain: str | None = None) -> Any:
    """Run ``await fn(js)`` on a fresh nats-py connection (the test's own view of the server)."""
    import nats

    async def main() -> Any:
        nc = await nats.connect(url, max_reconnect_attempts=0, connect_timeout=5)
        try:
            js = nc.jetstream(domain=domain) if domain else nc.jetstream()
            return await fn(js)
        finally:
            await nc.close()

    return asyncio.run(main())


def _counts(url: str, stream: str, domain: str | None = None) -> tuple[int, int]:
    """(line messages, checkpoint messages) of node NODE in ``stream`` ((-1, -1): no stream;
    (-2, -2): no answer now, e.g. a cluster electing the stream's new leader: poll again)."""
    import nats.errors
    from nats.js.errors import APIError, NotFoundError

    async def count(js: Any) -> tuple[int, int]:
        try:
            info = await js.stream_info(stream, subjects_filter=f"{PREFIX}.audit.{NODE}.>")
        except NotFoundError:
            return -1, -1
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, APIError):
            return -2, -2
        subjects = info.state.subjects or {}
        return int(subjects.get(LINE_SUBJECT, 0)), int(subjects.get(CP_SUBJECT, 0))

    got: tuple[int, int] = _js_call(url, count, domain)
    return got


def _line_count(url: str, stream: str, domain: str | None = None) -> int:
    return _counts(url, stream, domain)[0]


def _local_checkpoints(env: Env) -> int:
    return len(list((env.ws / "state/audit/checkpoints").glob("*.note")))


def _wait_replicated(env: Env, url: str, stream: str, domain: str | None = None) -> int:
    """Until ``stream`` holds exactly the node's lines and checkpoints; the number of lines."""
    deadline = time.monotonic() + WAIT_S
    seen = (-1, -1)
    while time.monotonic() < deadline:
        local = (len(_local_lines(env)), _local_checkpoints(env))
        seen = _counts(url, stream, domain)
        if seen == local:
            return local[0]
        time.sleep(0.05)  # polling a condition with a deadline
    info = _js_call(url, lambda js: js.stream_info(stream), domain)
    raise AssertionError(
        f"{stream} holds {seen} (lines, checkpoints), the node {local}: {info.state} {info.mirror}"
    )


def _verify(env: Env, url: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    from tests.e2e.test_json_schemas import check

    res = env.cli("audit", "verify", "--source", url, "--json", *extra)
    report = dict(check("audit-verify", res.json())) if res.out.strip() else {}
    return res.code, report, res.err


@pytest.fixture
def mesh_node(env: Env, nats_server: NatsServer) -> Iterator[NodeProcess]:
    env.add_tenant("hello")
    node = NodeProcess(env.ws, workers=1, extra=("--mesh", nats_server.url, "--node-name", NODE))
    node._await_line("caught up")
    yield node
    if node.proc.poll() is None:
        node.stop()


def _run(env: Env, times: int = 1) -> None:
    for _ in range(times):
        res = env.cli("run")
        assert res.code == 0, (res.out, res.err)


def _region_mirror(env: Env, region: NatsServer) -> dict[str, Any]:
    res = env.cli(
        "audit", "mirror", "region", region.url, "--domain", "west", "--source-domain", "hub",
        "--json",
    )  # fmt: skip
    assert res.code == 0, res.err
    return dict(res.json())


def test_second_region_holds_every_line_and_verifies_against_the_node(
    env: Env, nats_server: NatsServer, region_west: NatsServer, mesh_node: NodeProcess
) -> None:
    _run(env, 3)
    row = _region_mirror(env, region_west)
    assert row["stream"] == MIRROR and row["source_domain"] == "hub"
    lines = _wait_replicated(env, nats_server.url, STREAM)
    assert _wait_replicated(env, region_west.url, MIRROR) == lines

    for url in (nats_server.url, region_west.url):
        code, report, err = _verify(env, url, "--node", NODE)
        assert code == 0 and report["ok"], (url, report, err)
        assert report["entries"] == lines and report["checkpoints"] >= 3
        assert report["anchor"]["status"] == "consistent"
    # Addressed through the hub by the region's JetStream domain: the same mirror.
    code, report, _ = _verify(env, nats_server.url, "--node", NODE, "--domain", "west")
    assert code == 0 and report["entries"] == lines

    # `mesh status`: per node, lines logged (its heartbeat) vs lines the stream holds.
    deadline = time.monotonic() + WAIT_S
    while True:
        res = env.cli("mesh", "status", "--mesh", nats_server.url, "--json")
        assert res.code == 0, res.err
        audit = res.json()["audit"]
        row = audit["nodes"].get(NODE, {})
        if row.get("lag") == 0 and row.get("lines") == len(_local_lines(env)):
            break
        assert time.monotonic() < deadline, audit
        time.sleep(0.05)  # polling a condition with a deadline (heartbeats every 2 s)
    assert audit["exists"] and row["replicated"] == len(_local_lines(env))
    res = env.cli("mesh", "status", "--mesh", nats_server.url)
    assert res.code == 0 and "audit:" in res.err + res.out

    # The stream is append-only: the server itself refuses a delete.
    with pytest.raises(Exception, match=r"(?i)delete"):
        _js_call(region_west.url, lambda js: js.delete_msg(MIRROR, 2))


def _forged_after(last: bytes) -> bytes:
    """A line that extends ``last`` correctly (seq + 1, prev = its hash): it chains."""
    rec = json.loads(last)
    rec["seq"] += 1
    rec["prev"] = hashlib.sha256(last.rstrip(b"\n")).hexdigest()
    rec["event"] = "forged"
    rec["data"] = {"by": "someone with publish rights on the bus"}
    return canonical(rec) + b"\n"


def test_a_forged_line_on_the_stream_is_caught(
    env: Env, nats_server: NatsServer, region_west: NatsServer, mesh_node: NodeProcess
) -> None:
    """Someone with publish rights on the audit subjects (not the node's key) appends a line
    that chains correctly: it verifies on its own; the node's log says it never wrote it."""
    _run(env)
    _region_mirror(env, region_west)
    lines = _local_lines(env)
    _wait_replicated(env, region_west.url, MIRROR)
    forged = _forged_after(lines[-1])

    async def publish(js: Any, data: bytes, msg_id: str) -> None:
        await js.publish(LINE_SUBJECT, data, headers={"Nats-Msg-Id": msg_id})

    _js_call(nats_server.url, lambda js: publish(js, forged, "forged-1"))
    deadline = time.monotonic() + WAIT_S
    while _line_count(region_west.url, MIRROR) != len(lines) + 1:
        assert time.monotonic() < deadline, "the forged line never reached the mirror"
        time.sleep(0.05)  # polling a condition with a deadline
    for url in (nats_server.url, region_west.url):
        code, report, err = _verify(env, url, "--node", NODE)
        assert code == 1 and report["code"] == "MIRROR_AHEAD", (url, report)
        assert "error[MIRROR_AHEAD]" in err and report["anchor"]["status"] == "tampered"

    # The node writes its next line: now the forged one sits where the node's own line is.
    _run(env)
    _wait_until(lambda: _line_count(nats_server.url, STREAM) == len(_local_lines(env)) + 1)
    code, report, _ = _verify(env, nats_server.url, "--node", NODE)
    assert code == 1 and report["code"] in ("AUDIT_SEQ_GAP", "AUDIT_CHAIN_BROKEN"), report

    # A forged line that does not chain is caught by the log's own rules.
    broken = json.loads(lines[1])
    broken["data"] = {"rewritten": True}
    _js_call(nats_server.url, lambda js: publish(js, canonical(broken) + b"\n", "forged-2"))
    code, report, _ = _verify(env, nats_server.url, "--node", NODE)
    assert code == 1 and report["code"] in ("AUDIT_SEQ_GAP", "AUDIT_CHAIN_BROKEN"), report


def _wait_until(condition: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)  # polling a condition with a deadline


def test_a_deleted_message_is_refused_or_caught(
    env: Env, nats_server: NatsServer, region_west: NatsServer, mesh_node: NodeProcess
) -> None:
    """The audit stream and its mirror are created with deny_delete (nats-server refuses to lift
    it). Someone with stream-admin rights in the region can still re-create the mirror without
    it and delete from it: the stream's own record of deleted messages convicts it."""
    from nats.js.errors import APIError

    _run(env, 2)
    _region_mirror(env, region_west)
    lines = _wait_replicated(env, region_west.url, MIRROR)
    for url, stream in ((nats_server.url, STREAM), (region_west.url, MIRROR)):
        with pytest.raises(APIError):
            _js_call(url, lambda js, stream=stream: js.delete_msg(stream, 2))

        async def lift(js: Any, stream: str = stream) -> None:
            info = await js.stream_info(stream)
            await js.update_stream(info.config.evolve(deny_delete=False))

        with pytest.raises(APIError, match="deny message deletes"):
            _js_call(url, lift)

    async def recreate(js: Any) -> None:
        info = await js.stream_info(MIRROR)
        await js.delete_stream(MIRROR)
        await js.add_stream(info.config.evolve(deny_delete=False))

    _js_call(region_west.url, recreate)
    _wait_replicated(env, region_west.url, MIRROR)

    async def delete_last_line(js: Any) -> None:
        last = await js.get_last_msg(MIRROR, LINE_SUBJECT)
        await js.delete_msg(MIRROR, last.seq)

    _js_call(region_west.url, delete_last_line)
    code, report, err = _verify(env, region_west.url, "--node", NODE)
    assert code == 1 and report["code"] == "MIRROR_TRUNCATED", report
    assert report["entries"] == lines - 1 and "tampering" in err

    async def delete_a_middle_line(js: Any) -> None:
        msg = await js.get_msg(MIRROR, 5)
        await js.delete_msg(MIRROR, msg.seq)

    _js_call(region_west.url, delete_a_middle_line)
    code, report, _ = _verify(env, region_west.url, "--node", NODE)
    assert code == 1 and report["code"] == "AUDIT_SEQ_GAP", report


def test_second_region_offline_then_back_catches_up(
    env: Env, nats_server: NatsServer, region_west: NatsServer, mesh_node: NodeProcess
) -> None:
    _run(env)
    _region_mirror(env, region_west)
    _wait_replicated(env, region_west.url, MIRROR)
    assert region_west.stop() == 0  # the second region goes away
    _run(env, 2)  # the node keeps working and replicating to the hub
    lines = _wait_replicated(env, nats_server.url, STREAM)
    code, report, _ = _verify(env, nats_server.url, "--node", NODE)
    assert code == 0 and report["entries"] == lines
    region_west.restart()  # same ports, same store: it rejoins the hub and resumes the mirror
    assert _wait_replicated(env, region_west.url, MIRROR) == lines
    code, report, err = _verify(env, region_west.url, "--node", NODE)
    assert code == 0 and report["entries"] == lines, (report, err)


def test_node_restart_neither_duplicates_nor_loses_lines(
    env: Env, nats_server: NatsServer, mesh_node: NodeProcess
) -> None:
    _run(env, 2)
    _wait_replicated(env, nats_server.url, STREAM)
    mesh_node.stop()
    # The node's last lines (node_stop, its final checkpoint) were sent at its stop.
    assert _counts(nats_server.url, STREAM) == (len(_local_lines(env)), _local_checkpoints(env))
    _run(env)  # in-process while the node is down: lines the stream has not seen
    assert _line_count(nats_server.url, STREAM) < len(_local_lines(env))
    node = NodeProcess(env.ws, workers=1, extra=("--mesh", nats_server.url, "--node-name", NODE))
    try:
        node._await_line("caught up")
        _run(env)
        _wait_replicated(env, nats_server.url, STREAM)
    finally:
        node.stop()
    lines = _wait_replicated(env, nats_server.url, STREAM)  # exactly: none twice, none lost
    code, report, err = _verify(env, nats_server.url, "--node", NODE)
    assert code == 0 and report["entries"] == lines, (report, err)
    assert report["anchor"]["status"] == "consistent"
    assert not any("twice" in w for w in report["warnings"])

    # SIGKILLed after publishing but before saving its cursor: the stream, not the cursor, says
    # where to resume (and the msg-id drops a re-publication inside the window anyway).
    cursor = env.ws / f"state/audit/mirrors/mesh-{PREFIX}.json"
    saved = json.loads(cursor.read_text())
    saved.update(lines=1, offset=len(_local_lines(env)[0]))
    cursor.write_text(json.dumps(saved))
    node = NodeProcess(env.ws, workers=1, extra=("--mesh", nats_server.url, "--node-name", NODE))
    try:
        node._await_line("caught up")
        _run(env)
        _wait_replicated(env, nats_server.url, STREAM)
    finally:
        node.kill()  # SIGKILL: no flush at stop
    assert _line_count(nats_server.url, STREAM) <= len(_local_lines(env))
    node = NodeProcess(env.ws, workers=1, extra=("--mesh", nats_server.url, "--node-name", NODE))
    try:
        node._await_line("caught up")
        lines = _wait_replicated(env, nats_server.url, STREAM)
    finally:
        node.stop()
    lines = _wait_replicated(env, nats_server.url, STREAM)
    code, report, err = _verify(env, nats_server.url, "--node", NODE)
    assert code == 0 and report["entries"] == lines, (report, err)
    assert not any("twice" in w for w in report["warnings"])


def test_verify_from_a_stream_that_does_not_exist_or_cannot_be_reached(
    env: Env, nats_server: NatsServer, tmp_path: Path
) -> None:
    res = env.cli("audit", "verify", "--source", nats_server.url, "--node", NODE)
    assert res.code == 2 and "error[MIRROR_NOT_FOUND]" in res.err
    from tests.mesh.servers import free_port

    res = env.cli("audit", "verify", "--source", f"nats://127.0.0.1:{free_port()}")
    assert res.code == 2 and "error[MESH_UNREACHABLE]" in res.err


def test_node_with_the_documented_permissions_replicates_only_its_own_log(
    tmp_path: Path, keys_dir: dict[str, GeneratedKey]
) -> None:
    """docs/mesh.md's authorization block in a real server: edge-1 replicates its audit log
    with only those rights, and cannot publish on another node's audit subject."""
    import nats
    import nats.errors

    from tests.conftest import run_cli_subprocess
    from tests.mesh.nodes import MeshNode, make_workspace
    from tests.mesh.test_permissions import _creds, _doc_authorization

    server = NatsServer(tmp_path / "nats", extra_conf=_doc_authorization()).start()
    node: MeshNode | None = None
    try:
        ops = _creds(tmp_path / "ops.creds", "ops:ops-pw")
        edge = _creds(tmp_path / "edge.creds", "edge-1:edge-pw")
        operator = make_workspace(tmp_path / "operator", keys_dir)
        res = run_cli_subprocess("-w", str(operator), "mesh", "init", "--mesh", server.url,
                                 "--mesh-creds", ops)  # fmt: skip
        assert res.code == 0 and STREAM in res.err + res.out, res.err
        ws = make_workspace(tmp_path / "edge", keys_dir)
        node = MeshNode(ws, server.url, "edge-1", extra=("--mesh-creds", edge))
        node.wait_caught_up()
        assert node.run_codes("hello") == ["OK"]
        lines = len((ws / "state/audit/audit.jsonl").read_bytes().splitlines())
        deadline = time.monotonic() + WAIT_S
        while True:
            res = run_cli_subprocess(
                *("-w", str(ws), "audit", "verify", "--source", server.url),
                *("--node", "edge-1", "--mesh-creds", ops, "--json"),
            )
            report = json.loads(res.out) if res.out.strip() else {}
            if res.code == 0 and report["entries"] >= lines:
                break
            assert time.monotonic() < deadline, (res.out, res.err)
            time.sleep(0.1)  # polling a condition with a deadline
        assert report["anchor"]["status"] == "consistent"
        assert "Permissions Violation" not in "".join(node.log)
    finally:
        if node is not None:
            node.kill()

    async def attempt() -> list[str]:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(
            server.url,
            user="edge-1",
            password="edge-pw",
            error_cb=on_error,
            inbox_prefix="_INBOX.nightcore.edge-1",
        )
        js = nc.jetstream(timeout=2)
        try:
            await js.publish(f"{PREFIX}.audit.edge-2.line", b"{}\n", timeout=2)
            errors.append("accepted")
        except (nats.errors.Error, TimeoutError) as exc:
            errors.append(f"refused {type(exc).__name__}")
        await nc.close()
        return errors

    try:
        results = asyncio.run(attempt())
        assert "accepted" not in results, results
        assert any("permissions violation" in r.lower() for r in results), results
    finally:
        server.stop()


def test_a_cluster_server_killed_and_restarted_loses_no_acknowledged_line(
    env: Env, nats_cluster: NatsCluster
) -> None:
    """Three servers, the audit stream with three replicas: its leader is SIGKILLed while the
    node keeps running tenants, then restarted on its store. Every line ends up in the stream
    exactly once and the stream verifies against the node."""
    env.add_tenant("hello")
    urls = nats_cluster.url_list
    node = NodeProcess(env.ws, workers=1, extra=("--mesh", urls, "--node-name", NODE))
    try:
        node._await_line("caught up")
        _run(env)
        _wait_replicated(env, nats_cluster.urls[0], STREAM)

        async def leader(js: Any) -> str:
            info = await js.stream_info(STREAM)
            assert info.config.num_replicas == 3
            return str(info.cluster.leader)

        name = _js_call(nats_cluster.urls[0], leader)
        victim = next(s for s in nats_cluster.servers if s.name == name)
        victim.kill()
        alive = next(s for s in nats_cluster.servers if s is not victim)
        _run(env, 2)  # runs never wait for replication
        _wait_replicated(env, alive.url, STREAM)
        victim.restart()
        _run(env)
        lines = _wait_replicated(env, victim.url, STREAM)  # the restarted one caught up too
    finally:
        node.stop()
    lines = _wait_replicated(env, alive.url, STREAM)
    code, report, err = _verify(env, urls, "--node", NODE)
    assert code == 0 and report["entries"] == lines, (report, err)
    assert report["anchor"]["status"] == "consistent"
