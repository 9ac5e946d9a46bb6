"""Every ``--json`` output has a JSON Schema in docs/schemas/ (docs/json.md): real output of
each command, through the in-process CLI on a real workspace, validates against its schema
(Draft 2020-12), and so do the console API's ``POST /api/run`` and ``GET /api/runs``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from referencing import Registry, Resource

from nightcore.context import NodeContext
from nightcore.dashboard.server import create_app
from nightcore.dashboard.tokens import TokenStore, parse_expires
from tests.conftest import Env
from tests.node.test_node import NodeProcess

with warnings.catch_warnings():  # starlette 1.x suggests httpx2; httpx is what is pinned
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"
SCHEMAS: dict[str, dict[str, Any]] = {
    p.name.removesuffix(".schema.json"): json.loads(p.read_text())
    for p in sorted(SCHEMA_DIR.glob("*.schema.json"))
}
REGISTRY: Registry[Any] = Registry().with_resources(
    (s["$id"], Resource.from_contents(s)) for s in SCHEMAS.values()
)
NEVER_RAN = ("run_id", "exit_code", "fuel_used", "wall_ms", "memory_bytes", "output_bytes")


def check(name: str, data: Any) -> Any:
    """``data`` validated against docs/schemas/<name>.schema.json (all errors in the message)."""
    validator = Draft202012Validator(SCHEMAS[name], registry=REGISTRY)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
    assert not errors, f"{name}: {errors}"
    return data


def out(env: Env, *args: str, code: int = 0) -> Any:
    res = env.cli(*args, "--json")
    assert res.code == code, (args, res.err)
    return res.json()


def test_every_schema_is_a_versioned_draft_2020_12_schema() -> None:
    assert {"run", "verify", "runs", "runs-show", "trust-list", "revocations-list"} <= set(SCHEMAS)
    assert {"audit-verify", "audit-checkpoint", "proof-verify", "doctor", "node-status"} <= set(
        SCHEMAS
    )
    assert {"error", "api-run", "api-runs"} <= set(SCHEMAS)
    for name, schema in SCHEMAS.items():
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        version = schema["version"]
        assert isinstance(version, int) and version >= 1
        assert schema["$id"] == f"urn:nightcore:schema:{name}:{version}"
    listed = (SCHEMA_DIR.parents[0] / "json.md").read_text()
    assert all(f"schemas/{name}.schema.json" in listed for name in SCHEMAS)


def test_cli_json_matches_the_schemas(env: Env, tmp_path: Path) -> None:
    env.add_tenant("hello")
    env.add_tenant("evil", sign=False)
    env.add_tenant("frozen")
    cordoned = check("cordon", out(env, "cordon", "frozen", "--reason", "incident 7"))
    assert cordoned["cordoned"] is True and cordoned["reason"] == "incident 7"
    check("cordon", out(env, "cordon", "spare", "--reason", "x"))
    assert check("cordon", out(env, "uncordon", "spare"))["cordoned"] is False

    runs = check("run", out(env, "run", "--no-dashboard", code=1))
    by = {r["tenant"]: r for r in runs}
    assert by["hello"]["code"] == "OK" and isinstance(by["hello"]["run_id"], str)
    assert by["hello"]["audit_seq"] is not None and by["hello"]["wall_ms"] > 0
    for tenant, code in (("evil", "ENVELOPE_MALFORMED"), ("frozen", "CORDONED")):
        assert by[tenant]["code"] == code
        assert all(by[tenant][k] is None for k in (*NEVER_RAN, "audit_seq")), by[tenant]
    # A denied run whose key is known still names it (a string; "" when nothing is known).
    assert by["frozen"]["key_id"] == env.publisher.key_id and by["evil"]["key_id"] == ""

    check("verify", out(env, "verify", code=1))
    rows = check("runs", out(env, "runs"))
    assert [r["run_id"] for r in rows] == [by["hello"]["run_id"]]
    denied_rows = check("runs-denied", out(env, "runs", "--denied"))
    # newest first: the verify just above (evil), then run's verify (evil) and cordon (frozen)
    assert [(r["tenant"], r["code"], r["event"]) for r in denied_rows] == [
        ("evil", "ENVELOPE_MALFORMED", "verify"),  # `nightcore verify` just above
        ("frozen", "CORDONED", "admission_denied"),  # the run: cordon ...
        ("evil", "ENVELOPE_MALFORMED", "verify"),  # ... and the failed verification
    ]
    assert [r["tenant"] for r in out(env, "runs", "--denied", "--tenant", "frozen")] == ["frozen"]
    assert len(out(env, "runs", "--denied", "--limit", "1")) == 1
    shown = check("runs-show", out(env, "runs", "show", by["hello"]["run_id"]))
    assert shown["attestation"]["verified"] is True
    check("runs-logs", out(env, "runs", "logs", by["hello"]["run_id"]))
    keys = check("trust-list", out(env, "trust", "list"))
    assert {k["key_id"] for k in keys} == {env.publisher.key_id, env.maintainer.key_id}
    assert all("keyid" not in k for k in keys)
    check("audit-checkpoint", out(env, "audit", "checkpoint"))
    assert check("audit-verify", out(env, "audit", "verify"))["ok"] is True
    check("doctor", out(env, "doctor"))

    bundle = tmp_path / "proof.tar.gz"
    assert env.cli("proof", "export", "--out", str(bundle)).code == 0
    pem = str(env.ws / "node.pub.pem")
    assert check("proof-verify", out(env, "proof", "verify", str(bundle), "--key", pem))["ok"]
    forensic = tmp_path / "incident.tar.gz"
    assert env.cli("forensics", "export", "--tenant", "hello", "--out", str(forensic)).code == 0
    assert check("proof-verify", out(env, "forensics", "verify", str(forensic), "--key", pem))["ok"]
    keys = check("node-key-list", out(env, "node-key", "list"))
    assert keys["rotated"] is False and keys["keys"][0]["active"] is True

    # Error objects: a usage error (exit 2) and a refusal with a code.
    assert check("error", out(env, "runs", "--limit", "0", code=2))["code"] == "USAGE"
    assert check("error", out(env, "run", "nope", code=2))["code"] == "TENANT_NOT_FOUND"

    assert check("revocations-list", out(env, "revocations", "list"))["version"] == 0
    revoke = (
        *("revoke", "key", env.publisher.key_id, "--key", str(env.maintainer.private_path)),
        *("--reason", "stolen laptop"),
    )
    assert env.cli(*revoke).code == 0
    listed = check("revocations-list", out(env, "revocations", "list"))
    assert [k["key_id"] for k in listed["keys"]] == [env.publisher.key_id]
    assert check("trust-list", out(env, "trust", "list"))[0]["state"] == "revoked"
    (denied,) = check("run", out(env, "run", "--no-dashboard", "hello", code=1))
    assert denied["code"] != "OK" and all(denied[k] is None for k in NEVER_RAN)


def test_a_failed_audit_verify_matches_its_schema(env: Env) -> None:
    env.add_tenant("hello")
    assert env.cli("run", "--no-dashboard").code == 0
    log = env.ws / "state" / "audit" / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    del lines[2]
    log.write_bytes(b"".join(lines))
    report = check("audit-verify", out(env, "audit", "verify", code=1))
    assert report["ok"] is False and report["code"] == "AUDIT_SEQ_GAP" and report["seq"] == 2


def test_node_status_and_a_run_through_the_node_match(env: Env) -> None:
    env.add_tenant("hello")
    node = NodeProcess(env.ws)
    try:
        status = check("node-status", out(env, "node", "status"))
        assert status["pool"]["size"] == 2
        (run,) = check("run", out(env, "run", "--no-dashboard"))
        assert run["code"] == "OK"
    finally:
        assert node.stop() == 0


@pytest.fixture
def console(env: Env) -> tuple[TestClient, str]:
    ws = NodeContext(env.ws)
    token = TokenStore(ws).create(parse_expires("1h")).token
    return TestClient(create_app(ws, rate_limit=5), base_url="http://127.0.0.1:8700"), token


def test_console_api_uses_the_cli_shapes(env: Env, console: tuple[TestClient, str]) -> None:
    client, token = console
    env.add_tenant("hello")
    env.add_tenant("evil", sign=False)
    env.add_tenant("frozen")
    cordoned = check("cordon", out(env, "cordon", "frozen", "--reason", "incident 7"))
    assert cordoned["cordoned"] is True and cordoned["reason"] == "incident 7"
    check("cordon", out(env, "cordon", "spare", "--reason", "x"))
    assert check("cordon", out(env, "uncordon", "spare"))["cordoned"] is False
    res = client.post(
        "/api/run",
        json={"tenants": ["evil", "frozen", "hello"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert res.status_code == 200
    body = check("api-run", res.json())
    by = {r["tenant"]: r for r in body["runs"]}
    assert by["hello"]["code"] == "OK" and by["frozen"]["code"] == "CORDONED"
    assert all(by[t][k] is None for t in ("evil", "frozen") for k in NEVER_RAN)
    api_rows = check("api-runs", client.get("/api/runs").json())["runs"]
    assert api_rows == check("runs", out(env, "runs"))
