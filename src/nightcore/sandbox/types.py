"""Values that cross the sandbox boundary: what to run, under which limits, and what happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class EffectiveLimits:
    """Limits after node policy: every field set."""

    fuel: int
    wall_ms: int
    memory_bytes: int
    stack_bytes: int
    output_bytes: int

    def to_dict(self) -> dict[str, int]:
        return {
            "fuel": self.fuel,
            "wall_ms": self.wall_ms,
            "memory_bytes": self.memory_bytes,
            "stack_bytes": self.stack_bytes,
            "output_bytes": self.output_bytes,
        }


@dataclass(frozen=True)
class Preopen:
    host_dir: Path  # absolute, already created, inside the tenant's data root
    guest_path: str  # relative name the guest sees, e.g. "data"
    writable: bool


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
