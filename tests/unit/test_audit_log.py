"""The hash-chained audit writer: chaining, tamper detection, torn tails, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from nightcore.audit.log import ZERO_HASH, AuditLog, Event, verify_chain
from nightcore.canonical import canonical
from nightcore.errors import AuditError


def lines(log: AuditLog) -> list[bytes]:
    return log.path.read_bytes().splitlines(keepends=True)


def make(tmp_path: Path, n: int) -> AuditLog:
    log = AuditLog(tmp_path / "audit", "node")
    for i in range(n):
        log.append("test", {"i": i}, tenant="t")
    return log


def test_chain_links_and_verifies(tmp_path: Path) -> None:
    log = make(tmp_path, 5)
    recs = [json.loads(x) for x in lines(log)]
    assert recs[0]["prev"] == ZERO_HASH
    assert [r["seq"] for r in recs] == list(range(5))
    report = verify_chain(iter(lines(log)))
    assert report.entries == 5
    for raw in lines(log):
        assert canonical(json.loads(raw)) + b"\n" == raw


def test_batch_append_is_one_chain(tmp_path: Path) -> None:
    log = make(tmp_path, 1)
    entries = log.append_many([Event("a", {}), Event("b", {"x": [1, 2]}, "t")])
    assert [e.seq for e in entries] == [1, 2]
    assert verify_chain(iter(lines(log))).entries == 3


def _rewrite(log: AuditLog, new: list[bytes]) -> None:
    log.path.write_bytes(b"".join(new))


@pytest.mark.parametrize(
    "mutation,code",
    [
        ("edit", "AUDIT_CHAIN_BROKEN"),
        ("delete", "AUDIT_SEQ_GAP"),
        ("reorder", "AUDIT_SEQ_GAP"),
        ("garbage", "AUDIT_LINE_MALFORMED"),
        ("noncanonical", "AUDIT_NOT_CANONICAL"),
        ("duplicate_key", "AUDIT_LINE_MALFORMED"),
        ("nan", "AUDIT_LINE_MALFORMED"),
        ("torn", "AUDIT_TORN_TAIL"),
    ],
)
def test_tampering_is_named(tmp_path: Path, mutation: str, code: str) -> None:
    log = make(tmp_path, 6)
    ls = lines(log)
    if mutation == "edit":
        rec = json.loads(ls[2])
        rec["data"]["i"] = 99
        ls[2] = canonical(rec) + b"\n"
    elif mutation == "delete":
        del ls[3]
    elif mutation == "reorder":
        ls[2], ls[3] = ls[3], ls[2]
    elif mutation == "garbage":
        ls[1] = b"\x00\xffnot json\n"
    elif mutation == "noncanonical":
        ls[1] = json.dumps(json.loads(ls[1]), indent=1).replace("\n", " ").encode() + b"\n"
    elif mutation == "duplicate_key":
        ls[1] = ls[1].replace(b'{"data"', b'{"v":1,"data"', 1)
    elif mutation == "nan":
        ls[1] = ls[1].replace(b'"i":1', b'"i":NaN', 1)
    elif mutation == "torn":
        ls[-1] = ls[-1][:20]
    _rewrite(log, ls)
    with pytest.raises(AuditError) as err:
        verify_chain(iter(lines(log)))
    assert err.value.code == code


def test_torn_tail_is_moved_aside_and_logged(tmp_path: Path) -> None:
    log = make(tmp_path, 3)
    with log.path.open("ab") as fh:
        fh.write(b'{"data":{"half":')  # a crash mid-write
    fresh = AuditLog(tmp_path / "audit", "node")
    entry = fresh.append("after", {})
    assert verify_chain(iter(lines(fresh))).entries == 5
    recs = [json.loads(x) for x in lines(fresh)]
    assert recs[3]["event"] == "audit_torn_tail_recovered"
    assert recs[3]["data"]["bytes"] == len(b'{"data":{"half":')
    assert entry.seq == 4 and recs[4]["event"] == "after"
    [aside] = list((tmp_path / "audit").glob("audit.jsonl.torn-*"))
    assert aside.read_bytes() == b'{"data":{"half":'


def test_unparsable_last_line_is_treated_as_torn(tmp_path: Path) -> None:
    log = make(tmp_path, 2)
    with log.path.open("ab") as fh:
        fh.write(b"{oops\n")
    AuditLog(tmp_path / "audit", "node").append("after", {})
    assert verify_chain(iter(lines(log))).entries == 4


def test_oversized_event_is_refused_and_nothing_written(tmp_path: Path) -> None:
    log = make(tmp_path, 1)
    before = log.path.read_bytes()
    with pytest.raises(AuditError) as err:
        log.append("big", {"x": "a" * (2 * 1024 * 1024)})
    assert err.value.code == "AUDIT_LINE_TOO_LARGE"
    assert log.path.read_bytes() == before


def _writer(directory: str, worker: int, n: int) -> None:
    log = AuditLog(Path(directory), f"node-{worker}")
    for i in range(n):
        log.append("w", {"worker": worker, "i": i})


def test_concurrent_processes_never_interleave_or_fork_the_chain(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "audit"), w, 60)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    log = AuditLog(tmp_path / "audit", "x")
    assert verify_chain(iter(lines(log))).entries == 180
    seen = {(json.loads(x)["data"]["worker"], json.loads(x)["data"]["i"]) for x in lines(log)}
    assert len(seen) == 180


def test_threads_group_commit_into_one_valid_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import threading

    log = AuditLog(tmp_path / "audit", "node")
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:  # instrumentation, the real fsync still runs
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    seqs: dict[int, list[int]] = {}

    def worker(w: int) -> None:
        seqs[w] = [log.append("t", {"w": w, "i": i}).seq for i in range(50)]

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify_chain(iter(lines(log))).entries == 400
    for w, got in seqs.items():
        assert got == sorted(got) and len(set(got)) == 50, w
    recs = [json.loads(x) for x in lines(log)]
    assert {(r["data"]["w"], r["data"]["i"]) for r in recs} == {
        (w, i) for w in range(8) for i in range(50)
    }
    assert fsyncs <= 400  # never more than one per append; usually far fewer


def test_a_recovery_interrupted_before_its_event_is_finished_by_the_next_writer(
    tmp_path: Path,
) -> None:
    log = make(tmp_path, 2)
    # A writer moved a torn tail aside and truncated the log, then died before logging it.
    pending = tmp_path / "audit" / "audit.jsonl.torn-20260101T000000000000Z.pending"
    pending.write_bytes(b'{"half')
    AuditLog(tmp_path / "audit", "node").append("after", {})
    recs = [json.loads(x) for x in lines(log)]
    assert recs[2]["event"] == "audit_torn_tail_recovered"
    assert recs[2]["data"]["moved_to"] == "audit.jsonl.torn-20260101T000000000000Z"
    assert not pending.exists()
    assert (tmp_path / "audit" / "audit.jsonl.torn-20260101T000000000000Z").exists()
    # Died after logging but before the rename: finished without a second event.
    again = tmp_path / "audit" / "audit.jsonl.torn-20260101T000000000000Z.pending"
    (tmp_path / "audit" / "audit.jsonl.torn-20260101T000000000000Z").rename(again)
    AuditLog(tmp_path / "audit", "node").append("later", {})
    events = [json.loads(x)["event"] for x in lines(log)]
    assert events.count("audit_torn_tail_recovered") == 1
    assert not again.exists()
    assert verify_chain(iter(lines(log))).entries == 5


def _open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


def test_a_dropped_log_closes_its_kept_descriptors(tmp_path: Path) -> None:
    """The writer keeps its lock and log descriptors between appends; a process that opens
    many workspaces (a node's console, the test suite) must get them back when a log goes,
    or descriptor numbers climb past select()'s FD_SETSIZE and the limit (seen in CI)."""
    import gc

    before = _open_fds()
    for i in range(20):
        log = make(tmp_path / str(i), 2)
        assert log._fds is not None  # the descriptors are kept between appends
        del log
    gc.collect()
    assert _open_fds() <= before


def test_contexts_of_many_workspaces_do_not_accumulate_descriptors(tmp_path: Path) -> None:
    """The process-wide transparency-log table holds logs weakly: dropping a context frees its
    audit descriptors even after a checkpoint put its log in the table."""
    import gc

    from nightcore import app
    from nightcore.context import NodeContext

    def one(i: int) -> None:
        ctx = NodeContext(app.init_workspace(tmp_path / f"ws{i}").root)
        ctx.audit().append("test", {"i": i})
        ctx.transparency_log().checkpoint("test")

    one(0)
    gc.collect()
    before = _open_fds()
    for i in range(1, 15):
        one(i)
    gc.collect()
    assert _open_fds() <= before
