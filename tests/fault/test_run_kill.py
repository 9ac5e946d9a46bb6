"""Crash safety of the run path: a runner executing batches is SIGKILLed at random moments.

Runs share fsyncs (a worker's outcomes ride with the next group's run_start lines), so this
checks the promise that makes that safe, after every kill: the audit log verifies; every run
the runner reported (its progress callback fired) has its run_outcome in the log; every
run_outcome follows its run's admit and run_start; and every attestation on disk names the
seq of its run's outcome line.
"""

from __future__ import annotations

import base64
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nightcore import app
from nightcore.context import NodeContext
from nightcore.evidence.attestation import ATTESTATION_FILE
from tests.conftest import HELLO_WAT, PASSPHRASE, simple_manifest, wat_module, write_tenant

ROUNDS = 5
TIME_BUDGET_S = 10.0
TENANTS = 24

RUNNER = r"""
import sys
from pathlib import Path
from nightcore.runner.pipeline import Runner
from nightcore.context import NodeContext

ws = NodeContext(Path(sys.argv[1]))
names = sorted(p.name for p in ws.layout.modules_dir.iterdir())
runner = Runner(ws)
out = sys.stdout

def reported(tr):
    out.write(tr.run_id + "\n")
    out.flush()

while True:
    runner.run(names, parallel=2, checkpoint=False, progress=reported)
"""


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NIGHTCORE_KEY_PASSPHRASE", PASSPHRASE)
    ws = app.init_workspace(tmp_path / "ws")
    key = app.keygen("pub", tmp_path / "keys", PASSPHRASE.encode())
    app.trust_add_key(ws, key.public_path, scope="*")
    wasm = wat_module(HELLO_WAT)
    for i in range(TENANTS):
        name = f"hello-{i:02d}"
        app.sign_tenant(
            write_tenant(ws.root, name, simple_manifest(name), wasm), str(key.private_path)
        )
    return ws.root


def check_after_kill(root: Path, reported: set[str]) -> int:
    ws = NodeContext(root)
    ws.audit().append("fault_check", {})  # the next writer recovers whatever the kill left
    from nightcore.audit.verify import verify_log

    report = verify_log(ws.layout.state_dir / "audit", ws.layout.node_pub_path.read_bytes())
    assert report.ok, report.to_dict()
    seen: dict[str, dict[str, int]] = {}
    for line in (ws.layout.state_dir / "audit" / "audit.jsonl").read_bytes().splitlines():
        rec = json.loads(line)
        rid = rec["data"].get("run_id")
        if rec["event"] in ("admit", "run_start", "run_outcome") and isinstance(rid, str):
            assert rec["event"] not in seen.setdefault(rid, {}), rec
            seen[rid][rec["event"]] = rec["seq"]
    outcomes = {rid for rid, s in seen.items() if "run_outcome" in s}
    assert reported <= outcomes, sorted(reported - outcomes)[:5]
    for rid in outcomes:
        s = seen[rid]
        assert s["admit"] < s["run_start"] < s["run_outcome"], (rid, s)
        run_dir = ws.layout.state_dir / "runs" / rid
        att = run_dir / ATTESTATION_FILE
        if att.exists():  # written after the outcome was durable: whole, or absent
            stmt = json.loads(base64.b64decode(json.loads(att.read_bytes())["payload"]))
            assert stmt["predicate"]["audit_seq"] == s["run_outcome"], rid
        assert not [p.name for p in run_dir.glob(".*.part")] or rid not in reported
    return len(outcomes)


def test_killed_runners_lose_nothing_they_reported(workspace: Path) -> None:
    deadline = time.monotonic() + TIME_BUDGET_S
    rng = random.Random(7)
    reported: set[str] = set()
    rounds = 0
    while rounds < ROUNDS and time.monotonic() < deadline:
        proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(workspace)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the runner is past its start-up and running
        assert first, "the runner died before reporting a run"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
        reported.update(x for x in (first + rest).decode().split() if x)
        assert check_after_kill(workspace, reported) >= len(reported)
        rounds += 1
    assert rounds >= 2 and reported
