"""The sandbox: runs verified WebAssembly modules under Wasmtime with hard limits and
deny-by-default capabilities.

Lifecycle (mirrors Wasmtime's own):

* one :class:`Sandbox` per node;
* one ``Engine`` per distinct engine configuration (``max_wasm_stack`` is engine-wide, and
  deterministic runs need NaN canonicalisation), kept in a small LRU dict;
* ``Module`` (and its ``InstancePre``) cached in memory by (module sha256, engine
  configuration), with the authenticated disk cache of :mod:`nightcore.sandbox.cache`
  behind it;
* a fresh ``Store`` and ``WasiConfig`` for every run: nothing a run did is visible to the
  next one;
* one daemon ticker thread for the whole sandbox that increments the epoch of every engine
  every ``tick_ms``; a run's wall-clock limit is a deadline of ``ceil(wall_ms / tick_ms)``
  epoch ticks. The store's epoch deadline is kept one tick ahead and a per-store
  epoch-deadline callback (``wasmtime_store_epoch_deadline_callback``, reached through
  wasmtime-py's raw bindings behind the FFI fence, :mod:`nightcore.sandbox.ffi`) counts the
  ticks, so it can also stop a run that exceeded its output cap (see :class:`_Watchdog`).
  If the fence cannot provide a hook, the run raises ``SandboxError(FFI_UNAVAILABLE)``: it
  never runs without the limit the hook enforces.

Outcome codes (``RunResult.code``) and their precedence
--------------------------------------------------------
``COMPILE_ERROR``, ``COMPILE_LIMIT`` (the bounded compile process refused the module:
:mod:`nightcore.sandbox.compiler`) and ``INSTANTIATE_ERROR`` mean the entrypoint never ran.
``DISK_LIMIT`` and ``FD_LIMIT`` come from the resource monitor (:mod:`nightcore.sandbox.usage`,
docs/limits.md): it trips the run's interrupt and the watchdog stops the run at the next tick
with that code; a run that ended over its disk bounds is ``DISK_LIMIT`` like ``OUTPUT_LIMIT``
below (its own outcome kept as ``underlying_code``). Once it runs, at
most one trap ends it, so ``TIMEOUT`` (epoch interrupt), ``FUEL_EXHAUSTED`` and
``STACK_OVERFLOW`` exclude each other. When several conditions hold, the most severe wins::

    TIMEOUT > FUEL_EXHAUSTED > STACK_OVERFLOW > MEMORY_LIMIT > OUTPUT_LIMIT
        > TRAP > EXIT_NONZERO > OK

A run stopped by its kill switch (a tripped :class:`~nightcore.sandbox.types.Interrupt`:
``CORDONED_IN_FLIGHT``, ``REVOKED_IN_FLIGHT``) is stopped at the next epoch tick like a
timeout and reports the interrupt's code, above every other (``exit_code`` None, fuel not
exact); a run that ended by itself before that tick keeps its own outcome.

A code that was overridden by ``MEMORY_LIMIT`` or ``OUTPUT_LIMIT`` is kept in
``RunResult.extra["underlying_code"]`` (and ``exit_code`` / ``detail`` still describe it), and
``output_truncated`` is set whenever the output cap was hit, whatever the code.

A resource-limit trap (fuel, epoch, stack) in a start function is reported with its limit
code; any other failure of instantiation (unknown or mistyped imports, a trapping start
function, a missing or non-function entrypoint, or one that takes parameters) is
``INSTANTIATE_ERROR``. A module whose declared minimum memory already exceeds the limit is
``MEMORY_LIMIT``.

How ``MEMORY_LIMIT`` is detected
--------------------------------
Wasmtime enforces the limit (``Store.set_limits(memory_size=...)``: ``memory.grow`` returns
-1 past it), but wasmtime-py exposes no resource-limiter callback, so a refused grow is not
observable directly. The sandbox infers it: a run that ended in a trap or a non-zero exit
while its linear memory (the module's exported memory, read after the run) was within one
page of the limit (``size + page_size > memory_bytes``, i.e. the next grow would have been
refused) is ``MEMORY_LIMIT``. Limits of this inference: a single large ``memory.grow`` that
fails from well below the limit, or a module that does not export its memory, reports the
module's own reaction (``TRAP`` / ``EXIT_NONZERO``); a module that legitimately filled its
memory and then failed for another reason is reported as ``MEMORY_LIMIT``. Only one linear
memory is allowed per store (``memories=1``), so the per-memory limit is a total.

Capabilities
------------
argv and environment are exactly those of the :class:`RunConfig`; there is no stdin (reads
see end-of-file) and no inherited host stdio: stdout and stderr go to per-run capped
buffers. Preopens are exactly ``config.preopens``. wasmtime-py 50 expresses permissions
with one flag, ``WasiConfig.preopen_dir(host, guest, fs_mutable)``: ``fs_mutable=False``
grants read-only directory and file permissions (creating, truncating, unlinking and
mkdir fail with ``EPERM``; reading works), and it is used for every preopen that is not
``writable``. There are no per-file permissions.

Output cap
----------
stdout and stderr share one budget of ``output_bytes``. The WASI output callbacks
(``stdout_custom``: ``Callable[[bytes], int | None]`` returning the number of bytes
accepted, negative for ``-errno``) keep at most that many bytes in total and then return
short writes (0 bytes accepted), which the guest sees as ``EIO`` from ``fd_write``. At the
next epoch tick (within ``tick_ms``) the run is stopped with ``OUTPUT_LIMIT`` unless it
ended by itself first (then ``OUTPUT_LIMIT`` still replaces ``OK`` / ``EXIT_NONZERO`` /
``TRAP``). The callbacks run on Wasmtime's I/O threads, so the buffers are guarded by a
lock, and a run waits until Wasmtime has released them (see :meth:`OutputSink.attach`).

Determinism
-----------
With ``config.deterministic`` the engine canonicalises NaNs and uses deterministic relaxed
SIMD, and ``wasi_snapshot_preview1.clock_time_get`` / ``random_get`` are shadowed:
clocks read a fixed epoch (2000-01-01T00:00:00Z for the realtime clock, 0 for the others)
plus 1 ns per unit of fuel consumed so far, and random bytes come from SHAKE-256 over
(domain, seed, call number). Same module, inputs and seed give the same output. One
difference from Wasmtime's own implementation: a bad (out-of-bounds or misaligned) pointer
makes the shadowed functions return ``EFAULT`` where Wasmtime would trap, because a Python
host function can only trap through a process-global exception slot in wasmtime-py, which
concurrent runs would race on.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import wasmtime

from nightcore.errors import SandboxError
from nightcore.sandbox import deterministic as deterministic_wasi
from nightcore.sandbox import ffi
from nightcore.sandbox import net as net_host
from nightcore.sandbox.cache import DiskModuleCache, cache_key, wasmtime_version
from nightcore.sandbox.compiler import CompilePool
from nightcore.sandbox.types import Interrupt, Preopen, RunConfig, RunResult
from nightcore.sandbox.usage import ResourceMonitor, RunUsage, open_run
from nightcore.sandbox.watchdog import OutputSink, Ticker, Watchdog, install_watchdog

EventSink = Callable[[str, dict[str, object]], None]

WASM_MAGIC = b"\x00asm"
# Per-store bounds besides linear memory: one instance (the tenant module; WASI is host
# functions, not an instance), one linear memory (so the per-memory limit is a total), a
# few tables of bounded size.
MAX_INSTANCES = 1
MAX_MEMORIES = 1
MAX_TABLES = 4
MAX_TABLE_ELEMENTS = 100_000
# Stack limits accepted by the sandbox (the manifest schema allows the same range).
MIN_STACK_BYTES = 16 * 1024
MAX_STACK_BYTES = 64 * 1024 * 1024
# Wasm runs on the caller's thread while its stack limit fits comfortably in a default
# thread stack (8 MiB on Linux); larger limits run on a helper thread whose native stack is
# the wasm limit plus this margin, because a wasm stack larger than the native one would
# overflow the native stack and abort the process instead of trapping.
INLINE_STACK_MAX = 1024 * 1024
HOST_STACK_MARGIN = 4 * 1024 * 1024
# Wasmtime's default async stack size; max_wasm_stack may not exceed it (see _make_engine).
DEFAULT_ASYNC_STACK_BYTES = 2 * 1024 * 1024
ASYNC_STACK_HEADROOM = 1024 * 1024
MAX_ENGINES = 8
MEMORY_CACHE_ENTRIES = 128
MAX_DETAIL_CHARS = 240
# How long a run waits for Wasmtime to release its output callbacks (see OutputSink.attach).
RELEASE_WAIT_S = 5.0

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------
# Engine configuration


@dataclass(frozen=True)
class EngineKey:
    """Everything that selects an Engine (and so a compiled artifact)."""

    stack_bytes: int
    deterministic: bool

    def settings(self) -> dict[str, object]:
        return {
            "consume_fuel": True,
            "epoch_interruption": True,
            "max_wasm_stack": self.stack_bytes,
            "async_stack_size": _async_stack_size(self.stack_bytes),
            "cranelift_nan_canonicalization": self.deterministic,
            "wasm_relaxed_simd_deterministic": self.deterministic,
            "target": platform.machine(),
        }

    def fingerprint(self) -> str:
        """A stable text form of :meth:`settings` (part of the disk-cache key)."""
        return json.dumps(self.settings(), sort_keys=True, separators=(",", ":"))


def _async_stack_size(stack_bytes: int) -> int:
    """The async stack size an engine needs for ``max_wasm_stack = stack_bytes``."""
    return max(DEFAULT_ASYNC_STACK_BYTES, stack_bytes + ASYNC_STACK_HEADROOM)


def _make_engine(key: EngineKey, *, parallel_compilation: bool = True) -> wasmtime.Engine:
    """The Engine for ``key``. ``parallel_compilation=False`` (the bounded compile process:
    one tenant's compilation uses one core) does not change the compiled artifact."""
    cfg = wasmtime.Config()
    cfg.parallel_compilation = parallel_compilation
    cfg.consume_fuel = True
    cfg.epoch_interruption = True
    # Wasmtime (built with async support) refuses a max_wasm_stack above its async stack
    # size, and the C API turns that refusal into a process abort in Engine(): raise the
    # async stack size first. wasmtime-py 50 has no setter, only the raw binding (FFI
    # fence: FFI_UNAVAILABLE if it is gone).
    async_size = _async_stack_size(key.stack_bytes)
    if async_size != DEFAULT_ASYNC_STACK_BYTES:
        ffi.set_async_stack_size(cfg, async_size)
    cfg.max_wasm_stack = key.stack_bytes
    cfg.cranelift_nan_canonicalization = key.deterministic
    cfg.wasm_relaxed_simd_deterministic = key.deterministic
    return wasmtime.Engine(cfg)


def _make_linker(engine: wasmtime.Engine, deterministic: bool) -> wasmtime.Linker:
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    if deterministic:
        deterministic_wasi.define_shadows(linker)
    return linker


class _EngineEntry:
    __slots__ = ("active", "engine", "key", "linker", "net_linker")

    def __init__(self, key: EngineKey) -> None:
        self.key = key
        self.engine = _make_engine(key)
        self.linker = _make_linker(self.engine, key.deterministic)
        self.net_linker: wasmtime.Linker | None = None  # + nightcore.http_request (NET runs)
        self.active = 0  # runs using this engine (guarded by the Sandbox lock)


@dataclass
class _ModuleEntry:
    module: wasmtime.Module
    pre: wasmtime.InstancePre | None
    link_error: str  # why instantiate_pre failed (unknown/mistyped imports), if it did
    # The same against the linker of NET runs (docs/net.md), made on the first NET run.
    net_pre: wasmtime.InstancePre | None = None
    net_link_error: str | None = None


class _CompileFailed(Exception):
    def __init__(self, detail: str, code: str = "COMPILE_ERROR") -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code  # COMPILE_ERROR, or COMPILE_LIMIT (the bounded compile refused it)


class _Refused(Exception):
    """The instance cannot be run (missing / unusable entrypoint)."""


# --------------------------------------------------------------------------------------
# Helpers

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(message: str) -> str:
    """The root cause of a Wasmtime error/trap message, on one sanitised line."""
    lines = [ln.strip() for ln in message.splitlines()]
    head = next((ln for ln in lines if ln), "")
    if "Caused by:" in lines:
        cause = " ".join(ln for ln in lines[lines.index("Caused by:") + 1 :] if ln)
        # Trap messages open with a backtrace header that says nothing; other errors
        # (e.g. "incompatible import type for `m::f`") keep their first line.
        text = cause if head.startswith("error while executing") else f"{head} {cause}"
    else:
        text = head
    text = " ".join(_CONTROL.sub(" ", text).split())
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 3] + "..."
    return text


def _bad_text(value: object) -> bool:
    if not isinstance(value, str) or "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _validate(config: RunConfig) -> None:
    lim = config.limits
    checks = (
        ("fuel", lim.fuel, 1, 2**63 - 1),
        ("wall_ms", lim.wall_ms, 1, 2**40),
        ("memory_bytes", lim.memory_bytes, 1, 2**62),
        ("stack_bytes", lim.stack_bytes, MIN_STACK_BYTES, MAX_STACK_BYTES),
        ("output_bytes", lim.output_bytes, 0, 2**62),
    )
    for name, value, lo, hi in checks:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise SandboxError(
                f"limit {name} must be an integer in [{lo}, {hi}]", code="LIMIT_INVALID"
            )
    if any(_bad_text(a) for a in config.argv):
        raise SandboxError("argv entries must be UTF-8 text without NUL", code="ARGV_INVALID")
    for env_name, env_value in config.env:
        if _bad_text(env_name) or _bad_text(env_value) or not env_name or "=" in env_name:
            raise SandboxError(
                "environment names must be non-empty UTF-8 without '=' or NUL, "
                "values UTF-8 without NUL",
                code="ENV_INVALID",
            )
    seen: set[str] = set()
    for p in config.preopens:
        if _bad_text(p.guest_path) or not p.guest_path or p.guest_path in seen:
            raise SandboxError(
                f"preopen guest path {p.guest_path!r} is empty, invalid or duplicated",
                code="PREOPEN_INVALID",
            )
        seen.add(p.guest_path)
        host = str(p.host_dir)
        if _bad_text(host) or not p.host_dir.is_absolute() or not p.host_dir.is_dir():
            raise SandboxError(
                f"preopen host directory {host!r} must be an existing absolute directory",
                code="PREOPEN_INVALID",
            )
    if not isinstance(config.seed, int) or isinstance(config.seed, bool):
        raise SandboxError("seed must be an integer", code="SEED_INVALID")
    if _bad_text(config.module_sha256) or not re.fullmatch(
        r"[0-9a-fA-F]{64}", config.module_sha256
    ):
        raise SandboxError("module_sha256 must be 64 hex digits", code="DIGEST_INVALID")


def _wasi_config(config: RunConfig) -> wasmtime.WasiConfig:
    wasi = wasmtime.WasiConfig()
    wasi.argv = list(config.argv)
    wasi.env = [[name, value] for name, value in config.env]
    # No stdin: nothing configured reads as end-of-file. No inherit_* calls at all.
    # stdout/stderr: OutputSink.attach.
    for p in config.preopens:
        _preopen(wasi, p)
    return wasi


def _preopen(wasi: wasmtime.WasiConfig, p: Preopen) -> None:
    try:
        wasi.preopen_dir(str(p.host_dir), p.guest_path, fs_mutable=p.writable)
    except wasmtime.WasmtimeError as exc:
        raise SandboxError(
            f"cannot preopen {str(p.host_dir)!r} as {p.guest_path!r}: {_one_line(str(exc))}",
            code="PREOPEN_INVALID",
        ) from exc


def _exported_memory(
    store: wasmtime.Store, instance: wasmtime.Instance | None
) -> wasmtime.Memory | None:
    if instance is None:
        return None
    exports = instance.exports(store)
    mem = exports.get("memory")
    if isinstance(mem, wasmtime.Memory):
        return mem
    for item in exports.values():
        if isinstance(item, wasmtime.Memory):
            return item
    return None


def _call_on_big_stack(fn: Callable[[], _T], stack_bytes: int) -> _T:
    """Run ``fn`` on a fresh thread whose native stack holds ``stack_bytes`` of wasm stack."""
    box: list[_T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    size = stack_bytes + HOST_STACK_MARGIN
    size = (size + 0xFFFF) & ~0xFFFF
    with _STACK_SIZE_LOCK:
        previous = threading.stack_size(size)
        try:
            worker = threading.Thread(target=target, name="nightcore-bigstack", daemon=True)
            worker.start()
        finally:
            threading.stack_size(previous)
    worker.join()
    if errors:
        raise errors[0]
    return box[0]


_STACK_SIZE_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------
# The sandbox


class Sandbox:
    """One per node: runs verified module bytes under a :class:`RunConfig`.

    ``cache_dir`` enables the authenticated disk cache of compiled modules (``None``: memory
    only); ``cache_secret`` keys its HMAC (at least 16 bytes when ``cache_dir`` is set).
    ``on_event(name, fields)`` receives ``cache_rejected`` (an entry failed authentication
    and was deleted, or did not deserialize; fields: tenant, module_sha256, key, path,
    reason) and ``cache_write_failed``; it runs on the calling thread, and an exception it
    raises propagates out of :meth:`run` (fail closed for audit).

    :meth:`run` is thread-safe. Call :meth:`close` (or use ``with``) to stop the ticker.
    """

    def __init__(
        self,
        cache_dir: Path | None,
        cache_secret: bytes,
        *,
        tick_ms: int = 10,
        on_event: EventSink | None = None,
        bounded_compile: bool = True,
    ) -> None:
        if not isinstance(tick_ms, int) or isinstance(tick_ms, bool) or not 1 <= tick_ms <= 1000:
            raise SandboxError(
                "tick_ms must be an integer in [1, 1000]", code="SANDBOX_CONFIG_INVALID"
            )
        self._tick_ms = tick_ms
        self._on_event = on_event
        self._disk = DiskModuleCache(cache_dir, cache_secret) if cache_dir is not None else None
        self._version = wasmtime_version()
        self._lock = threading.Lock()
        self._engines: OrderedDict[EngineKey, _EngineEntry] = OrderedDict()
        self._modules: OrderedDict[tuple[str, EngineKey], _ModuleEntry] = OrderedDict()
        self._load_locks: dict[tuple[str, EngineKey], threading.Lock] = {}
        self._closed = False
        self._active = 0  # runs in flight (guarded by _lock)
        self._idle = threading.Condition(self._lock)
        self._ticker = Ticker(tick_ms)
        self._finalizer = weakref.finalize(self, self._ticker.stop)
        self._bounded_compile = bounded_compile
        self._compiler = CompilePool()  # compile processes start on cache misses
        self._compiler_finalizer = weakref.finalize(self, self._compiler.close)
        # Called with "compiling" / "compiled" around an in-process compilation (the
        # strongbox worker's phase frames); None elsewhere.
        self.on_compile: Callable[[str], None] | None = None
        # Disk, descriptor and node-reserve bounds (nightcore.sandbox.usage); it also raises
        # the soft RLIMIT_NOFILE to the hard limit.
        self._monitor = ResourceMonitor(tick_ms)
        self._monitor_finalizer = weakref.finalize(self, self._monitor.stop)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def tick_ms(self) -> int:
        return self._tick_ms

    @property
    def active_runs(self) -> int:
        """Runs in flight right now."""
        with self._lock:
            return self._active

    def close(self) -> None:
        """Refuse new runs, wait for runs in flight, then stop the epoch ticker.

        Runs in flight still end within their limits (the ticker keeps their wall-clock
        deadline alive until they return). Later runs raise ``SandboxError(SANDBOX_CLOSED)``.
        Idempotent.
        """
        with self._lock:
            self._closed = True
            while self._active:
                self._idle.wait()
        self._finalizer()
        self._monitor_finalizer()
        self._compiler_finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- engines -----------------------------------------------------------------------

    def _acquire_engine(self, key: EngineKey) -> _EngineEntry:
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox is closed", code="SANDBOX_CLOSED")
            entry = self._engines.get(key)
            if entry is None:
                entry = _EngineEntry(key)
                self._engines[key] = entry
                self._evict_engines()
                self._ticker.targets = tuple(e.engine for e in self._engines.values())
            else:
                self._engines.move_to_end(key)
            entry.active += 1
            self._active += 1
            return entry

    def _release_engine(self, entry: _EngineEntry) -> None:
        with self._lock:
            entry.active -= 1
            self._active -= 1
            if not self._active:
                self._idle.notify_all()

    def _evict_engines(self) -> None:
        # Only idle engines are evicted: a running store needs its engine's epoch ticking.
        excess = len(self._engines) - MAX_ENGINES
        for key in [k for k, e in self._engines.items() if e.active == 0]:
            if excess <= 0:
                break
            del self._engines[key]
            for mkey in [m for m in self._modules if m[1] == key]:
                del self._modules[mkey]
            excess -= 1

    # -- modules -----------------------------------------------------------------------

    def _event(self, name: str, fields: dict[str, object]) -> None:
        if self._on_event is not None:
            self._on_event(name, fields)

    def _module_for(
        self, module_bytes: bytes, config: RunConfig, entry: _EngineEntry
    ) -> tuple[_ModuleEntry, str]:
        """The compiled module for this run and how it was obtained (hit/miss/rejected)."""
        sha = config.module_sha256.lower()
        mkey = (sha, entry.key)
        with self._lock:
            found = self._modules.get(mkey)
            if found is not None:
                self._modules.move_to_end(mkey)
                return found, "hit"
            key_lock = self._load_locks.setdefault(mkey, threading.Lock())
        with key_lock:  # one loader per module: concurrent first runs wait for it
            try:
                with self._lock:
                    found = self._modules.get(mkey)
                if found is not None:
                    return found, "hit"
                module, status = self._load_module(module_bytes, config, entry, sha)
                pre: wasmtime.InstancePre | None = None
                link_error = ""
                try:
                    pre = entry.linker.instantiate_pre(module)
                except wasmtime.WasmtimeError as exc:
                    link_error = _one_line(str(exc))
                loaded = _ModuleEntry(module, pre, link_error)
                with self._lock:
                    if entry.key in self._engines:  # not evicted meanwhile
                        self._modules[mkey] = loaded
                        while len(self._modules) > MEMORY_CACHE_ENTRIES:
                            self._modules.popitem(last=False)
                return loaded, status
            finally:
                with self._lock:
                    self._load_locks.pop(mkey, None)

    def _load_module(
        self, module_bytes: bytes, config: RunConfig, entry: _EngineEntry, sha: str
    ) -> tuple[wasmtime.Module, str]:
        # The cache binds artifacts to the digest, so the bytes must really have it.
        if hashlib.sha256(module_bytes).hexdigest() != sha:
            raise SandboxError(
                "module bytes do not match config.module_sha256", code="DIGEST_MISMATCH"
            )
        if not module_bytes.startswith(WASM_MAGIC):
            # wasmtime-py would parse anything else as WebAssembly text: refuse it.
            raise _CompileFailed("not a WebAssembly binary (bad magic)")
        status = "miss"
        key = ""
        if self._disk is not None:
            key = cache_key(sha, entry.key.fingerprint(), self._version)
            found = self._disk.load(key)
            reason = found.reason
            if found.status == "hit" and found.artifact is not None:
                try:
                    return wasmtime.Module.deserialize(entry.engine, found.artifact), "hit"
                except wasmtime.WasmtimeError:
                    self._disk.discard(key)
                    reason = "deserialize_failed"
            if found.status == "rejected" or reason == "deserialize_failed":
                status = "rejected"
                self._event(
                    "cache_rejected",
                    {
                        "tenant": config.tenant,
                        "module_sha256": sha,
                        "key": key,
                        "path": found.path,
                        "reason": reason,
                    },
                )
        module, artifact = self._compile(module_bytes, config, entry)
        if self._disk is not None:
            try:
                self._disk.store(key, artifact or bytes(module.serialize()))
            except (OSError, wasmtime.WasmtimeError) as exc:
                self._event(
                    "cache_write_failed",
                    {"tenant": config.tenant, "module_sha256": sha, "key": key, "error": str(exc)},
                )
        return module, status

    def _compile(
        self, module_bytes: bytes, config: RunConfig, entry: _EngineEntry
    ) -> tuple[wasmtime.Module, bytes]:
        """Compile a cache miss: in a bounded child process (``compile_ms``,
        ``compile_memory_bytes``: :mod:`nightcore.sandbox.compiler`), or in this process when
        the sandbox was built with ``bounded_compile=False`` (a strongbox worker: the worker is
        itself the bounded place). Returns the module and its serialized artifact (b"" when
        compiled here)."""
        if not self._bounded_compile:
            hook = self.on_compile  # a strongbox worker tells its parent (phase frames)
            if hook is not None:
                hook("compiling")
            try:
                module = wasmtime.Module(entry.engine, bytes(module_bytes))
            except wasmtime.WasmtimeError as exc:
                raise _CompileFailed(_one_line(str(exc))) from exc
            if hook is not None:
                hook("compiled")
            return module, b""
        try:
            done = self._compiler.compile(
                bytes(module_bytes),
                stack_bytes=entry.key.stack_bytes,
                deterministic=entry.key.deterministic,
                compile_ms=config.limits.compile_ms,
                compile_memory_bytes=config.limits.compile_memory_bytes,
            )
        except OSError as exc:
            raise SandboxError(
                f"cannot start the compile process: {exc}", code="WORKER_START_FAILED"
            ) from exc
        if done.status == "error":
            raise _CompileFailed(_one_line(done.detail))
        if done.status != "ok":
            raise _CompileFailed(_one_line(done.detail), "COMPILE_LIMIT")
        try:
            return wasmtime.Module.deserialize(entry.engine, done.artifact), done.artifact
        except wasmtime.WasmtimeError as exc:
            raise _CompileFailed(
                f"the compiled artifact did not load: {_one_line(str(exc))}"
            ) from exc

    # -- running -----------------------------------------------------------------------

    def run(
        self, module_bytes: bytes, config: RunConfig, interrupt: Interrupt | None = None
    ) -> RunResult:
        """Run ``module_bytes`` (already verified to have ``config.module_sha256``).

        Tenant-caused failures are reported in the result's ``code``; configuration
        errors (invalid limits, argv, env or preopens, a digest mismatch, a closed
        sandbox) raise :class:`SandboxError` with a stable ``code``. A tripped ``interrupt``
        (the kill switch) stops the run at the next epoch tick with the interrupt's code, or
        before it starts if it was tripped already.
        """
        started = time.perf_counter()
        _validate(config)
        entry = self._acquire_engine(EngineKey(config.limits.stack_bytes, config.deterministic))
        try:
            try:
                loaded, cache_status = self._module_for(module_bytes, config, entry)
            except _CompileFailed as exc:
                result = _failed(exc.code, exc.detail, "miss")
            else:
                if config.limits.stack_bytes > INLINE_STACK_MAX:
                    result = _call_on_big_stack(
                        lambda: self._execute(entry, loaded, config, cache_status, interrupt),
                        config.limits.stack_bytes,
                    )
                else:
                    result = self._execute(entry, loaded, config, cache_status, interrupt)
        finally:
            self._release_engine(entry)
        result.wall_ms = (time.perf_counter() - started) * 1000.0
        return result

    def _net_events(self, config: RunConfig, performer: net_host.NetPerformer | None) -> None:
        """A run's NET requests (docs/net.md), audited through the runner's event sink."""
        if performer is not None:
            for name, data in performer.audit_events(config.run_id):
                self._event(name, {"tenant": config.tenant, **data})

    def _track(
        self, config: RunConfig, interrupt: Interrupt | None
    ) -> tuple[Interrupt, RunUsage | None]:
        """Register the run with the resource monitor (when it has grants to watch); the
        interrupt the watchdog reads. The monitor trips the run's own interrupt, never the
        caller's (the kill switch reads a tripped one as its own doing); a tripped caller's
        interrupt trips the run's own with its code, detail and cause."""
        if not config.preopens:
            return interrupt or Interrupt(), None
        own = Interrupt()
        try:
            usage = open_run(config.limits, config.preopens, own)
        except OSError as exc:
            raise SandboxError(
                f"cannot open a granted directory: {exc.strerror or exc}", code="PREOPEN_INVALID"
            ) from exc
        if interrupt is not None:
            outer = interrupt

            def relay() -> None:
                own.trip(outer.code, outer.detail, outer.cause)

            usage.unlink = outer.on_trip(relay)
        self._monitor.register(usage)
        return own, usage

    def _untrack(self, usage: RunUsage | None) -> str:
        """Unregister the run; why its read-write grants are over their bounds now ("" if
        they are not): the last sample, taken after the guest ended."""
        if usage is None:
            return ""
        self._monitor.unregister(usage)
        if usage.unlink is not None:
            usage.unlink()
        try:
            if usage.interrupt.code == "DISK_LIMIT":
                return usage.interrupt.detail
            return usage.check_disk()
        except OSError as exc:  # fail closed: grants that cannot be measured are over
            return f"the host could not measure the read-write grants: {exc.strerror or exc}"
        finally:
            usage.close()

    def _execute(
        self,
        entry: _EngineEntry,
        loaded: _ModuleEntry,
        config: RunConfig,
        cache_status: str,
        interrupt: Interrupt | None = None,
    ) -> RunResult:
        if interrupt is not None and interrupt.code:  # tripped before the guest started
            return _failed(interrupt.code, interrupt.detail, cache_status)
        pre, link_error = _instance_pre(entry, loaded, config)
        if pre is None:
            return _failed("INSTANTIATE_ERROR", link_error, cache_status)
        limits = config.limits
        wasi = _wasi_config(config)
        sink = OutputSink(limits.output_bytes, _live_paths(config))
        released = sink.attach(wasi)
        store = wasmtime.Store(entry.engine)
        usage: RunUsage | None = None
        try:
            interrupt, usage = self._track(config, interrupt)
            store.set_limits(
                memory_size=limits.memory_bytes,
                table_elements=MAX_TABLE_ELEMENTS,
                instances=MAX_INSTANCES,
                tables=MAX_TABLES,
                memories=MAX_MEMORIES,
            )
            store.set_fuel(limits.fuel)
            ticks = max(1, math.ceil(limits.wall_ms / self._tick_ms))
            watchdog = install_watchdog(store, ticks, sink, interrupt)
            store.set_wasi(wasi)
            if config.deterministic:
                deterministic_wasi.activate(config.seed, limits.fuel)
            performer = net_host.start(
                config,
                time.monotonic() + limits.wall_ms / 1000.0,
                _host_time_charger(watchdog, self._tick_ms),
            )
            instance: wasmtime.Instance | None = None
            code, detail = "OK", ""
            exit_code: int | None = 0
            fuel_exact = True  # see RunResult.fuel_exact
            try:
                instance = pre.instantiate(store)
                func = instance.exports(store).get(config.entrypoint)
                if not isinstance(func, wasmtime.Func):
                    raise _Refused(
                        f"entrypoint {config.entrypoint[:80]!r} is not an exported function"
                    )
                if func.type(store).params:
                    raise _Refused(f"entrypoint {config.entrypoint[:80]!r} takes parameters")
                func(store)
            except _Refused as exc:
                code, exit_code, detail = "INSTANTIATE_ERROR", None, _one_line(str(exc))
            except wasmtime.ExitTrap as exc:
                code = "OK" if exc.code == 0 else "EXIT_NONZERO"
                exit_code, detail = exc.code, ("" if exc.code == 0 else f"exit status {exc.code}")
            except wasmtime.Trap as exc:
                exit_code, detail = None, _one_line(exc.message)
                code = _trap_code(exc.trap_code)
                fuel_exact = exc.trap_code in _FUEL_WRITTEN_BACK
                if instance is None and code == "TRAP":
                    code = "INSTANTIATE_ERROR"  # the start function trapped
            except wasmtime.WasmtimeError as exc:
                exit_code, detail = None, _one_line(str(exc))
                if instance is None:
                    code = (
                        "MEMORY_LIMIT" if "exceeds memory limits" in detail else "INSTANTIATE_ERROR"
                    )
                else:
                    code = "TRAP"
                    fuel_exact = False  # e.g. stopped by the epoch-deadline callback
            finally:
                deterministic_wasi.deactivate()
                net_host.deactivate()
            if watchdog.reason and code not in ("OK", "EXIT_NONZERO"):
                code, exit_code, fuel_exact = watchdog.reason, None, False
                detail = _stop_detail(code, config, interrupt)
            # Exact only where Wasmtime wrote its fuel counter back (fuel_exact); otherwise
            # the fuel burnt since the guest's last call or return is lost: a lower bound.
            fuel_used = max(0, limits.fuel - store.get_fuel())
            memory_bytes, at_limit = 0, False
            mem = _exported_memory(store, instance)
            if mem is not None:
                memory_bytes = mem.data_len(store)
                at_limit = memory_bytes + mem.page_size(store) > limits.memory_bytes
        finally:
            store.close()  # frees linear memory now and finalises the WASI context
            wasi.close()  # no-op once the store took it over
            for event in released:
                event.wait(RELEASE_WAIT_S)
            sink.close_live()
            disk_over = self._untrack(usage)
        self._net_events(config, performer)
        stdout, stderr, truncated = sink.snapshot()
        code, extra = _cap_outcome(code, at_limit, truncated)
        code, detail = _disk_outcome(code, detail, extra, disk_over)
        return RunResult(
            code=code,
            exit_code=exit_code,
            fuel_used=fuel_used,
            wall_ms=0.0,
            memory_bytes=memory_bytes,
            stdout=stdout,
            stderr=stderr,
            output_truncated=truncated,
            detail=detail,
            cache=cache_status,
            extra=extra,
            fuel_exact=fuel_exact,
        )


def _live_paths(config: RunConfig) -> tuple[Path, Path] | None:
    """Where the run's output is copied as it comes (``logs --follow``), if anywhere."""
    if not (config.live_dir and config.run_id):
        return None
    base = Path(config.live_dir)
    return base / f"{config.run_id}.stdout", base / f"{config.run_id}.stderr"


# Traps at which compiled code has written its fuel counter back to the store: out-of-fuel
# (saved before the libcall), `unreachable` (saved before it), and stack overflow (raised in
# a callee's prologue, after the caller saved it for the call). An epoch interrupt and the
# other wasm traps (division by zero, out-of-bounds access, ...) leave it stale.
_FUEL_WRITTEN_BACK = frozenset(
    {
        wasmtime.TrapCode.OUT_OF_FUEL,
        wasmtime.TrapCode.UNREACHABLE,
        wasmtime.TrapCode.STACK_OVERFLOW,
    }
)


def _host_time_charger(watchdog: Watchdog, tick_ms: int) -> Callable[[float], None]:
    """Counts time spent in a host call (a NET request) against the run's wall-clock limit:
    the watchdog counts epoch ticks seen by the guest, and none are seen during a host call."""

    def charge(seconds: float) -> None:
        watchdog.ticks_left -= int(seconds * 1000.0 // tick_ms)

    return charge


def _instance_pre(
    entry: _EngineEntry, loaded: _ModuleEntry, config: RunConfig
) -> tuple[wasmtime.InstancePre | None, str]:
    """The InstancePre of this run: against the plain linker, or for a run with a NET
    capability against the one that also defines ``nightcore.http_request``. A module that
    imports it without the grant fails to link (INSTANTIATE_ERROR, docs/net.md)."""
    if config.net is None:
        return loaded.pre, loaded.link_error
    if loaded.net_link_error is None:  # a benign race: both threads compute the same
        if entry.net_linker is None:
            linker = _make_linker(entry.engine, entry.key.deterministic)
            net_host.define(linker)
            entry.net_linker = linker
        try:
            loaded.net_pre = entry.net_linker.instantiate_pre(loaded.module)
            loaded.net_link_error = ""
        except wasmtime.WasmtimeError as exc:
            loaded.net_link_error = _one_line(str(exc))
    return loaded.net_pre, loaded.net_link_error


def _cap_outcome(code: str, at_limit: bool, truncated: bool) -> tuple[str, dict[str, str]]:
    """A run that failed with its memory at the cap, or whose output was cut, reports that
    limit as its code; the guest's own outcome is kept as ``underlying_code``."""
    extra: dict[str, str] = {}
    if code in ("TRAP", "EXIT_NONZERO") and at_limit:
        extra["underlying_code"] = code
        code = "MEMORY_LIMIT"
    elif code in ("OK", "TRAP", "EXIT_NONZERO") and truncated:
        extra["underlying_code"] = code
        code = "OUTPUT_LIMIT"
    return code, extra


def _disk_outcome(code: str, detail: str, extra: dict[str, str], disk_over: str) -> tuple[str, str]:
    """A run over its disk bound when it ended (between two samples) is ``DISK_LIMIT``: like
    ``OUTPUT_LIMIT`` it replaces the guest's own outcome, which stays ``underlying_code``."""
    if disk_over and code in ("OK", "EXIT_NONZERO", "TRAP", "OUTPUT_LIMIT"):
        extra.setdefault("underlying_code", code)
        return "DISK_LIMIT", disk_over
    return code, detail


def _stop_detail(code: str, config: RunConfig, interrupt: Interrupt | None) -> str:
    """The detail of a run the watchdog stopped with ``code``."""
    if code == "OUTPUT_LIMIT":
        return f"output limit of {config.limits.output_bytes} bytes reached: run stopped"
    if code == "TIMEOUT":
        return f"wall-clock limit of {config.limits.wall_ms} ms reached"
    return interrupt.detail if interrupt is not None else code  # the kill switch


def _trap_code(trap_code: wasmtime.TrapCode | None) -> str:
    if trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
        return "FUEL_EXHAUSTED"
    if trap_code == wasmtime.TrapCode.INTERRUPT:
        return "TIMEOUT"
    if trap_code == wasmtime.TrapCode.STACK_OVERFLOW:
        return "STACK_OVERFLOW"
    return "TRAP"


def _failed(code: str, detail: str, cache_status: str) -> RunResult:
    return RunResult.refused(code, detail, cache=cache_status)
