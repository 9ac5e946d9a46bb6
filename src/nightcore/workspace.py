"""A Night Core workspace on disk: node configuration, trust, tenants, state.

Layout::

    nightcore.toml          node policy (docs/formats/nightcore-toml.md)
    node.pub.pem            the node's public key (checkpoints, attestations)
    private/node.key        the node's private key (0600, in a 0700 dir, never shared)
    modules/<tenant>/       tenant packages
    trust/registry.json     trusted keys
    trust/revocations.json  signed revocation list
    state/audit/            audit log
    state/trust/            high-water marks (revocation list version)
    state/tenants/<t>/      per-tenant data roots (preopens live here)
    state/runs/<run-id>/    outputs of each run
    state/cache/            authenticated compiled-module cache
"""

from __future__ import annotations

import os
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nightcore.errors import ConfigError, TrustError, WorkspaceError
from nightcore.fsio import atomic_write
from nightcore.layout import Layout
from nightcore.module.manifest import LIMIT_NAMES, LIMIT_RANGES
from nightcore.sandbox.types import EffectiveLimits

CONFIG_NAME = "nightcore.toml"
HOME_ENV = "NIGHTCORE_HOME"
NODE_PASSPHRASE_ENV = "NIGHTCORE_NODE_KEY_PASSPHRASE"  # noqa: S105 - a variable name
MAX_CONFIG_BYTES = 256 * 1024

DEFAULT_MAX = EffectiveLimits(
    fuel=1_000_000_000_000,
    wall_ms=10_000,
    memory_bytes=256 * 1024 * 1024,
    stack_bytes=1024 * 1024,
    output_bytes=1024 * 1024,
)
DEFAULT_LIMITS = EffectiveLimits(
    fuel=100_000_000,
    wall_ms=2_000,
    memory_bytes=32 * 1024 * 1024,
    stack_bytes=512 * 1024,
    output_bytes=64 * 1024,
)

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

[policy.max_limits]
fuel = {max.fuel}
wall_ms = {max.wall_ms}
memory_bytes = {max.memory_bytes}
stack_bytes = {max.stack_bytes}
output_bytes = {max.output_bytes}

[policy.default_limits]
fuel = {default.fuel}
wall_ms = {default.wall_ms}
memory_bytes = {default.memory_bytes}
stack_bytes = {default.stack_bytes}
output_bytes = {default.output_bytes}

[run]
parallel = 2
"""


@dataclass(frozen=True)
class Policy:
    fips: bool = False
    allow_fs: bool = True
    allow_fs_rw: bool = True
    allow_env: bool = True
    allow_net: bool = False
    allow_deterministic: bool = True
    max_limits: EffectiveLimits = DEFAULT_MAX
    default_limits: EffectiveLimits = DEFAULT_LIMITS

    def to_dict(self) -> dict[str, Any]:
        return {
            "fips": self.fips,
            "allow_fs": self.allow_fs,
            "allow_fs_rw": self.allow_fs_rw,
            "allow_env": self.allow_env,
            "allow_net": self.allow_net,
            "allow_deterministic": self.allow_deterministic,
            "max_limits": self.max_limits.to_dict(),
            "default_limits": self.default_limits.to_dict(),
        }


@dataclass(frozen=True)
class Config:
    node_name: str
    node_key: str
    policy: Policy
    parallel: int = 2
    checkpoint_every: int = 1000
    heartbeat_idle_seconds: int = 300
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
            "allow_deterministic",
            "max_limits",
            "default_limits",
        },
    )
    run = _table(doc, "run", {"parallel"})
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
    policy = Policy(
        fips=fips,
        allow_fs=_bool(pol, "allow_fs", True, "policy"),
        allow_fs_rw=_bool(pol, "allow_fs_rw", True, "policy"),
        allow_env=_bool(pol, "allow_env", True, "policy"),
        allow_net=_bool(pol, "allow_net", False, "policy"),
        allow_deterministic=_bool(pol, "allow_deterministic", True, "policy"),
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
        raw=doc,
    )


def find_workspace(explicit: str | None) -> Path:
    """``-w`` beats ``NIGHTCORE_HOME`` beats the current directory."""
    cand = explicit or os.environ.get(HOME_ENV) or "."
    root = Path(cand).resolve()
    if not (root / CONFIG_NAME).is_file():
        raise WorkspaceError(
            f"{root} is not a Night Core workspace (no {CONFIG_NAME}); "
            "run 'nightcore init' or pass -w DIR",
            code="WORKSPACE_NOT_FOUND",
        )
    return root


class Workspace:
    """Paths and loaded configuration of one workspace. Cheap to open; loads lazily."""

    def __init__(self, root: Path, *, fips: bool | None = None) -> None:
        self.root = root
        self.layout = Layout(root)
        cfg_path = root / CONFIG_NAME
        try:
            data = cfg_path.read_bytes()
        except OSError as exc:
            raise WorkspaceError(f"cannot read {cfg_path}: {exc.strerror}") from None
        self.config = parse_config(data, fips_override=fips)
        self._node_key_id: str | None = None
        self._audit: Any = None
        self._parsed: dict[str, tuple[Any, Any]] = {}
        self._node_signer: Any = None
        self._signer_lock = threading.Lock()

    @classmethod
    def open(cls, explicit: str | None = None, *, fips: bool | None = None) -> Workspace:
        return cls(find_workspace(explicit), fips=fips)

    @property
    def policy(self) -> Policy:
        return self.config.policy

    @property
    def modules_dir(self) -> Path:
        return self.root / "modules"

    @property
    def trust_dir(self) -> Path:
        return self.root / "trust"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def registry_path(self) -> Path:
        return self.root / "trust" / "registry.json"

    @property
    def revocations_path(self) -> Path:
        return self.root / "trust" / "revocations.json"

    @property
    def revocation_mark_path(self) -> Path:
        return self.root / "state" / "trust" / "revocations.version"

    @property
    def node_pub_path(self) -> Path:
        return self.root / "node.pub.pem"

    def node_key_id(self) -> str:
        if self._node_key_id is None:
            from nightcore.trust.pubkey import PublicKey

            try:
                data = self.node_pub_path.read_bytes()
            except OSError:
                raise WorkspaceError("node.pub.pem is missing", code="NODE_KEY_MISSING") from None
            self._node_key_id = PublicKey.from_pem(data).keyid
        return self._node_key_id

    def node_signer(self) -> Any:
        """The node's signer (attestations, bundle indexes, checkpoints), loaded once.

        A local key file is read with ``cryptography`` (``FileSigner``); a KMS/HSM URI goes
        through securesystemslib. Either must match ``node.pub.pem``.
        """
        with self._signer_lock:
            if self._node_signer is None:
                from nightcore.trust.keys import (
                    SslibSignerAdapter,
                    load_file_signer,
                    load_signer,
                )

                uri = self.node_key_uri()
                signer: Any = load_file_signer(uri, NODE_PASSPHRASE_ENV)
                if signer is None:
                    from nightcore.trust.pubkey import PublicKey

                    pub = PublicKey.from_pem(self.node_pub_path.read_bytes())
                    signer = SslibSignerAdapter(
                        load_signer(uri, NODE_PASSPHRASE_ENV, pub.to_sslib())
                    )
                if signer.key_id != self.node_key_id():
                    raise WorkspaceError(
                        "the node key does not match node.pub.pem", code="NODE_KEY_MISMATCH"
                    )
                self._node_signer = signer
            return self._node_signer

    def node_key_uri(self) -> str:
        key = self.config.node_key
        scheme, sep, _ = key.partition(":")
        if sep and len(scheme) > 1:
            return key
        path = Path(key)
        return str(path if path.is_absolute() else self.root / path)

    def audit(self) -> Any:
        """The workspace's audit log (one instance, so its tail cursor stays warm).

        Safe across threads and processes: every append takes the file lock and re-checks the
        file size against its cursor.
        """
        from nightcore.audit.log import AuditLog

        if self._audit is None:
            self._audit = AuditLog(self.state_dir / "audit", self.node_key_id())
        return self._audit

    def tenant_data_root(self, tenant: str) -> Path:
        return self.state_dir / "tenants" / tenant

    # -- trust -------------------------------------------------------------------------

    def load_registry(self) -> Any:
        from nightcore.trust.registry import Registry, parse_registry

        key = _file_key(self.registry_path)
        if key is None:
            return Registry()
        cached = self._parsed.get("registry")
        if cached is not None and cached[0] == key:
            return cached[1]
        registry = parse_registry(_read_capped(self.registry_path, 4 * 1024 * 1024))
        self._parsed["registry"] = (key, registry)
        return registry

    def revocation_mark(self) -> int:
        key = _file_key(self.revocation_mark_path)
        cached = self._parsed.get("mark")
        if key is not None and cached is not None and cached[0] == key:
            return int(cached[1])
        try:
            text = self.revocation_mark_path.read_text().strip()
        except FileNotFoundError:
            return 0
        if not text.isdigit():
            raise TrustError("state/trust/revocations.version is corrupt", code="STATE_INVALID")
        if key is not None:
            self._parsed["mark"] = (key, int(text))
        return int(text)

    def load_revocations(self, registry: Any) -> Any:
        from nightcore.trust.registry import RevocationList, check_not_rollback, parse_revocations

        mark = self.revocation_mark()
        key = _file_key(self.revocations_path)
        if key is None:
            if mark > 0:
                raise TrustError(
                    f"revocation list is missing but version {mark} was accepted "
                    "before (deleted or rolled back)",
                    code="REVOCATION_ROLLBACK",
                )
            return RevocationList()
        cached = self._parsed.get("revocations")
        if (
            cached is not None
            and cached[0][0] == key
            and cached[0][1] is registry
            and cached[0][2] == self.policy.fips
        ):
            rl = cached[1]
        else:
            data = _read_capped(self.revocations_path, 16 * 1024 * 1024)
            rl = parse_revocations(data, registry, fips=self.policy.fips)
            self._parsed["revocations"] = ((key, registry, self.policy.fips), rl)
        check_not_rollback(rl, mark)
        if rl.version > mark:
            self._write_mark(rl.version)
        return rl

    def _write_mark(self, version: int) -> None:
        atomic_write(self.revocation_mark_path, f"{version}\n".encode())


def _file_key(path: Path) -> tuple[int, int, int, int] | None:
    """Identity of a file's current content for parse caches: inode, size, mtime and ctime.

    ctime cannot be set from user space, so a rewrite (even one that restores the mtime and
    the size) changes the key; a cache hit means the very same bytes are still there.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_capped(path: Path, cap: int) -> bytes:
    with path.open("rb") as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise TrustError(f"{path.name} is larger than {cap} bytes", code="TRUST_FILE_TOO_LARGE")
    return data
