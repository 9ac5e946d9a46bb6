"""Trust operations of the facade: trusted keys, revocations (each change audited)."""

from __future__ import annotations

from nightcore.trustops import (
    import_revocations,
    key_age_warnings,
    resolve_key_id,
    revocations_list,
    revoke,
    trust_add_key,
    trust_list,
    trust_list_states,
    trust_remove_key,
    trust_rotate_key,
)

__all__ = [
    "import_revocations",
    "key_age_warnings",
    "resolve_key_id",
    "revocations_list",
    "revoke",
    "trust_add_key",
    "trust_list",
    "trust_list_states",
    "trust_remove_key",
    "trust_rotate_key",
]
