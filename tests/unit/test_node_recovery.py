"""The pure cores of the node's crash handling: which runs are open, and how they are closed."""

from __future__ import annotations

import json

from nightcore.node.protocol import ProtocolError, parse_request, request
from nightcore.node.recovery import interrupted_events, open_runs, runs_since


def _line(seq: int, event: str, run_id: str, **data: object) -> bytes:
    rec = {"seq": seq, "event": event, "tenant": "t", "data": {"run_id": run_id, **data}}
    return json.dumps(rec).encode() + b"\n"


def test_open_runs_are_starts_without_outcomes() -> None:
    lines = [
        _line(0, "admit", "a"),
        _line(1, "run_start", "a", module_sha256="m"),
        _line(2, "run_start", "b", module_sha256="m"),
        _line(3, "run_outcome", "a", code="OK"),
        b'{"seq": 4, "event": "verify", "data": {}}\n',
    ]
    assert open_runs(lines) == {"b": {"tenant": "t", "module_sha256": "m", "seq": 2}}
    starts, outcomes = runs_since(lines)
    assert set(starts) == {"a", "b"} and outcomes == {"a": ("OK", 3)}


def test_closing_outcomes_say_what_is_unknown() -> None:
    (event,) = interrupted_events(
        {"b": {"tenant": "t", "module_sha256": "m", "seq": 2}}, code="WORKER_CRASHED", detail="x"
    )
    assert event.event == "run_outcome" and event.tenant == "t"
    data = event.data
    assert data["code"] == "WORKER_CRASHED" and data["run_start_seq"] == 2
    assert data["fuel_used"] is None and data["stdout_sha256"] is None  # unknown, never 0
    (default,) = interrupted_events({"b": {"tenant": "t", "module_sha256": "m", "seq": 2}})
    assert default.data["code"] == "INTERRUPTED"


def test_requests_are_strict() -> None:
    assert parse_request(request("run", {"tenants": ["a"]})) == ("run", {"tenants": ["a"]})
    for bad in (
        b"[]\n",
        b'{"v":1,"op":"run","op":"ping"}\n',  # duplicate key
        b'{"v":2,"op":"ping"}\n',
        b'{"v":1,"op":"shell"}\n',
        b'{"v":1,"op":"ping","args":[]}\n',
        b'{"v":1,"op":"ping","extra":1}\n',
        b'{"v":1,"op":"ping","args":{"x":NaN}}\n',
        b"\xff\n",
        b'{"v":1,"op":"ping","args":{"x":"' + b"a" * (1024 * 1024) + b'"}}\n',
    ):
        try:
            parse_request(bad)
        except ProtocolError:
            continue
        raise AssertionError(f"accepted {bad[:60]!r}")
