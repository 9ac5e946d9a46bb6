"""The byte-search classifier of audit lines (nightcore.audit.lines) agrees with a full parse
of canonical lines, whatever ``data`` holds (nested "event", "tenant", "prev", "ts" keys and
values that spell them)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nightcore.audit.lines import (
    event_of,
    is_checkpoint,
    prev_chain,
    prev_of,
    record_of,
    tenant_of,
    ts_of,
)
from nightcore.audit.log import ZERO_HASH, AuditLog, Event
from nightcore.canonical import canonical

TRICKY = ["event", "tenant", "prev", "ts", '"event":"x', '"tenant":"y"', "checkpoint", "a\\b"]
keys = st.sampled_from([*TRICKY, "code", "z"])
values = st.recursive(
    st.none() | st.integers(-1000, 1000) | st.sampled_from(TRICKY) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    data=st.dictionaries(keys, values, max_size=4),
    event=st.sampled_from(["checkpoint", "run_outcome", "verify", "checkpoints", "x"]),
    tenant=st.none() | st.sampled_from(["t-1", "hello", 'quo"te', "back\\slash", "é"]),
)
def test_classifier_agrees_with_the_parse(
    data: dict[str, Any], event: str, tenant: str | None
) -> None:
    rec: dict[str, Any] = {
        "v": 1,
        "seq": 3,
        "ts": "2026-01-01T00:00:00.000000Z",
        "node": "n",
        "event": event,
        "data": data,
        "prev": "ab" * 32,
    }
    if tenant is not None:
        rec["tenant"] = tenant
    line = canonical(rec)
    name, at = event_of(line)
    assert name == event.encode() and at >= 0
    assert is_checkpoint(line) == (event == "checkpoint")
    got = tenant_of(line, at)
    if tenant is None:
        assert got is None
    elif "\\" not in tenant and '"' not in tenant:
        assert got == tenant.encode()
    else:  # escaped in the line: the bytes carry the escape, and the caller parses
        assert got is not None and b"\\" in got
    assert prev_of(line) == b"ab" * 32
    assert ts_of(line) == b"2026-01-01T00:00:00.000000Z"
    assert record_of(line) == rec


def test_classifier_on_lines_without_the_keys() -> None:
    assert event_of(b"{}") == (b"?", -1)
    assert not is_checkpoint(b'{"data":{}}')
    assert prev_of(b"{}") is None and ts_of(b"{}") is None
    assert record_of(b"[1]") is None and record_of(b"\xff") is None
    assert record_of(b'{"data":[]}') == {"data": {}}


def test_prev_chain_finds_the_first_broken_link(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "n")
    log.append_many([Event("x", {"i": i}) for i in range(10)])
    lines = log.path.read_bytes().splitlines()
    head = hashlib.sha256(lines[-1]).hexdigest().encode()
    assert prev_chain(lines, 0, ZERO_HASH.encode()) == (head, None)
    assert prev_chain(lines[4:], 4, hashlib.sha256(lines[3]).hexdigest().encode()) == (head, None)
    edited = [*lines[:6], lines[6].replace(b'"i":6', b'"i":7'), *lines[7:]]
    assert prev_chain(edited, 0, ZERO_HASH.encode())[1] == 7  # the line after the edit
    assert prev_chain(edited, 0, ZERO_HASH.encode(), check_from=8)[1] is None
    assert prev_chain([*lines[:3], *lines[4:]], 0, ZERO_HASH.encode())[1] == 3  # one deleted
    assert prev_chain([b"{}"], 0, ZERO_HASH.encode())[1] == 0  # no prev at all
