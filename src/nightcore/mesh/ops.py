"""``nightcore mesh``: publish signed trust documents, and read the mesh's status.

Publishing needs a workspace whose registry trusts the signing maintainer key (the operator's,
or any node's): the document is built there and signed with the maintainer key, then
published to the trust stream with an expected-last-sequence condition (two publishers racing
for one version: the second gets MESH_PUBLISH_CONFLICT and runs the command again). The
publish is audited in that workspace (``mesh_trust_published``). The nodes apply it
themselves, each after its own verification (:mod:`nightcore.mesh.trust`).

``status`` reads the nodes' heartbeats, the trust stream, and every section of
:data:`STATUS_SECTIONS` (the work queue and audit replication add theirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nightcore.errors import NightCoreError, UsageError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from nightcore.context import NodeContext
    from nightcore.mesh.config import MeshConfig
    from nightcore.trust.registry import RevocationList

# More sections of `mesh status` ("module:function"; each `async def f(nc, js, config) ->
# dict` of plain data, shown under the function's key). Helpers add theirs here.
STATUS_SECTIONS: dict[str, str] = {
    "work_queue": "nightcore.mesh.workqueue:status_section",
    "audit": "nightcore.mesh.auditrepl:status_section",
}

MAX_VERSION = 2**53
MAX_SCAN = 100_000  # trust-stream messages read back looking for the newest verified list
MAX_HEARTBEAT_BYTES = 64 * 1024
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
Section = Callable[["Client", "JetStreamContext", "MeshConfig"], Awaitable[dict[str, Any]]]


def _run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


async def _open(config: MeshConfig) -> tuple[Client, JetStreamContext]:
    from nightcore.mesh.connect import connect

    nc = await connect(config, reconnect=False, client_name=f"nightcore-cli-{config.node_name}")
    js = nc.jetstream(domain=config.js_domain) if config.js_domain else nc.jetstream()
    return nc, js


async def _last_on_subject(js: JetStreamContext, stream: str, subject: str) -> tuple[int, bytes]:
    """(stream sequence, data) of the last document on ``subject``; (0, b"") if none."""
    from nats.js.errors import NotFoundError

    try:
        msg = await js.get_last_msg(stream, subject)
    except NotFoundError:
        return 0, b""
    return int(msg.seq or 0), msg.data or b""


def _unverified_version(data: bytes) -> int:
    """The ``version`` a document claims, unverified (0 if none): a next version is taken
    above it so that an honest document is never below a forged one. Capped."""
    from nightcore.canonical import parse_json
    from nightcore.trust.envelope import parse_envelope

    with contextlib.suppress(NightCoreError, ValueError):
        doc = json.loads(data[: 1 << 20]) if data else None
        if isinstance(doc, dict):
            env = parse_envelope(data, payload_type=str(doc.get("payloadType", "")))
            body = parse_json(env.payload, max_bytes=1 << 20, what="payload")
            v = body.get("version") if isinstance(body, dict) else None
            if isinstance(v, int) and not isinstance(v, bool) and 0 < v < MAX_VERSION:
                return v
    return 0


async def _publish(
    js: JetStreamContext, subject: str, data: bytes, last_seq: int, stream: str
) -> int:
    from nats.js.errors import APIError

    try:
        ack = await js.publish(
            subject,
            data,
            stream=stream,
            headers={EXPECTED_LAST_SUBJECT_SEQ: str(last_seq)},
            timeout=10,
        )
    except APIError as exc:
        if exc.err_code == 10071:  # wrong last sequence: another publisher was first
            raise NightCoreError(
                "another trust document was published first: run the command again",
                code="MESH_PUBLISH_CONFLICT",
            ) from None
        raise NightCoreError(f"publishing: {exc}"[:400], code="MESH_ERROR") from None
    return int(ack.seq)


async def _ensure_trust_stream(js: JetStreamContext, config: MeshConfig) -> None:
    from nightcore.mesh.agent import default_replicas, ensure_stream
    from nightcore.mesh.trust import trust_stream_config

    await ensure_stream(
        js, trust_stream_config(config.names), num_replicas=default_replicas(config)
    )


def _wrap(exc: BaseException, doing: str) -> NightCoreError:
    from nightcore.mesh.agent import mesh_error

    return mesh_error(exc, doing)


async def _with_mesh(config: MeshConfig, doing: str, body: Callable[..., Awaitable[Any]]) -> Any:
    from nats.errors import Error as NatsError

    nc, js = await _open(config)
    try:
        return await body(nc, js)
    except (NatsError, TimeoutError, OSError) as exc:
        raise _wrap(exc, doing) from None
    finally:
        with contextlib.suppress(NatsError, TimeoutError, OSError):  # closing after an error
            await nc.close()


# -- revocations ------------------------------------------------------------------------------
def publish_revocation(
    ctx: NodeContext, config: MeshConfig, *, kind: str, subject: str, key: str, reason: str
) -> dict[str, Any]:
    """Sign the next revocation list (the newer of the bus's and this workspace's, plus one
    entry) with maintainer ``key`` and publish it. ``trust revoke``'s rules and codes."""
    import re

    from nightcore.trust.keys import check_scheme, load_signer
    from nightcore.trust.registry import sign_revocations
    from nightcore.trustops import resolve_key_id

    if kind not in ("key", "module"):
        raise UsageError("revoke what: key or module")
    subject = subject.lower()
    if kind == "key":
        subject = resolve_key_id(ctx, subject)
    elif not re.fullmatch(r"[0-9a-f]{64}", subject):
        raise UsageError("the module to revoke must be 64 hex characters (a full sha256)")
    if not reason.strip():
        raise UsageError("--reason must not be empty")
    registry = ctx.load_registry()
    local = ctx.load_revocations(registry)
    signer = load_signer(key)
    check_scheme(str(signer.public_key.scheme), ctx.policy.fips)
    names = config.names

    async def body(_nc: Client, js: JetStreamContext) -> dict[str, Any]:
        await _ensure_trust_stream(js, config)
        last_seq, data = await _last_on_subject(
            js, names.trust_stream, names.trust_revocations_subject
        )
        on_bus = await _newest_verified_revocations(
            js, names.trust_stream, names.trust_revocations_subject, registry, ctx.policy.fips
        )
        # Whole lists replace each other: the next one keeps every entry of the newest list on
        # the bus that verifies here AND of this workspace's own list (a forged or foreign
        # newest document neither drops entries nor adds any), above every version claimed.
        current = _union(local, on_bus) if on_bus is not None else local
        floor = max(_unverified_version(data), ctx.revocation_mark(), current.version)
        current = dataclasses.replace(current, version=floor)
        new = sign_revocations(
            current,
            signer,
            registry,
            add_key=(subject, reason) if kind == "key" else None,
            add_module=(subject, reason) if kind == "module" else None,
        )
        seq = await _publish(
            js, names.trust_revocations_subject, new.raw, last_seq, names.trust_stream
        )
        out = {
            "kind": "revocations",
            "revoked": subject,
            "what": kind,
            "version": new.version,
            "seq": seq,
            "signer": new.signer,
        }
        ctx.audit().append("mesh_trust_published", out)
        return out

    result: dict[str, Any] = _run(_with_mesh(config, "publishing a revocation", body))
    return result


async def _newest_verified_revocations(
    js: JetStreamContext, stream: str, subject: str, registry: Any, fips: bool
) -> RevocationList | None:
    """The newest revocation list on the stream that verifies with ``registry`` (reading back
    from the last message; at most MAX_SCAN messages)."""
    from nats.js.errors import NotFoundError

    from nightcore.trust.registry import parse_revocations

    info = await js.stream_info(stream)
    seq = info.state.last_seq
    stop = max(info.state.first_seq, seq - MAX_SCAN)
    while seq >= stop and seq > 0:
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:
            seq -= 1
            continue
        if msg.subject == subject:
            with contextlib.suppress(NightCoreError):
                return parse_revocations(msg.data or b"", registry, fips=fips)
        seq -= 1
    return None


def _union(a: RevocationList, b: RevocationList) -> RevocationList:
    """``a``'s entries, then ``b``'s entries ``a`` lacks; the higher version."""
    keys = {r.subject for r in a.keys}
    modules = {r.subject for r in a.modules}
    return dataclasses.replace(
        a,
        version=max(a.version, b.version),
        keys=(*a.keys, *(r for r in b.keys if r.subject not in keys)),
        modules=(*a.modules, *(r for r in b.modules if r.subject not in modules)),
    )


# -- change documents ---------------------------------------------------------------------------
def publish_change(
    ctx: NodeContext,
    config: MeshConfig,
    *,
    op: str,
    target: str,
    key: str,
    reason: str = "",
    new_key: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sign a change document (cordon, uncordon, node cordon, key add/remove) with maintainer
    ``key`` and publish it with the next change version."""
    from nightcore.mesh.documents import OPS, Change, check_key, check_target, sign_change
    from nightcore.mesh.state import load_state
    from nightcore.trust.keys import check_scheme, load_signer
    from nightcore.trust.registry import fmt_time

    if op not in OPS:
        raise UsageError(f"op must be one of {', '.join(OPS)}")
    if op in ("cordon", "node_cordon") and not reason.strip():
        raise UsageError("--reason must not be empty")
    try:
        check_target(op, target)
        key_fields = check_key(new_key, target) if op == "key_add" else {}
    except NightCoreError as exc:
        code = "TENANT_NAME_INVALID" if op in ("cordon", "uncordon") else "USAGE"
        raise NightCoreError(exc.message.removeprefix("mesh change: "), code=code) from None
    registry = ctx.load_registry()
    signer = load_signer(key)
    check_scheme(str(signer.public_key.scheme), ctx.policy.fips)
    tk = registry.get(str(signer.public_key.keyid))
    if tk is None or tk.role != "maintainer":
        raise NightCoreError(
            "mesh trust documents must be signed by a maintainer key in this workspace's registry",
            code="MESH_DOC_SIGNER_INVALID",
        )
    names = config.names

    async def body(_nc: Client, js: JetStreamContext) -> dict[str, Any]:
        await _ensure_trust_stream(js, config)
        last_seq, data = await _last_on_subject(js, names.trust_stream, names.trust_changes_subject)
        version = max(_unverified_version(data), load_state(ctx.layout).changes_version) + 1
        change = Change(
            version=version,
            issued=fmt_time(dt.datetime.now(dt.UTC)),
            op=op,
            target=target,
            reason=reason[:512],
            key=key_fields,
        )
        raw = sign_change(change, signer)
        seq = await _publish(js, names.trust_changes_subject, raw, last_seq, names.trust_stream)
        out = {
            "kind": "change",
            "op": op,
            "target": target,
            "version": version,
            "seq": seq,
            "signer": tk.key_id,
        }
        ctx.audit().append("mesh_trust_published", out)
        return out

    result: dict[str, Any] = _run(_with_mesh(config, f"publishing {op}", body))
    return result


def key_fields_from_pem(
    public_pem: str, *, scope: str, role: str, name: str | None, expires: dt.datetime | None
) -> tuple[str, dict[str, Any]]:
    """(key id, the ``key`` of a key_add document) from a public key file."""
    from pathlib import Path

    from nightcore.trust.pubkey import PublicKey, read_public_pem
    from nightcore.trust.registry import fmt_time

    path = Path(public_pem)
    data = read_public_pem(path)
    key = PublicKey.from_pem(data)
    return str(key.keyid), {
        "public_pem": data.decode("ascii", errors="replace"),
        "role": role,
        "scope": scope,
        "name": (name or path.name.removesuffix(".pub.pem"))[:64],
        "expires": fmt_time(expires) if expires is not None else None,
    }


# -- init ----------------------------------------------------------------------------------------
# More streams/buckets `mesh init` creates ("module:function"; each `async def f(js, config) ->
# list[str]` creating what it needs, returning the names). Helpers add theirs here.
INIT_STEPS: dict[str, str] = {
    "work_queue": "nightcore.mesh.workqueue:init_step",
    "audit": "nightcore.mesh.auditrepl:init_step",
}


def init(config: MeshConfig) -> dict[str, Any]:
    """Create (or open) every stream and bucket of the deployment, with
    ``min(3, servers given)`` replicas: for deployments whose nodes may not create them."""
    from nightcore.mesh.agent import default_replicas, ensure_kv

    names = config.names

    async def body(_nc: Client, js: JetStreamContext) -> dict[str, Any]:
        await _ensure_trust_stream(js, config)
        await ensure_kv(js, names.nodes_bucket, history=1, replicas=default_replicas(config))
        created = [names.trust_stream, names.nodes_bucket]
        for ref in INIT_STEPS.values():
            module, _, attr = ref.partition(":")
            step = getattr(importlib.import_module(module), attr)
            created += list(await step(js, config))
        return {"created_or_present": created, "replicas": default_replicas(config)}

    result: dict[str, Any] = _run(_with_mesh(config, "creating the streams", body))
    return result


# -- status ------------------------------------------------------------------------------------
def _node_row(key: str, raw: bytes, now: float) -> dict[str, Any]:
    try:
        v = json.loads(raw[:MAX_HEARTBEAT_BYTES]) if len(raw) <= MAX_HEARTBEAT_BYTES else None
    except ValueError:
        v = None
    if not isinstance(v, dict):
        return {"node": key, "alive": False, "error": "heartbeat is not a JSON object"}
    ts = v.get("ts")
    age = round(now - ts, 3) if isinstance(ts, int | float) else None
    interval = v.get("interval_s")
    interval = interval if isinstance(interval, int | float) and interval > 0 else 2.0
    fresh = age is not None and age <= 3 * interval + 1
    trust = v.get("trust") if isinstance(v.get("trust"), dict) else {}
    return {
        **{k: val for k, val in v.items() if k not in ("node", "alive", "trust")},
        "node": key,
        "alive": bool(v.get("alive")) and fresh,
        "stopped": v.get("alive") is False,
        "heartbeat_age_s": age,
        "trust": trust,
    }


def status(config: MeshConfig) -> dict[str, Any]:
    """The mesh as the bus shows it: nodes (from heartbeats), the trust stream, and every
    extra section."""
    names = config.names

    async def body(nc: Client, js: JetStreamContext) -> dict[str, Any]:
        from nats.js.errors import BucketNotFoundError, NoKeysError, NotFoundError

        now = time.time()
        nodes: list[dict[str, Any]] = []
        try:
            kv = await js.key_value(names.nodes_bucket)
            try:
                keys = await kv.keys()
            except NoKeysError:
                keys = []
            for key in sorted(keys):
                entry = await kv.get(key)
                nodes.append(_node_row(key, entry.value or b"", now))
        except (BucketNotFoundError, NotFoundError):
            pass
        trust: dict[str, Any] = {"stream": names.trust_stream, "exists": False}
        try:
            info = await js.stream_info(names.trust_stream)
            _s, rev = await _last_on_subject(
                js, names.trust_stream, names.trust_revocations_subject
            )
            _s, chg = await _last_on_subject(js, names.trust_stream, names.trust_changes_subject)
            trust = {
                "stream": names.trust_stream,
                "exists": True,
                "documents": info.state.messages,
                "last_seq": info.state.last_seq,
                "replicas": info.config.num_replicas,
                "revocations_version": _unverified_version(rev),
                "changes_version": _unverified_version(chg),
            }
        except NotFoundError:
            pass
        out: dict[str, Any] = {
            "mesh": config.describe(),
            "nodes": nodes,
            "trust": trust,
        }
        for key, ref in STATUS_SECTIONS.items():
            module, _, attr = ref.partition(":")
            section: Section = getattr(importlib.import_module(module), attr)
            out[key] = await section(nc, js, config)
        return out

    result: dict[str, Any] = _run(_with_mesh(config, "reading the mesh status", body))
    return result
