"""The sandbox layer: runs verified WebAssembly modules under Wasmtime with hard limits.

Only the value types are imported eagerly; the engine (and wasmtime itself) load on first
use, so commands that never run a module (``verify``, ``trust``, ``--help``) stay fast.
"""

from typing import TYPE_CHECKING, Any

from nightcore.sandbox.types import EffectiveLimits, Preopen, RunConfig, RunResult

if TYPE_CHECKING:
    from nightcore.sandbox.cache import CacheLoad, DiskModuleCache, cache_key, wasmtime_version
    from nightcore.sandbox.engine import EngineKey, EventSink, Sandbox

_LAZY = {
    "CacheLoad": "nightcore.sandbox.cache",
    "DiskModuleCache": "nightcore.sandbox.cache",
    "cache_key": "nightcore.sandbox.cache",
    "wasmtime_version": "nightcore.sandbox.cache",
    "EngineKey": "nightcore.sandbox.engine",
    "EventSink": "nightcore.sandbox.engine",
    "Sandbox": "nightcore.sandbox.engine",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = [
    "CacheLoad",
    "DiskModuleCache",
    "EffectiveLimits",
    "EngineKey",
    "EventSink",
    "Preopen",
    "RunConfig",
    "RunResult",
    "Sandbox",
    "cache_key",
    "wasmtime_version",
]
