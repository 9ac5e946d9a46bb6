"""End to end: ``nightcore logs --follow`` shows a run's output while the run is still going.

The tenant writes a line and then loops until it is cordoned, so "the run is in progress" is a
fact the test controls, not a timing guess: the follower must print the line while the run is
running, then end by itself when the kill switch stops the run. In process and through a
node's worker (real processes, real Wasmtime).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Env, run_cli_subprocess, wat_module
from tests.e2e.test_kill_switch import (
    FOREVER,
    WAIT_S,
    _finish,
    _start_run,
    _wait_started,
    ks_env,  # noqa: F401 - a fixture, used by name
)
from tests.node.test_node import NodeProcess

# Writes "first\n" to stdout and "warn\n" to stderr, then loops until stopped.
CHATTY_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "first\\n")
  (data (i32.const 32) "warn\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 32))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $l (br $l))))
"""


def _wait_for(path: Path, content: bytes) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes() == content:
            return
        time.sleep(0.02)  # polling a condition with a deadline
    raise AssertionError(f"{path} never held {content!r}")


def _read_line(proc: subprocess.Popen[bytes]) -> bytes:
    """One line of the follower's stdout, or fail after WAIT_S (readline would block)."""
    got: list[bytes] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(WAIT_S)
    assert got, "the follower printed nothing while the run was in progress"
    return got[0]


def _follow_while_running(ws: Path, *run_args: str) -> None:
    client = _start_run(ws, "chatty", "hello", "--no-dashboard", *run_args)
    run_id = _wait_started(ws, "chatty", client)
    live = ws / "state" / "live" / f"{run_id}.stdout"
    _wait_for(live, b"first\n")
    assert not (ws / "state" / "runs" / run_id).exists()  # still running: no output files yet
    follower = subprocess.Popen(
        [sys.executable, "-m", "nightcore", "-w", str(ws), "logs", "--follow", run_id[:-2]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    errs = subprocess.Popen(
        [sys.executable, "-m", "nightcore", "-w", str(ws), "logs", "-f", "--stderr", run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Printed while the tenant is still looping: the run has no outcome yet.
        assert _read_line(follower) == b"first\n"
        assert _read_line(errs) == b"warn\n"
        assert follower.poll() is None  # and the follower waits for more
        assert not (ws / "state" / "runs" / run_id).exists()
        res = run_cli_subprocess("-w", str(ws), "cordon", "chatty", "--reason", "seen enough")
        assert res.code == 0, res.err
        rows = _finish(client)
        assert rows["chatty"]["code"] == "CORDONED_IN_FLIGHT"
        assert rows["hello"]["code"] == "OK"
        # The run ended: both followers end by themselves, with nothing more and no error.
        rest, err = follower.communicate(timeout=WAIT_S)
        assert follower.returncode == 0, err
        assert rest == b"" and b"Traceback" not in err
        rest, err = errs.communicate(timeout=WAIT_S)
        assert errs.returncode == 0 and rest == b"", err
    finally:
        for p in (follower, errs, client):
            if p.poll() is None:
                p.kill()
                p.communicate()
    # The live copies are gone; the run's own files hold the same bytes.
    assert not live.exists() and not live.with_suffix(".stderr").exists()
    assert (ws / "state" / "runs" / run_id / "stdout").read_bytes() == b"first\n"
    again = run_cli_subprocess("-w", str(ws), "logs", "--follow", run_id)
    assert again.code == 0 and again.out == "first\n", again.err


@pytest.fixture
def chatty(ks_env: Env) -> Env:  # noqa: F811 - the imported fixture, by name
    ks_env.add_tenant("chatty", FOREVER, wasm=wat_module(CHATTY_WAT))
    return ks_env


def test_follow_in_process_run(chatty: Env) -> None:
    _follow_while_running(chatty.ws, "--local")


def test_follow_run_on_a_node_worker(chatty: Env) -> None:
    node = NodeProcess(chatty.ws)
    try:
        _follow_while_running(chatty.ws)
    finally:
        assert node.stop() == 0, "".join(node.log)


def test_follow_refusals(env: Env) -> None:
    env.add_tenant("hello")
    assert env.cli("run", "hello", "--local", "--no-dashboard").code == 0
    run_id = env.cli("runs", "--json").json()[0]["run_id"]
    res = env.cli("logs", "--follow", run_id, "--json")
    assert res.code == 2 and "USAGE" in res.err and "--follow" in res.err
    res = env.cli("logs", "--follow", "20991231T")
    assert res.code != 0 and "RUN_NOT_FOUND" in res.err
    res = env.cli("runs", "logs", run_id[:-1], "--follow")
    assert res.code == 0 and res.out == "hello\n"


def test_a_node_start_clears_live_output_a_dead_run_left(chatty: Env) -> None:
    """A run whose process died keeps its live file; the node closes the run INTERRUPTED and
    removes the file, so a follower does not wait for output that will never come."""
    ws = chatty.ws
    client = _start_run(ws, "chatty", "--local", "--no-dashboard")
    run_id = _wait_started(ws, "chatty", client)
    live = ws / "state" / "live" / f"{run_id}.stdout"
    _wait_for(live, b"first\n")
    client.kill()
    client.communicate()
    assert live.exists()
    node = NodeProcess(ws)
    try:
        assert not live.exists()
        res = run_cli_subprocess("-w", str(ws), "logs", "--follow", run_id)
        assert res.code != 0 and "RUN_NOT_FOUND" in res.err  # it never wrote output files
    finally:
        assert node.stop() == 0, "".join(node.log)
