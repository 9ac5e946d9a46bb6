"""One tenant's host-side failure never costs its neighbours their outcomes (issue 16, item 2).

A fault is injected at each step of the record path for tenant ``beta`` only — preparing its
data directories, storing its content, snapshotting its files, the sandbox, storing its output,
hashing what it wrote, signing its attestation. These are faults a test cannot cause with real
inputs on a healthy machine (a full disk, an I/O error, a bug), so each is injected by patching
the one function of that step, and says so. Every time: ``beta`` ends with an audited code,
``alpha`` and ``gamma`` run and are recorded, the checkpoint is signed, and the audit log
verifies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nightcore import app
from nightcore.context import NodeContext
from nightcore.runner import pipeline
from tests.conftest import Env

RW = '[[capabilities.fs]]\npath = "data"\nmode = "rw"\n'
TENANTS = ("alpha", "beta", "gamma")


def _is_beta(*args: Any, **kwargs: Any) -> bool:
    text = repr(args) + repr(kwargs)
    return "beta" in text


def _failing(original: Callable[..., Any], exc: Exception) -> Callable[..., Any]:
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        # Content is stored by digest (no tenant name in its arguments): beta is the 2nd call.
        ours = calls[0] == 2 if original.__name__ == "_store_content" else _is_beta(*args, **kwargs)
        if ours:
            raise exc
        return original(*args, **kwargs)

    return wrapper


def _audit(ws: Path) -> list[dict[str, Any]]:
    lines = (ws / "state" / "audit" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# (step, attribute of nightcore.runner.pipeline to patch, exception, expected code of beta)
FAULTS = [
    ("prepare_preopens", OSError(28, "No space left on device"), "HOST_ERROR"),
    ("_store_content", OSError(5, "Input/output error"), "HOST_ERROR"),
    ("snapshot", RecursionError("maximum recursion depth exceeded"), "HOST_ERROR"),
    ("_write_output", OSError(28, "No space left on device"), "HOST_ERROR"),
    ("written_files", ValueError("bad data in the tenant's directory"), "HOST_ERROR"),
]


@pytest.mark.parametrize(("step", "exc", "code"), FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_in_one_tenants_record_path(
    env: Env, monkeypatch: pytest.MonkeyPatch, step: str, exc: Exception, code: str
) -> None:
    for t in TENANTS:
        env.add_tenant(t, RW)
    # Injected fault (see the module docstring): this step fails for beta only.
    monkeypatch.setattr(pipeline, step, _failing(getattr(pipeline, step), exc))
    ctx = NodeContext(env.ws)
    report = app.run(ctx, list(TENANTS))
    by = {r.tenant: r for r in report.runs}
    assert by["beta"].code == code, by["beta"]
    assert type(exc).__name__ in by["beta"].reason
    assert by["alpha"].code == "OK" and by["gamma"].code == "OK"
    assert report.checkpoint is not None and report.checkpoint_error is None

    lines = _audit(env.ws)
    outcomes = {r["tenant"]: r["data"]["code"] for r in lines if r["event"] == "run_outcome"}
    denied = {r["tenant"]: r["data"]["code"] for r in lines if r["event"] == "admission_denied"}
    assert outcomes.get("alpha") == "OK" and outcomes.get("gamma") == "OK"
    assert (outcomes.get("beta") or denied.get("beta")) == code
    # every run_start has its outcome
    started = {r["data"]["run_id"] for r in lines if r["event"] == "run_start"}
    finished = {r["data"]["run_id"] for r in lines if r["event"] == "run_outcome"}
    assert started == finished
    assert env.cli("audit", "verify").code == 0


def test_sandbox_exception_is_the_tenants_outcome(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nightcore.sandbox.engine import Sandbox

    for t in TENANTS:
        env.add_tenant(t)
    original = Sandbox.run

    def run(self: Sandbox, module: bytes, cfg: Any, **kwargs: Any) -> Any:
        if cfg.tenant == "beta":  # injected: a bug in the sandbox for one tenant
            raise RuntimeError("unexpected engine state")
        return original(self, module, cfg, **kwargs)

    monkeypatch.setattr(Sandbox, "run", run)
    report = app.run(NodeContext(env.ws), list(TENANTS))
    by = {r.tenant: r for r in report.runs}
    assert by["beta"].code == "HOST_ERROR" and "RuntimeError" in by["beta"].reason
    assert by["alpha"].ok and by["gamma"].ok


def test_attestation_failure_is_audited_and_neighbours_attested(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    for t in TENANTS:
        env.add_tenant(t)
    original = pipeline.sign_attestation  # type: ignore[attr-defined]

    def sign(statement: Any, signer: Any) -> bytes:
        if "beta" in repr(statement):  # injected: the signer fails for one statement
            raise OSError(5, "Input/output error")
        return original(statement, signer)

    monkeypatch.setattr(pipeline, "sign_attestation", sign)
    report = app.run(NodeContext(env.ws), list(TENANTS))
    by = {r.tenant: r for r in report.runs}
    assert "attestation not written: HOST_ERROR" in by["beta"].reason
    failed = [r for r in _audit(env.ws) if r["event"] == "attestation_failed"]
    assert [r["tenant"] for r in failed] == ["beta"]
    for t in ("alpha", "gamma"):
        run_dir = env.ws / "state" / "runs" / by[t].run_id
        assert (run_dir / "attestation.intoto.dsse.json").is_file()
    assert env.cli("audit", "verify").code == 0


def test_cli_reports_a_host_error_without_a_traceback(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    for t in TENANTS:
        env.add_tenant(t, RW)
    # Injected fault: beta's output cannot be stored.
    monkeypatch.setattr(
        pipeline, "_write_output", _failing(pipeline._write_output, OSError(28, "disk full"))
    )
    res = env.cli("run", "--json", "--no-dashboard")
    assert res.code == 1  # ran, and one tenant did not end OK
    rows = {r["tenant"]: r for r in res.json()}
    assert rows["beta"]["code"] == "HOST_ERROR"
    assert rows["alpha"]["code"] == "OK" and rows["gamma"]["code"] == "OK"
