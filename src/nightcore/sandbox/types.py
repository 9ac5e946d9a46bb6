"""Values that cross the sandbox boundary: what to run, under which limits, and what happened."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EffectiveLimits:
    """Limits after node policy: every field set."""

    fuel: int
    wall_ms: int
    memory_bytes: int
    stack_bytes: int
    output_bytes: int
    # Resource bounds of issue 14 (docs/limits.md). Defaults: the node policy's defaults, so
    # a RunConfig built without them (tests, attestations recorded before they existed) still
    # runs bounded.
    disk_bytes: int = 64 * 1024 * 1024  # bytes in the tenant's read-write grants
    disk_files: int = 10_000  # entries (files, directories, links) in those grants
    open_files: int = 256  # descriptors the run may hold at once
    compile_ms: int = 10_000  # wall time of a compilation (cache misses only)
    compile_memory_bytes: int = 1024 * 1024 * 1024  # address space of the compile process

    def to_dict(self) -> dict[str, int]:
        return {
            "fuel": self.fuel,
            "wall_ms": self.wall_ms,
            "memory_bytes": self.memory_bytes,
            "stack_bytes": self.stack_bytes,
            "output_bytes": self.output_bytes,
            "disk_bytes": self.disk_bytes,
            "disk_files": self.disk_files,
            "open_files": self.open_files,
            "compile_ms": self.compile_ms,
            "compile_memory_bytes": self.compile_memory_bytes,
        }


@dataclass(frozen=True)
class Preopen:
    host_dir: Path  # absolute, already created, inside the tenant's data root
    guest_path: str  # relative name the guest sees, e.g. "data"
    writable: bool


@dataclass(frozen=True)
class NetAccess:
    """A run's NET capability (docs/net.md): the signed manifest's ``capabilities.net`` entries
    (already checked against node policy) and the node's per-run caps."""

    grants: tuple[str, ...]
    max_request_bytes: int
    max_response_bytes: int
    max_requests: int

    def to_dict(self) -> dict[str, object]:
        return {
            "grants": list(self.grants),
            "max_request_bytes": self.max_request_bytes,
            "max_response_bytes": self.max_response_bytes,
            "max_requests": self.max_requests,
        }


@dataclass(frozen=True)
class RunConfig:
    """Everything the sandbox needs for one run; built from the *signed* statement only."""

    tenant: str
    module_sha256: str
    entrypoint: str
    argv: tuple[str, ...]  # argv[0] is the tenant id
    env: tuple[tuple[str, str], ...]
    preopens: tuple[Preopen, ...]
    limits: EffectiveLimits
    deterministic: bool = False
    seed: int = 0
    # None: no NET capability (the `nightcore` host module is not even linked).
    net: NetAccess | None = None
    run_id: str = ""  # names the run in the sandbox's audit events (NET requests)
    # A directory where the in-process sandbox also writes the output as it comes
    # (``<run_id>.stdout``/``.stderr``, for ``logs --follow``); "" for none. Not sent to
    # strongbox workers: their output is seen when the run ends.
    live_dir: str = ""


class Interrupt:
    """One run's kill switch, tripped from another thread (docs/security.md, "Kill switch").

    :meth:`trip` is set-once: the first ``(code, detail, cause)`` wins. The in-process sandbox
    reads :attr:`code` at every epoch tick and stops the run with it; the strongbox parent kills
    the run's worker process from a callback registered with :meth:`on_trip`. ``cause`` says
    which change tripped it (recorded in the run's ``run_outcome`` line).
    """

    __slots__ = ("_callbacks", "_lock", "cause", "code", "detail")

    def __init__(self) -> None:
        self.code = ""
        self.detail = ""
        self.cause: dict[str, object] = {}
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def trip(self, code: str, detail: str, cause: dict[str, object] | None = None) -> bool:
        """Stop the run with ``code``; False when it was already tripped (nothing changes)."""
        with self._lock:
            if self.code:
                return False
            self.detail = detail
            self.cause = dict(cause or {})
            self.code = code  # last: a reader that sees the code sees its detail and cause
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()
        return True

    def on_trip(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when tripped (now, if it already was); returns its remover."""
        with self._lock:
            tripped = bool(self.code)
            if not tripped:
                self._callbacks.append(callback)
        if tripped:
            callback()

        def remove() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return remove


@dataclass
class RunResult:
    code: str  # OK, EXIT_NONZERO, FUEL_EXHAUSTED, TIMEOUT, MEMORY_LIMIT, STACK_OVERFLOW, ...
    exit_code: int | None
    fuel_used: int  # exact, or a lower bound when fuel_exact is False
    wall_ms: float
    memory_bytes: int  # peak linear memory reached
    stdout: bytes
    stderr: bytes
    output_truncated: bool = False
    detail: str = ""  # one-line trap / error message (untrusted: sanitise before display)
    cache: str = ""  # "hit", "miss", "rejected" (authentication failed, recompiled)
    extra: dict[str, str] = field(default_factory=dict)
    # False when ``fuel_used`` is only a lower bound: Wasmtime keeps a running function's
    # fuel counter in a register and writes it back to the store only at calls, returns,
    # ``unreachable`` and out-of-fuel checks, so a run stopped anywhere else (the epoch
    # deadline: TIMEOUT, the output-limit stop; most wasm traps) loses the fuel burnt since
    # the last write-back -- all of it for a loop without calls. See :attr:`fuel_reported`.
    fuel_exact: bool = True
    # The isolation the run had (docs/strongbox.md, "Layers"): {"mode": "strongbox",
    # "seccomp", "no_new_privs", "uid", "gid", "landlock_abi", "netns", "mountns"} from a
    # strongbox worker; empty in process (the runner records {"mode": "in-process"}).
    isolation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def refused(
        cls, code: str, detail: str, *, cache: str = "", extra: dict[str, str] | None = None
    ) -> RunResult:
        """A run that never executed guest code (compile/instantiate/config refusals)."""
        return cls(
            code=code,
            exit_code=None,
            fuel_used=0,
            wall_ms=0.0,
            memory_bytes=0,
            stdout=b"",
            stderr=b"",
            detail=detail,
            cache=cache,
            extra=extra or {},
        )

    @property
    def fuel_reported(self) -> int | None:
        """The fuel to record in the audit log and attestation: None when it is not known.

        Never a lower bound passed off as the amount used (a timed-out ``loop br 0`` would
        otherwise report 0).
        """
        return self.fuel_used if self.fuel_exact else None

    @property
    def output_bytes(self) -> int:
        return len(self.stdout) + len(self.stderr)
