"""Writing a file so that readers see the old file or the new one, never a mix.

One implementation for every file Night Core replaces: trust and state files, checkpoints,
the compile cache, run outputs, the report. Dependency-free so every layer may use it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["atomic_write"]


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
