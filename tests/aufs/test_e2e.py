"""The whole story through the CLI, against a real HTTP server on 127.0.0.1.

repo init with three maintainer keys -> tenant v1 published -> node updates and runs it ->
v2 signed by one key refused, by two installed -> downgrade to v1 refused -> dual-signed
override installs it (audited) -> root key rotation, node follows -> a revocation list
delivered through AUFS denies the tenant on the next run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nightcore.context import NodeContext
from nightcore.trust.keys import load_signer
from nightcore.trust.registry import RevocationList, sign_revocations
from tests.aufs.conftest import Maintainers, RepoServer, make_package, start_server
from tests.conftest import Env


@pytest.fixture
def repo_server(tmp_path: Path) -> Iterator[tuple[Path, RepoServer]]:
    repo = tmp_path / "repo"
    (repo / "public").mkdir(parents=True)
    srv = start_server(repo / "public")
    yield repo, srv
    srv.server.shutdown()
    srv.server.server_close()


def _events(env: Env, name: str) -> list[dict[str, Any]]:
    return [e for e in env.audit_lines() if e["event"] == name]


def _run(env: Env, tenant: str) -> tuple[int, dict[str, Any]]:
    res = env.cli("run", "--json", tenant)
    [row] = res.json()
    return res.code, row


def test_aufs_story(
    env: Env, maintainers: Maintainers, repo_server: tuple[Path, RepoServer], tmp_path: Path
) -> None:
    m = maintainers
    repo, srv = repo_server
    cli = env.cli
    r = ["--repo", str(repo)]

    # 1. Repository with three maintainer keys, 2-of-3 for root and targets.
    res = cli(
        "aufs", "repo", "init", str(repo), "--json",
        "--root-key", m.path("m1"), "--root-key", m.path("m2"), "--root-key", m.path("m3"),
        "--threshold", "2",
    )  # fmt: skip
    assert res.code == 0, res.err
    init = res.json()
    assert init["published"]["versions"]["root"] == 1
    assert (repo / "private" / "timestamp.key").stat().st_mode & 0o777 == 0o600

    # 2. The node bootstraps trust offline (pinned by the root's SHA-256) and names its mirror.
    root_json = repo / "public" / "metadata" / "1.root.json"
    res = cli(
        "aufs", "client", "init", str(root_json), "--expect-sha256", init["root_sha256"],
        "--metadata-url", srv.metadata_url, "--target-base-url", srv.target_url,
    )  # fmt: skip
    assert res.code == 0, res.err
    assert (env.ws / "aufs.toml").exists()

    # 3. Tenant v1, signed by two maintainers, reaches the node and runs.
    v1 = make_package(tmp_path / "pkgs", "hello", "1.0.0", env.publisher)
    assert cli("aufs", "repo", "add-target", str(v1), *r).code == 0
    for k in ("m1", "m2"):
        assert cli("aufs", "repo", "sign", "--role", "targets", "--key", m.path(k), *r).code == 0
    assert cli("aufs", "repo", "publish", *r).code == 0
    res = cli("aufs", "update", "--json")
    assert res.code == 0, res.err
    [o] = res.json()["outcomes"]
    assert (o["tenant"], o["version"], o["action"]) == ("hello", "1.0.0", "installed")
    code, row = _run(env, "hello")
    assert (code, row["code"]) == (0, "OK")

    # 4. v2 signed by one key: the repository refuses to publish it; the node keeps v1.
    v2 = make_package(tmp_path / "pkgs", "hello", "2.0.0", env.publisher)
    assert cli("aufs", "repo", "add-target", str(v2), *r).code == 0
    assert cli("aufs", "repo", "sign", "--role", "targets", "--key", m.path("m1"), *r).code == 0
    res = cli("aufs", "repo", "publish", *r)
    assert (
        res.code == 2
        and "error[AUFS_THRESHOLD]" in res.err
        and "signed by 1 distinct key(s), threshold 2" in res.err
    )
    res = cli("aufs", "update", "--json")
    assert res.json()["outcomes"][0]["action"] == "unchanged"
    # ...the same key signing again still counts once.
    assert cli("aufs", "repo", "sign", "--role", "targets", "--key", m.path("m1"), *r).code == 0
    assert "error[AUFS_THRESHOLD]" in cli("aufs", "repo", "publish", *r).err

    # 5. A second maintainer signs: v2 is installed, v1 kept aside.
    assert cli("aufs", "repo", "sign", "--role", "targets", "--key", m.path("m2"), *r).code == 0
    assert cli("aufs", "repo", "publish", *r).code == 0
    [o] = cli("aufs", "update", "--json").json()["outcomes"]
    assert (o["version"], o["action"], o["previous_version"]) == ("2.0.0", "installed", "1.0.0")
    assert (env.ws / "modules" / ".aufs-previous" / "hello-1.0.0" / "module.wasm").exists()
    assert _run(env, "hello")[1]["code"] == "OK"

    # 6. Downgrade to v1 (even threshold-signed) is refused without an override.
    assert cli("aufs", "repo", "add-target", str(v1), *r).code == 0
    for k in ("m1", "m2"):
        assert cli("aufs", "repo", "sign", "--role", "targets", "--key", m.path(k), *r).code == 0
    assert cli("aufs", "repo", "publish", *r).code == 0
    res = cli("aufs", "update", "--json")
    assert res.code == 1
    [o] = res.json()["outcomes"]
    assert o["code"] == "DOWNGRADE_REFUSED" and "no dual-signed override" in o["reason"]
    assert 'version = "2.0.0"' in (env.ws / "modules/hello/manifest.toml").read_text()

    # 7. One maintainer's override is not enough; two distinct keys are.
    ov = ["aufs", "repo", "override", "hello", "1.0.0", *r]
    assert cli(*ov, "--key", m.path("m1"), "--reason", "2.0.0 regressed").code == 0
    for k in ("m1", "m2"):
        assert cli("aufs", "repo", "sign", "--role", "targets", "--key", m.path(k), *r).code == 0
    assert cli("aufs", "repo", "publish", *r).code == 0
    [o] = cli("aufs", "update", "--json").json()["outcomes"]
    assert o["code"] == "DOWNGRADE_REFUSED" and "1 of the 2 distinct" in o["reason"]
    res = cli(*ov, "--key", m.path("m2"), "--json")
    assert res.json()["signatures"] == 2
    for k in ("m1", "m2"):
        assert cli("aufs", "repo", "sign", "--role", "targets", "--key", m.path(k), *r).code == 0
    assert cli("aufs", "repo", "publish", *r).code == 0
    res = cli("aufs", "update", "--json")
    assert res.code == 0, res.out
    [o] = res.json()["outcomes"]
    assert (o["version"], o["action"]) == ("1.0.0", "installed")
    [used] = _events(env, "aufs_downgrade_override")
    assert used["tenant"] == "hello" and used["data"]["from_version"] == "2.0.0"
    assert sorted(used["data"]["signers"]) == sorted([m.keyid("m1"), m.keyid("m2")])
    assert _run(env, "hello")[1]["code"] == "OK"

    # 8. Root key rotation m1 -> m4, signed by old and new thresholds: the node follows.
    res = cli(
        "aufs", "repo", "rotate-key", "--role", "root", "--old", m.pub("m1"), "--new",
        m.path("m4"), *r,
    )  # fmt: skip
    assert res.code == 0, res.err
    assert cli("aufs", "repo", "sign", "--role", "root", "--key", m.path("m2"), *r).code == 0
    assert cli("aufs", "repo", "sign", "--role", "root", "--key", m.path("m4"), *r).code == 0
    # New keys m2+m4 meet the new threshold, but only m2 of the previous root signed.
    res = cli("aufs", "repo", "publish", *r)
    assert (
        "error[AUFS_THRESHOLD]" in res.err
        and "by 1 of the previous root's keys, threshold 2" in res.err
    )
    assert cli("aufs", "repo", "sign", "--role", "root", "--key", m.path("m1"), *r).code == 0
    assert cli("aufs", "repo", "publish", *r).code == 0
    assert cli("aufs", "update").code == 0
    status = cli("aufs", "status", "--json").json()
    assert status["metadata_versions"]["root"] == 2
    # m1 no longer signs root: the repository tool refuses it outright.
    res = cli("aufs", "repo", "sign", "--role", "root", "--key", m.path("m1"), *r)
    assert "error[AUFS_KEY_NOT_AUTHORIZED]" in res.err

    # 9. A revocation list (maintainer-signed) travels through AUFS; the tenant is denied.
    ws = NodeContext(env.ws)
    registry = ws.load_registry()
    digest = hashlib.sha256((env.ws / "modules/hello/module.wasm").read_bytes()).hexdigest()
    rl = sign_revocations(
        RevocationList(),
        load_signer(str(env.maintainer.private_path)),
        registry,
        add_module=(digest, "compromised build"),
    )
    rev = tmp_path / "revocations.json"
    rev.write_bytes(rl.raw)
    assert cli("aufs", "repo", "add-target", str(rev), *r).code == 0
    for k in ("m2", "m3"):
        assert cli("aufs", "repo", "sign", "--role", "targets", "--key", m.path(k), *r).code == 0
    assert cli("aufs", "repo", "publish", *r).code == 0
    res = cli("aufs", "update", "--json")
    assert res.code == 0, res.out
    kinds = {o["kind"]: o["action"] for o in res.json()["outcomes"]}
    assert kinds["revocations"] == "installed"
    code, row = _run(env, "hello")
    assert (code, row["code"]) == (1, "MODULE_REVOKED")

    # Every step left evidence, and the audit chain verifies.
    for event in ("aufs_client_init", "aufs_refresh", "aufs_download", "aufs_apply"):
        assert _events(env, event), event
    refused = [e["data"]["code"] for e in _events(env, "aufs_refused")]
    assert refused.count("DOWNGRADE_REFUSED") == 2
    assert cli("audit", "verify").code == 0
    status = cli("aufs", "repo", "status", "--json", *r).json()
    assert status["roles"]["root"]["published_version"] == 2
