"""The kill switch's parts, in-process (the operator-level behaviour is in
tests/e2e/test_kill_switch.py): the sandbox stops a run whose interrupt trips, the watcher trips
exactly the affected runs, wakes at once on a change made in this process or on a nudge (its poll
is made an hour long here, so only those paths can trip it), fails closed when the trust state no
longer loads, and parses nothing while the trust files do not change."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nightcore import app, trustops
from nightcore.context import NodeContext
from nightcore.fsio import atomic_write
from nightcore.runner import trustwatch
from nightcore.runner.killswitch import KillSwitch
from nightcore.runner.pipeline import Runner
from nightcore.sandbox.engine import Sandbox
from nightcore.sandbox.types import EffectiveLimits, Interrupt, RunConfig, RunResult
from tests.conftest import Env, wat_module

LOOP_WAT = '(module (func (export "_start") (loop $l (br $l))))'
WAIT_S = 30.0
HOUR_S = 3600.0


def _wait(pred: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.005)  # polling a condition with a deadline
    raise AssertionError(f"never happened: {what}")


def _code(interrupt: Interrupt) -> str:
    """The interrupt's code, read afresh (another thread sets it)."""
    return interrupt.code


def _digest(ws: Path, tenant: str) -> str:
    return hashlib.sha256((ws / "modules" / tenant / "module.wasm").read_bytes()).hexdigest()


@pytest.fixture
def ctx(env: Env) -> NodeContext:
    env.add_tenant("hello")
    env.add_tenant("other", wasm=wat_module('(module (func (export "_start")))'))  # own digest
    return NodeContext(env.ws)


@pytest.fixture
def switch(ctx: NodeContext) -> Iterator[KillSwitch]:
    ks = KillSwitch(ctx, poll_s=HOUR_S)  # only a direct call or a nudge can trip a run
    yield ks
    ks.close()


def test_sandbox_stops_a_running_guest_when_its_interrupt_trips() -> None:
    wasm = wat_module(LOOP_WAT)
    cfg = RunConfig(
        tenant="looper",
        module_sha256=hashlib.sha256(wasm).hexdigest(),
        entrypoint="_start",
        argv=("looper",),
        env=(),
        preopens=(),
        limits=EffectiveLimits(
            fuel=10**12, wall_ms=60_000, memory_bytes=1 << 20, stack_bytes=1 << 19, output_bytes=64
        ),
    )
    with Sandbox(None, b"") as sandbox:
        early = Interrupt()
        early.trip("CORDONED_IN_FLIGHT", "cordoned before it started")
        refused = sandbox.run(wasm, cfg, interrupt=early)
        assert (refused.code, refused.detail) == (
            "CORDONED_IN_FLIGHT",
            "cordoned before it started",
        )

        interrupt = Interrupt()
        box: list[RunResult] = []
        t = threading.Thread(target=lambda: box.append(sandbox.run(wasm, cfg, interrupt=interrupt)))
        t.start()
        _wait(lambda: sandbox.active_runs == 1, "the run started")
        assert interrupt.trip("REVOKED_IN_FLIGHT", "key revoked", {"change": "key_revoked"})
        assert not interrupt.trip("CORDONED_IN_FLIGHT", "second")  # the first trip wins
        t.join(WAIT_S)
        (result,) = box
        assert result.code == "REVOKED_IN_FLIGHT" and result.detail == "key revoked"
        assert result.exit_code is None and result.fuel_reported is None


def test_a_cordon_in_this_process_trips_only_that_tenant_at_once(
    env: Env, ctx: NodeContext, switch: KillSwitch
) -> None:
    hello = switch.watch("hello", env.publisher.key_id, _digest(env.ws, "hello"))
    other = switch.watch("other", env.publisher.key_id, _digest(env.ws, "other"))
    assert not hello.code and not other.code and switch.watched == 2
    app.cordon(ctx, "hello", "incident 12")  # calls trustwatch.trust_changed after the write
    _wait(lambda: hello.code, "the cordon tripped hello")
    assert _code(hello) == "CORDONED_IN_FLIGHT"
    assert hello.cause["change"] == "cordon" and hello.cause["reason"] == "incident 12"
    assert not other.code
    switch.release(hello)
    switch.release(other)
    assert switch.watched == 0
    # A run registered after the change is tripped at registration (queued behind others).
    late = switch.watch("hello", env.publisher.key_id, _digest(env.ws, "hello"))
    assert late.code == "CORDONED_IN_FLIGHT"
    switch.release(late)
    # Never tripped on a stale view: after an uncordon made while nothing was in flight (the
    # watcher idle), a new run is evaluated against the files as they are now.
    app.uncordon(ctx, "hello")
    again = switch.watch("hello", env.publisher.key_id, _digest(env.ws, "hello"))
    assert not again.code


def test_a_nudge_makes_the_watcher_see_a_change_written_by_another_process(
    env: Env, ctx: NodeContext, switch: KillSwitch
) -> None:
    run = switch.watch("other", env.publisher.key_id, _digest(env.ws, "other"))
    # What another process's `nightcore revoke module` leaves behind, written here without the
    # in-process notice: only the nudge (a node worker's pipe) can wake an hour-long poll.
    other_ctx = NodeContext(env.ws)
    calls: list[Path] = []
    remove = trustwatch.add_listener(calls.append)
    try:
        trustops.revoke(
            other_ctx,
            kind="module",
            subject=_digest(env.ws, "other"),
            key=str(env.maintainer.private_path),
            reason="CVE-1",
        )
    finally:
        remove()
    assert calls == [env.ws]  # the trust operation told this process's listeners
    _wait(lambda: run.code, "the revocation tripped the run")
    assert _code(run) == "REVOKED_IN_FLIGHT"
    assert run.cause == {
        "change": "module_revoked",
        "module_sha256": _digest(env.ws, "other"),
        "reason": "CVE-1",
        "list_version": 1,
    }

    # Now a change written behind the switch's back (no trust_changed call): a nudge on the
    # watched descriptor wakes it.
    nudged = switch.watch("hello", env.publisher.key_id, _digest(env.ws, "hello"))
    r, w = os.pipe()
    switch.watch_fd(r)
    atomic_write(ctx.layout.cordons_path, b'{"hello":{"reason":"by hand","ts":"x"}}\n')
    assert not nudged.code
    os.write(w, b"!")
    _wait(lambda: nudged.code, "the nudge tripped hello")
    assert _code(nudged) == "CORDONED_IN_FLIGHT" and nudged.cause["reason"] == "by hand"
    os.close(w)


def test_trust_state_that_no_longer_loads_fails_closed(
    env: Env, ctx: NodeContext, switch: KillSwitch
) -> None:
    ok = switch.watch("hello", env.publisher.key_id, _digest(env.ws, "hello"))
    assert not ok.code
    atomic_write(ctx.layout.cordons_path, b"not json\n")
    late = switch.watch("other", env.publisher.key_id, _digest(env.ws, "other"))
    assert late.code == "REVOKED_IN_FLIGHT" and late.cause["change"] == "trust_state_invalid"


def test_nothing_is_parsed_again_while_the_trust_files_do_not_change(env: Env) -> None:
    env.add_tenant("hello")
    runner = Runner(NodeContext(env.ws))
    try:
        for _ in range(3):
            assert runner.run(["hello"]).runs[0].code == "OK"
        switch = runner.killswitch()
        assert switch.reloads == 1 and switch.watched == 0
        app.cordon(NodeContext(env.ws), "hello", "x")
        app.uncordon(NodeContext(env.ws), "hello")
        assert runner.run(["hello"]).runs[0].code == "OK"
        assert switch.reloads == 2  # parsed again once, after the change
    finally:
        runner.close()
