"""``--strongbox`` against real worker processes: same outcomes as the in-process sandbox,
real confinement (uid, network, seccomp on every thread), clean codes when a worker dies or
lies. No mocks, no timing assertions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from nightcore.errors import SandboxError
from nightcore.sandbox.engine import Sandbox
from nightcore.sandbox.strongbox import (
    MAX_TREE_DEPTH,
    SELFTEST_ABORT,
    SELFTEST_EXECVE,
    SELFTEST_GARBAGE,
    SELFTEST_LIES,
    SELFTEST_OVERSIZED,
    SELFTEST_SOCKET,
    ReplyInvalid,
    StrongboxSandbox,
    Worker,
    WorkerKey,
    WorkerOptions,
    chown_tree,
    result_from_frame,
    seccomp_available,
    strict_json,
)
from nightcore.sandbox.types import EffectiveLimits, Preopen, RunConfig, RunResult
from tests.deep_tree import build_deep_tree, remove_deep_tree

_WHY = seccomp_available() or (
    "" if os.geteuid() == 0 else "strongbox workers need root (unshare(CLONE_NEWNET), setuid)"
)
pytestmark = pytest.mark.skipif(bool(_WHY), reason=_WHY or "available")

MIB = 1024 * 1024
LIMITS = EffectiveLimits(
    fuel=50_000_000, wall_ms=5_000, memory_bytes=4 * MIB, stack_bytes=512 * 1024, output_bytes=4096
)
FD_WRITE = (
    '(import "wasi_snapshot_preview1" "fd_write" '
    "(func $fd_write (param i32 i32 i32 i32) (result i32)))"
)
PROC_EXIT = '(import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))'
PATH_OPEN = (
    '(import "wasi_snapshot_preview1" "path_open" (func $path_open '
    "(param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"
)


def wasm(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


HELLO = wasm(f"""
(module {FD_WRITE}
  (memory (export "memory") 1)
  (data (i32.const 64) "hello\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
""")
EXIT3 = wasm(
    f'(module {PROC_EXIT} (memory (export "memory") 1) '
    '(func (export "_start") (call $proc_exit (i32.const 3))))'
)
LOOP = wasm('(module (func (export "_start") (loop $l (br $l))))')
GROW = wasm("""
(module (memory (export "memory") 1)
  (func (export "_start")
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))
""")
TRAP = wasm('(module (func (export "_start") unreachable))')
SPAM = wasm(f"""
(module {FD_WRITE} (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 1000))
    (loop $l (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $l))))
""")
WRITE_FILE = wasm(f"""
(module {FD_WRITE} {PATH_OPEN}
  (memory (export "memory") 1)
  (data (i32.const 100) "out.txt")
  (data (i32.const 16) "written\\n")
  (func (export "_start")
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 7)
          (i32.const 1) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0)
          (i32.const 200))
      (then unreachable))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.load (i32.const 200)) (i32.const 0) (i32.const 1)
      (i32.const 8)))))
""")


def config(
    module: bytes,
    *,
    entrypoint: str = "_start",
    tenant: str = "tenant-a",
    preopens: tuple[Preopen, ...] = (),
    **limits: int,
) -> RunConfig:
    return RunConfig(
        tenant=tenant,
        module_sha256=hashlib.sha256(module).hexdigest(),
        entrypoint=entrypoint,
        argv=(tenant,),
        env=(("GREETING", "hi"),),
        preopens=preopens,
        limits=dataclasses.replace(LIMITS, **limits),
    )


@pytest.fixture(scope="module")
def strongbox() -> Iterator[StrongboxSandbox]:
    with StrongboxSandbox(workers=2) as sb:
        yield sb


@pytest.fixture(scope="module")
def inproc() -> Iterator[Sandbox]:
    with Sandbox(None, b"") as sb:
        yield sb


@pytest.fixture(scope="module")
def selftest_box() -> Iterator[StrongboxSandbox]:
    with StrongboxSandbox(workers=1, options=WorkerOptions(selftest=True)) as sb:
        yield sb


def _same(a: RunResult, b: RunResult) -> None:
    assert (a.code, a.exit_code, a.stdout, a.stderr, a.output_truncated) == (
        b.code,
        b.exit_code,
        b.stdout,
        b.stderr,
        b.output_truncated,
    )
    assert a.extra == b.extra
    assert a.fuel_exact == b.fuel_exact


# -- same outcomes as the in-process sandbox -----------------------------------------------


@pytest.mark.parametrize(
    ("module", "limits", "code"),
    [
        (HELLO, {}, "OK"),
        (EXIT3, {}, "EXIT_NONZERO"),
        (LOOP, {"fuel": 100_000}, "FUEL_EXHAUSTED"),
        (LOOP, {"wall_ms": 100, "fuel": 10**15}, "TIMEOUT"),
        (GROW, {}, "MEMORY_LIMIT"),
        (TRAP, {}, "TRAP"),
        (SPAM, {}, "OUTPUT_LIMIT"),
    ],
    ids=["ok", "exit-nonzero", "fuel", "timeout", "memory", "trap", "output"],
)
def test_outcomes_match_the_in_process_sandbox(
    strongbox: StrongboxSandbox,
    inproc: Sandbox,
    module: bytes,
    limits: dict[str, int],
    code: str,
) -> None:
    cfg = config(module)
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(LIMITS, **limits))
    confined = strongbox.run(module, cfg)
    local = inproc.run(module, cfg)
    assert confined.code == code
    _same(confined, local)
    if code in ("OK", "EXIT_NONZERO", "FUEL_EXHAUSTED", "MEMORY_LIMIT", "TRAP"):
        # Fuel is close but not always identical: the worker's Engine has small memory
        # reservations (explicit bounds checks), which Wasmtime meters slightly differently.
        assert 0 < confined.fuel_used <= cfg.limits.fuel
        assert confined.memory_bytes == local.memory_bytes
    if code == "OK":
        assert confined.stdout == b"hello\n"
    if code == "TIMEOUT":
        # Wasmtime never wrote the loop's fuel back: unknown (null), never a false 0.
        assert not confined.fuel_exact and confined.fuel_reported is None
    if code == "FUEL_EXHAUSTED":
        assert confined.fuel_reported == cfg.limits.fuel


def test_a_bigger_memory_limit_and_stack_still_work(strongbox: StrongboxSandbox) -> None:
    result = strongbox.run(GROW, config(GROW, memory_bytes=128 * MIB, stack_bytes=4 * MIB))
    assert result.code == "MEMORY_LIMIT"
    assert result.memory_bytes == 128 * MIB


def test_writable_preopen_owned_by_the_worker_uid(strongbox: StrongboxSandbox) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        os.chmod(tmp, 0o755)  # noqa: S103 - the worker uid must traverse it
        strongbox.grant_access(data, "tenant-a")
        cfg = config(WRITE_FILE, preopens=(Preopen(data, "data", writable=True),))
        result = strongbox.run(WRITE_FILE, cfg)
        assert result.code == "OK", result.detail
        assert (data / "out.txt").read_bytes() == b"written\n"


def test_config_errors_are_raised_like_the_sandbox(strongbox: StrongboxSandbox) -> None:
    with pytest.raises(SandboxError) as err:
        strongbox.run(HELLO, config(EXIT3))
    assert err.value.code == "DIGEST_MISMATCH"
    with tempfile.TemporaryDirectory() as tmp:  # 0700 root: not reachable by the worker uid
        hidden = Path(tmp) / "d"
        hidden.mkdir()
        cfg = config(HELLO, preopens=(Preopen(hidden, "d", writable=False),))
        with pytest.raises(SandboxError) as err:
            strongbox.run(HELLO, cfg)
        assert err.value.code == "PREOPEN_INVALID"
    assert strongbox.run(HELLO, config(HELLO)).code == "OK"  # the worker survived


def test_concurrent_runs_use_the_pool(strongbox: StrongboxSandbox) -> None:
    results: list[RunResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(strongbox.run(HELLO, config(HELLO))))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.code for r in results] == ["OK"] * 4
    assert len(strongbox.worker_pids()) <= 2


# -- confinement ------------------------------------------------------------------------


def test_the_worker_is_confined() -> None:
    worker = Worker(
        WorkerKey("tenant-a", 512 * 1024, False, 4 * MIB), WorkerOptions(), selftest=True
    )
    try:
        report = worker.wait_ready()
    finally:
        worker.stop()
    assert report["uid"] != 0 and report["euid"] != 0 and report["gid"] != 0
    assert report["groups"] == []
    assert report["net_before_filter"] in ("ENETUNREACH", "ENETDOWN")
    assert report["shadow"] == "EACCES"
    assert report["environ"] == []
    threads = report["threads"]
    assert len(threads) >= 2  # the epoch ticker and Wasmtime's threads exist
    for t in threads:
        assert (t["seccomp"], t["no_new_privs"]) == ("2", "1"), t
    limits = " | ".join(report["limits"])
    assert "Max core file size 0 0" in limits
    assert "Max open files 128 128" in limits
    assert len(report["fds"]) <= 12


@pytest.mark.parametrize("action", [SELFTEST_EXECVE, SELFTEST_SOCKET])
def test_forbidden_syscalls_kill_the_worker(selftest_box: StrongboxSandbox, action: str) -> None:
    result = selftest_box.run(HELLO, config(HELLO, entrypoint=action))
    assert result.code == "SECCOMP_VIOLATION"
    assert result.extra["worker_status"] == "-31"
    assert selftest_box.run(HELLO, config(HELLO)).code == "OK"  # a fresh worker took over


def test_a_crashing_worker(selftest_box: StrongboxSandbox) -> None:
    result = selftest_box.run(HELLO, config(HELLO, entrypoint=SELFTEST_ABORT))
    assert result.code == "WORKER_CRASHED"
    assert result.extra["worker_signal"] == "SIGABRT"


@pytest.mark.parametrize("action", [SELFTEST_GARBAGE, SELFTEST_OVERSIZED])
def test_hostile_replies_are_refused(selftest_box: StrongboxSandbox, action: str) -> None:
    result = selftest_box.run(HELLO, config(HELLO, entrypoint=action))
    assert result.code == "WORKER_REPLY_INVALID"
    assert result.stdout == b"" and result.exit_code is None
    assert selftest_box.run(HELLO, config(HELLO)).code == "OK"


def test_lying_replies_are_clipped(selftest_box: StrongboxSandbox) -> None:
    result = selftest_box.run(HELLO, config(HELLO, entrypoint=SELFTEST_LIES))
    assert result.code == "OK"
    assert result.fuel_used == LIMITS.fuel
    assert result.memory_bytes == LIMITS.memory_bytes
    assert "\n" not in result.detail and "\x1b" not in result.detail


def test_a_worker_killed_mid_run_gives_a_code(strongbox: StrongboxSandbox) -> None:
    results: list[RunResult] = []
    cfg = config(LOOP, tenant="tenant-kill", wall_ms=20_000, fuel=10**15)
    runner = threading.Thread(target=lambda: results.append(strongbox.run(LOOP, cfg)))
    runner.start()
    deadline = time.monotonic() + 20
    pids: list[int] = []
    while not pids and time.monotonic() < deadline:
        time.sleep(0.2)  # the worker must be past start-up and inside the run
        pids = strongbox.worker_pids(busy=True)
    assert pids
    time.sleep(0.3)
    os.kill(pids[0], signal.SIGKILL)
    runner.join()
    assert results[0].code == "TIMEOUT"
    assert results[0].extra["worker_signal"] == "SIGKILL"
    assert strongbox.run(HELLO, config(HELLO)).code == "OK"


# -- the parent's checks of replies (pure functions) -------------------------------------


@pytest.mark.parametrize(
    "raw", [b'{"a":1,"a":2}', b'{"a":NaN}', b'{"a":1.5}', b"[1]", b'{"a":"\xff"}']
)
def test_strict_json_refuses(raw: bytes) -> None:
    with pytest.raises((ValueError, UnicodeDecodeError)):
        strict_json(raw)


def _reply(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "op": "result",
        "code": "OK",
        "exit_code": 0,
        "fuel_used": 1,
        "fuel_exact": True,
        "memory_bytes": 1,
        "stdout_len": 2,
        "stderr_len": 0,
        "output_truncated": False,
        "detail": "",
        "cache": "miss",
        "extra": {},
        "seq": 7,
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    "over",
    [
        {"code": "PWNED"},
        {"seq": 6},
        {"stdout_len": 3},
        {"exit_code": True},
        {"fuel_exact": 1},
        {"fuel_exact": None},
        {"extra": {"x": "y"}},
        {"cache": "evil"},
        {"unexpected": 1},
    ],
)
def test_invalid_replies(over: dict[str, object]) -> None:
    with pytest.raises(ReplyInvalid):
        result_from_frame(json.loads(json.dumps(_reply(**over))), b"ok", LIMITS, 7)


def test_reply_output_above_the_limit_is_refused() -> None:
    blob = b"x" * (LIMITS.output_bytes + 1)
    with pytest.raises(ReplyInvalid):
        result_from_frame(_reply(stdout_len=len(blob)), blob, LIMITS, 7)


# -- handing a tenant's data tree to the worker uid (issue 16, item 1) -----------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_tree_1000_levels_deep_is_refused_with_tree_limit(strongbox: StrongboxSandbox) -> None:
    # Before: os.walk recursed once per level and raised RecursionError out of the whole run.
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - the worker uid must traverse it
        deep = Path(tmp) / "deep"
        deep.mkdir()
        build_deep_tree(deep, 1000)
        try:
            fds = _open_fds()
            with pytest.raises(SandboxError) as err:
                strongbox.grant_access(deep)
            assert err.value.code == "TREE_LIMIT"
            assert f"more than {MAX_TREE_DEPTH} directories deep" in err.value.message
            assert _open_fds() == fds  # every descriptor of the walk was closed
            # The sandbox is unharmed: a neighbour with an ordinary tree still runs.
            data = Path(tmp) / "data"
            data.mkdir()
            strongbox.grant_access(data, "tenant-a")
            cfg = config(WRITE_FILE, preopens=(Preopen(data, "data", writable=True),))
            assert strongbox.run(WRITE_FILE, cfg).code == "OK"
        finally:
            assert remove_deep_tree(deep) == 1000


def test_chown_tree_bounds_and_links(tmp_path: Path) -> None:
    top = tmp_path / "top"
    top.mkdir()
    build_deep_tree(top, 3)
    (top / "f").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    (top / "link").symlink_to(outside)
    (top / "dirlink").symlink_to(tmp_path)
    # Exactly at the bounds: 3 levels below top, 6 entries (d, d/d, d/d/d, f, link, dirlink).
    assert chown_tree(top, 65534, 65534, max_depth=3, max_entries=6) == 6
    assert (top / "d/d/d").stat().st_uid == 65534
    assert (top / "f").stat().st_uid == 65534
    assert os.lstat(top / "link").st_uid == 65534
    # Links are re-owned themselves, never followed.
    assert outside.stat().st_uid == 0 and tmp_path.stat().st_uid == 0
    with pytest.raises(SandboxError, match="more than 2 directories deep") as err:
        chown_tree(top, 65534, 65534, max_depth=2)
    assert err.value.code == "TREE_LIMIT"
    with pytest.raises(SandboxError, match="more than 5 entries") as err:
        chown_tree(top, 65534, 65534, max_entries=5)
    assert err.value.code == "TREE_LIMIT"


def test_chown_tree_refuses_a_link_as_the_top(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(SandboxError) as err:
        chown_tree(tmp_path / "alias", 65534, 65534)
    assert err.value.code == "PREOPEN_INVALID"
    assert (tmp_path / "real").stat().st_uid == 0
