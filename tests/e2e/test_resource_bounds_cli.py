"""Hostile tenants of issue 14 through ``nightcore run`` beside neighbours: a descriptor bomb
(20,000 opens: as many as this machine's whole RLIMIT_NOFILE), a 2 GiB writer and a compile
bomb each end with their own code, the neighbours in the same run complete and are recorded,
``runs`` shows the codes, and ``audit verify`` passes. And the symlink swap race: the file a
tenant wrote is replaced by a link to /dev/zero between the tenant's end and the host's
hashing; the host neither follows it nor reads forever."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from nightcore.errors import NightCoreError
from nightcore.evidence import attestation
from nightcore.runner import pipeline
from tests.conftest import HELLO_WAT, Env, simple_manifest, wat_module, write_tenant
from tests.hostile_tenants import big_writer, compile_bomb, fd_bomb, inode_bomb

MIB = 1024 * 1024
RW = '[capabilities]\n[[capabilities.fs]]\npath = "data"\nmode = "rw"\n'


def _by_tenant(res: Any) -> dict[str, dict[str, Any]]:
    data = res.json()
    runs = data["runs"] if isinstance(data, dict) else data
    return {r["tenant"]: r for r in runs}


def test_hostile_tenants_beside_neighbours(env: Env) -> None:
    env.add_tenant(
        "fdbomb", RW + "[limits]\nopen_files = 64\nwall_ms = 10000\n", wat_module(fd_bomb(20_000))
    )
    env.add_tenant(
        "writer",
        RW + f"[limits]\ndisk_bytes = {MIB}\nwall_ms = 10000\n",
        wat_module(big_writer(2 << 30)),
    )
    env.add_tenant("cbomb", "[limits]\ncompile_ms = 500\n", compile_bomb(200_000))
    for name in ("alpha", "omega"):
        env.add_tenant(name)
    res = env.cli("run", "--json")
    runs = _by_tenant(res)
    assert runs["fdbomb"]["code"] == "FD_LIMIT", runs["fdbomb"]
    assert runs["writer"]["code"] == "DISK_LIMIT", runs["writer"]
    assert runs["cbomb"]["code"] == "COMPILE_LIMIT", runs["cbomb"]
    for name in ("alpha", "omega"):
        assert runs[name]["code"] == "OK", runs[name]
        assert runs[name]["audit_seq"] is not None
    written = env.ws / "state" / "tenants" / "writer" / "data" / "big"
    assert written.stat().st_size < 512 * MIB
    # Every run started got its outcome, and the log verifies.
    lines = env.audit_lines()
    started = {r["data"]["run_id"] for r in lines if r["event"] == "run_start"}
    finished = {r["data"]["run_id"] for r in lines if r["event"] == "run_outcome"}
    assert started == finished and len(started) == 5
    assert env.cli("audit", "verify").code == 0
    table = env.cli("runs", "--json").json()
    codes = {r["tenant"]: r["code"] for r in table}
    assert codes["fdbomb"] == "FD_LIMIT" and codes["writer"] == "DISK_LIMIT"
    assert codes["cbomb"] == "COMPILE_LIMIT"
    shown = env.cli("runs", "show", runs["writer"]["run_id"], "--json").json()
    assert shown["code"] == "DISK_LIMIT"


WRITE_OUT = """
(module
 (import "wasi_snapshot_preview1" "path_open"
   (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
 (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
 (memory (export "memory") 1)
 (data (i32.const 100) "out.bin")
 (data (i32.const 16) "written\\n")
 (func (export "_start")
  (if (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 7) (i32.const 9)
        (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 200))
    (then unreachable))
  (i32.store (i32.const 0) (i32.const 16))
  (i32.store (i32.const 4) (i32.const 8))
  (drop (call $write (i32.load (i32.const 200)) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def test_a_written_file_swapped_for_dev_zero_is_not_read(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.add_tenant("swapper", RW, wat_module(WRITE_OUT))
    victim = env.ws / "state" / "tenants" / "swapper" / "data" / "out.bin"
    swapped: list[bool] = []
    real = attestation.written_files  # what the pipeline imported by name

    def swap_then_hash(before: Any, rw: Any, **kw: Any) -> Any:
        # What a concurrent run of the same tenant could do between this run's end and the
        # host's hashing: replace the file it wrote by a link to /dev/zero.
        victim.unlink()
        os.symlink("/dev/zero", victim)
        swapped.append(True)
        return real(before, rw, **kw)

    monkeypatch.setattr(pipeline, "written_files", swap_then_hash)
    out: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: out.update(res=env.cli("run", "--json")))
    worker.start()
    worker.join(300)  # a guard, not a measurement: a host reading /dev/zero never returns
    assert not worker.is_alive(), "the host followed the link and read /dev/zero"
    assert swapped
    run = _by_tenant(out["res"])["swapper"]
    assert run["code"] == "OK"
    envelope = json.loads(
        (env.ws / "state" / "runs" / run["run_id"] / "attestation.intoto.dsse.json").read_text()
    )
    statement = json.loads(base64.b64decode(envelope["payload"]))
    names = {s["name"] for s in statement["subject"]}
    assert "fs/data/out.bin" not in names  # neither hashed through the link nor invented
    assert victim.is_symlink() and Path(os.readlink(victim)) == Path("/dev/zero")
    assert env.cli("audit", "verify").code == 0


def test_replay_copies_tenant_data_without_following_or_blocking(env: Env) -> None:
    """``replay`` copies the tenant's current data for the re-run: a FIFO (which a path-based
    copy would block on forever), a link to /dev/zero and a link out of the grant are never
    read through; data over the run's disk limits is refused with DISK_LIMIT."""
    env.add_tenant("replayed", RW + "[limits]\ndisk_bytes = 65536\n", wat_module(WRITE_OUT))
    run = _by_tenant(env.cli("run", "--json"))["replayed"]
    assert run["code"] == "OK"
    grant = env.ws / "state" / "tenants" / "replayed" / "data"
    os.mkfifo(grant / "fifo")
    (grant / "zero").symlink_to("/dev/zero")
    (grant / "up").symlink_to("/etc")
    (grant / "sub").mkdir()
    (grant / "sub" / "kept.txt").write_text("kept")
    out: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: out.update(res=env.cli("replay", run["run_id"], "--json"))
    )
    worker.start()
    worker.join(300)  # a guard, not a measurement: a copy that opens the FIFO never returns
    assert not worker.is_alive(), "the replay copy blocked on the FIFO"
    assert out["res"].code == 0, out["res"].err
    assert out["res"].json()["code"] == "REPLAY_MATCH"
    (grant / "big.bin").write_bytes(b"x" * (1024 * 1024))
    res = env.cli("replay", run["run_id"])
    assert res.code == 2 and "error[DISK_LIMIT]" in res.err


def test_limits_above_policy_or_out_of_range_are_refused(env: Env) -> None:
    """The new limits are declared like the others: above the node maximum is denied at
    verification (audited), out of the schema's range or unknown is refused at signing, and
    a lower node maximum in nightcore.toml narrows what a manifest may ask."""
    env.add_tenant("greedy", "[limits]\nopen_files = 5000\n")  # node max 4096
    env.add_tenant("modest", "[limits]\ndisk_files = 50\ncompile_ms = 2000\n")
    rows = _by_tenant(env.cli("run", "--json"))
    assert rows["greedy"]["code"] == "CAPABILITY_DENIED"
    assert "open_files" in rows["greedy"]["reason"]
    assert rows["modest"]["code"] == "OK"
    denied = [r for r in env.audit_lines() if r["event"] == "verify"]
    assert any(r["data"]["code"] == "CAPABILITY_DENIED" for r in denied)
    admitted = [r for r in env.audit_lines() if r["event"] == "admit"]
    (limits,) = [r["data"]["limits"] for r in admitted if r["tenant"] == "modest"]
    assert (limits["disk_files"], limits["compile_ms"], limits["open_files"]) == (50, 2000, 256)
    for bad in ("compile_ms = 0", "disk_files = -1", "inodes = 5"):
        with pytest.raises(NightCoreError) as err:
            env.add_tenant("bad", f"[limits]\n{bad}\n")
        assert err.value.code == "MANIFEST_INVALID", bad
    toml = env.ws / "nightcore.toml"
    text = toml.read_text()
    for line in ("disk_files = 100000\n", "disk_files = 10000\n"):  # max, default
        assert line in text
        text = text.replace(line, "disk_files = 20\n")
    toml.write_text(text)
    rows = _by_tenant(env.cli("run", "--json", "modest"))
    assert rows["modest"]["code"] == "CAPABILITY_DENIED"


def test_hostile_tenants_beside_neighbours_under_strongbox(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same attacks through ``nightcore run --strongbox`` (root, seccomp): each ends with
    its own code inside its confined worker, the neighbour completes, the log verifies."""
    from nightcore import app
    from nightcore.cli.main import main as cli_main
    from tests.e2e.test_strongbox_cli import _why_skip

    why = _why_skip(capsys)
    if why:
        pytest.skip(why)
    open_dir = Path(tempfile.mkdtemp(prefix="nightcore-bounds-", dir="/tmp"))
    try:
        open_dir.chmod(0o755)  # the worker uid must reach the data root
        ws = app.init_workspace(open_dir / "ws")
        app.trust_add_key(ws, env.publisher.public_path, scope="*")
        tenants = {
            "fdbomb": (RW + "[limits]\nopen_files = 32\nwall_ms = 10000\n", fd_bomb(20_000)),
            "writer": (
                RW + f"[limits]\ndisk_bytes = {MIB}\nwall_ms = 10000\n",
                big_writer(2 << 30),
            ),
            "inodes": (RW + "[limits]\ndisk_files = 200\nwall_ms = 10000\n", inode_bomb()),
            "alpha": ("", None),
        }
        for name, (extra, wat) in tenants.items():
            d = write_tenant(
                ws.root,
                name,
                simple_manifest(name, extra),
                wat_module(wat) if wat is not None else wat_module(HELLO_WAT),
            )
            app.sign_tenant(d, str(env.publisher.private_path))
        bomb = write_tenant(
            ws.root, "cbomb", simple_manifest("cbomb", "[limits]\ncompile_ms = 500\n"), b""
        )
        (bomb / "module.wasm").write_bytes(compile_bomb(200_000))
        app.sign_tenant(bomb, str(env.publisher.private_path))
        capsys.readouterr()
        cli_main(["-w", str(ws.root), "run", "--json", "--strongbox", "--no-dashboard"])
        rows = {r["tenant"]: r for r in json.loads(capsys.readouterr().out)}
        assert rows["fdbomb"]["code"] == "FD_LIMIT", rows["fdbomb"]
        assert rows["writer"]["code"] == "DISK_LIMIT", rows["writer"]
        assert rows["inodes"]["code"] == "DISK_LIMIT", rows["inodes"]
        assert rows["cbomb"]["code"] == "COMPILE_LIMIT", rows["cbomb"]
        assert rows["alpha"]["code"] == "OK", rows["alpha"]
        assert cli_main(["-w", str(ws.root), "audit", "verify"]) == 0
    finally:
        shutil.rmtree(open_dir)
