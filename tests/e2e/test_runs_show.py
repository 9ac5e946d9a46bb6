"""`nightcore runs show RUN_ID`, `nightcore runs logs RUN_ID` and run-id prefixes (also in
`nightcore replay`), through the in-process CLI on real runs."""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import pytest

from tests.conftest import Env, wat_module

# Writes "out\n" to stdout and an ANSI-coloured line to stderr, then returns (exit 0).
NOISY_WAT = r"""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "out\n")
  (data (i32.const 96) "\1b[31mboom\1b[0m\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 4))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 16) (i32.const 96))
    (i32.store (i32.const 20) (i32.const 14))
    (drop (call $fd_write (i32.const 2) (i32.const 16) (i32.const 1) (i32.const 24)))))
"""


def _run(env: Env, tenant: str) -> dict[str, Any]:
    res = env.cli("run", "--json", "--no-dashboard", tenant)
    assert res.code == 0, res.err
    (row,) = res.json()
    return dict(row)


def test_runs_show_by_prefix(env: Env) -> None:
    env.add_tenant("noisy", wasm=wat_module(NOISY_WAT))
    row = _run(env, "noisy")
    run_id = row["run_id"]
    att = env.ws / "state" / "runs" / run_id / "attestation.intoto.dsse.json"
    res = env.cli("runs", "show", run_id[:22])
    assert res.code == 0, res.err
    out = res.out
    assert f"Run {run_id}" in out
    assert hashlib.sha256(att.read_bytes()).hexdigest() in out
    assert "yes (node.pub.pem)" in out
    assert "\x1b" not in out and "boom" in out and "| out" in out
    assert "fuel" in out and "output" in out
    d = env.cli("runs", "show", run_id[:22], "--json").json()
    assert d["run_id"] == run_id and d["code"] == "OK" and d["exit_code"] == 0
    assert d["audit_seq"] == row["audit_seq"]
    assert d["attestation"]["verified"] is True
    assert d["limits"]["fuel"] and d["usage"]["fuel"] == row["fuel_used"]
    assert d["grants"] == {"env": {}, "fs": [], "net": []}
    assert d["streams"]["stdout"] == {"bytes": 4, "tail": ["out"]}
    assert d["streams"]["stderr"]["tail"] == ["boom"]


def test_runs_logs_prints_the_stored_stream(env: Env) -> None:
    env.add_tenant("noisy", wasm=wat_module(NOISY_WAT))
    run_id = _run(env, "noisy")["run_id"]
    res = env.cli("runs", "logs", run_id)
    assert res.code == 0 and res.out == "out\n"
    res = env.cli("runs", "logs", run_id[:24], "--stderr")  # a pipe gets the bytes as written
    assert res.code == 0 and res.out == "\x1b[31mboom\x1b[0m\n"
    d = env.cli("runs", "logs", run_id, "--stderr", "--json").json()
    assert d == {
        "run_id": run_id,
        "stream": "stderr",
        "bytes": 14,
        "truncated": False,
        "text": "\x1b[31mboom\x1b[0m\n",
    }


def test_prefixes_ambiguous_unknown_and_malformed(env: Env) -> None:
    env.add_tenant("hello")
    a, b = _run(env, "hello")["run_id"], _run(env, "hello")["run_id"]
    common = "".join(x for x, y in zip(a, b, strict=False) if x == y)[:10]
    for cmd in (["runs", "show", common], ["runs", "logs", common], ["replay", common]):
        res = env.cli(*cmd)
        assert res.code == 2 and "error[ID_AMBIGUOUS]" in res.err, (cmd, res.err)
        assert a in res.err and b in res.err
    res = env.cli("runs", "show", "zzz")
    assert res.code == 2 and "error[RUN_NOT_FOUND]" in res.err
    for bad in ("../../etc", "-x"):
        res = env.cli("runs", "show", "--", bad)
        assert res.code == 2 and "error[USAGE]" in res.err
    res = env.cli("runs", "show")
    assert res.code == 2 and "error[USAGE]" in res.err and "RUN_ID" in res.err


def test_replay_accepts_a_unique_prefix(env: Env) -> None:
    env.add_tenant("hello")
    run_id = _run(env, "hello")["run_id"]
    res = env.cli("replay", run_id[:-4])
    assert res.code == 0, res.err
    assert f"Replay of {run_id}" in res.out


def test_runs_list_forms_still_work(env: Env) -> None:
    env.add_tenant("hello")
    env.add_tenant("hello-two")
    _run(env, "hello")
    _run(env, "hello-two")
    assert len(env.cli("runs", "--json").json()) == 2
    rows = env.cli("runs", "--tenant", "hello", "--limit", "5", "--json").json()
    assert [r["tenant"] for r in rows] == ["hello"]
    res = env.cli("runs", "--limit", "1")
    assert res.code == 0 and len(res.out.splitlines()) == 3
    res = env.cli("runs", "bogus")
    assert res.code == 2 and "error[USAGE]" in res.err


def test_show_reports_an_attestation_that_does_not_verify(env: Env) -> None:
    env.add_tenant("hello")
    run_id = _run(env, "hello")["run_id"]
    att = env.ws / "state" / "runs" / run_id / "attestation.intoto.dsse.json"
    att.write_bytes(att.read_bytes().replace(b'"payload"', b'"payload" ', 1))
    d = env.cli("runs", "show", run_id, "--json").json()
    assert d["code"] == "OK" and d["audit_seq"] is not None  # from the run index
    att_info = d["attestation"]
    assert att_info["sha256"] == hashlib.sha256(att.read_bytes()).hexdigest()
    att.write_bytes(b"{}")
    d = env.cli("runs", "show", run_id, "--json").json()
    assert d["attestation"]["verified"] is False and d["attestation"]["error"]
    assert d["grants"] is None and d["code"] == "OK"
    res = env.cli("runs", "show", run_id)
    assert res.code == 0 and "NO: " in res.out


# Writes an ANSI-coloured complaint to stderr, then exits 3.
FAILING_WAT = r"""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 96) "starting\nbad input: \1b[31mnope\1b[0m\n")
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 96))
    (i32.store (i32.const 20) (i32.const 33))
    (drop (call $fd_write (i32.const 2) (i32.const 16) (i32.const 1) (i32.const 24)))
    (call $proc_exit (i32.const 3))))
"""


def test_run_detail_carries_the_last_stderr_line_of_a_failed_run(env: Env) -> None:
    env.add_tenant("failing", wasm=wat_module(FAILING_WAT))
    env.add_tenant("noisy", wasm=wat_module(NOISY_WAT))
    res = env.cli("run", "--no-dashboard", "--show-output")
    assert res.code == 1
    (line,) = [x for x in res.out.splitlines() if x.startswith("failing")]
    assert line.endswith("stderr: bad input: nope"), line
    assert "\x1b" not in res.out and "starting" not in line
    (noisy,) = [x for x in res.out.splitlines() if x.startswith("noisy")]
    assert "stderr" not in noisy  # an OK run keeps its detail
    assert "-- noisy stdout (" in res.out and "  | out" in res.out
    rows = {r["tenant"]: r for r in env.cli("run", "--no-dashboard", "--json").json()}
    assert "stderr" not in (rows["failing"]["reason"] or "")  # the JSON keeps the reason


def test_logs_on_a_terminal_are_cleaned_unless_raw(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.add_tenant("noisy", wasm=wat_module(NOISY_WAT))
    run_id = _run(env, "noisy")["run_id"]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    res = env.cli("runs", "logs", run_id, "--stderr")
    assert res.out == "boom\n"
    res = env.cli("runs", "logs", run_id, "--stderr", "--raw")
    assert res.out == "\x1b[31mboom\x1b[0m\n"
