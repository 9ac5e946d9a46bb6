"""The node side beyond the attacks: trust material, ABI/runtime gates, rollback, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from nightcore import app
from nightcore.aufs import artifacts
from nightcore.aufs.errors import AufsError
from nightcore.aufs.state import NodePaths
from nightcore.aufs.update import node_lock
from nightcore.trust.keys import GeneratedKey, load_signer
from nightcore.trust.registry import RevocationList, sign_revocations
from tests.aufs.conftest import World, make_package, publish
from tests.conftest import Cli


def test_nothing_changed_downloads_nothing(world: World) -> None:
    world.add_and_publish(world.package("hello", "1.0.0"))
    assert world.update().ok
    world.server.requests.clear()
    rep = world.update()
    assert [o.action for o in rep.outcomes] == ["unchanged"]
    # root N+1 (404) and timestamp only: snapshot/targets are trusted from the local copies.
    assert sorted(world.server.requests) == ["/metadata/2.root.json", "/metadata/timestamp.json"]
    refresh = world.audit_events("aufs_refresh")[-1]["data"]
    assert refresh["changed"] is False


def test_metadata_dir_holds_exactly_the_trusted_role_files(world: World) -> None:
    world.add_and_publish(world.package("hello", "1.0.0"))
    assert world.update().ok
    mdir = world.ws.layout.state_dir / "aufs" / "metadata"
    assert sorted(p.name for p in mdir.iterdir()) == [
        "root.json",
        "root_history",
        "snapshot.json",
        "targets.json",
        "timestamp.json",
    ]
    assert [p.name for p in (mdir / "root_history").iterdir()] == ["1.root.json"]


def test_abi_unsupported_names_the_runtime_that_provides_it(world: World) -> None:
    src = world.package("hello", "1.0.0")
    files = {n: (src / n).read_bytes() for n in artifacts.PACKAGE_FILES}
    files["manifest.toml"] += b'abi = "wasi:cli/run@0.2.0"\n'
    world.repo.stage_raw_target(
        "tenants/hello/1.0.0.tar.gz",
        artifacts.build_tenant_tarball(files),
        artifacts.custom_for("tenant", "1.0.0", tenant="hello", abi="wasi:cli/run@0.2.0"),
    )
    publish(world.repo, world.m)
    [o] = world.update().outcomes
    assert o.code == "ABI_UNSUPPORTED" and "wasi:cli/run@0.2.0" in o.reason
    assert not (world.ws.layout.modules_dir / "hello").exists()
    # With the runtime version that provides it named by the signed target metadata:
    world.repo.stage_raw_target(
        "tenants/hello/1.0.0.tar.gz",
        artifacts.build_tenant_tarball(files),
        artifacts.custom_for("tenant", "1.0.0", tenant="hello", min_runtime="0.1.0"),
    )
    publish(world.repo, world.m)
    up = world.updater()
    up.adapters.register_abi("wasi:cli/run@0.2.0", "0.4.0")
    [o] = up.run().outcomes
    assert o.code == "ABI_UNSUPPORTED" and "Night Core 0.4.0 or later" in o.reason


def test_runtime_too_old(world: World) -> None:
    world.add_and_publish(world.package("hello", "1.0.0"), min_runtime="99.0.0")
    [o] = world.update().outcomes
    assert o.code == "RUNTIME_TOO_OLD" and "99.0.0" in o.reason


def test_trust_layer_verifies_the_staged_package(
    world: World, keys_dir: dict[str, GeneratedKey]
) -> None:
    # Threshold-signed by the channel, but signed by a publisher this node does not trust.
    src = make_package(world.tmp / "m", "hello", "1.0.0", keys_dir["mallory"])
    world.add_and_publish(src)
    [o] = world.update().outcomes
    assert o.code == "KEY_UNTRUSTED"
    assert not (world.ws.layout.modules_dir / "hello").exists()
    assert not (world.ws.layout.modules_dir / ".aufs-staging").exists()


def test_registry_and_revocations_through_the_channel(
    world: World, keys_dir: dict[str, GeneratedKey], tmp_path: Path
) -> None:
    # A registry that also trusts bob for "bob-*" tenants.
    scratch = app.init_workspace(tmp_path / "scratch")
    app.trust_add_key(scratch, keys_dir["alice"].public_path, scope="*")
    app.trust_add_key(scratch, keys_dir["maint"].public_path, scope="*", role="maintainer")
    app.trust_add_key(scratch, keys_dir["bob"].public_path, scope="bob-*")
    world.repo.add_target(scratch.layout.registry_path, version="2")
    world.repo.add_target(make_package(world.tmp / "b", "bob-app", "1.0.0", keys_dir["bob"]))
    publish(world.repo, world.m)
    rep = world.update()
    assert rep.ok, rep.to_dict()
    assert [(o.kind, o.action) for o in rep.outcomes] == [
        ("registry", "installed"),
        ("tenant", "installed"),
    ]
    # Revocation lists: v2 accepted, then a replayed v1 refused by the trust layer.
    maint = load_signer(str(keys_dir["maint"].private_path))
    registry = world.ws.load_registry()
    v1 = sign_revocations(RevocationList(), maint, registry, add_key=("ab" * 32, "test"))
    v2 = sign_revocations(v1, maint, registry, add_key=("cd" * 32, "test"))
    for rl in (v2, v1):
        f = tmp_path / "revocations.json"
        f.write_bytes(rl.raw)
        world.add_and_publish(f)
        [o] = [o for o in world.update().outcomes if o.kind == "revocations"]
        if rl is v2:
            assert o.action == "installed"
        else:
            assert o.code == "REVOCATION_ROLLBACK"
    # A registry that drops the maintainer key would silently un-revoke: refused.
    alone = app.init_workspace(tmp_path / "alone")
    app.trust_add_key(alone, keys_dir["alice"].public_path, scope="*")
    world.add_and_publish(alone.layout.registry_path, version="3")
    [o] = [o for o in world.update().outcomes if o.kind == "registry"]
    assert o.code == "REVOCATION_SIGNER_INVALID"
    assert world.ws.load_registry().get(keys_dir["maint"].key_id) is not None


def test_rollback_command_and_reinstall(world: World, cli_ws: Cli) -> None:
    world.add_and_publish(world.package("hello", "1.0.0"))
    assert world.update().ok
    world.add_and_publish(world.package("hello", "2.0.0"))
    assert world.update().ok
    res = cli_ws("aufs", "rollback", "hello", "--json")
    assert res.code == 0, res.err
    assert res.json() == {"tenant": "hello", "from_version": "2.0.0", "to_version": "1.0.0"}
    assert (
        'version = "1.0.0"' in (world.ws.layout.modules_dir / "hello" / "manifest.toml").read_text()
    )
    [ev] = world.audit_events("aufs_rollback")
    assert ev["tenant"] == "hello" and ev["data"]["to_version"] == "1.0.0"
    assert cli_ws("run", "hello").code == 0
    # The channel still offers 2.0.0: the next update reinstalls it.
    [o] = world.update().outcomes
    assert (o.version, o.action) == ("2.0.0", "installed")
    res = cli_ws("aufs", "rollback", "nothing-here")
    assert res.code == 2 and "error[AUFS_NOTHING_TO_ROLL_BACK]" in res.err


def test_client_cli_refresh_download_status(world: World, cli_ws: Cli, tmp_path: Path) -> None:
    world.add_and_publish(world.package("hello", "1.0.0"))
    url = ["--metadata-url", world.server.metadata_url]
    res = cli_ws("aufs", "client", "refresh", "--json", *url)
    assert res.code == 0 and res.json()["versions"]["targets"] == 2
    out = tmp_path / "dl"
    res = cli_ws(
        "aufs", "client", "download", "tenants/hello/1.0.0.tar.gz", "--json", *url,
        "--target-base-url", world.server.target_url, "--target-dir", str(out),
    )  # fmt: skip
    assert res.code == 0, res.err
    [d] = res.json()
    assert Path(d["file"]).parent == out and Path(d["file"]).stat().st_size == d["length"]
    res = cli_ws(
        "aufs", "client", "download", "tenants/nope.tar.gz", *url,
        "--target-base-url", world.server.target_url, "--target-dir", str(out),
    )  # fmt: skip
    assert res.code == 2 and "error[AUFS_TARGET_NOT_FOUND]" in res.err
    assert world.audit_events("aufs_download")
    res = cli_ws("aufs", "status", "--json")
    assert res.json()["metadata_versions"]["targets"] == 2
    # Refusals print one line and exit 2; the update command needs URLs.
    res = cli_ws("aufs", "update")
    assert res.code == 2 and "error[USAGE]" in res.err


def test_one_updater_at_a_time(world: World) -> None:
    with node_lock(NodePaths(world.ws)), pytest.raises(AufsError) as ei:
        world.update()
    assert ei.value.code == "AUFS_BUSY"


def test_hand_installed_tenant_with_hostile_version_is_kept_safely(world: World) -> None:
    live = world.ws.layout.modules_dir / "hello"
    live.mkdir(parents=True)
    (live / "manifest.toml").write_text('schema = 1\ntenant = "hello"\nversion = "../../../x"\n')
    world.add_and_publish(world.package("hello", "1.0.0"))
    [o] = world.update().outcomes
    assert (o.code, o.action) == ("OK", "installed")
    assert (world.ws.layout.modules_dir / ".aufs-previous" / "hello-unknown").is_dir()
    assert not (world.tmp / "x").exists() and not (world.ws.root / "x").exists()
