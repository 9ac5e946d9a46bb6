"""The rest of the ``--json`` outputs (docs/json.md), each validated against its schema in
docs/schemas/: real output of real commands (keys generated here, real wasmtime runs, a real
TUF repository served over loopback HTTP, a real ``nats-server`` and ``nightcore node --mesh``).

One test per area, each on a workspace of its own, so that ``-n 2`` can spread them. The
schemas themselves (Draft 2020-12, versioned ``$id``, listed in docs/json.md) are checked by
tests/e2e/test_json_schemas.py; the last test here checks that docs/json.md names every
command of the CLI.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nightcore import app
from nightcore.context import NodeContext
from nightcore.trust.keys import GeneratedKey
from tests.conftest import PASSPHRASE, Env, run_cli_subprocess, serving
from tests.e2e.test_json_schemas import SCHEMA_DIR, check, out

WAIT_S = 60.0


# -- workspace, keys, trust ------------------------------------------------------------------


def test_workspace_key_and_trust_commands(env: Env, tmp_path: Path) -> None:
    cli = env.cli
    res = cli("init", str(tmp_path / "fresh"), "--json")
    assert res.code == 0, res.err
    init = check("init", res.json())
    assert init["fips"] is False and (tmp_path / "fresh" / "nightcore.toml").exists()
    keys = tmp_path / "keys"
    made = {
        name: check("keygen", out(env, "keygen", "--name", name, "--out", str(keys)))
        for name in ("carol", "carol-2027", "ops")
    }
    added = check(
        "trust-add-key",
        out(env, "trust", "add-key", made["carol"]["public_key"], "--scope", "carol-*"),
    )
    assert added["key_id"] == made["carol"]["key_id"] and "expires" not in added
    ops = out(
        env,
        *("trust", "add-key", made["ops"]["public_key"], "--scope", "*", "--role", "maintainer"),
        *("--expires", "2031-01-01"),
    )
    assert check("trust-add-key", ops)["expires"] == "2031-01-01T00:00:00Z"
    rotated = check(
        "trust-rotate-key",
        out(env, "trust", "rotate-key", added["key_id"][:12], made["carol-2027"]["public_key"]),
    )
    assert rotated["new"]["key_id"] == made["carol-2027"]["key_id"]
    assert "expires" in rotated["old"]

    tenant = tmp_path / "carol-hello"
    scaffold = check("new", out(env, "new", "carol-hello", "--dir", str(tenant)))
    assert scaffold["lang"] == "wat" and Path(scaffold["directory"]) == tenant
    built = check("build", out(env, "build", str(tenant)))
    signed = check("sign", out(env, "sign", str(tenant), "--key", made["carol"]["private_key"]))
    assert signed["module_sha256"] == built["sha256"] and signed["tenant"] == "carol-hello"

    ops_key = made["ops"]["private_key"]
    revoked = check(
        "revoke",
        out(env, "revoke", "module", built["sha256"], "--key", ops_key, "--reason", "test"),
    )
    assert revoked == {"revoked": built["sha256"], "kind": "module", "list_version": 1}
    removed = check("trust-remove", out(env, "trust", "remove", made["carol-2027"]["key_id"][:12]))
    assert removed["removed"] == made["carol-2027"]["key_id"]
    # The signed list, accepted by a second workspace that trusts the same maintainer key
    # (the -w given here comes after env.cli's own: the later one wins).
    other = app.init_workspace(tmp_path / "other")
    app.trust_add_key(other, Path(made["ops"]["public_key"]), scope="*", role="maintainer")
    imported = check(
        "trust-import-revocations",
        out(
            env,
            *("-w", str(other.root), "trust", "import-revocations"),
            str(env.ws / "trust" / "revocations.json"),
        ),
    )
    assert imported == {"version": 1, "signer": made["ops"]["key_id"]}

    completion = check("completion", out(env, "completion", "bash"))
    assert completion["shell"] == "bash" and "nightcore" in completion["script"]
    assert "complete " in cli("completion", "bash").out  # without --json: the script as is


# -- runs, audit, evidence, dashboard ----------------------------------------------------------


def test_run_audit_and_evidence_commands(env: Env, tmp_path: Path) -> None:
    mirror_dir = tmp_path / "mirror"
    cfg = env.ws / "nightcore.toml"
    cfg.write_text(
        cfg.read_text() + f'\n[[audit.mirror]]\nname = "dr"\nkind = "dir"\npath = "{mirror_dir}"\n'
    )
    env.add_tenant("hello")
    (run,) = check("run", out(env, "run", "--no-dashboard", "hello"))
    run_id = run["run_id"]
    assert check("state-rebuild", out(env, "state", "rebuild"))["runs_indexed"] == 1
    replayed = check("replay", out(env, "replay", run_id[:20]))
    assert replayed["code"] == "REPLAY_MATCH" and replayed["diverged"] is None
    assert replayed["attested_isolation"] == "in-process"

    records = check("audit-show", out(env, "audit", "show", "--limit", "0"))
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert {"run_outcome", "checkpoint", "replay"} <= {r["event"] for r in records}
    assert check("audit-show", out(env, "audit", "show", "--tenant", "hello", "--limit", "2"))

    proof, entry = tmp_path / "e1.proof", tmp_path / "e1.json"
    proved = check(
        "audit-prove",
        out(env, "audit", "prove", "1", "--out", str(proof), "--entry-out", str(entry)),
    )
    assert proved["out"] == str(proof) and proof.read_text() == proved["proof"]
    bare = check("audit-prove", out(env, "audit", "prove", "2"))
    assert bare["out"] is None and bare["entry_out"] is None
    pem = str(env.ws / "node.pub.pem")
    verified = check(
        "audit-verify-proof",
        out(env, "audit", "verify-proof", str(proof), "--key", pem, "--entry", str(entry)),
    )
    assert verified["index"] == 1 and verified["entry"]["seq"] == 1
    old = sorted((env.ws / "state/audit/checkpoints").glob("*.note"), key=lambda p: int(p.stem))[0]
    check("audit-checkpoint", out(env, "audit", "checkpoint"))
    cproof = tmp_path / "c.proof"
    cons = check(
        "audit-consistency", out(env, "audit", "consistency", str(old), "--out", str(cproof))
    )
    assert cons["old_size"] < cons["new_size"] and cons["out"] == str(cproof)
    vcons = check(
        "audit-verify-consistency",
        out(env, "audit", "verify-consistency", str(cproof), "--old", str(old), "--key", pem),
    )
    assert vcons["new_size"] == cons["new_size"]
    # A check that runs and fails: the error object, exit status 1.
    proof.write_text(proof.read_text().replace("index 1", "index 2"))
    failed = out(
        env, "audit", "verify-proof", str(proof), "--key", pem, "--entry", str(entry), code=1
    )
    assert check("error", failed)["ok"] is False

    quiet = check("audit-heartbeat", out(env, "audit", "heartbeat"))
    assert quiet["heartbeat"] is False and quiet["note"] is None
    beat = check("audit-heartbeat", out(env, "audit", "heartbeat", "--idle", "0"))
    assert beat["heartbeat"] is True and beat["size"] > 0

    synced = check("audit-mirrors", out(env, "audit", "mirror", "sync"))
    assert [(m["name"], m["ok"], m["error"], m["lag"]) for m in synced] == [("dr", True, None, 0)]
    status = check("audit-mirrors", out(env, "audit", "mirror", "status"))
    assert status[0]["lines"] == len(env.audit_lines())
    assert check("audit-verify", out(env, "audit", "verify", "--source", "dr"))["ok"] is True

    sbom = check("sbom", out(env, "sbom", "--out", str(tmp_path / "sbom.cdx.json")))
    assert Path(sbom["sbom"]).exists()
    bundle = check("proof-export", out(env, "proof", "export", "--out", str(tmp_path / "p.tgz")))
    assert bundle["runs"] == 1
    incident = check(
        "forensics-export",
        out(env, "forensics", "export", "--tenant", "hello", "--out", str(tmp_path / "f.tgz")),
    )
    assert incident["runs"] == 1 and isinstance(incident["checkpoint"], int)
    check(
        "forensics-export",
        out(
            env,
            *("forensics", "export", "--tenant", "hello", "--no-checkpoint"),
            *("--out", str(tmp_path / "f2.tgz")),
        ),
    )

    report = check("dashboard-build", out(env, "dashboard", "build"))
    assert report["diff"] is None and report["verify"]["ok"] is True
    diffed = check(
        "dashboard-build",
        out(env, "dashboard", "build", "--diff", "1", "--verify", "none", "--out", "d.html"),
    )
    assert diffed["diff"]["new_tenants"] == ["hello"] and diffed["verify"]["ok"] is None

    token = check("serve-token-create", out(env, "serve", "token", "create", "--expires", "1h"))
    (listed,) = check("serve-token-list", out(env, "serve", "token", "list"))
    assert listed["id"] == token["id"] and listed["expired"] is False
    revoked = check("serve-token-revoke", out(env, "serve", "token", "revoke", token["id"]))
    assert revoked == {"revoked": token["id"]}

    # The node key: in processes of their own (this one has loaded the key being rotated).
    res = run_cli_subprocess("-w", str(env.ws), "node-key", "rotate", "--json")
    assert res.code == 0, res.err
    rot = check("node-key-rotate", res.json())
    assert rot["retired_key_file"] is not None
    res = run_cli_subprocess(
        *("-w", str(env.ws), "node-key", "revoke", rot["old_key_id"][:16]),
        *("--last-trusted-size", str(rot["old_key_last_checkpoint"]), "--json"),
    )
    assert res.code == 0, res.err
    assert check("node-key-revoke", res.json())["key_id"] == rot["old_key_id"]


def test_usage_errors_print_the_error_object(env: Env) -> None:
    refusals = [
        ("aufs", "repo", "sign"),  # required options missing
        ("aufs", "repo", "status", "--repo", str(env.root / "nowhere")),
        ("aufs", "repo"),  # an action needed
        ("trust",),
        ("nosuch",),
        ("run", "--parallel", "x"),
        ("mesh", "status"),  # --mesh is required
        ("logs", "--follow", "20261205T0750"),  # --follow streams bytes: not with --json
        ("serve", "token", "revoke", "0123456789ab"),
        ("dashboard", "build", "--max-rows", "0"),
    ]
    codes = set()
    for args in refusals:
        for argv in (("--json", *args), (*args, "--json")):
            res = env.cli(*argv)
            assert res.code == 2, (argv, res.out, res.err)
            doc = check("error", res.json())
            assert f"error[{doc['code']}]" in res.err
            codes.add(doc["code"])
    assert {"USAGE", "AUFS_REPO_NOT_FOUND", "TOKEN_NOT_FOUND"} <= codes
    # The real command line (sys.argv), not only main(argv):
    res = run_cli_subprocess("--json", "aufs", "repo", "sign", "--role", "targets")
    assert res.code == 2 and check("error", res.json())["code"] == "USAGE"


def test_serve_prints_one_line_once_listening(env: Env) -> None:
    with serving(env.ws) as (first, _proc):
        ready = check("serve", first)
        assert ready["url"].startswith("http://127.0.0.1:") and ready["workspace"] == str(env.ws)


# -- AUFS --------------------------------------------------------------------------------------


def test_aufs_repository_and_client_commands(env: Env, tmp_path: Path) -> None:
    from tests.aufs.conftest import make_package, start_server

    cli = env.cli
    mk = {n: app.keygen(n, tmp_path / "mk", PASSPHRASE.encode()) for n in ("m1", "m2", "m3", "m4")}
    key = {n: str(k.private_path) for n, k in mk.items()}
    repo = tmp_path / "repo"
    (repo / "public").mkdir(parents=True)
    srv = start_server(repo / "public")
    r = ("--repo", str(repo))
    try:
        fresh = check("aufs-status", out(env, "aufs", "status"))
        assert fresh["metadata_versions"] == {} and fresh["trust"]["registry"] is None
        init = check(
            "aufs-repo-init",
            out(
                env,
                *("aufs", "repo", "init", str(repo), "--threshold", "2"),
                *("--root-key", key["m1"], "--root-key", key["m2"]),
                *("--root-key", str(mk["m3"].public_path)),
            ),
        )
        assert init["published"]["versions"]["root"] == 1
        assert all(s["previous_root_signed"] is None for s in init["staged"])
        client = check(
            "aufs-client-init",
            out(
                env,
                *("aufs", "client", "init", str(repo / "public/metadata/1.root.json")),
                *("--expect-sha256", init["root_sha256"], "--metadata-url", srv.metadata_url),
                *("--target-base-url", srv.target_url),
            ),
        )
        assert (
            client["sha256"] == init["root_sha256"] and len(client["roles"]["root"]["key_ids"]) == 3
        )

        v1 = make_package(tmp_path / "pkgs", "hello", "1.0.0", env.publisher)
        v2 = make_package(tmp_path / "pkgs", "hello", "2.0.0", env.publisher)
        staged = check("aufs-repo-add-target", out(env, "aufs", "repo", "add-target", str(v1), *r))
        assert staged["custom"]["nightcore"] == {
            "kind": "tenant",
            "tenant": "hello",
            "version": "1.0.0",
        }
        half = check(
            "aufs-repo-sign",
            out(env, "aufs", "repo", "sign", "--role", "targets", "--key", key["m1"], *r),
        )
        assert half["ready"] is False and half["previous_root_threshold"] is None
        status = check("aufs-repo-status", out(env, "aufs", "repo", "status", *r))
        assert status["roles"]["targets"]["staged"]["version"] == half["version"]
        assert status["roles"]["root"]["staged"] is None
        assert {k["name"] for k in status["roles"]["root"]["keys"]} == {"m1", "m2", "m3"}
        check(
            "aufs-repo-sign",
            out(env, "aufs", "repo", "sign", "--role", "targets", "--key", key["m2"], *r),
        )
        published = check("aufs-repo-publish", out(env, "aufs", "repo", "publish", *r))
        assert "targets" in published["published"]

        refreshed = check("aufs-client-refresh", out(env, "aufs", "client", "refresh"))
        assert refreshed["changed"] is True and refreshed["versions"]["targets"] == 2
        first = check("aufs-update", out(env, "aufs", "update"))
        (o,) = first["outcomes"]
        assert (o["action"], o["tenant"], o["previous_version"]) == ("installed", "hello", None)

        assert cli("aufs", "repo", "add-target", str(v2), *r).code == 0
        for k in ("m1", "m2"):
            assert cli("aufs", "repo", "sign", "--role", "targets", "--key", key[k], *r).code == 0
        assert cli("aufs", "repo", "publish", *r).code == 0
        second = check("aufs-update", out(env, "aufs", "update"))
        assert second["outcomes"][0]["previous_version"] == "1.0.0"
        downloaded = check(
            "aufs-client-download",
            out(
                env,
                *("aufs", "client", "download", "tenants/hello/2.0.0.tar.gz"),
                *("--target-dir", str(tmp_path / "dl")),
            ),
        )
        assert Path(downloaded[0]["file"]).stat().st_size == downloaded[0]["length"]
        installed = check("aufs-status", out(env, "aufs", "status"))
        assert installed["tenants"]["hello"]["previous_version"] == "1.0.0"
        back = check("aufs-rollback", out(env, "aufs", "rollback", "hello"))
        assert back == {"tenant": "hello", "from_version": "2.0.0", "to_version": "1.0.0"}
        rolled = check("aufs-status", out(env, "aufs", "status"))
        assert rolled["tenants"]["hello"]["sha256"] is None  # not recorded by a rollback

        # A downgrade override (one signature of the two it needs), a removal, a root rotation.
        assert cli("aufs", "repo", "add-target", str(v1), *r).code == 0
        override = check(
            "aufs-repo-override",
            out(env, "aufs", "repo", "override", "hello", "1.0.0", "--key", key["m1"], *r),
        )
        assert override["signatures"] == 1
        removed = check(
            "aufs-repo-remove-target",
            out(env, "aufs", "repo", "remove-target", "tenants/hello/1.0.0.tar.gz", *r),
        )
        assert removed == {"removed": "tenants/hello/1.0.0.tar.gz"}
        rotation = check(
            "aufs-repo-sign",
            out(
                env,
                *("aufs", "repo", "rotate-key", "--role", "root"),
                *("--old", str(mk["m1"].public_path), "--new", key["m4"], *r),
            ),
        )
        assert rotation["role"] == "root" and rotation["previous_root_threshold"] == 2
        signed = check(
            "aufs-repo-sign",
            out(env, "aufs", "repo", "sign", "--role", "root", "--key", key["m2"], *r),
        )
        assert signed["previous_root_signed"] == [mk["m2"].key_id]
        status = check("aufs-repo-status", out(env, "aufs", "repo", "status", *r))
        assert status["roles"]["root"]["staged"]["previous_root_threshold"] == 2
        backup = check(
            "aufs-repo-backup",
            out(env, "aufs", "repo", "backup", "--out", str(tmp_path / "bk"), *r),
        )
        assert backup["root_versions"] == [1]
    finally:
        srv.server.shutdown()
        srv.server.server_close()


# -- Night Mesh ------------------------------------------------------------------------------------


@pytest.fixture
def mesh_servers(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """A JetStream server (domain ``hub``) and a second region (``west``) joined to it."""
    from tests.mesh.servers import NatsServer, free_port, nats_server_binary, second_region

    if nats_server_binary() is None:
        pytest.skip("nats-server is not installed (make test installs it: tools/system_deps.py)")
    hub = NatsServer(tmp_path / "nats", leafnode_port=free_port(), domain="hub").start()
    try:
        west = second_region(tmp_path / "west", hub, "west")
        try:
            yield hub, west
        finally:
            west.stop()
    finally:
        hub.stop()


def test_mesh_commands(
    env: Env,
    tmp_path: Path,
    keys_dir: dict[str, GeneratedKey],
    mesh_servers: tuple[Any, Any],
) -> None:
    from tests.mesh.nodes import make_workspace
    from tests.node.test_node import NodeProcess

    hub, west = mesh_servers
    m = ("--mesh", hub.url)
    maint = str(env.maintainer.private_path)
    env.add_tenant("hello")  # this workspace publishes; the node's has its own copy
    empty = check("mesh-status", out(env, "mesh", "status", *m))
    assert empty["nodes"] == [] and empty["trust"] == {"exists": False, "stream": "nightcore-trust"}
    created = check("mesh-init", out(env, "mesh", "init", *m))
    assert "nightcore-trust" in created["created_or_present"]

    node = NodeProcess(
        make_workspace(tmp_path / "node", keys_dir),
        workers=1,
        extra=("--mesh", hub.url, "--node-name", "n1"),
    )
    try:
        node._await_line("caught up")
        for op, target, args in (
            ("cordon", "other", ("cordon", "other", "--reason", "incident 7")),
            ("uncordon", "other", ("uncordon", "other")),
            ("node_cordon", "n9", ("cordon", "--node", "n9", "--reason", "maintenance")),
            ("node_uncordon", "n9", ("uncordon", "--node", "n9")),
        ):
            doc = check("mesh-publish", out(env, "mesh", *args, "--key", maint, *m))
            assert (doc["kind"], doc["op"], doc["target"]) == ("change", op, target)
        bob = keys_dir["bob"]
        added = check(
            "mesh-publish",
            out(
                env, "mesh", "add-key", str(bob.public_path), "--scope", "bob-*", "--key", maint, *m
            ),
        )
        assert (added["op"], added["target"]) == ("key_add", bob.key_id)
        app.trust_add_key(NodeContext(env.ws), bob.public_path, scope="bob-*")
        dropped = check(
            "mesh-publish", out(env, "mesh", "remove-key", bob.key_id[:12], "--key", maint, *m)
        )
        assert dropped["op"] == "key_remove"
        revoked = check(
            "mesh-publish",
            out(env, "mesh", "revoke", "module", "cd" * 32, "--key", maint, "--reason", "x", *m),
        )
        assert revoked["kind"] == "revocations" and revoked["what"] == "module"
        package = check(
            "mesh-publish-tenant",
            out(env, "mesh", "publish-tenant", str(env.ws / "modules/hello"), *m),
        )
        assert package["tenant"] == "hello"

        waited = check(
            "mesh-submit",
            out(env, "mesh", "submit", "hello", "--count", "2", "--wait", str(WAIT_S), *m),
        )
        assert waited["results"] == {"done": 2, "pending": [], "codes": {"OK": 2}}
        queued = check("mesh-submit", out(env, "mesh", "submit", "hello", *m))
        assert queued["results"] is None and len(queued["request_ids"]) == 1
        runs = check("mesh-runs", out(env, "mesh", "runs", "--limit", "5", *m))
        assert {r["code"] for r in runs["rows"]} == {"OK"} and runs["results"] >= 2
        check("mesh-queue", out(env, "mesh", "queue", *m))
        tuned = check("mesh-queue", out(env, "mesh", "queue", "--ack-wait", "20", *m))
        assert tuned["ack_wait_s"] == 20

        region = check(
            "audit-mirror-region",
            out(
                env,
                *("audit", "mirror", "region", west.url, "--domain", "west"),
                *("--source-domain", "hub"),
            ),
        )
        assert region["stream"] == "nightcore-audit-west"
        deadline = time.monotonic() + WAIT_S
        while True:  # the node's heartbeat with its audit replication (every 2 s)
            status = check("mesh-status", out(env, "mesh", "status", *m))
            if status["audit"]["exists"] and status["audit"]["nodes"].get("n1", {}).get("lines"):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.1)  # polling a condition with a deadline
        (row,) = status["nodes"]
        assert row["node"] == "n1" and row["alive"] is True and status["work_queue"]["exists"]
    finally:
        assert node.stop() == 0


# -- coverage of docs/json.md --------------------------------------------------------------------


def _leaf_commands() -> list[str]:
    """Every command line of the CLI ("trust add-key", "aufs repo init", "serve", ...)."""
    from nightcore.cli.main import _Commands, build_parser

    parser = build_parser()
    found: list[str] = []

    def walk(p: argparse.ArgumentParser, path: list[str]) -> None:
        handler = p.get_default("handler")
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if handler is not None and getattr(handler, "__name__", "") != "_need_sub":
            found.append(" ".join(path))
        for action in subs:
            if isinstance(action, _Commands):
                action.build_all()
            for name, child in action.choices.items():
                walk(child, [*path, name])

    walk(parser, [])
    return found


def test_docs_json_md_names_every_command() -> None:
    text = (SCHEMA_DIR.parent / "json.md").read_text()
    commands = _leaf_commands()
    assert len(commands) > 60 and "aufs repo init" in commands and "serve token list" in commands
    missing = [c for c in commands if f"nightcore {c}" not in text]
    assert not missing, f"docs/json.md says nothing of: {missing}"
