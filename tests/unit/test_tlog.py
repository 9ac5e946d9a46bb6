"""The transparency log's moving parts: the fast strict parser, incremental sync of tree.bin,
rebuilds (and refusals to rebuild over evidence), the parallel scan, and checkpoint scheduling.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nightcore import app
from nightcore.audit import merkle, note, parallel, proofs, tlog
from nightcore.audit import tree as tree_mod
from nightcore.audit.lines import parse_line_fast
from nightcore.audit.log import ZERO_HASH, AuditLog, Event, parse_line, verify_chain
from nightcore.audit.scan import Scan, scan_file
from nightcore.audit.tlog import (
    TransparencyLog,
    checkpoint_after_run,
    maybe_checkpoint,
    transparency_log,
)
from nightcore.audit.tree import LogTree, TreeState
from nightcore.audit.verify import verify_log
from nightcore.canonical import canonical
from nightcore.errors import AuditError, NightCoreError

# -- helpers -------------------------------------------------------------------------------


def make_log(tmp_path: Path, n: int) -> AuditLog:
    log = AuditLog(tmp_path / "audit", "node")
    if n:
        log.append_many([Event("test", {"i": i, "pad": "x" * (i % 7)}, "t") for i in range(n)])
    return log


def tlog_of(ws: Any) -> TransparencyLog:
    """A workspace's transparency log, built from what it uses (not from the workspace)."""
    return TransparencyLog(
        ws.layout, key_name=ws.config.node_name, signer=ws.node_signer, audit=ws.audit
    )


def shared_tlog(ws: Any) -> TransparencyLog:
    return transparency_log(
        ws.layout, key_name=ws.config.node_name, signer=ws.node_signer, audit=ws.audit
    )


def raw(log: AuditLog) -> list[bytes]:
    return log.path.read_bytes().splitlines(keepends=True)


def reference_root(log: AuditLog) -> bytes:
    return merkle.root([merkle.leaf_hash(x.rstrip(b"\n")) for x in raw(log)])


def record(seq: int, prev: str, data: dict[str, Any]) -> bytes:
    rec = {"v": 1, "seq": seq, "ts": "2026-01-01T00:00:00.000000Z", "node": "n"}
    rec.update(event="test", data=data, prev=prev)
    return canonical(rec)


def outcome(fn: Any, line: bytes) -> tuple[str, str]:
    try:
        return ("ok", json.dumps(fn(line, seq_hint=7), sort_keys=True))
    except AuditError as exc:
        return (exc.code, exc.message)
    except NightCoreError as exc:
        # parse_line lets canonical()'s refusal of an out-of-domain value escape; the fast
        # parser names it as what it is.
        assert fn is parse_line and exc.code == "JSON_INVALID"
        return ("AUDIT_NOT_CANONICAL", f"audit line 7: not RFC 8785 canonical JSON ({exc})")


# -- the fast parser is parse_line ---------------------------------------------------------

EDGE_LINES = [
    record(0, ZERO_HASH, {"a": 1}),
    record(0, ZERO_HASH, {"f": 1.5}),  # floats: RFC 8785 number formatting
    record(0, ZERO_HASH, {"f": 1e21}),
    record(0, ZERO_HASH, {"big": 2**53 - 1}),
    record(0, ZERO_HASH, {"neg": -(2**53) + 1}),
    record(0, ZERO_HASH, {"n": 123456789012345}),
    record(0, ZERO_HASH, {"ctl": '\x00\x01\x1f\x7f\u2028\u2029"\\/\b\f\n\r\t'}),
    record(0, ZERO_HASH, {"\U0001f600": 1, "\uffff": 2, "a": 3}),  # UTF-16 vs code-point order
    record(0, ZERO_HASH, {"é": "ü", "z": [1, {"y": None, "x": True}]}),
    record(0, ZERO_HASH, {"deep": [[[[[[[[[[[]]]]]]]]]]]}),
    b'{"data":{"big":9007199254740993},"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b'{"data":{"a":1,"a":1},"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b'{"data":{"a":NaN},"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b'{"data":{"a":-0},"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b'{"data":{"a":1.0},"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b'{"data":{"a":"\\u0041"},"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b'{"data":{"a":"\\ud800"},"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b'{"data":{"a":"\\ud83d\\ude00"},"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b'{"data":{"a":"\\u001F"},"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b'{"data":{},"event":"e","node":"n","prev":"x","seq":true,"ts":"t","v":1}',
    b'{"data":[],"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b'{"event":"e","data":{},"node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b'{"data":{},"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1,"x":2}',
    b' {"data":{},"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b'{"data":{},"event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}\r',
    b'{"data":{}, "event":"e","node":"n","prev":"x","seq":0,"ts":"t","v":1}',
    b"\xff\xfe",
    b"[]",
    b"",
    b"null",
    b"{" * 5000,
]


@pytest.mark.parametrize("line", EDGE_LINES)
def test_fast_parser_agrees_on_edge_cases(line: bytes) -> None:
    assert outcome(parse_line_fast, line) == outcome(parse_line, line)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, database=None)
@given(st.dictionaries(st.text(max_size=4), json_values, max_size=4), st.integers(0, 5))
def test_fast_parser_agrees_on_random_records(data: dict[str, Any], form: int) -> None:
    rec = {"v": 1, "seq": 3, "ts": "t", "node": "n", "event": "e", "data": data, "prev": "p"}
    try:
        line = canonical(rec)
    except NightCoreError:
        line = json.dumps(rec).encode()
    if form == 1:
        line = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()  # ASCII escapes
    elif form == 2:
        line = json.dumps(rec, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")
    elif form == 3:
        line = line.replace(b":", b": ", 1)
    elif form == 4:
        line = line[: len(line) // 2]
    assert outcome(parse_line_fast, line) == outcome(parse_line, line)


# -- sync ----------------------------------------------------------------------------------


def test_sync_builds_then_reads_only_new_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    real = scan_file

    def spy(path: Path, start: int, end: int, seq0: int, prev0: str | None) -> Any:
        calls.append((start, end))
        return real(path, start, end, seq0, prev0)

    monkeypatch.setattr(tree_mod, "scan_file", spy)  # incremental sync
    monkeypatch.setattr(parallel, "scan_file", spy)  # rebuild (a small log: one process)
    log = make_log(tmp_path, 10)
    tree = LogTree(log.dir)
    state = tree.sync()
    assert (state.size, tree.rebuilds) == (10, 1)
    assert calls == [(0, log.path.stat().st_size)]
    assert tree.tree.root() == reference_root(log)
    for round_ in range(3):
        before = log.path.stat().st_size
        log.append_many([Event("more", {"r": round_, "k": k}) for k in range(4)])
        calls.clear()
        state = tree.sync()
        assert calls == [(before, log.path.stat().st_size)], "only the new bytes are read"
        assert tree.rebuilds == 1
        assert tree.tree.root() == reference_root(log)
    # A fresh instance (another process) loads tree.bin and carries on incrementally.
    calls.clear()
    other = LogTree(log.dir)
    assert other.sync() == state and other.rebuilds == 0 and calls[0][0] == state.offset
    stored = (log.dir / "tree.bin").read_bytes()
    assert stored == merkle.FILE_MAGIC + b"".join(
        merkle.leaf_hash(x.rstrip(b"\n")) for x in raw(log)
    )
    assert (log.dir / "tree.bin").stat().st_mode & 0o777 == 0o600


def test_a_tree_in_memory_follows_other_processes_incrementally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = make_log(tmp_path, 5)
    mine = LogTree(log.dir)
    mine.sync()
    loads: list[int] = []
    real = merkle.TreeStore.from_bytes

    def counting(data: bytes) -> merkle.TreeStore:
        loads.append(len(data))
        return real(data)

    monkeypatch.setattr(merkle.TreeStore, "from_bytes", staticmethod(counting))
    log.append_many([Event("x", {"k": k}) for k in range(3)])
    LogTree(log.dir).sync()  # another process ingests them (it loads tree.bin once)
    assert len(loads) == 1
    state = mine.sync()  # we read its 3 new records from tree.bin, not the whole file
    assert len(loads) == 1 and state.size == 8
    assert mine.tree.root() == reference_root(log)
    # After a rebuild elsewhere (a new lineage) the whole tree.bin is read again.
    (log.dir / "tree.state").unlink()
    LogTree(log.dir).sync()
    log.append("y", {})
    before = len(loads)
    assert mine.sync().size == 9 and len(loads) == before + 1
    assert mine.tree.root() == reference_root(log)


def test_empty_and_missing_logs(tmp_path: Path) -> None:
    tree = LogTree(tmp_path / "audit")
    state = tree.sync()
    assert (state.size, state.offset, state.head) == (0, 0, ZERO_HASH)
    assert tree.tree.root() == merkle.EMPTY_ROOT
    make_log(tmp_path, 2)
    assert tree.sync().size == 2


@pytest.mark.parametrize("damage", ["no_tree", "no_state", "bad_state", "bad_magic", "short"])
def test_damaged_tree_files_are_rebuilt(tmp_path: Path, damage: str) -> None:
    log = make_log(tmp_path, 8)
    LogTree(log.dir).sync()
    tree_bin, state = log.dir / "tree.bin", log.dir / "tree.state"
    if damage == "no_tree":
        tree_bin.unlink()
    elif damage == "no_state":
        state.unlink()
    elif damage == "bad_state":
        state.write_text('{"size": 8}')
    elif damage == "bad_magic":
        tree_bin.write_bytes(b"XXXXXXXX" + tree_bin.read_bytes()[8:])
    elif damage == "short":
        tree_bin.write_bytes(tree_bin.read_bytes()[:-40])
    log.append("after", {})
    fresh = LogTree(log.dir)
    assert fresh.sync().size == 9 and fresh.rebuilds == 1
    assert fresh.tree.root() == reference_root(log)


def test_uncommitted_tree_records_are_dropped(tmp_path: Path) -> None:
    """A crash after appending to tree.bin but before the sidecar: the extra bytes go."""
    log = make_log(tmp_path, 5)
    LogTree(log.dir).sync()
    with (log.dir / "tree.bin").open("ab") as fh:
        fh.write(b"\x07" * 45)  # one junk record and a torn one
    log.append("after", {})
    tree = LogTree(log.dir)
    assert tree.sync().size == 6 and tree.rebuilds == 0
    assert (log.dir / "tree.bin").stat().st_size == 8 + 32 * 6
    assert tree.tree.root() == reference_root(log)


def test_line_changed_after_ingestion_is_not_adopted(tmp_path: Path) -> None:
    log = make_log(tmp_path, 6)
    LogTree(log.dir).sync()
    before = (log.dir / "tree.bin").read_bytes()
    lines = raw(log)
    rec = json.loads(lines[-1])
    rec["data"]["i"] = 99
    lines[-1] = canonical(rec) + b"\n"
    log.path.write_bytes(b"".join(lines))
    with pytest.raises(AuditError) as exc:
        LogTree(log.dir).sync()
    assert exc.value.code == "AUDIT_TREE_MISMATCH" and "line 5" in exc.value.message
    assert (log.dir / "tree.bin").read_bytes() == before, "evidence kept"


def test_lines_removed_after_ingestion_are_not_adopted(tmp_path: Path) -> None:
    log = make_log(tmp_path, 6)
    LogTree(log.dir).sync()
    log.path.write_bytes(b"".join(raw(log)[:4]))
    with pytest.raises(AuditError) as exc:
        LogTree(log.dir).sync()
    assert exc.value.code == "AUDIT_TREE_MISMATCH" and "removed" in exc.value.message


def test_verify_repairs_the_tree_only_when_the_log_verifies(tmp_path: Path) -> None:
    ws = app.init_workspace(tmp_path / "ws")
    ws.audit().append_many([Event("x", {"i": i}) for i in range(6)])
    t = tlog_of(ws)
    t.sync()
    log_file = ws.layout.state_dir / "audit" / "audit.jsonl"
    log_file.write_bytes(b"".join(log_file.read_bytes().splitlines(keepends=True)[:5]))
    with pytest.raises(AuditError) as exc:
        t.sync()
    assert exc.value.code == "AUDIT_TREE_MISMATCH"
    report = t.verify()  # no checkpoint covers the removed lines: the log itself verifies
    assert report.ok and report.tree_status == "rebuilt"
    assert any("removed" in w for w in report.warnings)
    assert list((ws.layout.state_dir / "audit").glob("tree.bin.mismatch-*"))
    assert t.sync() == 5
    # A tree that is merely behind the log is left to sync incrementally.
    ws.audit().append("y", {})
    again = t.verify()
    assert again.ok and again.tree_status == "behind" and not again.warnings
    assert len(list((ws.layout.state_dir / "audit").glob("tree.bin.mismatch-*"))) == 1


def test_broken_chain_in_new_lines_is_refused(tmp_path: Path) -> None:
    log = make_log(tmp_path, 3)
    tree = LogTree(log.dir)
    tree.sync()
    with log.path.open("ab") as fh:
        fh.write(record(3, "f" * 64, {}) + b"\n")
        fh.write(record(4, "e" * 64, {}) + b"\n")
    with pytest.raises(AuditError) as exc:
        tree.sync()
    assert exc.value.code == "AUDIT_CHAIN_BROKEN" and "line 3" in exc.value.message
    assert tree.state.size == 3


def test_torn_tails_are_not_ingested_and_recovery_continues(tmp_path: Path) -> None:
    log = make_log(tmp_path, 4)
    tree = LogTree(log.dir)
    with log.path.open("ab") as fh:
        fh.write(b'{"data":{"half')  # a partial write
    assert tree.sync().size == 4
    with log.path.open("ab") as fh:
        fh.write(b'":1}}\n')  # now newline-terminated, but not an audit line: still torn
    assert tree.sync().size == 4
    writer = AuditLog(log.dir, "node")
    writer.append("after", {})  # moves the torn line aside and logs the recovery
    assert tree.sync().size == 6 and tree.rebuilds == 1
    assert tree.tree.root() == reference_root(log)
    verify_chain(iter(raw(log)))


WRITER = """
import sys
from pathlib import Path
from nightcore.audit.log import AuditLog, Event
log = AuditLog(Path(sys.argv[1]), "w")
for b in range(40):
    log.append_many([Event("w", {"b": b, "k": k}) for k in range(b % 5 + 1)])
"""


def test_sync_while_a_writer_appends(tmp_path: Path) -> None:
    log = make_log(tmp_path, 1)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(log.dir)])
    tree = LogTree(log.dir)
    sizes = []
    try:
        while proc.poll() is None:
            state = tree.sync()
            sizes.append(state.size)
            data = log.path.read_bytes()
            assert data[state.offset - 1 : state.offset] == b"\n"
            assert hashlib.sha256(data[state.last_start : state.offset - 1]).hexdigest() == (
                state.head
            )
    finally:
        proc.wait(60)
    assert proc.returncode == 0
    assert sizes == sorted(sizes)
    final = tree.sync()
    assert final.size == len(raw(log)) == 1 + sum(b % 5 + 1 for b in range(40))
    assert tree.tree.root() == reference_root(log)


def test_tree_state_is_strict() -> None:
    good = TreeState(3, 300, 200, "a" * 64, "0123456789abcdef")
    assert TreeState.from_bytes(good.to_bytes()) == good
    for bad in [
        b"",
        b"{}",
        good.to_bytes().replace(b'"size":3', b'"size":-3'),
        good.to_bytes().replace(b'"v":1', b'"v":2'),
        good.to_bytes().replace(b"a" * 64, b"A" * 64),
        good.to_bytes().replace(b"0123456789abcdef", b"0123"),
        good.to_bytes().rstrip(b"\n"),
        TreeState(0, 5, 0, ZERO_HASH).to_bytes(),
        TreeState(2, 100, 100, "a" * 64).to_bytes(),
    ]:
        assert TreeState.from_bytes(bad) is None


# -- the parallel scan is the sequential scan ------------------------------------------------


def scan_summary(scan: Any) -> tuple[Any, ...]:
    err = scan.error
    return (
        scan.count,
        scan.head,
        bytes(scan.leaves),
        scan.events,
        scan.end,
        scan.last_start,
        None if err is None else (err.code, err.message),
        scan.error_seq,
        scan.torn,
    )


@pytest.mark.parametrize("tamper", ["none", "edit", "seq", "garbage", "boundary", "torn"])
def test_parallel_scan_matches_sequential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tamper: str
) -> None:
    def no_fallback(*_args: object) -> Any:
        raise AssertionError("a worker process failed and its run was scanned in-process")

    monkeypatch.setattr(parallel, "scan_segment", no_fallback)  # workers are fresh interpreters
    log = make_log(tmp_path, 90)
    log.append("checkpoint", {"size": 3, "root": "00", "reason": "t"})
    lines = raw(log)
    if tamper == "edit":
        lines[70] = lines[70].replace(b'"i":70', b'"i":71')
    elif tamper == "seq":
        del lines[60]
    elif tamper == "garbage":
        lines[45] = b"garbage\n"
    elif tamper == "torn":
        lines.append(b'{"data":')
    log.path.write_bytes(b"".join(lines))
    size = log.path.stat().st_size
    if tamper == "boundary":
        # Break the chain exactly at the second segment's first line.
        seq0 = parallel.segments(log.path, size, 3)[1][2]
        lines[seq0] = record(seq0, "c" * 64, {}) + b"\n"
        log.path.write_bytes(b"".join(lines))
        size = log.path.stat().st_size
    sequential = scan_file(log.path, 0, size, 0, ZERO_HASH)
    concurrent = parallel.scan_log(log.path, size, workers=3)
    assert scan_summary(concurrent) == scan_summary(sequential)
    if tamper == "none":
        assert sequential.count == 91 and sequential.events == [
            (90, {"size": 3, "root": "00", "reason": "t"})
        ]


@settings(max_examples=150, deadline=None, database=None)
@given(st.integers(0, 300), st.lists(st.integers(0, 300), max_size=5))
def test_tree_from_parallel_runs_is_the_tree(n: int, cuts: list[int]) -> None:
    leaves = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n))
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    scan = Scan(start=0, seq0=0, prev0=ZERO_HASH)
    scan.leaves += leaves
    scan.count = n
    scan.runs = [
        (a, b - a, merkle.run_levels(leaves[32 * a : 32 * b], a))
        for a, b in itertools.pairwise(bounds)
    ]
    merged = parallel.tree_of(scan)
    reference = merkle.TreeStore.from_bytes(merkle.FILE_MAGIC + leaves)
    assert merged.size == reference.size
    assert merged._levels == reference._levels
    for size in {0, n // 3, n // 2, n}:
        assert merged.root(size) == reference.root(size)
    merged.append(hashlib.sha256(b"next").digest())  # and it keeps growing like any TreeStore
    reference.append(hashlib.sha256(b"next").digest())
    assert merged.root() == reference.root()


def test_segments_cover_the_log_at_line_boundaries(tmp_path: Path) -> None:
    log = make_log(tmp_path, 50)
    size = log.path.stat().st_size
    data = log.path.read_bytes()
    for parts in (1, 2, 3, 7, 200):
        segs = parallel.segments(log.path, size, parts)
        assert segs[0][0] == 0 and segs[-1][1] == size
        for (a, b, seq), nxt in zip(segs, [*segs[1:], None], strict=True):
            assert a == 0 or data[a - 1 : a] == b"\n"
            assert seq == data[:a].count(b"\n")
            if nxt is not None:
                assert nxt[0] == b


def test_verify_log_in_parallel_reports_the_same(tmp_path: Path) -> None:
    log = make_log(tmp_path, 60)
    one = verify_log(log.dir, None, workers=1).to_dict()
    two = verify_log(log.dir, None, workers=2).to_dict()
    assert one == two and one["ok"] and one["entries"] == 60


def test_first_difference() -> None:
    a = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(10000))
    for k in (0, 1, 4095, 4096, 9999):
        b = bytearray(a)
        b[k * 32 + 31] ^= 1
        assert tree_mod.first_difference(a, bytes(b)) == k
    assert tree_mod.first_difference(a, a[: 32 * 7]) == 7


def test_read_line(tmp_path: Path) -> None:
    log = make_log(tmp_path, 7)
    for seq, line in enumerate(raw(log)):
        assert tlog.read_line(log.path, seq) == line.rstrip(b"\n")
    assert tlog.read_line(log.path, 7) is None


# -- checkpoints on a workspace ------------------------------------------------------------


def test_checkpoint_is_a_c2sp_checkpoint_of_the_node(tmp_path: Path) -> None:
    ws = app.init_workspace(tmp_path / "ws", name="edge-7")
    t = tlog_of(ws)
    cp = t.checkpoint("test")
    public, origin = t.public_key()
    assert origin == "nightcore/" + ws.node_key_id()[:16]
    vkey = note.encode_vkey("edge-7", public)
    opened = note.open_checkpoint(cp.note, [note.parse_vkey(vkey)], origin=origin)
    assert opened.verified == ["edge-7"] and opened.checkpoint.size == 1
    assert cp.key_names == ("edge-7",)


def test_maybe_checkpoint_every_n(tmp_path: Path) -> None:
    ws = app.init_workspace(tmp_path / "ws")
    assert maybe_checkpoint(shared_tlog(ws), every=5) is None  # 1 entry, no checkpoint yet
    ws.audit().append_many([Event("x", {"i": i}) for i in range(4)])
    cp = maybe_checkpoint(shared_tlog(ws), every=5)
    assert cp is not None and cp.size == 5
    ws.audit().append_many([Event("x", {"i": i}) for i in range(3)])
    # 9 entries, 4 since (the event included)
    assert maybe_checkpoint(shared_tlog(ws), every=5) is None
    ws.audit().append("x", {})
    nxt = maybe_checkpoint(shared_tlog(ws), every=5)
    assert nxt is not None and nxt.size == 10
    with pytest.raises(NightCoreError):
        maybe_checkpoint(shared_tlog(ws), every=0)


def test_checkpoints_from_threads(tmp_path: Path) -> None:
    ws = app.init_workspace(tmp_path / "ws")
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(3):
                ws.audit().append("run", {"k": k, "i": i})
                checkpoint_after_run(shared_tlog(ws))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    report = tlog_of(ws).verify()
    assert report.ok, report.to_dict()
    assert report.checkpoints >= 2


def test_prove_and_entry_round_trip(tmp_path: Path) -> None:
    ws = app.init_workspace(tmp_path / "ws")
    ws.audit().append_many([Event("x", {"i": i}) for i in range(20)])
    t = tlog_of(ws)
    pem = ws.layout.node_pub_path.read_bytes()
    for seq in (0, 7, 20):
        proof = t.prove(seq)
        cp, rec = proofs.verify_inclusion_proof(proof, t.entry(seq), pem)
        assert rec["seq"] == seq and cp.size > seq
    with pytest.raises(AuditError) as exc:
        t.prove(10**6)
    assert exc.value.code == "PROOF_INDEX_OUT_OF_RANGE"


def test_latest_checkpoint_survives_a_crash_between_tail_and_note(tmp_path: Path) -> None:
    """checkpoint() writes audit.tail, then checkpoints/<size>.note: a crash between them
    leaves a tail without its note, which the next checkpoint() writes."""
    ws = app.init_workspace(tmp_path / "ws")
    t = tlog_of(ws)
    t.checkpoint("one")
    second = t.checkpoint("two")
    kept = ws.layout.state_dir / "audit" / "checkpoints" / f"{second.size}.note"
    kept.unlink()  # the crash: the tail was replaced, the note not yet written
    latest = t.latest_checkpoint()
    assert latest is not None and latest.note == second.note
    third = t.checkpoint("three")
    assert kept.read_bytes() == second.note and third.size > second.size
    (ws.layout.state_dir / "audit" / "audit.tail").unlink()  # no tail: the largest note is latest
    latest = tlog_of(ws).latest_checkpoint()
    assert latest is not None and latest.note == third.note
    assert verify_log(ws.layout.state_dir / "audit", ws.layout.node_pub_path.read_bytes()).ok


def test_fips_node_signs_ecdsa_checkpoints(tmp_path: Path) -> None:
    """A FIPS node (ECDSA P-256 key) signs its checkpoints with note signature type 0x02."""
    ws = app.init_workspace(tmp_path / "ws", fips=True)
    assert maybe_checkpoint(shared_tlog(ws), every=5) is None  # not due: no key needed
    ws.audit().append_many([Event("x", {"i": i}) for i in range(5)])
    cp = maybe_checkpoint(shared_tlog(ws), every=5)
    assert cp is not None and cp.size == 6
    assert tlog_of(ws).verify().ok


def test_a_remembered_checkpoint_does_not_survive_tampering(tmp_path: Path) -> None:
    """One TransparencyLog verifies audit.tail once per exact bytes and key: a changed tail,
    or a different node key, is verified again (and refused)."""
    ws = app.init_workspace(tmp_path / "ws")
    t = tlog_of(ws)
    cp = t.checkpoint("one")
    assert t.latest_checkpoint() == cp and t.latest_checkpoint() == cp  # second: remembered
    tail = ws.layout.state_dir / "audit" / "audit.tail"
    good = tail.read_bytes()
    body, sig = good.rsplit(b" ", 1)
    forged = body + b" " + (b"A" if sig[:1] != b"A" else b"B") + sig[1:]
    tail.write_bytes(forged)
    with pytest.raises(AuditError) as exc:
        t.latest_checkpoint()
    assert exc.value.code == "CHECKPOINT_FORGED"
    tail.write_bytes(good)
    assert t.latest_checkpoint() == cp
    other = app.keygen("other", tmp_path / "keys", b"pw-for-tests-only")
    ws.layout.node_pub_path.write_bytes(other.public_path.read_bytes())
    with pytest.raises(AuditError) as exc:
        t.latest_checkpoint()
    assert exc.value.code == "CHECKPOINT_FORGED"
