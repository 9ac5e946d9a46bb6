"""Night Mesh's configuration, names and signed change documents, without a server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nightcore import app
from nightcore.errors import NightCoreError
from nightcore.mesh.config import MeshConfig, load_credentials, parse_servers
from nightcore.mesh.documents import CHANGE_PAYLOAD_TYPE, Change, parse_change, sign_change
from nightcore.mesh.names import Names
from nightcore.trust.envelope import sign_payload
from nightcore.trust.keys import load_signer
from tests.conftest import Env


def _code(fn: object, *args: object, **kw: object) -> str:
    assert callable(fn)
    with pytest.raises(NightCoreError) as exc:
        fn(*args, **kw)
    assert "\n" not in exc.value.message
    return exc.value.code


def test_names_come_from_the_prefix_and_streams_have_no_dots() -> None:
    n = Names("acme-prod")
    assert n.trust_stream == "acme-prod-trust"
    assert n.trust_subjects == "acme-prod.trust.>"
    assert n.nodes_bucket == "acme-prod-nodes"
    assert n.inbox_prefix("edge-1") == "_INBOX.acme-prod.edge-1"
    for name in (n.trust_stream, n.nodes_bucket, n.work_stream, n.audit_stream):
        assert "." not in name
    for bad in ("", "Acme", "a.b", "a*", "-a", "a-", "a" * 65, "a b", "a>"):
        assert _code(Names, bad) == "MESH_CONFIG_INVALID"
    assert _code(n.node_subject, "x.y") == "MESH_CONFIG_INVALID"


def test_server_urls_are_checked() -> None:
    assert parse_servers("nats://h:4222, tls://h2:4443") == ("nats://h:4222", "tls://h2:4443")
    for bad in ("", "http://h:1", "nats://h", "nats://u:p@h:1", "nats://h:1/x", "nats://h:99999"):
        assert _code(parse_servers, bad) == "MESH_CONFIG_INVALID", bad


def test_credentials_files(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.write_text("node1:pa:ss\n")
    up.chmod(0o600)
    c = load_credentials(up)
    assert (c.kind, c.user, c.password) == ("user-password", "node1", "pa:ss")
    assert "pa:ss" not in repr(c)
    seed = tmp_path / "seed.nk"
    seed.write_text("SUAGIEYDXD4ZEMZKBHX4MKGVMYSOWJNEAAYJQSHCVQG6ZPAI5SYSRZH2ME\n")
    seed.chmod(0o600)
    assert load_credentials(seed).kind == "nkey"
    creds = tmp_path / "u.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\nxx\n------END NATS USER JWT------\n")
    creds.chmod(0o600)
    assert load_credentials(creds).kind == "creds"
    up.chmod(0o640)
    assert _code(load_credentials, up) == "MESH_CONFIG_INVALID"
    junk = tmp_path / "junk"
    junk.write_text("no colon here\n")
    junk.chmod(0o600)
    assert _code(load_credentials, junk) == "MESH_CONFIG_INVALID"
    cfg = MeshConfig.from_options("nats://h:1", node_name="n1", creds=str(creds))
    assert cfg.describe()["auth"] == "creds"
    assert _code(MeshConfig.from_options, "nats://h:1", tls_cert=str(creds)) == (
        "MESH_CONFIG_INVALID"
    )
    assert _code(MeshConfig.from_options, "nats://h:1", tls_ca=str(tmp_path / "no")) == (
        "MESH_CONFIG_INVALID"
    )


def _change(**over: object) -> Change:
    fields: dict[str, object] = {
        "version": 3,
        "issued": "2026-12-05T12:00:00Z",
        "op": "cordon",
        "target": "hello",
        "reason": "r",
    }
    fields.update(over)
    return Change(**fields)  # type: ignore[arg-type]


def test_change_documents_verify_only_under_a_trusted_maintainer(env: Env) -> None:
    ctx = app.open_context(str(env.ws))
    reg = ctx.load_registry()
    rl = ctx.load_revocations(reg)
    maint = load_signer(str(env.maintainer.private_path))
    good = sign_change(_change(), maint)
    change = parse_change(good, reg, rl, fips=False)
    assert (change.op, change.target, change.version) == ("cordon", "hello", 3)
    assert change.signer == env.maintainer.key_id
    # A publisher key (trusted, wrong role), tampering, unknown op, extra fields, bad target.
    alice = load_signer(str(env.publisher.private_path))
    assert _code(parse_change, sign_change(_change(), alice), reg, rl, fips=False) == (
        "MESH_DOC_SIGNER_INVALID"
    )
    assert _code(parse_change, good.replace(b'"sig":"', b'"sig":"AA'), reg, rl, fips=False) in (
        "SIGNATURE_INVALID",
        "MESH_DOC_INVALID",
    )
    for bad in (
        _change(op="explode"),
        _change(target="../etc"),
        _change(op="node_cordon", target="Node.1"),
        _change(op="key_remove", target="abc"),
        _change(version=0),
    ):
        assert _code(parse_change, sign_change(bad, maint), reg, rl, fips=False) == (
            "MESH_DOC_INVALID"
        )
    from nightcore.canonical import canonical

    extra = canonical({**_change().payload(), "more": 1})
    data = sign_payload(extra, [maint], CHANGE_PAYLOAD_TYPE)
    assert _code(parse_change, data, reg, rl, fips=False) == "MESH_DOC_INVALID"
    assert _code(parse_change, b"x" * (1024 * 1024 + 1), reg, rl, fips=False) == (
        "MESH_DOC_INVALID"
    )
    # A key_add must name the key it carries.
    pem = env.publisher.public_path.read_text()
    key = {"public_pem": pem, "role": "publisher", "scope": "*", "name": "a", "expires": None}
    other = hashlib.sha256(b"x").hexdigest()
    assert _code(
        parse_change,
        sign_change(_change(op="key_add", target=other, key=key), maint),
        reg,
        rl,
        fips=False,
    ) == ("MESH_DOC_INVALID")
    ok = parse_change(
        sign_change(_change(op="key_add", target=env.publisher.key_id, key=key), maint),
        reg,
        rl,
        fips=False,
    )
    assert ok.key["public_pem"] == pem


def test_a_revoked_maintainer_signs_no_change(env: Env) -> None:
    ctx = app.open_context(str(env.ws))
    app.revoke(
        ctx,
        kind="key",
        subject=env.maintainer.key_id,
        key=str(env.maintainer.private_path),
        reason="lost",
    )
    reg = ctx.load_registry()
    data = sign_change(_change(), load_signer(str(env.maintainer.private_path)))
    assert _code(parse_change, data, reg, ctx.load_revocations(reg), fips=False) == (
        "MESH_DOC_SIGNER_INVALID"
    )
