"""Compilation in a bounded place: a compile-only child process (``COMPILE_LIMIT``).

A module's compilation is not covered by its run's limits (fuel, wall time and memory start
when the guest does), and Cranelift's time and memory grow with the module: 300,000 empty
functions in 1.8 MB took 32 s and 1.9 GB in-process. So the in-process sandbox compiles
every module it does not have compiled (a cache miss) in a child process
(``python -I`` running :mod:`nightcore.sandbox.compile_child` from this process's own copy
of the package), never a fork of the node. Each compilation takes an idle child of its
sandbox's :class:`CompilePool` or starts one (a slow compilation never queues a
neighbour's); two idle children are kept for later misses:

1. the child imports Wasmtime, sets ``RLIMIT_CORE=0`` and says it is ready (its start-up is
   not counted against ``compile_ms``);
2. for each module the parent sets the child's soft ``RLIMIT_AS`` (``prlimit``) to what the
   child has mapped now plus ``compile_memory_bytes`` (and a ``RLIMIT_CPU`` backstop of
   ``compile_ms`` on one core, should the parent die), sends the module with its engine
   settings, and starts the clock: past ``compile_ms`` of wall time the child is killed
   (``COMPILE_LIMIT``; the next miss starts a new one); a child that dies (Rust aborts when an
   allocation fails under ``RLIMIT_AS``) is ``COMPILE_LIMIT`` too;
3. the child compiles with an Engine built exactly like the run's
   (:func:`nightcore.sandbox.engine._make_engine`, one per engine configuration) and answers
   with Wasmtime's serialized artifact (or the compile error: invalid WebAssembly stays
   ``COMPILE_ERROR``), which the parent deserializes into its own Engine and stores in the
   authenticated disk cache (:mod:`nightcore.sandbox.cache`). Later runs of the module load it
   from the memory or disk cache and pay nothing.

Requests on the child's stdin: ``>QQB`` (module length, ``stack_bytes``, deterministic) then
the module. Replies on its stdout: ``R`` once (ready), then per request ``O`` + 8-byte length
+ artifact, or ``E`` + 4-byte length + UTF-8 message. The artifact is native code the parent
will execute: it is trusted exactly as much as an in-process compile of the same module would
be (the child runs Night Core's code on the tenant's bytes, as the parent did before); the
child is a resource bound, not an isolation layer.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nightcore.fsio import wait_readable

# Time the child may take to start (import Wasmtime): generous, because a loaded node's
# interpreter start is slow, and not counted against compile_ms.
START_TIMEOUT_S = 60.0
CHILD_ENV = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}
REQUEST = struct.Struct(">QQB")
LEN8 = struct.Struct(">Q")
LEN4 = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding nightcore/


@dataclass(frozen=True)
class Compiled:
    """What a bounded compilation produced: ``ok`` (artifact), ``error`` (invalid module:
    ``COMPILE_ERROR``) or ``limit`` (``COMPILE_LIMIT``), with a one-line detail."""

    status: str
    artifact: bytes = b""
    detail: str = ""
    compile_ms: float = 0.0


class _Timeout(Exception):
    pass


def _read(fd: int, n: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    left = n
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Timeout
        ready = wait_readable([fd], remaining)
        if not ready:
            raise _Timeout
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _status_text(status: int) -> str:
    if status >= 0:
        return f"exit status {status}"
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _lower_soft_limit(pid: int, which: int, soft: int) -> None:
    """Set ``pid``'s soft limit to ``soft``, within the hard limit it inherited: a node
    started under a hard limit (``ulimit -v``, systemd ``LimitAS=``) cannot raise it without
    CAP_SYS_RESOURCE, and asking to failed every compile."""
    hard = resource.prlimit(pid, which)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.prlimit(pid, which, (soft, hard))


def _vm_size(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no VmSize in /proc/{pid}/status")


class CompileProcess:
    """The sandbox's compile-only child (started on first use, replaced after a limit).

    Thread-safe: compilations are serialised (a queued one's clock starts when it is sent).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False

    def _start(self) -> subprocess.Popen[bytes]:
        # -I (no environment, no user site, no cwd on the path), with this process's own copy
        # of nightcore first on the path: the child runs exactly the parent's code (a source
        # checkout, a test clone, an AUFS-updated runtime), so its artifacts fit our Engine.
        boot = (
            f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); "
            "from nightcore.sandbox.compile_child import main; main()"
        )
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", boot],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=dict(CHILD_ENV),
            close_fds=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            if _read(proc.stdout.fileno(), 1, time.monotonic() + START_TIMEOUT_S) != b"R":
                raise EOFError
        except (_Timeout, EOFError):
            status = self._kill(proc)
            raise OSError(f"the compile process did not start ({_status_text(status)})") from None
        return proc

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> int:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        status = proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return status

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._proc is not None:
                self._kill(self._proc)
                self._proc = None

    def kill(self) -> None:
        """SIGKILL the child now, even mid-compilation (that compilation then ends as a
        ``COMPILE_LIMIT``); the lock is not taken."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    @property
    def pid(self) -> int | None:
        """The child's process id (None before the first compilation or after a limit)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def compile(
        self,
        module_bytes: bytes,
        *,
        stack_bytes: int,
        deterministic: bool,
        compile_ms: int,
        compile_memory_bytes: int,
    ) -> Compiled:
        """Compile ``module_bytes`` bounded by ``compile_ms`` and ``compile_memory_bytes``.
        Raises ``OSError`` only when no child can be started."""
        with self._lock:
            if self._closed:
                raise OSError("the compile process is closed")
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            try:
                done = self._compile(
                    proc, module_bytes, stack_bytes, deterministic, compile_ms, compile_memory_bytes
                )
            except BaseException:
                self._kill(proc)
                self._proc = None
                raise
            if done.status == "limit":
                self._kill(proc)
                self._proc = None
            return done

    @staticmethod
    def _compile(
        proc: subprocess.Popen[bytes],
        module_bytes: bytes,
        stack_bytes: int,
        deterministic: bool,
        compile_ms: int,
        memory: int,
    ) -> Compiled:
        assert proc.stdin is not None and proc.stdout is not None
        out = proc.stdout.fileno()
        limit = _vm_size(proc.pid) + memory
        _lower_soft_limit(proc.pid, resource.RLIMIT_AS, limit)
        # CPU backstop (SIGXCPU) for a child whose parent is gone and so cannot kill it at
        # compile_ms: one core for compile_ms, plus a second of slack.
        cpu = math.ceil(_cpu_seconds(proc.pid) + compile_ms / 1000.0) + 1
        _lower_soft_limit(proc.pid, resource.RLIMIT_CPU, cpu)
        started = time.monotonic()
        deadline = started + compile_ms / 1000.0
        try:
            proc.stdin.write(
                REQUEST.pack(len(module_bytes), stack_bytes, int(deterministic)) + module_bytes
            )
            proc.stdin.flush()
            kind = _read(out, 1, deadline)
            if kind == b"O":
                (n,) = LEN8.unpack(_read(out, LEN8.size, deadline))
                if n > memory:
                    return Compiled("limit", detail="the compile process answered too much")
                artifact = _read(out, n, deadline)
                return Compiled("ok", artifact, compile_ms=(time.monotonic() - started) * 1000)
            if kind == b"E":
                (n,) = LEN4.unpack(_read(out, LEN4.size, deadline))
                message = _read(out, min(n, MAX_MESSAGE), deadline)
                return Compiled("error", detail=message.decode("utf-8", "replace"))
            raise EOFError
        except _Timeout:
            return Compiled(
                "limit", detail=f"compilation took more than compile_ms = {compile_ms} ms"
            )
        except (EOFError, BrokenPipeError):
            status = proc.wait()
            if status == -signal.SIGXCPU:
                why = f"compilation used more CPU than compile_ms = {compile_ms} ms"
            else:
                why = (
                    f"the compile process died ({_status_text(status)}) within "
                    f"compile_memory_bytes = {memory}"
                )
            return Compiled("limit", detail=why)


class CompilePool:
    """Compile processes for one sandbox: each compilation takes an idle one or starts one,
    so a neighbour's slow (bounded) compilation never queues another tenant's; at most
    ``keep`` idle processes are kept between misses."""

    def __init__(self, keep: int = 2) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._idle: list[CompileProcess] = []
        self._busy: set[CompileProcess] = set()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """Process ids of the idle compile processes."""
        with self._lock:
            return [pid for p in self._idle if (pid := p.pid) is not None]

    def compile(
        self,
        module_bytes: bytes,
        *,
        stack_bytes: int,
        deterministic: bool,
        compile_ms: int,
        compile_memory_bytes: int,
    ) -> Compiled:
        """See :meth:`CompileProcess.compile`."""
        with self._lock:
            if self._closed:
                raise OSError("the compile processes are closed")
            proc = self._idle.pop() if self._idle else CompileProcess()
            self._busy.add(proc)
        try:
            return proc.compile(
                module_bytes,
                stack_bytes=stack_bytes,
                deterministic=deterministic,
                compile_ms=compile_ms,
                compile_memory_bytes=compile_memory_bytes,
            )
        finally:
            with self._lock:
                self._busy.discard(proc)
                if self._closed or len(self._idle) >= self._keep:
                    proc.close()
                else:
                    self._idle.append(proc)

    def close(self) -> None:
        """Stop every compile process; compilations in progress end as ``COMPILE_LIMIT``."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for proc in busy:
            proc.kill()
        for proc in idle:
            proc.close()
