"""Node configuration: ``nightcore.toml`` parsed into a :class:`Config` and its :class:`Policy`.

Pure: :func:`parse_config` takes the file's bytes and returns values (or raises ``ConfigError``).
Node policy can only narrow what a signed manifest asks for; ``docs/formats.md`` lists the fields.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any

from nightcore.errors import ConfigError
from nightcore.layout import CONFIG_NAME
from nightcore.module.manifest import LIMIT_NAMES, LIMIT_RANGES
from nightcore.module.netpolicy import NetPolicy, NetPolicyError, parse_grants
from nightcore.policy import (
    DEFAULT_LIMITS,
    DEFAULT_MAX,
    DEFAULT_UID_BASE,
    DEFAULT_UID_COUNT,
    ISOLATION_MODES,
    Policy,
)
from nightcore.sandbox.types import EffectiveLimits

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX",
    "NODE_PASSPHRASE_ENV",
    "Config",
    "Policy",
    "parse_config",
]

NODE_PASSPHRASE_ENV = "NIGHTCORE_NODE_KEY_PASSPHRASE"  # noqa: S105 - a variable name
MAX_CONFIG_BYTES = 256 * 1024

DEFAULT_CONFIG = """\
# Night Core node configuration. Node policy can only narrow what a signed manifest asks for.

[node]
name = "{name}"
# The node's signing key (checkpoints, run attestations): a path relative to the workspace
# or any securesystemslib private-key URI (e.g. an HSM or cloud KMS signer).
key = "private/node.key"
fips = false

[policy]
# Which capability kinds a manifest may be granted at all.
allow_fs = true
allow_fs_rw = true
allow_env = true
allow_net = false
allow_deterministic = true
# With allow_net = true: [policy.net] allow = ["https://api.example.com/*"] narrows what a
# manifest may be granted; max_request_bytes, max_response_bytes, max_requests cap each run.
# Isolation: "strongbox" runs every tenant in a confined worker (Linux, root; refused with
# STRONGBOX_UNAVAILABLE where it cannot); strongbox_tenants = ["bank-*"] confines only those.
isolation = "in-process"

[policy.max_limits]
fuel = {max.fuel}
wall_ms = {max.wall_ms}
memory_bytes = {max.memory_bytes}
stack_bytes = {max.stack_bytes}
output_bytes = {max.output_bytes}
# Resource bounds (docs/limits.md): rw-grant bytes and entries, descriptors held at once,
# compilation wall time and address space (cache misses only).
disk_bytes = {max.disk_bytes}
disk_files = {max.disk_files}
open_files = {max.open_files}
compile_ms = {max.compile_ms}
compile_memory_bytes = {max.compile_memory_bytes}

[policy.default_limits]
fuel = {default.fuel}
wall_ms = {default.wall_ms}
memory_bytes = {default.memory_bytes}
stack_bytes = {default.stack_bytes}
output_bytes = {default.output_bytes}
disk_bytes = {default.disk_bytes}
disk_files = {default.disk_files}
open_files = {default.open_files}
compile_ms = {default.compile_ms}
compile_memory_bytes = {default.compile_memory_bytes}

[run]
parallel = 2
"""


@dataclass(frozen=True)
class Config:
    node_name: str
    node_key: str
    policy: Policy
    parallel: int = 2
    checkpoint_every: int = 1000
    heartbeat_idle_seconds: int = 300
    # [run] strongbox_uid_base / strongbox_uid_count: the uids (and gids) of strongbox
    # tenants, one per tenant (docs/strongbox.md, "Tenant uids").
    strongbox_uid_base: int = DEFAULT_UID_BASE
    strongbox_uid_count: int = DEFAULT_UID_COUNT
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def has_mirrors(self) -> bool:
        """Whether ``[[audit.mirror]]`` is set (validated by :func:`parse_config`): callers can
        skip importing :mod:`nightcore.audit.mirror` when it is not."""
        audit = self.raw.get("audit")
        return isinstance(audit, dict) and audit.get("mirror") is not None


def _table(d: dict[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    t = d.get(name, {})
    if not isinstance(t, dict):
        raise ConfigError(f"[{name}] must be a table")
    unknown = sorted(set(t) - allowed)
    if unknown:
        raise ConfigError(f"[{name}]: unknown field {unknown[0]!r}")
    return t


def _bool(t: dict[str, Any], key: str, default: bool, where: str) -> bool:
    v = t.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{where}.{key} must be true or false")
    return v


def _limits(t: dict[str, Any], where: str, base: EffectiveLimits) -> EffectiveLimits:
    unknown = sorted(set(t) - set(LIMIT_NAMES))
    if unknown:
        raise ConfigError(f"[{where}]: unknown field {unknown[0]!r}")
    vals = base.to_dict()
    for k, v in t.items():
        lo, hi = LIMIT_RANGES[k]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ConfigError(f"{where}.{k} must be an integer in [{lo}, {hi}]")
        vals[k] = v
    return EffectiveLimits(**vals)


# [policy.net] caps: (lower, upper) bounds of each field.
_NET_CAPS = {
    "max_request_bytes": (0, 64 * 1024 * 1024),
    "max_response_bytes": (0, 1024 * 1024 * 1024),
    "max_requests": (0, 10_000),
}


def _net_policy(t: object) -> NetPolicy:
    """``[policy.net]`` (docs/net.md): ``allow`` patterns that narrow manifest grants, caps."""
    if not isinstance(t, dict):
        raise ConfigError("[policy.net] must be a table")
    unknown = sorted(set(t) - {"allow", *_NET_CAPS})
    if unknown:
        raise ConfigError(f"[policy.net]: unknown field {unknown[0]!r}")
    caps: dict[str, int] = {}
    for k, (lo, hi) in _NET_CAPS.items():
        if k in t:
            v = t[k]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ConfigError(f"policy.net.{k} must be an integer in [{lo}, {hi}]")
            caps[k] = v
    allow: tuple[str, ...] | None = None
    if "allow" in t:
        raw = t["allow"]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise ConfigError("policy.net.allow must be a list of strings")
        try:
            parse_grants(raw)
        except NetPolicyError as exc:
            raise ConfigError(f"policy.net.allow: {exc}") from None
        allow = tuple(raw)
    return NetPolicy(allow=allow, **caps)


def _uid_range(run: dict[str, Any]) -> tuple[int, int]:
    base = run.get("strongbox_uid_base", DEFAULT_UID_BASE)
    count = run.get("strongbox_uid_count", DEFAULT_UID_COUNT)
    for key, value, lo, hi in (
        ("strongbox_uid_base", base, 1000, 2**32 - 2),
        ("strongbox_uid_count", count, 1, 2**24),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(f"run.{key} must be an integer in [{lo}, {hi}]")
    if base + count > 2**32 - 2:
        raise ConfigError("run.strongbox_uid_base + strongbox_uid_count must stay below 2**32 - 2")
    return base, count


def _isolation(pol: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """``[policy] isolation`` ("in-process" or "strongbox": every tenant confined) and
    ``strongbox_tenants`` (globs of tenants confined whatever ``isolation`` says)."""
    mode = pol.get("isolation", "in-process")
    if mode not in ISOLATION_MODES:
        raise ConfigError(f"policy.isolation must be one of: {', '.join(ISOLATION_MODES)}")
    globs = pol.get("strongbox_tenants", [])
    if (
        not isinstance(globs, list)
        or len(globs) > 1000
        or not all(isinstance(g, str) and 0 < len(g) <= 128 for g in globs)
    ):
        raise ConfigError("policy.strongbox_tenants must be a list of tenant name globs")
    return mode, tuple(globs)


def parse_config(data: bytes, *, fips_override: bool | None = None) -> Config:
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{CONFIG_NAME} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{CONFIG_NAME}: {exc}") from None
    unknown = sorted(set(doc) - {"node", "policy", "run", "audit"})
    if unknown:
        raise ConfigError(f"{CONFIG_NAME}: unknown table {unknown[0]!r}")
    node = _table(doc, "node", {"name", "key", "fips"})
    pol = _table(
        doc,
        "policy",
        {
            "allow_fs",
            "allow_fs_rw",
            "allow_env",
            "allow_net",
            "net",
            "allow_deterministic",
            "development",
            "isolation",
            "strongbox_tenants",
            "max_limits",
            "default_limits",
        },
    )
    run = _table(doc, "run", {"parallel", "strongbox_uid_base", "strongbox_uid_count"})
    audit = _table(doc, "audit", {"checkpoint_every", "heartbeat_idle_seconds", "mirror"})
    checkpoint_every = audit.get("checkpoint_every", 1000)
    heartbeat_idle = audit.get("heartbeat_idle_seconds", 300)
    for key, value in (
        ("checkpoint_every", checkpoint_every),
        ("heartbeat_idle_seconds", heartbeat_idle),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10**7:
            raise ConfigError(f"audit.{key} must be an integer in [1, 10000000]")
    if audit.get("mirror") is not None:  # only nodes with mirrors import that module
        from nightcore.audit.mirror import parse_mirrors

        parse_mirrors(audit.get("mirror"))  # validated now, used by the audit layer
    name = node.get("name", "node")
    key = node.get("key", "private/node.key")
    if not isinstance(name, str) or not isinstance(key, str):
        raise ConfigError("[node] name and key must be strings")
    fips = _bool(node, "fips", False, "node")
    if fips_override is not None:
        fips = fips or fips_override  # --fips can only tighten
    max_t = pol.get("max_limits", {})
    def_t = pol.get("default_limits", {})
    if not isinstance(max_t, dict) or not isinstance(def_t, dict):
        raise ConfigError("[policy.max_limits] and [policy.default_limits] must be tables")
    max_limits = _limits(max_t, "policy.max_limits", DEFAULT_MAX)
    defaults = _limits(def_t, "policy.default_limits", DEFAULT_LIMITS)
    for k in LIMIT_NAMES:
        if getattr(defaults, k) > getattr(max_limits, k):
            raise ConfigError(f"policy.default_limits.{k} exceeds policy.max_limits.{k}")
    parallel = run.get("parallel", 2)
    if not isinstance(parallel, int) or isinstance(parallel, bool) or not 1 <= parallel <= 256:
        raise ConfigError("run.parallel must be an integer in [1, 256]")
    uid_base, uid_count = _uid_range(run)
    isolation, strongbox_tenants = _isolation(pol)
    policy = Policy(
        fips=fips,
        allow_fs=_bool(pol, "allow_fs", True, "policy"),
        allow_fs_rw=_bool(pol, "allow_fs_rw", True, "policy"),
        allow_env=_bool(pol, "allow_env", True, "policy"),
        allow_net=_bool(pol, "allow_net", False, "policy"),
        net=_net_policy(pol.get("net", {})),
        allow_deterministic=_bool(pol, "allow_deterministic", True, "policy"),
        development=_bool(pol, "development", False, "policy"),
        isolation=isolation,
        strongbox_tenants=strongbox_tenants,
        max_limits=max_limits,
        default_limits=defaults,
    )
    return Config(
        node_name=name,
        node_key=key,
        policy=policy,
        parallel=parallel,
        checkpoint_every=checkpoint_every,
        heartbeat_idle_seconds=heartbeat_idle,
        strongbox_uid_base=uid_base,
        strongbox_uid_count=uid_count,
        raw=doc,
    )
