"""Deterministic mode's shadowed WASI functions: ``clock_time_get`` and ``random_get``.

Clocks read a fixed epoch (2000-01-01T00:00:00Z for the realtime clock, 0 for the others)
plus 1 ns per unit of fuel consumed so far (exact: Wasmtime writes its fuel counter back
before every host call), and random bytes come from SHAKE-256 over (domain, seed, call
number). A bad pointer gives ``EFAULT`` rather than a trap (see ``nightcore.sandbox.engine``).
The state of the run on this thread is set by :func:`activate` and cleared by
:func:`deactivate`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

import wasmtime

DETERMINISTIC_EPOCH_NS = 946_684_800 * 1_000_000_000  # 2000-01-01T00:00:00Z
NS_PER_FUEL = 1
_RANDOM_DOMAIN = b"nightcore/deterministic-random/v1\x00"

# WASI preview1 errno values used by the shadowed functions.
_ERRNO_SUCCESS = 0
_ERRNO_FAULT = 21
_ERRNO_INVAL = 28
_ERRNO_IO = 29
_WASI_CLOCKS = (0, 1, 2, 3)  # realtime, monotonic, process cputime, thread cputime

_tls = threading.local()


class DeterministicState:
    def __init__(self, seed: int, fuel_budget: int) -> None:
        self.seed = str(seed).encode("ascii")
        self.fuel_budget = fuel_budget
        self.calls = 0

    def random_bytes(self, n: int) -> bytes:
        self.calls += 1
        h = hashlib.shake_256(_RANDOM_DOMAIN)
        h.update(len(self.seed).to_bytes(8, "big"))
        h.update(self.seed)
        h.update(self.calls.to_bytes(8, "big"))
        return h.digest(n)


def _caller_fuel(caller: wasmtime.Caller) -> int:
    # Store.get_fuel only uses `_context()`, which a Caller provides (the C API's
    # wasmtime_caller_context): the supported way to reach the store from a host call.
    getter: Callable[[wasmtime.Caller], int] = wasmtime.Store.get_fuel  # type: ignore[assignment]
    return getter(caller)


def _write_guest(caller: wasmtime.Caller, ptr: int, data: bytes, align: int = 1) -> int:
    mem = caller.get("memory")
    if not isinstance(mem, wasmtime.Memory):
        return _ERRNO_FAULT
    if ptr < 0 or ptr % align or ptr + len(data) > mem.data_len(caller):
        return _ERRNO_FAULT
    if data:
        mem.write(caller, data, ptr)
    return _ERRNO_SUCCESS


def clock_time_get(caller: wasmtime.Caller, clock_id: int, precision: int, out: int) -> int:
    # Host functions must never raise: wasmtime-py parks a raised exception in a
    # process-global slot, which concurrent runs would race on.
    del precision
    try:
        state: DeterministicState | None = getattr(_tls, "det", None)
        if state is None:
            return _ERRNO_IO
        if clock_id not in _WASI_CLOCKS:
            return _ERRNO_INVAL
        used = max(0, state.fuel_budget - _caller_fuel(caller))
        ns = used * NS_PER_FUEL + (DETERMINISTIC_EPOCH_NS if clock_id == 0 else 0)
        return _write_guest(caller, out, (ns & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"), 8)
    except Exception:  # noqa: BLE001 - see above: report an errno instead
        return _ERRNO_IO


def random_get(caller: wasmtime.Caller, buf: int, length: int) -> int:
    try:
        state: DeterministicState | None = getattr(_tls, "det", None)
        if state is None:
            return _ERRNO_IO
        mem = caller.get("memory")
        if not isinstance(mem, wasmtime.Memory):
            return _ERRNO_FAULT
        # Bounds first: the length is guest-controlled and must not make the host
        # generate more than the guest's (limited) memory can hold.
        if buf < 0 or length < 0 or buf + length > mem.data_len(caller):
            return _ERRNO_FAULT
        return _write_guest(caller, buf, state.random_bytes(length))
    except Exception:  # noqa: BLE001 - host functions must not raise (see clock_time_get)
        return _ERRNO_IO


def activate(seed: int, fuel_budget: int) -> None:
    """The deterministic state of the run about to execute on this thread."""
    _tls.det = DeterministicState(seed, fuel_budget)


def deactivate() -> None:
    _tls.det = None


def define_shadows(linker: wasmtime.Linker) -> None:
    """Shadow WASI's clock and random functions in ``linker`` (after ``define_wasi``)."""
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    linker.allow_shadowing = True
    linker.define_func(
        "wasi_snapshot_preview1",
        "clock_time_get",
        wasmtime.FuncType([i32, i64, i32], [i32]),
        clock_time_get,
        access_caller=True,
    )
    linker.define_func(
        "wasi_snapshot_preview1",
        "random_get",
        wasmtime.FuncType([i32, i32], [i32]),
        random_get,
        access_caller=True,
    )
    linker.allow_shadowing = False
