"""The confined worker process of ``--strongbox`` (see :mod:`nightcore.sandbox.strongbox`).

Started by the parent as ``python -I -m nightcore.sandbox.strongbox_worker --in FD --out FD
...`` (never forked). Before it builds any Wasmtime Engine it locks itself down, in this
order:

1. ``stdin``/``stdout``/``stderr`` are ``/dev/null`` (the parent's choice); every other
   inherited descriptor except the two pipes is closed;
2. the environment is emptied (``GLIBC_TUNABLES=glibc.malloc.arena_max=1``, the only
   variable the parent passed, has already been read by glibc at start-up);
3. resource limits: ``RLIMIT_CORE=0``, ``RLIMIT_NOFILE``, ``RLIMIT_FSIZE``, ``RLIMIT_CPU``
   (a lifetime backstop) and ``RLIMIT_AS`` (what is mapped now + the run's memory limit
   twice + fixed headroom for the engine, compiler and threads);
4. ``unshare(CLONE_NEWNET)``: an empty network namespace (only a down loopback), done while
   the process still has one thread; as root also ``unshare(CLONE_NEWNS)``: a private mount
   namespace where ``--hide`` directories (the workspace's private/ and state/) are covered
   by an empty tmpfs and the granted directories bound back
   (:func:`nightcore.sandbox.isolation.private_mounts`);
5. when started as root: ``setgroups([])``, ``setresgid``, ``setresuid`` to the tenant's own
   ids the parent chose (capabilities are dropped with uid 0);
6. ``PR_SET_NO_NEW_PRIVS``, then Landlock (:mod:`nightcore.sandbox.landlock`): only the
   granted directories (``--grants``) and the worker's own /proc entry, before any thread;
7. ``import pyseccomp`` (it runs ``ldconfig -p`` at import, which needs ``execve``);
8. one in-process :class:`~nightcore.sandbox.engine.Sandbox` (memory cache only) whose
   single Engine has small memory reservations, and a warm-up run so Wasmtime's threads
   exist;
9. the seccomp allow-list (:data:`nightcore.sandbox.strongbox.ALLOWED_SYSCALLS`), loaded with
   ``TSYNC`` so every thread is filtered; default action ``KILL_PROCESS``.

Only then it tells the parent it is ready and reads requests (module bytes + config) from
its input pipe. It ends with ``os._exit`` (a normal interpreter exit can race Wasmtime's
threads).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import resource
import socket
import sys
from pathlib import Path
from typing import Any

import wasmtime

from nightcore.errors import NightCoreError
from nightcore.sandbox import engine as eng
from nightcore.sandbox import isolation, landlock
from nightcore.sandbox import net as net_host
from nightcore.sandbox import strongbox as sb
from nightcore.sandbox.cache import wasmtime_version
from nightcore.sandbox.types import EffectiveLimits, RunConfig, RunResult

PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNET = 0x40000000
WARMUP_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "ok\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


def _net_probe() -> str:
    """Try to reach the host's loopback; the errno name (or "connected")."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(("127.0.0.1", 9))
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "connected"


def _apply_small_reservations(cfg: Any, memory_bytes: int) -> None:
    cfg.memory_reservation = sb.memory_reservation(memory_bytes)
    cfg.memory_guard_size = sb.MEMORY_GUARD
    cfg.memory_reservation_for_growth = 0
    # memory_init_cow stays at Wasmtime's default (True), as in process: without it every
    # data segment's offset is evaluated at instantiation and charged as fuel, so a
    # deterministic run (whose clocks count fuel) would differ across modes and not replay
    # (docs/strongbox.md, "Fuel"). The memory image is a memfd (one per cached module,
    # bounded by RLIMIT_NOFILE); an image above RLIMIT_FSIZE ends that tenant's worker.


def _build_sandbox(args: argparse.Namespace) -> Any:
    """The in-process Sandbox with one Engine configured for this worker's key."""
    original = wasmtime.Config

    class _SmallConfig(original):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            _apply_small_reservations(self, args.memory_bytes)

    # Engine.__init__ reads ``wasmtime.Config`` at call time; the worker is single-threaded
    # here and builds its only Engine now (the parent only sends runs with this key).
    wasmtime.Config = _SmallConfig  # type: ignore[misc]
    try:
        # The worker is itself the bounded place of its compilations (RLIMIT_AS, the
        # parent's watchdog) and may not start processes: compile in-process.
        sandbox = eng.Sandbox(None, b"", tick_ms=args.tick_ms, bounded_compile=False)
        key = eng.EngineKey(args.stack_bytes, args.deterministic)
        entry = sandbox._acquire_engine(key)
        sandbox._release_engine(entry)
    finally:
        wasmtime.Config = original  # type: ignore[misc]
    module = bytes(wasmtime.wat2wasm(WARMUP_WAT))
    warm = RunConfig(
        tenant="strongbox-warmup",
        module_sha256=hashlib.sha256(module).hexdigest(),
        entrypoint="_start",
        argv=("strongbox-warmup",),
        env=(),
        preopens=(),
        limits=EffectiveLimits(
            fuel=1_000_000,
            wall_ms=5_000,
            memory_bytes=min(args.memory_bytes, 1 << 20) if args.memory_bytes >= 65536 else 65536,
            stack_bytes=args.stack_bytes,
            output_bytes=64,
        ),
        deterministic=args.deterministic,
    )
    result = sandbox.run(module, warm)
    if result.code != "OK":
        raise OSError(f"warm-up run failed: {result.code} {result.detail}")
    return sandbox


def _load_filter() -> None:
    import pyseccomp as seccomp  # type: ignore[import-untyped]

    flt = seccomp.SyscallFilter(seccomp.KILL_PROCESS)
    flt.set_attr(seccomp.Attr.CTL_TSYNC, 1)
    flt.set_attr(seccomp.Attr.CTL_NNP, 1)
    for name in sb.ALLOWED_SYSCALLS:
        flt.add_rule(seccomp.ALLOW, name)
    # Threads only: every thread-creating flag set, no namespace flag.
    flt.add_rule(
        seccomp.ALLOW,
        "clone",
        seccomp.Arg(0, seccomp.MASKED_EQ, sb.CLONE_CHECK_MASK, sb.CLONE_THREAD_FLAGS),
    )
    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    # Thread names only (Rust's thread builder); no PR_SET_DUMPABLE, PR_SET_SECCOMP, ...
    for option in (sb.PR_SET_NAME, sb.PR_GET_NAME):
        flt.add_rule(seccomp.ALLOW, "prctl", seccomp.Arg(0, seccomp.EQ, option))
    # abort() signals itself; other processes (e.g. workers with the same uid) are off-limits.
    flt.add_rule(seccomp.ALLOW, "tgkill", seccomp.Arg(0, seccomp.EQ, os.getpid()))
    flt.load()


def _lockdown(args: argparse.Namespace, keep: set[int]) -> dict[str, str]:
    """Steps 1-7 of the module docstring; returns probes for the selftest."""
    probes: dict[str, str] = {}
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    os.environ.clear()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, args.fsize))
    resource.setrlimit(resource.RLIMIT_CPU, (args.cpu_s, args.cpu_s + 5))
    as_bytes = _vm_size() + sb.as_headroom(args.memory_bytes, args.stack_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    probes["as_bytes"] = str(as_bytes)
    # pyseccomp runs `ldconfig -p` at import (needs execve), and the interpreter's files
    # may be unreadable to the unprivileged ids (e.g. a Python under /root): import it,
    # like every other module the worker uses, before dropping privileges.
    import pyseccomp  # noqa: F401

    wasmtime_version()  # imports importlib.metadata's lazy dependencies (email.*)
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
    grants: list[tuple[str, bool]] = [(str(p), bool(w)) for p, w in json.loads(args.grants)]
    args.layers = {"landlock": 0, "mountns": False, "warnings": []}
    if args.mount_ns and os.geteuid() == 0:
        # A private mount namespace, still single-threaded: the workspace's private/ and
        # state/ are covered by an empty tmpfs, the tenant's granted directories bound back.
        try:
            isolation.private_mounts(list(args.hide), [g for g, _w in grants])
            args.layers["mountns"] = True
        except OSError as exc:
            args.layers["warnings"].append(f"no mount namespace: {exc}")
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(args.gid, args.gid, args.gid)
        os.setresuid(args.uid, args.uid, args.uid)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if args.selftest:  # the network namespace alone (Landlock would refuse it too: EACCES)
        probes["net_before_filter"] = _net_probe()
    if args.landlock:
        # Before any thread exists (a Landlock domain covers the calling thread and the
        # threads it creates later): only the granted directories, and the worker's own
        # /proc entry read-only (its status, limits and descriptors).
        try:
            rules = [*grants, (f"/proc/{os.getpid()}", False)]
            args.layers["landlock"] = landlock.restrict(rules)
        except landlock.LandlockError as exc:
            args.layers["warnings"].append(f"no Landlock: {exc.strerror or exc}")

    return probes


def _read_text(path: str) -> str:
    # os.open/os.read only: Python's open() asks isatty() (ioctl), which the filter kills.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _selftest(probes: dict[str, str], args_probe: list[str]) -> dict[str, Any]:
    """Test-only (``--selftest``): what a tenant that escaped Wasmtime could see and do."""
    threads: list[dict[str, str]] = []
    for tid in sorted(os.listdir("/proc/self/task")):
        text = _read_text(f"/proc/self/task/{tid}/status")
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        threads.append(
            {
                "tid": tid,
                "name": fields.get("Name", "").strip(),
                "seccomp": fields.get("Seccomp", "").strip(),
                "no_new_privs": fields.get("NoNewPrivs", "").strip(),
            }
        )
    try:
        shadow = f"read {len(_read_text('/etc/shadow'))} chars"
    except OSError as exc:
        shadow = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    # What a tenant that escaped Wasmtime could reach (tests pass another tenant's data
    # directory, a key file, ...): each path listed or read, or the errno name.
    reach: dict[str, str] = {}
    for path in args_probe:
        try:
            reach[path] = f"listed {len(os.listdir(path))}"
        except NotADirectoryError:
            try:
                reach[path] = f"read {len(_read_text(path))} chars"
            except OSError as exc:
                reach[path] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        except OSError as exc:
            reach[path] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    report: dict[str, Any] = {
        "op": "selftest",
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "threads": threads,
        "shadow": shadow,
        "reach": reach,
        "environ": sorted(os.environ),
        "fds": sorted(int(n) for n in os.listdir("/proc/self/fd")),
        "limits": [
            " ".join(line.split())
            for line in _read_text("/proc/self/limits").splitlines()
            if line.startswith(("Max address space", "Max core", "Max open", "Max file size"))
        ],
        **probes,
    }
    return report


def _selftest_request(header: dict[str, Any], out_fd: int) -> bool:
    """Test-only (``--selftest``): misbehave as a compromised worker would."""
    config = header.get("config")
    action = config.get("entrypoint") if isinstance(config, dict) else None
    if action == sb.SELFTEST_EXECVE:  # must be killed by seccomp (SIGSYS)
        os.execv("/bin/sh", ["/bin/sh", "-c", "true"])  # noqa: S606 - the point of the test
    elif action == sb.SELFTEST_SOCKET:  # must be killed by seccomp (SIGSYS)
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    elif action == sb.SELFTEST_GARBAGE:
        os.write(out_fd, sb.FRAME.pack(9, 0) + b"not json!")
    elif action == sb.SELFTEST_OVERSIZED:
        os.write(out_fd, sb.FRAME.pack(sb.MAX_REPLY_JSON + 1, 1 << 30))
    elif action == sb.SELFTEST_LIES:  # well-formed, but claims more than the limits allow
        sb.write_frame(
            out_fd,
            {
                "op": "result",
                "code": "OK",
                "exit_code": 0,
                "fuel_used": 10**30,
                "fuel_exact": True,
                "memory_bytes": 10**30,
                "stdout_len": 3,
                "stderr_len": 0,
                "output_truncated": False,
                "detail": "line one\nforged line\x1b[2J",
                "cache": "hit",
                "extra": {},
                "seq": header.get("seq"),
            },
            b"abc",
        )
    elif action == sb.SELFTEST_ABORT:
        os.abort()
    else:
        return False
    return True


class _ParentTransport:
    """NET in a worker (docs/net.md): the worker has no network, so each guest call goes to
    the parent as a ``net`` frame and the parent's ``net_reply`` is the answer."""

    def __init__(self, in_fd: int, out_fd: int, seq: Any, access: Any, deadline: float) -> None:
        self.in_fd, self.out_fd, self.seq, self.access = in_fd, out_fd, seq, access
        self.deadline = deadline

    @property
    def body_cap(self) -> int:
        return int(self.access.max_request_bytes)

    def request(
        self,
        method: bytes,
        url: bytes,
        body: bytes,
        resp_cap: int,
        fault: str = "",
        body_len: int | None = None,
    ) -> net_host.Outcome:
        size = len(body) if body_len is None else body_len
        header, blob = net_host.request_frame(
            self.seq, method, url, body, size, resp_cap, fault, self.deadline
        )
        sb.write_frame(self.out_fd, header, blob)
        reply, data = sb.read_frame(self.in_fd, max_json=sb.MAX_REPLY_JSON, max_blob=resp_cap)
        err, status = reply.get("err"), reply.get("status")
        if (
            reply.get("op") != "net_reply"
            or reply.get("seq") != self.seq
            or not isinstance(err, int)
            or not isinstance(status, int)
        ):
            return net_host.Outcome(net_host.NC_EIO)
        return net_host.Outcome(err, status, data)


def _serve(sandbox: Any, args: argparse.Namespace) -> None:
    while True:
        try:
            header, blob = sb.read_frame(
                args.in_fd, max_json=sb.MAX_REQUEST_JSON, max_blob=sb.MAX_MODULE_BYTES
            )
        except sb.FrameError:
            return  # the parent closed the pipe or spoke nonsense: end
        op = header.get("op")
        if op == "exit":
            return
        if op != "run":
            sb.write_frame(args.out_fd, {"op": "error", "code": "BAD_REQUEST", "message": "op"})
            continue
        if args.selftest and _selftest_request(header, args.out_fd):
            continue
        seq = header.get("seq")
        try:
            config = sb.config_from_json(header.get("config"))
            key = (config.limits.stack_bytes, config.deterministic, config.limits.memory_bytes)
            if key != (args.stack_bytes, args.deterministic, args.memory_bytes) or (
                config.tenant != args.tenant
            ):
                raise NightCoreError("run does not match this worker", code="WORKER_KEY_MISMATCH")
            for p in config.preopens:
                try:
                    os.stat(p.host_dir)
                except OSError as exc:
                    raise NightCoreError(
                        f"preopen {str(p.host_dir)!r} is not accessible to the strongbox "
                        f"worker (uid {os.getuid()}): {exc.strerror}",
                        code="PREOPEN_INVALID",
                    ) from exc
            net_host.remote_transport = lambda cfg, deadline, seq=seq: _ParentTransport(
                args.in_fd, args.out_fd, seq, cfg.net, deadline
            )
            sandbox.on_compile = lambda op, seq=seq: sb.write_frame(
                args.out_fd, {"op": op, "seq": seq}
            )
            result: RunResult = sandbox.run(blob, config)
        except NightCoreError as exc:
            reply = {"op": "error", "code": exc.code, "message": exc.message, "seq": seq}
            sb.write_frame(args.out_fd, reply)
            continue
        except Exception as exc:  # noqa: BLE001 - reported, the parent decides
            msg = f"{type(exc).__name__}: {exc}"
            reply = {"op": "error", "code": "WORKER_ERROR", "message": msg, "seq": seq}
            sb.write_frame(args.out_fd, reply)
            continue
        header, blob = sb.result_to_frame(result)
        header["seq"] = seq
        sb.write_frame(args.out_fd, header, blob)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="nightcore.sandbox.strongbox_worker")
    p.add_argument("--in", dest="in_fd", type=int, required=True)
    p.add_argument("--out", dest="out_fd", type=int, required=True)
    p.add_argument("--uid", type=int, default=65534)
    p.add_argument("--gid", type=int, default=65534)
    p.add_argument("--tenant", required=True)
    p.add_argument("--stack-bytes", type=int, required=True)
    p.add_argument("--deterministic", type=int, choices=(0, 1), default=0)
    p.add_argument("--memory-bytes", type=int, required=True)
    p.add_argument("--tick-ms", type=int, default=10)
    p.add_argument("--nofile", type=int, default=128)
    p.add_argument("--fsize", type=int, default=64 << 20)
    p.add_argument("--cpu-s", type=int, default=3600)
    p.add_argument("--grants", default="[]", help="JSON [[dir, writable], ...] (Landlock)")
    p.add_argument("--hide", action="append", default=[], help="covered in the mount ns")
    p.add_argument("--no-landlock", dest="landlock", action="store_false")
    p.add_argument("--no-mountns", dest="mount_ns", action="store_false")
    p.add_argument("--probe", action="append", default=[], help="selftest: paths to try")
    p.add_argument("--selftest", action="store_true")
    p.add_argument("--no-filter", action="store_true", help="tracing only (strace -f)")
    args = p.parse_args(argv)
    args.deterministic = bool(args.deterministic)
    status = 0
    try:
        probes = _lockdown(args, {args.in_fd, args.out_fd})
        sandbox = _build_sandbox(args)
        if args.no_filter:
            os.getppid()  # marker for the strace log: the filter would be loaded here
        else:
            _load_filter()
        if args.selftest:
            sb.write_frame(args.out_fd, {**_selftest(probes, args.probe), "layers": args.layers})
        else:
            sb.write_frame(args.out_fd, {"op": "ready", "layers": args.layers})
        _serve(sandbox, args)
    except BaseException as exc:  # noqa: BLE001 - a worker never unwinds into the interpreter
        status = 3
        with contextlib.suppress(Exception):
            msg = f"{type(exc).__name__}: {exc}"
            sb.write_frame(args.out_fd, {"op": "error", "code": "WORKER_START", "message": msg})
    sys.stdout.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
