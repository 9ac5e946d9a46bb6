"""Per-run limits enforced while the guest runs: the epoch ticker, the output cap and the
watchdog that stops a run at its wall-clock deadline or after it hit its output cap.

Output cap: stdout and stderr share one budget of ``output_bytes``. The WASI output
callbacks keep at most that many bytes in total and then return short writes (0 bytes
accepted), which the guest sees as ``EIO`` from ``fd_write``; at the next epoch tick the
watchdog stops the run with ``OUTPUT_LIMIT`` (see ``nightcore.sandbox.engine`` for how the
outcome codes combine). The per-store epoch-deadline callback is reached through the FFI
fence (:mod:`nightcore.sandbox.ffi`): without it a run is refused (``FFI_UNAVAILABLE``),
never run with a plain deadline that would drop the output stop.
"""

from __future__ import annotations

import itertools
import os
import stat
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import wasmtime

from nightcore.sandbox import ffi
from nightcore.sandbox.types import Interrupt


class Ticker:
    """One daemon thread that advances every engine's epoch every ``tick_ms``."""

    def __init__(self, tick_ms: int) -> None:
        self._interval = tick_ms / 1000.0
        self._stop = threading.Event()
        self.targets: tuple[wasmtime.Engine, ...] = ()  # replaced whole, never mutated
        self._thread = threading.Thread(target=self._loop, name="nightcore-epoch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            for engine in self.targets:
                engine.increment_epoch()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


# --------------------------------------------------------------------------------------
# Output capture


# A run gets its live view (``logs --follow``) once it has been going this long: most runs end
# sooner, and two files created and removed per run were ~15% of a tiny run's host work.
LIVE_AFTER_S = 0.05


class OutputSink:
    """stdout + stderr of one run, capped at ``cap`` bytes in total.

    With ``live`` (two paths), the run's output is also copied to those files for
    ``nightcore logs --follow`` once the run has lasted ``live_after_s``: at that moment (the
    first write or epoch tick after it) the files are created with what was captured so far,
    and later bytes are appended as they arrive. The in-memory capture stays the record (the
    run's output files and digests come from it); the live copy is a view, so a failed write
    to it stops the copy and nothing else.
    """

    def __init__(
        self,
        cap: int,
        live: tuple[Path, Path] | None = None,
        *,
        live_after_s: float = LIVE_AFTER_S,
    ) -> None:
        self._cap = cap
        self._used = 0
        self._lock = threading.Lock()
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.truncated = False
        self._live: dict[int, int] | None = None  # id(buffer) -> descriptor
        self._live_paths = live
        # When the live view is due (monotonic); None: not pending (none asked, open, ended).
        self._live_at: float | None = None
        if live is not None:
            self._live_at = time.monotonic() + live_after_s

    def tick(self) -> None:
        """At an epoch tick: open the live view if it is due (a run that writes nothing for a
        while still gets its files)."""
        if self._live_at is not None:
            with self._lock:
                self._go_live()

    def _go_live(self) -> None:
        """Create the live files with the output so far, if due (the lock is held)."""
        if self._live_at is None or self._live_paths is None or time.monotonic() < self._live_at:
            return
        self._live_at = None
        # O_NONBLOCK: a FIFO in a live file's place would block this open (and the guest's
        # write that triggered it) until the run's wall limit; non-blocking it fails (ENXIO)
        # or its writes do (EAGAIN), and the run goes on without a live view.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fds: dict[int, int] = {}
        try:
            out_path, err_path = self._live_paths
            os.makedirs(out_path.parent, mode=0o700, exist_ok=True)
            for buf, path in ((self.stdout, out_path), (self.stderr, err_path)):
                fds[id(buf)] = fd = os.open(path, flags, 0o600)
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(f"{path} is not a regular file")
                _write_all(fd, bytes(buf))
        except OSError:
            for fd in fds.values():
                os.close(fd)
            return
        self._live = fds

    def close_live(self) -> None:
        with self._lock:
            fds, self._live, self._live_at = self._live, None, None
        for fd in (fds or {}).values():
            os.close(fd)

    def _tee(self, buf: bytearray, data: bytes) -> None:
        if self._live_at is not None:
            self._go_live()  # writes the buffer, these bytes included
            return
        if self._live is None or not data:
            return
        try:
            _write_all(self._live[id(buf)], data)
        except OSError:
            # The live view only: the capture (the record) already holds these bytes.
            fds, self._live = self._live, None
            for fd in fds.values():
                os.close(fd)

    def _take(self, buf: bytearray, data: bytes) -> int:
        with self._lock:
            room = self._cap - self._used
            if len(data) <= room:
                buf += data
                self._used += len(data)
                self._tee(buf, data)
                return len(data)
            self.truncated = True
            if room <= 0:
                return 0  # short write: the guest's fd_write fails with EIO
            buf += data[:room]
            self._used += room
            self._tee(buf, data[:room])
            return room

    def write_stdout(self, data: bytes) -> int:
        return self._take(self.stdout, data)

    def write_stderr(self, data: bytes) -> int:
        return self._take(self.stderr, data)

    def attach(self, wasi: wasmtime.WasiConfig) -> list[threading.Event]:
        """Route the config's stdout/stderr here; returns events set once Wasmtime let go.

        Wasmtime drops the output streams (and calls back into Python to release the
        callbacks) on its own I/O threads, asynchronously, after the store is gone. A
        foreign thread that needs the GIL while the interpreter is finalising is killed
        with ``pthread_exit``, which cannot unwind through Rust frames: the process aborts
        (SIGABRT at exit). Waiting for these events before a run returns keeps every
        callback inside the run.
        """
        released: list[threading.Event] = []
        for stream, write in (("stdout", self.write_stdout), ("stderr", self.write_stderr)):
            callback = Writer(write)
            event = threading.Event()
            weakref.finalize(callback, event.set)
            released.append(event)
            if stream == "stdout":
                wasi.stdout_custom = callback
            else:
                wasi.stderr_custom = callback
            del callback  # only Wasmtime's handle table may keep it alive
        return released

    def snapshot(self) -> tuple[bytes, bytes, bool]:
        with self._lock:
            return bytes(self.stdout), bytes(self.stderr), self.truncated


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Writer:
    """An output callback object (a distinct object, so its release can be observed)."""

    __slots__ = ("__weakref__", "_write")

    def __init__(self, write: Callable[[bytes], int]) -> None:
        self._write = write

    def __call__(self, data: bytes) -> int:
        return self._write(data)


# --------------------------------------------------------------------------------------
# Watchdog: the per-store epoch-deadline callback


class Watchdog:
    """Decides, at every epoch tick of one run, whether that run must stop now.

    The store's deadline is one tick ahead and Wasmtime calls back when it is reached: the
    run stops with ``TIMEOUT`` after ``ticks`` ticks (the same ``ceil(wall_ms / tick_ms)``
    deadline a plain ``set_epoch_deadline(ticks)`` would give) or with ``OUTPUT_LIMIT`` at
    the first tick after the output cap was hit, so a tenant that ignores failed writes
    cannot keep burning CPU until its time runs out. A tripped :class:`Interrupt` (the kill
    switch) stops it at the next tick with the interrupt's own code, before any other reason.
    """

    __slots__ = ("interrupt", "reason", "sink", "ticks_left")

    def __init__(self, ticks: int, sink: OutputSink, interrupt: Interrupt | None = None) -> None:
        self.ticks_left = ticks
        self.sink = sink
        self.interrupt = interrupt
        self.reason = ""

    def on_tick(self) -> str:
        self.sink.tick()
        if self.interrupt is not None and self.interrupt.code:
            return self.interrupt.code
        if self.sink.truncated:
            return "OUTPUT_LIMIT"
        self.ticks_left -= 1
        return "TIMEOUT" if self.ticks_left <= 0 else ""


_WATCHDOGS: dict[int, Watchdog] = {}  # handle -> watchdog; single dict ops are GIL-atomic
_WATCHDOG_IDS = itertools.count(1)


def _decide(handle: int) -> str:
    """At a store's deadline: "" = one more tick, else the reason the run stops now."""
    dog = _WATCHDOGS.get(handle)
    if dog is None:
        return "TIMEOUT"  # fail closed: a store without its watchdog stops
    try:
        reason = dog.on_tick()
    except Exception:  # noqa: BLE001 - runs inside Wasmtime: stop the run instead of raising
        reason = "TIMEOUT"
    if reason:
        dog.reason = reason
    return reason


def _forget_watchdog(handle: int) -> None:
    _WATCHDOGS.pop(handle, None)


# Module-level so its C function pointers outlive every store that uses them.
_EPOCH_DEADLINE = ffi.EpochDeadline(_decide, _forget_watchdog)


def install_watchdog(
    store: wasmtime.Store, ticks: int, sink: OutputSink, interrupt: Interrupt | None = None
) -> Watchdog:
    """Arm the run's deadline; raises FFI_UNAVAILABLE rather than run without the watchdog."""
    dog = Watchdog(ticks, sink, interrupt)
    handle = next(_WATCHDOG_IDS)
    _WATCHDOGS[handle] = dog
    try:
        _EPOCH_DEADLINE.install(store, handle)
    except BaseException:
        _WATCHDOGS.pop(handle, None)
        raise
    store.set_epoch_deadline(1)
    return dog
