"""``--strongbox``: every run in a confined worker process (no network, unprivileged, seccomp).

:class:`StrongboxSandbox` has the interface of :class:`nightcore.sandbox.engine.Sandbox`
(``run(module_bytes, config) -> RunResult``, ``close()``, context manager, thread-safe).
Each run goes to one worker of a small pool; a worker runs one run at a time. Workers are
started with ``subprocess.Popen([sys.executable, "-I", "-m",
"nightcore.sandbox.strongbox_worker", ...])`` (never a fork of this process) and lock
themselves down before they build their Engine (see :mod:`nightcore.sandbox.strongbox_worker`
and ``docs/strongbox.md``).

A worker is bound to a *worker key* ``(stack_bytes, deterministic, memory_bytes)``: its one
Engine is built for that stack size / determinism before the seccomp filter is loaded, and
its ``RLIMIT_AS`` is sized for that memory limit. Runs with another key use (or replace) a
worker built for it.

Wire format (both directions): a frame is ``>II`` (JSON length, blob length), then the JSON
object (UTF-8), then the blob. Requests carry the config as JSON and the module bytes as
blob; replies carry the result fields as JSON and ``stdout + stderr`` as blob. The parent
treats everything a worker says as hostile: strict JSON (no duplicate keys, no NaN, no
floats), exact types, size caps, clipped values; anything else is ``WORKER_REPLY_INVALID``.

Outcome codes added by the strongbox (besides the sandbox's own):

* ``SECCOMP_VIOLATION`` - the worker was killed by ``SIGSYS`` (a forbidden system call);
* ``TIMEOUT`` - the parent's wall-clock watchdog killed the worker, or it died of
  ``SIGKILL`` / ``SIGXCPU``;
* ``WORKER_CRASHED`` - any other death (e.g. ``SIGABRT``, ``SIGSEGV``, an exit status);
* ``WORKER_REPLY_INVALID`` - the reply broke the format or the limits (the worker is
  killed and replaced).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nightcore.errors import RUN_CODES, SandboxError
from nightcore.fsio import wait_readable
from nightcore.sandbox import net as net_host
from nightcore.sandbox.isolation import TenantIds, observed_layers, seccomp_available
from nightcore.sandbox.types import (
    EffectiveLimits,
    Interrupt,
    NetAccess,
    Preopen,
    RunConfig,
    RunResult,
)

MIB = 1024 * 1024
# Wasmtime settings of every worker Engine (see docs/strongbox.md, "RLIMIT_AS"): a worker
# serves one memory limit, so its linear memory reservation is exactly that limit (at least
# MIN_RESERVATION): memory never moves when it grows (with reservation_for_growth 0 a
# memory above its reservation would be copied on every memory.grow).
MIN_RESERVATION = 64 * MIB
MAX_RESERVATION = 4096 * MIB  # wasm32's whole address space
MEMORY_GUARD = 64 * 1024
WASM_PAGE = 64 * 1024
# RLIMIT_AS = what is mapped once imports are done + this headroom (engine, compiler,
# thread stacks, glibc's single arena) + the reservation and guard + twice the wasm stack.
AS_HEADROOM = 512 * MIB
GLIBC_TUNABLES = "glibc.malloc.arena_max=1"

FRAME = struct.Struct(">II")
MAX_REQUEST_JSON = 4 * MIB
MAX_MODULE_BYTES = 256 * MIB
MAX_REPLY_JSON = 64 * 1024
MAX_DETAIL_CHARS = 240
# Bounds of the walk that hands a tenant's data tree to the worker uid (chown_tree): a
# deeper or larger tree ends that tenant's run with TREE_LIMIT. One descriptor is held per
# level, so the depth bound also bounds the descriptors the walk needs.
MAX_TREE_DEPTH = 128
MAX_TREE_ENTRIES = 100_000

STRONGBOX_CODES = ("SECCOMP_VIOLATION", "WORKER_CRASHED", "WORKER_REPLY_INVALID")
_RESULT_CODES = frozenset(RUN_CODES) | {"OUTPUT_LIMIT"}
# Errors a worker may report for a config (re-raised as SandboxError with that code).
_CONFIG_ERROR_CODES = frozenset(
    {
        "LIMIT_INVALID",
        "ARGV_INVALID",
        "ENV_INVALID",
        "PREOPEN_INVALID",
        "SEED_INVALID",
        "DIGEST_INVALID",
        "DIGEST_MISMATCH",
        "FFI_UNAVAILABLE",  # not a config error, but the worker's sandbox refused to run
    }
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# clone(2) is allowed only for threads: all of these flags set ...
CLONE_VM = 0x00000100
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_SIGHAND = 0x00000800
CLONE_THREAD = 0x00010000
CLONE_THREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD
# ... and none of the namespace flags (NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
# NEWNET) nor CLONE_VFORK / CLONE_PARENT / CLONE_PTRACE / CLONE_UNTRACED.
_CLONE_FORBIDDEN = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
) | (0x00004000 | 0x00008000 | 0x00002000 | 0x00800000)
CLONE_CHECK_MASK = CLONE_THREAD_FLAGS | _CLONE_FORBIDDEN

# The allow-list of the worker's seccomp filter (x86_64 names; libseccomp resolves them per
# architecture). Derived with ``strace -f`` over the workloads in benchmarks/strongbox.py
# and tests/unit/test_strongbox.py (compile under the filter, WASI file I/O on preopens,
# big-stack helper threads, traps, timeouts). Everything else kills the whole process
# (SECCOMP_RET_KILL_PROCESS); ``clone`` is allowed for threads only (see above) and
# ``clone3`` fails with ENOSYS so glibc falls back to ``clone``.
ALLOWED_SYSCALLS: tuple[str, ...] = (
    # memory
    "brk",
    "mmap",
    "mprotect",
    "mremap",
    "munmap",
    "madvise",
    # threads, scheduling, signals (clone, prctl, tgkill: argument-checked, see below)
    "futex",
    "gettid",
    "getpid",
    "sched_yield",
    "sched_getaffinity",
    "set_robust_list",
    "rseq",
    "sigaltstack",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "exit",
    "exit_group",
    # time and randomness
    "clock_gettime",
    "clock_nanosleep",
    "nanosleep",
    "getrandom",
    # descriptors, pipes, Wasmtime's I/O runtime
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "close",
    "fcntl",
    "lseek",
    "poll",
    "ppoll",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "eventfd2",
    # copy-on-write memory images (memory_init_cow, as in process: identical fuel)
    "memfd_create",
    # files: WASI preopens, through cap-std's *at calls
    "openat",
    "openat2",
    "newfstatat",
    "fstat",
    "statx",
    "getdents64",
    "mkdirat",
    "unlinkat",
    "renameat",
    "renameat2",
    "linkat",
    "symlinkat",
    "readlinkat",
    "fsync",
    "fdatasync",
    "ftruncate",
    "fallocate",
    "fadvise64",
    "utimensat",
    # identity (read-only)
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getgroups",
)
# Test-only entrypoints understood by workers started with ``WorkerOptions(selftest=True)``.
SELFTEST_EXECVE = "__strongbox_selftest_execve__"
SELFTEST_SOCKET = "__strongbox_selftest_socket__"
SELFTEST_GARBAGE = "__strongbox_selftest_garbage__"
SELFTEST_OVERSIZED = "__strongbox_selftest_oversized__"
SELFTEST_LIES = "__strongbox_selftest_lies__"
SELFTEST_ABORT = "__strongbox_selftest_abort__"
PR_SET_NAME = 15
PR_GET_NAME = 16


# --------------------------------------------------------------------------------------
# Framing and (de)serialisation


class FrameError(Exception):
    """The peer closed the pipe, timed out, or sent a frame that breaks the format."""

    def __init__(self, message: str, *, eof: bool = False, timeout: bool = False) -> None:
        super().__init__(message)
        self.eof = eof
        self.timeout = timeout


def write_frame(fd: int, header: dict[str, Any], blob: bytes = b"") -> None:
    data = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    view = memoryview(FRAME.pack(len(data), len(blob)) + data + blob)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    left = n
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FrameError("timed out", timeout=True)
            ready = wait_readable([fd], remaining)
            if not ready:
                raise FrameError("timed out", timeout=True)
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise FrameError("end of stream", eof=True)
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject(value: str) -> Any:
    raise ValueError(f"number {value!r} not allowed")


def strict_json(data: bytes) -> dict[str, Any]:
    obj = json.loads(
        data.decode("utf-8", errors="strict"),
        object_pairs_hook=_no_duplicates,
        parse_constant=_reject,
        parse_float=_reject,
    )
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def read_frame(
    fd: int, *, max_json: int, max_blob: int, deadline: float | None = None
) -> tuple[dict[str, Any], bytes]:
    json_len, blob_len = FRAME.unpack(_read_exact(fd, FRAME.size, deadline))
    if json_len > max_json or blob_len > max_blob:
        raise FrameError(f"frame too large ({json_len} + {blob_len} bytes)")
    raw = _read_exact(fd, json_len, deadline)
    blob = _read_exact(fd, blob_len, deadline) if blob_len else b""
    try:
        return strict_json(raw), blob
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FrameError(f"malformed JSON: {exc}") from exc


def config_to_json(config: RunConfig) -> dict[str, Any]:
    return {
        "tenant": config.tenant,
        "module_sha256": config.module_sha256,
        "entrypoint": config.entrypoint,
        "argv": list(config.argv),
        "env": [[k, v] for k, v in config.env],
        "preopens": [
            {"host_dir": str(p.host_dir), "guest_path": p.guest_path, "writable": p.writable}
            for p in config.preopens
        ],
        "limits": config.limits.to_dict(),
        "deterministic": config.deterministic,
        "seed": config.seed,
        # The worker only needs to know NET is on (the parent enforces; docs/net.md).
        "net": config.net.to_dict() if config.net is not None else None,
    }


def _typed(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SandboxError(f"{what}: wrong type", code="BAD_REQUEST")
    return value


def config_from_json(obj: Any) -> RunConfig:
    """The worker's side: a RunConfig from the request (the engine validates values)."""
    o = _typed(obj, dict, "config")
    lim = _typed(o.get("limits"), dict, "limits")
    return RunConfig(
        tenant=_typed(o.get("tenant"), str, "tenant"),
        module_sha256=_typed(o.get("module_sha256"), str, "module_sha256"),
        entrypoint=_typed(o.get("entrypoint"), str, "entrypoint"),
        argv=tuple(_typed(a, str, "argv") for a in _typed(o.get("argv"), list, "argv")),
        env=tuple(
            (_typed(e[0], str, "env"), _typed(e[1], str, "env"))
            for e in _typed(o.get("env"), list, "env")
            if _typed(e, list, "env") and len(e) == 2
        ),
        preopens=tuple(
            Preopen(
                host_dir=Path(_typed(p.get("host_dir"), str, "preopen")),
                guest_path=_typed(p.get("guest_path"), str, "preopen"),
                writable=_typed(p.get("writable"), bool, "preopen"),
            )
            for p in (_typed(x, dict, "preopen") for x in _typed(o.get("preopens"), list, "p"))
        ),
        limits=EffectiveLimits(
            **{k: _typed(lim.get(k), int, k) for k in EffectiveLimits.__dataclass_fields__}
        ),
        deterministic=_typed(o.get("deterministic"), bool, "deterministic"),
        seed=_typed(o.get("seed"), int, "seed"),
        net=_net_from_json(o.get("net")),
    )


def _net_from_json(obj: Any) -> NetAccess | None:
    if obj is None:
        return None
    o = _typed(obj, dict, "net")
    return NetAccess(
        grants=tuple(_typed(g, str, "net") for g in _typed(o.get("grants"), list, "net")),
        max_request_bytes=_typed(o.get("max_request_bytes"), int, "net"),
        max_response_bytes=_typed(o.get("max_response_bytes"), int, "net"),
        max_requests=_typed(o.get("max_requests"), int, "net"),
    )


def result_to_frame(result: RunResult) -> tuple[dict[str, Any], bytes]:
    return (
        {
            "op": "result",
            "code": result.code,
            "exit_code": result.exit_code,
            "fuel_used": result.fuel_used,
            "fuel_exact": result.fuel_exact,
            "memory_bytes": result.memory_bytes,
            "stdout_len": len(result.stdout),
            "stderr_len": len(result.stderr),
            "output_truncated": result.output_truncated,
            "detail": result.detail,
            "cache": result.cache,
            "extra": dict(result.extra),
        },
        result.stdout + result.stderr,
    )


def _clean_text(value: str, limit: int = MAX_DETAIL_CHARS) -> str:
    text = " ".join(_CONTROL.sub(" ", value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ReplyInvalid(Exception):
    pass


def _field(obj: dict[str, Any], name: str, kind: type) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ReplyInvalid(f"field {name!r} missing or of the wrong type")
    return value


def result_from_frame(
    obj: dict[str, Any], blob: bytes, limits: EffectiveLimits, seq: int
) -> RunResult:
    """The parent's side: a RunResult from an untrusted reply, checked and clipped."""
    allowed = {
        "op",
        "code",
        "exit_code",
        "fuel_used",
        "fuel_exact",
        "memory_bytes",
        "stdout_len",
        "stderr_len",
        "output_truncated",
        "detail",
        "cache",
        "extra",
        "seq",
    }
    if set(obj) != allowed or obj.get("op") != "result":
        raise ReplyInvalid("unexpected fields")
    if _field(obj, "seq", int) != seq:
        raise ReplyInvalid("reply to another request")
    code = _field(obj, "code", str)
    if code not in _RESULT_CODES:
        raise ReplyInvalid("unknown result code")
    exit_code = obj.get("exit_code")
    if exit_code is not None and (
        not isinstance(exit_code, int) or isinstance(exit_code, bool) or not 0 <= exit_code < 2**31
    ):
        raise ReplyInvalid("bad exit_code")
    out_len = _field(obj, "stdout_len", int)
    err_len = _field(obj, "stderr_len", int)
    if out_len < 0 or err_len < 0 or out_len + err_len != len(blob):
        raise ReplyInvalid("output lengths do not match the blob")
    if len(blob) > limits.output_bytes:
        raise ReplyInvalid("more output than the output limit")
    cache = _field(obj, "cache", str)
    if cache not in ("", "hit", "miss", "rejected"):
        raise ReplyInvalid("bad cache status")
    extra_in = _field(obj, "extra", dict)
    extra: dict[str, str] = {}
    for k, v in extra_in.items():
        if k != "underlying_code" or v not in _RESULT_CODES:
            raise ReplyInvalid("unexpected extra field")
        extra[k] = v
    return RunResult(
        code=code,
        exit_code=exit_code,
        fuel_used=min(max(0, _field(obj, "fuel_used", int)), limits.fuel),
        wall_ms=0.0,
        memory_bytes=min(max(0, _field(obj, "memory_bytes", int)), limits.memory_bytes),
        stdout=blob[:out_len],
        stderr=blob[out_len:],
        output_truncated=_field(obj, "output_truncated", bool),
        detail=_clean_text(_field(obj, "detail", str)),
        cache=cache,
        extra=extra,
        fuel_exact=_field(obj, "fuel_exact", bool),
    )


def memory_reservation(memory_bytes: int) -> int:
    """The linear-memory reservation of a worker Engine serving ``memory_bytes``."""
    pages = -(-memory_bytes // WASM_PAGE)
    return min(MAX_RESERVATION, max(MIN_RESERVATION, pages * WASM_PAGE))


def as_headroom(memory_bytes: int, stack_bytes: int) -> int:
    """RLIMIT_AS above what the worker has mapped after its imports."""
    return AS_HEADROOM + memory_reservation(memory_bytes) + MEMORY_GUARD + 2 * stack_bytes


# --------------------------------------------------------------------------------------
# One worker process


@dataclass(frozen=True)
class WorkerKey:
    """What a worker is built for: one tenant, one engine configuration, one memory limit."""

    tenant: str
    stack_bytes: int
    deterministic: bool
    memory_bytes: int
    # The run's granted directories (host path, writable): the worker's Landlock rules and
    # the directories bound back into its mount namespace are fixed when it starts.
    grants: tuple[tuple[str, bool], ...] = ()

    @staticmethod
    def of(config: RunConfig) -> WorkerKey:
        lim = config.limits
        grants = tuple(sorted((str(p.host_dir), p.writable) for p in config.preopens))
        return WorkerKey(
            config.tenant, lim.stack_bytes, config.deterministic, lim.memory_bytes, grants
        )


@dataclass(frozen=True)
class WorkerOptions:
    uid: int = 65534
    gid: int = 65534
    tick_ms: int = 10
    open_files: int = 128
    file_size_bytes: int = 64 * MIB
    cpu_seconds: int = 3600
    start_timeout_s: float = 30.0
    grace_ms: int = 5_000  # watchdog: wall_ms + grace (compilation is not in wall_ms)
    stderr_to_parent: bool = False  # debugging only
    selftest: bool = False  # tests only: workers that report and misbehave on request
    landlock: bool = True  # restrict each worker to its grants where the kernel can
    mount_ns: bool = True  # a private mount namespace hiding ``hide`` (root only)
    hide: tuple[str, ...] = ()  # e.g. the workspace's private/ and state/
    probe: tuple[str, ...] = ()  # selftest only: paths the worker tries to read


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


class Worker:
    """One confined worker process and its two pipes. Not thread-safe: the pool serialises."""

    def __init__(
        self,
        key: WorkerKey,
        options: WorkerOptions,
        *,
        selftest: bool = False,
        trace_to: str = "",
    ) -> None:
        self.key = key
        self.options = options
        self.runs = 0
        self.seq = 0
        self.started = time.perf_counter()
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        argv = [
            sys.executable,
            "-I",
            "-m",
            "nightcore.sandbox.strongbox_worker",
            "--in",
            str(req_r),
            "--out",
            str(rep_w),
            "--uid",
            str(options.uid),
            "--gid",
            str(options.gid),
            f"--tenant={key.tenant}",
            "--stack-bytes",
            str(key.stack_bytes),
            "--deterministic",
            str(int(key.deterministic)),
            "--memory-bytes",
            str(key.memory_bytes),
            "--tick-ms",
            str(options.tick_ms),
            "--nofile",
            str(options.open_files),
            "--fsize",
            str(options.file_size_bytes),
            "--cpu-s",
            str(options.cpu_seconds),
        ]
        argv.append("--grants=" + json.dumps([[d, w] for d, w in key.grants]))
        argv += [f"--hide={h}" for h in options.hide]
        if not options.landlock:
            argv.append("--no-landlock")
        if not options.mount_ns:
            argv.append("--no-mountns")
        if selftest or options.selftest:
            argv.append("--selftest")
            argv += [f"--probe={p}" for p in options.probe]
        if trace_to:  # benchmarks/strongbox.py --trace: derive ALLOWED_SYSCALLS
            argv = ["strace", "-f", "-qq", "-o", trace_to, *argv, "--no-filter"]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None if options.stderr_to_parent else subprocess.DEVNULL,
                pass_fds=(req_r, rep_w),
                env={"GLIBC_TUNABLES": GLIBC_TUNABLES},
                close_fds=True,
                start_new_session=True,
            )
        finally:
            os.close(req_r)
            os.close(rep_w)
        self._req = req_w
        self._rep = rep_r
        self.dead = False
        self.phase = ""  # "compile" between the worker's "compiling" and "compiled" frames
        self.ready_ms = 0.0
        self.hello: dict[str, Any] = {}
        self.layers: dict[str, Any] = {"mode": "strongbox"}  # set by wait_ready
        self.net: net_host.NetPerformer | None = None  # the NET requests of the current run

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.options.start_timeout_s
        try:
            hello, _ = read_frame(self._rep, max_json=MAX_REPLY_JSON, max_blob=0, deadline=deadline)
        except FrameError as exc:
            status = self.kill()
            raise SandboxError(
                f"strongbox worker did not start ({exc}; status {status})",
                code="WORKER_START_FAILED",
            ) from exc
        if hello.get("op") not in ("ready", "selftest"):
            self.kill()
            msg = _clean_text(str(hello.get("message", hello.get("op"))))
            raise SandboxError(f"strongbox worker did not start: {msg}", code="WORKER_START_FAILED")
        self.ready_ms = (time.perf_counter() - self.started) * 1000.0
        self.hello = hello
        reported = hello.get("layers")
        reported = reported if isinstance(reported, dict) else {}
        try:
            # Seen from outside (/proc): the seccomp filter, no_new_privs, the ids and the
            # namespaces; the Landlock ABI as the worker reported it.
            self.layers = {"mode": "strongbox", **observed_layers(self.pid, reported)}
        except OSError as exc:
            self.kill()
            raise SandboxError(
                f"strongbox worker vanished after start-up ({exc})", code="WORKER_START_FAILED"
            ) from exc
        return hello

    def send(self, header: dict[str, Any], blob: bytes = b"") -> None:
        write_frame(self._req, header, blob)

    def receive(self, deadline: float, max_blob: int) -> tuple[dict[str, Any], bytes]:
        return read_frame(self._rep, max_json=MAX_REPLY_JSON, max_blob=max_blob, deadline=deadline)

    def kill(self) -> int:
        """SIGKILL (if still running), reap, close pipes; the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        status = self.proc.wait()
        self._close_pipes()
        return status

    def wait_dead(self, timeout: float = 5.0) -> int:
        """The status of a worker whose pipe closed (kills it if it lingers)."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            status = self.kill()
        self._close_pipes()
        return status

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send({"op": "exit"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2.0)
        self.kill()

    def _close_pipes(self) -> None:
        self.dead = True
        for fd in (self._req, self._rep):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._req = self._rep = -1


# --------------------------------------------------------------------------------------
# Handing a tenant's data tree to the worker uid

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def chown_tree(
    path: Path,
    uid: int,
    gid: int,
    *,
    max_depth: int = MAX_TREE_DEPTH,
    max_entries: int = MAX_TREE_ENTRIES,
) -> int:
    """Give ``path`` and everything under it to ``uid``/``gid``; returns the entries under it.

    Iterative and descriptor-relative (``fchownat``/``openat`` on the parent's descriptor,
    so no path ever exceeds ``PATH_MAX`` and no recursion limit is involved), never
    following a symbolic link (links themselves are re-owned, ``O_NOFOLLOW`` on every
    directory opened, so a directory swapped for a link fails instead of being followed).
    A tree deeper than ``max_depth`` levels below ``path`` or with more than ``max_entries``
    entries raises ``SandboxError(TREE_LIMIT)``; any other failure raises
    ``SandboxError(PREOPEN_INVALID)``. Entries already changed stay changed (harmless: the
    run is refused, and the tree is the tenant's own).
    """
    stack: list[tuple[int, list[tuple[str, bool]]]] = []  # (dir fd, entries still to do)
    count = 0

    def listing(fd: int) -> list[tuple[str, bool]]:
        nonlocal count
        entries: list[tuple[str, bool]] = []
        with os.scandir(fd) as it:
            for entry in it:
                count += 1
                if count > max_entries:
                    raise SandboxError(
                        f"data tree {str(path)!r} has more than {max_entries} entries: "
                        "not handed to the strongbox worker",
                        code="TREE_LIMIT",
                    )
                entries.append((entry.name, entry.is_dir(follow_symlinks=False)))
        return entries

    try:
        top = os.open(path, _DIR_FLAGS)
        stack.append((top, []))
        os.fchown(top, uid, gid)
        stack[-1] = (top, listing(top))
        while stack:
            fd, todo = stack[-1]
            if not todo:
                stack.pop()
                os.close(fd)
                continue
            name, is_dir = todo.pop()
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            if is_dir:
                if len(stack) > max_depth:  # the entry is len(stack) levels below path
                    raise SandboxError(
                        f"data tree {str(path)!r} is more than {max_depth} directories "
                        "deep: not handed to the strongbox worker",
                        code="TREE_LIMIT",
                    )
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                stack.append((child, []))
                stack[-1] = (child, listing(child))
    except OSError as exc:
        raise SandboxError(
            f"cannot hand {str(path)!r} to the strongbox worker: "
            f"{exc.strerror or type(exc).__name__}",
            code="PREOPEN_INVALID",
        ) from exc
    finally:
        for fd, _ in stack:
            os.close(fd)
    return count


# --------------------------------------------------------------------------------------
# The pool


@dataclass
class _PoolState:
    idle: list[Worker] = field(default_factory=list)
    busy: set[Worker] = field(default_factory=set)
    starting: int = 0


class StrongboxSandbox:
    """Runs each tenant in a confined worker process; same interface as ``Sandbox``.

    ``cache_dir`` / ``cache_secret`` are accepted for interface compatibility and ignored:
    workers compile into memory only (a confined worker can neither read nor be trusted to
    write the node's authenticated disk cache). ``on_event(name, fields)`` receives
    ``strongbox_worker_died`` (fields: tenant, module_sha256, code, status) whenever a
    worker dies during a run or is killed for an invalid reply.

    ``workers`` bounds the pool (concurrent runs). ``uid``/``gid`` are the ids workers
    drop to when the parent runs as root: preopened directories must be accessible to
    them (see :meth:`grant_access`, and ``docs/strongbox.md``).
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        cache_secret: bytes = b"",
        *,
        tick_ms: int = 10,
        on_event: Any = None,
        workers: int = 2,
        uid: int = 65534,
        gid: int = 65534,
        max_runs_per_worker: int = 1000,
        options: WorkerOptions | None = None,
        ids: TenantIds | None = None,
        hide: tuple[Path, ...] = (),
    ) -> None:
        del cache_dir, cache_secret
        if sys.platform != "linux":
            raise SandboxError("--strongbox needs Linux", code="STRONGBOX_UNAVAILABLE")
        if not 1 <= workers <= 64:
            raise SandboxError("workers must be in [1, 64]", code="SANDBOX_CONFIG_INVALID")
        base = options or WorkerOptions()
        self.options = WorkerOptions(
            uid=uid,
            gid=gid,
            tick_ms=tick_ms,
            open_files=base.open_files,
            file_size_bytes=base.file_size_bytes,
            cpu_seconds=base.cpu_seconds,
            start_timeout_s=base.start_timeout_s,
            grace_ms=base.grace_ms,
            stderr_to_parent=base.stderr_to_parent,
            selftest=base.selftest,
            landlock=base.landlock,
            mount_ns=base.mount_ns,
            hide=base.hide + tuple(str(h) for h in hide),
            probe=base.probe,
        )
        # One uid/gid per tenant (docs/strongbox.md, "Tenant uids"): the node's persistent
        # map, or a map of this process over the default range.
        self.ids = ids if ids is not None else TenantIds(None)
        self._degraded_noted = False
        self._on_event = on_event
        self._max_workers = workers
        self._max_runs = max_runs_per_worker
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._state = _PoolState()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> StrongboxSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Refuse new runs, wait for runs in flight, stop every worker. Idempotent."""
        with self._cond:
            self._closed = True
            while self._state.busy or self._state.starting:
                self._cond.wait()
            idle, self._state.idle = self._state.idle, []
        for w in idle:
            w.stop()

    @property
    def active_runs(self) -> int:
        with self._lock:
            return len(self._state.busy)

    def worker_pids(self, *, busy: bool | None = None) -> list[int]:
        """Process ids of the workers (all, or only busy / idle ones)."""
        with self._lock:
            ws = list(self._state.busy) if busy is not False else []
            if busy is not True:
                ws += self._state.idle
            return [w.pid for w in ws]

    def grant_access(self, path: Path, tenant: str | None = None) -> None:
        """Make ``path`` (a tenant data directory tree) owned by ``tenant``'s uid/gid (or, with
        no tenant, by the sandbox's ``uid``/``gid``), the top mode 0700.

        Only needed (and only done) when running as root; the runner calls it with the
        tenant's data root before each of its strongbox runs.
        """
        if os.geteuid() != 0:
            return
        uid, gid = (self.options.uid, self.options.gid) if tenant is None else self.ids_for(tenant)
        chown_tree(path, uid, gid)
        os.chmod(path, 0o700)

    def ids_for(self, tenant: str) -> tuple[int, int]:
        """The uid/gid ``tenant``'s workers run as (allocated on first use)."""
        return self.ids.ids_for(tenant)

    # -- pool --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _checkout(self, key: WorkerKey, interrupt: Interrupt | None = None) -> Iterator[Worker]:
        worker = self._acquire(key, interrupt)
        healthy = False
        try:
            yield worker
            healthy = not worker.dead
        finally:
            self._release(worker, healthy)

    def _acquire(self, key: WorkerKey, interrupt: Interrupt | None = None) -> Worker:
        retire: Worker | None = None
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxError("the sandbox is closed", code="SANDBOX_CLOSED")
                st = self._state
                for w in st.idle:
                    if w.key == key:
                        st.idle.remove(w)
                        st.busy.add(w)
                        return w
                total = len(st.idle) + len(st.busy) + st.starting
                if total < self._max_workers:
                    break
                if st.idle:  # an idle worker of another key makes room
                    retire = st.idle.pop(0)
                    break
                self._cond.wait()
            st.starting += 1
        if retire is not None:
            retire.stop()
        worker: Worker | None = None
        forget: Any = None
        try:
            uid, gid = self.ids_for(key.tenant)
            worker = Worker(key, dataclasses.replace(self.options, uid=uid, gid=gid))
            if interrupt is not None:  # the kill switch also stops a worker still starting
                forget = interrupt.on_trip(functools.partial(_doom, worker))
            worker.wait_ready()
        finally:
            if forget is not None:
                forget()
            with self._cond:
                st.starting -= 1
                if worker is not None and not worker.dead:
                    st.busy.add(worker)
                self._cond.notify_all()
        self._note_degraded(worker)
        return worker

    def _note_degraded(self, worker: Worker) -> None:
        """A layer the worker could not set up (no Landlock in this kernel, no mount
        namespace) is a warning, audited once per pool as ``strongbox_degraded``; the worker
        still runs behind its uid wall and the other layers (docs/strongbox.md)."""
        layers = worker.hello.get("layers")
        warnings = layers.get("warnings") if isinstance(layers, dict) else None
        if not warnings or not isinstance(warnings, list) or self._degraded_noted:
            return
        self._degraded_noted = True
        if self._on_event is not None:
            self._on_event(
                "strongbox_degraded",
                {
                    "tenant": worker.key.tenant,
                    "warnings": [_clean_text(str(w)) for w in warnings[:4]],
                    "layers": {k: v for k, v in worker.layers.items() if k != "mode"},
                },
            )

    def _release(self, worker: Worker, healthy: bool) -> None:
        worker.runs += 1
        recycle = not healthy or worker.runs >= self._max_runs
        with self._cond:
            self._state.busy.discard(worker)
            if not recycle and not self._closed:
                self._state.idle.append(worker)
            self._cond.notify_all()
        if recycle or self._closed:
            worker.stop()

    # -- running -----------------------------------------------------------------------

    def run(
        self, module_bytes: bytes, config: RunConfig, interrupt: Interrupt | None = None
    ) -> RunResult:
        """Run ``module_bytes`` in a confined worker; see :meth:`Sandbox.run`.

        A tripped ``interrupt`` (the kill switch) SIGKILLs the worker running this run (its
        output is lost with it) and the run reports the interrupt's code; the worker is
        replaced like any other dead worker."""
        from nightcore.sandbox.engine import _validate

        started = time.perf_counter()
        _validate(config)
        if len(module_bytes) > MAX_MODULE_BYTES:
            raise SandboxError("module too large for the strongbox", code="LIMIT_INVALID")
        if hashlib.sha256(module_bytes).hexdigest() != config.module_sha256.lower():
            raise SandboxError(
                "module bytes do not match config.module_sha256", code="DIGEST_MISMATCH"
            )
        try:
            with (
                self._net(config) as net,
                self._checkout(WorkerKey.of(config), interrupt) as worker,
            ):
                worker.net = net
                if interrupt is None:
                    result = self._run_on(worker, module_bytes, config)
                else:
                    result = self._run_interruptible(worker, module_bytes, config, interrupt)
                result.isolation = dict(worker.layers)
        except SandboxError as exc:
            # The kill switch stopped the worker while it was starting (see _acquire).
            if interrupt is None or not interrupt.code or exc.code != "WORKER_START_FAILED":
                raise
            result = RunResult.refused(interrupt.code, interrupt.detail)
        result.wall_ms = (time.perf_counter() - started) * 1000.0
        return result

    @contextlib.contextmanager
    def _net(self, config: RunConfig) -> Iterator[net_host.NetPerformer | None]:
        """The run's NET performer: the parent makes the worker's requests (the worker has no
        network) and audits them after the run, however it ended (docs/net.md)."""
        if config.net is None:
            yield None
            return
        # Each request's deadline comes from the worker's frame, bounded by the parent's
        # own deadline for the run (net_host.serve_frame).
        performer = net_host.NetPerformer(config.net, time.monotonic())
        try:
            yield performer
        finally:
            if self._on_event is not None:
                for name, data in performer.audit_events(config.run_id):
                    self._on_event(name, {"tenant": config.tenant, **data})

    def _receive(
        self, worker: Worker, limits: EffectiveLimits, seq: int, deadline: float
    ) -> tuple[dict[str, Any], bytes]:
        """The run's reply frame, serving the worker's ``net`` frames until it comes."""
        net = worker.net
        cap = limits.output_bytes
        if net is not None:
            cap = max(cap, net_host.frame_blob_cap(net.access))
        while True:
            header, blob = worker.receive(deadline, max_blob=cap)
            op = header.get("op")
            if op in ("compiling", "compiled") and header.get("seq") == seq:
                # The worker compiles a cache miss in-process: from its "compiling" frame the
                # run has compile_ms (COMPILE_LIMIT past it, or if the worker dies under its
                # RLIMIT_AS); from "compiled" on, its wall time (docs/limits.md).
                worker.phase = "compile" if op == "compiling" else ""
                budget = (
                    limits.compile_ms
                    if op == "compiling"
                    else limits.wall_ms + self.options.grace_ms
                )
                deadline = time.monotonic() + budget / 1000.0
                continue
            if op != "net":
                return header, blob
            if net is None:
                raise FrameError("a net frame from a run without NET")
            try:
                reply, body = net_host.serve_frame(net, header, blob, seq, deadline)
            except ValueError as exc:
                raise FrameError(str(exc)) from exc
            worker.send(reply, body)

    def _run_interruptible(
        self, worker: Worker, module_bytes: bytes, config: RunConfig, interrupt: Interrupt
    ) -> RunResult:
        """:meth:`_run_on`, with the worker SIGKILLed the moment ``interrupt`` trips."""
        if interrupt.code:  # tripped before the run was sent: never run it
            return RunResult.refused(interrupt.code, interrupt.detail)
        killed = threading.Event()

        def stop_worker() -> None:  # runs on the thread that trips the interrupt
            killed.set()
            with contextlib.suppress(ProcessLookupError, OSError):
                worker.proc.kill()

        remove = interrupt.on_trip(stop_worker)
        try:
            result = self._run_on(worker, module_bytes, config, interrupted=killed)
        finally:
            remove()
            if killed.is_set() and not worker.dead:
                worker.kill()  # killed after it replied: reap it; the pool replaces it
        if result.extra.get("interrupted"):
            return RunResult.refused(
                interrupt.code,
                interrupt.detail,
                extra={"worker_signal": result.extra.get("worker_signal") or "SIGKILL"},
            )
        return result

    def _run_on(
        self,
        worker: Worker,
        module_bytes: bytes,
        config: RunConfig,
        *,
        interrupted: threading.Event | None = None,
    ) -> RunResult:
        limits = config.limits
        deadline = time.monotonic() + (limits.wall_ms + self.options.grace_ms) / 1000.0
        worker.seq += 1
        seq = worker.seq
        worker.phase = ""
        try:
            worker.send({"op": "run", "seq": seq, "config": config_to_json(config)}, module_bytes)
            header, blob = self._receive(worker, limits, seq, deadline)
        except (FrameError, OSError) as exc:
            if interrupted is not None and interrupted.is_set():
                # The kill switch killed the worker (see _run_interruptible): not a crash.
                status = worker.kill()
                sig = -status if status < 0 else 0
                extra = {"interrupted": "1", "worker_signal": _signal_name(sig) if sig else ""}
                return RunResult.refused("", "", extra=extra)
            timed_out = isinstance(exc, FrameError) and exc.timeout
            eof = (isinstance(exc, FrameError) and exc.eof) or isinstance(exc, BrokenPipeError)
            if worker.phase == "compile" and (timed_out or eof):
                return self._compile_limit(config, worker, timed_out)
            if timed_out:
                status = worker.kill()
                return self._died(config, status, "TIMEOUT", watchdog=True)
            if eof:
                return self._died(config, worker.wait_dead(), "", watchdog=False)
            status = worker.kill()
            return self._died(config, status, "WORKER_REPLY_INVALID", watchdog=False, why=exc)
        if header.get("op") == "error":
            code, message = header.get("code"), header.get("message")
            if (
                set(header) == {"op", "code", "message", "seq"}
                and header["seq"] == seq
                and code in _CONFIG_ERROR_CODES
                and isinstance(message, str)
            ):
                raise SandboxError(_clean_text(message), code=str(code))
            status = worker.kill()
            why = _clean_text(f"{code}: {message}")
            return self._died(config, status, "WORKER_CRASHED", watchdog=False, why=why)
        try:
            return result_from_frame(header, blob, limits, seq)
        except ReplyInvalid as exc:
            status = worker.kill()
            return self._died(config, status, "WORKER_REPLY_INVALID", watchdog=False, why=exc)

    def _compile_limit(self, config: RunConfig, worker: Worker, timed_out: bool) -> RunResult:
        """A worker killed (or dead) while compiling: ``COMPILE_LIMIT``; it is replaced."""
        status = worker.kill() if timed_out else worker.wait_dead()
        sig = -status if status < 0 else 0
        extra = {"worker_status": str(status)}
        if sig:
            extra["worker_signal"] = _signal_name(sig)
        limits = config.limits
        detail = (
            f"compilation took more than compile_ms = {limits.compile_ms} ms: worker killed"
            if timed_out
            else f"the worker died while compiling "
            f"({_signal_name(sig) if sig else f'exit status {status}'}): "
            "over its address-space limit"
        )
        if self._on_event is not None:
            self._on_event(
                "strongbox_worker_died",
                {
                    "tenant": config.tenant,
                    "module_sha256": config.module_sha256,
                    "code": "COMPILE_LIMIT",
                    "status": status,
                },
            )
        return RunResult.refused("COMPILE_LIMIT", detail, extra=extra)

    def _died(
        self,
        config: RunConfig,
        status: int,
        code: str,
        *,
        watchdog: bool,
        why: object = "",
    ) -> RunResult:
        """The result of a run whose worker died (or was killed by us)."""
        sig = -status if status < 0 else 0
        extra: dict[str, str] = {"worker_status": str(status)}
        if sig:
            extra["worker_signal"] = _signal_name(sig)
        if watchdog:
            detail = f"wall-clock limit of {config.limits.wall_ms} ms reached: worker killed"
        elif code == "WORKER_REPLY_INVALID":
            detail = _clean_text(f"worker reply refused: {why}")
        elif code == "WORKER_CRASHED":
            detail = _clean_text(f"worker failed: {why}")
        elif sig == signal.SIGSYS:
            code, detail = "SECCOMP_VIOLATION", "worker killed by seccomp (forbidden system call)"
        elif sig in (signal.SIGKILL, signal.SIGXCPU):
            code, detail = "TIMEOUT", f"worker killed by {_signal_name(sig)}"
        else:
            code = "WORKER_CRASHED"
            detail = f"worker died ({_signal_name(sig) if sig else f'exit status {status}'})"
        if self._on_event is not None:
            self._on_event(
                "strongbox_worker_died",
                {
                    "tenant": config.tenant,
                    "module_sha256": config.module_sha256,
                    "code": code,
                    "status": status,
                },
            )
        return RunResult.refused(code, detail, extra=extra)


def _doom(worker: Worker) -> None:
    """The kill switch tripped while ``worker`` was starting for its run: kill it, and mark it
    dead so the pool never hands it out (it is reaped when released)."""
    worker.dead = True
    with contextlib.suppress(ProcessLookupError, OSError):
        worker.proc.kill()


__all__ = [
    "ALLOWED_SYSCALLS",
    "STRONGBOX_CODES",
    "StrongboxSandbox",
    "Worker",
    "WorkerKey",
    "WorkerOptions",
    "seccomp_available",
]
