"""Repository tooling: init, offline threshold signing, rotation, status, backup, serve."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from nightcore.aufs.errors import AufsError
from nightcore.aufs.repo import AufsRepo, init_repo
from nightcore.aufs.serve import serve_in_thread
from nightcore.errors import NightCoreError
from tests.aufs.conftest import Maintainers, World, publish
from tests.conftest import Cli


def test_init_with_public_keys_only_stages_until_signed(
    tmp_path: Path, maintainers: Maintainers
) -> None:
    m = maintainers
    repo, result, statuses = init_repo(
        tmp_path / "r", [m.pub("m1"), m.pub("m2"), m.pub("m3")], threshold=2
    )
    assert result is None and not any(s.ready for s in statuses)
    assert not (repo.metadata_dir / "root.json").exists()
    with pytest.raises(AufsError) as ei:
        repo.publish()
    assert (
        ei.value.code == "AUFS_THRESHOLD"
        and "signed by 0 distinct key(s), threshold 2" in ei.value.message
    )
    with pytest.raises(AufsError) as ei:
        repo.sign("root", m.signers["evil"])
    assert ei.value.code == "AUFS_KEY_NOT_AUTHORIZED"
    for n in ("m2", "m3"):
        repo.sign("root", m.signers[n])
        repo.sign("targets", m.signers[n])
    res = repo.publish()
    assert res.versions == {"root": 1, "targets": 1, "snapshot": 1, "timestamp": 1}
    names = sorted(p.name for p in repo.metadata_dir.iterdir())
    assert names == [
        "1.root.json",
        "1.snapshot.json",
        "1.targets.json",
        "root.json",
        "snapshot.json",
        "targets.json",
        "timestamp.json",
    ]
    root = Metadata[Root].from_bytes((repo.metadata_dir / "root.json").read_bytes()).signed
    assert root.consistent_snapshot is True
    assert root.roles["targets"].threshold == 2 and len(root.roles["targets"].keyids) == 3
    assert (repo.path / "private").stat().st_mode & 0o777 == 0o700
    assert not (repo.path / "staged" / "root.json").exists()


def test_init_refusals(tmp_path: Path, maintainers: Maintainers) -> None:
    m = maintainers
    with pytest.raises(AufsError) as ei:
        init_repo(tmp_path / "a", [m.pub("m1")], threshold=2)
    assert ei.value.code == "USAGE"
    with pytest.raises(AufsError) as ei:
        init_repo(tmp_path / "a", [m.pub("m1"), m.pub("m1")], threshold=1)
    assert ei.value.code == "USAGE"
    init_repo(tmp_path / "b", [m.pub("m1")], threshold=1)
    with pytest.raises(AufsError) as ei:
        init_repo(tmp_path / "b", [m.pub("m1")], threshold=1)
    assert ei.value.code == "AUFS_REPO_EXISTS"
    with pytest.raises(AufsError) as ei:
        AufsRepo(tmp_path / "nowhere")
    assert ei.value.code == "AUFS_REPO_NOT_FOUND"


def test_init_with_a_missing_key_creates_nothing(tmp_path: Path, maintainers: Maintainers) -> None:
    # The README tour's first try: m2.key not made yet. Nothing may be left behind, or the
    # retry fails KEY_EXISTS on the online keys the first try generated.
    m = maintainers
    repo = tmp_path / "repo"
    for missing in (str(tmp_path / "m2.key"), str(tmp_path / "m2.pub.pem")):
        with pytest.raises(NightCoreError):
            init_repo(repo, [m.path("m1"), missing], threshold=2)
        assert not repo.exists()
    init_repo(repo, [m.path("m1"), m.path("m2")], threshold=2)
    assert (repo / "private").is_dir()


def test_editing_targets_clears_collected_signatures(world: World) -> None:
    repo, m = world.repo, world.m
    repo.add_target(world.package("hello", "1.0.0"))
    assert repo.sign("targets", m.signers["m1"]).signed == (m.keyid("m1"),)
    repo.add_target(world.package("other", "1.0.0"))
    st = repo.sign("targets", m.signers["m2"])
    assert st.signed == (m.keyid("m2"),), "m1 signed older content; it must sign again"
    repo.sign("targets", m.signers["m1"])
    repo.publish()
    tmd = json.loads((repo.metadata_dir / "targets.json").read_bytes())
    assert set(tmd["signed"]["targets"]) == {
        "tenants/hello/1.0.0.tar.gz",
        "tenants/other/1.0.0.tar.gz",
    }
    custom = tmd["signed"]["targets"]["tenants/hello/1.0.0.tar.gz"]["custom"]["nightcore"]
    assert custom == {"kind": "tenant", "version": "1.0.0", "tenant": "hello"}


def test_publish_without_changes_renews_the_timestamp(world: World) -> None:
    before = world.repo.versions()
    after = world.repo.publish().versions
    assert after["timestamp"] == before["timestamp"] + 1
    assert after["snapshot"] == before["snapshot"]


def test_add_target_validates_content(world: World, tmp_path: Path) -> None:
    src = world.package("hello", "1.0.0")
    wasm = bytearray((src / "module.wasm").read_bytes())
    wasm[-1] ^= 1
    (src / "module.wasm").write_bytes(bytes(wasm))
    with pytest.raises(AufsError) as ei:
        world.repo.add_target(src)
    assert ei.value.code == "AUFS_TARGET_INVALID" and "signed digest" in ei.value.message
    reg = tmp_path / "registry.json"
    reg.write_text("{}")
    with pytest.raises(AufsError) as ei:
        world.repo.add_target(reg, version="2")
    assert ei.value.code == "AUFS_TARGET_INVALID"
    with pytest.raises(AufsError) as ei:
        world.repo.add_target(tmp_path / "thing.bin")
    assert ei.value.code == "USAGE"


def test_online_key_rotation_is_followed_by_the_node(world: World) -> None:
    repo, m = world.repo, world.m
    world.add_and_publish(world.package("hello", "1.0.0"))
    assert world.update().ok
    old_ts = repo.config.online_keys["timestamp"]
    with pytest.raises(AufsError) as ei:
        repo.rotate_key("timestamp", str(repo.path / old_ts), m.pub("m4"))
    assert ei.value.code == "USAGE"  # an online role needs a private key
    repo.rotate_key("timestamp", str(repo.path / old_ts), m.path("m4"))
    assert repo.config.online_keys["timestamp"] == old_ts  # pending until published
    for n in ("m1", "m2"):
        repo.sign("root", m.signers[n])
    repo.publish()
    assert repo.config.online_keys["timestamp"] == m.path("m4")
    rep = world.update()
    assert rep.ok and rep.versions["root"] == 2


def test_status_warns_about_old_keys_and_staged_work(world: World) -> None:
    repo = world.repo
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    repo.config.keys[world.m.keyid("m1")]["added"] = old
    repo._save_config()
    repo.add_target(world.package("hello", "1.0.0"))
    repo.sign("targets", world.m.signers["m2"])
    st = AufsRepo(repo.path).status()
    assert st["roles"]["timestamp"]["published_version"] == 1
    assert 0 < st["roles"]["timestamp"]["days_left"] <= 1
    assert st["roles"]["targets"]["staged"]["signed"] == [world.m.keyid("m2")]
    text = " ".join(st["warnings"])
    assert (
        "m1 is 120 days old" in text
        and "staged targets v2: signed by 1 distinct key(s), threshold 2" in text
    )


def test_backup_holds_every_root_version_and_checks_the_chain(world: World, tmp_path: Path) -> None:
    repo, m = world.repo, world.m
    repo.rotate_key("root", m.pub("m3"), m.path("m4"))
    for n in ("m1", "m2"):
        repo.sign("root", m.signers[n])
    repo.publish()
    res = repo.backup(tmp_path / "backups")
    assert res["root_versions"] == [1, 2]
    dest = Path(res["backup"])
    assert (dest / "1.root.json").read_bytes() == (repo.metadata_dir / "1.root.json").read_bytes()
    assert "2.root.json" in (dest / "SHA256SUMS").read_text()
    assert not list(dest.glob("*.key"))
    # A tampered root version breaks the chain: the backup says so instead of copying it.
    p = repo.metadata_dir / "2.root.json"
    doc = json.loads(p.read_bytes())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"
    p.write_text(json.dumps(doc))
    with pytest.raises(AufsError) as ei:
        repo.backup(tmp_path / "backups2")
    assert ei.value.code == "AUFS_THRESHOLD"


def test_serve_publishes_only_public_files(world: World) -> None:
    server, url = serve_in_thread(world.repo.path / "public")
    try:
        with urllib.request.urlopen(url + "metadata/root.json") as r:  # noqa: S310 - loopback
            assert json.loads(r.read())["signed"]["_type"] == "root"
        for path in ("metadata/", "../private/timestamp.key", "../aufs-repo.json"):
            with pytest.raises(urllib.error.HTTPError) as ei:
                urllib.request.urlopen(url + path)  # noqa: S310
            assert ei.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_repo_cli_status_and_backup(world: World, cli_ws: Cli, tmp_path: Path) -> None:
    r = ["--repo", str(world.repo.path)]
    res = cli_ws("aufs", "repo", "status", *r)
    assert res.code == 0 and "timestamp" in res.out
    res = cli_ws("aufs", "repo", "backup", "--out", str(tmp_path / "b"), "--json", *r)
    assert res.code == 0 and res.json()["root_versions"] == [1]
    res = cli_ws("aufs", "repo", "sign", "--role", "targets", "--key", world.m.path("evil"), *r)
    assert res.code == 2 and "error[AUFS_KEY_NOT_AUTHORIZED]" in res.err
    res = cli_ws("aufs", "repo", "publish", "--repo", str(tmp_path / "none"))
    assert res.code == 2 and "error[AUFS_REPO_NOT_FOUND]" in res.err
    publish(world.repo, world.m)  # nothing staged: renews the timestamp only
