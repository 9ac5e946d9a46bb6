"""Audit mirrors: copies of the log and its checkpoints in other places ("two regions").

Configured in ``nightcore.toml``::

    [[audit.mirror]]
    name = "onprem"
    kind = "dir"
    path = "/mnt/audit-mirror"

    [[audit.mirror]]
    name = "s3"
    kind = "s3"
    bucket = "nightcore-audit"
    prefix = "node-1"
    endpoint_url = "http://127.0.0.1:9000"   # optional (S3-compatible stores)
    region = "us-east-1"                      # optional
    object_lock_mode = "COMPLIANCE"           # optional: GOVERNANCE | COMPLIANCE
    retention_days = 365                      # with object_lock_mode

Each mirror has its own cursor (``state/audit/mirrors/<name>.json``: bytes and lines of
``audit.jsonl`` already copied, checkpoints already copied) and receives every line and
checkpoint in order. ``sync`` sends only what is past the cursor, in whole lines, and moves
the cursor only after the copy is durable there. A failing mirror never blocks or loses local
appends: its error is recorded in its cursor file, and the next sync catches up.

A directory mirror has the layout of ``state/audit/`` (``audit.jsonl``, ``checkpoints/``,
``audit.tail``, plus ``node.pub.pem``), so ``nightcore audit verify --source NAME`` verifies
it with the same code. An S3 mirror stores ``<prefix>/lines/<first>-<last>.jsonl`` chunks,
``<prefix>/checkpoints/<size>.note``, ``<prefix>/audit.tail`` and ``<prefix>/node.pub.pem``,
with Object Lock retention headers when configured; ``--source`` downloads it into a temporary
directory in that layout and verifies it there. Then the mirror is judged against the node's
own signed checkpoints and what it acknowledged (:mod:`nightcore.audit.anchor`): a mirror cut
short, stripped of checkpoints or rewritten is tampering; one merely behind is lag.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nightcore.audit.keyhistory import HISTORY_FILE, MAX_HISTORY_BYTES
from nightcore.audit.note import MAX_NOTE_SIZE
from nightcore.canonical import canonical
from nightcore.errors import ConfigError, NightCoreError
from nightcore.fsio import atomic_write, open_regular, read_regular_capped

if TYPE_CHECKING:
    from nightcore.audit.anchor import Acknowledged
    from nightcore.layout import Layout

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
NOTE_NAME = re.compile(r"(0|[1-9][0-9]{0,19})\.note")
MAX_CHUNK_LINES = 10_000
MAX_CURSOR_BYTES = 1 << 20  # a mirror's cursor (state/audit/mirrors/<name>.json)
MAX_PEM_BYTES = 64 * 1024


@dataclass(frozen=True)
class MirrorConfig:
    name: str
    kind: str  # "dir" | "s3"
    path: str = ""
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str = ""
    region: str = "us-east-1"
    object_lock_mode: str = ""
    retention_days: int = 0


_MIRROR_FIELDS = frozenset(
    {
        "name",
        "kind",
        "path",
        "bucket",
        "prefix",
        "endpoint_url",
        "region",
        "object_lock_mode",
        "retention_days",
    }
)


def parse_mirrors(raw: object) -> tuple[MirrorConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("[[audit.mirror]] must be an array of tables")
    out = [_parse_mirror(i, m) for i, m in enumerate(raw)]
    if len({m.name for m in out}) != len(out):
        raise ConfigError("audit mirror names must be unique")
    return tuple(out)


def _parse_mirror(i: int, m: object) -> MirrorConfig:
    """The ``i``-th ``[[audit.mirror]]`` table, checked."""
    if not isinstance(m, dict) or not set(m) <= _MIRROR_FIELDS:
        raise ConfigError(f"audit.mirror[{i}]: unknown or missing fields")
    name, kind = m.get("name"), m.get("kind")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"audit.mirror[{i}].name must match [a-z0-9][a-z0-9_-]{{0,31}}")
    if kind == "dir":
        if not isinstance(m.get("path"), str) or not m["path"]:
            raise ConfigError(f"audit.mirror[{i}]: a dir mirror needs path")
    elif kind == "s3":
        if not isinstance(m.get("bucket"), str) or not m["bucket"]:
            raise ConfigError(f"audit.mirror[{i}]: an s3 mirror needs bucket")
    else:
        raise ConfigError(f"audit.mirror[{i}].kind must be dir or s3")
    mode = m.get("object_lock_mode", "")
    if mode not in ("", "GOVERNANCE", "COMPLIANCE"):
        raise ConfigError(f"audit.mirror[{i}].object_lock_mode: GOVERNANCE or COMPLIANCE")
    days = m.get("retention_days", 0)
    if not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= 36500:
        raise ConfigError(f"audit.mirror[{i}].retention_days must be 0..36500")
    if mode and not days:
        raise ConfigError(f"audit.mirror[{i}]: object_lock_mode needs retention_days")
    for key in ("prefix", "endpoint_url", "region"):
        if key in m and not isinstance(m[key], str):
            raise ConfigError(f"audit.mirror[{i}].{key} must be a string")
    return MirrorConfig(
        name=name,
        kind=kind,
        path=m.get("path", ""),
        bucket=m.get("bucket", ""),
        prefix=m.get("prefix", "").strip("/"),
        endpoint_url=m.get("endpoint_url", ""),
        region=m.get("region", "us-east-1"),
        object_lock_mode=mode,
        retention_days=days,
    )


class Sink(Protocol):
    def put_lines(self, first_seq: int, last_seq: int, data: bytes) -> None: ...
    def put_file(self, name: str, data: bytes) -> None: ...


class DirSink:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put_lines(self, first_seq: int, last_seq: int, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "audit.jsonl"
        # Idempotent on retry: the mirror's own size says which of these lines it already has.
        have = _line_count(log)
        if have > last_seq:
            return
        skip = have - first_seq
        if skip < 0:
            raise NightCoreError(
                f"mirror is missing lines {have}..{first_seq - 1}", code="MIRROR_GAP"
            )
        payload = b"".join(data.splitlines(keepends=True)[skip:])
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)

    def put_file(self, name: str, data: bytes) -> None:
        atomic_write(self.root / name, data)


def _line_count(path: Path) -> int:
    if not path.exists():
        return 0
    with open_regular(path) as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


class S3Sink:
    def __init__(self, cfg: MirrorConfig) -> None:
        import boto3
        from botocore.config import Config

        self.cfg = cfg
        self.client = boto3.client(
            "s3",
            endpoint_url=cfg.endpoint_url or None,
            region_name=cfg.region,
            config=Config(
                connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"}
            ),
        )

    def _key(self, name: str) -> str:
        return f"{self.cfg.prefix}/{name}" if self.cfg.prefix else name

    def _put(self, key: str, data: bytes) -> None:
        extra: dict[str, Any] = {}
        if self.cfg.object_lock_mode:
            extra["ObjectLockMode"] = self.cfg.object_lock_mode
            extra["ObjectLockRetainUntilDate"] = dt.datetime.now(dt.UTC) + dt.timedelta(
                days=self.cfg.retention_days
            )
        self.client.put_object(Bucket=self.cfg.bucket, Key=self._key(key), Body=data, **extra)

    def put_lines(self, first_seq: int, last_seq: int, data: bytes) -> None:
        self._put(f"lines/{first_seq:012d}-{last_seq:012d}.jsonl", data)

    def put_file(self, name: str, data: bytes) -> None:
        self._put(name, data)

    def download(self, dest: Path, ack: Acknowledged) -> list[str]:
        """Rebuild the state/audit layout from the bucket (for verify --source); record in
        ``ack`` what the bucket shows it once held (chunk names, delete markers). Returns
        warnings."""
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = self._key("")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.cfg.bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        warnings = self._deleted(prefix, ack)
        chunks = sorted(k for k in keys if k[len(prefix) :].startswith("lines/"))
        expect = 0
        with (dest / "audit.jsonl").open("wb") as log:
            for key in chunks:
                first, last = _chunk_range(key)
                # The chunk's name is the mirror's own record of what it received.
                ack.claim_lines(last + 1, f"its chunk {key[len(prefix) :]}")
                if first > expect:
                    raise NightCoreError(
                        f"mirror is missing lines {expect}..{first - 1}", code="MIRROR_GAP"
                    )
                body = self._get(key)
                lines = body.splitlines(keepends=True)
                log.write(b"".join(lines[expect - first :]))
                if len(lines) < last - first + 1:
                    break  # a chunk cut short: what follows cannot be placed; ack says why
                expect = max(expect, last + 1)
        (dest / "checkpoints").mkdir(exist_ok=True)
        for key in keys:
            rel = key[len(prefix) :]
            is_note = rel.startswith("checkpoints/") and rel.endswith(".note")
            if is_note or rel in ("audit.tail", "node.pub.pem", HISTORY_FILE):
                (dest / rel).write_bytes(self._get(key))
        return warnings

    def _deleted(self, prefix: str, ack: Acknowledged) -> list[str]:
        """Record chunks and checkpoints hidden behind a delete marker (the bucket held them).

        Needs ``s3:ListBucketVersions``; without it the check is skipped with a warning (the
        node's cursor still anchors the verdict)."""
        from botocore.exceptions import ClientError

        try:
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.cfg.bucket, Prefix=prefix
            )
            markers = [m["Key"] for page in pages for m in page.get("DeleteMarkers", [])]
        except ClientError as exc:
            return [f"cannot list object versions ({exc}); delete markers were not checked"]
        for key in markers:
            rel = key[len(prefix) :]
            if rel.startswith("lines/") and rel.endswith(".jsonl"):
                try:
                    ack.claim_lines(_chunk_range(key)[1] + 1, f"a delete marker over {rel}")
                except ValueError:
                    continue  # not a name this mirror writes: nothing it once held
            elif rel.startswith("checkpoints/") and NOTE_NAME.fullmatch(rel[12:]):
                ack.claim_checkpoints([int(rel[12:-5])], f"a delete marker over {rel}")
        return []

    def _get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.cfg.bucket, Key=key)["Body"].read())


def _chunk_range(key: str) -> tuple[int, int]:
    """(first, last) line of a chunk key ``.../lines/<first>-<last>.jsonl``."""
    first, _, last = Path(key).stem.partition("-")
    if not (first.isdigit() and last.isdigit()):
        raise ValueError(key)
    return int(first), int(last)


def sink_for(layout: Layout, cfg: MirrorConfig) -> DirSink | S3Sink:
    """The sink of one mirror (a relative ``dir`` path is relative to the workspace root)."""
    if cfg.kind == "dir":
        path = Path(cfg.path)
        return DirSink(path if path.is_absolute() else layout.root / path)
    return S3Sink(cfg)


@dataclass
class Cursor:
    offset: int = 0  # bytes of audit.jsonl copied
    lines: int = 0
    checkpoints: list[int] = field(default_factory=list)
    last_error: str = ""
    last_error_at: str = ""
    last_sync_at: str = ""

    def to_bytes(self) -> bytes:
        return canonical(self.__dict__) + b"\n"


def _cursor_path(layout: Layout, name: str) -> Path:
    return layout.mirrors_state_dir / f"{name}.json"


def load_cursor(layout: Layout, name: str) -> Cursor:
    p = _cursor_path(layout, name)
    if not p.exists():
        return Cursor()
    try:
        d = json.loads(read_regular_capped(p, MAX_CURSOR_BYTES))
        return Cursor(**{k: d[k] for k in Cursor().__dict__ if k in d})
    except (ValueError, TypeError, OSError) as exc:
        raise NightCoreError(
            f"mirror cursor {name} is corrupt: {exc}", code="STATE_INVALID"
        ) from None


@dataclass(frozen=True)
class MirrorStatus:
    name: str
    kind: str
    lines: int
    lag: int
    checkpoints: int
    ok: bool
    error: str

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sync_one(layout: Layout, cfg: MirrorConfig) -> MirrorStatus:
    """Copy what is past this mirror's cursor; never raises for the mirror's own failures."""
    cur = load_cursor(layout, cfg.name)
    audit_dir = layout.audit_dir
    log = layout.audit_log
    total_lines = cur.lines
    try:
        sink = sink_for(layout, cfg)
        with open_regular(log) as fh:
            fh.seek(cur.offset)
            while True:
                lines = []
                size = 0
                for _ in range(MAX_CHUNK_LINES):
                    line = fh.readline()
                    if not line.endswith(b"\n"):
                        break  # nothing more, or a line still being written
                    lines.append(line)
                    size += len(line)
                if not lines:
                    break
                sink.put_lines(cur.lines, cur.lines + len(lines) - 1, b"".join(lines))
                cur.offset += size
                cur.lines += len(lines)
                atomic_write(_cursor_path(layout, cfg.name), cur.to_bytes())
                if len(lines) < MAX_CHUNK_LINES:
                    break
        total_lines = cur.lines
        sink.put_file("node.pub.pem", read_regular_capped(layout.node_pub_path, MAX_PEM_BYTES))
        # The node-key history travels with the log: after a rotation the mirror's own check
        # verifies the old key's checkpoints by it (docs/keys.md).
        history = audit_dir / HISTORY_FILE
        if history.exists():
            sink.put_file(HISTORY_FILE, read_regular_capped(history, MAX_HISTORY_BYTES))
        cps = (
            sorted(
                int(p.stem) for p in (audit_dir / "checkpoints").glob("*.note") if p.stem.isdigit()
            )
            if (audit_dir / "checkpoints").is_dir()
            else []
        )
        for size_ in cps:
            if size_ in cur.checkpoints or size_ > cur.lines:
                continue
            sink.put_file(
                f"checkpoints/{size_}.note",
                read_regular_capped(audit_dir / "checkpoints" / f"{size_}.note", MAX_NOTE_SIZE),
            )
            cur.checkpoints.append(size_)
        mirrored = [s for s in cur.checkpoints if s <= cur.lines]
        if mirrored:
            sink.put_file(
                "audit.tail",
                read_regular_capped(
                    audit_dir / "checkpoints" / f"{max(mirrored)}.note", MAX_NOTE_SIZE
                ),
            )
        cur.last_error, cur.last_sync_at = "", _now()
        atomic_write(_cursor_path(layout, cfg.name), cur.to_bytes())
        ok, error = True, ""
    except Exception as exc:  # noqa: BLE001 - a mirror outage must never fail local work
        cur.last_error = f"{type(exc).__name__}: {exc}"[:300]
        cur.last_error_at = _now()
        atomic_write(_cursor_path(layout, cfg.name), cur.to_bytes())
        ok, error = False, cur.last_error
    local_lines = _line_count(log)
    return MirrorStatus(
        cfg.name, cfg.kind, total_lines, local_lines - total_lines, len(cur.checkpoints), ok, error
    )


def mirrors(raw_config: Mapping[str, Any]) -> tuple[MirrorConfig, ...]:
    """The ``[[audit.mirror]]`` list of a parsed ``nightcore.toml`` (``Config.raw``)."""
    audit = raw_config.get("audit", {})
    return parse_mirrors(audit.get("mirror") if isinstance(audit, dict) else None)


def sync_all(layout: Layout, configured: Sequence[MirrorConfig]) -> list[MirrorStatus]:
    return [sync_one(layout, m) for m in configured]


def status(layout: Layout, configured: Sequence[MirrorConfig]) -> list[MirrorStatus]:
    local = _line_count(layout.audit_log)
    out = []
    for m in configured:
        cur = load_cursor(layout, m.name)
        out.append(
            MirrorStatus(
                m.name,
                m.kind,
                cur.lines,
                local - cur.lines,
                len(cur.checkpoints),
                not cur.last_error,
                cur.last_error,
            )
        )
    return out


def verify_source(layout: Layout, configured: Sequence[MirrorConfig], name: str) -> Any:
    """Verify one mirror on its own (its lines, tree and checkpoints, with the node's key), then
    against the node's own signed checkpoints and what the mirror acknowledged
    (:mod:`nightcore.audit.anchor`)."""
    from nightcore.audit.anchor import Acknowledged, anchor_to_node
    from nightcore.audit.verify import verify_log

    cfg = next((m for m in configured if m.name == name), None)
    if cfg is None:
        raise NightCoreError(f"no audit mirror named {name[:40]!r}", code="MIRROR_NOT_FOUND")
    pem = read_regular_capped(layout.node_pub_path, MAX_PEM_BYTES)
    cur = load_cursor(layout, cfg.name)
    ack = Acknowledged()
    ack.claim_lines(cur.lines, f"the node's cursor for mirror {cfg.name}")
    ack.claim_checkpoints(cur.checkpoints, f"the node's cursor for mirror {cfg.name}")
    sink = sink_for(layout, cfg)
    if isinstance(sink, DirSink):
        report = verify_log(sink.root, pem)
        return anchor_to_node(report, sink.root, layout.audit_dir, pem, ack)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nightcore-mirror-") as tmp:
        try:
            warnings = sink.download(Path(tmp), ack)
        except NightCoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as one line with a code
            raise NightCoreError(
                f"cannot read mirror {name}: {type(exc).__name__}: {exc}"[:300],
                code="MIRROR_UNAVAILABLE",
            ) from None
        report = verify_log(Path(tmp), pem)
        report.warnings.extend(warnings)
        return anchor_to_node(report, Path(tmp), layout.audit_dir, pem, ack)
