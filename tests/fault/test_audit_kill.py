"""Crash safety of the audit writer: writers are SIGKILLed at random moments, again and again.

After every kill: one new append recovers whatever the killed writers left (a torn tail is moved
aside and the recovery logged), ``verify_chain`` passes over the whole file, every seq a writer
acknowledged (printed after ``append`` returned, i.e. after its fsync) is present with its data,
and the transparency log's tree (synced incrementally) has exactly the log's lines as leaves.

A SIGKILL can cut a large ``write()`` short between pages, so the "big" writer uses
multi-hundred-kilobyte batches; that happens only sometimes. A crash below the process (power
loss, a device tearing a write) is simulated every few rounds by appending a prefix of a line,
so torn-tail recovery is exercised on every run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from nightcore.audit import merkle
from nightcore.audit.log import AuditLog, verify_chain
from nightcore.audit.tree import LogTree

ROUNDS = 24
TIME_BUDGET_S = 11.0  # stop early on a slow machine; the suite must stay well under 20 s

WRITER = r"""
import sys
from pathlib import Path
from nightcore.audit.log import AuditLog, Event

directory, wid, big = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
log = AuditLog(directory, "node-" + wid)
out = sys.stdout
i = 0
while True:
    if big and i % 3 == 1:
        events = [Event("fault", {"w": wid, "i": i + k, "pad": "b" * 65536}) for k in range(16)]
        entries = log.append_many(events)
    else:
        entries = [log.append("fault", {"w": wid, "i": i, "pad": "s" * (i % 40)}, tenant=wid)]
    for e in entries:  # acknowledged: append returned, the batch is durable
        out.write(f"{e.seq} {wid} {e.record['data']['i']}\n")
    out.flush()
    i += len(entries)
"""


def start_writer(directory: Path, wid: str, big: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), wid, "1" if big else "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=0,  # unbuffered: readline() below must not swallow what communicate() reads
    )


def acknowledged(out: bytes) -> list[tuple[int, str, int]]:
    acks = []
    for line in out.split(b"\n")[:-1]:  # a last line without newline was cut by the kill
        seq, wid, i = line.split()
        acks.append((int(seq), wid.decode(), int(i)))
    return acks


def test_sigkilled_writers_lose_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    directory = tmp_path / "audit"
    checker = AuditLog(directory, "checker")
    checker.append("start", {})
    tree = LogTree(directory)
    acked: dict[int, tuple[str, int]] = {}
    simulated = 0
    rounds = 0
    started = time.monotonic()
    for rnd in range(ROUNDS):
        if time.monotonic() - started > TIME_BUDGET_S and rounds >= 10:
            break
        rounds += 1
        procs = [
            start_writer(directory, f"r{rnd}a", big=False),
            start_writer(directory, f"r{rnd}b", big=rng.random() < 0.7),
        ]
        try:
            heads = [p.stdout.readline() if p.stdout else b"" for p in procs]  # both writing
            time.sleep(rng.uniform(0.0, 0.06))
            for p in rng.sample(procs, len(procs)):
                os.kill(p.pid, signal.SIGKILL)
                time.sleep(rng.uniform(0.0, 0.02))
            outs = [
                head + p.communicate(timeout=30)[0] for head, p in zip(heads, procs, strict=True)
            ]
        finally:
            for p in procs:
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
        for p in procs:
            assert p.returncode == -signal.SIGKILL
        for out in outs:
            for seq, wid, i in acknowledged(out):
                assert acked.setdefault(seq, (wid, i)) == (wid, i), "one seq, one entry"
        if rnd % 4 == 3:  # a tear below the process: a prefix of a line reaches the disk
            line = directory.joinpath("audit.jsonl").read_bytes().splitlines()[-1]
            with directory.joinpath("audit.jsonl").open("ab") as fh:
                fh.write(line[: rng.randrange(1, len(line))])
            simulated += 1

        # The tree never ingests a partial line, whatever the writers left.
        tree.sync()
        # One new append recovers any torn tail ...
        checker.append("recovery_check", {"round": rnd})
        data = directory.joinpath("audit.jsonl").read_bytes()
        lines = data.splitlines(keepends=True)
        # ... the chain verifies ...
        assert verify_chain(iter(lines)).entries == len(lines)
        # ... every acknowledged entry is there, with its data ...
        for seq, (wid, i) in acked.items():
            rec = json.loads(lines[seq])
            assert (rec["seq"], rec["node"], rec["data"]["w"], rec["data"]["i"]) == (
                seq,
                f"node-{wid}",
                wid,
                i,
            )
        # ... and the Merkle tree is exactly the log's lines.
        state = tree.sync()
        assert state.size == len(lines)
        assert tree.tree.root() == merkle.root([merkle.leaf_hash(x[:-1]) for x in lines])

    records = [json.loads(x) for x in directory.joinpath("audit.jsonl").read_bytes().splitlines()]
    recoveries = [r for r in records if r["event"] == "audit_torn_tail_recovered"]
    torn_files = sorted(directory.glob("audit.jsonl.torn-*"))
    assert len(recoveries) == len(torn_files) >= simulated >= 1
    assert {r["data"]["moved_to"] for r in recoveries} == {p.name for p in torn_files}
    assert len(acked) > rounds, "the writers did write"
    assert tree.rebuilds == 1, "the tree followed the log incrementally"
    print(
        f"{rounds} rounds, {len(acked)} acknowledged entries, {len(records)} lines, "
        f"{len(recoveries)} torn tails recovered ({len(recoveries) - simulated} from SIGKILL)"
    )
