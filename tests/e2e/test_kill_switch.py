"""The kill switch (issue 13, "Kill switch, locally first"), driven as an operator would: a long
run in one process, ``nightcore cordon`` / ``revoke key`` / ``revoke module`` in another, and
the run stops with ``CORDONED_IN_FLIGHT`` / ``REVOKED_IN_FLIGHT`` long before its own limit —
in-process, with ``--strongbox``, and through a running node. Neighbours in the same run finish
``OK``, the interrupted run's ``run_outcome`` names the change, and ``audit verify`` passes.

The tenants loop forever with a 60 s wall limit: a run that was not interrupted would end with
``TIMEOUT`` after a minute (the regression this file guards against: the run went on to its own
limit). No wall-clock durations are asserted; readiness is polled with a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nightcore.sandbox.strongbox import seccomp_available
from tests.conftest import Env, run_cli_subprocess, wat_module
from tests.node.test_node import NodeProcess

LOOP_WAT = '(module (func (export "_start") (loop $l (br $l))))'
WALL_MS = 60_000
FOREVER = f"[limits]\nfuel = 1000000000000\nwall_ms = {WALL_MS}\n"
WAIT_S = 60.0
# A run that was interrupted ends far sooner than its wall limit; one that was not would still
# be going when this expires (TIMEOUT after WALL_MS). Generous: the machine is loaded.
END_S = WALL_MS / 1000 * 0.75

_NO_STRONGBOX = seccomp_available() or (
    "" if os.geteuid() == 0 else "strongbox workers need root (unshare(CLONE_NEWNET), setuid)"
)


def _audit(ws: Path) -> list[dict[str, Any]]:
    text = (ws / "state" / "audit" / "audit.jsonl").read_text()
    complete = text[: text.rfind("\n") + 1]  # a line being appended is read next time
    return [json.loads(line) for line in complete.splitlines()]


def _wait_started(ws: Path, tenant: str, client: subprocess.Popen[str], after: int = 0) -> str:
    """The run id of ``tenant``'s first run_start at or after audit line ``after``."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if client.poll() is not None:
            out, err = client.communicate()
            raise AssertionError(f"the run ended before {tenant} started: {out} {err}")
        for r in _audit(ws)[after:]:
            if r["event"] == "run_start" and r.get("tenant") == tenant:
                return str(r["data"]["run_id"])
        time.sleep(0.02)  # polling a condition with a deadline
    raise AssertionError(f"{tenant} never started")


def _outcome(ws: Path, run_id: str) -> dict[str, Any]:
    (line,) = [
        r for r in _audit(ws) if r["event"] == "run_outcome" and r["data"]["run_id"] == run_id
    ]
    return dict(line["data"])


def _start_run(ws: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nightcore", "-w", str(ws), "run", *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(client: subprocess.Popen[str]) -> dict[str, dict[str, Any]]:
    try:
        out, err = client.communicate(timeout=END_S)
    except subprocess.TimeoutExpired:
        client.kill()
        client.communicate()
        raise AssertionError(
            "the run was not interrupted: it went on towards its own limit"
        ) from None
    assert client.returncode == 1, err  # not every tenant OK
    assert "Traceback" not in err
    rows = {r["tenant"]: r for r in json.loads(out)}
    for row in rows.values():  # the reason of an unexpected code, in the failure message
        assert row["code"] in ("OK", "CORDONED_IN_FLIGHT", "REVOKED_IN_FLIGHT"), row
    return rows


def _audit_ok(ws: Path) -> None:
    res = run_cli_subprocess("-w", str(ws), "audit", "verify", "--json")
    assert res.code == 0 and res.json()["ok"] is True, res.out + res.err


@pytest.fixture
def ks_env(env: Env) -> Iterator[Env]:
    """A workspace whose node maximum allows the 60 s wall limit, with a tenant that loops
    forever (``looper``) and one that says hello (``hello``)."""
    toml = env.ws / "nightcore.toml"
    text = toml.read_text()
    head, sep, rest = text.partition("[policy.max_limits]")
    assert sep, "no [policy.max_limits] table in nightcore.toml"
    toml.write_text(head + sep + re.sub(r"wall_ms = \d+", f"wall_ms = {WALL_MS}", rest, count=1))
    env.add_tenant("looper", FOREVER, wasm=wat_module(LOOP_WAT))
    env.add_tenant("hello")
    yield env


def test_cordon_mid_run_in_process_stops_that_run_and_spares_its_neighbour(ks_env: Env) -> None:
    ws = ks_env.ws
    client = _start_run(ws, "looper", "hello", "--local", "--no-dashboard")
    run_id = _wait_started(ws, "looper", client)
    res = run_cli_subprocess("-w", str(ws), "cordon", "looper", "--reason", "incident 7")
    assert res.code == 0, res.err
    rows = _finish(client)
    assert rows["looper"]["code"] == "CORDONED_IN_FLIGHT"
    assert "incident 7" in rows["looper"]["reason"]
    assert rows["hello"]["code"] == "OK"
    data = _outcome(ws, run_id)
    assert data["code"] == "CORDONED_IN_FLIGHT"
    assert data["interrupted_by"]["change"] == "cordon"
    assert data["interrupted_by"]["reason"] == "incident 7"
    # The cordon also stops admission: the next run is refused before it starts.
    again = run_cli_subprocess("-w", str(ws), "run", "looper", "--local", "--json")
    assert again.code == 1, again.out + again.err
    assert again.json()[0]["code"] == "CORDONED"
    _audit_ok(ws)


def test_revoke_key_mid_run_stops_runs_signed_by_it_only(
    ks_env: Env, keys_dir: dict[str, Any]
) -> None:
    ws = ks_env.ws
    bob = keys_dir["bob"]
    added = run_cli_subprocess(
        "-w", str(ws), "trust", "add-key", str(bob.public_path), "--scope", "*"
    )
    assert added.code == 0, added.err
    # A neighbour signed by another key, which loops for a bounded number of iterations.
    ks_env.add_tenant("steady", FOREVER, wasm=wat_module(COUNT_WAT), key=bob)
    alice = ks_env.publisher.key_id
    client = _start_run(ws, "looper", "steady", "--local", "--no-dashboard")
    run_id = _wait_started(ws, "looper", client)
    res = run_cli_subprocess(
        "-w",
        str(ws),
        "revoke",
        "key",
        alice,
        "--key",
        str(ks_env.maintainer.private_path),
        "--reason",
        "stolen laptop",
    )
    assert res.code == 0, res.err
    rows = _finish(client)
    assert rows["looper"]["code"] == "REVOKED_IN_FLIGHT"
    assert rows["steady"]["code"] == "OK"
    cause = _outcome(ws, run_id)["interrupted_by"]
    assert cause["change"] == "key_revoked" and cause["key_id"] == alice
    assert cause["reason"] == "stolen laptop" and cause["list_version"] == 1
    _audit_ok(ws)


def test_revoke_module_mid_run_stops_that_module(ks_env: Env) -> None:
    ws = ks_env.ws
    digest = hashlib.sha256((ws / "modules" / "looper" / "module.wasm").read_bytes()).hexdigest()
    client = _start_run(ws, "looper", "hello", "--local", "--no-dashboard")
    run_id = _wait_started(ws, "looper", client)
    res = run_cli_subprocess(
        "-w",
        str(ws),
        "revoke",
        "module",
        digest,
        "--key",
        str(ks_env.maintainer.private_path),
        "--reason",
        "CVE-2026-0001",
    )
    assert res.code == 0, res.err
    rows = _finish(client)
    assert rows["looper"]["code"] == "REVOKED_IN_FLIGHT" and rows["hello"]["code"] == "OK"
    cause = _outcome(ws, run_id)["interrupted_by"]
    assert cause == {
        "change": "module_revoked",
        "module_sha256": digest,
        "reason": "CVE-2026-0001",
        "list_version": 1,
    }
    _audit_ok(ws)


@pytest.mark.skipif(bool(_NO_STRONGBOX), reason=_NO_STRONGBOX or "available")
def test_cordon_mid_run_with_strongbox_kills_the_worker(ks_env: Env) -> None:
    ws = ks_env.ws
    client = _start_run(ws, "looper", "hello", "--local", "--strongbox", "--no-dashboard")
    run_id = _wait_started(ws, "looper", client)
    res = run_cli_subprocess("-w", str(ws), "cordon", "looper", "--reason", "incident 8")
    assert res.code == 0, res.err
    rows = _finish(client)
    assert rows["looper"]["code"] == "CORDONED_IN_FLIGHT" and rows["hello"]["code"] == "OK"
    assert _outcome(ws, run_id)["interrupted_by"]["reason"] == "incident 8"
    # The strongbox worker was killed on purpose: no strongbox_worker_died line for it.
    assert not [r for r in _audit(ws) if r["event"] == "strongbox_worker_died"]
    _audit_ok(ws)


def test_through_a_running_node(ks_env: Env) -> None:
    ws = ks_env.ws
    node = NodeProcess(ws)
    try:
        # 1. cordon through the node (its `cordon` op): the node nudges its workers.
        client = _start_run(ws, "looper", "hello", "--no-dashboard")
        run_id = _wait_started(ws, "looper", client)
        res = run_cli_subprocess("-w", str(ws), "cordon", "looper", "--reason", "incident 9")
        assert res.code == 0, res.err
        rows = _finish(client)
        assert rows["looper"]["code"] == "CORDONED_IN_FLIGHT" and rows["hello"]["code"] == "OK"
        assert _outcome(ws, run_id)["interrupted_by"]["reason"] == "incident 9"
        assert node.status()["pool"]["alive"] == 2  # the worker survived its run's interrupt

        # 2. revoke the module with the CLI in-process (not through the node): the workers see
        # the revocation list change on their own.
        assert run_cli_subprocess("-w", str(ws), "uncordon", "looper").code == 0
        after = len(_audit(ws))
        client = _start_run(ws, "looper", "--no-dashboard")
        run_id = _wait_started(ws, "looper", client, after)
        digest = hashlib.sha256((ws / "modules" / "looper" / "module.wasm").read_bytes())
        res = run_cli_subprocess(
            "-w",
            str(ws),
            "revoke",
            "module",
            digest.hexdigest(),
            "--key",
            str(ks_env.maintainer.private_path),
            "--reason",
            "bad build",
        )
        assert res.code == 0, res.err
        rows = _finish(client)
        assert rows["looper"]["code"] == "REVOKED_IN_FLIGHT"
        assert _outcome(ws, run_id)["interrupted_by"]["change"] == "module_revoked"
        assert node.stop() == 0
    finally:
        if node.proc.poll() is None:
            node.kill()
    _audit_ok(ws)


# Counts down from 50 million and returns: a neighbour that runs a while, then ends OK.
COUNT_WAT = """
(module
  (func (export "_start") (local $i i32)
    (local.set $i (i32.const 50000000))
    (loop $l
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (local.get $i)))))
"""
