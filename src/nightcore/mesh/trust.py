"""The trust-state broadcast, node side: apply every signed trust document on the bus, in
order, before admitting any run.

The documents live in the ``<prefix>-trust`` JetStream stream (limits retention: every
document kept, ``deny_delete``/``deny_purge``), subjects ``<prefix>.trust.revocations``
(whole signed revocation lists) and ``<prefix>.trust.changes`` (signed change documents,
:mod:`nightcore.mesh.documents`). The node reads the stream by sequence from the last one it
processed (``state/mesh/trust.json``): at start-up, after every reconnect, when a core-NATS
copy of a new document arrives (the nudge), and every ``POLL_S`` seconds. Only when a read
reached the stream's last sequence without losing the connection is the node *admitted*
(:meth:`MeshAgent.admit`); a disconnect clears that at once.

Each document is verified with this node's own trusted maintainer keys and applied through the
same functions as the local commands (``trust import-revocations``, ``cordon``/``uncordon``,
``trust add-key``/``remove-key``), so the local kill switch and every local audit line follow.
Every document processed is audited as ``mesh_trust_applied`` or ``mesh_trust_refused`` (with
its stream sequence, code and reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from typing import TYPE_CHECKING, Any

from nightcore.errors import NightCoreError

if TYPE_CHECKING:
    from nightcore.context import NodeContext
    from nightcore.mesh.agent import MeshAgent
    from nightcore.mesh.documents import Change
    from nightcore.mesh.names import Names
    from nightcore.mesh.state import MeshState

POLL_S = 1.0
# A nudge (the core-NATS copy of a publish) can arrive before the stream shows the document:
# read again after 1, 2, 4, ... ms (about 1 s in all).
NUDGE_RETRIES = 10
NUDGE_RETRY_S = 0.001


def trust_stream_config(names: Names) -> Any:
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    from nightcore.mesh.documents import MAX_DOC_BYTES

    return StreamConfig(
        name=names.trust_stream,
        description="Night Core signed trust documents (revocations, key changes, cordons)",
        subjects=[names.trust_subjects],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msg_size=MAX_DOC_BYTES,
        max_bytes=1 << 30,
        deny_delete=True,
        deny_purge=True,
    )


# -- applying one document (blocking: called in a worker thread) -----------------------------
def _refuse(
    ctx: NodeContext, seq: int, kind: str, data: bytes, exc: NightCoreError, **extra: Any
) -> dict[str, Any]:
    entry = {
        "seq": seq,
        "kind": kind,
        "code": exc.code,
        "reason": exc.message[:300],
        "sha256": hashlib.sha256(data).hexdigest(),
        **extra,
    }
    ctx.audit().append("mesh_trust_refused", entry)
    return {"applied": False, **entry}


def _applied(ctx: NodeContext, seq: int, kind: str, data: bytes, **fields: Any) -> dict[str, Any]:
    entry = {"seq": seq, "kind": kind, "sha256": hashlib.sha256(data).hexdigest(), **fields}
    ctx.audit().append("mesh_trust_applied", entry)
    return {"applied": True, **entry}


def _apply_revocations(ctx: NodeContext, seq: int, data: bytes) -> dict[str, Any]:
    from nightcore import app
    from nightcore.fsio import atomic_write

    incoming = ctx.layout.state_dir / "mesh" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    path = incoming / f"trust-{seq}.revocations.json"
    atomic_write(path, data, 0o600)
    try:
        rl = app.import_revocations(ctx, path)
    except NightCoreError as exc:
        return _refuse(ctx, seq, "revocations", data, exc)
    finally:
        path.unlink(missing_ok=True)
    return _applied(
        ctx,
        seq,
        "revocations",
        data,
        version=rl.version,
        signer=rl.signer,
        keys=len(rl.keys),
        modules=len(rl.modules),
    )


def _apply_change(
    ctx: NodeContext, node_name: str, state: MeshState, seq: int, data: bytes
) -> dict[str, Any]:
    from nightcore.mesh.documents import parse_change

    registry = ctx.load_registry()
    try:
        change = parse_change(data, registry, ctx.load_revocations(registry), fips=ctx.policy.fips)
        if change.version <= state.changes_version:
            raise NightCoreError(
                f"change version {change.version} is not newer than version "
                f"{state.changes_version} already applied (replay or rollback)",
                code="MESH_DOC_ROLLBACK",
            )
    except NightCoreError as exc:
        return _refuse(ctx, seq, "change", data, exc)
    common = {"op": change.op, "target": change.target, "version": change.version}
    try:
        effect = _effect(ctx, node_name, state, seq, change)
    except NightCoreError as exc:
        return _refuse(ctx, seq, "change", data, exc, **common)
    state.changes_version = change.version
    return _applied(ctx, seq, "change", data, signer=change.signer, effect=effect, **common)


def _effect(ctx: NodeContext, node_name: str, state: MeshState, seq: int, change: Change) -> str:
    """Apply ``change`` through the local operations; what it did."""
    from nightcore import app

    actor = f"mesh:{change.signer[:16]}"
    effect = "applied"
    if change.op == "cordon":
        try:
            app.cordon(ctx, change.target, change.reason or "mesh cordon", actor=actor)
        except NightCoreError as exc:
            if exc.code != "ALREADY_CORDONED":
                raise
            effect = "already cordoned"
    elif change.op == "uncordon":
        try:
            app.uncordon(ctx, change.target, change.reason, actor=actor)
        except NightCoreError as exc:
            if exc.code != "NOT_CORDONED":
                raise
            effect = "not cordoned"
    elif change.op in ("node_cordon", "node_uncordon"):
        if change.target != node_name:
            effect = "other node"
        else:
            state.node_cordon = {
                "cordoned": change.op == "node_cordon",
                "reason": change.reason,
                "ts": change.issued,
                "signer": change.signer,
            }
    elif change.op == "key_add":
        effect = _add_key(ctx, seq, change.key)
    elif change.op == "key_remove":
        try:
            app.trust_remove_key(ctx, change.target)
        except NightCoreError as exc:
            if exc.code != "KEY_NOT_FOUND":
                raise
            effect = "not in registry"
    return effect


def _add_key(ctx: NodeContext, seq: int, key: dict[str, Any]) -> str:
    from nightcore import app
    from nightcore.fsio import atomic_write
    from nightcore.trust.registry import parse_time

    incoming = ctx.layout.state_dir / "mesh" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    path = incoming / f"trust-{seq}.pub.pem"
    atomic_write(path, key["public_pem"].encode(), 0o600)
    try:
        app.trust_add_key(
            ctx,
            path,
            scope=key["scope"],
            role=key["role"],
            expires=parse_time(key["expires"], "expires") if key["expires"] else None,
            name=key["name"],
        )
    except NightCoreError as exc:
        if exc.code != "KEY_EXISTS":
            raise
        return "already in registry"
    finally:
        path.unlink(missing_ok=True)
    return "applied"


def apply_document(
    ctx: NodeContext, names: Names, node_name: str, seq: int, subject: str, data: bytes
) -> dict[str, Any]:
    """Verify and apply one trust document from the stream; audited either way; the node's
    mesh state advanced past ``seq``."""
    from nightcore.mesh.documents import MAX_DOC_BYTES
    from nightcore.mesh.state import load_state, save_state

    state = load_state(ctx.layout)
    if len(data) > MAX_DOC_BYTES:
        result = _refuse(
            ctx,
            seq,
            "unknown",
            data[:MAX_DOC_BYTES],
            NightCoreError("document too large", code="MESH_DOC_INVALID"),
        )
    elif subject == names.trust_revocations_subject:
        result = _apply_revocations(ctx, seq, data)
    elif subject == names.trust_changes_subject:
        result = _apply_change(ctx, node_name, state, seq, data)
    else:
        result = _refuse(
            ctx,
            seq,
            "unknown",
            data,
            NightCoreError(
                f"no trust document kind on subject {subject[:100]}", code="MESH_DOC_INVALID"
            ),
        )
    state.seq = max(state.seq, seq)
    save_state(ctx.layout, state)
    return result


# -- the service -------------------------------------------------------------------------------
class TrustService:
    name = "trust"

    def __init__(self, agent: MeshAgent) -> None:
        self.agent = agent
        self.nudged = 0  # core-NATS copies of trust documents received
        self.handled = 0  # of those, how many a read of the stream has followed

    async def run(self, agent: MeshAgent) -> None:
        from nats.errors import Error as NatsError

        assert agent.stopping is not None and agent.wake is not None and agent.nc is not None
        names = agent.names
        await agent.ensure_stream(trust_stream_config(names))

        async def nudge(_msg: Any) -> None:
            self.nudged += 1
            assert agent.wake is not None
            agent.wake.set()

        sub = await agent.nc.subscribe(names.trust_subjects, cb=nudge)
        try:
            while not agent.stopping.is_set():
                agent.wake.clear()
                nudged = self.nudged > self.handled
                self.handled = self.nudged
                await self._catch_up_once(agent, nudged)
                if agent.wake.is_set():
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(agent.wake.wait(), timeout=POLL_S)
        finally:
            with contextlib.suppress(NatsError, TimeoutError, OSError):  # connection gone
                await sub.unsubscribe()

    async def _catch_up_once(self, agent: MeshAgent, nudged: bool) -> None:
        from nats.errors import Error as NatsError

        from nightcore.mesh.agent import mesh_error

        if not agent.connected.is_set():
            return
        gen = agent.generation
        try:
            found = await self.catch_up(agent)
            retries = 0
            # A nudge that came before the stream showed its document: read again shortly.
            while nudged and not found and retries < NUDGE_RETRIES and gen == agent.generation:
                await asyncio.sleep(NUDGE_RETRY_S * 2**retries)
                retries += 1
                found = await self.catch_up(agent)
        except (NatsError, TimeoutError, OSError) as exc:
            # Not admitted-clearing: the connection is up (a disconnect clears it) and nothing
            # can be published to a stream that cannot be read; the next poll retries.
            err = mesh_error(exc, "reading the trust stream")
            agent.last_error = f"{err.code}: {err.message}"
            return
        if gen == agent.generation and agent.connected.is_set() and not agent.admitted.is_set():
            agent.admitted.set()
            agent.log("mesh: caught up with the trust stream: admitting runs")
            if agent.beat is not None:
                agent.beat.set()

    async def catch_up(self, agent: MeshAgent) -> int:
        """Apply every document after the last one processed; how many were found."""
        from nats.js.errors import NotFoundError

        from nightcore.mesh.state import load_state, save_state

        names, ctx = agent.names, agent.ctx
        info = await agent.js.stream_info(names.trust_stream)
        created = info.created.isoformat() if info.created else ""
        state = load_state(ctx.layout)
        if state.stream.get("name") != names.trust_stream or state.stream.get("created") != created:
            # A new (or recreated) stream: read it from its start; versions refuse replays.
            state.stream = {"name": names.trust_stream, "created": created}
            state.seq = 0
            await asyncio.to_thread(save_state, ctx.layout, state)
        last, first = info.state.last_seq, info.state.first_seq
        seq = max(state.seq + 1, first)
        found = 0
        while seq <= last:
            try:
                msg = await agent.js.get_msg(names.trust_stream, seq)
            except NotFoundError:  # deleted (a limit): nothing to apply at this sequence
                seq += 1
                continue
            found += 1
            t0 = time.perf_counter()
            result = await asyncio.to_thread(
                apply_document,
                ctx,
                names,
                agent.config.node_name,
                seq,
                msg.subject or "",
                msg.data or b"",
            )
            what = "applied" if result["applied"] else f"refused[{result['code']}]"
            ms = (time.perf_counter() - t0) * 1000
            agent.log(f"mesh: trust document {seq} ({result['kind']}) {what} in {ms:.1f} ms")
            seq += 1
        if found and agent.beat is not None:
            agent.beat.set()  # the heartbeat carries the new versions at once
        return found
