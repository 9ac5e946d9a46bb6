"""Proof and forensic bundles: export from a workspace, verify offline with only a public key.

Layout of a bundle (a gzip'd tar, members sorted, mtime 0, mode 0644)::

    index.json              {"format", "kind", "created", "node", "checkpoint", "files": [...]}
    index.dsse.json         DSSE over index.json by the node key
    SHA256SUMS              "<sha256>  <path>" for every file in the index
    dashboard.html          the static report (its hash is in the index)      [proof]
    sbom.cdx.json           CycloneDX 1.5 SBOM                                 [proof]
    attestations/<run>.intoto.dsse.json
    audit/lines.jsonl       the audit slice (whole lines, as logged)
    audit/audit.tail        the signed checkpoint every proof is against
    audit/proofs/<seq>.tlog-proof
    keys/node.pub.pem       trust/registry.json  trust/revocations.json
    keys/node-keys.json     the node-key history, when the node key was ever rotated
    runs/<run>/stdout|stderr, module/<sha>.wasm, module/<sha>.dsse.json,
    config/nightcore.toml, host.json                                          [forensic]

``verify`` trusts nothing in the archive but what the given public key signed: it extracts
into a temporary directory refusing absolute paths, ``..``, links, devices and duplicates,
caps member and total sizes (a gzip bomb stops at the cap), then checks the index signature,
every file hash, every attestation signature, every inclusion proof against the checkpoint,
the checkpoint signature, and that attestations and audit lines agree.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nightcore.canonical import canonical, parse_json
from nightcore.errors import NightCoreError
from nightcore.fsio import open_regular, read_input
from nightcore.layout import Layout
from nightcore.trust.envelope import parse_envelope, sign_payload_with, verify_signature
from nightcore.trust.pubkey import PublicKey

if TYPE_CHECKING:
    from nightcore.audit.checkpoint import SignedCheckpoint
    from nightcore.audit.tlog import TransparencyLog

FORMAT = "nightcore-bundle/v1"
INDEX_PAYLOAD_TYPE = "application/vnd.nightcore.bundle-index+json"
MAX_MEMBER_BYTES = 256 * 1024 * 1024
MAX_TOTAL_BYTES = 1024 * 1024 * 1024
MAX_MEMBERS = 100_000
MAX_MEMBER_DEPTH = 16  # path components of a member name (bundles use at most 3)
MAX_MEMBER_NAME = 1024  # characters of a member name
MAX_HEADER_BYTES = 64 * 1024  # one member's tar header blocks, PAX and GNU extensions included
MAX_HEADERS_TOTAL = 2048 * MAX_MEMBERS  # all headers of a bundle together
MAX_TRAILER_BYTES = 64 * 1024  # zero padding after the end-of-archive blocks (a record is 10 KiB)
_RUN_EVENTS = (b'"event":"admit"', b'"event":"run_start"', b'"event":"run_outcome"')


class BundleError(NightCoreError):
    code = "BUNDLE_INVALID"


# -- export --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleSource:
    """What an export reads and signs with, as plain inputs: the evidence layer never opens a
    workspace (the caller composes this, e.g. ``nightcore.cli.commands_evidence``)."""

    layout: Layout  # where runs, content, packages, trust and the config are
    node_id: str  # the node key's id
    node_name: str  # ``[node] name``
    node_pub_pem: bytes  # node.pub.pem as read
    signer: Callable[[], Any]  # returns the node signer (called once, when the index is signed)
    tlog: TransparencyLog  # checkpoints and inclusion proofs of the audit log
    audit_lines: Callable[[], Iterable[bytes]]  # the audit log's lines, in order

    @property
    def node(self) -> dict[str, str]:
        return {"id": self.node_id, "name": self.node_name}


def _ws_file(path: Path) -> bytes:
    """A workspace file an export copies into a bundle: a regular file of at most one
    member's cap (``BUNDLE_TOO_LARGE`` above it; a FIFO, device or directory planted in the
    workspace is ``BUNDLE_INVALID``), never a hang or an endless read."""
    return read_input(
        path,
        MAX_MEMBER_BYTES,
        what="workspace file",
        code="BUNDLE_INVALID",
        too_large="BUNDLE_TOO_LARGE",
        unreadable="IO_ERROR",
        error=BundleError,
    )


class _Writer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def add(self, path: str, data: bytes) -> None:
        if path in self.files:
            raise BundleError(f"duplicate bundle path {path}", code="BUNDLE_DUPLICATE")
        self.files[path] = data

    def write(
        self, out: Path, node: dict[str, str], kind: str, extra: dict[str, Any], signer: Any
    ) -> str:
        entries = [
            {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
            for p, d in sorted(self.files.items())
        ]
        index = {
            "format": FORMAT,
            "kind": kind,
            "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "node": {"id": node["id"], "name": node["name"]},
            "files": entries,
            **extra,
        }
        index_bytes = canonical(index) + b"\n"
        sums = "".join(f"{e['sha256']}  {e['path']}\n" for e in entries).encode()
        members = dict(self.files)
        members["index.json"] = index_bytes
        members["index.dsse.json"] = sign_payload_with(index_bytes, signer, INDEX_PAYLOAD_TYPE)
        members["SHA256SUMS"] = sums
        buf = io.BytesIO()
        with (
            gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name in sorted(members):
                info = tarfile.TarInfo(name)
                info.size = len(members[name])
                info.mode = 0o644
                info.mtime = 0
                tar.addfile(info, io.BytesIO(members[name]))
        data = buf.getvalue()
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(out)
        return hashlib.sha256(data).hexdigest()


def _select_runs(src: BundleSource, since: str | None, runs: list[str] | None) -> list[str]:
    root = src.layout.runs_dir
    found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if runs:
        missing = [r for r in runs if r not in found]
        if missing:
            raise NightCoreError(f"run {missing[0][:80]!r} not found", code="RUN_NOT_FOUND")
        return list(dict.fromkeys(runs))
    if since:
        try:
            t = dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise NightCoreError("--since must be an ISO 8601 time", code="USAGE") from None
        stamp = (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        prefix = stamp.strftime("%Y%m%dT%H%M%S%f")
        return [r for r in found if r[:21] >= prefix]
    return found


def _lines_for(src: BundleSource, run_ids: set[str], tenant: str | None) -> list[bytes]:
    out = []
    for raw in src.audit_lines():
        line = raw.rstrip(b"\n")
        if tenant is not None:
            if f'"tenant":"{tenant}"'.encode() in line:
                out.append(line)
            continue
        if any(m in line for m in _RUN_EVENTS):
            rec = json.loads(line)
            if rec.get("data", {}).get("run_id") in run_ids:
                out.append(line)
    return out


def _add_audit(w: _Writer, src: BundleSource, lines: list[bytes]) -> dict[str, Any]:
    tl = src.tlog
    latest = tl.latest_checkpoint()
    top = max((json.loads(x)["seq"] for x in lines), default=-1)
    if latest is None or latest.size <= top:
        raise NightCoreError(
            "no signed checkpoint covers the exported audit lines yet; run "
            "'nightcore audit checkpoint' first",
            code="CHECKPOINT_MISSING",
        )
    w.add("audit/lines.jsonl", b"".join(x + b"\n" for x in lines))
    w.add("audit/audit.tail", latest.note)
    for line in lines:
        seq = int(json.loads(line)["seq"])
        w.add(f"audit/proofs/{seq}.tlog-proof", tl.prove_at(seq, latest))
    return {"size": latest.size, "root": latest.root.hex()}


def _add_trust(w: _Writer, src: BundleSource) -> None:
    from nightcore.audit.keyhistory import HISTORY_FILE

    w.add("keys/node.pub.pem", src.node_pub_pem)
    history = src.layout.audit_dir / HISTORY_FILE
    if history.exists():
        w.add(f"keys/{HISTORY_FILE}", _ws_file(history))
    for p in (src.layout.registry_path, src.layout.revocations_path):
        if p.exists():
            w.add(f"trust/{p.name}", _ws_file(p))


def export_proof(
    src: BundleSource,
    out: Path,
    *,
    since: str | None = None,
    runs: list[str] | None = None,
    dashboard: Callable[[], bytes] | None = None,
) -> tuple[str, int]:
    """Write a proof bundle for the selected runs; returns (sha256 of the archive, runs).

    ``dashboard`` returns the static report's HTML; it is called after the checkpoint is
    signed, so the report shows it. Without one the bundle has no ``dashboard.html``.
    """
    from nightcore.evidence.attestation import ATTESTATION_FILE
    from nightcore.evidence.sbom import build_sbom, validate_sbom

    selected = _select_runs(src, since, runs)
    w = _Writer()
    for run_id in selected:
        att = src.layout.run_dir(run_id) / ATTESTATION_FILE
        if att.exists():
            w.add(f"attestations/{run_id}.intoto.dsse.json", _ws_file(att))
    lines = _lines_for(src, set(selected), None)
    # A fresh checkpoint so every exported line is covered (appends one audit line).
    src.tlog.checkpoint("proof-export")
    checkpoint = _add_audit(w, src, lines)
    sbom = build_sbom(src.audit_lines())
    validate_sbom(sbom)
    w.add("sbom.cdx.json", sbom.encode())
    extra: dict[str, Any] = {"checkpoint": checkpoint, "runs": selected}
    if dashboard is not None:
        html = dashboard()
        w.add("dashboard.html", html)
        extra["dashboard_sha256"] = hashlib.sha256(html).hexdigest()
    _add_trust(w, src)
    digest = w.write(out, src.node, "proof", extra, src.signer())
    return digest, len(selected)


@dataclass(frozen=True)
class ForensicExport:
    """What ``export_forensics`` wrote."""

    sha256: str
    runs: int
    checkpoint_size: int
    checkpoint_signed: bool  # the latest checkpoint did not cover the slice, so one was signed
    lines_left_out: int  # with no_checkpoint: the tenant's lines after the latest checkpoint


def export_forensics(
    src: BundleSource,
    tenant: str,
    out: Path,
    *,
    run: str | None = None,
    no_checkpoint: bool = False,
) -> ForensicExport:
    """Everything about one tenant (or one of its runs), every audit line with its proof.

    Reads state; the only record it may write is a checkpoint, signed when the latest one does
    not cover every line exported. With ``no_checkpoint`` it writes nothing and cuts the slice
    at the latest checkpoint instead (``lines_left_out`` says how many lines that dropped).
    """
    import os
    import platform

    from nightcore.evidence.attestation import ATTESTATION_FILE
    from nightcore.module.manifest import validate_tenant_id

    try:
        validate_tenant_id(tenant)
    except NightCoreError:
        raise NightCoreError("not a valid tenant id", code="TENANT_NAME_INVALID") from None
    w = _Writer()
    lines = _lines_for(src, set(), tenant)
    if run is not None:
        if run not in {json.loads(x).get("data", {}).get("run_id") for x in lines}:
            raise NightCoreError(f"run {run[:80]!r} is not a run of {tenant}", code="RUN_NOT_FOUND")
        lines = [x for x in lines if json.loads(x).get("data", {}).get("run_id") in (run, None)]
    tl = src.tlog
    latest, lines, signed, left_out = _forensic_checkpoint(tl, lines, no_checkpoint)
    run_ids = sorted({json.loads(x).get("data", {}).get("run_id") for x in lines} - {None})
    for rid in run_ids:
        d = src.layout.run_dir(str(rid))
        for name in ("stdout", "stderr", ATTESTATION_FILE):
            if (d / name).exists():
                w.add(f"runs/{rid}/{name}", _ws_file(d / name))
    pkg = src.layout.tenant_dir(tenant)
    for name in ("module.wasm", "manifest.toml", "module.intoto.dsse.json"):
        p = pkg / name
        if p.is_file() and not p.is_symlink():
            w.add(f"package/{name}", _ws_file(p))
    _add_content(w, src, lines)
    w.add("audit/lines.jsonl", b"".join(x + b"\n" for x in lines))
    w.add("audit/audit.tail", latest.note)
    for line in lines:
        seq = int(json.loads(line)["seq"])
        w.add(f"audit/proofs/{seq}.tlog-proof", tl.prove_at(seq, latest))
    checkpoint = {"size": latest.size, "root": latest.root.hex()}
    cfg = _ws_file(src.layout.config_path).decode("utf-8", errors="replace")
    w.add("config/nightcore.toml", _redact(cfg).encode())
    w.add(
        "host.json",
        canonical(
            {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "pid": os.getpid(),
            }
        ),
    )
    _add_trust(w, src)
    digest = w.write(
        out,
        src.node,
        "forensic",
        {
            "checkpoint": checkpoint,
            "tenant": tenant,
            "runs": run_ids,
            "lines_left_out": left_out,
        },
        src.signer(),
    )
    return ForensicExport(digest, len(run_ids), latest.size, signed, left_out)


def _forensic_checkpoint(
    tl: TransparencyLog, lines: list[bytes], no_checkpoint: bool
) -> tuple[SignedCheckpoint, list[bytes], bool, int]:
    """The checkpoint a forensic export proves its lines against, the lines it covers, whether
    it was signed for this export, and how many lines were left out (see ``no_checkpoint``)."""
    latest = tl.latest_checkpoint()
    top = max((int(json.loads(x)["seq"]) for x in lines), default=-1)
    if latest is not None and latest.size > top:
        return latest, lines, False, 0
    if not no_checkpoint:
        return tl.checkpoint("forensics-export"), lines, True, 0
    if latest is None:
        raise NightCoreError(
            "no signed checkpoint yet, so no audit line can be proven; export without "
            "--no-checkpoint (it signs one) or run 'nightcore audit checkpoint'",
            code="CHECKPOINT_MISSING",
        )
    kept = [x for x in lines if int(json.loads(x)["seq"]) < latest.size]
    return latest, kept, False, len(lines) - len(kept)


def _add_content(w: _Writer, src: BundleSource, lines: list[bytes]) -> None:
    """The stored modules and envelopes the lines name by digest (each once)."""
    content = src.layout.content_dir
    for line in lines:
        d = json.loads(line).get("data", {})
        for sub, key, ext in (
            ("modules", "module_sha256", "wasm"),
            ("envelopes", "envelope_sha256", "dsse.json"),
        ):
            digest = d.get(key)
            p = content / sub / f"{digest}.{ext}"
            if isinstance(digest, str) and p.is_file() and f"content/{sub}/{p.name}" not in w.files:
                w.add(f"content/{sub}/{p.name}", _ws_file(p))


def _redact(config: str) -> str:
    out = []
    for line in config.splitlines():
        key = line.split("=", 1)[0].strip().lower()
        if "=" in line and any(s in key for s in ("secret", "password", "token", "passphrase")):
            out.append(f'{line.split("=", 1)[0]}= "<redacted>"')
        else:
            out.append(line)
    return "\n".join(out) + "\n"


# -- verify --------------------------------------------------------------------------------


@dataclass
class Check:
    check: str
    ok: bool
    detail: str
    code: str = ""


@dataclass
class VerifyResult:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def to_dict(self) -> dict[str, Any]:
        f = self.first_failure
        return {
            "ok": self.ok,
            "code": f.code if f else "OK",
            "checks": [c.__dict__ for c in self.checks],
        }


class _Metered:
    """A forward-only view of the decompressed bundle that refuses to read past a budget.

    ``tarfile`` reads an extended header (PAX ``x``, GNU long name ``L``) whole, in one
    ``read``, before anything can look at it: a few MiB of gzip can ask for gigabytes. Every
    byte tarfile gets goes through here, and :meth:`allow` says how many more it may have
    (a header's worth while a header is parsed, the member's size while it is extracted), so
    an oversized request is refused before a byte is decompressed for it.
    """

    def __init__(self, raw: gzip.GzipFile, budget: int) -> None:
        self._raw = raw
        self._pos = 0
        self._limit = budget

    def allow(self, n: int) -> None:
        self._limit = self._pos + n

    def tell(self) -> int:
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0 or self._pos + n > self._limit:
            raise BundleError(
                "a tar header or member is larger than the bundle caps allow",
                code="BUNDLE_TOO_LARGE",
            )
        data = self._raw.read(n)
        self._pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self._pos:
            raise BundleError("the bundle is read forward only", code="BUNDLE_MALFORMED")
        if pos > self._limit:
            raise BundleError("a tar member skips beyond the caps", code="BUNDLE_TOO_LARGE")
        while self._pos < pos:
            chunk = self._raw.read(min(pos - self._pos, 1 << 16))
            if not chunk:
                break
            self._pos += len(chunk)
        return self._pos

    def seekable(self) -> bool:
        return True


def _member_parts(name: str) -> list[str]:
    parts = name.split("/")
    if (
        name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise BundleError(
            f"unsafe member {name[:80]!r} (links, devices, absolute or '..' paths are refused)",
            code="BUNDLE_UNSAFE_MEMBER",
        )
    if len(parts) > MAX_MEMBER_DEPTH or len(name) > MAX_MEMBER_NAME:
        raise BundleError(
            f"member {name[:80]!r}... is too deep or too long (at most {MAX_MEMBER_DEPTH} "
            f"levels, {MAX_MEMBER_NAME} characters)",
            code="BUNDLE_MALFORMED",
        )
    return parts


def _create(root_fd: int, parts: list[str]) -> int:
    """Create the regular file ``parts`` under ``root_fd`` (directories as needed), relative to
    descriptors, never following a link; returns a write descriptor. No recursion."""
    dir_fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):  # opened below: must be a directory
                os.mkdir(part, 0o700, dir_fd=dir_fd)
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = nxt
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(parts[-1], flags, 0o600, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _extract_one(
    tar: tarfile.TarFile,
    meter: _Metered,
    member: tarfile.TarInfo,
    root_fd: int,
    seen: dict[str, Path],
    total: int,
) -> int:
    """Check one member and write it under ``root_fd``; returns the bytes written."""
    if len(seen) >= MAX_MEMBERS:
        raise BundleError("too many members", code="BUNDLE_TOO_LARGE")
    name = member.name
    parts = _member_parts(name)
    if not member.isreg() or member.type == tarfile.GNUTYPE_SPARSE or member.sparse is not None:
        raise BundleError(
            f"unsafe member {name[:80]!r} (links, devices, absolute or '..' paths are refused)",
            code="BUNDLE_UNSAFE_MEMBER",
        )
    if name in seen:
        raise BundleError(f"duplicate member {name[:80]!r}", code="BUNDLE_DUPLICATE")
    if member.size > MAX_MEMBER_BYTES or total + member.size > MAX_TOTAL_BYTES:
        raise BundleError(f"member {name[:80]!r} is too large", code="BUNDLE_TOO_LARGE")
    meter.allow(member.size)
    src = tar.extractfile(member)
    assert src is not None  # a regular member always has a file object
    written = 0
    with os.fdopen(_create(root_fd, parts), "wb") as fh:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            fh.write(chunk)
    return written


def safe_extract(archive: Path, dest: Path) -> dict[str, Path]:
    """Extract regular files only, refusing anything that could escape or exhaust ``dest``.

    Memory and work are bounded whatever the archive claims: the decompressed stream is
    metered (:class:`_Metered`), a member's header and extended headers may use at most
    ``MAX_HEADER_BYTES`` and all headers together ``MAX_HEADERS_TOTAL``, data at most
    ``MAX_MEMBER_BYTES`` per member and ``MAX_TOTAL_BYTES`` in all; names are at most
    ``MAX_MEMBER_DEPTH`` levels deep. Files are created relative to directory descriptors.
    """
    total = 0
    headers = 0
    seen: dict[str, Path] = {}
    try:
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            with (
                open_regular(archive) as raw,  # a FIFO or a device is no bundle (nor a hang)
                gzip.GzipFile(fileobj=raw, mode="rb") as gz,
            ):
                meter = _Metered(gz, MAX_HEADER_BYTES)
                with tarfile.open(fileobj=meter, mode="r:") as tar:  # type: ignore[call-overload]
                    while True:
                        start = meter.tell()
                        meter.allow(min(MAX_HEADER_BYTES, MAX_HEADERS_TOTAL - headers))
                        member = tar.next()
                        tar.members.clear()  # tarfile keeps every header otherwise
                        if member is None:
                            break
                        # (the first header was read by tarfile.open, under the initial budget)
                        headers += max(meter.tell() - start, 0)
                        total += _extract_one(tar, meter, member, root_fd, seen, total)
                        seen[member.name] = dest.joinpath(*member.name.split("/"))
                # Nothing may follow the archive but its zero padding: bytes appended to a
                # bundle (junk, or another gzip member) would otherwise ride along unverified.
                trailer = gz.read(MAX_TRAILER_BYTES + 1)
                if len(trailer) > MAX_TRAILER_BYTES or trailer.strip(b"\0"):
                    raise BundleError("data after the end of the archive", code="BUNDLE_MALFORMED")
        finally:
            os.close(root_fd)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError, zlib.error) as exc:
        raise BundleError(
            f"not a readable bundle: {type(exc).__name__}: {exc}"[:200], code="BUNDLE_MALFORMED"
        ) from None
    return seen


@dataclass
class _NodeKeys:
    """The node keys a bundle is checked with: the pinned key alone, or the node-key history
    the bundle carries (``keys/node-keys.json``), verified against the pinned key."""

    pinned_pem: bytes
    history_bytes: bytes | None = None
    current: PublicKey | None = None
    keys: list[PublicKey] = field(default_factory=list)
    history: Any = None

    def load(self, files: dict[str, Path]) -> Check:
        from nightcore.audit.keyhistory import HISTORY_FILE, KeyHistory

        name = f"keys/{HISTORY_FILE}"
        if name not in files:
            self.history = KeyHistory.single(self.pinned_pem)
            detail = "one node key (no rotation)"
        else:
            self.history_bytes = _read(files, name)
            self.history = KeyHistory.parse(self.history_bytes, self.pinned_pem)
            detail = f"{len(self.history.keys)} node keys, chain verified from the pinned key"
        self.keys = [PublicKey.from_pem(k.public_pem) for k in reversed(self.history.keys)]
        self.current = self.keys[0]
        return Check("node keys", True, detail)

    def open_attestation(self, data: bytes) -> dict[str, Any]:
        """An attestation signed by a key of the history allowed for its audit line."""
        from nightcore.evidence.attestation import open_attestation

        last: NightCoreError | None = None
        for key in self.keys:
            try:
                stmt = open_attestation(data, key)
            except NightCoreError as exc:
                if exc.code != "ATTESTATION_SIGNATURE_INVALID":
                    raise
                last = exc
                continue
            seq = stmt["predicate"].get("audit_seq")
            if not self.history.signer_allowed(key.keyid, seq if type(seq) is int else None):
                raise NightCoreError(
                    f"attestation signed by node key {key.keyid[:16]}, revoked before its "
                    "audit line",
                    code="NODE_KEY_REVOKED",
                )
            return stmt
        assert last is not None
        raise last


def verify_bundle(archive: Path, node_pub_pem: bytes) -> VerifyResult:
    res = VerifyResult()
    PublicKey.from_pem(node_pub_pem)  # KEY_INVALID before anything is extracted
    node_keys = _NodeKeys(node_pub_pem)
    with tempfile.TemporaryDirectory(prefix="nightcore-verify-") as tmp:
        try:
            files = safe_extract(archive, Path(tmp))
        except BundleError as exc:
            res.checks.append(Check("archive", False, exc.message, exc.code))
            return res
        res.checks.append(Check("archive", True, f"{len(files)} members extracted safely"))
        steps: list[tuple[str, Callable[[], Check]]] = [
            ("node keys", lambda: node_keys.load(files)),
            ("index signature", lambda: _check_index(files, node_keys)),
            ("file hashes", lambda: _check_hashes(files)),
            ("attestations", lambda: _check_attestations(files, node_keys)),
            ("inclusion proofs", lambda: _check_proofs(files, node_keys)),
            ("attestations vs audit", lambda: _check_agreement(files, node_keys)),
        ]
        # Stop at the first failing class: later checks would only repeat it.
        for name, step in steps:
            try:
                out = step()
            except NightCoreError as exc:
                out = Check(name, False, exc.message, exc.code)
            except (KeyError, TypeError, ValueError) as exc:  # malformed JSON shapes
                out = Check(
                    name, False, f"malformed content: {type(exc).__name__}", "BUNDLE_MALFORMED"
                )
            res.checks.append(out)
            if not out.ok:
                break
    return res


def _read(files: dict[str, Path], name: str) -> bytes:
    if name not in files:
        raise BundleError(f"{name} is missing", code="FILE_MISSING")
    # A regular file safe_extract itself created (capped) in its own temporary directory.
    return files[name].read_bytes()


def _index(files: dict[str, Path]) -> dict[str, Any]:
    doc = parse_json(
        _read(files, "index.json"), max_bytes=64 << 20, what="index.json", code="BUNDLE_MALFORMED"
    )
    if (
        not isinstance(doc, dict)
        or doc.get("format") != FORMAT
        or not isinstance(doc.get("files"), list)
    ):
        raise BundleError("index.json is not a Night Core bundle index", code="BUNDLE_MALFORMED")
    return doc


def _check_index(files: dict[str, Path], node_keys: _NodeKeys) -> Check:
    node_key = node_keys.current
    assert node_key is not None
    env = parse_envelope(_read(files, "index.dsse.json"), payload_type=INDEX_PAYLOAD_TYPE)
    if not verify_signature(env, node_key):
        return Check(
            "index signature",
            False,
            "index.dsse.json is not signed by this node key",
            "INDEX_SIGNATURE_INVALID",
        )
    if env.payload != _read(files, "index.json"):
        return Check(
            "index signature",
            False,
            "the signed index differs from index.json",
            "INDEX_SIGNATURE_INVALID",
        )
    _index(files)
    return Check("index signature", True, f"signed by node key {node_key.keyid[:16]}")


def _check_hashes(files: dict[str, Path]) -> Check:
    index = _index(files)
    listed: dict[str, str] = {}
    for e in index["files"]:
        if not isinstance(e, dict) or not isinstance(e.get("path"), str):
            raise BundleError("index entry malformed", code="BUNDLE_MALFORMED")
        listed[e["path"]] = str(e.get("sha256"))
    own = {"index.json", "index.dsse.json", "SHA256SUMS"}
    extra = sorted(set(files) - set(listed) - own)
    if extra:
        return Check("file hashes", False, f"{extra[0]} is not in the index", "FILE_UNEXPECTED")
    for path, want in listed.items():
        got = hashlib.sha256(_read(files, path)).hexdigest()
        if got != want:
            return Check(
                "file hashes", False, f"{path} does not match its index hash", "FILE_HASH_MISMATCH"
            )
    sums = "".join(f"{listed[p]}  {p}\n" for p in sorted(listed)).encode()
    if _read(files, "SHA256SUMS") != sums:
        return Check(
            "file hashes", False, "SHA256SUMS disagrees with the index", "FILE_HASH_MISMATCH"
        )
    dash = index.get("dashboard_sha256")
    if dash and listed.get("dashboard.html") != dash:
        return Check("file hashes", False, "dashboard hash disagrees", "FILE_HASH_MISMATCH")
    return Check("file hashes", True, f"{len(listed)} files match the signed index")


_PROOF_ATTESTATION = re.compile(r"attestations/([^/]+)\.intoto\.dsse\.json")
_RUN_ATTESTATION = re.compile(r"runs/([^/]+)/attestation\.intoto\.dsse\.json")
_CONTENT = re.compile(
    r"content/(?:modules/([0-9a-f]{64})\.wasm|envelopes/([0-9a-f]{64})\.dsse\.json)"
)
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _attestations(files: dict[str, Path], node_keys: _NodeKeys) -> dict[str, dict[str, Any]]:
    """Every attestation in the bundle, opened with the node key: ``attestations/<run>...``
    (proof bundles), ``runs/<run>/attestation...`` (forensic bundles), and anything else under
    ``attestations/`` (which must then be one). Each must name the run its path names."""
    out = {}
    for name in sorted(files):
        m = _PROOF_ATTESTATION.fullmatch(name) or _RUN_ATTESTATION.fullmatch(name)
        if m is None and not name.startswith("attestations/"):
            continue
        try:
            stmt = node_keys.open_attestation(_read(files, name))
        except NightCoreError as exc:
            code = "ATTESTATION_INVALID" if exc.code == "ENVELOPE_MALFORMED" else exc.code
            raise NightCoreError(f"{name}: {exc.message}"[:300], code=code) from None
        if m is None or stmt["predicate"].get("run_id") != m.group(1):
            raise NightCoreError(
                f"{name} is not the attestation of the run its path names",
                code="ATTESTATION_INVALID",
            )
        out[name] = stmt
    return out


def _check_attestations(files: dict[str, Path], node_keys: _NodeKeys) -> Check:
    from nightcore.evidence.attestation import subject_digests

    atts = _attestations(files, node_keys)
    # Content kept by digest (forensic bundles) must still have that digest.
    for name in sorted(files):
        c = _CONTENT.fullmatch(name)
        if c is not None and hashlib.sha256(_read(files, name)).hexdigest() != (
            c.group(1) or c.group(2)
        ):
            return Check(
                "attestations", False, f"{name} does not hash to its name", "CONTENT_TAMPERED"
            )
        if c is None and name.startswith("content/"):
            return Check(
                "attestations", False, f"{name} is not named by its digest", "CONTENT_TAMPERED"
            )
    # Run outputs in the bundle (forensic) must be the ones their attestation signed; an
    # absent stream file is an empty stream (docs/formats.md).
    compared = 0
    for name, stmt in atts.items():
        subjects = subject_digests(stmt)
        m = _RUN_ATTESTATION.fullmatch(name)
        pairs: list[tuple[str, str]] = []
        if m is not None:
            run_dir = f"runs/{m.group(1)}"
            for stream in ("stdout", "stderr"):
                path = f"{run_dir}/{stream}"
                got = (
                    hashlib.sha256(_read(files, path)).hexdigest()
                    if path in files
                    else _EMPTY_SHA256
                )
                pairs.append((path, got))
        module = subjects.get("module.wasm")
        if module is not None and f"content/modules/{module}.wasm" in files:
            compared += 1  # hashed to its name above
        for path, got in pairs:
            if subjects.get(path.rsplit("/", 1)[1]) != got:
                return Check(
                    "attestations",
                    False,
                    f"{path} is not the output {name} signed",
                    "ATTESTATION_SUBJECT_MISMATCH",
                )
            compared += 1
    return Check(
        "attestations",
        True,
        f"{len(atts)} run attestations signed by the node key; "
        f"{compared} bundled files match their subjects",
    )


def _check_proofs(files: dict[str, Path], node_keys: _NodeKeys) -> Check:
    from nightcore.audit.proofs import verify_inclusion_proof

    node_pub_pem, history = node_keys.pinned_pem, node_keys.history_bytes
    tail = node_keys.history.open_checkpoint(_read(files, "audit/audit.tail"))
    lines = [x for x in _read(files, "audit/lines.jsonl").split(b"\n") if x]
    for line in lines:
        seq = json.loads(line)["seq"]
        proof = _read(files, f"audit/proofs/{seq}.tlog-proof")
        cp, _rec = verify_inclusion_proof(proof, line, node_pub_pem, history)
        if cp.note != tail.note:
            return Check(
                "inclusion proofs",
                False,
                f"proof for seq {seq} is against another checkpoint than audit.tail",
                "PROOF_CHECKPOINT_MISMATCH",
            )
    return Check(
        "inclusion proofs", True, f"{len(lines)} audit lines included in checkpoint {tail.size}"
    )


def _check_agreement(files: dict[str, Path], node_keys: _NodeKeys) -> Check:
    from nightcore.evidence.attestation import subject_digests

    outcomes: dict[str, dict[str, Any]] = {}
    for line in _read(files, "audit/lines.jsonl").split(b"\n"):
        if line:
            rec = json.loads(line)
            if rec.get("event") == "run_outcome":
                outcomes[rec["data"]["run_id"]] = rec
    for name, stmt in _attestations(files, node_keys).items():
        p = stmt["predicate"]
        rec = outcomes.get(str(p.get("run_id")))
        subj = subject_digests(stmt)
        if rec is None:
            return Check(
                "attestations vs audit",
                False,
                f"{name}: no run_outcome line",
                "ATTESTATION_AUDIT_MISMATCH",
            )
        d = rec["data"]
        pairs: Iterable[tuple[Any, Any]] = (
            (p.get("audit_seq"), rec["seq"]),
            (p["outcome"]["code"], d["code"]),
            (p.get("fuel_used"), d["fuel_used"]),
            (subj.get("stdout"), d["stdout_sha256"]),
            (subj.get("stderr"), d["stderr_sha256"]),
            (subj.get("module.wasm"), d["module_sha256"]),
        )
        if any(a != b for a, b in pairs):
            return Check(
                "attestations vs audit",
                False,
                f"{name} disagrees with audit line {rec['seq']}",
                "ATTESTATION_AUDIT_MISMATCH",
            )
    return Check("attestations vs audit", True, f"{len(outcomes)} outcomes agree")
