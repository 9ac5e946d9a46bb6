"""Resource bounds sampled while a run executes: the bytes and entries in its read-write
grants (``DISK_LIMIT``), the descriptors it holds (``FD_LIMIT``), and the node's own
descriptor reserve (docs/limits.md).

Why sampling: Wasmtime's WASI implementation (reached through wasmtime-py's C API) has no
per-write or per-open hook, no quota and no cap on a guest's descriptor table, and calling
the real ``path_open`` from a Python shadow fails (the C API looks for the *caller's* memory
export, which a host-to-host call does not have). So one :class:`ResourceMonitor` thread per
sandbox samples every registered run:

* descriptors: ``stat("/proc/self/fd").st_size`` is the process's open descriptor count on
  Linux >= 6.2 (a few microseconds; ``listdir`` otherwise). When the count moved by
  :data:`FD_RECHECK_STEP` or more since the last look, reached the node's danger mark, or
  :data:`FD_RECHECK_S` went by, the monitor attributes descriptors to runs: every entry of
  ``/proc/self/fd`` is read with ``readlinkat`` and counted for the run whose granted
  directories contain its target (a tenant can only open files under its own grants, and
  grants of different tenants never nest). A run holding more than ``open_files`` (plus one
  per grant: Wasmtime's own preopen descriptors) is stopped with ``FD_LIMIT``; when the whole
  process reached ``soft RLIMIT_NOFILE - reserve`` the run holding the most is stopped too.
* disk: each run's read-write grants are walked with a bounded, iterative,
  descriptor-relative scan (:func:`scan_grants`): the grant roots are opened once per run
  (``O_DIRECTORY | O_NOFOLLOW``), every directory below relative to its parent, never a path
  resolved again, never a link followed; the walk stops as soon as it has seen more than
  ``disk_files`` entries or ``disk_bytes`` bytes. A scan is repeated at most every
  ``max(interval, 4 x its own duration)``, so scanning costs a run at most about a fifth of
  one core even when its tree is at its limit.

A run over a bound is stopped through its :class:`~nightcore.sandbox.types.Interrupt`: the
watchdog ends it at the next epoch tick with the interrupt's code. How much a tenant can
overshoot between samples is written down in docs/limits.md.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nightcore.sandbox.types import EffectiveLimits, Interrupt, Preopen

PROC_FD = "/proc/self/fd"
# Directories below a grant the disk scan follows (the attestation walk's bound).
MAX_SCAN_DEPTH = 128
# The monitor attributes descriptors again when the process count moved this much ...
FD_RECHECK_STEP = 16
# ... or this long after the last attribution (a tenant opening while a neighbour closes).
FD_RECHECK_S = 0.25
# The node keeps soft limit / RESERVE_DIVISOR descriptors for itself, at least RESERVE_MIN.
RESERVE_MIN = 256
RESERVE_DIVISOR = 4
# A disk scan runs again at most every SCAN_COST_FACTOR x its own duration.
SCAN_COST_FACTOR = 4
# Samples failing in a row before the runs being sampled are stopped (fail closed).
MAX_SAMPLE_FAILURES = 5

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The tenant changed or removed an entry while the scan looked: skip it.
_RACED = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.EPERM})


# --------------------------------------------------------------------------------------
# The node's descriptors


_nofile_lock = threading.Lock()
_nofile: list[tuple[int, int]] = []  # the limits once raised (one element)


def raise_nofile() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (once per process); the limits."""
    with _nofile_lock:
        if not _nofile:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if hard != resource.RLIM_INFINITY and soft < hard:
                try:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                    soft = hard
                except (OSError, ValueError):
                    pass  # keep the soft limit; the reserve below is computed from it
            _nofile.append((soft, hard))
        return _nofile[0]


def node_reserve(soft: int) -> int:
    """Descriptors a node keeps for itself (audit log, index, sockets, neighbours' output):
    a quarter of the soft limit, at least RESERVE_MIN (but never more than half of a small
    limit, e.g. a strongbox worker's 128)."""
    return max(min(RESERVE_MIN, soft // 2), soft // RESERVE_DIVISOR)


def process_fd_count() -> int:
    """Open descriptors of this process."""
    n = os.stat(PROC_FD).st_size  # the count on Linux >= 6.2
    return n if n > 0 else len(os.listdir(PROC_FD))


def fd_targets() -> list[str] | None:
    """Where each descriptor of this process points (``readlinkat`` on ``/proc/self/fd``);
    None when the process may not read its own links (a strongbox worker after ``setuid`` is
    not dumpable, so ``/proc/self/fd`` is root's) or has no descriptor left to look."""
    out: list[str] = []
    try:
        dfd = os.open(PROC_FD, _DIR_FLAGS)
    except OSError as exc:
        if isinstance(exc, PermissionError) or exc.errno in (errno.EMFILE, errno.ENFILE):
            return None
        raise
    try:
        names = os.listdir(dfd)  # dups dfd
        for name in names:
            try:
                out.append(os.readlink(name, dir_fd=dfd))
            except PermissionError:
                return None
            except OSError:
                continue  # closed meanwhile
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return None
        raise
    finally:
        os.close(dfd)
    return out


# --------------------------------------------------------------------------------------
# The disk scan


@dataclass
class DiskUsage:
    bytes: int = 0
    entries: int = 0
    too_deep: bool = False

    def over(self, limits: EffectiveLimits) -> str:
        """Why this usage is over ``limits`` ("" when it is not)."""
        if self.too_deep:
            return f"a read-write grant is deeper than {MAX_SCAN_DEPTH} directories"
        if self.entries > limits.disk_files:
            return f"read-write grants hold more than {limits.disk_files} entries (disk_files)"
        if self.bytes > limits.disk_bytes:
            return f"read-write grants hold more than {limits.disk_bytes} bytes (disk_bytes)"
        return ""


def _scan_dir(fd: int, use: DiskUsage, max_entries: int, max_bytes: int) -> list[str] | None:
    """Count the entries of directory ``fd`` into ``use``; its sub-directories, or None once
    over a bound."""
    subdirs: list[str] = []
    with os.scandir(fd) as it:
        for entry in it:
            use.entries += 1
            if use.entries > max_entries:
                return None
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                if exc.errno in _RACED:
                    continue
                raise
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(entry.name)
            elif stat.S_ISREG(st.st_mode):
                use.bytes += st.st_size
                if use.bytes > max_bytes:
                    return None
    return subdirs


def scan_grants(roots: list[int], max_entries: int, max_bytes: int) -> DiskUsage:
    """Bytes (regular files' sizes) and entries under the grant directories open as ``roots``.

    Iterative and descriptor-relative (one descriptor per level of the current path); stops
    early once more than ``max_entries`` entries or ``max_bytes`` bytes were seen, or deeper
    than :data:`MAX_SCAN_DEPTH` directories. ``roots`` stay open.
    """
    use = DiskUsage()
    for root in roots:
        stack: list[tuple[int, list[str]]] = []
        fd = os.dup(root)
        try:
            while True:
                if fd >= 0:
                    subdirs = _scan_dir(fd, use, max_entries, max_bytes)
                    if subdirs is None:
                        return use
                    stack.append((fd, subdirs))
                    fd = -1
                if not stack:
                    break
                top, todo = stack[-1]
                if not todo:
                    stack.pop()
                    os.close(top)
                    continue
                name = todo.pop()
                if len(stack) > MAX_SCAN_DEPTH:
                    use.too_deep = True
                    return use
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=top)
                except OSError as exc:
                    if exc.errno not in _RACED:
                        raise
                    fd = -1
        finally:
            if fd >= 0:
                os.close(fd)
            for frame_fd, _ in stack:
                os.close(frame_fd)
    return use


# --------------------------------------------------------------------------------------
# Per-run state and the monitor


@dataclass(eq=False)
class RunUsage:
    """One registered run: its bounds, its grants, and what the monitor saw."""

    limits: EffectiveLimits
    interrupt: Interrupt
    prefixes: tuple[str, ...]  # every granted host directory (descriptor attribution)
    roots: list[int] = field(default_factory=list)  # read-write grants, open for the run
    baseline: int = 0  # the process's descriptors when the run registered
    fds: int = 0  # descriptors attributed at the last look
    peak_fds: int = 0
    disk: DiskUsage = field(default_factory=DiskUsage)
    next_scan: float = 0.0
    unlink: Callable[[], None] | None = None  # removes the link from a caller's interrupt

    @property
    def fd_allowance(self) -> int:
        return self.limits.open_files + len(self.prefixes)

    def owns(self, target: str) -> bool:
        return any(target == p or target.startswith(p + "/") for p in self.prefixes)

    def check_disk(self) -> str:
        """Scan the read-write grants now; why they are over the limits ("" if not)."""
        if not self.roots:
            return ""
        self.disk = scan_grants(self.roots, self.limits.disk_files, self.limits.disk_bytes)
        return self.disk.over(self.limits)

    def close(self) -> None:
        roots, self.roots = self.roots, []
        for fd in roots:
            os.close(fd)


def open_run(
    limits: EffectiveLimits, preopens: tuple[Preopen, ...], interrupt: Interrupt
) -> RunUsage:
    """The usage record of a run (opens its read-write grant roots; close it when done)."""
    # Canonical paths: /proc/self/fd links name the real path.
    use = RunUsage(limits, interrupt, tuple(os.path.realpath(p.host_dir) for p in preopens))
    use.baseline = process_fd_count()
    try:
        for p in preopens:
            if p.writable:
                use.roots.append(os.open(p.host_dir, _DIR_FLAGS))
    except BaseException:
        use.close()
        raise
    return use


def _fail_closed(runs: list[RunUsage], exc: BaseException) -> None:
    out_of_fds = isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)
    code = "FD_LIMIT" if out_of_fds else "DISK_LIMIT"
    text = " ".join(str(exc).split())[:160]
    for run in runs:
        run.interrupt.trip(
            code,
            f"the host could not measure the run's descriptors and grants: "
            f"{type(exc).__name__}: {text}",
            {"limit": "monitor"},
        )


class ResourceMonitor:
    """One daemon thread per sandbox sampling every registered run (see the module doc)."""

    def __init__(self, interval_ms: int) -> None:
        self._interval = max(1, interval_ms) / 1000.0
        self._runs: list[RunUsage] = []
        self._cond = threading.Condition()
        self._stopped = False
        soft, _hard = raise_nofile()
        self.soft_limit = soft
        self.danger = soft - node_reserve(soft)
        self._last_count = -1
        self._last_attribution = 0.0
        self.errors = 0  # samples that failed (counted; the run is then judged at its end)
        self._thread = threading.Thread(target=self._loop, name="nightcore-usage", daemon=True)
        self._thread.start()

    def register(self, run: RunUsage) -> None:
        # First looked at one interval from now: a run shorter than that costs the monitor
        # nothing but the check at its end (Sandbox._untrack).
        run.next_scan = time.monotonic() + self._interval
        with self._cond:
            self._runs.append(run)
            self._last_count = -1  # attribute at the next sample
            self._cond.notify_all()

    def unregister(self, run: RunUsage) -> None:
        with self._cond:
            if run in self._runs:
                self._runs.remove(run)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._runs and not self._stopped:
                    self._cond.wait()
                    self._cond.wait(self._interval)  # a new run's first look: one interval
                if self._stopped:
                    return
                runs = [r for r in self._runs if not r.interrupt.code]
            try:
                self.sample(runs)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - counted, and fails closed below
                self.errors += 1
                failures += 1
                if failures >= MAX_SAMPLE_FAILURES:
                    # Bounds that cannot be measured are not enforced: stop the runs.
                    _fail_closed(runs, exc)
            with self._cond:
                if self._stopped:
                    return
                self._cond.wait(self._interval)

    def sample(self, runs: list[RunUsage]) -> None:
        """One look at ``runs`` (the monitor thread; tests call it directly)."""
        now = time.monotonic()
        count = process_fd_count()
        with_grants = [r for r in runs if r.prefixes]
        if with_grants and (
            abs(count - self._last_count) >= FD_RECHECK_STEP
            or count >= self.danger
            or now - self._last_attribution >= FD_RECHECK_S
        ):
            self._attribute(with_grants, count)
            self._last_count = count
            self._last_attribution = now
        for run in runs:
            if run.roots and now >= run.next_scan and not run.interrupt.code:
                t0 = time.monotonic()
                why = run.check_disk()
                cost = time.monotonic() - t0
                run.next_scan = now + max(self._interval, SCAN_COST_FACTOR * cost)
                if why:
                    run.interrupt.trip("DISK_LIMIT", why, {"limit": "disk"})

    def _attribute(self, runs: list[RunUsage], count: int) -> None:
        held = dict.fromkeys(runs, 0)
        targets = fd_targets()
        if targets is None:
            # Links unreadable (a strongbox worker: one run at a time) or no descriptor left:
            # every descriptor opened since the run registered counts as its own.
            for run in runs:
                held[run] = max(0, count - run.baseline)
        else:
            for target in targets:
                for run in runs:
                    if run.owns(target):
                        held[run] += 1
                        break
        for run, n in held.items():
            run.fds = n
            run.peak_fds = max(run.peak_fds, n)
            if n > run.fd_allowance:
                run.interrupt.trip(
                    "FD_LIMIT",
                    f"the run held {n} descriptors, more than open_files = "
                    f"{run.limits.open_files} (plus {len(run.prefixes)} for its grants)",
                    {"limit": "open_files"},
                )
        if count >= self.danger:
            # The node's reserve is reached: stop the run holding the most, and every run
            # holding more than an equal share of what tenants may hold.
            top = max(runs, key=lambda r: held[r])
            share = max(1, self.danger // len(runs))
            for run in runs:
                if held[run] > 0 and (run is top or held[run] > share):
                    run.interrupt.trip(
                        "FD_LIMIT",
                        f"the node's descriptor reserve was reached ({count} open of "
                        f"{self.soft_limit}); this run held {held[run]}",
                        {"limit": "node_reserve"},
                    )
