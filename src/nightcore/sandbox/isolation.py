"""Isolation between strongbox tenants (docs/strongbox.md, "Tenant uids" and "Layers").

* :class:`TenantIds`: one uid/gid per tenant, from the range ``[run] strongbox_uid_base`` /
  ``strongbox_uid_count`` of ``nightcore.toml``, allocated on a tenant's first confined run
  and kept in ``state/strongbox/ids.json`` (root only), so a tenant's data directories stay
  owned by the same id across runs and processes. A workspace-less caller gets a
  process-local map over the same range.
* :func:`harden_workspace`: ``state/`` and ``state/tenants/`` become ``0711`` (traversable,
  not listable) and every other entry directly under ``state/`` loses its group and other
  bits, so no tenant uid can read the audit log, the run outputs, the cache or another
  tenant's data; ``private/`` (keys) is ``0700`` already.
* :func:`private_mounts`: the worker's private mount namespace, with directories (the
  workspace's ``private/`` and ``state/``) covered by an empty read-only tmpfs, and the
  tenant's own granted directories bound back in place.
* :func:`observed_layers`: what the parent can see of a worker from outside
  (``/proc/<pid>/status`` and its namespace links), recorded in each run's attestation.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import pwd
import sys
import threading
from pathlib import Path
from typing import Any

from nightcore.errors import SandboxError
from nightcore.policy import DEFAULT_UID_BASE, DEFAULT_UID_COUNT
from nightcore.sandbox.landlock import open_dir_nofollow

IDS_FILE_VERSION = 1
MAX_IDS_FILE_BYTES = 16 * 1024 * 1024

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18


class TenantIds:
    """Tenant name -> (uid, gid), one id per tenant (uid == gid), never shared.

    ``path`` (``state/strongbox/ids.json``) keeps the map across processes (a lock file next
    to it serialises allocations); ``None`` keeps it in this process only. An id already used
    by an account of the system (``getpwuid``) is skipped."""

    def __init__(
        self,
        path: Path | None = None,
        base: int = DEFAULT_UID_BASE,
        count: int = DEFAULT_UID_COUNT,
    ) -> None:
        self.path, self.base, self.count = path, base, count
        self._lock = threading.Lock()
        self._known: dict[str, int] = {}

    def ids_for(self, tenant: str) -> tuple[int, int]:
        with self._lock:
            uid = self._known.get(tenant)
            if uid is None:
                uid = self._allocate(tenant)
                self._known[tenant] = uid
            return uid, uid

    def _in_range(self, uid: object) -> bool:
        return type(uid) is int and self.base <= uid < self.base + self.count

    def _allocate(self, tenant: str) -> int:
        if self.path is None:
            return self._pick(tenant, set(self._known.values()), {})
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        lock_fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            table = self._load()
            have = table.get(tenant)
            if have is not None and self._in_range(have):
                return have
            uid = self._pick(tenant, set(table.values()), table)
            table[tenant] = uid
            from nightcore.fsio import atomic_write

            doc = {"version": IDS_FILE_VERSION, "tenants": dict(sorted(table.items()))}
            atomic_write(self.path, json.dumps(doc, indent=1).encode(), 0o600)
            return uid
        finally:
            os.close(lock_fd)

    def _load(self) -> dict[str, int]:
        if self.path is None:
            return {}
        from nightcore.fsio import read_input

        try:
            # Regular, not a link, capped, non-blocking: the map is this node's own file.
            data = read_input(
                self.path,
                MAX_IDS_FILE_BYTES,
                what="the tenant uid map",
                code="UID_MAP_INVALID",
                error=SandboxError,
                follow=False,
                missing_ok=True,
            )
        except FileNotFoundError:
            return {}
        try:
            if len(data) > MAX_IDS_FILE_BYTES:
                raise ValueError("too large")
            doc = json.loads(data)
            tenants = doc["tenants"]
            if doc.get("version") != IDS_FILE_VERSION or not isinstance(tenants, dict):
                raise ValueError("unknown format")
            if not all(type(v) is int for v in tenants.values()):
                raise ValueError("ids must be integers")
            if len(set(tenants.values())) != len(tenants):
                raise ValueError("an id is given to two tenants")
        except (ValueError, KeyError, TypeError) as exc:
            raise SandboxError(
                f"tenant uid map {self.path} is malformed ({exc}): fix or remove it",
                code="UID_MAP_INVALID",
            ) from None
        return dict(tenants)

    def _pick(self, tenant: str, used: set[int], table: dict[str, int]) -> int:
        taken = {u for u in used if self._in_range(u)}
        for uid in range(self.base, self.base + self.count):
            if uid in taken:
                continue
            try:
                pwd.getpwuid(uid)
            except KeyError:
                return uid
        raise SandboxError(
            f"no free strongbox uid left for {tenant!r} in [{self.base}, "
            f"{self.base + self.count}) ({len(table)} tenants): raise [run] strongbox_uid_count",
            code="UID_RANGE_EXHAUSTED",
        )


def harden_workspace(state_dir: Path, tenants_dir: Path) -> None:
    """Modes that keep tenant uids out of the node's state (no-op unless root; see above).

    ``state_dir`` and ``tenants_dir`` become 0711; every other entry directly under
    ``state_dir`` drops its group/other bits (chmod only: owners keep their access)."""
    if os.geteuid() != 0:
        return
    tenants_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o711)  # noqa: S103 - traversable (tenant uids reach their own dir)
    os.chmod(tenants_dir, 0o711)  # noqa: S103 - ditto, never listable
    with os.scandir(state_dir) as it:
        for entry in it:
            if entry.name == tenants_dir.name or entry.is_symlink():
                continue
            st = entry.stat(follow_symlinks=False)
            if st.st_mode & 0o077 and (entry.is_dir() or entry.is_file()):
                os.chmod(entry.path, st.st_mode & 0o7700)


def seccomp_available() -> str:
    """Empty if strongbox can work here, else why not (for skips and ``doctor``)."""
    if sys.platform != "linux":
        return "strongbox needs Linux"
    try:
        status = Path("/proc/self/status").read_text()
    except OSError as exc:
        return f"cannot read /proc/self/status: {exc}"
    if "Seccomp:" not in status:
        return "the kernel has no seccomp support"
    try:
        import pyseccomp  # type: ignore[import-untyped]  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"pyseccomp/libseccomp unavailable: {exc}"
    return ""


def strongbox_unavailable() -> str:
    """Empty when confined runs work here, else why not (``STRONGBOX_UNAVAILABLE``)."""
    why = seccomp_available()
    if not why and os.geteuid() != 0:
        why = "strongbox workers need root (network namespace, per-tenant uid)"
    return why


# --------------------------------------------------------------------------------------
# The worker's private mount namespace


def _mount(
    libc: ctypes.CDLL,
    src: str | None,
    target: str,
    fstype: str | None,
    flags: int,
    data: str | None = None,
) -> None:
    rc = libc.mount(
        None if src is None else src.encode(),
        target.encode(),
        None if fstype is None else fstype.encode(),
        ctypes.c_ulong(flags),
        None if data is None else data.encode(),
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def private_mounts(hide: list[str], keep: list[str]) -> None:
    """Enter a private mount namespace (root, single-threaded): every directory of ``hide``
    is covered by an empty read-only tmpfs, then each directory of ``keep`` that lies under
    one of them is bound back at its own path. Mounts made here never reach the host."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    for top in hide:
        if not os.path.isdir(top):
            continue
        fds: list[int] = []
        inside: list[str] = []
        try:
            for k in keep:
                if k != top and not k.startswith(top.rstrip("/") + "/"):
                    continue
                try:  # never through a link a tenant put in place of its grant
                    fds.append(open_dir_nofollow(k))
                except OSError:
                    continue  # left covered: the run is refused PREOPEN_INVALID
                inside.append(k)
            flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
            _mount(libc, "nightcore-hidden", top, "tmpfs", flags, "size=64k,mode=0711")
            for k, fd in zip(inside, fds, strict=True):
                rel = os.path.relpath(k, top)
                target = top if rel == "." else os.path.join(top, rel)
                os.makedirs(target, mode=0o711, exist_ok=True)
                _mount(libc, f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
            _mount(libc, None, top, None, MS_REMOUNT | MS_RDONLY | flags)
        finally:
            for fd in fds:
                os.close(fd)


# --------------------------------------------------------------------------------------
# What the parent sees of a worker


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _ns(pid: int | str, kind: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return ""


def observed_layers(pid: int, reported: dict[str, Any]) -> dict[str, Any]:
    """The layers active in worker ``pid``, read from outside where the kernel shows them
    (seccomp mode, no_new_privs, uid/gid, network and mount namespaces) and taken from the
    worker's ready frame where it does not (the Landlock ABI it enforced)."""
    st = _status(pid)
    uids = st.get("Uid", "").split()
    gids = st.get("Gid", "").split()
    landlock = reported.get("landlock")
    return {
        "seccomp": st.get("Seccomp") == "2",
        "no_new_privs": st.get("NoNewPrivs") == "1",
        "uid": int(uids[0]) if uids and len(set(uids)) == 1 else None,
        "gid": int(gids[0]) if gids and len(set(gids)) == 1 else None,
        "landlock_abi": landlock if type(landlock) is int and 0 <= landlock < 1000 else 0,
        "netns": bool(_ns(pid, "net")) and _ns(pid, "net") != _ns("self", "net"),
        "mountns": bool(_ns(pid, "mnt")) and _ns(pid, "mnt") != _ns("self", "mnt"),
    }


IN_PROCESS = {"mode": "in-process"}


def describe(layers: dict[str, Any]) -> str:
    """One line for tables: ``strongbox (seccomp, nnp, uid 1500000003, landlock 7, ...)``."""
    if layers.get("mode") != "strongbox":
        return str(layers.get("mode") or "in-process")
    parts = []
    if layers.get("seccomp"):
        parts.append("seccomp")
    if layers.get("no_new_privs"):
        parts.append("no_new_privs")
    if layers.get("uid") is not None:
        parts.append(f"uid {layers['uid']}")
    if layers.get("landlock_abi"):
        parts.append(f"landlock ABI {layers['landlock_abi']}")
    for k in ("netns", "mountns"):
        if layers.get(k):
            parts.append(k)
    return f"strongbox ({', '.join(parts)})"


__all__ = [
    "IN_PROCESS",
    "TenantIds",
    "describe",
    "harden_workspace",
    "observed_layers",
    "private_mounts",
    "seccomp_available",
    "strongbox_unavailable",
]
