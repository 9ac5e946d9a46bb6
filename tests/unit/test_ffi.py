"""The FFI fence (nightcore.sandbox.ffi) against real Wasmtime.

The real hooks must be present and enforce their limits. The fail-closed path needs a
wasmtime-py without a symbol, a fault this environment cannot produce: those tests patch the
fence's one symbol-lookup seam (``ffi._lookup``) and nothing else; the sandbox, engine and
stores stay real.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import wasmtime

from nightcore.doctor import run_checks
from nightcore.errors import SandboxError
from nightcore.sandbox import ffi, watchdog
from nightcore.sandbox.cache import wasmtime_version
from nightcore.sandbox.engine import Sandbox
from nightcore.sandbox.types import EffectiveLimits, RunConfig

MIB = 1024 * 1024
LIMITS = EffectiveLimits(
    fuel=10**12,
    wall_ms=60_000,
    memory_bytes=4 * MIB,
    stack_bytes=512 * 1024,
    output_bytes=4096,
)

# Writes 64 KiB to stdout forever and ignores every failed write: only the sandbox's
# output-limit stop (the epoch-deadline hook) ends it before its 60 s of wall time.
STUBBORN_FLOOD = bytes(
    wasmtime.wat2wasm("""
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (memory.fill (i32.const 1024) (i32.const 65) (i32.const 65536))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $again
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $again))))
""")
)
HELLO = bytes(
    wasmtime.wat2wasm("""
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hi\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
""")
)


def config(module: bytes, **limits: int) -> RunConfig:
    return RunConfig(
        tenant="tenant-a",
        module_sha256=hashlib.sha256(module).hexdigest(),
        entrypoint="_start",
        argv=("tenant-a",),
        env=(),
        preopens=(),
        limits=dataclasses.replace(LIMITS, **limits),
    )


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(None, b"") as sb:
        yield sb


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``without(symbol)``: the fence sees a wasmtime-py that lacks ``symbol`` (simulated)."""

    real = ffi._lookup

    def hide(symbol: str) -> None:
        def lookup(name: str) -> Any | None:
            return None if name == symbol else real(name)

        monkeypatch.setattr(ffi, "_lookup", lookup)
        # Forget what earlier runs resolved, so the next use checks again (restored after).
        monkeypatch.setattr(ffi, "_resolved", {})
        monkeypatch.setattr(
            watchdog,
            "_EPOCH_DEADLINE",
            ffi.EpochDeadline(watchdog._decide, watchdog._forget_watchdog),
        )

    yield hide


# --------------------------------------------------------------------------------------
# The real hooks


def test_every_hook_is_present_in_this_wasmtime() -> None:
    rows = ffi.fence_status()
    assert [hook for hook, _, _ in rows] == list(ffi.HOOKS)
    assert all(present for _, present, _ in rows), rows


def test_output_limit_stop_still_happens(sandbox: Sandbox) -> None:
    result = sandbox.run(STUBBORN_FLOOD, config(STUBBORN_FLOOD))
    # TIMEOUT would mean the deadline hook was missing and only the 60 s deadline stopped it.
    assert result.code == "OUTPUT_LIMIT"
    assert result.detail == "output limit of 4096 bytes reached: run stopped"
    assert len(result.stdout) == 4096 and result.output_truncated


def test_timeout_still_happens(sandbox: Sandbox) -> None:
    loop = bytes(wasmtime.wat2wasm('(module (func (export "_start") (loop $l (br $l))))'))
    result = sandbox.run(loop, config(loop, wall_ms=50))
    assert result.code == "TIMEOUT"


def test_large_stack_engine_uses_the_async_stack_hook(sandbox: Sandbox) -> None:
    # 4 MiB of wasm stack needs a 5 MiB async stack: without the hook Engine() would abort.
    result = sandbox.run(HELLO, config(HELLO, stack_bytes=4 * MIB))
    assert (result.code, result.stdout) == ("OK", b"hi\n")


def test_doctor_reports_the_fence() -> None:
    rows = {c["check"]: c for c in run_checks(None)}
    for hook in ffi.HOOKS:
        assert rows[f"ffi {hook}"]["status"] == "OK"


# --------------------------------------------------------------------------------------
# Fail closed (simulated missing symbols, see the module docstring)


@pytest.mark.parametrize(
    "symbol",
    [
        "wasmtime_store_epoch_deadline_callback",
        "_wasmtime_store_epoch_deadline_callback",
        "wasmtime_error_new",
    ],
)
def test_missing_deadline_symbol_refuses_the_run(
    sandbox: Sandbox, without: Any, symbol: str
) -> None:
    without(symbol)
    with pytest.raises(SandboxError) as info:
        sandbox.run(STUBBORN_FLOOD, config(STUBBORN_FLOOD))
    assert info.value.code == "FFI_UNAVAILABLE"
    assert symbol in info.value.message
    assert wasmtime_version() in info.value.message
    # Not a one-off: the next run is refused too, and it never ran without the limit.
    with pytest.raises(SandboxError, match="FFI hook"):
        sandbox.run(HELLO, config(HELLO))


def test_missing_async_stack_symbol_refuses_large_stacks_only(
    sandbox: Sandbox, without: Any
) -> None:
    without("wasmtime_config_async_stack_size_set")
    with pytest.raises(SandboxError) as info:
        sandbox.run(HELLO, config(HELLO, stack_bytes=4 * MIB))
    assert info.value.code == "FFI_UNAVAILABLE"
    assert "wasmtime_config_async_stack_size_set" in info.value.message
    # The default async stack suffices for small stacks: the hook is not needed there.
    assert sandbox.run(HELLO, config(HELLO)).code == "OK"


def test_reshaped_binding_is_refused(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ffi._lookup
    raw = real("_wasmtime_store_epoch_deadline_callback")
    assert raw is not None
    three_args = raw.argtypes[:3]

    class Reshaped:  # the raw function with a different C signature (simulated)
        argtypes = three_args

        def __call__(self, *args: object) -> None:
            raise AssertionError("a reshaped binding must never be called")

    def lookup(name: str) -> Any | None:
        return Reshaped() if name == "_wasmtime_store_epoch_deadline_callback" else real(name)

    monkeypatch.setattr(ffi, "_lookup", lookup)
    monkeypatch.setattr(ffi, "_resolved", {})
    monkeypatch.setattr(
        watchdog, "_EPOCH_DEADLINE", ffi.EpochDeadline(watchdog._decide, watchdog._forget_watchdog)
    )
    with pytest.raises(SandboxError, match="unexpected signature") as info:
        sandbox.run(HELLO, config(HELLO))
    assert info.value.code == "FFI_UNAVAILABLE"


def test_doctor_reports_a_missing_hook(without: Any) -> None:
    without("wasmtime_error_new")
    rows = {c["check"]: c for c in run_checks(None)}
    assert rows["ffi error_new"]["status"] == "FAIL"
    assert "wasmtime_error_new" in rows["ffi error_new"]["detail"]
    assert rows["ffi epoch_deadline_callback"]["status"] == "OK"


def test_no_private_bindings_outside_the_fence() -> None:
    # Issue 11: wasmtime's raw bindings only behind the fence; cryptography's never.
    import ast
    from pathlib import Path

    import nightcore

    src = Path(nightcore.__file__).parent
    fence = src / "sandbox" / "ffi.py"
    offenders = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                private_wasmtime = name.startswith("wasmtime._bindings") and path != fence
                if private_wasmtime or name.startswith("cryptography.hazmat.bindings"):
                    offenders.append(f"{path.relative_to(src)}: {name}")
    assert offenders == []
