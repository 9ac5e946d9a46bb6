"""Every NATS name Night Mesh uses, derived from the deployment prefix (one place).

Subjects are dot-separated tokens; stream, KV bucket and object store names cannot contain
``.`` (nor ``*``, ``>``, spaces), so they join the prefix with ``-``. The prefix is validated
(``[a-z0-9-]``) so that both forms are always valid; so is a node name (it is a subject token
and a KV key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nightcore.errors import NightCoreError

DEFAULT_PREFIX = "nightcore"
_TOKEN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")


def check_token(value: str, what: str) -> str:
    """``value`` if it is a valid prefix / node name: 1..64 of ``[a-z0-9-]``, no leading or
    trailing ``-``; MESH_CONFIG_INVALID otherwise."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise NightCoreError(
            f"{what} must be 1-64 characters of a-z, 0-9 and '-' (not at either end)",
            code="MESH_CONFIG_INVALID",
        )
    return value


@dataclass(frozen=True)
class Names:
    """The names of one deployment (``prefix``, default ``nightcore``)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_token(self.prefix, "the mesh prefix")

    # -- trust broadcast (stream: every document kept, in order) ------------------------
    @property
    def trust_stream(self) -> str:
        return f"{self.prefix}-trust"

    @property
    def trust_subjects(self) -> str:
        """The trust stream's subject filter."""
        return f"{self.prefix}.trust.>"

    @property
    def trust_revocations_subject(self) -> str:
        """Whole signed revocation lists (the ``trust revoke`` format)."""
        return f"{self.prefix}.trust.revocations"

    @property
    def trust_changes_subject(self) -> str:
        """Signed change documents: key add/remove, tenant and node cordon/uncordon."""
        return f"{self.prefix}.trust.changes"

    # -- node heartbeats (KV: one key per node) ------------------------------------------
    @property
    def nodes_bucket(self) -> str:
        return f"{self.prefix}-nodes"

    def node_subject(self, node: str, *rest: str) -> str:
        """A per-node subject (``<prefix>.node.<node>.<rest>``): replies, control."""
        check_token(node, "the node name")
        return ".".join((self.prefix, "node", node, *rest))

    def inbox_prefix(self, node: str) -> str:
        """The node's reply inbox prefix: permissions can grant it ``_INBOX.<prefix>.<node>.>``
        only."""
        check_token(node, "the node name")
        return f"_INBOX.{self.prefix}.{node}"

    # -- work queue (helper "work") ------------------------------------------------------
    @property
    def work_stream(self) -> str:
        return f"{self.prefix}-work"

    @property
    def work_subjects(self) -> str:
        return f"{self.prefix}.work.>"

    def work_subject(self, *rest: str) -> str:
        return ".".join((self.prefix, "work", *rest))

    @property
    def results_stream(self) -> str:
        return f"{self.prefix}-results"

    @property
    def results_subjects(self) -> str:
        return f"{self.prefix}.results.>"

    def results_subject(self, *rest: str) -> str:
        return ".".join((self.prefix, "results", *rest))

    @property
    def packages_store(self) -> str:
        """Object store of tenant packages."""
        return f"{self.prefix}-packages"

    @property
    def outcomes_bucket(self) -> str:
        """KV of request id -> outcome (idempotence of the work queue)."""
        return f"{self.prefix}-outcomes"

    # -- audit replication (helper "audit") ----------------------------------------------
    @property
    def audit_stream(self) -> str:
        return f"{self.prefix}-audit"

    @property
    def audit_subjects(self) -> str:
        return f"{self.prefix}.audit.>"

    def audit_subject(self, node: str, *rest: str) -> str:
        check_token(node, "the node name")
        return ".".join((self.prefix, "audit", node, *rest))

    def audit_mirror_stream(self, region: str) -> str:
        """The mirror of the audit stream held in another region (its own JetStream domain)."""
        check_token(region, "the region name")
        return f"{self.prefix}-audit-{region}"
