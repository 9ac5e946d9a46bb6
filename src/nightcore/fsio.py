"""Files shared between processes: replacing one atomically, and locking one.

:func:`atomic_write`: one implementation for every file Night Core replaces (trust and state
files, checkpoints, the compile cache, run outputs, the report), so readers see the old file
or the new one, never a mix.

:func:`file_lock` / :func:`hold_lock`: one implementation of the ``flock`` locks that serialise
writers across processes (the audit log, cordons, console tokens, AUFS). The lock belongs to
the open file description, so it is released when the descriptor is closed, also by a crash;
it is advisory: it orders Night Core's own writers. Depends only on :mod:`nightcore.errors`,
so every layer may use it.
"""

from __future__ import annotations

import fcntl
import os
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nightcore.errors import NightCoreError

__all__ = ["atomic_write", "file_lock", "hold_lock", "read_regular_capped", "wait_readable"]


@contextmanager
def hold_lock(fd: int, *, busy: NightCoreError | None = None) -> Iterator[int]:
    """Hold an exclusive ``flock`` on the open descriptor ``fd``; unlock (not close) on exit.

    For a descriptor kept open across many short locked sections (the audit log's writer).
    ``busy=None`` waits for the lock; otherwise the lock is only tried, and ``busy`` (the
    caller's error, with its code) is raised if another holder has it.
    """
    if busy is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    else:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
    try:
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def file_lock(path: Path, *, busy: NightCoreError | None = None) -> Iterator[int]:
    """Open (creating it ``0600``) the lock file ``path`` and hold an exclusive ``flock`` on it
    for the ``with`` block; the descriptor is closed on exit, which releases the lock.

    ``busy=None`` blocks until the lock is free; otherwise the lock is only tried and ``busy``
    (a :class:`NightCoreError` with the caller's code, e.g. ``AUFS_BUSY``) is raised if it is
    held. The parent directory must exist (its mode is the caller's business).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with hold_lock(fd, busy=busy):
            yield fd
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same directory.

    The temporary file is created with ``O_EXCL | O_NOFOLLOW`` under a name unique to this
    process and thread, written in full, and renamed over ``path``; on any failure it is
    removed and ``path`` is left as it was. ``durable=True`` fsyncs the file before the rename
    and the directory after it; ``durable=False`` (derived or re-creatable files) still never
    leaves a torn file behind a crash of the process, only an absent or older one after a
    power loss. A missing parent directory is created.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, mode)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, mode)
    except FileExistsError:
        # Left by a killed process that had this pid and thread id: nobody else can own it.
        tmp.unlink()
        fd = os.open(tmp, flags, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def wait_readable(fds: list[int], timeout: float | None) -> list[int]:
    """The descriptors of ``fds`` that are readable (or closed) within ``timeout`` seconds.

    ``poll``, not ``select``: a resident node raises its descriptor limit, so descriptor
    numbers pass ``FD_SETSIZE`` (1024) and ``select`` would refuse them. ``None`` waits forever.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    ms = None if timeout is None else max(0, int(timeout * 1000) + 1)
    while True:
        try:
            events = poller.poll(ms)
        except InterruptedError:  # pragma: no cover - PEP 475 retries poll itself
            continue
        return [fd for fd, _ in events]


def read_regular_capped(path: Path, cap: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``cap`` of them; ``OSError`` for a
    directory, device or FIFO (a link to ``/dev/zero`` would otherwise be read forever; the
    open does not block on a FIFO) and for a larger file (``EFBIG``)."""
    import errno
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks: list[bytes] = []
        left = cap + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > cap:
        raise OSError(errno.EFBIG, f"larger than {cap} bytes", str(path))
    return data
