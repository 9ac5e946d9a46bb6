"""Every TUF attack (and a few of our own) against a real HTTP server on 127.0.0.1.

Each test lets the node reach a good state first, then serves something hostile, and checks
the refusal code, that nothing was installed, and that the refusal is an audit event.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Timestamp

from nightcore.aufs import artifacts
from nightcore.aufs.errors import AufsError
from tests.aufs.conftest import (
    World,
    endless,
    forge_chain,
    install_hooks,
    publish,
    resign,
    serve,
    trickle,
    truncated,
)


def _baseline(w: World) -> None:
    w.add_and_publish(w.package("hello", "1.0.0"))
    rep = w.update()
    assert rep.ok and rep.outcomes[0].action == "installed"


def _refresh_refused(w: World, code: str) -> AufsError:
    with pytest.raises(AufsError) as ei:
        w.update()
    assert ei.value.code == code, ei.value.message
    assert "\n" not in ei.value.message
    refused = w.audit_events("aufs_refused")
    assert refused and refused[-1]["data"]["code"] == code
    return ei.value


def _target_url(w: World, path: str) -> str:
    tf = w.repo.listed_target(path)
    assert tf is not None
    d, _, base = path.rpartition("/")
    return f"/targets/{d}/{tf.hashes['sha256']}.{base}"


def _module_bytes(w: World, tenant: str) -> bytes:
    return (w.ws.layout.modules_dir / tenant / "module.wasm").read_bytes()


# -- arbitrary / endless / slow / interrupted targets ------------------------------------------


def test_arbitrary_target_is_refused_by_hash(world: World) -> None:
    world.add_and_publish(world.package("hello", "1.0.0"))
    path = "tenants/hello/1.0.0.tar.gz"
    url = _target_url(world, path)
    good = (world.repo.path / "public" / url.lstrip("/")).read_bytes()
    evil = bytearray(good)
    evil[len(evil) // 2] ^= 0xFF  # same length, other bytes
    world.server.hooks[url] = serve(bytes(evil))
    rep = world.update()
    [o] = rep.outcomes
    assert (o.code, o.action) == ("AUFS_HASH_MISMATCH", "refused")
    assert not (world.ws.layout.modules_dir / "hello").exists()
    assert world.audit_events("aufs_refused")[-1]["data"]["code"] == "AUFS_HASH_MISMATCH"


def test_endless_target_stops_at_its_signed_length(world: World) -> None:
    world.add_and_publish(world.package("hello", "1.0.0"))
    world.server.hooks[_target_url(world, "tenants/hello/1.0.0.tar.gz")] = endless()
    [o] = world.update().outcomes
    assert o.code == "AUFS_TOO_LARGE"
    assert not (world.ws.layout.modules_dir / "hello").exists()


def test_endless_timestamp_stops_at_the_metadata_limit(world: World) -> None:
    world.server.hooks["/metadata/timestamp.json"] = endless()
    err = _refresh_refused(world, "AUFS_TOO_LARGE")
    assert "endless data" in err.message


def test_slow_retrieval_trickle_is_bounded_by_the_deadline(world: World) -> None:
    # One byte every 0.1 s is inside the 0.5 s gap timeout; only the total deadline stops it.
    world.server.hooks["/metadata/timestamp.json"] = trickle(world.metadata("timestamp"), 0.1)
    _refresh_refused(world, "AUFS_SLOW_RETRIEVAL")


def test_slow_retrieval_silent_server_is_bounded_by_the_gap_timeout(world: World) -> None:
    def silent(h: object) -> None:
        time.sleep(1.5)

    world.server.hooks["/metadata/timestamp.json"] = silent
    _refresh_refused(world, "AUFS_SLOW_RETRIEVAL")


def test_interrupted_download_leaves_the_installed_version(world: World) -> None:
    _baseline(world)
    v1 = _module_bytes(world, "hello")
    world.add_and_publish(world.package("hello", "2.0.0", extra='description = "two"\n'))
    url = _target_url(world, "tenants/hello/2.0.0.tar.gz")
    data = (world.repo.path / "public" / url.lstrip("/")).read_bytes()
    world.server.hooks[url] = truncated(data, len(data) // 2)
    [o] = world.update().outcomes
    assert o.code == "AUFS_DOWNLOAD"
    assert _module_bytes(world, "hello") == v1
    assert "2.0.0" not in (world.ws.layout.modules_dir / "hello" / "manifest.toml").read_text()
    assert not (world.ws.layout.modules_dir / ".aufs-staging").exists()
    cache = world.ws.layout.state_dir / "aufs" / "targets"
    assert not any("2.0.0" in p.name for p in cache.iterdir())
    # The server recovers: the next update installs v2.
    del world.server.hooks[url]
    [o] = world.update().outcomes
    assert (o.code, o.action, o.version) == ("OK", "installed", "2.0.0")


def test_failure_while_swapping_leaves_nothing_half_installed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nightcore.aufs import update

    _baseline(world)
    before = {p.name: p.read_bytes() for p in (world.ws.layout.modules_dir / "hello").iterdir()}
    world.add_and_publish(world.package("hello", "2.0.0"))

    def broken(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(update, "swap_in", broken)
    [o] = world.update().outcomes
    assert o.code == "IO_ERROR"
    after = {p.name: p.read_bytes() for p in (world.ws.layout.modules_dir / "hello").iterdir()}
    assert after == before
    assert not (world.ws.layout.modules_dir / ".aufs-staging").exists()


# -- rollback, freeze, mix-and-match -------------------------------------------------------------


def test_timestamp_rollback(world: World) -> None:
    _baseline(world)
    old_ts = world.metadata("timestamp")
    world.add_and_publish(world.package("other", "1.0.0"))
    assert world.update().ok
    world.server.hooks["/metadata/timestamp.json"] = serve(old_ts)
    err = _refresh_refused(world, "AUFS_ROLLBACK")
    assert "timestamp version" in err.message


def test_snapshot_rollback(world: World) -> None:
    _baseline(world)
    old_snapshot = world.metadata("snapshot")
    world.add_and_publish(world.package("other", "1.0.0"))
    assert world.update().ok
    # A timestamp signed with the real (compromised) online key, pointing at an older snapshot.
    ts = Metadata[Timestamp].from_bytes(world.metadata("timestamp"))
    old_version = Metadata[Snapshot].from_bytes(old_snapshot).signed.version
    ts.signed.version += 1
    ts.signed.snapshot_meta = MetaFile.from_data(old_version, old_snapshot, ["sha256"])
    world.server.hooks["/metadata/timestamp.json"] = serve(
        resign(ts, world.repo._online_signer("timestamp"))
    )
    err = _refresh_refused(world, "AUFS_ROLLBACK")
    assert "snapshot version" in err.message


def test_targets_rollback(world: World) -> None:
    _baseline(world)
    old_targets = world.metadata("targets")
    world.add_and_publish(world.package("other", "1.0.0"))
    assert world.update().ok
    snap = Metadata[Snapshot].from_bytes(world.metadata("snapshot"))
    snap.signed.version += 1
    old_v = Metadata.from_bytes(old_targets).signed.version
    snap.signed.meta["targets.json"] = MetaFile.from_data(old_v, old_targets, ["sha256"])
    s_bytes = resign(snap, world.repo._online_signer("snapshot"))
    ts = Metadata[Timestamp].from_bytes(world.metadata("timestamp"))
    ts.signed.version += 1
    ts.signed.snapshot_meta = MetaFile.from_data(snap.signed.version, s_bytes, ["sha256"])
    install_hooks(
        world,
        {
            f"/metadata/{snap.signed.version}.snapshot.json": s_bytes,
            "/metadata/timestamp.json": resign(ts, world.repo._online_signer("timestamp")),
        },
    )
    err = _refresh_refused(world, "AUFS_ROLLBACK")
    assert "targets.json" in err.message


def test_freeze_expired_timestamp(world: World) -> None:
    _baseline(world)
    ts = Metadata[Timestamp].from_bytes(world.metadata("timestamp"))
    ts.signed.version += 1
    ts.signed.expires = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    world.server.hooks["/metadata/timestamp.json"] = serve(
        resign(ts, world.repo._online_signer("timestamp"))
    )
    err = _refresh_refused(world, "AUFS_EXPIRED")
    assert "timestamp.json is expired" in err.message


def test_mix_and_match_snapshot(world: World) -> None:
    _baseline(world)
    old_snapshot = world.metadata("snapshot")
    world.add_and_publish(world.package("other", "1.0.0"))
    new_version = Metadata.from_bytes(world.metadata("snapshot")).signed.version
    # The new (genuine) timestamp, but the old snapshot served under the new version's name.
    world.server.hooks[f"/metadata/{new_version}.snapshot.json"] = serve(old_snapshot)
    _refresh_refused(world, "AUFS_HASH_MISMATCH")
    assert not (world.ws.layout.modules_dir / "other").exists()


# -- signatures: threshold, duplicates, rotated-out keys, forged root -------------------------


def _add_evil_target(t: object) -> None:
    from tuf.api.metadata import TargetFile, Targets

    assert isinstance(t, Targets)
    data = b"evil"
    t.targets["trust/registry.json"] = TargetFile(
        len(data),
        {"sha256": hashlib.sha256(data).hexdigest()},
        "trust/registry.json",
        {"custom": artifacts.custom_for("registry", "99")},
    )


def test_threshold_not_met(world: World) -> None:
    _baseline(world)
    m = world.m
    install_hooks(world, forge_chain(world, [m.signers["m1"]], edit_targets=_add_evil_target))
    err = _refresh_refused(world, "AUFS_THRESHOLD")
    assert "1/2" in err.message


def test_same_key_twice_counts_once(world: World) -> None:
    _baseline(world)
    m = world.m
    files = forge_chain(world, [m.signers["m1"]], edit_targets=_add_evil_target)
    tpath = next(p for p in files if p.endswith(".targets.json"))
    doc = json.loads(files[tpath])
    doc["signatures"] = [doc["signatures"][0], dict(doc["signatures"][0])]
    raw = json.dumps(doc).encode()
    files = forge_chain(world, [], targets_raw=raw)
    install_hooks(world, files)
    err = _refresh_refused(world, "AUFS_THRESHOLD")
    assert "same key" in err.message


def test_same_key_signing_twice_on_the_repository_counts_once(world: World) -> None:
    world.repo.add_target(world.package("hello", "1.0.0"))
    world.repo.sign("targets", world.m.signers["m1"])
    st = world.repo.sign("targets", world.m.signers["m1"])
    assert st.signed == (world.m.keyid("m1"),) and not st.ready
    with pytest.raises(AufsError) as ei:
        world.repo.publish()
    assert ei.value.code == "AUFS_THRESHOLD"


def _rotate(world: World, role: str, old: str, new: str, root_signers: list[str]) -> None:
    m = world.m
    world.repo.rotate_key(role, m.pub(old), m.path(new))
    for n in root_signers:
        world.repo.sign("root", m.signers[n])


def test_rotated_out_targets_key_no_longer_counts(world: World) -> None:
    _baseline(world)
    m = world.m
    _rotate(world, "targets", "m1", "m4", ["m1", "m2"])
    # The published targets were signed by m1+m2: under the new root only m2 counts.
    with pytest.raises(AufsError) as ei:
        world.repo.publish()
    assert ei.value.code == "AUFS_THRESHOLD" and "re-sign" in ei.value.message
    world.repo.sign("targets", m.signers["m4"])
    world.repo.sign("targets", m.signers["m2"])
    world.repo.publish()
    assert world.update().versions["root"] == 2
    # m1 (rotated out) and m3 sign hostile targets: only m3 counts.
    install_hooks(
        world,
        forge_chain(world, [m.signers["m1"], m.signers["m3"]], edit_targets=_add_evil_target),
    )
    err = _refresh_refused(world, "AUFS_THRESHOLD")
    assert "1/2" in err.message


def test_rotated_out_root_key_cannot_sign_a_new_root(world: World) -> None:
    _baseline(world)
    m = world.m
    _rotate(world, "root", "m1", "m4", ["m1", "m2", "m4"])
    world.repo.publish()
    assert world.update().versions["root"] == 2
    # m1 (rotated out) + m3 sign root v3 that hands every role to the attacker's key.
    root_md = Metadata[Root].from_bytes(world.metadata("root"))
    root = root_md.signed
    root.version += 1
    for role in ("root", "targets"):
        for kid in list(root.roles[role].keyids):
            root.revoke_key(kid, role)
        root.add_key(m.signers["evil"].public_key, role)
        root.roles[role].threshold = 1
    world.server.hooks["/metadata/3.root.json"] = serve(
        resign(root_md, m.signers["m1"], m.signers["m3"], m.signers["evil"])
    )
    _refresh_refused(world, "AUFS_THRESHOLD")
    assert world.client().versions()["root"] == 2


def test_malicious_mirror_serving_a_forged_root(world: World) -> None:
    _baseline(world)
    m = world.m
    root_md = Metadata[Root].from_bytes(world.metadata("root"))
    root = root_md.signed
    root.version = 2
    for role in root.roles:
        for kid in list(root.roles[role].keyids):
            root.revoke_key(kid, role)
        root.add_key(m.signers["evil"].public_key, role)
        root.roles[role].threshold = 1
    world.server.hooks["/metadata/2.root.json"] = serve(resign(root_md, m.signers["evil"]))
    err = _refresh_refused(world, "AUFS_THRESHOLD")
    assert "root" in err.message
    assert sorted(
        p.name for p in (world.ws.layout.state_dir / "aufs/metadata/root_history").iterdir()
    ) == ["1.root.json"]


# -- hostile archives --------------------------------------------------------------------------


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    import gzip

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for info, body in members:
            info.size = len(body) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(body) if info.isreg() else None)
    return gzip.compress(raw.getvalue())


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    "bad",
    [
        _member("../../escaped.txt"),
        _member("/tmp/nightcore-aufs-absolute.txt"),
        _member("module.wasm", tarfile.SYMTYPE, "/etc/passwd"),
        _member("module.wasm", tarfile.LNKTYPE, "manifest.toml"),
        _member("module.wasm", tarfile.CHRTYPE),
        _member("sub/dir/../../../escaped.txt"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "device", "nested-dotdot"],
)
def test_hostile_tarball_members(world: World, bad: tarfile.TarInfo) -> None:
    src = world.package("hello", "1.0.0")
    files = {n: (src / n).read_bytes() for n in artifacts.PACKAGE_FILES}
    members = [(_member(n), b) for n, b in files.items() if n != "module.wasm"]
    members.append((bad, files["module.wasm"]))
    data = _tar(members)
    world.repo.stage_raw_target(
        "tenants/hello/1.0.0.tar.gz", data, artifacts.custom_for("tenant", "1.0.0", tenant="hello")
    )
    publish(world.repo, world.m)
    [o] = world.update().outcomes
    assert o.code == "AUFS_ARCHIVE_UNSAFE", o.reason
    assert not (world.ws.layout.modules_dir / "hello").exists()
    assert not list(world.tmp.rglob("escaped.txt"))
    assert not Path("/tmp/nightcore-aufs-absolute.txt").exists()
