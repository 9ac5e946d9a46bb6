"""The signed trust broadcast against real nats-server processes and real ``nightcore node
--mesh`` processes, each node with a workspace of its own trusting the same maintainer key.

The bus is not trusted: unsigned, wrongly signed and replayed documents are published on it
directly (nats-py), and every node must refuse and audit each of them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nightcore.canonical import canonical
from nightcore.trust.envelope import sign_payload
from nightcore.trust.keys import GeneratedKey, load_signer
from tests.conftest import run_cli_subprocess
from tests.mesh.nodes import MeshNode, make_workspace, mesh_events
from tests.mesh.servers import NatsServer, make_cluster

PREFIX_SUBJECT_REV = "nightcore.trust.revocations"
PREFIX_SUBJECT_CHG = "nightcore.trust.changes"


@pytest.fixture
def workspaces(tmp_path: Path, keys_dir: dict[str, GeneratedKey]) -> list[Path]:
    return [make_workspace(tmp_path / f"ws{i}", keys_dir) for i in (1, 2)]


@pytest.fixture
def nodes(workspaces: list[Path], nats_server: NatsServer) -> Iterator[list[MeshNode]]:
    started = [MeshNode(ws, nats_server.url, f"n{i + 1}") for i, ws in enumerate(workspaces)]
    for n in started:
        n.wait_caught_up()
    yield started
    for n in started:
        n.kill()


def mesh_cli(ws: Path, url: str, *args: str) -> Any:
    res = run_cli_subprocess("-w", str(ws), "mesh", *args, "--mesh", url, "--json")
    assert res.code == 0, res.err
    assert "Traceback" not in res.err
    return res.json()


def publish_raw(url: str, subject: str, data: bytes) -> int:
    """Put bytes on the bus as an attacker with publish rights would: no signing involved."""
    import nats

    async def go() -> int:
        nc = await nats.connect(url)
        try:
            ack = await nc.jetstream().publish(subject, data, timeout=30)
            return int(ack.seq)
        finally:
            await nc.close()

    return asyncio.run(go())


def applied(node: MeshNode, seq: int) -> list[dict[str, Any]]:
    return node.wait_audit(
        lambda r: r["event"] == "mesh_trust_applied" and r["data"]["seq"] == seq,
        what=f"mesh_trust_applied seq {seq}",
    )


def refused(node: MeshNode, seq: int) -> dict[str, Any]:
    lines = node.wait_audit(
        lambda r: r["event"] == "mesh_trust_refused" and r["data"]["seq"] == seq,
        what=f"mesh_trust_refused seq {seq}",
    )
    data: dict[str, Any] = lines[0]["data"]
    return data


def test_revocation_reaches_every_node_and_their_next_runs_are_refused(
    nodes: list[MeshNode], nats_server: NatsServer, keys_dir: dict[str, GeneratedKey]
) -> None:
    for n in nodes:
        assert n.run_codes("hello") == ["OK"]
    # The operator publishes from a workspace of their own (it trusts the maintainer key too).
    out = mesh_cli(
        nodes[0].ws,
        nats_server.url,
        "revoke",
        "key",
        keys_dir["alice"].key_id,
        "--key",
        str(keys_dir["maint"].private_path),
        "--reason",
        "stolen laptop",
    )
    assert out["version"] == 1
    for n in nodes:
        line = applied(n, out["seq"])[0]["data"]
        assert line["kind"] == "revocations" and line["version"] == 1
        # Applied through the local operation: its own audit line, its own rollback mark.
        assert mesh_events(n.ws, "revocations_imported")[-1]["data"]["version"] == 1
        assert n.run_codes("hello") == ["KEY_REVOKED"]
    status = mesh_cli(nodes[0].ws, nats_server.url, "status")
    rows = {r["node"]: r for r in status["nodes"]}
    assert set(rows) == {"n1", "n2"}
    assert status["trust"]["revocations_version"] == 1
    # A node that stops says so in its last heartbeat.
    assert nodes[1].stop() == 0
    rows = {r["node"]: r for r in mesh_cli(nodes[0].ws, nats_server.url, "status")["nodes"]}
    assert rows["n2"]["alive"] is False and rows["n2"]["stopped"] is True
    assert rows["n2"]["trust"]["revocations_version"] == 1
    assert rows["n1"]["alive"] is True


def _maint_signer(keys: dict[str, GeneratedKey], who: str) -> Any:
    return load_signer(str(keys[who].private_path))


def test_unsigned_and_wrongly_signed_documents_are_refused_and_audited_by_every_node(
    nodes: list[MeshNode], nats_server: NatsServer, keys_dir: dict[str, GeneratedKey]
) -> None:
    url = nats_server.url
    alice_id = keys_dir["alice"].key_id
    revocations = {
        "type": "nightcore-revocations",
        "version": 7,
        "issued": "2026-12-05T12:00:00Z",
        "keys": [{"keyid": alice_id, "reason": "forged", "revoked_at": "2026-12-05T12:00:00Z"}],
        "modules": [],
    }
    payload = canonical(revocations)
    rev_type = "application/vnd.nightcore.revocations+json"
    chg_type = "application/vnd.nightcore.mesh-change+json"
    cordon = canonical(
        {
            "type": "nightcore-mesh-change",
            "version": 9,
            "issued": "2026-12-05T12:00:00Z",
            "op": "cordon",
            "target": "hello",
            "reason": "forged",
        }
    )
    unsigned = canonical(
        {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": rev_type,
            "signatures": [
                {"keyid": keys_dir["maint"].key_id, "sig": base64.b64encode(b"x" * 64).decode()}
            ],
        }
    )
    docs = [
        (PREFIX_SUBJECT_REV, b"not json at all", "REVOCATION_INVALID"),
        (PREFIX_SUBJECT_REV, unsigned, "SIGNATURE_INVALID"),
        # A key nobody trusts (mallory), and a trusted key without the maintainer role (alice).
        (
            PREFIX_SUBJECT_REV,
            sign_payload(payload, [_maint_signer(keys_dir, "mallory")], rev_type),
            "REVOCATION_SIGNER_INVALID",
        ),
        (
            PREFIX_SUBJECT_REV,
            sign_payload(payload, [_maint_signer(keys_dir, "alice")], rev_type),
            "REVOCATION_SIGNER_INVALID",
        ),
        (
            PREFIX_SUBJECT_CHG,
            sign_payload(cordon, [_maint_signer(keys_dir, "mallory")], chg_type),
            "MESH_DOC_SIGNER_INVALID",
        ),
        (
            PREFIX_SUBJECT_CHG,
            sign_payload(cordon, [_maint_signer(keys_dir, "alice")], chg_type),
            "MESH_DOC_SIGNER_INVALID",
        ),
        (PREFIX_SUBJECT_CHG, b'{"payload": 1}', "MESH_DOC_INVALID"),
        ("nightcore.trust.other", b"{}", "MESH_DOC_INVALID"),
    ]
    seqs = [(publish_raw(url, subject, data), data, code) for subject, data, code in docs]
    for n in nodes:
        for seq, data, code in seqs:
            line = refused(n, seq)
            assert line["code"] == code, (seq, line)
            assert line["sha256"] == hashlib.sha256(data).hexdigest()
        assert not mesh_events(n.ws, "mesh_trust_applied")
        assert not mesh_events(n.ws, "cordon")
        # Nothing changed: the tenant still runs.
        assert n.run_codes("hello") == ["OK"]
    # An honest publish after the forgeries: numbered above every claimed version, carrying no
    # entry of a document that does not verify (alice stays trusted).
    module = hashlib.sha256(b"bad module").hexdigest()
    out = mesh_cli(
        nodes[0].ws,
        url,
        *("revoke", "module", module, "--key", str(keys_dir["maint"].private_path)),
        *("--reason", "CVE"),
    )
    assert out["version"] == 8
    for n in nodes:
        applied(n, out["seq"])
        listed = run_cli_subprocess("-w", str(n.ws), "--local", "revocations", "list", "--json")
        assert listed.code == 0, listed.err
        doc = listed.json()
        assert [m["sha256"] for m in doc["modules"]] == [module] and doc["keys"] == []
        assert n.run_codes("hello") == ["OK"]


def test_replayed_documents_are_refused_and_a_cordon_broadcast_applies(
    nodes: list[MeshNode], nats_server: NatsServer, keys_dir: dict[str, GeneratedKey]
) -> None:
    import nats

    url = nats_server.url
    maint = str(keys_dir["maint"].private_path)
    cordoned = mesh_cli(
        nodes[0].ws, url, "cordon", "hello", "--key", maint, "--reason", "incident 42"
    )
    for n in nodes:
        line = applied(n, cordoned["seq"])[0]["data"]
        assert line["op"] == "cordon" and line["effect"] == "applied"
        assert mesh_events(n.ws, "cordon")[-1]["data"]["actor"].startswith("mesh:")
        assert n.run_codes("hello") == ["CORDONED"]
    uncordoned = mesh_cli(
        nodes[0].ws, url, "uncordon", "hello", "--key", maint, "--reason", "closed"
    )
    assert uncordoned["version"] == cordoned["version"] + 1
    for n in nodes:
        applied(n, uncordoned["seq"])
        assert n.run_codes("hello") == ["OK"]
    module = hashlib.sha256(b"some module").hexdigest()
    rev = mesh_cli(nodes[0].ws, url, "revoke", "module", module, "--key", maint, "--reason", "CVE")

    async def copies() -> list[bytes]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        out = [(await js.get_msg("nightcore-trust", s)).data for s in (cordoned["seq"], rev["seq"])]
        await nc.close()
        return [bytes(d or b"") for d in out]

    old_cordon, old_rev = asyncio.run(copies())
    # The same signed bytes again: valid signatures, versions already applied.
    replay_cordon = publish_raw(url, PREFIX_SUBJECT_CHG, old_cordon)
    replay_rev = publish_raw(url, PREFIX_SUBJECT_REV, old_rev)
    for n in nodes:
        assert refused(n, replay_cordon)["code"] == "MESH_DOC_ROLLBACK"
        assert refused(n, replay_rev)["code"] == "REVOCATION_ROLLBACK"
        assert n.run_codes("hello") == ["OK"]  # the replayed cordon did not come back


def test_node_started_after_a_change_applies_it_before_its_first_run(
    tmp_path: Path, nats_server: NatsServer, keys_dir: dict[str, GeneratedKey]
) -> None:
    operator = make_workspace(tmp_path / "operator", keys_dir)
    out = mesh_cli(
        operator,
        nats_server.url,
        "revoke",
        "key",
        keys_dir["alice"].key_id,
        "--key",
        str(keys_dir["maint"].private_path),
        "--reason",
        "stolen",
    )
    late = MeshNode(make_workspace(tmp_path / "late", keys_dir), nats_server.url, "late")
    try:
        # At once after "serving": the run waits for the catch-up, and is refused.
        assert late.run_codes("hello") == ["KEY_REVOKED"]
        events = [r["event"] for r in late.audit()]
        first_run = min(
            i for i, e in enumerate(events) if e in ("run_start", "run_outcome", "verify")
        )
        assert events.index("mesh_trust_applied") < first_run
        assert applied(late, out["seq"])
    finally:
        late.kill()


def test_cluster_server_killed_revocations_propagate_disconnected_node_catches_up(
    tmp_path: Path, keys_dir: dict[str, GeneratedKey]
) -> None:
    cluster = make_cluster(tmp_path / "cluster", no_advertise=True)
    nodes: list[MeshNode] = []
    try:
        operator = make_workspace(tmp_path / "operator", keys_dir)
        maint = str(keys_dir["maint"].private_path)
        # The stream is created with 3 replicas by the first publisher (all URLs given).
        first = mesh_cli(
            operator, cluster.url_list, "cordon", "other", "--key", maint, "--reason", "r"
        )
        wide = MeshNode(make_workspace(tmp_path / "wide", keys_dir), cluster.url_list, "wide")
        # `narrow` knows only n3 (no_advertise: it learns no other server).
        narrow = MeshNode(
            make_workspace(tmp_path / "narrow", keys_dir), cluster.servers[2].url, "narrow"
        )
        nodes = [wide, narrow]
        for n in nodes:
            n.wait_caught_up()
            applied(n, first["seq"])
        cluster.servers[2].kill()
        narrow.await_line("disconnected")
        assert narrow.status()["mesh"]["admitted"] is False
        out = _publish_with_retry(
            operator,
            cluster.servers[0].url + "," + cluster.servers[1].url,
            "revoke",
            "key",
            keys_dir["alice"].key_id,
            "--key",
            maint,
            "--reason",
            "stolen",
        )
        applied(wide, out["seq"])
        assert wide.run_codes("hello") == ["KEY_REVOKED"]
        cluster.servers[2].restart()
        narrow.await_line("reconnected")
        applied(narrow, out["seq"])
        assert narrow.run_codes("hello") == ["KEY_REVOKED"]
        # And the restarted server carries new documents as before.
        module = hashlib.sha256(b"m").hexdigest()
        later = _publish_with_retry(
            operator, cluster.url_list, "revoke", "module", module, "--key", maint, "--reason", "x"
        )
        for n in nodes:
            applied(n, later["seq"])
    finally:
        for n in nodes:
            n.kill()
        cluster.stop()


def _publish_with_retry(ws: Path, urls: str, *args: str) -> Any:
    """A stream whose leader was just killed is unavailable for a few seconds (a new leader is
    elected): the operator runs the command again, as the error tells them."""
    import time

    deadline = time.monotonic() + 60
    while True:
        res = run_cli_subprocess("-w", str(ws), "mesh", *args, "--mesh", urls, "--json")
        if res.code == 0:
            return res.json()
        assert "Traceback" not in res.err
        assert any(c in res.err for c in ("MESH_UNREACHABLE", "MESH_ERROR")), res.err
        if time.monotonic() > deadline:
            raise AssertionError(res.err)
        time.sleep(0.5)  # retrying a refused command with a deadline


def test_user_password_auth_is_required_and_plumbed_through(
    tmp_path: Path, keys_dir: dict[str, GeneratedKey]
) -> None:
    auth = 'authorization { users = [ { user: "node1", password: "s3cret-pw" } ] }'
    server = NatsServer(tmp_path / "auth", extra_conf=auth).start()
    node: MeshNode | None = None
    try:
        ws = make_workspace(tmp_path / "ws", keys_dir)
        creds = tmp_path / "node1.creds"
        creds.write_text("node1:s3cret-pw\n")
        creds.chmod(0o600)
        bad = tmp_path / "bad.creds"
        bad.write_text("node1:wrong\n")
        bad.chmod(0o600)
        res = run_cli_subprocess("-w", str(ws), "mesh", "status", "--mesh", server.url, "--json")
        assert res.code == 2 and "error[MESH_" in res.err and "Traceback" not in res.err
        res = run_cli_subprocess(
            "-w", str(ws), "mesh", "status", "--mesh", server.url, "--mesh-creds", str(bad)
        )
        assert res.code == 2 and "error[MESH_" in res.err
        loose = tmp_path / "loose.creds"
        loose.write_text("node1:s3cret-pw\n")
        loose.chmod(0o644)
        res = run_cli_subprocess(
            "-w", str(ws), "mesh", "status", "--mesh", server.url, "--mesh-creds", str(loose)
        )
        assert res.code == 2 and "error[MESH_CONFIG_INVALID]" in res.err
        node = MeshNode(ws, server.url, "n1", extra=("--mesh-creds", str(creds)))
        node.wait_caught_up()
        out = run_cli_subprocess(
            "-w",
            str(ws),
            "mesh",
            "status",
            "--mesh",
            server.url,
            "--mesh-creds",
            str(creds),
            "--json",
        )
        assert out.code == 0, out.err
        assert json.loads(out.out)["mesh"]["auth"] == "user-password"
        assert "s3cret" not in out.out
    finally:
        if node is not None:
            node.kill()
        server.stop()


def test_key_registry_changes_and_a_node_cordon_travel_signed(
    nodes: list[MeshNode], nats_server: NatsServer, keys_dir: dict[str, GeneratedKey]
) -> None:
    from tests.conftest import HELLO_WAT, simple_manifest, wat_module, write_tenant

    url = nats_server.url
    maint = str(keys_dir["maint"].private_path)
    bob = keys_dir["bob"]
    for n in nodes:
        d = write_tenant(n.ws, "bobs", simple_manifest("bobs"), wat_module(HELLO_WAT))
        from nightcore import app

        app.sign_tenant(d, str(bob.private_path))
        assert n.run_codes("bobs") == ["KEY_UNTRUSTED"]
    added = mesh_cli(
        nodes[0].ws,
        url,
        *("add-key", str(bob.public_path), "--scope", "bob*", "--key", maint),
    )
    for n in nodes:
        assert applied(n, added["seq"])[0]["data"]["op"] == "key_add"
        assert mesh_events(n.ws, "trust_key_added")[-1]["data"]["key_id"] == bob.key_id
        assert n.run_codes("bobs") == ["OK"]
    removed = mesh_cli(nodes[0].ws, url, "remove-key", bob.key_id[:12], "--key", maint)
    for n in nodes:
        applied(n, removed["seq"])
        assert n.run_codes("bobs") == ["KEY_UNTRUSTED"]
    # A node cordon changes only the node it names; both audit it.
    cordon = mesh_cli(
        nodes[0].ws, url, "cordon", "--node", "n2", "--key", maint, "--reason", "disk"
    )
    effects = {n.name: applied(n, cordon["seq"])[0]["data"]["effect"] for n in nodes}
    assert effects == {"n1": "other node", "n2": "applied"}

    def cordoned() -> dict[str, bool]:
        res = mesh_cli(nodes[0].ws, url, "status")
        return {r["node"]: r["cordoned"] for r in res["nodes"]}

    deadline = time.monotonic() + 60
    while cordoned() != {"n1": False, "n2": True}:  # the next heartbeat says so
        assert time.monotonic() < deadline, cordoned()
        time.sleep(0.2)  # polling a condition with a deadline
    # A node cordon is about mesh work: local runs on n2 still go.
    assert nodes[1].run_codes("hello") == ["OK"]


LOOP_WAT = '(module (func (export "_start") (loop $l (br $l))))'


@pytest.mark.parametrize("topology", ["one server, two nodes", "three-server cluster, three nodes"])
def test_a_broadcast_revocation_interrupts_in_flight_runs_on_every_node(
    topology: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    keys_dir: dict[str, GeneratedKey],
) -> None:
    import subprocess
    import sys

    from nightcore import app
    from tests.conftest import simple_manifest, wat_module, write_tenant

    # Long enough to act on mid-run (the policy's wall cap is 10 s); the run would end by
    # itself with TIMEOUT.
    limits = "[limits]\nfuel = 1000000000000\nwall_ms = 9000\n"
    if topology.startswith("one"):
        urls, count = request.getfixturevalue("nats_server").url, 2
    else:
        urls, count = request.getfixturevalue("nats_cluster").url_list, 3
    started: list[MeshNode] = []
    clients: list[subprocess.Popen[str]] = []
    try:
        for i in range(1, count + 1):
            ws = make_workspace(tmp_path / f"ws{i}", keys_dir)
            d = write_tenant(ws, "looper", simple_manifest("looper", limits), wat_module(LOOP_WAT))
            app.sign_tenant(d, str(keys_dir["alice"].private_path))
            node = MeshNode(ws, urls, f"n{i}")
            node.wait_caught_up()
            started.append(node)
        for n in started:
            clients.append(
                subprocess.Popen(
                    [sys.executable, "-m", "nightcore", "-w", str(n.ws), "run", "looper", "--json"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for n, c in zip(started, clients, strict=True):
            deadline = time.monotonic() + 90
            while not n.status()["pool"]["running"].get("looper"):
                if c.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"looper never started on {n.name}: {c.communicate()}")
                time.sleep(0.02)  # polling a condition with a deadline
        out = mesh_cli(
            started[0].ws,
            urls,
            *("revoke", "key", keys_dir["alice"].key_id),
            *("--key", str(keys_dir["maint"].private_path), "--reason", "stolen"),
        )
        for c in clients:
            stdout, err = c.communicate(timeout=120)
            assert "Traceback" not in err
            rows = {r["tenant"]: r for r in json.loads(stdout)}
            assert rows["looper"]["code"] == "REVOKED_IN_FLIGHT", rows
        for n in started:
            applied(n, out["seq"])
            assert n.run_codes("hello") == ["KEY_REVOKED"]
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
        for n in started:
            n.kill()


def test_a_node_that_cannot_reach_the_mesh_admits_no_run_until_it_has_caught_up(
    tmp_path: Path, keys_dir: dict[str, GeneratedKey]
) -> None:
    from nightcore.errors import NightCoreError

    server = NatsServer(tmp_path / "nats")  # its ports are chosen; not started yet
    ws = make_workspace(tmp_path / "ws", keys_dir)
    node = MeshNode(ws, server.url, "n1", extra=("--mesh-admit-timeout", "1"))
    try:
        node.await_line("MESH_UNREACHABLE")
        with pytest.raises(NightCoreError) as exc:
            node.run_codes("hello")
        assert exc.value.code == "MESH_NOT_CAUGHT_UP", exc.value
        assert not [r for r in node.audit() if r["event"] == "run_start"]
        assert node.status()["mesh"]["admitted"] is False
        server.start()
        node.wait_caught_up()
        assert node.run_codes("hello") == ["OK"]
        from tests.e2e.test_json_schemas import check

        status = check("node-status", node.status())  # the documented shape, with a mesh
        assert status["mesh"]["connected"] is True and status["mesh"]["admitted"] is True
    finally:
        node.kill()
        server.stop()


def test_a_node_in_the_second_region_applies_the_first_regions_trust_stream(
    nats_server: NatsServer,
    region_west: NatsServer,
    tmp_path: Path,
    keys_dir: dict[str, GeneratedKey],
) -> None:
    # The node talks to its own region's server; the streams live in the hub's domain.
    west = MeshNode(
        make_workspace(tmp_path / "west", keys_dir),
        region_west.url,
        "west-1",
        extra=("--mesh-domain", "hub"),
    )
    try:
        west.wait_caught_up()
        assert west.run_codes("hello") == ["OK"]
        out = mesh_cli(
            make_workspace(tmp_path / "operator", keys_dir),
            nats_server.url,
            *("revoke", "key", keys_dir["alice"].key_id),
            *("--key", str(keys_dir["maint"].private_path), "--reason", "stolen"),
        )
        applied(west, out["seq"])
        assert west.run_codes("hello") == ["KEY_REVOKED"]
        # Its heartbeat is in the hub's bucket too.
        deadline = time.monotonic() + 60
        while True:
            status = mesh_cli(west.ws, nats_server.url, "status")
            if [n["node"] for n in status["nodes"]] == ["west-1"]:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)  # polling a condition with a deadline
        assert status["trust"]["documents"] == 1  # one trust stream: the hub's
    finally:
        west.kill()


def test_the_nodes_console_shows_its_mesh_state(
    nats_server: NatsServer, tmp_path: Path, keys_dir: dict[str, GeneratedKey]
) -> None:
    import re
    import urllib.request

    node = MeshNode(
        make_workspace(tmp_path / "ws", keys_dir),
        nats_server.url,
        "n1",
        extra=("--http", "127.0.0.1:0"),
    )
    try:
        node.wait_caught_up()
        line = next(x for x in node.log if "console on " in x)
        m = re.search(r"console on (http://\S+)", line)
        assert m is not None, line
        with urllib.request.urlopen(m.group(1).rstrip("/") + "/api/mesh", timeout=30) as resp:  # noqa: S310 - loopback
            view = json.loads(resp.read())["mesh"]
        assert view["node"] == "n1" and view["connected"] is True and view["admitted"] is True
        assert view["cordoned"] is False and view["trust"]["seq"] == 0
        assert view["auth"] == "none" and "servers" in view
    finally:
        node.kill()
