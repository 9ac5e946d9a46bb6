"""The NATS authorization example of docs/mesh.md, enforced by a real nats-server: a node with
only those permissions runs the trust broadcast and its heartbeat, and cannot publish trust
documents or write another node's heartbeat."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from nightcore.trust.keys import GeneratedKey
from tests.conftest import REPO, run_cli_subprocess
from tests.mesh.nodes import MeshNode, make_workspace
from tests.mesh.servers import NatsServer


def _doc_authorization() -> str:
    """The ``authorization { ... }`` block of docs/mesh.md, with plain-text test passwords."""
    text = (REPO / "docs" / "mesh.md").read_text()
    block = re.search(r"```\n(authorization \{.*?\n\})\n```", text, re.S)
    assert block is not None, "docs/mesh.md has no authorization example"
    conf = block.group(1)
    conf = conf.replace('"$2a$11$...",  # nats-server passwd', '"edge-pw"', 1)
    conf = conf.replace('"$2a$11$..."', '"ops-pw"', 1)
    return re.sub(r"#[^\n]*", "", conf)  # the config parser takes '#' comments; keep it plain


def _creds(path: Path, line: str) -> str:
    path.write_text(line + "\n")
    path.chmod(0o600)
    return str(path)


def test_node_with_only_the_documented_permissions(
    tmp_path: Path, keys_dir: dict[str, GeneratedKey]
) -> None:
    server = NatsServer(tmp_path / "nats", extra_conf=_doc_authorization()).start()
    node: MeshNode | None = None
    try:
        ops = _creds(tmp_path / "ops.creds", "ops:ops-pw")
        edge = _creds(tmp_path / "edge.creds", "edge-1:edge-pw")
        operator = make_workspace(tmp_path / "operator", keys_dir)
        res = run_cli_subprocess(
            "-w", str(operator), "mesh", "init", "--mesh", server.url, "--mesh-creds", ops
        )
        assert res.code == 0, res.err
        node = MeshNode(
            make_workspace(tmp_path / "edge", keys_dir),
            server.url,
            "edge-1",
            extra=("--mesh-creds", edge),
        )
        node.wait_caught_up()
        res = run_cli_subprocess(
            *("-w", str(operator), "mesh", "cordon", "hello", "--reason", "r"),
            *("--key", str(keys_dir["maint"].private_path)),
            *("--mesh", server.url, "--mesh-creds", ops, "--json"),
        )
        assert res.code == 0, res.err
        seq = json.loads(res.out)["seq"]
        node.wait_audit(lambda r: r["event"] == "mesh_trust_applied" and r["data"]["seq"] == seq)
        assert node.run_codes("hello") == ["CORDONED"]

        # Its heartbeat arrived (read with the operator's rights).
        def heartbeat_seen() -> bool:
            res = run_cli_subprocess(
                "-w",
                str(operator),
                "mesh",
                "status",
                "--mesh",
                server.url,
                "--mesh-creds",
                ops,
                "--json",
            )
            return res.code == 0 and any(
                n["node"] == "edge-1" for n in json.loads(res.out)["nodes"]
            )

        assert _eventually(heartbeat_seen)
        # The node's log shows NATS's asynchronous errors: none with these permissions.
        assert node.stop() == 0
        assert "permissions violation" not in "".join(node.log).lower(), node.log
    finally:
        if node is not None:
            node.kill()
    # With the node's credentials: no trust document, no other node's heartbeat.
    import nats
    import nats.errors

    async def attempts() -> list[str]:
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
        outcomes = []
        for subject in ("nightcore.trust.changes", "$KV.nightcore-nodes.edge-2"):
            try:
                await js.publish(subject, b"{}", timeout=2)
                outcomes.append(f"{subject}: accepted")
            except (nats.errors.Error, TimeoutError) as exc:
                outcomes.append(f"{subject}: refused {type(exc).__name__}")
        await nc.close()
        return outcomes + errors

    try:
        results = asyncio.run(attempts())
        assert not any("accepted" in r for r in results), results
        assert sum("permissions violation" in r.lower() for r in results) == 2, results
    finally:
        server.stop()


def _eventually(cond: object, timeout_s: float = 60.0) -> bool:
    import time

    assert callable(cond)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)  # polling a condition with a deadline
    return False
