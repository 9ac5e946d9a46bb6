"""Resource bounds of issue 14 against real Wasmtime runs, in-process and under --strongbox:
a descriptor bomb (FD_LIMIT), a 2 GiB writer and an inode bomb (DISK_LIMIT, stopped during
the run: the tenants spin afterwards, so only a stop during the run ends them before their
wall time), a compile bomb (COMPILE_LIMIT: time and memory), the node's descriptor reserve,
and the bounded, descriptor-relative disk scan. No test asserts how fast anything ran."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import resource
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from nightcore.sandbox import EffectiveLimits, Preopen, RunConfig, Sandbox
from nightcore.sandbox.types import Interrupt
from nightcore.sandbox.usage import (
    MAX_SCAN_DEPTH,
    ResourceMonitor,
    open_run,
    process_fd_count,
    raise_nofile,
    scan_grants,
)
from tests.hostile_tenants import big_writer, compile_bomb, fd_bomb, inode_bomb

MIB = 1024 * 1024
SECRET = b"test-cache-secret-0123456789abcdef"
# Generous wall time: a tenant that is not stopped by its bound ends with TIMEOUT instead,
# which fails the test (the hostile tenants spin once their attack is done).
LIMITS = EffectiveLimits(
    fuel=10**15,
    wall_ms=60_000,
    memory_bytes=4 * MIB,
    stack_bytes=512 * 1024,
    output_bytes=4096,
)


def _wasm(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


def _config(
    module: bytes, grant: Path | None, *, tenant: str = "tenant-a", **limits: int
) -> RunConfig:
    return RunConfig(
        tenant=tenant,
        module_sha256=hashlib.sha256(module).hexdigest(),
        entrypoint="_start",
        argv=(tenant,),
        env=(),
        preopens=(Preopen(grant, "data", True),) if grant is not None else (),
        limits=dataclasses.replace(LIMITS, **limits),
    )


def _grant(tmp_path: Path, name: str = "data") -> Path:
    d = tmp_path / name
    d.mkdir()
    return d


def _bytes_under(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("cache"), SECRET) as sb:
        yield sb


# -- descriptors ---------------------------------------------------------------------------


def test_fd_bomb_is_stopped_with_fd_limit_and_its_descriptors_are_freed(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    module = _wasm(fd_bomb(20_000))
    before = process_fd_count()
    res = sandbox.run(module, _config(module, _grant(tmp_path), open_files=64))
    assert res.code == "FD_LIMIT", (res.code, res.detail)
    assert "open_files = 64" in res.detail
    # Every descriptor the tenant held was Wasmtime's, closed with its store.
    assert process_fd_count() <= before + 8
    # The sandbox keeps serving runs.
    again = sandbox.run(module, _config(module, _grant(tmp_path, "again"), open_files=64))
    assert again.code == "FD_LIMIT"


def test_the_monitor_never_trips_the_callers_interrupt_but_relays_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The kill switch reads a tripped interrupt as its own doing: a resource stop uses the
    run's own interrupt; a kill-switch trip still stops a run that has grants."""
    module = _wasm(fd_bomb(20_000))
    caller = Interrupt()
    res = sandbox.run(module, _config(module, _grant(tmp_path), open_files=64), caller)
    assert res.code == "FD_LIMIT" and caller.code == ""
    spin = _wasm(fd_bomb(1))
    caller = Interrupt()
    timer = threading.Timer(0.3, caller.trip, ("CORDONED_IN_FLIGHT", "cordoned: test", {}))
    timer.start()
    try:
        res = sandbox.run(spin, _config(spin, _grant(tmp_path, "spin")), caller)
    finally:
        timer.cancel()
    assert (res.code, res.detail) == ("CORDONED_IN_FLIGHT", "cordoned: test")


def test_a_tenant_within_its_descriptor_limit_is_not_stopped(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    module = _wasm(fd_bomb(40, spin=False))
    res = sandbox.run(module, _config(module, _grant(tmp_path), open_files=64))
    assert res.code == "OK", res.detail


def test_the_soft_nofile_limit_is_raised_to_the_hard_limit(sandbox: Sandbox) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raise_nofile()[0] == soft
    assert hard in (resource.RLIM_INFINITY, soft)


def test_the_node_reserve_stops_the_run_holding_the_most(tmp_path: Path) -> None:
    """The monitor's own decision, with real descriptors under two runs' grants: when the
    process reaches its danger mark, the biggest holder is stopped even within its limit."""
    big, small = _grant(tmp_path, "big"), _grant(tmp_path, "small")
    (big / "f").write_bytes(b"")
    (small / "f").write_bytes(b"")
    limits = dataclasses.replace(LIMITS, open_files=1000)
    runs = [
        open_run(limits, (Preopen(big, "data", True),), Interrupt()),
        open_run(limits, (Preopen(small, "data", True),), Interrupt()),
    ]
    held = [os.open(big / "f", os.O_RDONLY) for _ in range(20)]
    held += [os.open(small / "f", os.O_RDONLY) for _ in range(3)]
    monitor = ResourceMonitor(1000)
    try:
        monitor.danger = process_fd_count()  # as if the node were at its reserve
        monitor.sample(runs)
        assert runs[0].interrupt.code == "FD_LIMIT"
        assert "reserve" in runs[0].interrupt.detail
        assert runs[1].interrupt.code == ""
        assert runs[0].fds >= 20 and runs[1].fds >= 3
    finally:
        monitor.stop()
        for fd in held:
            os.close(fd)
        for run in runs:
            run.close()


def test_a_monitor_that_cannot_measure_stops_the_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed. Mocked: /proc failing under a running node cannot be caused for real."""
    from nightcore.sandbox import usage

    def broken() -> int:
        raise OSError(5, "Input/output error")

    grant = _grant(tmp_path)
    run = open_run(LIMITS, (Preopen(grant, "data", True),), Interrupt())
    monkeypatch.setattr(usage, "process_fd_count", broken)
    monitor = ResourceMonitor(1)
    try:
        monitor.register(run)
        deadline = time.monotonic() + 60
        while not run.interrupt.code and time.monotonic() < deadline:
            time.sleep(0.01)
        assert run.interrupt.code == "DISK_LIMIT"
        assert "could not measure" in run.interrupt.detail
    finally:
        monitor.stop()
        run.close()


# -- disk ------------------------------------------------------------------------------------


def test_a_2_gib_writer_is_stopped_with_disk_limit_well_before_2_gib(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    grant = _grant(tmp_path)
    module = _wasm(big_writer(2 << 30))
    res = sandbox.run(module, _config(module, grant, disk_bytes=MIB))
    assert res.code == "DISK_LIMIT", (res.code, res.detail)
    assert "disk_bytes" in res.detail
    assert _bytes_under(grant) < 512 * MIB  # overshoot between samples: docs/limits.md


def test_an_inode_bomb_is_stopped_with_disk_limit(sandbox: Sandbox, tmp_path: Path) -> None:
    grant = _grant(tmp_path)
    module = _wasm(inode_bomb(100_000))
    res = sandbox.run(module, _config(module, grant, disk_files=200))
    assert res.code == "DISK_LIMIT", (res.code, res.detail)
    assert "disk_files" in res.detail
    assert len(os.listdir(grant)) < 50_000


def test_a_run_that_ends_over_its_disk_limit_is_disk_limit(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Between two samples a quick tenant may finish: the check at its end catches it."""
    grant = _grant(tmp_path)
    module = _wasm(big_writer(2 * MIB, spin=False))
    res = sandbox.run(module, _config(module, grant, disk_bytes=MIB))
    assert res.code == "DISK_LIMIT", (res.code, res.detail)
    assert res.extra.get("underlying_code", "OK") == "OK"


def test_data_already_over_the_limit_stops_the_next_run(sandbox: Sandbox, tmp_path: Path) -> None:
    """The bound is on what the grants hold, not on one run's writes: data left by earlier
    runs counts (so a tenant cannot grow its grants run after run)."""
    grant = _grant(tmp_path)
    (grant / "old").write_bytes(b"x" * (2 * MIB))
    module = _wasm(fd_bomb(1, spin=False))
    res = sandbox.run(module, _config(module, grant, disk_bytes=MIB))
    assert res.code == "DISK_LIMIT"


def test_the_disk_scan_is_bounded_and_follows_no_link(tmp_path: Path) -> None:
    grant = _grant(tmp_path)
    (grant / "root").symlink_to("/")
    (grant / "zero").symlink_to("/dev/zero")
    (grant / "a.bin").write_bytes(b"x" * 100)
    sub = grant / "sub"
    sub.mkdir()
    (sub / "b.bin").write_bytes(b"y" * 10)
    fd = os.open(grant, os.O_RDONLY | os.O_DIRECTORY)
    try:
        use = scan_grants([fd], 1000, 10**9)
        assert (use.entries, use.bytes, use.too_deep) == (5, 110, False)
        assert scan_grants([fd], 2, 10**9).entries == 3  # stops at the first entry over
        assert scan_grants([fd], 1000, 50).bytes > 50
    finally:
        os.close(fd)
    deep = _grant(tmp_path, "deep")
    path = deep
    for _ in range(MAX_SCAN_DEPTH + 2):
        path = path / "d"
        path.mkdir()
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert scan_grants([fd], 10**6, 10**9).too_deep
    finally:
        os.close(fd)


# -- compilation ------------------------------------------------------------------------------


def test_a_compile_bomb_is_refused_with_compile_limit_time(sandbox: Sandbox) -> None:
    module = compile_bomb(200_000)  # about 8 s of compilation on an idle core
    res = sandbox.run(module, _config(module, None, compile_ms=500))
    assert res.code == "COMPILE_LIMIT", (res.code, res.detail)
    assert "compile_ms = 500" in res.detail


def test_a_compile_bomb_is_refused_with_compile_limit_memory(sandbox: Sandbox) -> None:
    module = compile_bomb(20_000)
    res = sandbox.run(module, _config(module, None, compile_memory_bytes=16 * MIB))
    assert res.code == "COMPILE_LIMIT", (res.code, res.detail)
    assert "compile_memory_bytes" in res.detail


def test_an_ordinary_module_compiles_in_the_child_and_is_cached(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    module = compile_bomb(50)
    first = sandbox.run(module, _config(module, None))
    assert (first.code, first.cache) == ("OK", "miss")
    assert sandbox.run(module, _config(module, None)).cache == "hit"
    # A fresh sandbox on the same disk cache loads the artifact the child produced.
    with Sandbox(tmp_path / "c", SECRET) as one:
        one.run(module, _config(module, None))
    with Sandbox(tmp_path / "c", SECRET) as two:
        assert two.run(module, _config(module, None)).cache == "hit"


def test_the_compile_process_is_kept_and_replaced_after_a_limit() -> None:
    with Sandbox(None, b"") as sb:
        first, second = compile_bomb(10), compile_bomb(11)
        assert sb.run(first, _config(first, None)).code == "OK"
        (pid,) = sb._compiler.pids
        assert sb.run(second, _config(second, None)).code == "OK"
        assert sb._compiler.pids == [pid]  # one child serves misses one after another
        bomb = compile_bomb(200_000)
        assert sb.run(bomb, _config(bomb, None, compile_ms=300)).code == "COMPILE_LIMIT"
        assert sb._compiler.pids == []  # killed; the next miss starts another
        third = compile_bomb(12)
        assert sb.run(third, _config(third, None)).code == "OK"
        assert sb._compiler.pids not in ([], [pid])


def test_a_slow_compilation_does_not_queue_a_neighbours(tmp_path: Path) -> None:
    """Each concurrent miss gets its own compile process: a neighbour's module compiles and
    runs while a compile bomb is still inside its (generous) compile_ms."""
    with Sandbox(None, b"") as sb:
        bomb = compile_bomb(900_000)  # minutes of compilation: killed below
        out: dict[str, str] = {}
        slow = threading.Thread(
            target=lambda: out.update(
                bomb=sb.run(
                    bomb, _config(bomb, None, compile_ms=600_000, compile_memory_bytes=4 << 30)
                ).code
            )
        )
        slow.start()
        try:
            neighbour = compile_bomb(13)
            res = sb.run(neighbour, _config(neighbour, None, tenant="tenant-b"))
            assert res.code == "OK"
            assert "bomb" not in out  # the bomb was still compiling when the neighbour ran
        finally:
            sb._compiler.close()  # kills the bomb's compile process; its run ends
            slow.join(120)
        assert not slow.is_alive()
        assert out["bomb"] == "COMPILE_LIMIT"


def test_invalid_webassembly_stays_compile_error(sandbox: Sandbox) -> None:
    module = b"\x00asm\x01\x00\x00\x00\x05"
    res = sandbox.run(module, _config(module, None))
    assert res.code == "COMPILE_ERROR"


# -- under --strongbox --------------------------------------------------------------------------

_NO_STRONGBOX = ""
try:
    from nightcore.sandbox.strongbox import StrongboxSandbox, seccomp_available

    _NO_STRONGBOX = seccomp_available() or (
        "" if os.geteuid() == 0 else "strongbox workers need root (unshare(CLONE_NEWNET), setuid)"
    )
except ImportError as exc:  # pragma: no cover - pyseccomp is a Linux dependency
    _NO_STRONGBOX = str(exc)
needs_strongbox = pytest.mark.skipif(bool(_NO_STRONGBOX), reason=_NO_STRONGBOX or "available")


@pytest.fixture(scope="module")
def strongbox() -> Iterator[StrongboxSandbox]:
    with StrongboxSandbox(workers=1) as sb:
        yield sb


@pytest.fixture
def sb_tmp() -> Iterator[Path]:
    """A directory the worker uid can traverse (pytest's own tmp root is 0700 root)."""
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - the worker uid must traverse it
        yield Path(tmp)


def _strongbox_grant(strongbox: StrongboxSandbox, tmp: Path) -> Path:
    grant = _grant(tmp)
    strongbox.grant_access(grant, "tenant-a")  # owned by that tenant's worker uid
    return grant


@needs_strongbox
def test_strongbox_fd_bomb_is_fd_limit(strongbox: StrongboxSandbox, sb_tmp: Path) -> None:
    # Below the worker's RLIMIT_NOFILE (128), the declared limit is what stops it.
    module = _wasm(fd_bomb(20_000))
    grant = _strongbox_grant(strongbox, sb_tmp)
    res = strongbox.run(module, _config(module, grant, open_files=32))
    assert res.code == "FD_LIMIT", (res.code, res.detail)


@needs_strongbox
def test_strongbox_2_gib_writer_is_disk_limit(strongbox: StrongboxSandbox, sb_tmp: Path) -> None:
    module = _wasm(big_writer(2 << 30))
    grant = _strongbox_grant(strongbox, sb_tmp)
    res = strongbox.run(module, _config(module, grant, disk_bytes=MIB))
    assert res.code == "DISK_LIMIT", (res.code, res.detail)
    assert _bytes_under(grant) < 512 * MIB


@needs_strongbox
def test_strongbox_inode_bomb_is_disk_limit(strongbox: StrongboxSandbox, sb_tmp: Path) -> None:
    module = _wasm(inode_bomb(100_000))
    grant = _strongbox_grant(strongbox, sb_tmp)
    res = strongbox.run(module, _config(module, grant, disk_files=200))
    assert res.code == "DISK_LIMIT", (res.code, res.detail)


@needs_strongbox
def test_strongbox_compile_bomb_is_compile_limit(strongbox: StrongboxSandbox) -> None:
    module = compile_bomb(200_000)
    res = strongbox.run(module, _config(module, None, compile_ms=500))
    assert res.code == "COMPILE_LIMIT", (res.code, res.detail)


def test_a_compile_works_under_an_inherited_hard_address_space_limit() -> None:
    """A node started under a hard RLIMIT_AS (``ulimit -v``, systemd ``LimitAS=``): the
    compile child's soft limit stays within it (raising the hard limit needs
    CAP_SYS_RESOURCE, and asking to failed every compile with WORKER_START_FAILED)."""
    import subprocess
    import sys

    script = (
        "import wasmtime\n"
        "from nightcore.sandbox.compiler import CompileProcess\n"
        "p = CompileProcess()\n"
        "done = p.compile(wasmtime.wat2wasm('(module)'), stack_bytes=512 * 1024,\n"
        "    deterministic=False, compile_ms=30_000, compile_memory_bytes=1 << 30)\n"
        "p.close()\n"
        "print(done.status, done.detail)\n"
    )
    hard = 6 << 30

    def limit() -> None:  # pragma: no cover - runs in the child
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))

    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok"), out.stdout
