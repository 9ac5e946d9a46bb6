"""End to end: `nightcore run` on the real sample tenants, through the CLI, real Wasmtime."""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from nightcore import app
from nightcore.context import NodeContext
from nightcore.trust.keys import GeneratedKey
from tests.conftest import REPO, Cli, Env, run_cli_subprocess

EXAMPLES = REPO / "examples" / "tenants"
EXPECTED: dict[str, dict[str, Any]] = tomllib.loads((EXAMPLES / "expected.toml").read_text())


def install(env: Env, *tenants: str) -> None:
    from nightcore.demo import build_tenant

    for t in tenants:
        dest = env.ws / "modules" / t
        build_tenant(EXAMPLES / t, dest)
        app.sign_tenant(dest, str(env.publisher.private_path))


def run(env: Env, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    res = env.cli("run", "--json", *args)
    rows = {r["tenant"]: r for r in res.json()}
    return res.code, rows


def stdout_of(env: Env, row: dict[str, Any]) -> str:
    return (env.ws / "state" / "runs" / str(row["run_id"]) / "stdout").read_text()


def events(env: Env, name: str, tenant: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in env.audit_lines()
        if e["event"] == name and (tenant is None or e.get("tenant") == tenant)
    ]


@pytest.fixture(scope="module")
def all_samples(
    tmp_path_factory: pytest.TempPathFactory, keys_dir: dict[str, GeneratedKey]
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """One workspace with every sample tenant, run once through the CLI (module-scoped)."""
    import os

    from nightcore.cli.main import main as cli_main

    os.environ["NIGHTCORE_KEY_PASSPHRASE"] = "test-passphrase-not-secret"
    root = tmp_path_factory.mktemp("samples")
    ws = app.init_workspace(root / "ws")
    app.trust_add_key(ws, keys_dir["alice"].public_path, scope="*")
    # A file the escaper must never read, one level above its data root's parent.
    secret = ws.layout.state_dir / "tenants" / "secret.txt"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("TOP-SECRET-CONTENT\n")
    # A read-only input the fs-writer must not modify.
    ro = ws.layout.tenant_data_root("fs-writer") / "input"
    ro.mkdir(parents=True)
    (ro / "keep.txt").write_text("read-only content\n")
    env = Env(root, ws.root, keys_dir["alice"], keys_dir["maint"], None)  # type: ignore[arg-type]
    install(env, *sorted(EXPECTED))
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["-w", str(ws.root), "run", "--json", "--parallel", "2"])
    assert code == 1  # hostile samples end non-OK by design
    return ws.root, {r["tenant"]: r for r in json.loads(out.getvalue())}


def test_every_sample_ends_with_its_expected_code(
    all_samples: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    ws, rows = all_samples
    assert set(rows) == set(EXPECTED)
    for tenant, want in EXPECTED.items():
        row = rows[tenant]
        assert row["code"] == want["code"], (tenant, row)
        if "exit_code" in want and want["code"] in ("OK", "EXIT_NONZERO"):
            assert row["exit_code"] == want["exit_code"], tenant
        out = (ws / "state/runs" / row["run_id"] / "stdout").read_text(errors="replace")
        if "stdout_exact" in want:
            assert out == want["stdout_exact"], tenant
        if "stdout_contains" in want:
            assert want["stdout_contains"] in out, tenant
        assert row["key_id"] and row["module_sha256"]


def test_outcomes_are_audited_with_output_digests(
    all_samples: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    ws, rows = all_samples
    lines = [json.loads(x) for x in (ws / "state/audit/audit.jsonl").read_text().splitlines()]
    for tenant, row in rows.items():
        kinds = [e["event"] for e in lines if e.get("tenant") == tenant]
        assert kinds.count("admit") == 1 and kinds.count("run_start") == 1, tenant
        [outcome] = [
            e for e in lines if e["event"] == "run_outcome" and e["data"]["run_id"] == row["run_id"]
        ]
        stdout = (ws / "state/runs" / row["run_id"] / "stdout").read_bytes()
        assert outcome["data"]["stdout_sha256"] == hashlib.sha256(stdout).hexdigest()
        assert outcome["data"]["code"] == row["code"]
    res = run_cli_subprocess("-w", str(ws), "audit", "verify", "--json")
    assert res.code == 0 and json.loads(res.out)["ok"]


def test_fs_escaper_cannot_leave_its_data_root(
    all_samples: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    ws, rows = all_samples
    assert rows["fs-escaper"]["code"] == "OK"  # the guest exits 1 if any attempt succeeded
    out = (ws / "state/runs" / rows["fs-escaper"]["run_id"] / "stdout").read_text()
    assert "TOP-SECRET" not in out and "root:" not in out
    data_root = ws / "state/tenants/fs-escaper"
    for path in ws.parent.rglob("*escaped*"):
        assert path.resolve().is_relative_to(data_root.resolve()), path
    for path in ws.parent.rglob("renamed.txt"):
        assert path.resolve().is_relative_to(data_root.resolve()), path


def test_read_only_preopen_stays_unmodified(
    all_samples: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    ws, rows = all_samples
    ro = ws / "state/tenants/fs-writer/input"
    assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"]
    assert (ro / "keep.txt").read_text() == "read-only content\n"
    assert (ws / "state/tenants/fs-writer/data/out.txt").exists()
    assert rows["fs-writer"]["code"] == "OK"


def test_env_reader_sees_exactly_its_allow_list(
    all_samples: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    ws, rows = all_samples
    out = (ws / "state/runs" / rows["env-reader"]["run_id"] / "stdout").read_text()
    manifest = tomllib.loads((EXAMPLES / "env-reader/manifest.toml").read_text())
    want = manifest["capabilities"]["env"]
    assert out.splitlines() == [f"{k}={v}" for k, v in sorted(want.items())]


def test_limits_are_enforced(all_samples: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    _, rows = all_samples
    loop = rows["infinite-loop"]
    assert loop["code"] == "TIMEOUT"
    assert loop["wall_ms"] < 5000  # a loose bound: the benchmark reports the overshoot
    bomb = rows["memory-bomb"]
    assert bomb["code"] == "MEMORY_LIMIT" and bomb["memory_bytes"] <= 16 * 1024 * 1024
    assert rows["fuel-burner"]["fuel_used"] <= 1_000_000
    assert rows["output-flood"]["output_bytes"] <= 65_536


def test_memory_bomb_does_not_disturb_a_parallel_tenant(env: Env) -> None:
    install(env, "memory-bomb", "hello", "infinite-loop")
    code, rows = run(env, "--parallel", "3")
    assert code == 1
    assert rows["hello"]["code"] == "OK"
    assert stdout_of(env, rows["hello"]) == "hello from night core\n"
    assert rows["memory-bomb"]["code"] == "MEMORY_LIMIT"
    assert rows["infinite-loop"]["code"] == "TIMEOUT"


def test_only_selected_tenants_run_and_exit_zero_when_all_ok(env: Env) -> None:
    install(env, "hello", "exit-code")
    code, rows = run(env, "hello")
    assert code == 0 and list(rows) == ["hello"]
    code, rows = run(env)
    assert code == 1 and rows["exit-code"]["code"] == "EXIT_NONZERO"


def test_policy_denial_and_tampering_through_run(env: Env) -> None:
    install(env, "hello")
    env.add_tenant("netty", '[capabilities]\nnet = ["example.org:443"]\n')
    tampered = env.ws / "modules" / "hello" / "module.wasm"
    tampered.write_bytes(tampered.read_bytes() + b"\x00")
    code, rows = run(env)
    assert code == 1
    assert rows["netty"]["code"] == "CAPABILITY_DENIED"
    assert rows["hello"]["code"] == "DIGEST_MISMATCH"
    assert not events(env, "run_start")


def test_cordoned_tenant_does_not_run(env: Env) -> None:
    install(env, "hello")
    assert env.cli("cordon", "hello", "--reason", "incident 42").code == 0
    again = env.cli("cordon", "hello", "--reason", "twice")
    assert again.code == 2 and "ALREADY_CORDONED" in again.err
    code, rows = run(env)
    assert code == 1 and rows["hello"]["code"] == "CORDONED"
    assert not events(env, "run_start", "hello")
    assert events(env, "cordon", "hello") and events(env, "admission_denied", "hello")
    assert env.cli("uncordon", "hello").code == 0
    code, rows = run(env)
    assert code == 0 and rows["hello"]["code"] == "OK"
    assert events(env, "uncordon", "hello")


def test_corrupted_cache_entry_is_recompiled_not_loaded(env: Env) -> None:
    install(env, "hello")
    assert run(env)[0] == 0
    entries = [p for p in (env.ws / "state/cache").rglob("*") if p.is_file()]
    assert entries, "the compiled module was cached"
    for p in entries:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    # A fresh process: nothing in memory, only the (now corrupted) disk cache.
    res = run_cli_subprocess("-w", str(env.ws), "run", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)[0]["code"] == "OK"
    assert events(env, "cache_rejected")


def test_runs_index_and_rebuild(env: Env) -> None:
    install(env, "hello", "exit-code")
    run(env)
    run(env, "hello")
    listed = env.cli("runs", "--json").json()
    assert len(listed) == 3
    assert {r["tenant"] for r in env.cli("runs", "--tenant", "hello", "--json").json()} == {"hello"}
    (env.ws / "state/nightcore.db").unlink()
    assert env.cli("state", "rebuild", "--json").json() == {"runs_indexed": 3}
    assert env.cli("runs", "--json").json() == listed


def test_output_flood_process_exits_normally(env: Env) -> None:
    install(env, "output-flood", "hello")
    res = run_cli_subprocess("-w", str(env.ws), "run", "--json", timeout=120)
    assert res.code == 1, res.err  # the flood is stopped; the process itself is fine
    rows = {r["tenant"]: r for r in json.loads(res.out)}
    assert rows["output-flood"]["code"] == "OUTPUT_LIMIT"
    assert rows["hello"]["code"] == "OK"
    assert "Traceback" not in res.err and "panic" not in res.err


def test_table_output_strips_control_sequences(env: Env) -> None:
    install(env, "hello")
    res = env.cli("run")
    assert res.code == 0
    assert "hello" in res.out and "OK" in res.out and "\x1b" not in res.out


def test_run_without_workspace_and_bad_selection(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    res = env.cli("run", "no-such-tenant")
    assert res.code == 2 and "error[TENANT_NOT_FOUND]" in res.err
    res = Cli(capsys, tmp_path / "nowhere")("run")
    assert res.code == 2 and "error[WORKSPACE_NOT_FOUND]" in res.err


def test_public_api_runs_without_the_cli(env: Env) -> None:
    from nightcore.runner.pipeline import Runner

    install(env, "hello")
    runner = Runner(NodeContext(env.ws))
    try:
        first = runner.run(["hello"])
        second = runner.run(["hello"])
    finally:
        runner.close()
    assert first.ok and second.ok
    assert first.runs[0].run_id != second.runs[0].run_id
    shutil.rmtree(env.ws / "state" / "runs")


def test_run_refreshes_the_dashboard_unless_told_not_to(env: Env) -> None:
    install(env, "hello")
    report = env.ws / "state" / "dashboard.html"
    assert env.cli("run", "--no-dashboard").code == 0
    assert not report.exists()
    res = env.cli("run")
    assert res.code == 0 and report.exists()
    assert "dashboard:" in res.err and "hello" in report.read_text()
    res = env.cli("run", "--parallel", "0")
    assert res.code == 2 and "error[USAGE]" in res.err


def test_a_corrupt_run_index_is_reported_and_rebuilt_from_the_audit_log(env: Env) -> None:
    install(env, "hello")
    assert env.cli("run", "--no-dashboard").code == 0
    (env.ws / "state" / "nightcore.db").write_bytes(b"this is not a database")
    res = env.cli("runs")
    assert res.code == 2 and "error[INDEX_UNAVAILABLE]" in res.err
    res = env.cli("run", "--no-dashboard")
    assert res.code == 0 and "warning[INDEX_UNAVAILABLE]" in res.err  # the run still counts
    assert env.cli("state", "rebuild", "--json").json() == {"runs_indexed": 2}
    assert len(env.cli("runs", "--json").json()) == 2
    assert env.cli("runs", "--limit", "0").code == 2


def test_services_get_a_checkpoint_every_n_entries(env: Env) -> None:
    from nightcore.runner.pipeline import Runner

    cfg = env.ws / "nightcore.toml"
    cfg.write_text(cfg.read_text() + "\n[audit]\ncheckpoint_every = 10\n")
    install(env, "hello")
    runner = Runner(NodeContext(env.ws))
    try:
        signed = [runner.run(["hello"], checkpoint=False).checkpoint for _ in range(6)]
    finally:
        runner.close()
    assert any(signed) and not all(signed)  # only when 10 entries went by unsigned
    assert env.cli("audit", "verify").code == 0


def _audit_fsyncs(monkeypatch: pytest.MonkeyPatch, ws: Path) -> list[int]:
    """Count fsyncs of the audit log (a spy on os.fsync: it observes, the real call runs)."""
    import os

    calls: list[int] = []
    real = os.fsync
    log = str(ws / "state" / "audit" / "audit.jsonl")

    def spy(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == log:
            calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


def _check_run_lines(env: Env, run_ids: list[str]) -> None:
    """Every run has one admit, one run_start and one run_outcome, in that order."""
    seqs: dict[str, dict[str, int]] = {}
    for rec in env.audit_lines():
        rid = rec["data"].get("run_id")
        if rid in run_ids:
            assert rec["event"] not in seqs.setdefault(rid, {}), rec
            seqs[rid][rec["event"]] = rec["seq"]
    for rid in run_ids:
        s = seqs[rid]
        assert s["admit"] < s["run_start"] < s["run_outcome"], s


def test_a_batch_commits_its_audit_lines_in_groups(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve runs in one call: the admissions and the run_start lines of the group are one
    write + fsync, the outcomes another; each outcome is durable before it is reported."""
    from nightcore.evidence.attestation import ATTESTATION_FILE
    from nightcore.runner import pipeline
    from nightcore.runner.pipeline import Runner, TenantRun

    names = [f"hello-{i:02d}" for i in range(12)]
    for name in names:
        env.add_tenant(name)
    monkeypatch.setattr(pipeline, "COMMIT_WINDOW_S", 3600.0)
    runner = Runner(NodeContext(env.ws))
    try:
        runner.run(names[:1], checkpoint=False)  # warm: compile outside the count
        fsyncs = _audit_fsyncs(monkeypatch, env.ws)
        reported: list[str] = []

        def progress(tr: TenantRun) -> None:
            logged = {
                r["data"].get("run_id") for r in env.audit_lines() if r["event"] == "run_outcome"
            }
            assert tr.run_id in logged  # invariant 7: durable before reported
            reported.append(tr.run_id)

        report = runner.run(names, parallel=1, checkpoint=False, progress=progress)
    finally:
        runner.close()
    assert report.ok and len(reported) == 12
    assert len(fsyncs) == 2
    _check_run_lines(env, reported)
    assert all((env.ws / "state" / "runs" / rid / ATTESTATION_FILE).exists() for rid in reported)
    assert env.cli("audit", "verify").code == 0


def test_outcomes_wait_at_most_the_commit_window(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from nightcore.runner import pipeline
    from nightcore.runner.pipeline import Runner

    names = [f"hello-{i:02d}" for i in range(6)]
    for name in names:
        env.add_tenant(name)
    monkeypatch.setattr(pipeline, "COMMIT_WINDOW_S", 0.0)  # commit as soon as a second is ready
    runner = Runner(NodeContext(env.ws))
    try:
        runner.run(names[:1], checkpoint=False)
        fsyncs = _audit_fsyncs(monkeypatch, env.ws)
        report = runner.run(names, parallel=2, checkpoint=False)
    finally:
        runner.close()
    assert report.ok
    assert len(fsyncs) > 2
    _check_run_lines(env, [r.run_id for r in report.runs])


def test_a_failure_mid_group_still_records_the_outcomes_before_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host fault while recording the third run (injected: a full disk cannot be caused
    here) ends that run HOST_ERROR; the runs before and after it are recorded normally
    (issue 16, item 2: one tenant's failure never costs the others their outcomes)."""
    from nightcore.runner import pipeline
    from nightcore.runner.pipeline import Runner

    names = [f"hello-{i:02d}" for i in range(4)]
    for name in names:
        env.add_tenant(name)
    monkeypatch.setattr(pipeline, "COMMIT_WINDOW_S", 3600.0)
    real = pipeline._write_output
    seen: list[Path] = []

    def failing(path: Path, data: bytes) -> None:
        if path.name == "stdout":
            seen.append(path)
            if len(seen) == 3:
                raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(pipeline, "_write_output", failing)
    runner = Runner(NodeContext(env.ws))
    try:
        report = runner.run(names, parallel=1, checkpoint=False)
    finally:
        runner.close()
    assert [r.code for r in report.runs] == ["OK", "OK", "HOST_ERROR", "OK"]
    assert "No space left on device" in report.runs[2].reason
    outcomes = {r["data"]["run_id"] for r in env.audit_lines() if r["event"] == "run_outcome"}
    assert outcomes == {r.run_id for r in report.runs}
    _check_run_lines(env, [r.run_id for r in report.runs])
    assert env.cli("audit", "verify").code == 0
