"""Isolation between strongbox tenants (issue 14): per-tenant uids, Landlock, the worker's
mount namespace, the layers seen from /proc, the policy settings, identical fuel in both
modes. Real workers, real kernel calls; the worker tests need root (skipped otherwise, like
tests/unit/test_strongbox.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from nightcore.config import parse_config
from nightcore.errors import ConfigError, SandboxError
from nightcore.policy import Policy
from nightcore.sandbox import landlock
from nightcore.sandbox.engine import Sandbox
from nightcore.sandbox.isolation import TenantIds, harden_workspace, strongbox_unavailable
from nightcore.sandbox.strongbox import StrongboxSandbox, Worker, WorkerKey, WorkerOptions
from nightcore.sandbox.types import EffectiveLimits, Preopen, RunConfig
from tests.conftest import plant_special

_WHY = strongbox_unavailable()
needs_strongbox = pytest.mark.skipif(bool(_WHY), reason=_WHY or "available")
MIB = 1024 * 1024
LIMITS = EffectiveLimits(
    fuel=50_000_000, wall_ms=5_000, memory_bytes=4 * MIB, stack_bytes=512 * 1024, output_bytes=4096
)
CLOCK = bytes(
    wasmtime.wat2wasm("""
(module
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "segment one")
  (data (i32.const 300) "segment two")
  (data (i32.const 400) "segment three")
  (func (export "_start")
    (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 16)))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
""")
)


def config(module: bytes, tenant: str = "tenant-a", **kw: object) -> RunConfig:
    return RunConfig(
        tenant=tenant,
        module_sha256=hashlib.sha256(module).hexdigest(),
        entrypoint="_start",
        argv=(tenant,),
        env=(),
        preopens=(),
        limits=LIMITS,
        **kw,  # type: ignore[arg-type]
    )


# -- a workspace-shaped tree in a directory every uid can traverse -----------------------


@pytest.fixture
def tree() -> Iterator[dict[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="nightcore-iso-", dir="/tmp"))
    try:
        base.chmod(0o755)
        private, state = base / "private", base / "state"
        private.mkdir(mode=0o700)
        (private / "node.key").write_text("-----BEGIN PRIVATE KEY-----\n")
        (private / "node.key").chmod(0o600)
        for sub in ("audit", "runs"):
            (state / sub).mkdir(parents=True)
            (state / sub).chmod(0o755)
        (state / "audit" / "audit.jsonl").write_text("{}\n")
        (state / "audit" / "audit.jsonl").chmod(0o644)
        paths = {"base": base, "private": private, "state": state}
        for t in ("tenant-a", "tenant-b"):
            (state / "tenants" / t / "data").mkdir(parents=True)
            paths[t] = state / "tenants" / t
        (paths["tenant-b"] / "data" / "secret.txt").write_text("b's data\n")
        harden_workspace(state, state / "tenants")
        yield paths
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


@needs_strongbox
def test_harden_workspace_modes(tree: dict[str, Path]) -> None:
    state = tree["state"]
    assert stat.S_IMODE(state.stat().st_mode) == 0o711
    assert stat.S_IMODE((state / "tenants").stat().st_mode) == 0o711
    assert stat.S_IMODE((state / "audit").stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "runs").stat().st_mode) == 0o700


def _probe(
    tree: dict[str, Path], ids: TenantIds, **opts: object
) -> tuple[dict[str, str], dict[str, object]]:
    """Start tenant-a's worker (selftest) and let it try to reach what it must not."""
    own = tree["tenant-a"] / "data"
    uid, gid = ids.ids_for("tenant-a")
    probe = (
        str(tree["tenant-b"]),
        str(tree["tenant-b"] / "data" / "secret.txt"),
        str(tree["private"] / "node.key"),
        str(tree["state"] / "audit" / "audit.jsonl"),
        str(own),
    )
    options = WorkerOptions(
        uid=uid,
        gid=gid,
        hide=(str(tree["private"]), str(tree["state"])),
        probe=probe,
        **opts,  # type: ignore[arg-type]
    )
    worker = Worker(
        WorkerKey("tenant-a", 512 * 1024, False, 4 * MIB, ((str(own), True),)),
        options,
        selftest=True,
    )
    try:
        report = worker.wait_ready()
        layers = dict(worker.layers)
    finally:
        worker.stop()
    assert report["uid"] == uid and report["gid"] == gid
    reach: dict[str, str] = report["reach"]
    return {Path(k).relative_to(tree["base"]).as_posix(): v for k, v in reach.items()}, layers


@needs_strongbox
@pytest.mark.parametrize(
    ("opts", "refusal", "layer"),
    [
        ({}, "ENOENT", "all layers: the mount namespace hides the node's state"),
        ({"mount_ns": False}, "EACCES", "Landlock alone (no mount namespace)"),
        ({"mount_ns": False, "landlock": False}, "EACCES", "the uid wall alone"),
    ],
    ids=["all-layers", "landlock", "uid-wall"],
)
def test_a_worker_cannot_reach_another_tenant_or_a_key(
    tree: dict[str, Path], opts: dict[str, object], refusal: str, layer: str
) -> None:
    ids = TenantIds(None)
    box = StrongboxSandbox(workers=1, ids=ids)
    try:
        for t in ("tenant-a", "tenant-b"):
            box.grant_access(tree[t], t)  # each data root: its tenant's uid, 0700
    finally:
        box.close()
    reach, layers = _probe(tree, ids, **opts)
    assert reach.pop("state/tenants/tenant-a/data") == "listed 0", layer  # its own grant
    assert reach == {
        "state/tenants/tenant-b": refusal,
        "state/tenants/tenant-b/data/secret.txt": refusal,
        "private/node.key": refusal,
        "state/audit/audit.jsonl": refusal,
    }, layer
    assert layers["mountns"] is opts.get("mount_ns", True)
    assert layers["landlock_abi"] == (landlock.abi_version() if opts.get("landlock", True) else 0)


@needs_strongbox
def test_proc_status_of_a_live_worker() -> None:
    ids = TenantIds(None)
    with StrongboxSandbox(workers=1, ids=ids) as box:
        result = box.run(CLOCK, config(CLOCK))
        assert result.code == "OK", result.detail
        (pid,) = box.worker_pids(busy=False)  # idle, alive, locked down
        uid, gid = ids.ids_for("tenant-a")
        tasks = os.listdir(f"/proc/{pid}/task")
        assert len(tasks) >= 2  # Wasmtime's threads exist, every one is filtered
        for tid in tasks:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            fields = {k: v.split() for k, _, v in (ln.partition(":") for ln in text.splitlines())}
            assert fields["Seccomp"] == ["2"], tid
            assert fields["NoNewPrivs"] == ["1"], tid
            assert fields["Uid"] == [str(uid)] * 4 and fields["Gid"] == [str(gid)] * 4, tid
            assert fields["CapEff"] == ["0000000000000000"], tid
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert result.isolation == {
            "mode": "strongbox",
            "seccomp": True,
            "no_new_privs": True,
            "uid": uid,
            "gid": gid,
            "landlock_abi": landlock.abi_version(),
            "netns": True,
            "mountns": True,
        }


@needs_strongbox
def test_two_tenants_run_as_two_uids(tree: dict[str, Path]) -> None:
    ids = TenantIds(None)
    with StrongboxSandbox(workers=2, ids=ids) as box:
        a = box.run(CLOCK, config(CLOCK, "tenant-a"))
        b = box.run(CLOCK, config(CLOCK, "tenant-b"))
    assert a.isolation["uid"] != b.isolation["uid"]
    assert {a.isolation["uid"], b.isolation["uid"]} == {
        ids.ids_for("tenant-a")[0],
        ids.ids_for("tenant-b")[0],
    }


@needs_strongbox
def test_fuel_and_deterministic_clocks_match_across_modes() -> None:
    # Three data segments: a worker Engine without copy-on-write memory images charged
    # 4-5 fuel per segment at instantiation (clock-random: 1059 against 1041 in process).
    cfg = dataclasses.replace(config(CLOCK), deterministic=True, seed=7)
    with Sandbox(None, b"") as inproc:
        local = inproc.run(CLOCK, cfg)
    with StrongboxSandbox(workers=1) as box:
        confined = box.run(CLOCK, cfg)
    assert local.code == confined.code == "OK"
    assert confined.fuel_used == local.fuel_used
    assert confined.stdout == local.stdout  # the clock counts fuel: same instant
    assert local.isolation == {}  # the runner records {"mode": "in-process"}


@needs_strongbox
def test_a_granted_directory_is_writable_under_every_layer(tree: dict[str, Path]) -> None:
    write = bytes(
        wasmtime.wat2wasm("""
(module
  (import "wasi_snapshot_preview1" "path_open" (func $open
    (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "out.txt")
  (func (export "_start")
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 7)
          (i32.const 1) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0)
          (i32.const 200))
      (then unreachable))))
""")
    )
    own = tree["tenant-a"] / "data"
    cfg = dataclasses.replace(config(write), preopens=(Preopen(own, "data", writable=True),))
    with StrongboxSandbox(workers=1, hide=(tree["private"], tree["state"])) as box:
        box.grant_access(tree["tenant-a"], "tenant-a")
        result = box.run(write, cfg)
        assert result.code == "OK", result.detail
        assert result.isolation["mountns"] and result.isolation["landlock_abi"]
    assert (own / "out.txt").stat().st_uid == box.ids_for("tenant-a")[0]


# -- Landlock on its own ---------------------------------------------------------------


@pytest.mark.skipif(landlock.abi_version() == 0, reason="no Landlock in this kernel")
def test_landlock_restricts_a_process_to_its_rules(tmp_path: Path) -> None:
    allowed, denied = tmp_path / "allowed", tmp_path / "denied"
    for d in (allowed, denied):
        d.mkdir()
        (d / "f").write_text("x")
    script = (
        "import ctypes, json, os, sys\n"
        "from nightcore.sandbox import landlock\n"
        "ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)\n"
        "abi = landlock.restrict([(sys.argv[1], False)])\n"
        "out = {'abi': abi}\n"
        "for name, path in (('allowed', sys.argv[1]), ('denied', sys.argv[2])):\n"
        "    try:\n"
        "        open(os.path.join(path, 'f')).read(); out[name] = 'read'\n"
        "    except OSError as e:\n"
        "        out[name] = e.errno\n"
        "    try:\n"
        "        open(os.path.join(path, 'g'), 'w').close(); out[name + '_write'] = 'wrote'\n"
        "    except OSError as e:\n"
        "        out[name + '_write'] = e.errno\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(allowed), str(denied)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(res.stdout)
    assert out["abi"] == landlock.abi_version()
    assert out["allowed"] == "read"
    assert out["allowed_write"] == 13  # EACCES: the rule is read-only
    assert out["denied"] == 13 and out["denied_write"] == 13


def test_landlock_handled_rights_grow_with_the_abi() -> None:
    assert landlock.handled_fs(1) == (1 << 13) - 1
    assert landlock.handled_fs(3) & landlock.TRUNCATE
    assert not landlock.handled_fs(4) & landlock.IOCTL_DEV
    assert landlock.handled_fs(5) & landlock.IOCTL_DEV
    assert landlock.handled_fs(0) == 0


# -- the tenant uid map -------------------------------------------------------------------


def test_tenant_ids_are_unique_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "strongbox" / "ids.json"
    ids = TenantIds(path, base=2_000_000_000, count=10)
    a, b = ids.ids_for("a"), ids.ids_for("b")
    assert a == (2_000_000_000, 2_000_000_000) and b == (2_000_000_001, 2_000_000_001)
    again = TenantIds(path, base=2_000_000_000, count=10)  # another process, later
    assert again.ids_for("b") == b and again.ids_for("c")[0] == 2_000_000_002
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text())["tenants"] == {
        "a": 2_000_000_000,
        "b": 2_000_000_001,
        "c": 2_000_000_002,
    }


def test_tenant_ids_skip_system_accounts_and_run_out() -> None:
    import pwd

    account = pwd.getpwnam("root").pw_uid  # an id some account of this system has
    free = next(u for u in range(account + 1, account + 100_000) if not _has_account(u))
    ids = TenantIds(None, base=account, count=free - account + 1)
    assert ids.ids_for("a") == (free, free)  # the accounts' ids are skipped
    with pytest.raises(SandboxError) as err:
        ids.ids_for("b")  # the one free id is a's
    assert err.value.code == "UID_RANGE_EXHAUSTED"
    assert ids.ids_for("a") == (free, free)


def _has_account(uid: int) -> bool:
    import pwd

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b'{"version": 2, "tenants": {}}',
        b'{"version": 1, "tenants": {"a": 5, "b": 5}}',
        b'{"version": 1, "tenants": {"a": "5"}}',
        b'{"version": 1, "tenants": []}',
    ],
    ids=["garbage", "version", "shared-id", "string-id", "not-a-table"],
)
def test_a_malformed_uid_map_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ids.json"
    path.write_bytes(content)
    with pytest.raises(SandboxError) as err:
        TenantIds(path).ids_for("a")
    assert err.value.code == "UID_MAP_INVALID"
    assert path.read_bytes() == content  # left as it was


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "link"])
def test_a_special_uid_map_is_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    """A FIFO would block the open, /dev/zero would be read forever, a link is not the map
    this node wrote: each is refused with its code (a child of this test would hang)."""
    path = tmp_path / "ids.json"
    if kind == "link":
        (tmp_path / "real.json").write_text('{"version": 1, "tenants": {}}')
        path.symlink_to(tmp_path / "real.json")
    else:
        plant_special(path, kind)
    with pytest.raises(SandboxError) as err:
        TenantIds(path).ids_for("a")
    assert err.value.code == "UID_MAP_INVALID"
    assert "\n" not in str(err.value)


# -- policy and configuration ---------------------------------------------------------------


def test_policy_requires_strongbox() -> None:
    assert not Policy().requires_strongbox("a")
    assert Policy(isolation="strongbox").requires_strongbox("a")
    p = Policy(strongbox_tenants=("bank-*", "exact"))
    assert p.requires_strongbox("bank-eu") and p.requires_strongbox("exact")
    assert not p.requires_strongbox("exactly") and not p.requires_strongbox("Bank-eu")


def test_config_isolation_settings() -> None:
    cfg = parse_config(
        b'[policy]\nisolation = "strongbox"\nstrongbox_tenants = ["a*"]\n'
        b"[run]\nstrongbox_uid_base = 300000\nstrongbox_uid_count = 1000\n"
    )
    assert cfg.policy.isolation == "strongbox" and cfg.policy.strongbox_tenants == ("a*",)
    assert (cfg.strongbox_uid_base, cfg.strongbox_uid_count) == (300000, 1000)
    assert parse_config(b"").policy.isolation == "in-process"
    for bad in (
        b'[policy]\nisolation = "container"\n',
        b"[policy]\nstrongbox_tenants = [1]\n",
        b'[policy]\nstrongbox_tenants = "a*"\n',
        b"[run]\nstrongbox_uid_base = 0\n",
        b"[run]\nstrongbox_uid_count = 0\n",
        b"[run]\nstrongbox_uid_base = 4294967000\nstrongbox_uid_count = 65536\n",
    ):
        with pytest.raises(ConfigError):
            parse_config(bad)


@needs_strongbox
@pytest.mark.parametrize("layers", [{}, {"mount_ns": False}], ids=["all-layers", "landlock"])
def test_a_grant_swapped_for_a_link_is_not_followed(
    tree: dict[str, Path], layers: dict[str, object]
) -> None:
    # tenant-a (owner of its data root) replaced its granted directory with a link to
    # tenant-b's: neither the mount namespace nor Landlock follows it when the worker starts.
    ids = TenantIds(None)
    box = StrongboxSandbox(workers=1, ids=ids)
    try:
        for t in ("tenant-a", "tenant-b"):
            box.grant_access(tree[t], t)
    finally:
        box.close()
    own = tree["tenant-a"] / "data"
    own.rmdir()
    own.symlink_to(tree["tenant-b"] / "data")
    uid, gid = ids.ids_for("tenant-a")
    worker = Worker(
        WorkerKey("tenant-a", 512 * 1024, False, 4 * MIB, ((str(own), True),)),
        WorkerOptions(
            uid=uid,
            gid=gid,
            hide=(str(tree["private"]), str(tree["state"])),
            probe=(str(own / "secret.txt"), str(tree["tenant-b"] / "data" / "secret.txt")),
            **layers,  # type: ignore[arg-type]
        ),
        selftest=True,
    )
    try:
        report = worker.wait_ready()
    finally:
        worker.stop()
    assert all(not v.startswith("read") for v in report["reach"].values()), report["reach"]


def test_open_dir_nofollow_refuses_a_link_on_the_way(tmp_path: Path) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    fd = landlock.open_dir_nofollow(tmp_path / "real" / "sub")
    os.close(fd)
    for path in (tmp_path / "link" / "sub", tmp_path / "link"):
        with pytest.raises(OSError):
            landlock.open_dir_nofollow(path)
    with pytest.raises(OSError):
        landlock.open_dir_nofollow("relative/path")
