"""Transitional names for code written before the layout/config/context split.

``Workspace`` was one object that held every path, the configuration and every service. It is
now three: :class:`nightcore.layout.Layout` (paths), :class:`nightcore.config.Config` (policy)
and :class:`nightcore.context.NodeContext` (services). This module keeps the old spellings
working while callers move; it is removed once nothing imports it.
"""

from __future__ import annotations

from pathlib import Path

from nightcore.config import (
    DEFAULT_CONFIG,
    DEFAULT_LIMITS,
    DEFAULT_MAX,
    NODE_PASSPHRASE_ENV,
    Config,
    Policy,
    parse_config,
)
from nightcore.context import NodeContext, file_identity, find_workspace, read_capped
from nightcore.layout import CONFIG_NAME, HOME_ENV

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_CONFIG",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX",
    "HOME_ENV",
    "NODE_PASSPHRASE_ENV",
    "Config",
    "Policy",
    "Workspace",
    "find_workspace",
    "parse_config",
]

_file_key = file_identity
_read_capped = read_capped


class Workspace(NodeContext):
    """A :class:`NodeContext` with the old path properties (use ``ctx.layout`` instead)."""

    @property
    def modules_dir(self) -> Path:
        return self.layout.modules_dir

    @property
    def trust_dir(self) -> Path:
        return self.layout.trust_dir

    @property
    def state_dir(self) -> Path:
        return self.layout.state_dir

    @property
    def registry_path(self) -> Path:
        return self.layout.registry_path

    @property
    def revocations_path(self) -> Path:
        return self.layout.revocations_path

    @property
    def revocation_mark_path(self) -> Path:
        return self.layout.revocation_mark_path

    @property
    def node_pub_path(self) -> Path:
        return self.layout.node_pub_path

    def tenant_data_root(self, tenant: str) -> Path:
        return self.layout.tenant_data_root(tenant)

    def _write_mark(self, version: int) -> None:
        self.write_revocation_mark(version)
