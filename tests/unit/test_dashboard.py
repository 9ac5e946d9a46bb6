"""Dashboard: the static report (content, escaping, CSP, scale, --diff, verification), the audit
scanner, console tokens, and the live console's HTTP API (in-process, Starlette TestClient)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html as html_lib
import json
import re
import stat
import warnings
from pathlib import Path
from typing import Any

import pytest

from nightcore.audit import merkle
from nightcore.audit.log import ZERO_HASH
from nightcore.canonical import canonical
from nightcore.context import NodeContext
from nightcore.dashboard import build_report, collect, render_page, scancache
from nightcore.dashboard.assets import JS, SCRIPT_HASH, STYLE_HASH
from nightcore.dashboard.collect import latest_checkpoint, new_scanner, parse_since
from nightcore.dashboard.scan import AuditScanner
from nightcore.dashboard.server import RateLimiter, create_app, is_loopback
from nightcore.dashboard.text import clean
from nightcore.dashboard.tokens import TokenError, TokenStore, parse_expires
from nightcore.dashboard.views import quick_verify
from nightcore.errors import NightCoreError, UsageError
from nightcore.runner.pipeline import run_tenants
from tests.conftest import Env, wat_module

with warnings.catch_warnings():  # starlette 1.x suggests httpx2; httpx is what is pinned
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

XSS = "<img src=x onerror=alert(1)>"
HOSTILE_OUTPUT = (
    b"</script><script>alert(1)</script>\x1b[31mRED\x1b[0m\x1b]0;title\x07" + XSS.encode()
)
JS_URL_DESCRIPTION = 'see javascript:alert(1) and <a href=\\"javascript:alert(1)\\">click</a>'


def rewrite_history(log: Path) -> None:
    """Change line 1 of the audit log and re-chain every later line (a forger's rewrite)."""
    recs = [json.loads(x) for x in log.read_bytes().splitlines()]
    recs[1]["data"]["scope"] = "evil-*"
    prev = ZERO_HASH
    for rec in recs:
        rec["prev"] = prev
        prev = hashlib.sha256(canonical(rec)).hexdigest()
    log.write_bytes(b"".join(canonical(r) + b"\n" for r in recs))


def echo_module(payload: bytes) -> bytes:
    """A WASI module that writes ``payload`` to stdout."""
    data = "".join(f"\\{b:02x}" for b in payload)
    return wat_module(
        f"""(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{data}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const {len(payload)}))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""
    )


def hostile_workspace(env: Env) -> NodeContext:
    """Tenants and audit data carrying the issue's hostile strings, run once."""
    env.add_tenant("hello")
    env.add_tenant(
        "shouter", f'description = "{JS_URL_DESCRIPTION}"\n', echo_module(HOSTILE_OUTPUT)
    )
    (env.ws / "modules" / XSS).mkdir()  # a directory name that is not a tenant id
    ws = NodeContext(env.ws)
    report = run_tenants(ws)
    codes = {r.tenant: (r.code, r.reason) for r in report.runs}
    assert codes["hello"][0] == codes["shouter"][0] == "OK", codes
    ws.audit().append(
        "verify",
        {
            "code": "SIGNATURE_INVALID",
            "reason": f"{XSS} </script><script>alert(2)</script>",
            "dir_name_sha256": hashlib.sha256(XSS.encode()).hexdigest(),
        },
    )
    ws.audit().append("note", {"text": f"\x1b[2J{XSS}", "url": "javascript:alert(3)"}, "hello")
    return ws


def inline(html: str, tag: str) -> str:
    m = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    assert m is not None
    return m.group(1)


# -- the static report -------------------------------------------------------------------------


def test_report_is_one_self_contained_file_pinned_by_csp(env: Env) -> None:
    ws = hostile_workspace(env)
    path, digest = build_report(ws)
    assert path == env.ws / "state" / "dashboard.html"
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    html = data.decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html)
    assert csp is not None
    policy = html_lib.unescape(csp.group(1))
    assert "default-src 'none'" in policy and "img-src data:" in policy
    assert "connect-src 'none'" in policy and "unsafe-inline" not in policy
    # The one script and the one stylesheet are exactly the hashed ones.
    script, style = inline(html, "script"), inline(html, "style")
    assert script == JS and html.count("<script") == 1 and html.count("<style") == 1
    for source, pinned in ((script, SCRIPT_HASH), (style, STYLE_HASH)):
        b64 = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
        assert pinned == f"'sha256-{b64}'" and pinned in policy
    # Nothing is fetched: every src/href is a data: URL, no stylesheet links, no url().
    for url in re.findall(r'\s(?:src|href)="([^"]*)"', html):
        assert url.startswith("data:"), url
    assert '<link rel="stylesheet"' not in html and "url(" not in style and "@import" not in style
    assert "<iframe" not in html and "<object" not in html


def test_hostile_strings_render_as_text(env: Env) -> None:
    ws = hostile_workspace(env)
    html = build_report(ws)[0].read_text()
    assert XSS not in html and "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # shown, escaped
    assert html.count("<script") == 1 and "alert(2)</script>" not in html
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html  # run output, escaped
    assert "\x1b" not in html and "\x07" not in html and "RED" in html  # ANSI stripped
    assert "javascript:alert(1)" in html  # the description is shown...
    assert not re.search(r"href=\"\s*javascript:", html, re.I)  # ...but never as a link
    assert "<a " not in html


def test_report_shows_tenants_runs_limits_and_charts(env: Env) -> None:
    env.add_tenant("hello")
    env.add_tenant("broken")
    module = env.ws / "modules" / "broken" / "module.wasm"
    module.write_bytes(module.read_bytes() + b"\x00")
    ws = NodeContext(env.ws)
    run_tenants(ws)
    run_tenants(ws, ["hello"])
    s = collect(ws)
    hello, broken = s.tenant("hello"), s.tenant("broken")
    assert hello is not None and broken is not None
    assert hello.verdict == "OK" and hello.runs == 2 and hello.last_run is not None
    assert hello.last_run.code == "OK", vars(hello.last_run)
    assert hello.key_id == env.publisher.key_id
    assert hello.limits["fuel"] == hello.last_run.limits["fuel"] > 0
    assert hello.output_preview == "hello"
    assert broken.verdict == "DIGEST_MISMATCH" and broken.last_run is None and broken.attention
    assert [t.name for t in s.shown] == ["broken", "hello"]  # problems first
    counts = s.verdict_counts
    assert (counts["ok"], counts["denied"], counts["attention"], counts["failing"]) == (1, 1, 1, 0)
    assert s.runs.total == 2 and dict(s.runs.outcome_counts) == {"OK": 2}
    assert s.audit.verify.ok and s.audit.verify.mode == "full"
    html = build_report(ws)[0].read_text()
    assert html.count('<tr data-tenant="') == 2
    assert html.count('<svg class="chart') == 4  # outcomes, wall time, fuel, timeline
    assert "not configured" in html  # AUFS
    assert s.node.versions["wasmtime"] in html and s.node.key_id[:16] in html


def test_large_inputs_are_summarised(env: Env) -> None:
    ws = NodeContext(env.ws)
    synthesize(ws, tenants=10_000, runs=20_000)
    s = collect(ws, verify="quick")
    assert len(s.tenants) == 10_000 and len(s.shown) == 500 and s.hidden == 9_500
    assert s.runs.total == 20_000 and len(s.runs.recent) == 100
    assert s.audit.verify.ok, s.audit.verify
    html = build_report(ws, verify="none")[0].read_text()
    assert "9,500 more tenants not shown" in html
    assert len(html) < 3_000_000


def synthesize(ws: NodeContext, *, tenants: int, runs: int) -> None:
    """Chained, canonical admit + run_outcome lines appended directly (fast)."""
    log = ws.layout.state_dir / "audit" / "audit.jsonl"
    lines = log.read_bytes().splitlines()
    prev, seq = hashlib.sha256(lines[-1]).hexdigest(), len(lines)
    key, node = "ab" * 32, ws.node_key_id()
    limits = {"fuel": 10_000_000, "memory_bytes": 16 << 20, "output_bytes": 65536, "wall_ms": 2000}
    out = []
    for i in range(runs):
        tenant = f"t{i % tenants:05d}"
        run_id = f"20261128T000000{i:06d}-{tenant}-{i:08x}"
        for event, data in (
            ("admit", {"code": "OK", "key_id": key, "module_sha256": "cd" * 32, "limits": limits}),
            (
                "run_outcome",
                {
                    "run_id": run_id,
                    "code": "OK" if i % 9 else "TIMEOUT",
                    "exit_code": 0,
                    "fuel_used": 1000 + i,
                    "wall_us": 1500 + i % 700,
                    "memory_bytes": 65536,
                    "output_bytes": 6,
                    "key_id": key,
                    "module_sha256": "cd" * 32,
                    "limits": limits,
                },
            ),
        ):
            rec = {
                "v": 1,
                "seq": seq,
                "ts": f"2026-11-28T00:{i // 60 % 60:02d}:{i % 60:02d}.000000Z",
                "node": node,
                "event": event,
                "data": data,
                "prev": prev,
                "tenant": tenant,
            }
            line = canonical(rec)
            prev, seq = hashlib.sha256(line).hexdigest(), seq + 1
            out.append(line + b"\n")
    with log.open("ab") as fh:
        fh.write(b"".join(out))


def test_diff_since_a_checkpoint_size_and_a_time(env: Env) -> None:
    env.add_tenant("hello")
    env.add_tenant("stable")
    env.add_tenant("flaky")
    ws = NodeContext(env.ws)
    run_tenants(ws)
    size = len(env.audit_lines())
    between = dt.datetime.now(dt.UTC).isoformat()
    env.add_tenant("hello", wasm=echo_module(b"hello again\n"))  # re-signed: new digest
    env.add_tenant("newcomer")
    module = env.ws / "modules" / "flaky" / "module.wasm"
    module.write_bytes(module.read_bytes() + b"\x00")  # now DIGEST_MISMATCH
    run_tenants(ws)
    for since in (str(size), between):
        diff = collect(ws, diff_since=since).diff
        assert diff is not None
        assert diff.new_tenants == ["newcomer"]
        # hello was re-signed; flaky's bytes changed (its digest is what was found).
        assert [d[0] for d in diff.changed_digests] == ["flaky", "hello"]
        assert diff.changed_verdicts == [("flaky", "OK", "DIGEST_MISMATCH")]
        assert diff.runs_since == 3 and dict(diff.outcomes_since) == {"OK": 3}
    html = build_report(ws, diff_since=str(size))[0].read_text()
    assert "What changed" in html and "newcomer" in html
    assert collect(ws, diff_since=str(len(env.audit_lines()))).diff.empty  # type: ignore[union-attr]
    with pytest.raises(UsageError):
        collect(ws, diff_since="yesterday")
    with pytest.raises(UsageError):
        collect(ws, diff_since="99999999")


def test_quick_check_catches_rewritten_history(env: Env) -> None:
    from nightcore.audit.tlog import TransparencyLog

    env.add_tenant("hello")
    ws = NodeContext(env.ws)
    run_tenants(ws)
    TransparencyLog(
        ws.layout, key_name=ws.config.node_name, signer=ws.node_signer, audit=ws.audit
    ).checkpoint("test")
    run_tenants(ws)  # signs a checkpoint after the run, too
    s = collect(ws, verify="quick")
    v, cp = s.audit.verify, s.audit.checkpoint
    assert v.ok and any("Merkle root" in c for c in v.checks), v
    assert cp is not None and cp.verified and cp.size > 1
    log = env.ws / "state" / "audit" / "audit.jsonl"
    original = log.read_bytes()
    # Rewrite history under the checkpoint *and* re-chain every later line.
    rewrite_history(log)
    v = collect(ws, verify="quick").audit.verify
    assert not v.ok and v.code == "CHECKPOINT_ROOT_MISMATCH" and v.seq == cp.size
    assert collect(ws, verify="full").audit.verify.ok is False
    # An edit after the latest checkpoint breaks the hash chain.
    log.write_bytes(original)
    ws.audit().append("note", {"text": "one"})
    ws.audit().append("note", {"text": "two"})
    lines = log.read_bytes().splitlines(keepends=True)
    lines[-2] = lines[-2].replace(b'"one"', b'"0ne"')
    log.write_bytes(b"".join(lines))
    v = collect(ws, verify="quick").audit.verify
    assert not v.ok and v.code == "AUDIT_CHAIN_BROKEN" and v.seq == len(lines) - 1


def test_aufs_section_shows_trusted_and_installed_versions(env: Env) -> None:
    ws = NodeContext(env.ws)
    assert collect(ws).aufs.status == "not configured"
    base = env.ws / "state" / "aufs"
    from nightcore.aufs.state import NodePaths

    assert NodePaths(ws).metadata == base / "metadata"  # what aufs_view checks before importing
    (base / "metadata").mkdir(parents=True)
    for role, version in (("root", 3), ("timestamp", 41), ("snapshot", 40), ("targets", 12)):
        doc = {"signed": {"_type": role, "version": version}, "signatures": []}
        (base / "metadata" / f"{role}.json").write_text(json.dumps(doc))
    installed = {
        "format": 1,
        "runtime": {"version": "0.2.0", "sha256": "ab" * 32},
        "trust": {"registry": {"version": "4", "sha256": "cd" * 32}},
        "tenants": {"hello": {"version": "1.2.0"}, XSS: {"version": XSS}},
    }
    (base / "installed.json").write_text(json.dumps(installed))
    view = collect(ws).aufs
    assert view.status == "configured", view
    assert view.metadata_versions == {"root": 3, "timestamp": 41, "snapshot": 40, "targets": 12}
    assert view.runtime == "0.2.0" and view.trust == {"registry": "4"}
    assert ("hello", "1.2.0") in view.tenants and view.tenants_total == 2
    html = build_report(ws, verify="none")[0].read_text()
    assert "timestamp v41" in html and XSS not in html
    (base / "installed.json").write_text("{not json")
    assert collect(ws).aufs.status == "error"


# -- the scanner -----------------------------------------------------------------------------


def test_scanner_root_matches_rfc9162_and_follows_growth(env: Env) -> None:
    ws = NodeContext(env.ws)
    audit = ws.audit()
    scanner = AuditScanner(audit.path, merkle_sizes=[3])
    for i in range(12):
        audit.append("verify", {"code": "OK", "i": i}, "hello")
        assert scanner.update()
        lines = audit.path.read_bytes().splitlines()
        assert scanner.count == len(lines)
        assert scanner.merkle_root() == merkle.root([merkle.leaf_hash(x) for x in lines])
    assert scanner.root_at(3) == merkle.root([merkle.leaf_hash(x) for x in lines[:3]])
    assert not scanner.update()  # nothing new
    assert scanner.tenants[b"hello"][0] == len(lines) - 12  # first seen
    with audit.path.open("ab") as fh:
        fh.write(b'{"partial":')  # a write in progress is not consumed
    assert not scanner.update() and scanner.torn_bytes == len(b'{"partial":')
    audit.path.write_bytes(b"".join(x + b"\n" for x in lines[:5]))  # truncated: start over
    scanner.update()
    assert scanner.count == 5 and scanner.resets == 1 and scanner.chain_error is None


def test_worker_process_hashing_matches_in_process(env: Env) -> None:
    env.add_tenant("hello")
    ws = NodeContext(env.ws)
    run_tenants(ws)  # signs a checkpoint, then logs its event
    run_tenants(ws)
    log = ws.layout.state_dir / "audit" / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    size = len(lines) - 4

    def scan(parallel: int | None) -> AuditScanner:
        sc = AuditScanner(
            log,
            chain_from=size,
            merkle_sizes=[size],
            parallel_min_bytes=parallel,
            snapshot_at=size,
        )
        sc.update()
        return sc

    for tamper in (False, True):
        if tamper:  # the chain breaks, and the last checkpoint event's root is no longer right
            lines[-2] = lines[-2].replace(b'"seq":', b'"seq": ', 1)
            log.write_bytes(b"".join(lines))
        here, worker = scan(None), scan(1)
        assert worker.used_worker and not here.used_worker
        assert here.count == worker.count == len(lines)
        assert here.merkle_root() == worker.merkle_root()
        assert here.root_at(size) == worker.root_at(size) is not None
        assert here.chain_error == worker.chain_error
        assert (here.chain_error is not None) == tamper
        assert here.checkpoint_mismatch == worker.checkpoint_mismatch
        assert (here.checkpoint_mismatch is not None) == tamper
        assert here.tenants.keys() == worker.tenants.keys() and here.runs == worker.runs
        # The state kept for the next refresh (taken before the tampered line) is the same.
        assert here.snapshot is not None and here.snapshot["count"] == size
        assert here.snapshot == worker.snapshot


def _verdict(scanner: AuditScanner, cp: Any) -> dict[str, Any]:
    return {k: v for k, v in quick_verify(scanner, cp).to_dict().items() if k != "at"}


def _fresh_and_resumed(ws: NodeContext, state: dict[str, Any]) -> tuple[AuditScanner, AuditScanner]:
    cp, _ = latest_checkpoint(ws)
    fresh, resumed = new_scanner(ws, "quick", cp), new_scanner(ws, "quick", cp)
    fresh.update()
    resumed.resume(state)
    resumed.update()
    return fresh, resumed


def test_scan_state_resumes_only_over_the_same_bytes(env: Env) -> None:
    env.add_tenant("hello")
    ws = NodeContext(env.ws)
    run_tenants(ws)
    cp, _ = latest_checkpoint(ws)
    assert cp is not None and cp.verified
    first = new_scanner(ws, "quick", cp)
    first.update()
    state = first.snapshot
    assert state is not None and state["count"] == cp.size and state["hashed"] is not None
    ws.audit().append("cordon", {"reason": "x"}, "hello")
    for _ in range(3):
        run_tenants(ws)  # each signs a checkpoint
    fresh, resumed = _fresh_and_resumed(ws, state)
    assert resumed.resumed_at == cp.size and fresh.resumed_at is None
    for sc in (fresh, resumed):  # what a scan from line 0 computes, from the state on
        assert sc.count == len(env.audit_lines()) and sc.chain_error is None
    assert resumed.merkle_root() == fresh.merkle_root()
    new_cp, _ = latest_checkpoint(ws)
    assert new_cp is not None and new_cp.size > cp.size
    assert resumed.root_at(new_cp.size) == fresh.root_at(new_cp.size) is not None
    assert _verdict(resumed, new_cp) == _verdict(fresh, new_cp)
    for attr in ("tenants", "runs", "events", "cordon_events", "event_counts", "run_outcomes"):
        assert getattr(resumed, attr) == getattr(fresh, attr), attr
    assert resumed.snapshot == fresh.snapshot is not None
    # Not where a scan from line 0 would check more: the chain before the state's end, a
    # Merkle size inside it, a --diff boundary, other parameters.
    assert not AuditScanner(first.path, chain_from=cp.size - 1).resume(state)
    assert not AuditScanner(first.path, merkle_sizes=[cp.size - 1]).resume(state)
    assert not AuditScanner(first.path, chain=False, merkle=False).resume(dict(state, params=()))
    assert not new_scanner(ws, "quick", new_cp, parse_since("1")).resume(state)
    # History rewritten under the state (and re-chained): scanned from line 0 again, and the
    # signed checkpoint catches it.
    rewrite_history(ws.layout.state_dir / "audit" / "audit.jsonl")
    fresh, resumed = _fresh_and_resumed(ws, state)
    assert resumed.resumed_at is None
    v = quick_verify(resumed, new_cp)
    assert not v.ok and v.code == "CHECKPOINT_ROOT_MISMATCH"
    assert _verdict(resumed, new_cp) == _verdict(fresh, new_cp)


def test_report_refreshes_from_the_saved_state_show_the_same(env: Env) -> None:
    env.add_tenant("hello")
    env.add_tenant("other")
    ws = NodeContext(env.ws)
    saved = env.ws / "private" / scancache.STATE_NAME
    for i in range(12):
        run_tenants(ws, None if i % 3 else ["hello"])
        if i == 5:
            ws.audit().append("cordon", {"reason": XSS}, "other")
        s = collect(ws, verify="quick")  # resumes from the state the previous one saved
        assert saved.exists() and stat.S_IMODE(saved.stat().st_mode) == 0o600
        state = saved.read_bytes()
        saved.unlink()
        t = collect(ws, verify="quick")  # from line 0
        t.generated, t.audit.verify.at = s.generated, s.audit.verify.at
        assert render_page(s) == render_page(t)
        assert s.audit.verify.ok and t.audit.verify.ok
        saved.write_bytes(state)
    loaded = scancache.load(ws)
    assert loaded is not None and loaded["count"] > 40
    # Anything but an intact state written with this node's secret is ignored.
    saved.write_bytes(state[:-1] + bytes([state[-1] ^ 1]))
    assert scancache.load(ws) is None
    saved.write_bytes(state)
    (env.ws / "private" / "cache.secret").write_bytes(b"another node's secret, 32 bytes!")
    assert scancache.load(ws) is None
    assert collect(ws, verify="quick").audit.verify.ok  # and rescanned from line 0


def test_clean_strips_terminal_and_bidi_controls() -> None:
    assert clean("\x1b[31mred\x1b[0m\x1b]0;t\x07 ok\u202eevil\x00") == "red ok?evil?"
    assert clean("x" * 500, 10) == "x" * 9 + "…"
    assert clean(None) == ""


# -- tokens ----------------------------------------------------------------------------------


def test_tokens_are_stored_hashed_and_expire(env: Env) -> None:
    ws = NodeContext(env.ws)
    store = TokenStore(ws)
    new = store.create(parse_expires("2h"))
    path = env.ws / "private" / "serve-tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert new.token not in text and hashlib.sha256(new.token.encode()).hexdigest() in text
    assert store.check(new.token).id == new.id
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    bad = new.token[:-4] + ("AAAA" if not new.token.endswith("AAAA") else "BBBB")
    for presented, now, code in (
        (new.token, later, "TOKEN_EXPIRED"),
        (bad, None, "TOKEN_INVALID"),
        ("Bearer x", None, "TOKEN_INVALID"),
        ("", None, "TOKEN_MISSING"),
    ):
        with pytest.raises(TokenError) as err:
            store.check(presented, now)
        assert err.value.code == code
    store.revoke(new.id)
    with pytest.raises(TokenError):
        store.check(new.token)
    events = [e for e in env.audit_lines() if e["event"].startswith("serve_token")]
    assert [e["event"] for e in events] == ["serve_token_created", "serve_token_revoked"]
    assert all(e["data"]["id"] == new.id for e in events)
    assert new.token not in (env.ws / "state" / "audit" / "audit.jsonl").read_text()
    path.chmod(0o644)
    with pytest.raises(NightCoreError) as err2:
        store.check(new.token)
    assert err2.value.code == "TOKEN_STORE_INSECURE"


def test_expiry_parsing() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_expires("90m", now) == now + dt.timedelta(minutes=90)
    assert parse_expires("2026-02-01T00:00:00Z", now) == dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    for bad in ("0d", "soon", "2025-01-01", "400d"):
        with pytest.raises(UsageError):
            parse_expires(bad, now)


def test_rate_limiter_and_loopback() -> None:
    rl = RateLimiter(2, 60)
    assert rl.hit("a", 0) is None and rl.hit("a", 1) is None
    assert rl.hit("a", 2) == pytest.approx(58)
    assert rl.hit("b", 2) is None and rl.hit("a", 61) is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")  # noqa: S104


# -- the live console's HTTP API -------------------------------------------------------------


@pytest.fixture
def console(env: Env) -> tuple[TestClient, str, Env]:
    env.add_tenant("hello")
    ws = NodeContext(env.ws)
    token = TokenStore(ws).create(parse_expires("1h")).token
    client = TestClient(create_app(ws, rate_limit=5), base_url="http://127.0.0.1:8700")
    return client, token, env


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_of(res: Any) -> str:
    body = res.json()
    assert set(body) == {"code", "error"}, body
    return str(body["code"])


def test_every_response_carries_security_headers(console: tuple[TestClient, str, Env]) -> None:
    client, _, _ = console
    for method, url in (
        ("GET", "/"),
        ("GET", "/fragment"),
        ("GET", "/api/tenants"),
        ("GET", "/nope"),
        ("DELETE", "/api/tenants"),
        ("POST", "/api/run"),
    ):
        res = client.request(method, url)
        h = res.headers
        assert h["x-content-type-options"] == "nosniff", url
        assert h["x-frame-options"] == "DENY" and h["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert "default-src 'none'" in h["content-security-policy"]
        assert h["cache-control"] == "no-store"
        assert "set-cookie" not in h
    page = client.get("/")
    assert SCRIPT_HASH in page.headers["content-security-policy"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert 'data-live="1"' in page.text


def test_malformed_params_and_wrong_methods(console: tuple[TestClient, str, Env]) -> None:
    client, token, _ = console
    for url in (
        "/api/tenants?limit=abc",
        "/api/tenants?limit=0",
        "/api/tenants?limit=1001",
        "/api/tenants?offset=-1",
        "/api/tenants?attention=maybe",
        "/api/tenants?limit=1&limit=2",
        "/api/tenants?sort=name",
        "/api/runs?tenant=Bad%20Name!",
        "/api/runs?limit=" + "9" * 30,
        "/api/audit/verify?x=1",
    ):
        res = client.get(url)
        assert res.status_code == 400, url
        assert error_of(res) in ("USAGE", "TENANT_NAME_INVALID")
    for method, url in (("GET", "/api/tenants/hello/cordon"), ("PUT", "/api/run")):
        res = client.request(method, url)
        assert res.status_code == 405 and error_of(res) == "METHOD_NOT_ALLOWED"
        assert "POST" in res.headers["allow"]
    for body, ctype in (
        (b"[1]", "application/json"),
        (b"{", "application/json"),
        (b"x", "text/plain"),
    ):
        res = client.post("/api/run", content=body, headers={**auth(token), "Content-Type": ctype})
        assert res.status_code == 400 and error_of(res) == "USAGE"
    res = client.post(
        "/api/tenants/NOT%20AN%20ID/cordon", json={"reason": "x"}, headers=auth(token)
    )
    assert res.status_code == 400 and error_of(res) == "TENANT_NAME_INVALID"


def test_mutations_need_a_valid_token(console: tuple[TestClient, str, Env]) -> None:
    client, token, env = console
    store = TokenStore(NodeContext(env.ws))
    expired = store.create(parse_expires("1m"))
    url = "/api/tenants/hello/cordon"
    for headers, code in (
        ({}, "TOKEN_MISSING"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, "TOKEN_INVALID"),
        (auth("nct_0123456789ab_" + "A" * 43), "TOKEN_INVALID"),
        (auth(token[:-1] + ("x" if token[-1] != "x" else "y")), "TOKEN_INVALID"),
        ({"Cookie": f"token={token}"}, "TOKEN_MISSING"),  # cookies are never credentials
    ):
        res = client.post(url, json={"reason": "nope"}, headers=headers)
        assert res.status_code == 401 and error_of(res) == code
        assert res.headers["www-authenticate"].startswith("Bearer")
    # Expired: the same token, seen from two hours later.
    record = store.check(expired.token)
    assert record.expired(dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
    assert not [e for e in env.audit_lines() if e["event"] == "cordon"]


def test_token_guessing_is_slowed_down(console: tuple[TestClient, str, Env]) -> None:
    client, _, _ = console
    codes = [
        client.post("/api/run", headers=auth(f"nct_{i:012x}_" + "A" * 43)).status_code
        for i in range(31)
    ]
    assert codes[:30] == [401] * 30 and codes[30] == 429


def test_cross_site_post_is_refused_even_with_a_token(console: tuple[TestClient, str, Env]) -> None:
    client, token, env = console
    url = "/api/tenants/hello/cordon"
    for extra in (
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.1:9999"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        res = client.post(url, json={"reason": "csrf"}, headers={**auth(token), **extra})
        assert res.status_code == 403 and error_of(res) == "ORIGIN_REJECTED", extra
    res = client.post("/api/run", headers={"Origin": "http://evil.example"})
    assert res.status_code == 403
    assert not [e for e in env.audit_lines() if e["event"] == "cordon"]
    res = client.get("/api/tenants", headers={"Host": "rebind.evil.example:8700"})
    assert res.status_code == 421 and error_of(res) == "HOST_REJECTED"
    same = {**auth(token), "Origin": "http://127.0.0.1:8700", "Sec-Fetch-Site": "same-origin"}
    assert client.post(url, json={"reason": "ok"}, headers=same).status_code == 200


def test_cordon_run_checkpoint_are_audited_with_the_token_id(
    console: tuple[TestClient, str, Env],
) -> None:
    client, token, env = console
    token_id = token.split("_")[1]
    res = client.post(
        "/api/tenants/hello/cordon", json={"reason": "incident 7"}, headers=auth(token)
    )
    assert res.status_code == 200 and res.json()["cordoned"] is True
    again = client.post("/api/tenants/hello/cordon", json={"reason": "x"}, headers=auth(token))
    assert again.status_code == 409 and error_of(again) == "ALREADY_CORDONED"
    [event] = [e for e in env.audit_lines() if e["event"] == "cordon"]
    assert event["tenant"] == "hello" and event["data"]["actor"] == f"token:{token_id}"
    tenants = client.get("/api/tenants").json()
    assert tenants["total"] == 1 and tenants["tenants"][0]["cordoned"] is True
    assert client.post("/api/tenants/hello/uncordon", headers=auth(token)).status_code == 200
    run = client.post("/api/run", json={"tenants": ["hello"]}, headers=auth(token))
    assert run.status_code == 200 and run.json()["runs"][0]["code"] == "OK"
    assert any(
        e["event"] == "console_action" and e["data"]["actor"] == f"token:{token_id}"
        for e in env.audit_lines()
    )
    cp = client.post("/api/checkpoint", headers=auth(token))
    assert cp.status_code == 200
    size = cp.json()["checkpoint"]["size"]
    latest = client.get("/api/checkpoint").json()["checkpoint"]
    assert latest["size"] == size and latest["verified"] is True
    [cp_event] = [
        e for e in env.audit_lines() if e["event"] == "checkpoint" and e["data"]["size"] == size
    ]
    assert cp_event["data"]["reason"] == f"console token:{token_id}"
    runs = client.get("/api/runs?tenant=hello&limit=5").json()["runs"]
    assert len(runs) == 1 and runs[0]["code"] == "OK"
    verify = client.get("/api/audit/verify").json()
    assert verify["ok"] is True and verify["mode"] == "full"
    assert "Full verification at" in client.get("/fragment").text
    # Five changes per window in this app: the sixth is refused.
    res = client.post("/api/tenants/hello/cordon", json={"reason": "x"}, headers=auth(token))
    assert res.status_code == 429 and error_of(res) == "RATE_LIMITED"
    assert int(res.headers["retry-after"]) >= 1


def test_console_runs_reuse_one_warm_runner(console: tuple[TestClient, str, Env]) -> None:
    client, token, env = console
    state = client.app.state  # type: ignore[attr-defined]
    codes = []
    for _ in range(3):
        res = client.post("/api/run", json={"tenants": ["hello"]}, headers=auth(token))
        assert res.status_code == 200
        codes.append(res.json()["runs"][0]["code"])
        assert len(state.warm_runners) == 1
    assert codes == ["OK"] * 3
    runner = state.warm_runners[0]
    assert runner._sandbox is not None  # engines and compiled modules kept between requests
    runs = client.get("/api/runs?tenant=hello&limit=5").json()["runs"]
    assert len(runs) == 3
    state.close()
    assert state.warm_runners == [] and runner._sandbox is None
    assert env.cli("audit", "verify").code == 0


def test_openapi_schema_is_valid_and_complete(console: tuple[TestClient, str, Env]) -> None:
    client, _, _ = console
    doc = client.get("/openapi.json").json()
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)
    assert set(doc["paths"]) == {
        "/api/tenants",
        "/api/runs",
        "/api/audit/verify",
        "/api/mesh",
        "/api/checkpoint",
        "/api/tenants/{tenant}/cordon",
        "/api/tenants/{tenant}/uncordon",
        "/api/run",
    }
    assert doc["paths"]["/api/run"]["post"]["security"] == [{"bearer": []}]


def test_report_path_and_digest_are_stable_inputs(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "report.html"
    path, digest = build_report(NodeContext(env.ws), out, verify="none")
    assert path == out and hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary left
    assert "Not verified in this report" in out.read_text()


def test_dashboard_data_files_ship_as_package_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Templates, stylesheet, script and OpenAPI document are files a wheel must carry: each one
    is matched by [tool.setuptools.package-data], and a missing one is a coded error."""
    import fnmatch
    import tomllib

    from nightcore.dashboard import assets

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["nightcore.dashboard"]
    names = sorted(p.name for p in assets.DATA_DIR.iterdir() if p.is_file())
    assert {"page.html.j2", "content.html.j2", "report.css", "console.js", "openapi.json"} <= set(
        names
    )
    for name in names:
        assert any(fnmatch.fnmatch(f"data/{name}", g) for g in globs), name
    assert (assets.DATA_DIR / "console.js").read_text(encoding="utf-8") == assets.JS
    monkeypatch.setattr(assets, "DATA_DIR", assets.DATA_DIR / "nonexistent")
    with pytest.raises(NightCoreError) as err:
        assets.read_data("report.css")
    assert err.value.code == "DASHBOARD_DATA_MISSING"


# -- chart scales, units, previews, verdicts (issue 17) ----------------------------------------


def test_scale_is_log_only_across_orders_of_magnitude() -> None:
    from nightcore.dashboard.charts import choose_scale, log_ticks, nice_ticks

    assert choose_scale([42.0, 1_000_000.0]) == "log"
    assert choose_scale([1.0, 100.0]) == "linear"  # exactly 100x: still linear
    assert choose_scale([1.0, 101.0]) == "log"
    assert choose_scale([0.0, 5.0, 9.0]) == "linear"  # zeros do not count
    assert choose_scale([7.0]) == choose_scale([]) == "linear"
    assert log_ticks(42, 1_000_000) == [10.0, 100.0, 1e3, 1e4, 1e5, 1e6]
    assert log_ticks(0.4, 3) == [0.1, 1.0, 10.0]
    assert log_ticks(100, 100) == [100.0, 1000.0]
    wide = log_ticks(1e-3, 1e12)  # more than 7 powers: every second or third one
    assert len(wide) <= 7 and wide[0] == 1e-3 and wide[-1] >= 1e12
    assert nice_ticks(9) == [0.0, 2.5, 5.0, 7.5, 10.0]


def test_line_chart_labels_powers_of_ten_on_a_log_axis() -> None:
    from nightcore.dashboard.charts import line_chart

    t0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    pts = [(t0, 42.0, "OK"), (t0 + dt.timedelta(seconds=30), 1_000_000.0, "FUEL_EXHAUSTED")]
    svg = str(line_chart({"a": pts}, label="fuel per run"))
    assert 'data-scale="log"' in svg and "log scale" in svg
    labels = re.findall(r'<text class="axis" x="\d+" y="[\d.]+" text-anchor="end">([^<]+)<', svg)
    assert labels == ["10", "100", "1k", "10k", "100k", "1M"]
    ys = [float(y) for y in re.findall(r'<circle class="pt[^"]*" cx="[\d.]+" cy="([\d.]+)"', svg)]
    assert 40 < ys[0] - ys[1] < 200  # 42 sits well above the axis floor, not flattened to it
    flat = str(line_chart({"a": [(t0, 10.0, "OK"), (t0, 20.0, "OK")]}, label="x"))
    assert 'data-scale="linear"' in flat and "log scale" not in flat


def test_timeline_clusters_close_runs_under_a_readable_count() -> None:
    from nightcore.dashboard.charts import clusters, timeline
    from nightcore.dashboard.views import RunView

    assert clusters([0.0, 3.0, 8.9, 9.0, 30.0]) == [[0, 1, 2], [3], [4]]
    runs = [
        RunView.from_record(
            {"tenant": "t", "ts": f"2026-12-01T12:00:{s:02d}Z", "data": {"code": "OK"}}
        )
        for s in (0, 0, 1, 1, 2)
    ] + [RunView.from_record({"tenant": "t", "ts": "2026-12-01T12:10:00Z", "data": {"code": "OK"}})]
    svg = str(timeline(runs))
    assert svg.count('<g class="cluster">') == 1
    assert re.search(r'<text class="count"[^>]*>5</text>', svg)
    assert svg.count('<circle class="dot c-ok"') == 1  # the lone run
    css = (Path(__file__).parents[2] / "src/nightcore/dashboard/data/report.css").read_text()
    assert "svg .count { fill: #0b1020;" in css  # dark text on the light-filled dot


def test_wall_time_is_always_in_milliseconds() -> None:
    from nightcore.dashboard.text import compact_num, millis
    from nightcore.dashboard.views import RunView

    assert millis(0.42) == "0.4 ms" and millis(42.25) == "42.2 ms" and millis(123.4) == "123 ms"
    assert millis(5000) == "5,000 ms" and millis(10_000) == "10,000 ms"
    assert millis(None) == millis(True) == "-"
    run = RunView.from_record(
        {"data": {"code": "OK", "wall_us": 12_000_000, "limits": {"wall_ms": 10_000}}}
    )
    assert ("time", "12,000 ms / 10,000 ms") in [(u[0], u[1]) for u in run.usage()]
    assert [compact_num(v) for v in (0, 0.01, 0.1, 2.5, 10, 1000, 1e6)] == [
        "0",
        "0.01",
        "0.1",
        "2.5",
        "10",
        "1k",
        "1M",
    ]


def test_output_preview_cuts_at_a_word_boundary() -> None:
    from nightcore.dashboard.text import preview

    assert preview("hello world", 11) == "hello world"
    assert preview("hello world again", 12) == "hello world…"
    assert preview("hello world!", 11) == "hello…"  # never "hello worl…"
    assert preview("supercalifragilistic", 10) == "supercali…"  # one word longer than the limit
    assert preview("line one\nline two three", 15) == "line one\nline…"
    assert preview("cut upstream mid-wo…", 120) == "cut upstream…"  # collect's cut
    assert preview("\x1b[31mred\x1b[0m text", 120) == "red text"
    assert len(preview("word " * 100, 120)) <= 120


def test_verdict_is_consistent_with_a_failed_last_run() -> None:
    from nightcore.dashboard.views import RunView, TenantView

    t = TenantView(name="t", present=True, verdict="OK")
    assert t.verdict_shown == ("OK", "ok", "")  # no runs yet
    t.last_run = RunView.from_record({"tenant": "t", "data": {"code": "OK"}})
    assert t.verdict_shown == ("OK", "ok", "")
    t.last_run = RunView.from_record({"tenant": "t", "data": {"code": "WALL_TIMEOUT"}})
    text_, cls, note = t.verdict_shown
    assert (text_, cls) == ("VERIFIED", "warn") and "WALL_TIMEOUT" in note
    denied = TenantView(name="d", present=True, verdict="SIGNATURE_INVALID")
    assert denied.verdict_shown == ("SIGNATURE_INVALID", "bad", "")


def test_console_actions_render_disabled_until_a_token(env: Env) -> None:
    env.add_tenant("hello")
    ws = NodeContext(env.ws)
    html = render_page(collect(ws), live=True)
    buttons = re.findall(r"<button[^>]*data-needs-token[^>]*>", html)
    assert len(buttons) == 3  # run, checkpoint, cordon hello
    assert all(" disabled" in b and 'aria-disabled="true"' in b for b in buttons)
    assert "applyToken" in JS
    static = build_report(ws)[0].read_text()
    assert not re.search(r"<button[^>]*data-needs-token", static)  # no actions in a report
