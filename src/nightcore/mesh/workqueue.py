"""Work across nodes: the JetStream work queue, the node's work service, and the client side.

Streams (names from :class:`~nightcore.mesh.names.Names`; docs/mesh.md, "Work queue"):

- **work** (``<prefix>-work``, subjects ``<prefix>.work.>``): ``WorkQueue`` retention — a request
  is removed once a node acks it. Requests go to ``<prefix>.work.req`` with the request id as
  ``Nats-Msg-Id`` (publish dedup inside :data:`DUPLICATE_WINDOW_S`). ``max_msg_size``
  :data:`~nightcore.mesh.work.STREAM_MAX_MSG_BYTES`: anything bigger is refused at publish.
- **results** (``<prefix>-results``, subjects ``<prefix>.results.<request id>``): one subject per
  request, ``max_msgs_per_subject=1`` with ``discard=new`` per subject — the server itself
  refuses a second result for a request id, forever (not only inside a dedup window). A result
  is published with ``Nats-Msg-Id`` = request id. "Last message on subject" is the idempotency
  record: a node looks it up before running.

One durable pull consumer (``workers``) on the work stream is shared by every node (a work-queue
stream takes one unfiltered consumer). Explicit ack, ``ack_wait`` :data:`DEFAULT_ACK_WAIT_S`,
``max_deliver`` :data:`DEFAULT_MAX_DELIVER`; a node working on a request sends ``+WPI``
(in-progress) every ``ack_wait / 3``, so a long run is not redelivered while its node lives, and
a crashed node's requests are redelivered ``ack_wait`` after its last in-progress.

Per delivered request, a node: parses it strictly (refusal: an audited ``mesh_work_refused``,
a result with the code, ``term``); looks up an existing result (found: ``mesh_work_skipped``,
ack, never run again); audits ``mesh_work_start``; runs the tenants through its worker pool
(each verified as always: a tampered package gets its verification code); publishes the result
(runs, node, attestations); audits ``mesh_work_result`` (``recorded`` true when its result is
the one the results stream holds); acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nightcore.errors import NightCoreError
from nightcore.fsio import read_regular_capped
from nightcore.mesh import work
from nightcore.mesh.packages import PackageSync

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from nightcore.mesh.agent import MeshAgent
    from nightcore.mesh.config import MeshConfig
    from nightcore.mesh.names import Names

CONSUMER = "workers"
DEFAULT_ACK_WAIT_S = 15.0
"""How long a delivered request may go without an ack or in-progress before JetStream gives it
to another node. Nodes send in-progress every third of it while they run a request, so this is
the delay before a crashed node's work is redelivered, not a limit on run time."""
DEFAULT_MAX_DELIVER = 5
"""Deliveries of one request before JetStream stops redelivering it: a request that takes its
node down every time (a poison message) costs at most this many node crashes. It then stays in
the work stream (``mesh queue`` counts it) and has no result."""
MAX_ACK_PENDING = 1024
DUPLICATE_WINDOW_S = 120.0
RESULTS_MAX_BYTES = 8 << 30
RESULTS_MAX_AGE_S = 30 * 86400.0
"""Results are kept 30 days: far longer than any request can wait for a redelivery
(``max_deliver`` × ``ack_wait``), so the idempotency lookup never misses a live request, and
old results make room (with ``discard: new`` a full stream would refuse every new result)."""
WORK_MAX_MSGS = 1_000_000
MAX_ATTESTATION_BYTES = 256 * 1024
PUBLISH_RETRY_S = 20.0
FETCH_TIMEOUT_S = 1.0
SETTINGS_REFRESH_S = 30.0
PER_WORKER = 2
"""Requests a node holds per worker: while one runs, others are audited, looked up and
published (each holds in-progress, so holding them costs other nodes nothing but balance)."""
ERR_PER_SUBJECT_LIMIT = 10077  # JetStream: "maximum messages per subject exceeded"


@dataclass(frozen=True)
class QueueSettings:
    ack_wait_s: float = DEFAULT_ACK_WAIT_S
    max_deliver: int = DEFAULT_MAX_DELIVER

    def __post_init__(self) -> None:
        if not 0.5 <= self.ack_wait_s <= 3600:
            raise NightCoreError("--ack-wait must be between 0.5 and 3600 seconds", code="USAGE")
        if not 1 <= self.max_deliver <= 100:
            raise NightCoreError("--max-deliver must be between 1 and 100", code="USAGE")


def _mesh_error(exc: BaseException, doing: str) -> NightCoreError:
    from nightcore.mesh.agent import mesh_error

    return mesh_error(exc, doing)


# -- streams and the consumer -----------------------------------------------------------------
def work_stream_config(names: Names) -> Any:
    from nats.js import api

    return api.StreamConfig(
        name=names.work_stream,
        subjects=[names.work_subjects],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        max_msgs=WORK_MAX_MSGS,
        discard=api.DiscardPolicy.NEW,  # a full queue refuses new work (backpressure)
        max_msg_size=work.STREAM_MAX_MSG_BYTES,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


def results_stream_config(names: Names) -> Any:
    from nats.js import api

    return api.StreamConfig(
        name=names.results_stream,
        subjects=[names.results_subjects],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_msgs_per_subject=1,
        discard=api.DiscardPolicy.NEW,
        discard_new_per_subject=True,  # the server refuses a second result for a request id
        max_bytes=RESULTS_MAX_BYTES,
        max_age=RESULTS_MAX_AGE_S,
        max_msg_size=work.MAX_RESULT_BYTES + 4096,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


def consumer_config(settings: QueueSettings) -> Any:
    from nats.js import api

    return api.ConsumerConfig(
        name=CONSUMER,
        durable_name=CONSUMER,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
        max_ack_pending=MAX_ACK_PENDING,
    )


async def ensure_queue(
    js: JetStreamContext,
    names: Names,
    replicas: int,
    settings: QueueSettings | None = None,
) -> Any:
    """Create or open both streams and the consumer; with ``settings``, (re)configure the
    consumer to them. The consumer's info."""
    from nats.js.errors import NotFoundError

    from nightcore.mesh.agent import ensure_stream

    await ensure_stream(js, work_stream_config(names), num_replicas=replicas)
    await ensure_stream(js, results_stream_config(names), num_replicas=replicas)
    if settings is None:
        try:
            return await js.consumer_info(names.work_stream, CONSUMER)
        except NotFoundError:
            settings = QueueSettings()
    return await js.add_consumer(names.work_stream, consumer_config(settings))


# -- results ------------------------------------------------------------------------------------
async def lookup_result(
    js: JetStreamContext, names: Names, request_id: str
) -> dict[str, Any] | None:
    """The result recorded for ``request_id`` (parsed) or None; a result that does not parse
    counts as recorded (``{"code": "MESH_WORK_RESULT_INVALID", ...}``): it is never run again."""
    from nats.js.errors import NotFoundError

    try:
        raw = await js.get_last_msg(names.results_stream, names.results_subject(request_id))
    except NotFoundError:
        return None
    try:
        out = work.parse_result(raw.data or b"")
    except NightCoreError as exc:
        out = {"request_id": request_id, "node": "", "code": exc.code, "runs": []}
    out["_seq"] = raw.seq
    return out


async def publish_result(
    js: JetStreamContext, names: Names, result: work.WorkResult
) -> tuple[bool, int | None, str]:
    """Publish ``result`` once: (recorded, results-stream seq, recording node). ``recorded`` is
    true when the stream holds this node's result for the request (now or from an earlier
    attempt of this node), false when another node's result was there first."""
    from nats.js.errors import APIError

    rid = result.request_id
    data = result.encode()
    try:
        ack = await js.publish(
            names.results_subject(rid),
            data,
            headers={"Nats-Msg-Id": rid},
            stream=names.results_stream,
        )
        if not ack.duplicate:
            return True, ack.seq, result.node
    except APIError as exc:
        if exc.err_code != ERR_PER_SUBJECT_LIMIT:
            raise
    existing = await lookup_result(js, names, rid)
    if existing is None:  # a duplicate inside the dedup window whose message is gone
        return False, None, ""
    ours = existing.get("node") == result.node and _run_ids(existing) == _run_ids(result.to_dict())
    return ours, existing.get("_seq"), str(existing.get("node", ""))


def _run_ids(result: dict[str, Any]) -> list[Any]:
    return [r.get("run_id") for r in result.get("runs", []) if isinstance(r, dict)]


# -- the node's work service --------------------------------------------------------------------
class WorkService:
    """Pulls work requests while the node is admitted and not cordoned (a mesh service)."""

    name = "work"

    def __init__(self, agent: MeshAgent) -> None:
        self.agent = agent
        node = agent.node
        workers = int(getattr(node, "workers", 1) or 1)
        self.concurrency = PER_WORKER * workers  # overlap audit and publish with runs
        self.ack_wait_s = DEFAULT_ACK_WAIT_S
        self.taken = 0
        self.skipped = 0
        self.refused = 0
        self.running = 0
        self.state = "starting"
        self._inflight: set[asyncio.Task[None]] = set()
        self._reconciled = False
        self.packages = PackageSync(agent)

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, agent: MeshAgent) -> None:
        from nats.errors import TimeoutError as NatsTimeout

        assert agent.stopping is not None
        if agent.node is None:
            self.state = "no node"
            return
        await agent.wait_admitted()
        if agent.stopping.is_set():
            return
        info = await ensure_queue(agent.js, agent.names, agent.replicas)
        self.ack_wait_s = float(info.config.ack_wait or DEFAULT_ACK_WAIT_S)
        if not self._reconciled:
            await self._reconcile()
            self._reconciled = True
        sub = await agent.js.pull_subscribe_bind(durable=CONSUMER, stream=agent.names.work_stream)
        refresh_at = time.monotonic() + SETTINGS_REFRESH_S
        try:
            while not agent.stopping.is_set():
                if not agent.admitted.is_set():
                    self.state = "catching up"
                    self._publish_fields()
                    await agent.wait_admitted()
                    continue
                if agent.node_cordoned():
                    self.state = "cordoned"
                    self._publish_fields()
                    await _wait(agent.stopping, 0.25)
                    continue
                self.state = "pulling"
                self._publish_fields()
                if time.monotonic() > refresh_at:  # an operator may change ack_wait
                    refresh_at = time.monotonic() + SETTINGS_REFRESH_S
                    info = await agent.js.consumer_info(agent.names.work_stream, CONSUMER)
                    self.ack_wait_s = float(info.config.ack_wait or DEFAULT_ACK_WAIT_S)
                free = self.concurrency - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(free, timeout=FETCH_TIMEOUT_S)
                except NatsTimeout:
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._handle_safely(msg))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
        finally:
            self.state = "stopping"
            if self._inflight:
                await asyncio.wait(set(self._inflight), timeout=30)
            with contextlib.suppress(Exception):  # closing: the connection may be gone already
                await sub.unsubscribe()

    async def _reconcile(self) -> None:
        """Close what a previous process of this node left open: a ``mesh_work_start`` without
        its ``mesh_work_result`` (the node died between the two). Each gets its closing line
        from the results stream, before any new work: ``mesh_work_result`` with
        ``recovered: true`` (``recorded`` when the stream holds this node's result), or
        ``mesh_work_abandoned`` when there is no result yet (the request is redelivered)."""
        audit = self.agent.ctx.audit()
        open_ = await asyncio.to_thread(open_requests, audit.iter_lines())
        for rid, start in open_.items():
            existing = await lookup_result(self.agent.js, self.agent.names, rid)
            if existing is None:
                await self._audit(
                    "mesh_work_abandoned",
                    {
                        "request_id": rid,
                        "start_seq": start["seq"],
                        "reason": "the node stopped before publishing a result; the request "
                        "is redelivered",
                    },
                )
                continue
            by = str(existing.get("node", ""))
            await self._audit(
                "mesh_work_result",
                {
                    "request_id": rid,
                    "code": str(existing.get("code", "")),
                    "run_ids": _run_ids(existing) if by == self.agent.config.node_name else [],
                    "delivery": start["delivery"],
                    "recorded": by == self.agent.config.node_name,
                    "recorded_by": by,
                    "results_seq": existing.get("_seq"),
                    "recovered": True,
                },
            )
        if open_:
            self.agent.log(f"mesh: closed {len(open_)} work request(s) a previous node left open")

    def _publish_fields(self) -> None:
        self.agent.heartbeat_fields["work"] = {
            "state": self.state,
            "running": self.running,
            "taken": self.taken,
            "skipped": self.skipped,
            "refused": self.refused,
        }

    async def _handle_safely(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        except Exception as exc:  # noqa: BLE001 - logged with its code; JetStream redelivers
            err = _mesh_error(exc, "work request")
            self.agent.last_error = f"{err.code}: {err.message}"
            self.agent.log(f"mesh: warning[{err.code}]: {err.message} (left to redelivery)")

    # -- one request ----------------------------------------------------------------------------
    async def _handle(self, msg: Msg) -> None:
        agent = self.agent
        meta = msg.metadata
        delivery = int(meta.num_delivered or 1)
        seq = int(meta.sequence.stream) if meta.sequence else 0
        header_id = (msg.headers or {}).get("Nats-Msg-Id")
        if agent.node_cordoned():  # cordoned since the fetch: let another node take it now
            await msg.nak()
            return
        try:
            req = work.parse_request(msg.data)
            if header_id != req.request_id:
                raise NightCoreError(
                    "the Nats-Msg-Id header is not the request id", code="MESH_WORK_REQUEST_INVALID"
                )
        except NightCoreError as exc:
            await self._refuse(msg, work.request_id_hint(header_id, seq), exc, delivery, seq)
            return
        rid = req.request_id
        existing = await lookup_result(agent.js, agent.names, rid)
        if existing is not None:
            self.skipped += 1
            await self._audit(
                "mesh_work_skipped",
                {
                    "request_id": rid,
                    "delivery": delivery,
                    "recorded_by": str(existing.get("node", "")),
                    "code": str(existing.get("code", "")),
                },
            )
            await msg.ack()
            return
        self.taken += 1
        self.running += 1
        keepalive = asyncio.create_task(self._keep_alive(msg))
        try:
            await self._audit(
                "mesh_work_start",
                {"request_id": rid, "tenants": list(req.tenants), "delivery": delivery},
            )
            try:
                refused = await self.packages.prepare(list(req.tenants))
                result = await asyncio.to_thread(self._run, req, delivery, refused)
                recorded, res_seq, by = await self._publish(result)
            except Exception as exc:
                # No result: the request is redelivered after ack_wait. Close the start line
                # now (a later delivery, here or elsewhere, writes its own).
                err = _mesh_error(exc, "work request")
                await self._audit(
                    "mesh_work_abandoned",
                    {"request_id": rid, "code": err.code, "reason": err.message[:500]},
                )
                raise
            await self._audit(
                "mesh_work_result",
                {
                    "request_id": rid,
                    "code": result.code,
                    "run_ids": [r.get("run_id") for r in result.runs],
                    "delivery": delivery,
                    "recorded": recorded,
                    "recorded_by": by,
                    "results_seq": res_seq,
                },
            )
            await msg.ack()
        finally:
            keepalive.cancel()
            self.running -= 1
            self._publish_fields()

    async def _keep_alive(self, msg: Msg) -> None:
        """+WPI every third of ack_wait while this node works on the request."""
        while True:
            await asyncio.sleep(self.ack_wait_s / 3)
            with contextlib.suppress(Exception):  # disconnected: redelivery is then correct
                await msg.in_progress()

    async def _refuse(
        self, msg: Msg, rid: str, exc: NightCoreError, delivery: int, seq: int
    ) -> None:
        agent = self.agent
        self.refused += 1
        existing = await lookup_result(agent.js, agent.names, rid)
        if existing is None:
            result = work.refusal(
                rid, agent.config.node_name, self._node_key_id(), exc.code, exc.message
            )
            result.delivery = delivery
            recorded, res_seq, by = await self._publish(result)
        else:
            recorded, res_seq, by = False, existing.get("_seq"), str(existing.get("node", ""))
        await self._audit(
            "mesh_work_refused",
            {
                "request_id": rid,
                "code": exc.code,
                "reason": exc.message[:500],
                "bytes": len(msg.data),
                "stream_seq": seq,
                "delivery": delivery,
                "recorded": recorded,
                "recorded_by": by,
                "results_seq": res_seq,
            },
        )
        await msg.term()

    async def _publish(self, result: work.WorkResult) -> tuple[bool, int | None, str]:
        """Publish, retrying through a short outage (a cluster leader change takes seconds);
        the request stays unacked meanwhile (its in-progress keeps it ours while connected)."""
        deadline = time.monotonic() + PUBLISH_RETRY_S
        delay = 0.1
        while True:
            try:
                return await publish_result(self.agent.js, self.agent.names, result)
            except Exception as exc:
                if _mesh_error(exc, "publishing a result").code != "MESH_UNREACHABLE":
                    raise
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    def _node_key_id(self) -> str:
        try:
            return str(self.agent.ctx.node_key_id())
        except NightCoreError:
            return ""

    async def _audit(self, event: str, data: dict[str, Any]) -> None:
        audit = self.agent.ctx.audit()
        await asyncio.to_thread(audit.append, event, data)

    # -- the run (in a thread: the pool blocks) ---------------------------------------------------
    def _run(
        self, req: work.WorkRequest, delivery: int, refused: dict[str, tuple[str, str]]
    ) -> work.WorkResult:
        """Run the request's tenants on the pool; a tenant whose object-store package was
        refused, or that is not deployed here, gets that code without running."""
        agent = self.agent
        node = agent.node
        assert node is not None
        layout = agent.ctx.layout
        present = [t for t in req.tenants if t not in refused and layout.tenant_dir(t).is_dir()]
        runs_by_tenant: dict[str, dict[str, Any]] = {}
        if present:
            report = node.run_tenants(present, checkpoint=False)
            for run in report.get("runs", []):
                runs_by_tenant[str(run.get("tenant"))] = run
        runs = [
            runs_by_tenant.get(t)
            or (_not_run(t, *refused[t]) if t in refused else _not_run(t, *_NOT_FOUND))
            for t in req.tenants
        ]
        return work.WorkResult(
            request_id=req.request_id,
            node=agent.config.node_name,
            node_key_id=self._node_key_id(),
            code=work.result_code(runs),
            reason=next((str(r.get("reason", "")) for r in runs if r.get("code") != "OK"), ""),
            runs=runs,
            attestations=_attestations(agent, runs),
            delivery=delivery,
        )


def open_requests(lines: Iterable[bytes]) -> dict[str, dict[str, Any]]:
    """``request_id -> {seq, delivery}`` of every ``mesh_work_start`` without a closing
    ``mesh_work_result`` or ``mesh_work_abandoned`` after it."""
    import json

    started: dict[str, dict[str, Any]] = {}
    for raw in lines:
        if b'"mesh_work_' not in raw:  # cheap filter first: most lines are not ours
            continue
        rec = json.loads(raw)
        event = rec.get("event")
        rid = (rec.get("data") or {}).get("request_id")
        if not isinstance(rid, str):
            continue
        if event == "mesh_work_start":
            started[rid] = {"seq": rec.get("seq"), "delivery": rec["data"].get("delivery")}
        elif event in ("mesh_work_result", "mesh_work_abandoned"):
            started.pop(rid, None)
    return started


_NOT_FOUND = ("TENANT_NOT_FOUND", "the tenant is not deployed on this node (modules/)")


def _not_run(tenant: str, code: str, reason: str) -> dict[str, Any]:
    """A run object for a tenant that was not run (the shape of a denied run)."""
    return {
        "tenant": tenant,
        "code": code,
        "reason": reason,
        "exit_code": None,
        "fuel_used": None,
        "wall_ms": None,
        "memory_bytes": None,
        "output_bytes": None,
        "key_id": "",
        "module_sha256": "",
        "run_id": None,
        "audit_seq": None,
    }


def _attestations(agent: MeshAgent, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The DSSE attestation each run that ran produced (its node signed it)."""
    from nightcore.canonical import parse_json
    from nightcore.evidence.attestation import ATTESTATION_FILE

    out = []
    for run in runs:
        run_id = run.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            continue
        path = agent.ctx.layout.run_dir(run_id) / ATTESTATION_FILE
        try:
            data = read_regular_capped(path, MAX_ATTESTATION_BYTES)
        except OSError:
            continue  # not written (the runner audited attestation_failed), or not usable
        if len(data) > MAX_ATTESTATION_BYTES:
            continue
        try:
            envelope = parse_json(data, max_bytes=MAX_ATTESTATION_BYTES, what="an attestation")
        except NightCoreError:
            continue
        out.append({"run_id": run_id, "envelope": envelope})
    return out


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=timeout)


# -- the client side: submit, runs, queue ---------------------------------------------------------
async def _client(config: MeshConfig) -> Any:
    from nightcore.mesh.connect import connect

    return await connect(config, client_name="nightcore-mesh-cli", reconnect=False)


def _js(nc: Any, config: MeshConfig) -> JetStreamContext:
    js: JetStreamContext = (
        nc.jetstream(domain=config.js_domain) if config.js_domain else nc.jetstream()
    )
    return js


async def submit_async(
    config: MeshConfig, tenants: list[str], count: int, *, wait_s: float | None = None
) -> dict[str, Any]:
    from nightcore.mesh.agent import default_replicas

    if not 1 <= count <= 100_000:
        raise NightCoreError("--count must be between 1 and 100000", code="USAGE")
    requests = [work.new_request(tenants) for _ in range(count)]
    nc = await _client(config)
    try:
        js = _js(nc, config)
        names = config.names
        try:
            await ensure_queue(js, names, default_replicas(config))
            subject = names.work_subject("req")
            acks = []
            for i in range(0, count, 256):  # bounded concurrency: 256 publishes in flight
                chunk = requests[i : i + 256]
                acks += await asyncio.gather(
                    *(
                        js.publish(
                            subject,
                            r.encode(),
                            headers={"Nats-Msg-Id": r.request_id},
                            stream=names.work_stream,
                        )
                        for r in chunk
                    )
                )
        except NightCoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - any nats error: one coded line
            raise _mesh_error(exc, "submitting work") from None
        out: dict[str, Any] = {
            "stream": names.work_stream,
            "tenants": list(tenants),
            "count": count,
            "request_ids": [r.request_id for r in requests],
            "duplicates": sum(1 for a in acks if a.duplicate),
        }
        if wait_s is not None:
            out["results"] = await _wait_results(js, names, out["request_ids"], wait_s)
        return out
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def _wait_results(
    js: JetStreamContext, names: Names, ids: list[str], wait_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    pending = set(ids)
    codes: dict[str, int] = {}
    last_seen = -1
    while pending and time.monotonic() < deadline:
        info = await js.stream_info(names.results_stream)
        last = int(info.state.last_seq or 0)
        if last == last_seen:  # nothing new on the results stream: no lookups
            await asyncio.sleep(0.2)  # polling the results stream, with the caller's deadline
            continue
        last_seen = last
        for rid in list(pending):
            found = await lookup_result(js, names, rid)
            if found is not None:
                pending.discard(rid)
                codes[str(found.get("code"))] = codes.get(str(found.get("code")), 0) + 1
        if pending:
            await asyncio.sleep(0.2)  # polling the results stream, with the caller's deadline
    return {"done": len(ids) - len(pending), "pending": sorted(pending), "codes": codes}


async def runs_async(config: MeshConfig, limit: int) -> dict[str, Any]:
    """The last ``limit`` results (newest last), one row per run."""
    from nats.js.errors import NotFoundError

    if not 1 <= limit <= 100_000:
        raise NightCoreError("--limit must be between 1 and 100000", code="USAGE")
    nc = await _client(config)
    try:
        js = _js(nc, config)
        names = config.names
        try:
            try:
                info = await js.stream_info(names.results_stream)
            except NotFoundError:
                return {"results": 0, "rows": []}
            last = int(info.state.last_seq or 0)
            first = max(int(info.state.first_seq or 1), last - limit + 1)
            rows: list[dict[str, Any]] = []
            for seq in range(first, last + 1):
                try:
                    raw = await js.get_msg(names.results_stream, seq=seq)
                except NotFoundError:
                    continue
                try:
                    parsed = work.parse_result(raw.data or b"")
                except NightCoreError as exc:
                    subject = str(raw.subject or "")
                    rows.append(_invalid_row(subject.rpartition(".")[2], exc))
                    continue
                rows += work.result_rows(parsed)
        except NightCoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - any nats error: one coded line
            raise _mesh_error(exc, "reading results") from None
        return {"results": int(info.state.messages or 0), "rows": rows}
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def _invalid_row(request_id: str, exc: NightCoreError) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "node": None,
        "tenant": None,
        "code": exc.code,
        "reason": exc.message,
        "run_id": None,
        "exit_code": None,
        "fuel_used": None,
        "wall_ms": None,
    }


async def queue_depth(js: JetStreamContext, names: Names) -> dict[str, Any] | None:
    """Requests waiting, delivered but unacked, redelivered; None when there is no queue yet."""
    from nats.js.errors import NotFoundError

    try:
        info = await js.consumer_info(names.work_stream, CONSUMER)
        stream = await js.stream_info(names.work_stream)
    except NotFoundError:
        return None
    return {
        "waiting": int(info.num_pending or 0),
        "in_flight": int(info.num_ack_pending or 0),
        "redelivered": int(info.num_redelivered or 0),
        "stored": int(stream.state.messages or 0),
        "ack_wait_s": float(info.config.ack_wait or 0),
        "max_deliver": int(info.config.max_deliver or 0),
    }


async def queue_async(config: MeshConfig, settings: QueueSettings | None) -> dict[str, Any]:
    """``mesh queue``: create or open the queue (reconfigure the consumer with ``settings``);
    its configuration and depth."""
    from nightcore.mesh.agent import default_replicas

    nc = await _client(config)
    try:
        js = _js(nc, config)
        try:
            await ensure_queue(js, config.names, default_replicas(config), settings)
            depth = await queue_depth(js, config.names)
        except NightCoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - any nats error: one coded line
            raise _mesh_error(exc, "configuring the work queue") from None
        return {"stream": config.names.work_stream, "consumer": CONSUMER, **(depth or {})}
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def submit(
    config: MeshConfig, tenants: list[str], count: int = 1, *, wait_s: float | None = None
) -> dict[str, Any]:
    """``nightcore mesh submit``: put ``count`` requests to run ``tenants`` on the queue."""
    return asyncio.run(submit_async(config, tenants, count, wait_s=wait_s))


def runs(config: MeshConfig, limit: int = 50) -> dict[str, Any]:
    """``nightcore mesh runs``: the last results, one row per run."""
    return asyncio.run(runs_async(config, limit))


def queue(config: MeshConfig, settings: QueueSettings | None = None) -> dict[str, Any]:
    """``nightcore mesh queue``: the queue's configuration and depth."""
    return asyncio.run(queue_async(config, settings))


async def status_section(nc: Any, js: JetStreamContext, config: MeshConfig) -> dict[str, Any]:
    """``mesh status``'s ``work_queue`` section (:data:`nightcore.mesh.ops.STATUS_SECTIONS`):
    the queue's depth and consumer settings, ``{"exists": false}`` before any work."""
    depth = await queue_depth(js, config.names)
    if depth is None:
        return {"exists": False}
    return {"exists": True, **depth}


async def init_step(js: JetStreamContext, config: MeshConfig) -> list[str]:
    """``mesh init``'s step (:data:`nightcore.mesh.ops.INIT_STEPS`): the work and results
    streams, the shared consumer (default settings unless it exists), the packages store."""
    from nightcore.mesh.agent import default_replicas
    from nightcore.mesh.packages import open_store

    await ensure_queue(js, config.names, default_replicas(config))
    names = config.names
    await open_store(js, names.packages_store, default_replicas(config))
    return [
        names.work_stream,
        names.results_stream,
        f"{names.work_stream}/{CONSUMER}",
        names.packages_store,
    ]
