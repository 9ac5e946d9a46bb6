"""Work requests and their results on the mesh: the two message formats, strictly parsed.

A **work request** asks one node to run one or more tenants once (like ``nightcore run T...``)::

    {"schema": 1, "request_id": "<id>", "tenants": ["hello", ...], "submitted_at": "<UTC ISO>"}

It is strict JSON (:func:`nightcore.canonical.parse_json`: UTF-8, no duplicate keys, no
NaN/Infinity) of at most :data:`MAX_REQUEST_BYTES`, with exactly these keys: ``tenants`` is 1 to
:data:`MAX_TENANTS` distinct valid tenant ids, ``request_id`` matches :data:`REQUEST_ID_RE` (it
is a NATS subject token: no ``.``, ``*``, ``>`` or spaces) and is also the message's
``Nats-Msg-Id`` header. Anything else is refused with a stable code:
``MESH_WORK_REQUEST_TOO_LARGE``, ``MESH_WORK_REQUEST_INVALID``, or ``TENANT_NAME_INVALID``.

A **work result** is what a node publishes once per request (docs/mesh.md)::

    {"schema": 1, "request_id": ..., "node": <node name>, "node_key_id": ..., "code": ...,
     "reason": ..., "runs": [<run objects as `nightcore run --json` gives them>],
     "attestations": [{"run_id": ..., "envelope": <the run's DSSE attestation>}],
     "delivery": <JetStream delivery count>, "finished_at": "<UTC ISO>"}

``code`` is ``OK`` when every run ended ``OK``, else the first run's non-``OK`` code, or the
refusal code of a request that never ran (then ``runs`` is empty). Readers of results (``nightcore
mesh runs``) parse them as untrusted input too (:func:`parse_result`).

Pure: bytes and dicts in and out, :class:`~nightcore.errors.NightCoreError` otherwise.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from nightcore.canonical import canonical, parse_json
from nightcore.errors import NightCoreError

SCHEMA = 1
MAX_REQUEST_BYTES = 16 * 1024
"""A request names at most 32 tenants of 63 characters: far below this. Bigger ones are refused
(``MESH_WORK_REQUEST_TOO_LARGE``) before parsing; the work stream refuses anything above its
``max_msg_size`` (:data:`STREAM_MAX_MSG_BYTES`) at publish."""
STREAM_MAX_MSG_BYTES = 256 * 1024
MAX_TENANTS = 32
MAX_RESULT_BYTES = 900 * 1024
"""Under the server's default 1 MiB payload: attestations are dropped from a result (and
``attestations_omitted`` set) rather than lose the result."""
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
_TENANT_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_REQUEST_KEYS = frozenset({"schema", "request_id", "tenants", "submitted_at"})
_RESULT_KEYS = frozenset(
    {
        "schema",
        "request_id",
        "node",
        "node_key_id",
        "code",
        "reason",
        "runs",
        "attestations",
        "attestations_omitted",
        "delivery",
        "finished_at",
    }
)
_CODE_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def _invalid(message: str) -> NightCoreError:
    return NightCoreError(message, code="MESH_WORK_REQUEST_INVALID")


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_request_id() -> str:
    """A fresh request id: 32 hex digits (random UUID), a valid subject token."""
    return uuid.uuid4().hex


def valid_request_id(value: object) -> bool:
    return isinstance(value, str) and REQUEST_ID_RE.fullmatch(value) is not None


def check_tenants(tenants: object) -> list[str]:
    """1 to :data:`MAX_TENANTS` distinct valid tenant ids, or a coded refusal."""
    if not isinstance(tenants, list) or not tenants:
        raise _invalid("tenants must be a non-empty list of tenant ids")
    if len(tenants) > MAX_TENANTS:
        raise _invalid(f"a work request names at most {MAX_TENANTS} tenants")
    for t in tenants:
        if not isinstance(t, str) or _TENANT_RE.fullmatch(t) is None:
            shown = repr(t)[:80]
            raise NightCoreError(f"not a valid tenant id: {shown}", code="TENANT_NAME_INVALID")
    if len(set(tenants)) != len(tenants):
        raise _invalid("a work request names each tenant at most once")
    return list(tenants)


@dataclass(frozen=True)
class WorkRequest:
    request_id: str
    tenants: tuple[str, ...]
    submitted_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "request_id": self.request_id,
            "tenants": list(self.tenants),
            "submitted_at": self.submitted_at,
        }

    def encode(self) -> bytes:
        return canonical(self.to_dict())


def new_request(tenants: list[str], *, request_id: str | None = None) -> WorkRequest:
    """A request to run ``tenants`` once (validated as a node will validate it)."""
    rid = request_id or new_request_id()
    if not valid_request_id(rid):
        raise _invalid("request id must be 8-64 characters of [A-Za-z0-9_-]")
    req = WorkRequest(rid, tuple(check_tenants(list(tenants))), utc_now())
    if len(req.encode()) > MAX_REQUEST_BYTES:  # unreachable with the caps above; kept exact
        raise NightCoreError("the work request is too large", code="MESH_WORK_REQUEST_TOO_LARGE")
    return req


def parse_request(data: bytes) -> WorkRequest:
    """A request from the bus (untrusted bytes), or ``MESH_WORK_REQUEST_TOO_LARGE`` /
    ``MESH_WORK_REQUEST_INVALID`` / ``TENANT_NAME_INVALID`` with a one-line reason."""
    if len(data) > MAX_REQUEST_BYTES:
        raise NightCoreError(
            f"the work request is {len(data)} bytes, above the {MAX_REQUEST_BYTES}-byte cap",
            code="MESH_WORK_REQUEST_TOO_LARGE",
        )
    obj = parse_json(
        data, max_bytes=MAX_REQUEST_BYTES, what="the work request", code="MESH_WORK_REQUEST_INVALID"
    )
    if not isinstance(obj, dict):
        raise _invalid("the work request is not a JSON object")
    keys = set(obj)
    if keys != _REQUEST_KEYS:
        extra, missing = sorted(keys - _REQUEST_KEYS), sorted(_REQUEST_KEYS - keys)
        raise _invalid(f"the work request has unknown keys {extra} or lacks keys {missing}")
    if obj["schema"] != SCHEMA or isinstance(obj["schema"], bool):
        raise _invalid(f"unsupported work request schema {obj['schema']!r}")
    if not valid_request_id(obj["request_id"]):
        raise _invalid("request_id must be 8-64 characters of [A-Za-z0-9_-]")
    submitted = obj["submitted_at"]
    if not isinstance(submitted, str) or not 0 < len(submitted) <= 64:
        raise _invalid("submitted_at must be a timestamp string")
    return WorkRequest(obj["request_id"], tuple(check_tenants(obj["tenants"])), submitted)


def request_id_hint(msg_id: str | None, stream_seq: int) -> str:
    """The id under which a request that cannot be parsed is answered: its ``Nats-Msg-Id``
    when that is a valid id (the submitter knows it), else ``seq-<stream sequence>``."""
    if msg_id is not None and valid_request_id(msg_id):
        return msg_id
    return f"seq-{stream_seq}"


@dataclass
class WorkResult:
    request_id: str
    node: str
    node_key_id: str
    code: str
    reason: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)
    attestations: list[dict[str, Any]] = field(default_factory=list)
    attestations_omitted: bool = False
    delivery: int = 1
    finished_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "request_id": self.request_id,
            "node": self.node,
            "node_key_id": self.node_key_id,
            "code": self.code,
            "reason": self.reason,
            "runs": self.runs,
            "attestations": self.attestations,
            "attestations_omitted": self.attestations_omitted,
            "delivery": self.delivery,
            "finished_at": self.finished_at or utc_now(),
        }

    def encode(self) -> bytes:
        """Canonical bytes, under :data:`MAX_RESULT_BYTES` (attestations dropped if needed;
        the runs' own records stay in the node's audit log and run directories)."""
        data = canonical(self.to_dict())
        if len(data) > MAX_RESULT_BYTES and self.attestations:
            self.attestations = []
            self.attestations_omitted = True
            data = canonical(self.to_dict())
        if len(data) > MAX_RESULT_BYTES:
            raise NightCoreError("a work result is too large to publish", code="JSON_INVALID")
        return data


def result_code(runs: list[dict[str, Any]]) -> str:
    """``OK`` when every run ended ``OK``, else the first other code."""
    for run in runs:
        code = str(run.get("code", ""))
        if code != "OK":
            return code
    return "OK"


def refusal(request_id: str, node: str, node_key_id: str, code: str, reason: str) -> WorkResult:
    """The result of a request refused before any run (malformed, oversized)."""
    return WorkResult(request_id, node, node_key_id, code, reason)


def _result_invalid(message: str) -> NightCoreError:
    return NightCoreError(message, code="MESH_WORK_RESULT_INVALID")


def parse_result(data: bytes) -> dict[str, Any]:
    """A result read back from the bus (untrusted): its checked plain data, or
    ``MESH_WORK_RESULT_INVALID``."""
    obj = parse_json(
        data, max_bytes=MAX_RESULT_BYTES, what="the work result", code="MESH_WORK_RESULT_INVALID"
    )
    if not isinstance(obj, dict) or set(obj) != _RESULT_KEYS:
        raise _result_invalid("the work result does not have the result's keys")
    if obj["schema"] != SCHEMA or isinstance(obj["schema"], bool):
        raise _result_invalid(f"unsupported work result schema {obj['schema']!r}")
    if not valid_request_id(obj["request_id"]) and not str(obj["request_id"]).startswith("seq-"):
        raise _result_invalid("the work result's request_id is not a request id")
    for key in ("node", "node_key_id", "reason", "finished_at"):
        if not isinstance(obj[key], str) or len(obj[key]) > 4096:
            raise _result_invalid(f"the work result's {key} is not a string")
    if not isinstance(obj["code"], str) or _CODE_RE.fullmatch(obj["code"]) is None:
        raise _result_invalid("the work result's code is not a code")
    if not isinstance(obj["runs"], list) or not all(isinstance(r, dict) for r in obj["runs"]):
        raise _result_invalid("the work result's runs are not a list of objects")
    if not isinstance(obj["attestations"], list):
        raise _result_invalid("the work result's attestations are not a list")
    if not isinstance(obj["delivery"], int) or isinstance(obj["delivery"], bool):
        raise _result_invalid("the work result's delivery is not an integer")
    return obj


def result_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run of a parsed result (one row for a request refused before running):
    request id, tenant, node, code, run id, exit, fuel, wall ms."""
    base = {"request_id": result["request_id"], "node": result["node"]}
    if not result["runs"]:
        return [
            {
                **base,
                "tenant": None,
                "code": result["code"],
                "reason": result["reason"],
                "run_id": None,
                "exit_code": None,
                "fuel_used": None,
                "wall_ms": None,
            }
        ]
    return [
        {
            **base,
            "tenant": run.get("tenant"),
            "code": run.get("code"),
            "reason": run.get("reason", ""),
            "run_id": run.get("run_id"),
            "exit_code": run.get("exit_code"),
            "fuel_used": run.get("fuel_used"),
            "wall_ms": run.get("wall_ms"),
        }
        for run in result["runs"]
    ]
