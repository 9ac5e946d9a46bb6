"""The sandbox layer against real Wasmtime: outcome codes, limits, capabilities, caches.

Every module is built inline from WAT. No test asserts how fast something ran, only
generous upper bounds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

import nightcore.sandbox
from nightcore.errors import SandboxError
from nightcore.sandbox import (
    DiskModuleCache,
    EffectiveLimits,
    EngineKey,
    Preopen,
    RunConfig,
    RunResult,
    Sandbox,
    cache_key,
    wasmtime_version,
)

SECRET = b"test-cache-secret-0123456789abcdef"
MIB = 1024 * 1024

LIMITS = EffectiveLimits(
    fuel=50_000_000,
    wall_ms=5_000,
    memory_bytes=4 * MIB,
    stack_bytes=512 * 1024,
    output_bytes=64 * 1024,
)


def wasm(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


def config(
    module: bytes,
    *,
    entrypoint: str = "_start",
    argv: tuple[str, ...] = ("tenant-a",),
    env: tuple[tuple[str, str], ...] = (),
    preopens: tuple[Preopen, ...] = (),
    deterministic: bool = False,
    seed: int = 0,
    **limits: int,
) -> RunConfig:
    return RunConfig(
        tenant="tenant-a",
        module_sha256=hashlib.sha256(module).hexdigest(),
        entrypoint=entrypoint,
        argv=argv,
        env=env,
        preopens=preopens,
        limits=dataclasses.replace(LIMITS, **limits),
        deterministic=deterministic,
        seed=seed,
    )


FD_WRITE = (
    '(import "wasi_snapshot_preview1" "fd_write" '
    "(func $fd_write (param i32 i32 i32 i32) (result i32)))"
)
PROC_EXIT = '(import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))'

HELLO = wasm(f"""
(module
  {FD_WRITE}
  (memory (export "memory") 1)
  (data (i32.const 64) "hello\\n")
  (data (i32.const 80) "warn\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 80))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))))
""")

EXIT3 = wasm(f"""
(module
  {PROC_EXIT}
  (memory (export "memory") 1)
  (func (export "_start") (call $proc_exit (i32.const 3))))
""")

LOOP = wasm('(module (func (export "_start") (loop $l (br $l))))')

RECURSE = wasm('(module (func $f (export "_start") (call $f)))')

MEMORY_BOMB = wasm("""
(module
  (memory (export "memory") 1)
  (func (export "_start") (local $old i32)
    (loop $grow
      (local.set $old (memory.grow (i32.const 1)))
      (if (i32.eq (local.get $old) (i32.const -1)) (then unreachable))
      (i32.store8 (i32.shl (local.get $old) (i32.const 16)) (i32.const 170))
      (br $grow))))
""")

UNREACHABLE = wasm('(module (memory (export "memory") 1) (func (export "_start") unreachable))')

FLOOD_WAT = f"""
(module
  {FD_WRITE}
  {PROC_EXIT}
  (memory (export "memory") 2)
  (func (export "_start")
    (memory.fill (i32.const 1024) (i32.const 65) (i32.const 65536))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $again
      (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
        (then (call $proc_exit (i32.const 1))))
      (br $again))))
"""

# Ignores failed writes and floods forever: only the sandbox can stop it.
STUBBORN_FLOOD_WAT = FLOOD_WAT.replace("(then (call $proc_exit (i32.const 1)))", "(then (nop))")


def dumper(kind: str) -> bytes:
    """A module that writes its raw argv or environ block (NUL-terminated strings)."""
    return wasm(f"""
(module
  (import "wasi_snapshot_preview1" "{kind}_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "{kind}_get" (func $get (param i32 i32) (result i32)))
  {FD_WRITE}
  (memory (export "memory") 2)
  (func (export "_start")
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (drop (call $get (i32.const 1024) (i32.const 8192)))
    (i32.store (i32.const 16) (i32.const 8192))
    (i32.store (i32.const 20) (i32.load (i32.const 4)))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
""")


PATH_OPEN = (
    '(import "wasi_snapshot_preview1" "path_open" '
    "(func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"
)

# Creates "out.txt" in the first preopen (fd 3) and writes to it. If path_open fails it
# writes the errno (u32) to stdout and exits 1; if the write fails, the same with exit 2.
FS_WRITER = wasm(f"""
(module
  {PATH_OPEN}
  {FD_WRITE}
  {PROC_EXIT}
  (memory (export "memory") 1)
  (data (i32.const 64) "out.txt")
  (data (i32.const 96) "written\\n")
  (func $fail (param $errno i32) (param $status i32)
    (i32.store (i32.const 200) (local.get $errno))
    (i32.store (i32.const 16) (i32.const 200))
    (i32.store (i32.const 20) (i32.const 4))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    (call $proc_exit (local.get $status)))
  (func (export "_start") (local $err i32)
    (local.set $err
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 7)
        (i32.const 1) (i64.const 0x40) (i64.const 0) (i32.const 0) (i32.const 0)))
    (if (local.get $err) (then (call $fail (local.get $err) (i32.const 1))))
    (i32.store (i32.const 16) (i32.const 96))
    (i32.store (i32.const 20) (i32.const 8))
    (local.set $err
      (call $fd_write (i32.load (i32.const 0)) (i32.const 16) (i32.const 1) (i32.const 24)))
    (if (local.get $err) (then (call $fail (local.get $err) (i32.const 2))))))
""")

# Opens "in.txt" in the first preopen for reading and copies (up to 100 bytes of) it to
# stdout; exit 1 if path_open failed, 2 if the read did.
FS_READER = wasm(f"""
(module
  {PATH_OPEN}
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  {FD_WRITE}
  {PROC_EXIT}
  (memory (export "memory") 1)
  (data (i32.const 64) "in.txt")
  (func (export "_start") (local $err i32)
    (local.set $err
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 6)
        (i32.const 0) (i64.const 0x2) (i64.const 0) (i32.const 0) (i32.const 0)))
    (if (local.get $err) (then (call $proc_exit (i32.const 1))))
    (i32.store (i32.const 16) (i32.const 256))
    (i32.store (i32.const 20) (i32.const 100))
    (local.set $err
      (call $fd_read (i32.load (i32.const 0)) (i32.const 16) (i32.const 1) (i32.const 24)))
    (if (local.get $err) (then (call $proc_exit (i32.const 2))))
    (i32.store (i32.const 20) (i32.load (i32.const 24)))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
""")

# Writes: realtime clock (u64), 16 random bytes, monotonic clock (u64): 32 bytes.
CLOCK_RANDOM = wasm(f"""
(module
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  {FD_WRITE}
  {PROC_EXIT}
  (memory (export "memory") 1)
  (func (export "_start") (local $err i32)
    (local.set $err (call $clock (i32.const 0) (i64.const 1) (i32.const 96)))
    (if (local.get $err) (then (call $proc_exit (local.get $err))))
    (local.set $err (call $random (i32.const 104) (i32.const 16)))
    (if (local.get $err) (then (call $proc_exit (local.get $err))))
    (local.set $err (call $clock (i32.const 1) (i64.const 1) (i32.const 120)))
    (if (local.get $err) (then (call $proc_exit (local.get $err))))
    (i32.store (i32.const 0) (i32.const 96))
    (i32.store (i32.const 4) (i32.const 32))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
""")

# random_get into a buffer that runs past the end of memory; exits with the errno.
RANDOM_OUT_OF_BOUNDS = wasm(f"""
(module
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  {PROC_EXIT}
  (memory (export "memory") 1)
  (func (export "_start") (call $proc_exit (call $random (i32.const 65530) (i32.const 100)))))
""")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(None, b"") as sb:
        yield sb


def run(sb: Sandbox, module: bytes, **kwargs: object) -> RunResult:
    return sb.run(module, config(module, **kwargs))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Outcome codes


def test_hello_ok(sandbox: Sandbox) -> None:
    result = run(sandbox, HELLO)
    assert result.code == "OK"
    assert result.exit_code == 0
    assert result.stdout == b"hello\n"
    assert result.stderr == b"warn\n"
    assert not result.output_truncated
    assert 0 < result.fuel_used < LIMITS.fuel
    assert result.memory_bytes == 65536
    assert 0 < result.wall_ms < 10_000
    assert result.cache in ("miss", "hit")
    assert run(sandbox, HELLO).cache == "hit"


def test_proc_exit_nonzero(sandbox: Sandbox) -> None:
    result = run(sandbox, EXIT3)
    assert result.code == "EXIT_NONZERO"
    assert result.exit_code == 3


def test_proc_exit_zero_is_ok(sandbox: Sandbox) -> None:
    module = wasm(f"""
    (module {PROC_EXIT} (memory (export "memory") 1)
      (func (export "_start") (call $proc_exit (i32.const 0))))""")
    result = run(sandbox, module)
    assert (result.code, result.exit_code) == ("OK", 0)


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = run(sandbox, LOOP, wall_ms=100, fuel=10**15)
    assert result.code == "TIMEOUT"
    assert result.exit_code is None
    assert time.monotonic() - started < 10


def test_fuel_exhausted(sandbox: Sandbox) -> None:
    result = run(sandbox, LOOP, fuel=100_000, wall_ms=60_000)
    assert result.code == "FUEL_EXHAUSTED"
    assert result.fuel_used == 100_000
    assert result.fuel_exact and result.fuel_reported == 100_000


# Issue 16 item 7: a timed-out run reported fuel_used 0. Wasmtime keeps a running function's
# fuel counter in a register and writes it back only at calls, returns, `unreachable` and
# out-of-fuel checks; an epoch stop loses everything since then (all of it for `loop br 0`).


def test_timeout_fuel_is_unknown_never_a_false_zero(sandbox: Sandbox) -> None:
    result = run(sandbox, LOOP, wall_ms=50, fuel=10**15)
    assert result.code == "TIMEOUT"
    assert result.fuel_used == 0  # what the store says: nothing was written back
    assert not result.fuel_exact
    assert result.fuel_reported is None


def test_timeout_with_calls_keeps_a_lower_bound_but_reports_unknown(sandbox: Sandbox) -> None:
    calls = wasm('(module (func $h) (func (export "_start") (loop $l (call $h) (br $l))))')
    result = run(sandbox, calls, wall_ms=50, fuel=10**15)
    assert result.code == "TIMEOUT"
    assert result.fuel_used > 0 and not result.fuel_exact
    assert result.fuel_reported is None


def _count_then(tail: str) -> bytes:
    return wasm(f"""
    (module (memory (export "memory") 1)
      (func (export "_start") (local $i i32)
        (loop $l
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 10000))))
        {tail}))""")


def test_fuel_after_other_endings(sandbox: Sandbox) -> None:
    returned = run(sandbox, _count_then(""))
    assert returned.code == "OK" and returned.fuel_exact and returned.fuel_used > 10_000
    # `unreachable` writes the counter back first: the same work, exactly counted.
    unreachable = run(sandbox, _count_then("unreachable"))
    assert unreachable.code == "TRAP" and unreachable.fuel_reported is not None
    assert abs(unreachable.fuel_reported - returned.fuel_used) <= 1
    # A division by zero does not: the 10,000 iterations are lost, so the fuel is unknown.
    div0 = run(sandbox, _count_then("(drop (i32.div_u (i32.const 1) (i32.const 0)))"))
    assert div0.code == "TRAP" and div0.fuel_reported is None


def test_output_limit_stop_fuel_is_unknown(sandbox: Sandbox) -> None:
    flood = wasm(STUBBORN_FLOOD_WAT)
    result = run(sandbox, flood, output_bytes=1024)
    assert result.code == "OUTPUT_LIMIT"
    assert result.fuel_used > 0 and result.fuel_reported is None


def test_deep_recursion_overflows_the_stack(sandbox: Sandbox) -> None:
    result = run(sandbox, RECURSE, stack_bytes=64 * 1024)
    assert result.code == "STACK_OVERFLOW"
    assert "stack" in result.detail


def test_stack_larger_than_a_thread_stack_traps_cleanly(sandbox: Sandbox) -> None:
    # 16 MiB of wasm stack: more than a default thread stack, so it runs on a helper thread
    # (and needs a larger async stack, or Engine() would abort the process).
    result = run(sandbox, RECURSE, stack_bytes=16 * MIB, fuel=10**10)
    assert result.code == "STACK_OVERFLOW"


def test_memory_bomb_hits_memory_limit(sandbox: Sandbox) -> None:
    result = run(sandbox, MEMORY_BOMB, memory_bytes=4 * MIB)
    assert result.code == "MEMORY_LIMIT"
    assert 4 * MIB - 65536 < result.memory_bytes <= 4 * MIB
    assert result.extra["underlying_code"] == "TRAP"


def test_trap_far_below_the_memory_limit_is_a_trap(sandbox: Sandbox) -> None:
    result = run(sandbox, UNREACHABLE, memory_bytes=4 * MIB)
    assert result.code == "TRAP"
    assert result.detail == "wasm trap: wasm `unreachable` instruction executed"
    assert "\n" not in result.detail


def test_declared_memory_above_the_limit(sandbox: Sandbox) -> None:
    module = wasm('(module (memory (export "memory") 100) (func (export "_start")))')
    result = run(sandbox, module, memory_bytes=1 * MIB)
    assert result.code == "MEMORY_LIMIT"


def test_output_cap_in_process(sandbox: Sandbox) -> None:
    # stdout and stderr share one budget; the cap is hit in stdout here.
    result = run(sandbox, HELLO, output_bytes=4)
    assert result.code == "OUTPUT_LIMIT"
    assert result.stdout == b"hell"
    assert result.stderr == b""
    assert result.output_truncated
    assert result.extra["underlying_code"] == "OK"


def test_output_exactly_at_cap_is_not_truncated(sandbox: Sandbox) -> None:
    result = run(sandbox, HELLO, output_bytes=11)
    assert result.code == "OK"
    assert not result.output_truncated
    assert result.stdout + result.stderr == b"hello\nwarn\n"


FLOOD_SCRIPT = """
import hashlib, json, sys, wasmtime
from nightcore.sandbox import EffectiveLimits, RunConfig, Sandbox
cap = int(sys.argv[1])
limits = EffectiveLimits(fuel=10**13, wall_ms=60_000, memory_bytes=4 << 20,
                         stack_bytes=512 * 1024, output_bytes=cap)
out = []
with Sandbox(None, b"") as sb:
    for wat in sys.argv[2:]:
        module = bytes(wasmtime.wat2wasm(wat))
        cfg = RunConfig(tenant="t", module_sha256=hashlib.sha256(module).hexdigest(),
                        entrypoint="_start", argv=("t",), env=(), preopens=(), limits=limits)
        for _ in range(2):
            r = sb.run(module, cfg)
            out.append([r.code, r.exit_code, len(r.stdout), r.output_truncated,
                        r.extra.get("underlying_code"), r.wall_ms])
print(json.dumps(out))
"""


def test_output_flood_is_capped_and_the_interpreter_exits_cleanly() -> None:
    # Run in a subprocess: an output callback that Wasmtime releases on its own thread
    # during interpreter shutdown aborts the process (SIGABRT), and that must neither
    # happen nor take the test runner down if it does.
    cap = 4 * MIB
    src = Path(nightcore.sandbox.__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", FLOOD_SCRIPT, str(cap), FLOOD_WAT, STUBBORN_FLOOD_WAT],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert b"panicked" not in proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == 4
    for code, _, stdout_len, truncated, _, wall_ms in results:
        assert (code, stdout_len, truncated) == ("OUTPUT_LIMIT", cap, True)
        # Stopped by the cap, not by the 60 s wall-clock limit or the fuel.
        assert wall_ms < 30_000
    # The polite flood exits 1 when fd_write reports the short write (EIO), unless the
    # sandbox stopped it first; the stubborn one is always stopped by the sandbox.
    for _, exit_code, _, _, underlying, _ in results[:2]:
        assert (underlying, exit_code) in (("EXIT_NONZERO", 1), (None, None))
    for _, exit_code, _, _, underlying, _ in results[2:]:
        assert (underlying, exit_code) == (None, None)


def test_garbage_bytes_do_not_compile(sandbox: Sandbox) -> None:
    result = run(sandbox, b"\x00asm\x01\x00\x00\x00garbage")
    assert result.code == "COMPILE_ERROR"
    assert result.detail
    assert "\n" not in result.detail


def test_text_format_is_not_accepted_as_a_module(sandbox: Sandbox) -> None:
    # wasmtime-py would compile WAT text given as bytes; the sandbox runs binaries only.
    text = b'(module (func (export "_start")))'
    result = run(sandbox, text)
    assert result.code == "COMPILE_ERROR"
    assert "magic" in result.detail


def test_missing_entrypoint(sandbox: Sandbox) -> None:
    result = run(sandbox, HELLO, entrypoint="main")
    assert result.code == "INSTANTIATE_ERROR"
    assert "main" in result.detail


def test_entrypoint_that_is_not_a_function(sandbox: Sandbox) -> None:
    result = run(sandbox, HELLO, entrypoint="memory")
    assert result.code == "INSTANTIATE_ERROR"


def test_unknown_import(sandbox: Sandbox) -> None:
    module = wasm('(module (import "env" "secret" (func)) (func (export "_start")))')
    result = run(sandbox, module)
    assert result.code == "INSTANTIATE_ERROR"
    assert "env::secret" in result.detail


def test_trapping_start_function(sandbox: Sandbox) -> None:
    module = wasm('(module (func $s unreachable) (start $s) (func (export "_start")))')
    result = run(sandbox, module)
    assert result.code == "INSTANTIATE_ERROR"


def test_start_function_out_of_fuel_keeps_the_limit_code(sandbox: Sandbox) -> None:
    module = wasm('(module (func $s (loop $l (br $l))) (start $s) (func (export "_start")))')
    result = run(sandbox, module, fuel=10_000)
    assert result.code == "FUEL_EXHAUSTED"


# --------------------------------------------------------------------------------------
# Capabilities


def test_env_is_exactly_what_was_configured(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTCORE_HOST_ONLY", "leak")
    env = (("GREETING", "hi there"), ("EMPTY", ""), ("UNICODE", "π=3.14"))
    result = run(sandbox, dumper("environ"), env=env)
    assert result.code == "OK"
    assert result.stdout == b"".join(f"{k}={v}".encode() + b"\0" for k, v in env)


def test_empty_env(sandbox: Sandbox) -> None:
    result = run(sandbox, dumper("environ"), env=())
    assert (result.code, result.stdout) == ("OK", b"")


def test_argv_is_exactly_what_was_configured(sandbox: Sandbox) -> None:
    argv = ("tenant-a", "--flag", "two words", "")
    result = run(sandbox, dumper("args"), argv=argv)
    assert result.code == "OK"
    assert result.stdout == b"".join(a.encode() + b"\0" for a in argv)


STDIN_READER = wasm(f"""
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  {FD_WRITE}
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 256))
    (i32.store (i32.const 20) (i32.const 100))
    (i32.store (i32.const 24) (i32.const 12345))
    (i32.store (i32.const 200)
      (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (i32.store (i32.const 204) (i32.load (i32.const 24)))
    (i32.store (i32.const 16) (i32.const 200))
    (i32.store (i32.const 20) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
""")


def test_stdin_is_empty(sandbox: Sandbox) -> None:
    result = run(sandbox, STDIN_READER)
    assert result.code == "OK"
    # fd_read on stdin succeeds with 0 bytes (end of file): nothing of the host's stdin.
    assert result.stdout == bytes(8)


def test_no_preopen_means_no_filesystem(sandbox: Sandbox) -> None:
    result = run(sandbox, FS_WRITER)
    assert (result.code, result.exit_code) == ("EXIT_NONZERO", 1)
    assert result.stdout == (8).to_bytes(4, "little")  # EBADF: there is no fd 3


def test_read_only_preopen_cannot_be_written(sandbox: Sandbox, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    result = run(sandbox, FS_WRITER, preopens=(Preopen(data, "data", writable=False),))
    assert (result.code, result.exit_code) == ("EXIT_NONZERO", 1)  # path_open refused
    assert int.from_bytes(result.stdout, "little") in (2, 63, 76)  # ENOENT/EPERM/ENOTCAPABLE
    assert not (data / "out.txt").exists()


def test_read_only_preopen_can_be_read(sandbox: Sandbox, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_bytes(b"tenant input\n")
    result = run(sandbox, FS_READER, preopens=(Preopen(data, "data", writable=False),))
    assert (result.code, result.stdout) == ("OK", b"tenant input\n")


# Tries three mutations of an existing tree in the first preopen and writes their errnos
# (u32 each): open "in.txt" for writing with O_TRUNC, unlink it, create a directory "sub".
FS_MUTATOR = wasm(f"""
(module
  {PATH_OPEN}
  (import "wasi_snapshot_preview1" "path_unlink_file"
    (func $unlink (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_create_directory"
    (func $mkdir (param i32 i32 i32) (result i32)))
  {FD_WRITE}
  (memory (export "memory") 1)
  (data (i32.const 64) "in.txt")
  (data (i32.const 80) "sub")
  (func (export "_start")
    (i32.store (i32.const 200)
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 6)
        (i32.const 8) (i64.const 0x40) (i64.const 0) (i32.const 0) (i32.const 0)))
    (i32.store (i32.const 204) (call $unlink (i32.const 3) (i32.const 64) (i32.const 6)))
    (i32.store (i32.const 208) (call $mkdir (i32.const 3) (i32.const 80) (i32.const 3)))
    (i32.store (i32.const 16) (i32.const 200))
    (i32.store (i32.const 20) (i32.const 12))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
""")


def test_read_only_preopen_cannot_be_mutated(sandbox: Sandbox, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_bytes(b"keep me\n")
    result = run(sandbox, FS_MUTATOR, preopens=(Preopen(data, "data", writable=False),))
    assert result.code == "OK"
    errnos = [int.from_bytes(result.stdout[i : i + 4], "little") for i in (0, 4, 8)]
    assert all(errnos), errnos
    assert (data / "in.txt").read_bytes() == b"keep me\n"
    assert sorted(p.name for p in data.iterdir()) == ["in.txt"]


def test_writable_preopen_can_be_mutated(sandbox: Sandbox, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_bytes(b"delete me\n")
    result = run(sandbox, FS_MUTATOR, preopens=(Preopen(data, "data", writable=True),))
    assert result.code == "OK"
    # The truncating open succeeds (errno 0), the unlink and mkdir too.
    assert result.stdout == bytes(12)
    assert sorted(p.name for p in data.iterdir()) == ["sub"]


def test_writable_preopen_can_be_written(sandbox: Sandbox, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    result = run(sandbox, FS_WRITER, preopens=(Preopen(data, "data", writable=True),))
    assert result.code == "OK", (result.exit_code, result.detail)
    assert (data / "out.txt").read_bytes() == b"written\n"


# --------------------------------------------------------------------------------------
# Determinism


def _clock_random(result: RunResult) -> tuple[int, bytes, int]:
    assert result.code == "OK", (result.code, result.exit_code, result.detail)
    out = result.stdout
    assert len(out) == 32
    return int.from_bytes(out[:8], "little"), out[8:24], int.from_bytes(out[24:], "little")


def test_deterministic_mode_is_reproducible(sandbox: Sandbox) -> None:
    first = _clock_random(run(sandbox, CLOCK_RANDOM, deterministic=True, seed=7))
    again = _clock_random(run(sandbox, CLOCK_RANDOM, deterministic=True, seed=7))
    other = _clock_random(run(sandbox, CLOCK_RANDOM, deterministic=True, seed=8))
    assert first == again
    assert other[1] != first[1]
    realtime, _, monotonic = first
    epoch_2000 = 946_684_800 * 10**9
    assert epoch_2000 < realtime < epoch_2000 + 10**9  # advanced by the fuel used so far
    assert 0 < monotonic < 10**9


def test_normal_mode_uses_the_real_clock(sandbox: Sandbox) -> None:
    realtime, _, _ = _clock_random(run(sandbox, CLOCK_RANDOM))
    assert realtime > 1_600_000_000 * 10**9


def test_out_of_bounds_random_get(sandbox: Sandbox) -> None:
    # Wasmtime's WASI traps on a bad pointer; the deterministic shadow returns EFAULT
    # (a Python host function cannot trap without a process-global exception slot).
    assert run(sandbox, RANDOM_OUT_OF_BOUNDS).code == "TRAP"
    det = run(sandbox, RANDOM_OUT_OF_BOUNDS, deterministic=True)
    assert (det.code, det.exit_code) == ("EXIT_NONZERO", 21)


# --------------------------------------------------------------------------------------
# Concurrency


def test_runaway_tenants_do_not_block_others(sandbox: Sandbox) -> None:
    results: dict[str, RunResult] = {}

    def runner(name: str, module: bytes, **limits: int) -> None:
        results[name] = run(sandbox, module, **limits)

    run(sandbox, HELLO)  # compiled before the clock starts
    loop = threading.Thread(
        target=runner, args=("loop", LOOP), kwargs={"wall_ms": 1_500, "fuel": 10**15}
    )
    bomb = threading.Thread(
        target=runner, args=("bomb", MEMORY_BOMB), kwargs={"memory_bytes": 64 * MIB}
    )
    loop.start()
    bomb.start()
    time.sleep(0.1)
    for _ in range(5):
        hello = run(sandbox, HELLO)
        assert (hello.code, hello.stdout) == ("OK", b"hello\n")
    assert loop.is_alive()  # the hellos finished while the loop was still running
    loop.join(10)
    bomb.join(10)
    assert results["loop"].code == "TIMEOUT"
    assert results["bomb"].code == "MEMORY_LIMIT"


def test_concurrent_runs_with_different_configs(sandbox: Sandbox) -> None:
    results: list[RunResult] = []
    lock = threading.Lock()

    def runner(i: int) -> None:
        argv = ("tenant-a", f"worker-{i}")
        r = run(sandbox, dumper("args"), argv=argv, stack_bytes=256 * 1024 * (1 + i % 2))
        with lock:
            results.append(r)
            assert r.stdout == b"".join(a.encode() + b"\0" for a in argv)

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [r.code for r in results] == ["OK"] * 8


# --------------------------------------------------------------------------------------
# Configuration errors


def test_digest_mismatch_is_refused(sandbox: Sandbox) -> None:
    cfg = dataclasses.replace(config(HELLO), module_sha256="00" * 32)
    with pytest.raises(SandboxError) as err:
        sandbox.run(HELLO, cfg)
    assert err.value.code == "DIGEST_MISMATCH"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"env": (("A", "x\0y"),)}, "ENV_INVALID"),
        ({"env": (("A=B", "x"),)}, "ENV_INVALID"),
        ({"argv": ("a\0b",)}, "ARGV_INVALID"),
        ({"preopens": (Preopen(Path("/nonexistent/nightcore"), "d", False),)}, "PREOPEN_INVALID"),
        ({"stack_bytes": 128 * MIB}, "LIMIT_INVALID"),
        ({"fuel": 0}, "LIMIT_INVALID"),
    ],
)
def test_invalid_configuration_raises(
    sandbox: Sandbox, kwargs: dict[str, object], code: str
) -> None:
    with pytest.raises(SandboxError) as err:
        run(sandbox, HELLO, **kwargs)
    assert err.value.code == code


def test_close_waits_for_runs_in_flight() -> None:
    sb = Sandbox(None, b"")
    results: list[RunResult] = []
    worker = threading.Thread(
        target=lambda: results.append(run(sb, LOOP, wall_ms=300, fuel=10**15))
    )
    worker.start()
    deadline = time.monotonic() + 10
    while sb.active_runs == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    sb.close()  # must not strand the loop without its epoch ticker
    worker.join(10)
    assert [r.code for r in results] == ["TIMEOUT"]


def test_closed_sandbox_refuses_runs() -> None:
    sb = Sandbox(None, b"")
    sb.close()
    sb.close()  # idempotent
    with pytest.raises(SandboxError) as err:
        run(sb, HELLO)
    assert err.value.code == "SANDBOX_CLOSED"


def test_disk_cache_needs_a_real_secret(tmp_path: Path) -> None:
    with pytest.raises(SandboxError) as err:
        Sandbox(tmp_path / "cache", b"short")
    assert err.value.code == "CACHE_SECRET_INVALID"


# --------------------------------------------------------------------------------------
# Disk cache


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*.cwasm"))


def test_disk_cache_hit_in_a_second_sandbox(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    with Sandbox(cache_dir, SECRET) as first:
        assert run(first, HELLO).cache == "miss"
        assert run(first, HELLO).cache == "hit"  # memory
    (entry,) = _entries(cache_dir)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    with Sandbox(cache_dir, SECRET) as second:
        result = run(second, HELLO)
    assert (result.code, result.cache, result.stdout) == ("OK", "hit", b"hello\n")
    # A different engine configuration is a different entry.
    with Sandbox(cache_dir, SECRET) as third:
        assert run(third, HELLO, stack_bytes=256 * 1024).cache == "miss"
    assert len(_entries(cache_dir)) == 2


def _tamper_and_rerun(
    cache_dir: Path, secret: bytes = SECRET
) -> tuple[RunResult, list[tuple[str, dict[str, object]]]]:
    events: list[tuple[str, dict[str, object]]] = []
    with Sandbox(cache_dir, secret, on_event=lambda n, f: events.append((n, f))) as sb:
        result = run(sb, HELLO)
    return result, events


def test_flipped_byte_is_rejected_recompiled_and_audited(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    with Sandbox(cache_dir, SECRET) as sb:
        run(sb, HELLO)
    (entry,) = _entries(cache_dir)
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    entry.write_bytes(bytes(blob))

    result, events = _tamper_and_rerun(cache_dir)
    assert (result.code, result.cache, result.stdout) == ("OK", "rejected", b"hello\n")
    assert [name for name, _ in events] == ["cache_rejected"]
    fields = events[0][1]
    assert fields["reason"] == "bad_tag"
    assert fields["module_sha256"] == hashlib.sha256(HELLO).hexdigest()
    assert fields["tenant"] == "tenant-a"
    # The entry was rewritten from the verified bytes: the next sandbox gets a hit.
    result, events = _tamper_and_rerun(cache_dir)
    assert (result.cache, events) == ("hit", [])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_secret"])
def test_other_bad_entries_are_rejected(tmp_path: Path, damage: str) -> None:
    cache_dir = tmp_path / "cache"
    with Sandbox(cache_dir, SECRET) as sb:
        run(sb, HELLO)
    (entry,) = _entries(cache_dir)
    secret = SECRET
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:20])
    elif damage == "garbage":
        entry.write_bytes(os.urandom(4096))
    else:
        secret = b"another-secret-0123456789abcdef"
    result, events = _tamper_and_rerun(cache_dir, secret)
    assert (result.code, result.cache) == ("OK", "rejected")
    assert [name for name, _ in events] == ["cache_rejected"]


def test_authentic_entry_that_does_not_deserialize_is_replaced(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    key = cache_key(
        hashlib.sha256(HELLO).hexdigest(),
        EngineKey(LIMITS.stack_bytes, deterministic=False).fingerprint(),
        wasmtime_version(),
    )
    DiskModuleCache(cache_dir, SECRET).store(key, b"authentic but not a compiled module")
    result, events = _tamper_and_rerun(cache_dir)
    assert (result.code, result.cache) == ("OK", "rejected")
    assert [(n, f["reason"]) for n, f in events] == [("cache_rejected", "deserialize_failed")]
    result, events = _tamper_and_rerun(cache_dir)
    assert (result.cache, events) == ("hit", [])


def test_entry_filed_under_another_key_is_rejected(tmp_path: Path) -> None:
    cache = DiskModuleCache(tmp_path / "cache", SECRET)
    key_a = cache_key("aa" * 32, "{}", "50.0.1")
    key_b = cache_key("bb" * 32, "{}", "50.0.1")
    cache.store(key_a, b"artifact of module a")
    loaded = cache.load(key_a)
    assert (loaded.status, loaded.artifact) == ("hit", b"artifact of module a")
    cache.path_for(key_b).write_bytes(cache.path_for(key_a).read_bytes())
    swapped = cache.load(key_b)
    assert (swapped.status, swapped.reason) == ("rejected", "bad_tag")
    assert not cache.path_for(key_b).exists()
    assert cache.load(key_b).status == "absent"


def test_cache_key_depends_on_every_part() -> None:
    base = cache_key("aa" * 32, "fp", "50.0.1")
    assert base != cache_key("ab" * 32, "fp", "50.0.1")
    assert base != cache_key("aa" * 32, "fp2", "50.0.1")
    assert base != cache_key("aa" * 32, "fp", "50.0.2")
    assert len(base) == 64
