"""Every path of a Night Core workspace, and nothing else.

A :class:`Layout` is pure: building one reads nothing and creates nothing. Code that needs a
file of the workspace asks the layout for it by name instead of spelling the path out, so the
shape below is written down exactly once::

    nightcore.toml              node policy (docs/formats.md)
    node.pub.pem                the node's public key (checkpoints, attestations)
    private/node.key            the node's private key (0600, in a 0700 dir, never shared)
    private/cache.secret        HMAC key of the compiled-module cache and the scan cache
    private/serve-tokens.json   the console's bearer tokens (hashed)
    modules/<tenant>/           tenant packages
    trust/registry.json         trusted keys
    trust/revocations.json      signed revocation list
    state/audit/                audit log (audit.jsonl, audit.lock, audit.tail, checkpoints/)
    state/trust/                high-water marks (revocation list version)
    state/tenants/<t>/          per-tenant data roots (preopens live here)
    state/runs/<run-id>/        outputs of each run
    state/content/<kind>/       content-addressed manifests and envelopes of runs
    state/cache/                authenticated compiled-module cache
    state/nightcore.db          SQLite index of runs (rebuildable from the audit log)
    state/cordons.json          cordoned tenants
    state/aufs/                 AUFS client state
    state/dashboard.html        the static report
    state/node.sock, node.lock  the node agent's Unix socket and its one-node-per-workspace lock
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_NAME = "nightcore.toml"
HOME_ENV = "NIGHTCORE_HOME"

# Names inside state/audit/ (the audit layer owns what they hold; the names live here).
AUDIT_LOG_NAME = "audit.jsonl"
AUDIT_LOCK_NAME = "audit.lock"
AUDIT_TAIL_NAME = "audit.tail"
CHECKPOINTS_DIR_NAME = "checkpoints"
NODE_PUB_NAME = "node.pub.pem"
NODE_SOCKET_NAME = "node.sock"  # nightcore.node.protocol.SOCKET_NAME, without importing it


class Layout:
    """The paths of the workspace rooted at ``root`` (an absolute path). Immutable.

    A plain class rather than a dataclass: the CLI's thin-client path imports this module, and
    ``dataclasses`` alone costs it ~8 ms of a cold start.
    """

    __slots__ = ("root",)
    root: Path

    def __init__(self, root: Path) -> None:
        object.__setattr__(self, "root", root)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Layout is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"Layout(root={self.root!r})"

    # -- top level --------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def node_pub_path(self) -> Path:
        return self.root / NODE_PUB_NAME

    @property
    def private_dir(self) -> Path:
        return self.root / "private"

    @property
    def default_node_key_path(self) -> Path:
        return self.private_dir / "node.key"

    @property
    def cache_secret_path(self) -> Path:
        return self.private_dir / "cache.secret"

    @property
    def serve_tokens_path(self) -> Path:
        return self.private_dir / "serve-tokens.json"

    @property
    def serve_tokens_lock_path(self) -> Path:
        return self.private_dir / "serve-tokens.lock"

    @property
    def template_cache_dir(self) -> Path:
        return self.private_dir / "template-cache"

    @property
    def modules_dir(self) -> Path:
        return self.root / "modules"

    def tenant_dir(self, tenant: str) -> Path:
        return self.modules_dir / tenant

    # -- trust ------------------------------------------------------------------------
    @property
    def trust_dir(self) -> Path:
        return self.root / "trust"

    @property
    def registry_path(self) -> Path:
        return self.trust_dir / "registry.json"

    @property
    def revocations_path(self) -> Path:
        return self.trust_dir / "revocations.json"

    # -- state ------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def revocation_mark_path(self) -> Path:
        return self.state_dir / "trust" / "revocations.version"

    @property
    def live_dir(self) -> Path:
        """Output of runs in progress, ``<run_id>.stdout``/``.stderr`` (``logs --follow``);
        each pair is removed once the run's own output files are written."""
        return self.state_dir / "live"

    def live_output(self, run_id: str, stream: str) -> Path:
        return self.live_dir / f"{run_id}.{stream}"

    @property
    def audit_dir(self) -> Path:
        return self.state_dir / "audit"

    @property
    def audit_log(self) -> Path:
        return self.audit_dir / AUDIT_LOG_NAME

    @property
    def audit_tail(self) -> Path:
        return self.audit_dir / AUDIT_TAIL_NAME

    @property
    def checkpoints_dir(self) -> Path:
        return self.audit_dir / CHECKPOINTS_DIR_NAME

    @property
    def mirrors_state_dir(self) -> Path:
        return self.audit_dir / "mirrors"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    @property
    def content_dir(self) -> Path:
        return self.state_dir / "content"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def index_db(self) -> Path:
        return self.state_dir / "nightcore.db"

    @property
    def index_wal(self) -> Path:
        return self.state_dir / "nightcore.db-wal"

    @property
    def cordons_path(self) -> Path:
        return self.state_dir / "cordons.json"

    @property
    def cordons_lock_path(self) -> Path:
        return self.state_dir / "cordons.lock"

    @property
    def tenants_data_dir(self) -> Path:
        return self.state_dir / "tenants"

    def tenant_data_root(self, tenant: str) -> Path:
        return self.tenants_data_dir / tenant

    @property
    def aufs_state_dir(self) -> Path:
        return self.state_dir / "aufs"

    @property
    def aufs_trusted_root(self) -> Path:
        return self.aufs_state_dir / "metadata" / "root.json"

    @property
    def aufs_staging_dir(self) -> Path:
        return self.modules_dir / ".aufs-staging"

    @property
    def aufs_previous_dir(self) -> Path:
        return self.modules_dir / ".aufs-previous"

    @property
    def node_socket(self) -> Path:
        return self.state_dir / NODE_SOCKET_NAME

    @property
    def node_lock_path(self) -> Path:
        return self.state_dir / "node.lock"

    @property
    def report_path(self) -> Path:
        return self.state_dir / "dashboard.html"


def find_root(explicit: str | None) -> Path:
    """``-w`` beats ``NIGHTCORE_HOME`` (each names the workspace directory exactly) beats
    discovery: like git, the nearest of the current directory and its parents that holds a
    ``nightcore.toml``, up to the filesystem root; with none, the current directory.
    :func:`nightcore.node.protocol.socket_path` resolves the same root without pathlib."""
    named = explicit or os.environ.get(HOME_ENV)
    if named:
        return Path(named).resolve()
    start = Path.cwd().resolve()
    for d in (start, *start.parents):
        if (d / CONFIG_NAME).is_file():
            return d
    return start
