"""The report's views: plain data shaped for the templates and the JSON API, and the pure
functions that build them from what was collected (parsed audit lines, the scanner's state,
run index aggregates). Nothing here reads a file: :mod:`nightcore.dashboard.collect` does the
reading and hands the bytes and rows over.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nightcore.dashboard import text
from nightcore.dashboard.scan import DECISION, FIRST_TS, OUTCOME, RUNS, AuditScanner, loads

RECENT_RUNS = 100
CHART_TENANTS = 6
CHART_POINTS = 60
LIST_CAP = 200
LIMIT_KEYS = ("fuel", "wall_ms", "memory_bytes", "output_bytes")


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: object, limit: int = 500) -> str:
    return v[:limit] if isinstance(v, str) else ""


def code_class(code: str) -> str:
    """CSS class of a verdict/outcome code: ok, warn (cordoned), muted (nothing yet), bad."""
    if code == "OK":
        return "ok"
    if code == "CORDONED":
        return "warn"
    if code in ("", "NOT_VERIFIED", "NO_RUNS"):
        return "muted"
    return "bad"


def now_ts() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- views -----------------------------------------------------------------------------------


@dataclass
class RunView:
    run_id: str
    tenant: str
    code: str
    exit_code: int | None
    fuel_used: int | None
    wall_ms: float | None
    memory_bytes: int | None
    output_bytes: int | None
    output_truncated: bool
    detail: str
    ts: str
    seq: int | None
    key_id: str
    module_sha256: str
    limits: dict[str, int]

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> RunView:
        d = rec["data"]
        wall_us = _int(d.get("wall_us"))
        wall_ms = d.get("wall_ms")  # logs written before wall_us existed
        if wall_us is None and isinstance(wall_ms, int | float) and not isinstance(wall_ms, bool):
            wall_us = round(wall_ms * 1000)
        limits = d.get("limits") if isinstance(d.get("limits"), dict) else {}
        assert isinstance(limits, dict)
        return cls(
            run_id=_str(d.get("run_id"), 200),
            tenant=_str(rec.get("tenant"), 200),
            code=_str(d.get("code"), 64) or "?",
            exit_code=_int(d.get("exit_code")),
            fuel_used=_int(d.get("fuel_used")),
            wall_ms=wall_us / 1000 if wall_us is not None else None,
            memory_bytes=_int(d.get("memory_bytes")),
            output_bytes=_int(d.get("output_bytes")),
            output_truncated=d.get("output_truncated") is True,
            detail=_str(d.get("detail")),
            ts=_str(rec.get("ts"), 40),
            seq=_int(rec.get("seq")),
            key_id=_str(d.get("key_id"), 64),
            module_sha256=_str(d.get("module_sha256"), 64),
            limits={k: v for k, v in limits.items() if isinstance(k, str) and _int(v) is not None},
        )

    def usage(self) -> list[tuple[str, str, float | None, str]]:
        """(label, "used / limit" text, fraction of the limit or None, css class) per limit."""
        out: list[tuple[str, str, float | None, str]] = []
        pairs = (
            ("fuel", self.fuel_used, "fuel", text.num),
            ("time", self.wall_ms, "wall_ms", text.millis),
            ("memory", self.memory_bytes, "memory_bytes", text.size),
            ("output", self.output_bytes, "output_bytes", text.size),
        )
        for label, used, key, fmt in pairs:
            limit = self.limits.get(key)
            if used is None:
                out.append((label, "-", None, "muted"))
                continue
            if not limit:
                out.append((label, fmt(used), None, "muted"))
                continue
            frac = min(float(used) / float(limit), 1.0)
            cls = "bad" if used >= limit else "warn" if frac >= 0.8 else "ok"
            out.append((label, f"{fmt(used)} / {fmt(limit)}", frac, cls))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "tenant": self.tenant,
            "code": self.code,
            "exit_code": self.exit_code,
            "fuel_used": self.fuel_used,
            "wall_ms": self.wall_ms,
            "memory_bytes": self.memory_bytes,
            "output_bytes": self.output_bytes,
            "output_truncated": self.output_truncated,
            "detail": self.detail,
            "ts": self.ts,
            "audit_seq": self.seq,
            "key_id": self.key_id,
            "module_sha256": self.module_sha256,
            "limits": self.limits,
        }


@dataclass
class TenantView:
    name: str
    present: bool  # a package directory exists under modules/
    verdict: str = "NOT_VERIFIED"
    verdict_reason: str = ""
    verdict_event: str = ""
    verdict_ts: str = ""
    key_id: str = ""
    module_sha256: str = ""
    runs: int = 0
    last_run: RunView | None = None
    limits: dict[str, int] = field(default_factory=dict)
    cordoned: bool = False
    cordon_reason: str = ""
    first_seen: str = ""
    description: str = ""
    output_preview: str = ""

    @property
    def last_code(self) -> str:
        return self.last_run.code if self.last_run else "NO_RUNS"

    @property
    def verdict_shown(self) -> tuple[str, str, str]:
        """(badge text, css class, note) of the verdict cell, consistent with the last run: a
        module verified OK whose last run failed is shown as VERIFIED (amber) with the
        failure, never as a green OK beside a red last run."""
        last = self.last_code
        if self.verdict == "OK" and code_class(last) in ("bad", "warn"):
            return "VERIFIED", "warn", f"module verified; its last run failed: {last}"
        return self.verdict, code_class(self.verdict), ""

    @property
    def attention(self) -> bool:
        return (
            self.cordoned
            or code_class(self.verdict) in ("bad", "warn")
            or code_class(self.last_code) in ("bad", "warn")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.name,
            "present": self.present,
            "verdict": self.verdict,
            "verdict_reason": self.verdict_reason,
            "verdict_event": self.verdict_event,
            "verdict_ts": self.verdict_ts,
            "key_id": self.key_id,
            "module_sha256": self.module_sha256,
            "runs": self.runs,
            "last_run": self.last_run.to_dict() if self.last_run else None,
            "limits": self.limits,
            "cordoned": self.cordoned,
            "cordon_reason": self.cordon_reason,
            "first_seen": self.first_seen,
            "attention": self.attention,
        }


@dataclass
class EventView:
    seq: int | None
    ts: str
    event: str
    tenant: str
    summary: str
    actor: str = ""


@dataclass
class CheckpointView:
    size: int
    root: str
    origin: str
    key_name: str
    verified: bool  # signature checked with the node's public key
    note: str
    behind: int = 0  # log lines not yet covered


@dataclass
class VerifyView:
    mode: str  # full | quick | none
    ok: bool | None
    entries: int
    code: str | None = None
    message: str | None = None
    seq: int | None = None
    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    at: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "ok": self.ok,
            "entries": self.entries,
            "code": self.code,
            "error": self.message,
            "seq": self.seq,
            "checks": self.checks,
            "warnings": self.warnings,
            "at": self.at,
        }


@dataclass
class AuditView:
    entries: int
    size_bytes: int
    head: str
    torn_bytes: int
    event_counts: list[tuple[str, int]]
    checkpoint: CheckpointView | None
    checkpoint_error: str | None
    checkpoint_events: int
    verify: VerifyView
    recent: list[EventView]
    last_full: VerifyView | None = None  # the console's latest on-demand full verification


@dataclass
class RunsView:
    recent: list[RunView]
    total: int  # run outcomes in the audit log
    outcome_counts: list[tuple[str, int]]
    source: str  # where the counts and chart series come from
    index_total: int | None
    index_note: str | None
    series: dict[str, list[tuple[dt.datetime, float, float, str]]]  # tenant -> (t, wall, fuel)


@dataclass
class KeyView:
    key_id: str
    name: str
    role: str
    scope: str
    scheme: str
    expires: str
    age_days: int = 0
    age_warn: bool = False  # trusted longer than the rotation period (90 days, as AUFS)


@dataclass
class RevocationView:
    kind: str  # key | module
    subject: str
    reason: str
    revoked_at: str


@dataclass
class TrustView:
    keys: list[KeyView]
    keys_error: str | None
    revocations_version: int
    revocations_issued: str
    revocations_signer: str
    revoked: list[RevocationView]
    revoked_total: int
    revocations_error: str | None


@dataclass
class CordonView:
    tenant: str
    reason: str
    ts: str


@dataclass
class InvalidView:
    name: str  # the directory name as found (untrusted), or "" if only its hash is known
    code: str
    reason: str
    ts: str
    name_sha256: str


@dataclass
class DiffView:
    label: str
    boundary: int  # lines before the boundary
    events_since: int
    runs_since: int
    outcomes_since: list[tuple[str, int]]
    new_tenants: list[str]
    removed_tenants: list[str]
    changed_digests: list[tuple[str, str, str]]
    changed_verdicts: list[tuple[str, str, str]]

    @property
    def empty(self) -> bool:
        return not (
            self.new_tenants
            or self.removed_tenants
            or self.changed_digests
            or self.changed_verdicts
        )


@dataclass
class AufsView:
    """The update channel (TUF): what this node trusts and has installed through it."""

    status: str  # "not configured" | "configured" | "error"
    metadata_versions: dict[str, int] = field(default_factory=dict)
    runtime: str = ""
    trust: dict[str, str] = field(default_factory=dict)  # registry / revocations -> version
    tenants: list[tuple[str, str]] = field(default_factory=list)  # (tenant, version)
    tenants_total: int = 0
    error: str = ""


@dataclass
class NodeView:
    name: str
    key_id: str
    origin: str
    fips: bool
    versions: dict[str, str]


@dataclass
class Snapshot:
    generated: str
    node: NodeView
    tenants: list[TenantView]  # every tenant, by name
    shown: list[TenantView]  # the rows the report shows (problems first), capped
    hidden: int
    hidden_attention: int
    verdict_counts: dict[str, int]
    runs: RunsView
    audit: AuditView
    trust: TrustView
    cordons: list[CordonView]
    cordons_error: str | None
    cordon_events: list[EventView]
    invalid: list[InvalidView]
    diff: DiffView | None
    warnings: list[str]
    aufs: AufsView = field(default_factory=lambda: AufsView("not configured"))

    def tenant(self, name: str) -> TenantView | None:
        for t in self.tenants:
            if t.name == name:
                return t
        return None


# -- audit events ----------------------------------------------------------------------------


def _summary(data: dict[str, Any], limit: int = 240) -> str:
    parts = []
    for k, v in data.items():
        if isinstance(v, str):
            shown = v[:12] + "…" if text.is_hex64(v) else v
        elif isinstance(v, dict):
            shown = "{…}" if v else "{}"
        elif isinstance(v, list):
            shown = "[…]" if v else "[]"
        elif type(v) is int:
            shown = str(v)  # what json.dumps gives, without its encoder set-up
        else:
            shown = json.dumps(v)
        parts.append(f"{k}={shown}")
    return text.clean(" ".join(parts), limit)


def event_view(line: bytes) -> EventView | None:
    rec = loads(line)
    if rec is None:
        return None
    d = rec["data"]
    return EventView(
        seq=_int(rec.get("seq")),
        ts=_str(rec.get("ts"), 40),
        event=_str(rec.get("event"), 64),
        tenant=_str(rec.get("tenant"), 200),
        summary=_summary(d),
        actor=_str(d.get("actor"), 100),
    )


# -- tenants ---------------------------------------------------------------------------------


def tenant_view(name: str, st: list[Any] | None, present: bool) -> TenantView:
    t = TenantView(name=name, present=present)
    if st is None:
        return t
    t.runs = int(st[RUNS])
    t.first_seen = bytes(st[FIRST_TS]).decode("utf-8", "replace")
    dec = loads(st[DECISION]) if st[DECISION] else None
    out = loads(st[OUTCOME]) if st[OUTCOME] else None
    if dec is not None:
        d = dec["data"]
        t.verdict = _str(d.get("code"), 64) or "?"
        t.verdict_reason = _str(d.get("reason"))
        t.verdict_event = _str(dec.get("event"), 64)
        t.verdict_ts = _str(dec.get("ts"), 40)
        t.key_id = _str(d.get("key_id"), 64)
        t.module_sha256 = _str(d.get("module_sha256"), 64)
        if isinstance(d.get("limits"), dict):
            t.limits = {k: v for k, v in d["limits"].items() if _int(v) is not None}
    if out is not None:
        t.last_run = RunView.from_record(out)
        if t.last_run.limits:
            t.limits = t.last_run.limits
        t.key_id = t.key_id or t.last_run.key_id
        t.module_sha256 = t.module_sha256 or t.last_run.module_sha256
    return t


def clone(view: TenantView) -> TenantView:
    """A shallow copy (much cheaper than copy.copy): per-snapshot fields are set on it."""
    new = object.__new__(TenantView)
    new.__dict__.update(view.__dict__)
    return new


def _decision_of(line: bytes | None) -> tuple[str, str]:
    """(verdict code, module digest) of a decision line, for --diff."""
    rec = loads(line) if line else None
    if rec is None:
        return "", ""
    d = rec["data"]
    return _str(d.get("code"), 64), _str(d.get("module_sha256"), 64)


def diff_view(
    scanner: AuditScanner,
    tenants: dict[str, TenantView],
    modules: set[str],
    label: str,
    since_counts: list[tuple[str, int]] | None,
) -> DiffView:
    before = scanner.before or {}
    boundary = scanner.boundary_count if scanner.boundary_count is not None else scanner.count
    before_names = {k.decode("utf-8", "replace") for k in before}
    new = sorted(n for n in tenants if n not in before_names)
    removed = sorted(n for n in before_names if n not in modules)
    digests: list[tuple[str, str, str]] = []
    verdicts: list[tuple[str, str, str]] = []
    for key, (dec_before, out_before) in before.items():
        name = key.decode("utf-8", "replace")
        now = tenants.get(name)
        st = scanner.tenants.get(key)
        if now is None or st is None:
            continue
        if st[DECISION] is dec_before and st[OUTCOME] is out_before:
            continue  # nothing about this tenant was logged since
        code_before, digest_before = _decision_of(dec_before)
        if not digest_before and out_before:
            rec = loads(out_before)
            digest_before = _str(rec["data"].get("module_sha256"), 64) if rec else ""
        if digest_before and now.module_sha256 and digest_before != now.module_sha256:
            digests.append((name, digest_before, now.module_sha256))
        if code_before and now.verdict not in ("NOT_VERIFIED", code_before):
            verdicts.append((name, code_before, now.verdict))
    return DiffView(
        label=label,
        boundary=boundary,
        events_since=scanner.count - boundary,
        runs_since=scanner.run_outcomes - scanner.boundary_runs,
        outcomes_since=since_counts or [],
        new_tenants=new[:LIST_CAP],
        removed_tenants=removed[:LIST_CAP],
        changed_digests=sorted(digests)[:LIST_CAP],
        changed_verdicts=sorted(verdicts)[:LIST_CAP],
    )


# -- verification ----------------------------------------------------------------------------


def quick_verify(scanner: AuditScanner, cp: CheckpointView | None) -> VerifyView:
    """What the scan itself established (see :mod:`nightcore.dashboard.scan`)."""
    v = VerifyView(mode="quick", ok=True, entries=scanner.count, at=now_ts())
    covered = 0
    if cp is not None and cp.verified:
        v.checks.append(f"checkpoint {cp.size:,} is signed by the node key")
        if cp.size > scanner.count:
            v.ok, v.code = False, "AUDIT_TRUNCATED"
            v.message = (
                f"the log has {scanner.count:,} lines but checkpoint {cp.size:,} was signed: "
                "lines were removed"
            )
            return v
        root = scanner.root_at(cp.size)
        if root is None:
            v.warnings.append(f"the Merkle root at size {cp.size:,} was not computed")
        elif root.hex() != cp.root:
            v.ok, v.code, v.seq = False, "CHECKPOINT_ROOT_MISMATCH", cp.size
            v.message = (
                f"the log's first {cp.size:,} lines do not have the root signed in checkpoint "
                f"{cp.size:,}: history was rewritten"
            )
            return v
        else:
            covered = cp.size
            v.checks.append(f"Merkle root of lines 0..{cp.size - 1:,} equals the signed root")
    elif cp is not None:
        v.warnings.append("the latest checkpoint's signature could not be checked")
    bad = scanner.checkpoint_mismatch
    if bad is not None:
        v.ok, v.code, v.seq = False, "CHECKPOINT_EVENT_MISMATCH", bad.seq
        v.message = f"checkpoint event at line {bad.seq}: its root is not the log's root"
        return v
    if scanner.chain_error is not None:
        seq, code, message = scanner.chain_error
        v.ok, v.code, v.seq, v.message = False, code, seq, message
        return v
    if scanner.count > covered:
        v.checks.append(
            f"hash chain of lines {covered:,}..{scanner.count - 1:,} (not yet in a checkpoint)"
        )
    if scanner.torn_bytes:
        v.warnings.append(
            f"{scanner.torn_bytes} bytes after the last newline: a write in progress or a torn "
            "tail (the next append moves it aside)"
        )
    v.warnings.append("canonical form not re-checked: 'nightcore audit verify' does everything")
    return v


# -- shaping a snapshot ----------------------------------------------------------------------


def tenant_views(scanner: AuditScanner, modules: set[str]) -> dict[str, TenantView]:
    """Every tenant in the log and every valid package directory, by name. A tenant's view is
    reused (cloned) while its lines in the scanner are unchanged."""
    by_name: dict[str, TenantView] = {}
    cache = scanner.view_cache
    for key, st in scanner.tenants.items():
        name = key.decode("utf-8", "replace")
        hit = cache.get(key)
        if (
            hit is not None
            and hit[0] is st[DECISION]
            and hit[1] is st[OUTCOME]
            and hit[2] == st[RUNS]
        ):
            view = clone(hit[3])
        else:
            view = tenant_view(name, st, True)
            cache[key] = (st[DECISION], st[OUTCOME], st[RUNS], clone(view))
        view.present = name in modules
        by_name[name] = view
    for name in modules:
        if name not in by_name:
            by_name[name] = tenant_view(name, None, True)
    return by_name


def cordon_views(entries: dict[str, Any], by_name: dict[str, TenantView]) -> list[CordonView]:
    """``cordons.json`` entries as rows; marks the tenants they name as cordoned."""
    cordons: list[CordonView] = []
    for tenant, entry in sorted(entries.items()):
        reason = _str(entry.get("reason")) if isinstance(entry, dict) else ""
        cordons.append(CordonView(tenant, reason, _str(entry.get("ts"), 40)))
        t = by_name.get(tenant)
        if t is not None:
            t.cordoned, t.cordon_reason = True, reason
    return cordons


def problems_first(tenants: Sequence[TenantView]) -> list[TenantView]:
    return sorted(tenants, key=lambda t: (not t.attention, t.name))


def verdict_counts(tenants: Sequence[TenantView]) -> dict[str, int]:
    classes = Counter(code_class(t.verdict) for t in tenants)
    return {
        "total": len(tenants),
        "ok": classes["ok"],
        "denied": classes["bad"],
        "not_verified": classes["muted"],
        "cordoned": sum(1 for t in tenants if t.cordoned),
        "failing": sum(1 for t in tenants if code_class(t.last_code) == "bad"),
        "attention": sum(1 for t in tenants if t.attention),
    }


def run_views(lines: Iterable[bytes]) -> list[RunView]:
    recent = []
    for line in lines:
        rec = loads(line)
        if rec is not None:
            recent.append(RunView.from_record(rec))
    return recent


def chart_tenants(recent: Sequence[RunView], n: int = CHART_TENANTS) -> list[str]:
    """The tenants busiest among the recent runs (most recent first on ties)."""
    busy = Counter(r.tenant for r in recent)
    last_seen = {r.tenant: i for i, r in enumerate(recent)}
    return sorted(busy, key=lambda t: (-busy[t], -last_seen[t], t))[:n]


@dataclass
class IndexRows:
    """What the run index answered (raw rows; :func:`runs_view` checks and shapes them)."""

    total: int
    counts: list[tuple[Any, Any]]  # (code, runs)
    series: dict[str, list[tuple[Any, Any, Any, Any]]]  # tenant -> (ts, wall_ms, fuel, code)
    since_counts: list[tuple[Any, Any]] | None  # (code, runs) since the --diff boundary


def runs_view(
    recent: list[RunView],
    run_outcomes: int,
    names: Sequence[str],
    index: IndexRows | None,
    index_error: str | None,
    points: int = CHART_POINTS,
) -> tuple[RunsView, list[tuple[str, int]] | None]:
    """Counts and chart series from the index if there is one, else from the recent runs in
    the audit log; the second value is the outcome counts since the ``--diff`` boundary."""
    note = index_error
    series: dict[str, list[tuple[dt.datetime, float, float, str]]] = {}
    since_counts: list[tuple[str, int]] | None = None
    if index is not None:
        source = "index"
        counts = [(text.clean(c, 40), int(n)) for c, n in index.counts]
        for name in names:
            pts = []
            for ts, wall, fuel, code in index.series.get(name, []):
                t = text.parse_ts(ts)
                if t is not None and isinstance(wall, int | float) and isinstance(fuel, int):
                    pts.append((t, float(wall), float(fuel), str(code)))
            series[name] = pts
        if index.since_counts is not None:
            since_counts = [(text.clean(c, 40), int(n)) for c, n in index.since_counts]
        if index.total != run_outcomes:
            note = (
                f"the run index has {index.total:,} runs and the audit log {run_outcomes:,} "
                "run outcomes (a run in progress, or run 'nightcore state rebuild')"
            )
    else:
        source = f"the last {len(recent)} runs in the audit log"
        counts = sorted(Counter(r.code for r in recent).items(), key=lambda kv: (-kv[1], kv[0]))
        for name in names:
            pts = []
            for r in recent:
                t = text.parse_ts(r.ts)
                if r.tenant == name and t and r.wall_ms is not None and r.fuel_used is not None:
                    pts.append((t, r.wall_ms, float(r.fuel_used), r.code))
            series[name] = pts[-points:]
        if note is None:
            note = "no run index (state/nightcore.db); 'nightcore state rebuild' recreates it"
    view = RunsView(
        recent=recent,
        total=run_outcomes,
        outcome_counts=counts,
        source=source,
        index_total=index.total if index is not None else None,
        index_note=note,
        series=series,
    )
    return view, since_counts


def audit_view(
    scanner: AuditScanner,
    cp: CheckpointView | None,
    cp_error: str | None,
    verify: VerifyView,
) -> AuditView:
    return AuditView(
        entries=scanner.count,
        size_bytes=scanner.size,
        head=scanner.head,
        torn_bytes=scanner.torn_bytes,
        event_counts=sorted(
            ((k.decode("utf-8", "replace"), v) for k, v in scanner.event_counts.items()),
            key=lambda kv: (-kv[1], kv[0]),
        ),
        checkpoint=cp,
        checkpoint_error=cp_error,
        checkpoint_events=scanner.checkpoint_event_count,
        verify=verify,
        recent=event_views(reversed(scanner.events)),
    )


def event_views(lines: Iterable[bytes]) -> list[EventView]:
    return [e for e in (event_view(x) for x in lines) if e]


def invalid_views(dir_names: Sequence[str], denial_lines: Iterable[bytes]) -> list[InvalidView]:
    """Directories under ``modules/`` that are not tenant ids, then denials logged by the
    name's hash only (newest first)."""
    invalid = [
        InvalidView(d, "TENANT_NAME_INVALID", "directory under modules/", "", _sha(d))
        for d in dir_names[:LIST_CAP]
    ]
    for line in denial_lines:
        rec = loads(line)
        if rec is None:
            continue
        d = rec["data"]
        invalid.append(
            InvalidView(
                "",
                _str(d.get("code"), 64),
                _str(d.get("reason")),
                _str(rec.get("ts"), 40),
                _str(d.get("dir_name_sha256"), 64),
            )
        )
    return invalid[: LIST_CAP * 2]


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8", "surrogateescape")).hexdigest()
