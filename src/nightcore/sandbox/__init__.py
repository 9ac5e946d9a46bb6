"""The sandbox layer: runs verified WebAssembly modules under Wasmtime with hard limits."""

from nightcore.sandbox.cache import CacheLoad, DiskModuleCache, cache_key, wasmtime_version
from nightcore.sandbox.engine import EngineKey, EventSink, Sandbox
from nightcore.sandbox.types import EffectiveLimits, Preopen, RunConfig, RunResult

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
