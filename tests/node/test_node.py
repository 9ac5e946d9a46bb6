"""The node agent, as an operator runs it: ``nightcore node`` in its own process, the CLI as its
client, and the faults the issue names (a worker SIGKILLed mid-run, the node SIGKILLed, a peer
of another uid, a client that goes away, a CPU hog beside a small tenant).

Readiness is an event, never a sleep: the node prints its "serving" line once it listens, and
conditions (a worker busy with a run) are awaited by asking the node, with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nightcore.node.client import connect
from tests.conftest import Env, run_cli_subprocess, wat_module

LOOP_WAT = '(module (func (export "_start") (loop $l (br $l))))'
# Long enough to act on it mid-run, short enough to end by itself (fuel never runs out first).
HOG_LIMITS = "[limits]\nfuel = 1000000000000\nwall_ms = {wall}\n"
START_TIMEOUT_S = 120.0
WAIT_S = 60.0


class NodeProcess:
    def __init__(self, ws: Path, workers: int = 2, extra: tuple[str, ...] = ()) -> None:
        self.ws = ws
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *("-m", "nightcore", "-w", str(ws), "node", "--workers", str(workers)),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        self.log: list[str] = []
        self._await_line("serving ")

    def _await_line(self, needle: str) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"node exited early: {''.join(self.log)}")
            self.log.append(line)
            if needle in line:
                return line
        raise AssertionError(f"node never printed {needle!r}: {''.join(self.log)}")

    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        events: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> Any:
        client = connect(self.ws / "state" / "node.sock")
        assert client is not None, "no node listening"
        on_event = None if events is None else lambda e, d: events.append((e, d))
        return client.call(op, args or {}, on_event)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status")
        return result

    def wait_busy(self, tenant: str, client: subprocess.Popen[str] | None = None) -> list[int]:
        """Wait until ``tenant`` holds a worker; the busy workers' pids."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if client is not None and client.poll() is not None:
                out, err = client.communicate()
                raise AssertionError(f"the client ended first: {out} {err}")
            pool = self.status()["pool"]
            if pool["running"].get(tenant):
                return [int(p) for p in pool["worker_pids"]]
            time.sleep(0.02)  # polling a condition with a deadline, not a readiness sleep
        raise AssertionError(f"{tenant} never started")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stderr is not None
        rest = self.proc.stderr.read()
        self.log.append(rest)
        return self.proc.wait(timeout=START_TIMEOUT_S)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=60)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def node_env(env: Env) -> Iterator[Env]:
    env.add_tenant("hello")
    yield env


@pytest.fixture
def node(node_env: Env) -> Iterator[NodeProcess]:
    n = NodeProcess(node_env.ws)
    yield n
    if n.proc.poll() is None:
        n.kill()


def wait_started(ws: Path, tenant: str) -> str:
    """Wait until ``tenant``'s run_start is durable in the audit log; its run id."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for r in _audit(ws):
            if r["event"] == "run_start" and r.get("tenant") == tenant:
                return str(r["data"]["run_id"])
        time.sleep(0.02)  # polling a condition with a deadline
    raise AssertionError(f"{tenant} never started")


def _audit(ws: Path) -> list[dict[str, Any]]:
    text = (ws / "state" / "audit" / "audit.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _cli(ws: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nightcore", "-w", str(ws), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_node_serves_run_verify_runs_for_a_client(node_env: Env, node: NodeProcess) -> None:
    ws = node_env.ws
    # The same commands, through the node: same output shapes and exit codes as in-process.
    via_node = run_cli_subprocess("-w", str(ws), "run", "--json", "--no-dashboard")
    assert via_node.code == 0, via_node.err
    (row,) = via_node.json()
    assert row["tenant"] == "hello" and row["code"] == "OK" and row["audit_seq"] is not None
    assert node.status()["requests"] >= 1

    verify = run_cli_subprocess("-w", str(ws), "verify", "--json")
    assert verify.code == 0 and verify.json()[0]["code"] == "OK"
    runs = run_cli_subprocess("-w", str(ws), "runs", "--json")
    assert [r["run_id"] for r in runs.json()] == [row["run_id"]]

    served = node.status()["requests"]
    local = run_cli_subprocess("-w", str(ws), "run", "--local", "--json", "--no-dashboard")
    assert local.code == 0 and local.json()[0]["code"] == "OK"
    assert node.status()["requests"] == served + 1  # only this status call: --local bypassed it

    before = node.status()["requests"]
    checkpoint = run_cli_subprocess("-w", str(ws), "audit", "checkpoint", "--json")
    assert checkpoint.code == 0 and checkpoint.json()["ok"] is True, checkpoint.err
    audit_ok = run_cli_subprocess("-w", str(ws), "audit", "verify", "--json")
    assert audit_ok.code == 0 and audit_ok.json()["ok"] is True
    assert audit_ok.json()["latest_checkpoint"] == checkpoint.json()["size"]
    assert node.status()["requests"] == before + 3  # both went through the node

    table = run_cli_subprocess("-w", str(ws), "run", "--no-dashboard")
    assert table.code == 0 and "hello" in table.out and "1/1 tenants OK" in table.err
    # a tenant that does not exist: the node's refusal, same code and exit status as locally
    missing = run_cli_subprocess("-w", str(ws), "run", "nope")
    assert missing.code == 2 and "error[TENANT_NOT_FOUND]" in missing.err

    assert node.stop() == 0
    assert not (ws / "state" / "node.sock").exists()
    lines = _audit(ws)
    assert lines[-2]["event"] == "node_stop" and lines[-1]["event"] == "checkpoint"
    assert run_cli_subprocess("-w", str(ws), "audit", "verify").code == 0


def test_progress_events_only_for_a_caller_that_wants_them(
    node_env: Env, node: NodeProcess
) -> None:
    args: dict[str, Any] = {"tenants": ["hello"], "dashboard": False, "checkpoint": False}
    events: list[tuple[str, dict[str, Any]]] = []
    node.call("run", args, events)
    assert [e for e, _ in events] == ["selected", "progress"]
    events.clear()
    result = node.call("run", {**args, "progress": False}, events)
    assert [e for e, _ in events] == ["selected"]  # the count still comes first
    assert [r["code"] for r in result["runs"]] == ["OK"]


def test_a_second_node_for_the_same_workspace_is_refused(node_env: Env, node: NodeProcess) -> None:
    res = run_cli_subprocess("-w", str(node_env.ws), "node", "--workers", "1")
    assert res.code == 2 and "error[NODE_RUNNING]" in res.err


def kill_the_looping_worker(node: NodeProcess) -> None:
    """SIGKILL the one busy worker once it runs a guest's loop (state R): it first waits for
    its bounded compile process (docs/limits.md)."""
    busy = node.call("status")["pool"]
    assert busy["busy"] == 1
    pids = set(busy["worker_pids"])
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    state = fh.read().split()[2]
            except FileNotFoundError:
                continue
            if state == "R":  # running the guest's loop
                os.kill(pid, signal.SIGKILL)
                return
        time.sleep(0.02)  # polling a condition with a deadline
    pytest.fail("no worker was running the loop")


def test_worker_killed_mid_run_ends_that_run_worker_crashed(node_env: Env) -> None:
    node_env.add_tenant("looper", HOG_LIMITS.format(wall=9000), wasm=wat_module(LOOP_WAT))
    node = NodeProcess(node_env.ws)
    try:
        client = _cli(node_env.ws, "run", "looper", "--json", "--no-dashboard")
        node.wait_busy("looper", client)
        wait_started(node_env.ws, "looper")
        kill_the_looping_worker(node)
        out, err = client.communicate(timeout=WAIT_S)
        assert client.returncode == 1, err
        (row,) = json.loads(out)
        assert row["code"] == "WORKER_CRASHED" and "SIGKILL" in row["reason"]
        # the next run works, and the pool replaced the worker
        nxt = run_cli_subprocess("-w", str(node_env.ws), "run", "hello", "--json", "--no-dashboard")
        assert nxt.code == 0 and nxt.json()[0]["code"] == "OK"
        assert node.status()["pool"]["replaced"] == 1
        outcome = [r for r in _audit(node_env.ws) if r["event"] == "run_outcome"]
        assert [r["data"]["code"] for r in outcome] == ["WORKER_CRASHED", "OK"]
    finally:
        node.stop()


def test_a_crashed_worker_whose_runs_the_log_cannot_close_still_answers(
    node_env: Env,
) -> None:
    """The node reads the audit log to close a dead worker's runs. A log it cannot read there
    (here a FIFO in its place: the read would have blocked the pool for good) still gets the
    caller an answer with a code; the run left open is closed INTERRUPTED by the node's next
    start, and the log verifies."""
    node_env.add_tenant("looper", HOG_LIMITS.format(wall=9000), wasm=wat_module(LOOP_WAT))
    log = node_env.ws / "state" / "audit" / "audit.jsonl"
    aside = log.with_name("audit.jsonl.aside")
    node = NodeProcess(node_env.ws)
    try:
        client = _cli(node_env.ws, "run", "looper", "--json", "--no-dashboard")
        node.wait_busy("looper", client)
        run_id = wait_started(node_env.ws, "looper")
        os.rename(log, aside)
        os.mkfifo(log)
        try:
            kill_the_looping_worker(node)
            out, err = client.communicate(timeout=WAIT_S)
        finally:
            log.unlink()
            os.rename(aside, log)
        assert client.returncode == 1, err
        (row,) = json.loads(out)
        assert row["code"] == "AUDIT_INVALID" and "could not record it" in row["reason"], row
    finally:
        node.stop()
    NodeProcess(node_env.ws).stop()  # the next start closes what was left open
    closing = [r for r in _audit(node_env.ws) if r["event"] == "run_outcome"]
    assert [(r["data"]["run_id"], r["data"]["code"]) for r in closing] == [(run_id, "INTERRUPTED")]
    verify = run_cli_subprocess("-w", str(node_env.ws), "audit", "verify", "--json")
    assert verify.code == 0, verify.err


def test_node_killed_mid_run_leaves_interrupted_outcomes(node_env: Env) -> None:
    node_env.add_tenant("looper", HOG_LIMITS.format(wall=9000), wasm=wat_module(LOOP_WAT))
    node = NodeProcess(node_env.ws)
    client = _cli(node_env.ws, "run", "looper", "--no-dashboard")
    node.wait_busy("looper", client)
    wait_started(node_env.ws, "looper")
    node.kill()  # SIGKILL: no chance to record anything
    client.communicate(timeout=WAIT_S)
    assert client.returncode == 2  # the client says it lost the node
    started = [r for r in _audit(node_env.ws) if r["event"] == "run_start"]
    assert len(started) == 1
    run_id = started[0]["data"]["run_id"]
    assert not [r for r in _audit(node_env.ws) if r["event"] == "run_outcome"]

    again = NodeProcess(node_env.ws)  # closes the open run before it listens
    try:
        assert any("closed 1 run(s)" in line for line in again.log)
        closing = [r for r in _audit(node_env.ws) if r["event"] == "run_outcome"]
        assert [(r["data"]["run_id"], r["data"]["code"]) for r in closing] == [
            (run_id, "INTERRUPTED")
        ]
        res = run_cli_subprocess("-w", str(node_env.ws), "run", "hello", "--no-dashboard")
        assert res.code == 0
    finally:
        again.stop()
    assert run_cli_subprocess("-w", str(node_env.ws), "audit", "verify").code == 0


@pytest.mark.skipif(os.getuid() != 0, reason="switching to another uid needs root")
def test_a_peer_of_another_uid_is_refused(node_env: Env, node: NodeProcess) -> None:
    sock = node_env.ws / "state" / "node.sock"
    assert (sock.stat().st_mode & 0o777) == 0o600
    # The mode already keeps other uids out; widen it (as a careless operator might) to show
    # the second wall: the node checks the peer's uid on every connection.
    os.chmod(sock, 0o666)  # noqa: S103 - the misconfiguration under test
    state = node_env.ws / "state"
    os.chmod(state, os.stat(state).st_mode | 0o011)  # noqa: S103 - lets the probe in
    # The probe enters state/ as root, then drops to uid 65534 and connects by relative name
    # (the pytest directories above are 0700).
    probe = (
        "import os, sys, json, socket\n"
        "os.chdir(os.path.dirname(sys.argv[1]))\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX); s.connect('node.sock')\n"
        's.sendall(b\'{"v":1,"op":"ping","args":{}}\\n\')\n'
        "print(s.makefile().readline())\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe, str(sock)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    reply = json.loads(res.stdout)
    assert reply["ok"] is False and reply["error"]["code"] == "NODE_PEER_REFUSED"
    refused = [r for r in _audit(node_env.ws) if r["event"] == "node_client_refused"]
    assert refused and refused[0]["data"]["uid"] == 65534


def test_malformed_requests_get_a_code(node_env: Env, node: NodeProcess) -> None:
    import socket

    for line in (b"not json\n", b'{"v":1,"op":"rm -rf","args":{}}\n', b'{"v":1,"op":"run"}x\n'):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(node_env.ws / "state" / "node.sock"))
        s.sendall(line)
        reply = json.loads(s.makefile().readline())
        s.close()
        assert reply["ok"] is False and reply["error"]["code"] == "NODE_REQUEST_INVALID"
    bad_args = node.call  # a well-formed request with hostile arguments
    with pytest.raises(Exception, match="tenants must be a list"):
        bad_args("run", {"tenants": "hello; rm -rf /"})
    with pytest.raises(Exception, match="must be true or false"):
        bad_args("run", {"tenants": ["hello"], "progress": "yes"})
    assert node.status()["pool"]["alive"] == 2


def test_client_gone_mid_request_leaves_no_half_recorded_run(node_env: Env) -> None:
    node_env.add_tenant("looper", HOG_LIMITS.format(wall=1500), wasm=wat_module(LOOP_WAT))
    node = NodeProcess(node_env.ws)
    try:
        client = _cli(node_env.ws, "run", "looper", "--no-dashboard")
        node.wait_busy("looper", client)
        client.kill()
        client.communicate(timeout=WAIT_S)
        deadline = time.monotonic() + WAIT_S
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not runs:
            runs = node.call("runs", {"tenant": "looper"})
            time.sleep(0.02)  # polling a condition with a deadline
        assert [r["code"] for r in runs] == ["TIMEOUT"]
    finally:
        node.stop()
    lines = _audit(node_env.ws)
    starts = {r["data"]["run_id"] for r in lines if r["event"] == "run_start"}
    outcomes = {r["data"]["run_id"] for r in lines if r["event"] == "run_outcome"}
    assert starts == outcomes and len(starts) == 1


def test_a_cpu_hog_does_not_hold_every_worker(node_env: Env) -> None:
    """Two requests for a CPU-bound tenant and one for hello, on two workers: the per-tenant
    cap (all workers but one) keeps one worker for hello, which finishes while the hogs run."""
    node_env.add_tenant("hog", HOG_LIMITS.format(wall=4000), wasm=wat_module(LOOP_WAT))
    node = NodeProcess(node_env.ws)
    try:
        hogs = [_cli(node_env.ws, "run", "hog", "--json", "--no-dashboard") for _ in range(2)]
        node.wait_busy("hog")
        pool = node.status()["pool"]
        assert pool["running"] == {"hog": 1}  # the second hog waits: the cap is 1 of 2
        hello = run_cli_subprocess(
            "-w", str(node_env.ws), "run", "hello", "--json", "--no-dashboard"
        )
        assert hello.code == 0 and hello.json()[0]["code"] == "OK"
        # hello was served while the hogs were still running or queued
        assert all(h.poll() is None for h in hogs)
        for h in hogs:
            out, _ = h.communicate(timeout=WAIT_S)
            assert json.loads(out)[0]["code"] == "TIMEOUT"
    finally:
        node.stop()


def test_node_hosts_the_console_and_its_runs_use_the_workers(node_env: Env) -> None:
    import urllib.request

    token = run_cli_subprocess("-w", str(node_env.ws), "serve", "token", "create", "--json")
    assert token.code == 0, token.err
    bearer = token.json()["token"]
    node = NodeProcess(node_env.ws, extra=("--http", "127.0.0.1:0"))
    try:
        (line,) = [ln for ln in node.log if "console on " in ln]
        url = line.split("console on ", 1)[1].split()[0]
        before = node.status()["pool"]["runs"]
        req = urllib.request.Request(  # noqa: S310 - a loopback http URL the node printed
            url + "api/run",
            data=json.dumps({"tenants": ["hello"]}).encode(),
            headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=WAIT_S) as res:  # noqa: S310 - loopback URL
            body = json.loads(res.read())
        assert body["ok"] is True and body["runs"][0]["code"] == "OK"
        assert node.status()["pool"]["runs"] == before + 1  # the node's own workers ran it
        with urllib.request.urlopen(url + "api/runs", timeout=WAIT_S) as res:  # noqa: S310
            assert json.loads(res.read())["runs"][0]["tenant"] == "hello"
    finally:
        assert node.stop() == 0
    events = [r["event"] for r in _audit(node_env.ws)]
    assert "console_action" in events and events[-2:] == ["node_stop", "checkpoint"]


def test_serve_is_refused_while_a_node_runs(node_env: Env, node: NodeProcess) -> None:
    res = run_cli_subprocess("-w", str(node_env.ws), "serve", "--port", "0", timeout=60)
    assert res.code == 2 and "error[NODE_RUNNING]" in res.err and "--http" in res.err


def test_sigterm_lets_in_flight_runs_finish_then_checkpoints(node_env: Env) -> None:
    node_env.add_tenant("looper", HOG_LIMITS.format(wall=3000), wasm=wat_module(LOOP_WAT))
    node = NodeProcess(node_env.ws)
    client = _cli(node_env.ws, "run", "looper", "--json", "--no-dashboard")
    node.wait_busy("looper", client)
    wait_started(node_env.ws, "looper")
    assert node.stop() == 0  # SIGTERM while the run is in flight
    out, err = client.communicate(timeout=WAIT_S)
    assert client.returncode == 1, err  # the run ended TIMEOUT: reported, not lost
    assert json.loads(out)[0]["code"] == "TIMEOUT"
    events = [(r["event"], r["data"].get("code")) for r in _audit(node_env.ws)]
    assert events.index(("run_outcome", "TIMEOUT")) < events.index(("node_stop", None))
    assert events[-1][0] == "checkpoint"
    assert not (node_env.ws / "state" / "node.sock").exists()


def test_runs_that_never_ran_come_back_through_the_node_with_nulls(
    node_env: Env, node: NodeProcess
) -> None:
    # A cordoned tenant and a tampered one never reach a sandbox: their runs carry no
    # measurements, and the frame format (integer microseconds) must carry that null through.
    ws = node_env.ws
    node_env.add_tenant("tampered")
    (ws / "modules" / "tampered" / "module.wasm").write_bytes(wat_module(LOOP_WAT))
    cordoned = run_cli_subprocess("-w", str(ws), "cordon", "hello", "--reason", "test")
    assert cordoned.code == 0, cordoned.err

    res = run_cli_subprocess("-w", str(ws), "run", "--json", "--no-dashboard")
    assert res.code == 1, res.err
    rows = {r["tenant"]: r for r in res.json()}
    assert rows["hello"]["code"] == "CORDONED" and rows["tampered"]["code"] == "DIGEST_MISMATCH"
    for row in rows.values():
        assert row["wall_ms"] is None and row["fuel_used"] is None, row

    table = run_cli_subprocess("-w", str(ws), "run", "--no-dashboard")
    assert table.code == 1 and "CORDONED" in table.out and "Traceback" not in table.err
    runs = run_cli_subprocess("-w", str(ws), "runs")
    assert runs.code == 0 and "Traceback" not in runs.err, runs.err
