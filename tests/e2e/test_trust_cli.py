"""End to end: init -> keygen -> trust add-key -> sign -> verify, then every tampering.

Each refusal must carry its stable code, append exactly one audit line per decision, leave
trust state untouched, and keep the audit chain verifiable.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from nightcore import app
from nightcore.audit.log import verify_chain
from nightcore.canonical import canonical
from nightcore.context import NodeContext
from nightcore.module.verify import MANIFEST_PREDICATE_TYPE
from nightcore.trust.envelope import make_statement, sign_payload
from nightcore.trust.keys import GeneratedKey, load_signer
from tests.conftest import HELLO_WAT, Env, run_cli_subprocess, wat_module


def verify_one(env: Env, tenant: str) -> dict[str, object]:
    before = len(env.audit_lines())
    res = env.cli("verify", tenant, "--json")
    rows = res.json()
    assert len(rows) == 1
    after = env.audit_lines()
    assert len(after) == before + 1, "one audit line per decision"
    assert after[-1]["event"] == "verify" and after[-1]["data"]["code"] == rows[0]["code"]
    raw = (env.ws / "state/audit/audit.jsonl").read_bytes()
    verify_chain(iter(raw.splitlines(keepends=True)))
    assert res.code == (0 if rows[0]["ok"] else 1)
    return rows[0]  # type: ignore[no-any-return]


def trust_snapshot(env: Env) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (env.ws / "trust").iterdir()}


def test_full_flow_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import Cli

    cli = Cli(capsys, None)
    ws = tmp_path / "ws"
    assert cli("init", str(ws), "--json").code == 0
    res = cli("keygen", "--name", "pub", "--out", str(tmp_path / "k"), "--json")
    key = res.json()
    priv = Path(key["private_key"])
    assert priv.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in priv.read_bytes()
    # keygen never overwrites
    again = cli("keygen", "--name", "pub", "--out", str(tmp_path / "k"))
    assert again.code == 2 and "error[KEY_EXISTS]" in again.err
    tdir = ws / "modules" / "hello"
    tdir.mkdir(parents=True)
    (tdir / "module.wasm").write_bytes(wat_module(HELLO_WAT))
    (tdir / "manifest.toml").write_text('schema = 1\ntenant = "hello"\nversion = "1.0.0"\n')
    assert cli("sign", str(tdir), "--key", str(priv)).code == 0
    cli.ws = ws
    assert cli("trust", "add-key", key["public_key"], "--scope", "hel*").code == 0
    res = cli("verify", "--json")
    assert res.code == 0
    [row] = res.json()
    assert row["code"] == "OK" and row["key_id"] == key["key_id"]
    assert row["module_sha256"] == hashlib.sha256((tdir / "module.wasm").read_bytes()).hexdigest()
    assert cli("audit", "verify").code == 0
    listed = cli("trust", "list", "--json").json()
    assert [k["key_id"] for k in listed] == [key["key_id"]]


def test_ok_then_one_byte_of_wasm_changed(env: Env) -> None:
    d = env.add_tenant("hello")
    assert verify_one(env, "hello")["code"] == "OK"
    wasm = bytearray((d / "module.wasm").read_bytes())
    wasm[-1] ^= 1
    (d / "module.wasm").write_bytes(bytes(wasm))
    assert verify_one(env, "hello")["code"] == "DIGEST_MISMATCH"


@pytest.mark.parametrize("content", [b"", b"{", b"garbage\x00\xff", b"[]", b'{"payload": 1}'])
def test_malformed_envelopes(env: Env, content: bytes) -> None:
    d = env.add_tenant("hello")
    (d / "module.intoto.dsse.json").write_bytes(content)
    assert verify_one(env, "hello")["code"] == "ENVELOPE_MALFORMED"


def test_truncated_envelope(env: Env) -> None:
    d = env.add_tenant("hello")
    p = d / "module.intoto.dsse.json"
    p.write_bytes(p.read_bytes()[:50])
    assert verify_one(env, "hello")["code"] == "ENVELOPE_MALFORMED"


def test_missing_envelope(env: Env) -> None:
    env.add_tenant("hello", sign=False)
    assert verify_one(env, "hello")["code"] == "ENVELOPE_MALFORMED"


def test_envelope_for_another_payload_type(env: Env) -> None:
    d = env.add_tenant("hello")
    p = d / "module.intoto.dsse.json"
    doc = json.loads(p.read_bytes())
    doc["payloadType"] = "application/vnd.example+json"
    p.write_text(json.dumps(doc))
    assert verify_one(env, "hello")["code"] == "ENVELOPE_MALFORMED"


def test_payload_edited_after_signing(env: Env) -> None:
    d = env.add_tenant("hello", "[limits]\nfuel = 1000000\n")
    p = d / "module.intoto.dsse.json"
    doc = json.loads(p.read_bytes())
    stmt = json.loads(base64.b64decode(doc["payload"]))
    stmt["predicate"]["limits"]["fuel"] = 999_999_999
    doc["payload"] = base64.b64encode(canonical(stmt)).decode()
    p.write_text(json.dumps(doc))
    assert verify_one(env, "hello")["code"] == "SIGNATURE_INVALID"


def test_unregistered_key(env: Env, keys_dir: dict[str, GeneratedKey]) -> None:
    env.add_tenant("hello", key=keys_dir["mallory"])
    row = verify_one(env, "hello")
    assert row["code"] == "KEY_UNTRUSTED"


def test_out_of_scope_key(env: Env, keys_dir: dict[str, GeneratedKey]) -> None:
    ws = NodeContext(env.ws)
    app.trust_add_key(ws, keys_dir["bob"].public_path, scope="bob-*")
    env.add_tenant("hello", key=keys_dir["bob"])
    assert verify_one(env, "hello")["code"] == "KEY_OUT_OF_SCOPE"
    env.add_tenant("bob-app", key=keys_dir["bob"])
    assert verify_one(env, "bob-app")["code"] == "OK"


def test_expired_key(env: Env, keys_dir: dict[str, GeneratedKey]) -> None:
    ws = NodeContext(env.ws)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    app.trust_add_key(ws, keys_dir["bob"].public_path, scope="*", expires=soon)
    env.add_tenant("hello", key=keys_dir["bob"])
    assert verify_one(env, "hello")["code"] == "OK"
    # Time passes: the registry says the key expired yesterday.
    reg = json.loads((env.ws / "trust/registry.json").read_text())
    for k in reg["keys"]:
        if k["keyid"] == keys_dir["bob"].key_id:
            k["expires"] = "2020-01-01T00:00:00Z"
    (env.ws / "trust/registry.json").write_text(json.dumps(reg))
    assert verify_one(env, "hello")["code"] == "KEY_EXPIRED"


def test_expires_in_the_past_is_refused_at_add(env: Env, keys_dir: dict[str, GeneratedKey]) -> None:
    res = env.cli(
        "trust",
        "add-key",
        str(keys_dir["bob"].public_path),
        "--scope",
        "*",
        "--expires",
        "2020-01-01",
    )
    assert res.code == 2 and "error[USAGE]" in res.err


def test_manifest_widened_after_signing(env: Env) -> None:
    d = env.add_tenant("hello", '[capabilities]\nenv = { A = "1" }\n')
    (d / "manifest.toml").write_text(
        'schema = 1\ntenant = "hello"\nversion = "1.0.0"\n'
        '[capabilities]\nenv = { A = "1", SECRET = "x" }\n'
    )
    row = verify_one(env, "hello")
    assert row["code"] == "MANIFEST_MISMATCH"


@pytest.mark.parametrize(
    "manifest",
    [
        'schema = 1\ntenant = "hello"\nversion = "1.0.0"\nversion = "2.0.0"\n',
        'schema = 1\ntenant = "hello"\nversion = "1.0.0"\nsurprise = true\n',
        'schema = 1\ntenant = "hello"\nversion = "1.0.0"\n[limits]\nfuel = "lots"\n',
        'schema = 1\ntenant = "hello"\nversion = "1.0.0"\n[limits]\nfuel = 1\n',
        'schema = 1\ntenant = "hello"\nversion = "1.0.0"\n[[capabilities.fs]]\npath = "/etc"\n',
        'schema = 1\ntenant = "hello"\nversion = "1.0.0"\n[[capabilities.fs]]\npath = "a/../.."\n',
        'schema = 2\ntenant = "hello"\nversion = "1.0.0"\n',
    ],
)
def test_invalid_manifests_are_refused_at_sign_and_verify(env: Env, manifest: str) -> None:
    d = env.add_tenant("hello")
    signed = (d / "module.intoto.dsse.json").read_bytes()
    (d / "manifest.toml").write_text(manifest)
    res = env.cli("sign", str(d), "--key", str(env.publisher.private_path))
    assert res.code == 2 and "error[MANIFEST_INVALID]" in res.err
    assert (d / "module.intoto.dsse.json").read_bytes() == signed, "nothing written"
    assert verify_one(env, "hello")["code"] == "MANIFEST_INVALID"


def test_huge_manifest_is_refused_without_reading_it(env: Env) -> None:
    d = env.add_tenant("hello")
    with (d / "manifest.toml").open("wb") as fh:
        fh.truncate(100 * 1024 * 1024)  # sparse: 100 MB that costs nothing on disk
    assert verify_one(env, "hello")["code"] == "MANIFEST_INVALID"


def _sign_raw(env: Env, tenant_dir: Path, wasm: bytes, predicate: dict[str, object]) -> None:
    stmt = make_statement(
        [("module.wasm", hashlib.sha256(wasm).hexdigest())], MANIFEST_PREDICATE_TYPE, predicate
    )
    signer = load_signer(str(env.publisher.private_path))
    (tenant_dir / "module.wasm").write_bytes(wasm)
    (tenant_dir / "module.intoto.dsse.json").write_bytes(sign_payload(canonical(stmt), [signer]))


def test_non_wasm_module(env: Env) -> None:
    d = env.add_tenant("hello")
    (d / "module.wasm").write_bytes(b"#!/bin/sh\necho pwned\n")
    res = env.cli("sign", str(d), "--key", str(env.publisher.private_path))
    assert "error[MODULE_MALFORMED]" in res.err
    (d / "manifest.toml").unlink()
    _sign_raw(
        env, d, b"#!/bin/sh\necho pwned\n", {"schema": 1, "tenant": "hello", "version": "1.0.0"}
    )
    assert verify_one(env, "hello")["code"] == "MODULE_MALFORMED"


def test_symlinked_module_outside_the_tenant_dir(env: Env, tmp_path: Path) -> None:
    d = env.add_tenant("hello")
    outside = tmp_path / "outside.wasm"
    shutil.move(d / "module.wasm", outside)
    os.symlink(outside, d / "module.wasm")
    assert verify_one(env, "hello")["code"] == "PACKAGE_INVALID"


def test_symlinked_tenant_dir(env: Env, tmp_path: Path) -> None:
    d = env.add_tenant("hello")
    shutil.move(d, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", d)
    assert verify_one(env, "hello")["code"] == "PACKAGE_INVALID"


@pytest.mark.parametrize(
    "name", ["$(touch pwned)", "<img src=x onerror=alert(1)>", "Tenant;rm -rf", "\x1b[31mred"]
)
def test_tenant_dir_names_with_metacharacters(env: Env, name: str) -> None:
    d = env.ws / "modules" / name
    d.mkdir(parents=True)
    (d / "module.wasm").write_bytes(wat_module(HELLO_WAT))
    res = env.cli("verify")
    assert res.code == 1
    assert "TENANT_NAME_INVALID" in res.out
    assert "\x1b" not in res.out
    rows = env.cli("verify", "--json").json()
    assert rows[0]["code"] == "TENANT_NAME_INVALID"
    last = env.audit_lines()[-1]
    assert "tenant" not in last and last["data"]["code"] == "TENANT_NAME_INVALID"
    assert not (env.root / "pwned").exists()


def test_moved_to_another_tenant_dir(env: Env) -> None:
    d = env.add_tenant("hello")
    other = env.ws / "modules" / "other"
    shutil.copytree(d, other)
    (other / "manifest.toml").unlink()
    assert verify_one(env, "other")["code"] == "MANIFEST_MISMATCH"


def test_policy_denies_capabilities(env: Env) -> None:
    env.add_tenant("netty", '[capabilities]\nnet = ["example.org:443"]\n')
    row = verify_one(env, "netty")
    assert row["code"] == "CAPABILITY_DENIED" and "network" in str(row["reason"])
    env.add_tenant("greedy", "[limits]\nmemory_bytes = 4294967296\n")
    assert verify_one(env, "greedy")["code"] == "CAPABILITY_DENIED"


def test_validity_window(env: Env) -> None:
    env.add_tenant("future", "not_before = 2999-01-01T00:00:00Z\n")
    assert verify_one(env, "future")["code"] == "MANIFEST_NOT_YET_VALID"
    env.add_tenant("past", "expires = 2001-01-01T00:00:00Z\n")
    assert verify_one(env, "past")["code"] == "MANIFEST_EXPIRED"


def test_revoke_key_and_module(env: Env) -> None:
    d = env.add_tenant("hello")
    env.add_tenant("world")
    sha = hashlib.sha256((d / "module.wasm").read_bytes()).hexdigest()
    res = env.cli(
        "revoke",
        "module",
        sha,
        "--key",
        str(env.maintainer.private_path),
        "--reason",
        "CVE-2026-0001",
    )
    assert res.code == 0, res.err
    # both tenants share the same module bytes: both are denied
    assert verify_one(env, "hello")["code"] == "MODULE_REVOKED"
    res = env.cli(
        "revoke",
        "key",
        env.publisher.key_id,
        "--key",
        str(env.maintainer.private_path),
        "--reason",
        "stolen laptop",
    )
    assert res.code == 0, res.err
    assert verify_one(env, "world")["code"] == "KEY_REVOKED"
    events = [e["event"] for e in env.audit_lines()]
    assert "module_revoked" in events and "key_revoked" in events


def test_revocation_list_signed_by_a_publisher_key_is_refused(env: Env) -> None:
    before = trust_snapshot(env)
    res = env.cli(
        "revoke", "key", "a" * 64, "--key", str(env.publisher.private_path), "--reason", "x"
    )
    assert res.code == 2 and "error[REVOCATION_SIGNER_INVALID]" in res.err
    assert trust_snapshot(env) == before
    assert env.audit_lines()[-1]["event"] == "revocation_refused"


def test_replayed_older_revocation_list_is_refused(env: Env, tmp_path: Path) -> None:
    env.add_tenant("hello")
    mk = str(env.maintainer.private_path)
    assert env.cli("revoke", "key", "b" * 64, "--key", mk, "--reason", "v1").code == 0
    v1 = (env.ws / "trust/revocations.json").read_bytes()
    (tmp_path / "v1.json").write_bytes(v1)
    assert env.cli("revoke", "key", env.publisher.key_id, "--key", mk, "--reason", "v2").code == 0
    v2 = (env.ws / "trust/revocations.json").read_bytes()
    # Import path: an older list is refused and nothing changes.
    res = env.cli("trust", "import-revocations", str(tmp_path / "v1.json"))
    assert res.code == 2 and "error[REVOCATION_ROLLBACK]" in res.err
    assert (env.ws / "trust/revocations.json").read_bytes() == v2
    assert env.audit_lines()[-1]["event"] == "revocation_refused"
    # File swap: an attacker with write access to trust/ replays v1 to un-revoke the key.
    (env.ws / "trust/revocations.json").write_bytes(v1)
    res = env.cli("verify", "hello")
    assert res.code == 2 and "error[REVOCATION_ROLLBACK]" in res.err
    # Deleting the list does not un-revoke either.
    (env.ws / "trust/revocations.json").unlink()
    res = env.cli("verify", "hello")
    assert res.code == 2 and "error[REVOCATION_ROLLBACK]" in res.err


def test_unsigned_revocation_list_is_refused(env: Env) -> None:
    (env.ws / "trust/revocations.json").write_text('{"keys": []}')
    res = env.cli("verify")
    assert res.code == 2 and "error[REVOCATION_INVALID]" in res.err


def test_fips_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys_dir: dict[str, GeneratedKey]
) -> None:
    from tests.conftest import Cli

    ws = app.init_workspace(tmp_path / "ws", fips=True)
    cli = Cli(capsys, ws.root)
    res = cli("trust", "add-key", str(keys_dir["alice"].public_path), "--scope", "*")
    assert res.code == 2 and "error[ALGORITHM_NOT_ALLOWED]" in res.err
    p256 = app.keygen("p256", tmp_path / "k", b"fips-passphrase", fips=True)
    assert p256.scheme == "ecdsa-sha2-nistp256"
    os.environ["NIGHTCORE_KEY_PASSPHRASE"] = "fips-passphrase"
    assert cli("trust", "add-key", str(p256.public_path), "--scope", "*").code == 0
    d = tmp_path / "ws/modules/hello"
    d.mkdir()
    (d / "module.wasm").write_bytes(wat_module(HELLO_WAT))
    (d / "manifest.toml").write_text('schema = 1\ntenant = "hello"\nversion = "1.0.0"\n')
    assert cli("sign", str(d), "--key", str(p256.private_path), "--fips").code == 0
    assert cli("verify", "--json").json()[0]["code"] == "OK"
    # An Ed25519 signature is refused in FIPS mode even by a key trusted before FIPS was on.
    os.environ["NIGHTCORE_KEY_PASSPHRASE"] = "test-passphrase-not-secret"
    res = cli("sign", str(d), "--key", str(keys_dir["alice"].private_path), "--fips")
    assert "error[ALGORITHM_NOT_ALLOWED]" in res.err


def test_ed25519_signed_tenant_refused_with_fips_flag(env: Env) -> None:
    env.add_tenant("hello")
    res = env.cli("--fips", "verify", "--json")
    assert res.json()[0]["code"] == "ALGORITHM_NOT_ALLOWED"


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    res = run_cli_subprocess("-w", str(tmp_path), "verify")
    assert res.code == 2
    assert res.err.strip().startswith("error[WORKSPACE_NOT_FOUND]:")
    assert len(res.err.strip().splitlines()) == 1
    res = run_cli_subprocess("verify", "--json", "-w", str(tmp_path))
    assert json.loads(res.out)["code"] == "WORKSPACE_NOT_FOUND"
    res = run_cli_subprocess("nonsense")
    assert res.code == 2 and res.err.startswith("error[USAGE]")


def test_the_console_command_flushes_everything_and_keeps_exit_codes(env: Env) -> None:
    """`nightcore` exits without interpreter teardown (cli.main.run): piped output must still
    arrive whole, exit codes must be main()'s, and a closed pipe must not print a traceback."""
    import subprocess
    import sys

    for i in range(40):
        env.add_tenant(f"hello-{i:02d}")
    exe = Path(sys.executable).with_name("nightcore")
    p = subprocess.run(
        [str(exe), "-w", str(env.ws), "verify", "--json"], capture_output=True, timeout=120
    )
    assert p.returncode == 0 and len(json.loads(p.stdout)) == 40
    (env.ws / "modules" / "hello-00" / "module.wasm").write_bytes(b"\0asm\1\0\0\0tampered")
    res = run_cli_subprocess("-w", str(env.ws), "verify", "--json")
    assert res.code == 1 and {r["code"] for r in json.loads(res.out)} == {"OK", "DIGEST_MISMATCH"}
    for _ in range(4):  # > 64 KiB of audit lines: more than a pipe holds
        env.cli("verify")
    proc = subprocess.Popen(
        [str(exe), "-w", str(env.ws), "audit", "show", "--json", "--limit", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()  # the reader goes away while the writer still has output
    err = proc.stderr.read()
    assert proc.wait(timeout=120) in (0, 2) and b"Traceback" not in err


@pytest.mark.parametrize("subject", ["zz", "a" * 63, "g" * 64, "../" * 22])
def test_revoke_refuses_malformed_subjects_before_asking_for_a_key(env: Env, subject: str) -> None:
    before = trust_snapshot(env)
    res = env.cli("revoke", "module", subject, "--key", "/nonexistent", "--reason", "x")
    assert res.code == 2 and "error[USAGE]" in res.err
    assert trust_snapshot(env) == before


def test_parse_cache_sees_a_rewrite_that_keeps_size_and_mtime(env: Env) -> None:
    ws = NodeContext(env.ws)
    reg = env.ws / "trust" / "registry.json"
    assert ws.load_registry().keys[0].scope == "*"
    before = reg.stat()
    data = reg.read_bytes()
    forged = data.replace(b'"scope":"*"', b'"scope":"x"', 1)
    assert len(forged) == len(data) and forged != data
    reg.write_bytes(forged)
    os.utime(reg, ns=(before.st_atime_ns, before.st_mtime_ns))  # hide the edit
    assert ws.load_registry().keys[0].scope == "x"  # ctime moved: the cache misses
