"""Trust UX through the CLI: KEY_UNTRUSTED says who signed and what to run, `trust list` marks
revoked keys, `revoke key` takes a unique key-id prefix, `revocations list` shows the list."""

from __future__ import annotations

import hashlib
import json
import types

import pytest

from nightcore.app.trust import revocations_list
from nightcore.context import NodeContext
from nightcore.trust.keys import GeneratedKey
from tests.conftest import CliResult, Env


def _revoke_key(env: Env, subject: str, reason: str = "stolen laptop") -> CliResult:
    return env.cli(
        "revoke",
        "key",
        subject,
        "--key",
        str(env.maintainer.private_path),
        "--reason",
        reason,
        "--json",
    )


def test_key_untrusted_names_the_signer_and_the_command(
    env: Env, keys_dir: dict[str, GeneratedKey]
) -> None:
    mallory = keys_dir["mallory"]
    env.add_tenant("evil", key=mallory)
    res = env.cli("verify", "evil", "--json")
    assert res.code == 1
    [row] = res.json()
    assert row["code"] == "KEY_UNTRUSTED"
    assert mallory.key_id in row["reason"]
    assert "nightcore trust add-key PUBKEY.pem --scope 'evil'" in row["reason"]
    # following the advice works
    assert env.cli("trust", "add-key", str(mallory.public_path), "--scope", "evil").code == 0
    assert env.cli("verify", "evil", "--json").json()[0]["code"] == "OK"


def test_key_untrusted_does_not_echo_a_hostile_key_id(env: Env) -> None:
    d = env.add_tenant("odd")
    path = d / "module.intoto.dsse.json"
    envelope = json.loads(path.read_text())
    envelope["signatures"][0]["keyid"] = "'; rm -rf / #\x1b[31m"
    path.write_text(json.dumps(envelope))
    [row] = env.cli("verify", "odd", "--json").json()
    assert row["code"] == "KEY_UNTRUSTED"
    assert "rm -rf" not in row["reason"] and "\x1b" not in row["reason"]
    assert "no usable key id in the envelope" in row["reason"]


def test_revoke_by_prefix_then_trust_list_marks_it(env: Env) -> None:
    kid = env.publisher.key_id
    res = _revoke_key(env, kid[:10].upper())
    assert res.code == 0, res.err
    assert res.json()["revoked"] == kid
    rows = {k["key_id"]: k for k in env.cli("trust", "list", "--json").json()}
    assert rows[kid]["state"] == "revoked"
    assert rows[kid]["revoked"]["reason"] == "stolen laptop"
    assert rows[env.maintainer.key_id]["state"] == "trusted"
    assert rows[env.maintainer.key_id]["revoked"] is None
    table = env.cli("trust", "list").out
    line = next(ln for ln in table.splitlines() if kid[:16] in ln)
    assert "revoked" in line
    maint_line = next(ln for ln in table.splitlines() if env.maintainer.key_id[:16] in ln)
    assert "revoked" not in maint_line and "trusted" in maint_line


def test_revoke_prefix_refusals(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = {p.name: p.read_bytes() for p in (env.ws / "trust").iterdir()}
    res = _revoke_key(env, "00000000")
    assert res.code == 2 and "error[KEY_NOT_FOUND]" in res.err
    assert res.json() == {"ok": False, "code": "KEY_NOT_FOUND", "error": res.json()["error"]}
    res = _revoke_key(env, "abc123")  # too short
    assert res.code == 2 and "error[USAGE]" in res.err
    res = _revoke_key(env, "not-hex-at-all")
    assert res.code == 2 and "error[USAGE]" in res.err
    # two registry keys sharing the prefix: ambiguous, both named
    a, b = "deadbeef" + "1" * 56, "deadbeef" + "2" * 56
    fake = types.SimpleNamespace(
        keys=[types.SimpleNamespace(key_id=a), types.SimpleNamespace(key_id=b)]
    )
    monkeypatch.setattr(NodeContext, "load_registry", lambda self: fake)
    res = _revoke_key(env, "deadbeef")
    assert res.code == 2 and "error[ID_AMBIGUOUS]" in res.err
    assert a in res.err and b in res.err
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (env.ws / "trust").iterdir()} == snapshot


def test_revocations_list(env: Env) -> None:
    empty = env.cli("revocations", "list", "--json")
    assert empty.code == 0
    assert empty.json() == {"version": 0, "issued": "", "signer": "", "keys": [], "modules": []}
    assert "nothing is revoked" in env.cli("revocations", "list").err
    d = env.add_tenant("hello")
    digest = hashlib.sha256((d / "module.wasm").read_bytes()).hexdigest()
    assert _revoke_key(env, env.publisher.key_id[:8], "key leaked").code == 0
    res = env.cli(
        "revoke",
        "module",
        digest,
        "--key",
        str(env.maintainer.private_path),
        "--reason",
        "CVE-2026-0001",
    )
    assert res.code == 0, res.err
    out = env.cli("revocations", "list", "--json").json()
    assert out["version"] == 2
    assert out["signer"] == env.maintainer.key_id
    assert [(k["key_id"], k["name"], k["reason"]) for k in out["keys"]] == [
        (env.publisher.key_id, "alice", "key leaked")
    ]
    assert [(m["sha256"], m["reason"]) for m in out["modules"]] == [(digest, "CVE-2026-0001")]
    assert all(k["revoked_at"] for k in out["keys"] + out["modules"])
    table = env.cli("revocations", "list")
    assert table.code == 0
    assert "key leaked" in table.out and "CVE-2026-0001" in table.out and digest in table.out
    assert "version 2" in table.err and env.maintainer.key_id in table.err
    # the facade agrees
    rl, names = revocations_list(NodeContext.open(str(env.ws)))
    assert rl.version == 2 and names == {env.publisher.key_id: "alice"}
