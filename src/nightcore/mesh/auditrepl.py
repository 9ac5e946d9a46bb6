"""Audit replication: each node's audit lines and checkpoints on a JetStream stream, mirrored into
a second region, and ``audit verify --source nats://...`` from the stream alone.

Stream ``<prefix>-audit`` (subjects ``<prefix>.audit.>``; file storage; the deployment's replica
count; limits retention with no limit; ``deny_delete`` and ``deny_purge``; a 10-minute duplicate
window). Per node (``N``):

- ``<prefix>.audit.N.line``: one audit line, byte for byte (with its newline); headers
  ``Nats-Msg-Id: N.line.<seq>`` (JetStream drops a re-publication within the window) and
  ``Nightcore-Audit-Seq: <seq>``;
- ``<prefix>.audit.N.checkpoint``: one signed checkpoint note; ``Nats-Msg-Id:
  N.checkpoint.<size>``, ``Nightcore-Checkpoint-Size: <size>``; published only once lines
  ``0..size-1`` are acknowledged by the stream (a reader never sees a checkpoint before its lines);
- ``<prefix>.audit.N.key``: the node's ``node.pub.pem`` (once per key).

Lines are published one at a time, in order, each awaited: the stream's order is the log's.
The node keeps what the stream acknowledged in ``state/audit/mirrors/mesh-<prefix>.json``
(``lines``, ``checkpoints``): that is what ``audit verify --source`` holds the stream to. After a
restart the service resumes after the last line the stream holds on the node's subject (checked
byte for byte against the node's own line: a stream line the node never wrote is reported and
the node's cursor is used instead); a line published again after a lost acknowledgement is
dropped by the msg-id within the window, and one outside it is an exact duplicate the reader
skips. So no acknowledged line is lost or duplicated.

A second region (a server with its own JetStream domain joined as a leafnode) holds
``<prefix>-audit-<region>``, a mirror stream of ``<prefix>-audit`` (``StreamSource(external=
ExternalStream(api="$JS.<hub domain>.API"))``), created by ``nightcore audit mirror region``
(:func:`ensure_region_mirror`). The mirror keeps the stream's sequence numbers and headers.

Reading (:func:`read_stream`): an ordered consumer over ``<prefix>.audit.N.>`` rebuilds
``audit.jsonl``, ``checkpoints/<size>.note``, ``audit.tail`` and ``node.pub.pem`` in a temporary
directory; :func:`nightcore.audit.verify.verify_log` verifies it and, in the node's workspace,
:func:`nightcore.audit.anchor.anchor_to_node` holds it to the node's checkpoints. The stream's
own record is evidence too: an audit stream never deletes, so deleted or purged messages
(``num_deleted``, ``first_seq > 1``) make it ``MIRROR_TRUNCATED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightcore.errors import NightCoreError
from nightcore.fsio import atomic_write, open_regular, read_regular_capped

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from nightcore.audit.anchor import Acknowledged
    from nightcore.audit.verify import VerifyReport
    from nightcore.context import NodeContext
    from nightcore.layout import Layout
    from nightcore.mesh.agent import MeshAgent
    from nightcore.mesh.config import MeshConfig
    from nightcore.mesh.names import Names

SEQ_HEADER = "Nightcore-Audit-Seq"
SIZE_HEADER = "Nightcore-Checkpoint-Size"
DUPLICATE_WINDOW_S = 600.0
POLL_S = 0.2
BATCH_LINES = 500
MAX_LINE = 1 << 20
MAX_CURSOR_BYTES = 1 << 20  # state/mesh/audit-*.json
MAX_PEM_BYTES = 64 * 1024
READ_IDLE_S = 5.0


def _bad(message: str, code: str = "MESH_ERROR") -> NightCoreError:
    return NightCoreError(message, code=code)


# -- the node's record of what the stream acknowledged -------------------------------------


@dataclass
class ReplicationCursor:
    lines: int = 0
    offset: int = 0  # bytes of audit.jsonl published (not trusted: re-derived on start)
    checkpoints: list[int] = field(default_factory=list)
    key_sha256: str = ""
    stream_seq: int = 0
    domain: str = ""
    node: str = ""  # the mesh node name the lines are published under

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode() + b"\n"


def cursor_path(layout: Layout, prefix: str) -> Path:
    return layout.mirrors_state_dir / f"mesh-{prefix}.json"


def load_cursor(layout: Layout, prefix: str) -> ReplicationCursor:
    path = cursor_path(layout, prefix)
    if not path.exists():
        return ReplicationCursor()
    try:
        raw = json.loads(read_regular_capped(path, MAX_CURSOR_BYTES))
        cur = ReplicationCursor(**{k: raw[k] for k in ReplicationCursor().__dict__ if k in raw})
    except (ValueError, TypeError, OSError) as exc:
        raise NightCoreError(
            f"audit replication cursor {path.name} is corrupt: {exc}", code="STATE_INVALID"
        ) from None
    if not isinstance(cur.lines, int) or not isinstance(cur.checkpoints, list):
        raise NightCoreError(
            f"audit replication cursor {path.name} is corrupt", code="STATE_INVALID"
        )
    return cur


def _save_cursor(layout: Layout, prefix: str, cur: ReplicationCursor) -> None:
    layout.mirrors_state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(cursor_path(layout, prefix), cur.to_bytes())


def _offset_of(log: Path, lines: int) -> int | None:
    """The byte offset just after line ``lines - 1`` of ``log`` (None if it has fewer)."""
    if lines == 0:
        return 0
    seen = 0
    offset = 0
    with open_regular(log) as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                return None
            offset += len(line)
            seen += 1
            if seen == lines:
                return offset
    return None


def _line_at(log: Path, seq: int) -> bytes | None:
    with open_regular(log) as fh:
        for n, line in enumerate(fh):
            if n == seq:
                return line if line.endswith(b"\n") else None
    return None


# -- the stream ------------------------------------------------------------------------------


def stream_config(names: Names) -> Any:
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    return StreamConfig(
        name=names.audit_stream,
        subjects=[names.audit_subjects],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        duplicate_window=DUPLICATE_WINDOW_S,
        deny_delete=True,
        deny_purge=True,
        description="Night Core audit lines and checkpoints, per node (append-only)",
    )


def mirror_config(names: Names, region: str, source_domain: str) -> Any:
    from nats.js.api import ExternalStream, StorageType, StreamConfig, StreamSource

    return StreamConfig(
        name=names.audit_mirror_stream(region),
        storage=StorageType.FILE,
        mirror=StreamSource(
            name=names.audit_stream, external=ExternalStream(api=f"$JS.{source_domain}.API")
        ),
        deny_delete=True,
        deny_purge=True,
        description=f"mirror of {names.audit_stream} (JetStream domain {source_domain})",
    )


async def ensure_region_mirror(
    js: JetStreamContext, names: Names, region: str, source_domain: str
) -> Any:
    """Create (or open) the region's mirror stream of the audit stream; its StreamInfo."""
    from nats.js.errors import NotFoundError

    try:
        return await js.stream_info(names.audit_mirror_stream(region))
    except NotFoundError:
        return await js.add_stream(mirror_config(names, region, source_domain))


# -- the service inside `nightcore node --mesh` ----------------------------------------------


class AuditReplicationService:
    """Publishes the node's audit lines and checkpoints to the audit stream, in order."""

    name = "audit"

    def __init__(self, agent: MeshAgent) -> None:
        self.agent = agent
        self.node = agent.config.node_name
        self.names = agent.names
        self.layout = agent.ctx.layout
        self.cur = ReplicationCursor()

    def _subject(self, kind: str) -> str:
        return self.names.audit_subject(self.node, kind)

    async def run(self, agent: MeshAgent) -> None:
        assert agent.stopping is not None
        await agent.ensure_stream(stream_config(self.names))
        await self._resume()
        await self._publish_key()
        while not agent.stopping.is_set():
            published = await self._publish_lines()
            await self._publish_checkpoints()
            self._status()
            if published < BATCH_LINES:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(agent.stopping.wait(), timeout=POLL_S)

    async def _resume(self) -> None:
        """Start after the last line the stream holds for this node (or the cursor)."""
        from nats.js.errors import NotFoundError

        js = self.agent.js
        saved = load_cursor(self.layout, self.names.prefix)
        lines = 0
        try:
            last = await js.get_last_msg(self.names.audit_stream, self._subject("line"))
        except NotFoundError:
            last = None
        log = self.layout.audit_log
        if last is not None:
            seq = _header_int(last.headers, SEQ_HEADER)
            mine = _line_at(log, seq) if seq is not None and log.exists() else None
            if seq is not None and mine is not None and mine == last.data:
                lines = seq + 1
            else:
                self.agent.log(
                    f"mesh: warning[MIRROR_ROOT_MISMATCH]: the audit stream's last line for "
                    f"node {self.node} (stream seq {last.seq}) is not this node's line: "
                    f"resuming from the node's cursor ({saved.lines} lines)"
                )
                lines = saved.lines
        offset = _offset_of(log, lines) if log.exists() else (0 if lines == 0 else None)
        if offset is None:
            raise _bad(
                f"the audit stream holds {lines} lines of node {self.node} but the node's log "
                "has fewer: not resuming (run 'nightcore audit verify')",
                code="AUDIT_TRUNCATED",
            )
        checkpoints = set(saved.checkpoints)
        try:
            cp = await js.get_last_msg(self.names.audit_stream, self._subject("checkpoint"))
            size = _header_int(cp.headers, SIZE_HEADER)
            if size is not None:
                checkpoints |= {s for s in _local_checkpoints(self.layout) if s <= size}
        except NotFoundError:
            pass
        self.cur = ReplicationCursor(
            lines=lines,
            offset=offset,
            checkpoints=sorted(s for s in checkpoints if s <= lines),
            key_sha256=saved.key_sha256,
            stream_seq=saved.stream_seq,
            domain=saved.domain,
            node=self.node,
        )
        _save_cursor(self.layout, self.names.prefix, self.cur)

    async def _publish(self, kind: str, data: bytes, msg_id: str, headers: dict[str, str]) -> Any:
        # No ``stream=``: nats-py would add a Nats-Expected-Stream header, which travels with the
        # message into a region's mirror and makes nats-server 2.9 refuse it there ("expected
        # stream does not match"). The acknowledgement names the stream instead.
        ack = await self.agent.js.publish(
            self._subject(kind),
            data,
            timeout=10.0,
            headers={"Nats-Msg-Id": msg_id, **headers},
        )
        if ack.stream != self.names.audit_stream:
            raise _bad(
                f"audit line stored by stream {ack.stream!r}, not {self.names.audit_stream!r}: "
                "another stream claims the audit subjects"
            )
        self.cur.stream_seq = max(self.cur.stream_seq, int(ack.seq))
        if ack.domain:
            self.cur.domain = str(ack.domain)
        return ack

    async def _publish_key(self) -> None:
        pem = read_regular_capped(self.layout.node_pub_path, MAX_PEM_BYTES)
        digest = hashlib.sha256(pem).hexdigest()
        if digest == self.cur.key_sha256:
            return
        await self._publish("key", pem, f"{self.node}.key.{digest[:32]}", {})
        self.cur.key_sha256 = digest
        _save_cursor(self.layout, self.names.prefix, self.cur)

    async def _publish_lines(self) -> int:
        log = self.layout.audit_log
        if not log.exists():
            return 0
        batch: list[bytes] = []
        with open_regular(log) as fh:
            fh.seek(self.cur.offset)
            while len(batch) < BATCH_LINES:
                line = fh.readline(MAX_LINE + 2)
                if not line.endswith(b"\n"):
                    break  # nothing more, or a line still being written
                batch.append(line)
        for line in batch:
            seq = self.cur.lines
            await self._publish("line", line, f"{self.node}.line.{seq}", {SEQ_HEADER: str(seq)})
            self.cur.lines += 1
            self.cur.offset += len(line)
        if batch:
            _save_cursor(self.layout, self.names.prefix, self.cur)
        return len(batch)

    async def _publish_checkpoints(self) -> None:
        from nightcore.audit.note import MAX_NOTE_SIZE

        done = set(self.cur.checkpoints)
        cdir = self.layout.checkpoints_dir
        for size in _local_checkpoints(self.layout):
            if size in done or size > self.cur.lines:
                continue
            note = read_regular_capped(cdir / f"{size}.note", MAX_NOTE_SIZE)
            await self._publish(
                "checkpoint", note, f"{self.node}.checkpoint.{size}", {SIZE_HEADER: str(size)}
            )
            self.cur.checkpoints.append(size)
            _save_cursor(self.layout, self.names.prefix, self.cur)

    def _status(self) -> None:
        local = self.cur.lines + _count_lines(self.layout.audit_log, self.cur.offset)
        self.agent.heartbeat_fields["audit"] = {
            "stream": self.names.audit_stream,
            "lines": local,
            "replicated": self.cur.lines,
            "lag": max(0, local - self.cur.lines),
            "checkpoints": len(self.cur.checkpoints),
        }


@dataclass
class _OneShot:
    """What the service needs of an agent, for :func:`flush` (a connection of its own)."""

    js: Any
    config: MeshConfig
    ctx: NodeContext
    log: Any
    heartbeat_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> Names:
        return self.config.names


FLUSH_CONNECT_S = 2.0


async def _flush(config: MeshConfig, ctx: NodeContext, log: Any) -> int:
    import dataclasses

    from nightcore.mesh.connect import connect

    quick = dataclasses.replace(config, connect_timeout_s=FLUSH_CONNECT_S)
    nc = await connect(quick, client_name=f"nightcore-{config.node_name}-stop", reconnect=False)
    try:
        js = nc.jetstream(domain=config.js_domain) if config.js_domain else nc.jetstream()
        service = AuditReplicationService(_OneShot(js, config, ctx, log))  # type: ignore[arg-type]
        before = load_cursor(ctx.layout, config.prefix).lines
        await service._resume()
        while await service._publish_lines() == BATCH_LINES:
            pass
        await service._publish_checkpoints()
        return max(0, service.cur.lines - before)
    except NightCoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line with a code for the node's log
        from nightcore.mesh.agent import mesh_error

        raise mesh_error(exc, "replicating the last audit lines") from None
    finally:
        with contextlib.suppress(Exception):  # closing a one-shot connection
            await nc.close()


def flush(config: MeshConfig, ctx: NodeContext, log: Any = print) -> int:
    """Publish what the node logged after its mesh agent stopped (its ``node_stop`` line and
    final checkpoint), on a connection of its own; the number of lines published. Called by the
    node at the end of its shutdown; a failure only delays them to the next start."""
    return asyncio.run(_flush(config, ctx, log))


def _count_lines(path: Path, offset: int = 0) -> int:
    """Whole lines of ``path`` after byte ``offset``."""
    if not path.exists():
        return 0
    with open_regular(path) as fh:
        fh.seek(offset)
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def _local_checkpoints(layout: Layout) -> list[int]:
    from nightcore.audit.checkpoint import NOTE_FILE

    cdir = layout.checkpoints_dir
    if not cdir.is_dir():
        return []
    return sorted(
        int(m.group(1)) for p in cdir.iterdir() if (m := NOTE_FILE.fullmatch(p.name)) is not None
    )


def _header_int(headers: dict[str, str] | None, name: str) -> int | None:
    value = (headers or {}).get(name)
    if not isinstance(value, str) or not value.isdigit() or len(value) > 20:
        return None
    return int(value)


# -- `mesh init` and `mesh status` ------------------------------------------------------------


async def init_step(js: JetStreamContext, config: MeshConfig) -> list[str]:
    """``mesh init``'s step (:data:`nightcore.mesh.ops.INIT_STEPS`): the audit stream."""
    from nightcore.mesh.agent import default_replicas, ensure_stream

    await ensure_stream(js, stream_config(config.names), num_replicas=default_replicas(config))
    return [config.names.audit_stream]


async def status_section(nc: Any, js: JetStreamContext, config: MeshConfig) -> dict[str, Any]:
    """``mesh status``'s ``audit`` section (:data:`nightcore.mesh.ops.STATUS_SECTIONS`): per
    node, the lines the audit stream holds, the lines the node's heartbeat says it logged, and
    the lag between them; ``{"exists": false}`` before any node replicated."""
    from nats.js.errors import BucketNotFoundError, NoKeysError, NotFoundError

    names = config.names
    try:
        info = await js.stream_info(
            names.audit_stream, subjects_filter=f"{names.prefix}.audit.*.line"
        )
    except NotFoundError:
        return {"exists": False, "stream": names.audit_stream}
    replicated = {
        subject.split(".")[-2]: int(count) for subject, count in (info.state.subjects or {}).items()
    }
    logged: dict[str, int] = {}
    try:
        kv = await js.key_value(names.nodes_bucket)
        with contextlib.suppress(NoKeysError):
            for key in await kv.keys():
                entry = await kv.get(key)
                try:
                    beat = json.loads((entry.value or b"")[:65536])
                    lines = beat["audit"]["lines"]
                except (ValueError, KeyError, TypeError):
                    continue
                if isinstance(lines, int) and not isinstance(lines, bool) and lines >= 0:
                    logged[key] = lines
    except (BucketNotFoundError, NotFoundError):
        pass
    nodes = {}
    for node in sorted(set(replicated) | set(logged)):
        have, local = replicated.get(node, 0), logged.get(node)
        nodes[node] = {
            "replicated": have,
            "lines": local,
            "lag": None if local is None else max(0, local - have),
        }
    return {
        "exists": True,
        "stream": names.audit_stream,
        "messages": int(info.state.messages),
        "replicas": int(info.config.num_replicas or 1),
        "nodes": nodes,
    }


# -- reading a node's log back from a stream -------------------------------------------------


@dataclass
class StreamCopy:
    """What :func:`read_stream` found (the files are written into ``dest``)."""

    stream: str
    is_mirror: bool
    lines: int = 0
    checkpoints: int = 0
    key: bytes | None = None
    removed: int = 0  # messages deleted or purged from the stream (it never deletes)
    duplicates: int = 0
    source_lag: int | None = None
    warnings: list[str] = field(default_factory=list)


async def _find_stream(js: JetStreamContext, names: Names, domain: str | None) -> Any:
    from nats.js.errors import NotFoundError

    candidates = [names.audit_stream]
    if domain:
        candidates.insert(0, names.audit_mirror_stream(domain))
    for name in candidates:
        try:
            return await js.stream_info(name)
        except NotFoundError:
            continue
    # A region's mirror under another name: the one stream of this prefix that mirrors ours.
    found = [
        si
        for si in await js.streams_info()
        if si.config.mirror is not None and si.config.mirror.name == names.audit_stream
    ]
    if len(found) == 1:
        return found[0]
    raise _bad(
        f"no audit stream {names.audit_stream} (nor one mirror of it) on that server"
        + (f" in JetStream domain {domain}" if domain else ""),
        code="MIRROR_NOT_FOUND",
    )


async def read_stream(
    config: MeshConfig, node: str, dest: Path, ack: Acknowledged | None = None
) -> StreamCopy:
    """Rebuild node ``node``'s audit directory from the audit stream (or a region's mirror of
    it) into ``dest``; record in ``ack`` what the stream itself shows it once held."""
    from nightcore.mesh.connect import connect

    names = config.names
    nc = await connect(config, client_name=f"nightcore-audit-verify-{node}", reconnect=False)
    try:
        js = nc.jetstream(domain=config.js_domain) if config.js_domain else nc.jetstream()
        try:
            info = await _find_stream(js, names, config.js_domain)
            return await _read(js, info, names, node, dest, ack)
        except NightCoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line with a code, never a traceback
            from nightcore.mesh.agent import mesh_error

            raise mesh_error(exc, "reading the audit stream") from None
    finally:
        with contextlib.suppress(Exception):  # closing a read-only connection
            await nc.close()


async def _read(
    js: JetStreamContext,
    info: Any,
    names: Names,
    node: str,
    dest: Path,
    ack: Acknowledged | None,
) -> StreamCopy:
    from nats.js.api import DeliverPolicy

    stream = info.config.name
    copy = StreamCopy(stream=stream, is_mirror=info.config.mirror is not None)
    state = info.state
    copy.removed = int(state.num_deleted or 0) + max(0, int(state.first_seq or 1) - 1)
    if copy.is_mirror and info.mirror is not None:
        copy.source_lag = int(info.mirror.lag or 0)
    prefix = names.audit_subject(node)
    (dest / "checkpoints").mkdir(parents=True, exist_ok=True)
    held: dict[int, bytes] = {}
    checkpoints: dict[int, bytes] = {}
    log = (dest / "audit.jsonl").open("wb")
    try:
        info_n = await js.stream_info(stream, subjects_filter=f"{prefix}.>")
        expected = sum((info_n.state.subjects or {}).values())
        if expected:
            sub = await js.subscribe(
                f"{prefix}.>",
                stream=stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
            try:
                seen = 0
                while seen < expected:
                    msg = await sub.next_msg(timeout=READ_IDLE_S)
                    seen += 1
                    kind = msg.subject[len(prefix) + 1 :]
                    if kind == "line":
                        seq = _header_int(msg.headers, SEQ_HEADER)
                        if seq is not None and held.get(seq) == msg.data:
                            copy.duplicates += 1  # re-published after a lost ack: same bytes
                            continue
                        if seq is not None:
                            held[seq] = msg.data
                        log.write(msg.data if msg.data.endswith(b"\n") else msg.data + b"\n")
                        copy.lines += 1
                    elif kind == "checkpoint":
                        size = _header_int(msg.headers, SIZE_HEADER)
                        if size is not None:
                            checkpoints[size] = msg.data
                    elif kind == "key":
                        copy.key = msg.data
                    if msg.metadata.num_pending == 0:
                        break
            finally:
                with contextlib.suppress(Exception):  # an ephemeral consumer
                    await sub.unsubscribe()
    finally:
        log.close()
    for size, note in checkpoints.items():
        (dest / "checkpoints" / f"{size}.note").write_bytes(note)
    if checkpoints:
        (dest / "audit.tail").write_bytes(checkpoints[max(checkpoints)])
    copy.checkpoints = len(checkpoints)
    if ack is not None:
        # The stream's own record: the checkpoints it delivered name sizes it held lines for.
        ack.claim_checkpoints(checkpoints, f"stream {stream}")
        if checkpoints:
            ack.claim_lines(max(checkpoints), f"its checkpoint messages in stream {stream}")
    return copy


def verify_stream(
    ctx: NodeContext | None,
    servers: str,
    *,
    prefix: str | None = None,
    node: str | None = None,
    domain: str | None = None,
    creds: str | None = None,
) -> VerifyReport:
    """``audit verify --source nats://...``: node ``node``'s log rebuilt from the audit stream
    (or a region's mirror of it) and verified; in the node's own workspace, anchored to its
    checkpoints and to what the stream acknowledged (the replication cursor)."""
    from nightcore.audit.anchor import Acknowledged, anchor_to_node
    from nightcore.audit.verify import verify_log
    from nightcore.mesh.config import MeshConfig
    from nightcore.mesh.names import DEFAULT_PREFIX

    cur = load_cursor(ctx.layout, prefix or DEFAULT_PREFIX) if ctx is not None else None
    # This workspace's node: the name it replicates under (its cursor), else its config name.
    own_name = (cur.node or ctx.config.node_name) if ctx is not None and cur is not None else None
    node = node or own_name
    if not node:
        raise _bad("--node NAME is needed outside the node's workspace", code="USAGE")
    config = MeshConfig.from_options(
        servers, prefix=prefix, node_name=node, creds=creds, js_domain=domain
    )
    own_pem = ctx.node_public_pem() if ctx is not None else None
    ack = Acknowledged()
    with tempfile.TemporaryDirectory(prefix="nightcore-stream-") as tmp:
        dest = Path(tmp)
        copy = asyncio.run(read_stream(config, node, dest, ack))
        anchored = own_pem is not None and (node == own_name or copy.key == own_pem)
        if anchored:
            assert ctx is not None and own_pem is not None and cur is not None
            pem = own_pem
            if copy.stream == config.names.audit_stream and not copy.is_mirror:
                # The stream the node publishes to: it acknowledged what the cursor says.
                ack.claim_lines(cur.lines, f"the node's replication cursor for {copy.stream}")
                ack.claim_checkpoints(
                    cur.checkpoints, f"the node's replication cursor for {copy.stream}"
                )
        elif copy.key is not None:
            pem = copy.key
        else:
            raise _bad(
                f"stream {copy.stream} holds no audit lines or key of node {node}",
                code="MIRROR_NOT_FOUND",
            )
        (dest / "node.pub.pem").write_bytes(pem)
        report = verify_log(dest, pem)
        if not anchored:
            report.warnings.append(
                f"node {node}'s key was taken from the stream itself and nothing anchors the "
                "stream to the node: run this in the node's workspace to hold it to the node's "
                "own checkpoints"
            )
        if copy.removed and report.ok:
            report.anchor = {"status": "tampered"}
            report.fail(
                "MIRROR_TRUNCATED",
                f"stream {copy.stream} records {copy.removed} deleted or purged message(s); "
                "the audit stream never deletes, so they were removed (tampering)",
                None,
            )
        if copy.duplicates:
            report.warnings.append(
                f"{copy.duplicates} line(s) were published twice with the same bytes "
                "(a re-publication after a lost acknowledgement); counted once"
            )
        if copy.source_lag:
            report.warnings.append(
                f"mirror {copy.stream} is {copy.source_lag} message(s) behind its source"
            )
        if anchored and report.ok:
            assert ctx is not None
            report = anchor_to_node(report, dest, ctx.layout.audit_dir, pem, ack)
        return report


async def _region_mirror(
    servers: str, prefix: str | None, region: str, source_domain: str, creds: str | None
) -> dict[str, Any]:
    from nightcore.mesh.config import MeshConfig
    from nightcore.mesh.connect import connect

    config = MeshConfig.from_options(servers, prefix=prefix, creds=creds, js_domain=region)
    nc = await connect(config, client_name="nightcore-audit-region", reconnect=False)
    try:
        js = nc.jetstream(domain=region)
        try:
            info = await ensure_region_mirror(js, config.names, region, source_domain)
        except Exception as exc:  # noqa: BLE001 - one line with a code
            from nightcore.mesh.agent import mesh_error

            raise mesh_error(exc, "creating the region's audit mirror") from None
        return {
            "stream": info.config.name,
            "region": region,
            "source": config.names.audit_stream,
            "source_domain": source_domain,
            "messages": int(info.state.messages),
            "lag": int(info.mirror.lag) if info.mirror is not None else None,
        }
    finally:
        with contextlib.suppress(Exception):  # closing a one-shot connection
            await nc.close()


def create_region_mirror(
    servers: str,
    *,
    region: str,
    source_domain: str,
    prefix: str | None = None,
    creds: str | None = None,
) -> dict[str, Any]:
    """``nightcore audit mirror region``: the mirror stream in JetStream domain ``region``."""
    return asyncio.run(_region_mirror(servers, prefix, region, source_domain, creds))
