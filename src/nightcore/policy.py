"""Node policy: what a node allows at all, and the limits it imposes.

Pure values. Verification (:func:`nightcore.module.verify.decide`) checks each manifest against
a :class:`Policy`; node policy can only narrow what a signed manifest asks for. The policy is
read from ``nightcore.toml`` by :mod:`nightcore.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nightcore.module.netpolicy import NetPolicy
from nightcore.sandbox.types import EffectiveLimits

__all__ = ["DEFAULT_LIMITS", "DEFAULT_MAX", "Policy", "parse_dev_limits"]

ISOLATION_MODES = ("in-process", "strongbox")
# The uid/gid range of strongbox tenants ([run] strongbox_uid_base / strongbox_uid_count):
# one id per tenant, allocated on first use and kept (docs/strongbox.md, "Tenant uids").
DEFAULT_UID_BASE = 1_500_000_000
DEFAULT_UID_COUNT = 65_536

DEFAULT_MAX = EffectiveLimits(
    fuel=1_000_000_000_000,
    wall_ms=10_000,
    memory_bytes=256 * 1024 * 1024,
    stack_bytes=1024 * 1024,
    output_bytes=1024 * 1024,
    disk_bytes=1024 * 1024 * 1024,
    disk_files=100_000,
    open_files=4096,
    compile_ms=60_000,
    compile_memory_bytes=4 * 1024 * 1024 * 1024,
)
DEFAULT_LIMITS = EffectiveLimits(
    fuel=100_000_000,
    wall_ms=2_000,
    memory_bytes=32 * 1024 * 1024,
    stack_bytes=512 * 1024,
    output_bytes=64 * 1024,
    disk_bytes=64 * 1024 * 1024,
    disk_files=10_000,
    open_files=256,
    compile_ms=10_000,
    compile_memory_bytes=1024 * 1024 * 1024,
)


@dataclass(frozen=True)
class Policy:
    fips: bool = False
    allow_fs: bool = True
    allow_fs_rw: bool = True
    allow_env: bool = True
    allow_net: bool = False
    net: NetPolicy = field(default_factory=NetPolicy)  # [policy.net]: destinations, caps
    allow_deterministic: bool = True
    # Development mode: `nightcore run --dev-limits` may override a manifest's signed limits
    # (still capped by max_limits; every override audited). Never on in production policy.
    development: bool = False
    # Isolation (docs/strongbox.md, "Policy"): "strongbox" confines every tenant;
    # strongbox_tenants (globs) confines those tenants whatever isolation says.
    isolation: str = "in-process"
    strongbox_tenants: tuple[str, ...] = ()
    max_limits: EffectiveLimits = DEFAULT_MAX
    default_limits: EffectiveLimits = DEFAULT_LIMITS

    def to_dict(self) -> dict[str, Any]:
        return {
            "fips": self.fips,
            "allow_fs": self.allow_fs,
            "allow_fs_rw": self.allow_fs_rw,
            "allow_env": self.allow_env,
            "allow_net": self.allow_net,
            "net": self.net.to_dict(),
            "allow_deterministic": self.allow_deterministic,
            "development": self.development,
            "isolation": self.isolation,
            "strongbox_tenants": list(self.strongbox_tenants),
            "max_limits": self.max_limits.to_dict(),
            "default_limits": self.default_limits.to_dict(),
        }

    def requires_strongbox(self, tenant: str) -> bool:
        """Whether node policy requires ``tenant`` to run confined (``--strongbox``)."""
        if self.isolation == "strongbox":
            return True
        from fnmatch import fnmatchcase

        return any(fnmatchcase(tenant, g) for g in self.strongbox_tenants)


MAX_DEV_LIMIT = 10**15


def parse_dev_limits(text: str, names: tuple[str, ...]) -> dict[str, int]:
    """``fuel=1000,wall_ms=50`` (the value of ``run --dev-limits``) as ``{name: value}``: each
    name one of ``names`` (the manifest's limit names), at most once, each value a positive
    decimal integer. Raises ``UsageError`` naming what is wrong."""
    from nightcore.errors import UsageError

    out: dict[str, int] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--dev-limits: {item.strip()!r} is not NAME=VALUE")
        if name not in names:
            raise UsageError(f"--dev-limits: no limit {name!r} (one of: {', '.join(names)})")
        if name in out:
            raise UsageError(f"--dev-limits: {name} given twice")
        value = value.strip()
        if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_DEV_LIMIT:
            raise UsageError(f"--dev-limits: {name} must be an integer in [1, {MAX_DEV_LIMIT}]")
        out[name] = int(value)
    return out
