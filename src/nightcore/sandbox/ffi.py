"""The FFI fence: the one module that reaches into wasmtime-py's private raw bindings.

wasmtime-py 50 has no public API for two things the sandbox needs, so it calls the Wasmtime
C API through ``wasmtime._bindings`` (private, and free to change in any wasmtime-py
release). Every such use lives here, behind three hooks:

``async_stack_size``
    ``wasmtime_config_async_stack_size_set``: an engine whose ``max_wasm_stack`` exceeds the
    default async stack size (2 MiB) needs a larger one, or ``Engine()`` aborts the process.
``epoch_deadline_callback``
    ``wasmtime_store_epoch_deadline_callback`` (plus the raw ctypes function, for its
    callback types): the per-store callback that stops a run at its wall-clock deadline
    *or* at the first tick after it hit its output cap.
``error_new``
    ``wasmtime_error_new``: the error that callback returns to stop the run.

Each hook is resolved (and its ctypes shape checked) at first use. A missing or reshaped
symbol raises :class:`~nightcore.errors.SandboxError` with code ``FFI_UNAVAILABLE``, naming
the symbol and the wasmtime version: the sandbox never falls back to running without the
limit the hook enforces. ``nightcore doctor`` reports the fence (:func:`fence_status`).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nightcore.errors import SandboxError

if TYPE_CHECKING:
    import wasmtime

FFI_UNAVAILABLE = "FFI_UNAVAILABLE"

ASYNC_STACK_SIZE = "async_stack_size"
EPOCH_DEADLINE_CALLBACK = "epoch_deadline_callback"
ERROR_NEW = "error_new"

# hook -> the symbols of wasmtime._bindings it needs
HOOKS: dict[str, tuple[str, ...]] = {
    ASYNC_STACK_SIZE: ("wasmtime_config_async_stack_size_set",),
    EPOCH_DEADLINE_CALLBACK: (
        "wasmtime_store_epoch_deadline_callback",
        "_wasmtime_store_epoch_deadline_callback",
    ),
    ERROR_NEW: ("wasmtime_error_new",),
}

UPDATE_DEADLINE_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE

# Decides at every epoch tick of a store whether its run stops: "" = one more tick,
# anything else = stop now, with that reason (the callback's data is the handle).
Decide = Callable[[int], str]
Forget = Callable[[int], None]

_lock = threading.Lock()
_resolved: dict[str, tuple[Any, ...]] = {}


def _lookup(name: str) -> Any | None:
    """One symbol of ``wasmtime._bindings``, or None (the seam the fail-closed tests patch)."""
    try:
        from wasmtime import _bindings
    except ImportError:
        return None  # reported as the symbol missing, with the (missing) version
    return getattr(_bindings, name, None)


def _version() -> str:
    from nightcore.sandbox.cache import wasmtime_version

    return wasmtime_version()


def _unavailable(hook: str, symbol: str, why: str) -> SandboxError:
    return SandboxError(
        f"wasmtime-py {_version()} {why} {symbol} (FFI hook {hook}); "
        "the sandbox refuses to run without the limit it enforces",
        code=FFI_UNAVAILABLE,
    )


def _check(hook: str) -> tuple[Any, ...]:
    """The hook's symbols, shape-checked; raises FFI_UNAVAILABLE naming the first bad one."""
    symbols = []
    for name in HOOKS[hook]:
        sym = _lookup(name)
        if sym is None or not callable(sym):
            raise _unavailable(hook, name, "has no")
        symbols.append(sym)
    if hook == EPOCH_DEADLINE_CALLBACK:
        raw = symbols[1]
        args = getattr(raw, "argtypes", None)
        if (
            not args
            or len(args) != 4
            or len(getattr(args[1], "_argtypes_", ())) != 4
            or len(getattr(args[3], "_argtypes_", ())) != 1
        ):
            raise _unavailable(hook, HOOKS[hook][1], "has an unexpected signature for")
    return tuple(symbols)


def _require(hook: str) -> tuple[Any, ...]:
    with _lock:
        found = _resolved.get(hook)
        if found is None:
            found = _check(hook)
            _resolved[hook] = found
        return found


def fence_status() -> list[tuple[str, bool, str]]:
    """(hook, present, detail) for every hook, checked afresh (for ``nightcore doctor``)."""
    rows: list[tuple[str, bool, str]] = []
    for hook, symbols in HOOKS.items():
        try:
            _check(hook)
        except SandboxError as exc:
            rows.append((hook, False, exc.message))
        else:
            rows.append((hook, True, ", ".join(s for s in symbols if not s.startswith("_"))))
    return rows


# --------------------------------------------------------------------------------------
# The hooks


def set_async_stack_size(config: wasmtime.Config, size: int) -> None:
    """``wasmtime_config_async_stack_size_set(config, size)``."""
    (setter,) = _require(ASYNC_STACK_SIZE)
    setter(config.ptr(), size)


class EpochDeadline:
    """The one epoch-deadline callback shared by every store of the process.

    Keep the instance alive as long as any store that uses it (module level): Wasmtime holds
    raw pointers to its C trampolines. :meth:`install` registers it on a store with an
    integer handle; at every deadline Wasmtime calls ``decide(handle)``: ``""`` pushes the
    deadline one tick further, any other string stops the run with a trap whose message
    carries it. ``forget(handle)`` runs when the store is dropped.
    """

    def __init__(self, decide: Decide, forget: Forget) -> None:
        self._decide = decide
        self._forget = forget
        self._c: tuple[Any, Any, Any] | None = None  # register, callback, finalizer
        self._error_new: Any = None
        self._lock = threading.Lock()

    def install(self, store: wasmtime.Store, handle: int) -> None:
        """Register the callback on ``store``; raises FFI_UNAVAILABLE instead of skipping it."""
        with self._lock:  # built once: a replaced C pointer could be freed while in use
            if self._c is None:
                register, raw = _require(EPOCH_DEADLINE_CALLBACK)
                (self._error_new,) = _require(ERROR_NEW)
                callback = raw.argtypes[1](self._on_deadline)
                finalizer = raw.argtypes[3](self._on_finalize)
                self._c = (register, callback, finalizer)
            register, callback, finalizer = self._c
        register(store.ptr(), callback, ctypes.c_void_p(handle), finalizer)

    def _on_deadline(self, context: object, data: int | None, delta: Any, update_kind: Any) -> int:
        # Runs on the wasm thread inside Wasmtime. It must not raise (ctypes would print the
        # error and let the run continue): any failure stops the run instead (fail closed).
        del context
        try:
            reason = self._decide(data or 0)
            if not reason:
                delta[0] = 1
                update_kind[0] = UPDATE_DEADLINE_CONTINUE
                return 0
        except Exception:  # noqa: BLE001 - see above: stop the run, never continue
            reason = "TIMEOUT"
        # _error_new was resolved by install(), before Wasmtime could call back.
        err = self._error_new(f"nightcore: {reason}".encode())
        return int(ctypes.cast(err, ctypes.c_void_p).value or 0)

    def _on_finalize(self, data: int | None) -> None:
        self._forget(data or 0)
