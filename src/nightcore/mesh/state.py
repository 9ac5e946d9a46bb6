"""What this node applied from the mesh (``state/mesh/trust.json``, written whole).

- ``stream``: the trust stream's name and creation time (a stream deleted and created again
  starts over from sequence 1: versions still refuse every replay),
- ``seq``: the last trust-stream sequence this node processed (applied or refused),
- ``changes_version``: the highest change-document version applied (refused: older/equal),
- ``node_cordon``: this node's own cordon (``{"cordoned": bool, "reason", "ts", "signer"}``).

The revocation list version is the workspace's own (``state/trust/revocations.version``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightcore.canonical import canonical, parse_json
from nightcore.errors import NightCoreError, StateError
from nightcore.fsio import atomic_write, read_regular_capped

if TYPE_CHECKING:
    from nightcore.context import NodeContext
    from nightcore.layout import Layout


def state_path(layout: Layout) -> Path:
    return layout.state_dir / "mesh" / "trust.json"


@dataclass
class MeshState:
    stream: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    changes_version: int = 0
    node_cordon: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "seq": self.seq,
            "changes_version": self.changes_version,
            "node_cordon": self.node_cordon,
        }


def load_state(layout: Layout) -> MeshState:
    path = state_path(layout)
    if not path.exists():
        return MeshState()
    try:
        data = read_regular_capped(path, 1 << 20)
        doc = parse_json(data, max_bytes=1 << 20, what="state/mesh/trust.json")
    except (NightCoreError, OSError) as exc:
        raise StateError(f"state/mesh/trust.json: {exc}") from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("seq"), int)
        or not isinstance(doc.get("changes_version"), int)
        or not isinstance(doc.get("stream"), dict)
        or not isinstance(doc.get("node_cordon"), dict)
    ):
        raise StateError("state/mesh/trust.json has missing or mistyped fields")
    return MeshState(doc["stream"], doc["seq"], doc["changes_version"], doc["node_cordon"])


def save_state(layout: Layout, state: MeshState) -> None:
    path = state_path(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, canonical(state.to_dict()) + b"\n", 0o600)


def trust_versions(ctx: NodeContext) -> dict[str, int]:
    """What this node applied: the last trust-stream sequence, the change version and the
    revocation list version (heartbeats, ``GET /api/mesh``)."""
    state = load_state(ctx.layout)
    return {
        "seq": state.seq,
        "changes_version": state.changes_version,
        "revocations_version": ctx.revocation_mark(),
    }
