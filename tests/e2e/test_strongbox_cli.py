"""End to end: ``nightcore run --strongbox`` through the CLI (skipped until the flag exists)."""

from __future__ import annotations

import contextlib
import os

import pytest

from nightcore.cli.main import main as cli_main
from nightcore.sandbox.strongbox import seccomp_available
from tests.conftest import Env


def _why_skip(capsys: pytest.CaptureFixture[str]) -> str:
    why = seccomp_available()
    if why:
        return why
    if os.geteuid() != 0:
        return "strongbox workers need root"
    with contextlib.suppress(SystemExit):
        cli_main(["run", "--help"])
    if "--strongbox" not in capsys.readouterr().out:
        return "`nightcore run --strongbox` is not wired into the CLI yet"
    return ""


def test_run_strongbox_gives_the_same_outcome(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    why = _why_skip(capsys)
    if why:
        pytest.skip(why)
    env.add_tenant("hello")
    plain = env.cli("run", "--json", "hello")
    confined = env.cli("run", "--json", "--strongbox", "hello")
    assert plain.code == confined.code == 0, confined.err
    (row_a,) = plain.json()
    (row_b,) = confined.json()
    assert row_a["code"] == row_b["code"] == "OK"
    runs = env.ws / "state" / "runs"
    assert (runs / str(row_b["run_id"]) / "stdout").read_text() == "hello\n"


def test_strongbox_preopens_and_unreachable_data_roots(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A readable workspace gets working rw preopens; one the worker uid cannot traverse
    ends that tenant PREOPEN_INVALID (audited), never the whole run."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from nightcore import app
    from tests.e2e.test_run_cli import install

    why = _why_skip(capsys)
    if why:
        pytest.skip(why)
    install(env, "fs-writer", "hello")
    # pytest's tmp dirs are 0700: uid 65534 cannot reach the data root.
    res = env.cli("run", "--json", "--strongbox", "--no-dashboard")
    rows = {r["tenant"]: r for r in res.json()}
    assert rows["fs-writer"]["code"] == "PREOPEN_INVALID" and rows["hello"]["code"] == "OK"
    outcomes = [e for e in env.audit_lines() if e["event"] == "run_outcome"]
    assert {e["tenant"] for e in outcomes} == {"fs-writer", "hello"}

    open_dir = Path(tempfile.mkdtemp(prefix="nightcore-strongbox-", dir="/tmp"))
    try:
        open_dir.chmod(0o755)
        ws = app.init_workspace(open_dir / "ws")
        app.trust_add_key(ws, env.publisher.public_path, scope="*")
        from nightcore.demo import build_tenant

        for t in ("fs-writer", "fs-escaper"):
            build_tenant(
                Path(__file__).resolve().parents[2] / "examples/tenants" / t,
                ws.layout.modules_dir / t,
            )
            app.sign_tenant(ws.layout.modules_dir / t, str(env.publisher.private_path))
        code = cli_main(["-w", str(ws.root), "run", "--json", "--strongbox", "--no-dashboard"])
        rows = {r["tenant"]: r for r in json.loads(capsys.readouterr().out)}
        assert code == 0, rows
        assert rows["fs-writer"]["code"] == rows["fs-escaper"]["code"] == "OK"
        assert (ws.layout.tenant_data_root("fs-writer") / "data" / "out.txt").exists()
    finally:
        shutil.rmtree(open_dir)
