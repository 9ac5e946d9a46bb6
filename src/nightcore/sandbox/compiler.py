"""Compilation in a bounded place: a compile-only child process (``COMPILE_LIMIT``).

A module's compilation is not covered by its run's limits (fuel, wall time and memory start
when the guest does), and Cranelift's time and memory grow with the module: 300,000 empty
functions in 1.8 MB took 32 s and 1.9 GB in-process. So the in-process sandbox compiles
every module it does not have compiled (a cache miss) in a child process
(``python -I -m nightcore.sandbox.compile_child``), never a fork of the node:

1. the child imports Wasmtime, builds an Engine with exactly the run's engine settings
   (:func:`nightcore.sandbox.engine._make_engine`), then sets ``RLIMIT_AS`` to what it has
   mapped plus ``compile_memory_bytes``, ``RLIMIT_CPU`` as a backstop and ``RLIMIT_CORE=0``,
   and says it is ready (its start-up is not counted against ``compile_ms``);
2. the parent sends the module and starts the clock: past ``compile_ms`` of wall time the
   child is killed; a child that dies (Rust aborts when an allocation fails under
   ``RLIMIT_AS``) or is killed by ``SIGXCPU`` is a ``COMPILE_LIMIT`` too;
3. the child answers with Wasmtime's serialized artifact (or the compile error: invalid
   WebAssembly stays ``COMPILE_ERROR``), which the parent deserializes into its own Engine
   and stores in the authenticated disk cache (:mod:`nightcore.sandbox.cache`). Later runs
   of the module load it from the memory or disk cache and pay nothing.

Frames on the child's stdout: ``R`` (ready), then ``O`` + 8-byte length + artifact, or ``E``
+ 4-byte length + UTF-8 message. The artifact is native code the parent will execute: it
is trusted exactly as much as an in-process compile of the same module would be (the child
runs Night Core's code on the tenant's bytes, as the parent did before); the child is a
resource bound, not an isolation layer.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

# Time the child may take to start (import Wasmtime, build its Engine): generous, because a
# loaded node's interpreter start is slow, and not counted against compile_ms.
START_TIMEOUT_S = 60.0
CHILD_ENV = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}
LEN8 = struct.Struct(">Q")
LEN4 = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024


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
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            raise _Timeout
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _signal_name(status: int) -> str:
    if status >= 0:
        return f"exit status {status}"
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"


def compile_bounded(
    module_bytes: bytes,
    *,
    stack_bytes: int,
    deterministic: bool,
    compile_ms: int,
    compile_memory_bytes: int,
) -> Compiled:
    """Compile ``module_bytes`` in a child bounded by ``compile_ms`` and
    ``compile_memory_bytes``. Raises ``OSError`` only when the child cannot be started."""
    cpu_s = max(1, math.ceil(compile_ms / 1000)) * max(1, os.cpu_count() or 1) + 1
    argv = [
        sys.executable,
        "-I",
        "-m",
        "nightcore.sandbox.compile_child",
        "--stack-bytes",
        str(stack_bytes),
        "--deterministic",
        str(int(deterministic)),
        "--memory-bytes",
        str(compile_memory_bytes),
        "--cpu-s",
        str(cpu_s),
    ]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(CHILD_ENV),
        close_fds=True,
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    out = proc.stdout.fileno()
    started = 0.0
    try:
        try:
            if _read(out, 1, time.monotonic() + START_TIMEOUT_S) != b"R":
                raise EOFError
        except (_Timeout, EOFError):
            proc.kill()
            status = proc.wait()
            raise OSError(f"the compile process did not start ({_signal_name(status)})") from None
        started = time.monotonic()
        deadline = started + compile_ms / 1000.0
        try:
            proc.stdin.write(LEN8.pack(len(module_bytes)) + module_bytes)
            proc.stdin.close()
            kind = _read(out, 1, deadline)
            if kind == b"O":
                (n,) = LEN8.unpack(_read(out, LEN8.size, deadline))
                if n > compile_memory_bytes:
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
                why = f"compilation used more CPU than compile_ms = {compile_ms} ms allows"
            else:
                why = (
                    f"the compile process died ({_signal_name(status)}) within "
                    f"compile_memory_bytes = {compile_memory_bytes}"
                )
            return Compiled("limit", detail=why)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
