"""Files shared between processes: replacing one atomically, locking one, reading one safely.

:func:`atomic_write`: one implementation for every file Night Core replaces (trust and state
files, checkpoints, the compile cache, run outputs, the report), so readers see the old file
or the new one, never a mix.

:func:`file_lock` / :func:`hold_lock`: one implementation of the ``flock`` locks that serialise
writers across processes (the audit log, cordons, console tokens, AUFS). The lock belongs to
the open file description, so it is released when the descriptor is closed, also by a crash;
it is advisory: it orders Night Core's own writers.

:func:`open_regular` / :func:`read_regular_capped` / :func:`read_input`: one way to read a file
whose path comes from a user or from outside data (command-line arguments, workspace files,
repository metadata): a FIFO never blocks, a directory, device or socket is refused, and a
size cap bounds memory; :func:`read_input` turns the refusal into the caller's stable code.

Depends only on :mod:`nightcore.errors`, so every layer may use it.
"""

from __future__ import annotations

import fcntl
import os
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from nightcore.errors import NightCoreError

__all__ = [
    "atomic_write",
    "file_lock",
    "hold_lock",
    "open_regular",
    "read_input",
    "read_regular_capped",
    "wait_readable",
]


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


def _kind(mode: int) -> str:
    import stat

    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(
    path: Path | str, *, follow: bool = True, cap: int | None = None, buffering: int = -1
) -> BinaryIO:
    """``path`` opened for reading (binary), if it is a regular file; ``OSError`` otherwise.

    The open never blocks and never hands out an endless stream: it is non-blocking (a FIFO
    without a writer would wait forever), ``O_NOCTTY`` (a terminal never becomes ours), and
    a directory, FIFO, device or socket is refused (``EINVAL``, or ``EISDIR`` for a
    directory; a link to ``/dev/zero`` would otherwise be read forever) once opened, by
    ``fstat`` of the very descriptor that will be read. ``follow=False`` refuses a symbolic
    link (``ELOOP``). ``cap`` refuses a file whose size is above it (``EFBIG``); a reader that
    must also bound what it reads from a file that is still growing uses
    :func:`read_regular_capped`. For streaming readers (hashing, archives, logs).
    """
    import errno
    import stat

    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    fd = os.open(path, flags if follow else flags | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _kind(st.st_mode)
            number = errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL
            raise OSError(number, f"{kind}, not a regular file", str(path))
        if cap is not None and st.st_size > cap:
            raise OSError(errno.EFBIG, f"larger than {cap} bytes", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def read_regular_capped(path: Path | str, cap: int, *, follow: bool = True) -> bytes:
    """The bytes of the regular file ``path``, at most ``cap`` of them; ``OSError`` for a
    directory, device, FIFO or socket (see :func:`open_regular`: the open does not block on
    a FIFO, a link to ``/dev/zero`` is not read) and for a larger file (``EFBIG``), also one
    that grows past ``cap`` while it is read."""
    import errno

    with open_regular(path, follow=follow, cap=cap) as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise OSError(errno.EFBIG, f"larger than {cap} bytes", str(path))
    return data


def read_input(
    path: Path | str,
    cap: int,
    *,
    what: str,
    code: str,
    unreadable: str | None = None,
    too_large: str | None = None,
    error: type[NightCoreError] = NightCoreError,
    follow: bool = True,
    missing_ok: bool = False,
) -> bytes:
    """:func:`read_regular_capped` for a file named by a user or by outside data, refusing with
    the caller's error and a one-line message instead of an ``OSError``.

    A directory, FIFO, device or socket, or a link with ``follow=False``, raises
    ``error(code=code)`` ("<what> <path> is a FIFO, not a regular file"); a file above ``cap``
    bytes raises ``error(code=too_large or code)``; any other ``OSError`` (missing, no
    permission) raises ``error(code=unreadable or code)`` ("cannot read <what> <path>:
    <reason>"). ``missing_ok`` lets ``FileNotFoundError`` through unchanged, for callers to
    whom a missing file means "none yet".
    """
    import errno

    try:
        return read_regular_capped(path, cap, follow=follow)
    except FileNotFoundError:
        if missing_ok:
            raise
        raise error(f"cannot read {what} {path}: not found", code=unreadable or code) from None
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EISDIR, errno.EFBIG, errno.ELOOP, errno.ENXIO):
            if exc.errno == errno.ELOOP:
                reason = "a symbolic link, which is not followed here"
            elif exc.errno == errno.ENXIO:
                reason = "a socket or device, not a regular file"
            else:
                reason = exc.strerror or "not a regular file"
            big = exc.errno == errno.EFBIG and too_large is not None
            raise error(f"{what} {path} is {reason}", code=too_large if big else code) from None
        reason = exc.strerror or type(exc).__name__
        raise error(f"cannot read {what} {path}: {reason}", code=unreadable or code) from None
