"""Landlock (Linux >= 5.13) through raw system calls: restrict this thread (and every thread
it creates afterwards) to a few directory trees.

Used by the strongbox worker (docs/strongbox.md, "Layers"): after the uid drop and
``PR_SET_NO_NEW_PRIVS`` and *before* Wasmtime starts any thread (a Landlock domain applies
to the calling thread and its future children only), the worker allows its tenant's granted
directories (read-write or read-only, as granted) and nothing else: no other tenant's data,
no ``state/``, no key file, whatever the uids and modes say. From ABI 4 on, TCP ``bind`` and
``connect`` are handled too (no rule: refused); from ABI 6, signals to and abstract Unix
sockets of processes outside the domain.

No third-party package: ``ctypes`` and ``syscall(2)``. The system call numbers are the same
on every architecture Night Core runs on (x86_64, aarch64: 444-446).
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

SYS_CREATE_RULESET = 444
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1

# Filesystem access rights (include/uapi/linux/landlock.h) and the ABI that added each.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FS_BY_ABI = {1: (1 << 13) - 1, 2: REFER, 3: TRUNCATE, 5: IOCTL_DEV}

READ_ONLY = READ_FILE | READ_DIR
READ_WRITE = (
    READ_ONLY
    | WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SYM
    | REFER
    | TRUNCATE
)


class LandlockError(OSError):
    """A Landlock call failed (errno and the call in the message)."""


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled (not Linux,
    kernel too old, ``lsm=`` without landlock)."""
    if sys.platform != "linux":
        return 0
    libc = _libc()
    rc = libc.syscall(
        ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(1)
    )
    return int(rc) if rc > 0 else 0


def handled_fs(abi: int) -> int:
    """Every filesystem right the kernel's ABI knows (all of them are denied unless a rule
    allows them)."""
    mask = 0
    for level, bits in _FS_BY_ABI.items():
        if abi >= level:
            mask |= bits
    return mask


def _ruleset_attr(abi: int) -> bytes:
    fs = handled_fs(abi)
    if abi >= 6:
        net = NET_BIND_TCP | NET_CONNECT_TCP
        return struct.pack("=QQQ", fs, net, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
    if abi >= 4:
        return struct.pack("=QQ", fs, NET_BIND_TCP | NET_CONNECT_TCP)
    return struct.pack("=Q", fs)


def open_dir_nofollow(path: Path | str) -> int:
    """An ``O_PATH`` descriptor of the directory ``path`` (absolute, already resolved), opened
    one component at a time with ``O_NOFOLLOW``: a symbolic link anywhere on the way (a tenant
    that swapped its granted directory for a link to someone else's) fails instead of being
    followed."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    parts = Path(path).parts
    if not parts or parts[0] != "/":
        raise OSError(22, f"not an absolute path: {path}")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[1:]:
            child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _call(libc: ctypes.CDLL, what: str, *args: object) -> int:
    rc = int(libc.syscall(*args))
    if rc < 0:
        err = ctypes.get_errno()
        raise LandlockError(err, f"{what}: {os.strerror(err)}")
    return rc


def restrict(rules: Iterable[tuple[Path | str, bool]], abi: int | None = None) -> int:
    """Restrict the calling thread (and the threads it creates later) to ``rules``: pairs of
    (directory, writable). A directory that cannot be opened is left out (so it is not
    reachable). Needs ``PR_SET_NO_NEW_PRIVS`` (or ``CAP_SYS_ADMIN``). Returns the ABI version
    enforced; raises :class:`LandlockError` when Landlock is unavailable or a call fails."""
    version = abi_version() if abi is None else abi
    if version <= 0:
        raise LandlockError(0, "Landlock is not available in this kernel")
    libc = _libc()
    handled = handled_fs(version)
    attr = _ruleset_attr(version)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _call(
        libc,
        "landlock_create_ruleset",
        ctypes.c_long(SYS_CREATE_RULESET),
        buf,
        ctypes.c_size_t(len(attr)),
        ctypes.c_uint32(0),
    )
    try:
        for path, writable in rules:
            try:
                fd = open_dir_nofollow(path)
            except OSError:
                continue  # never reachable then (the run itself is refused later)
            try:
                allowed = (READ_WRITE if writable else READ_ONLY) & handled
                rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
                _call(
                    libc,
                    "landlock_add_rule",
                    ctypes.c_long(SYS_ADD_RULE),
                    ctypes.c_int(ruleset),
                    ctypes.c_int(RULE_PATH_BENEATH),
                    rule,
                    ctypes.c_uint32(0),
                )
            finally:
                os.close(fd)
        _call(
            libc,
            "landlock_restrict_self",
            ctypes.c_long(SYS_RESTRICT_SELF),
            ctypes.c_int(ruleset),
            ctypes.c_uint32(0),
        )
    finally:
        os.close(ruleset)
    return version


__all__ = ["LandlockError", "abi_version", "handled_fs", "open_dir_nofollow", "restrict"]
