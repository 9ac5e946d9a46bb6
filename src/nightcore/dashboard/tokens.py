"""Bearer tokens for the live console's mutations (``nightcore serve token create``).

A token is ``nct_<id>_<secret>``: a 12-hex-digit public id and 256 random bits. It is shown
once, when created; ``<workspace>/private/serve-tokens.json`` (mode 0600, in the 0700
``private/`` directory) keeps only its id, the SHA-256 of the whole token, and its creation
and expiry times. A presented token is looked up by id and compared in constant time; an
expired one is refused. Creating and revoking tokens are audit events (with the id, never
the token).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nightcore.canonical import canonical, parse_json
from nightcore.context import NodeContext
from nightcore.errors import NightCoreError, UsageError
from nightcore.fsio import atomic_write, file_lock

TOKEN_FILE = "serve-tokens.json"  # noqa: S105 - a file name
FORMAT = "nightcore-serve-tokens/1"

MAX_TTL = dt.timedelta(days=366)
MAX_TOKENS = 1000
TOKEN_RE = re.compile(r"nct_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_ID_RE = re.compile(r"[0-9a-f]{12}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DURATION_RE = re.compile(r"([1-9][0-9]{0,5})([mhdw])")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class TokenError(NightCoreError):
    """A presented token was refused (``TOKEN_MISSING``, ``TOKEN_INVALID``, ``TOKEN_EXPIRED``)."""

    code = "TOKEN_INVALID"


@dataclass(frozen=True)
class TokenRecord:
    id: str
    sha256: str
    created: str
    expires: str

    def expires_at(self) -> dt.datetime:
        return dt.datetime.strptime(self.expires, _TS_FORMAT).replace(tzinfo=dt.UTC)

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.expires_at()

    def public(self) -> dict[str, str]:
        return {"id": self.id, "created": self.created, "expires": self.expires}


@dataclass(frozen=True)
class NewToken:
    id: str
    token: str  # shown once
    expires: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fmt(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime(_TS_FORMAT)


def parse_expires(value: str, now: dt.datetime | None = None) -> dt.datetime:
    """``30m``, ``12h``, ``7d``, ``2w`` from now, or an ISO 8601 time; at most 366 days ahead."""
    now = now or _now()
    v = value.strip()
    m = _DURATION_RE.fullmatch(v)
    if m:
        when = now + dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    else:
        try:
            when = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(
                "--expires wants a duration (30m, 12h, 7d, 2w) or an ISO 8601 time"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
    if when <= now:
        raise UsageError("--expires must be in the future")
    if when - now > MAX_TTL:
        raise UsageError("--expires may be at most 366 days ahead")
    return when.replace(microsecond=0)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """``private/serve-tokens.json`` of one workspace (re-read when it changes on disk)."""

    def __init__(self, ws: NodeContext) -> None:
        self.ws = ws
        self.path = ws.layout.serve_tokens_path
        self._lock_path = ws.layout.serve_tokens_lock_path
        self._cache: tuple[tuple[int, int, int], dict[str, TokenRecord]] | None = None

    # -- file ----------------------------------------------------------------------------

    def _read(self) -> dict[str, TokenRecord]:
        try:
            # Non-blocking: a FIFO planted there is refused below, not waited on.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise NightCoreError(
                f"cannot read private/{TOKEN_FILE}: {exc.strerror}", code="TOKEN_STORE_INVALID"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
                raise NightCoreError(
                    f"private/{TOKEN_FILE} must be a regular file with mode 0600",
                    code="TOKEN_STORE_INSECURE",
                )
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1]
            data = os.read(fd, 4 * 1024 * 1024 + 1)
        finally:
            os.close(fd)
        records = self._parse(data)
        self._cache = (key, records)
        return records

    def _parse(self, data: bytes) -> dict[str, TokenRecord]:
        def bad(why: str) -> NightCoreError:
            return NightCoreError(f"private/{TOKEN_FILE}: {why}", code="TOKEN_STORE_INVALID")

        try:
            doc = parse_json(data, max_bytes=4 * 1024 * 1024, what=TOKEN_FILE)
        except NightCoreError as exc:
            raise bad(exc.message) from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise bad(f"not a {FORMAT} document")
        items = doc.get("tokens")
        if not isinstance(items, list):
            raise bad("tokens must be a list")
        out: dict[str, TokenRecord] = {}
        for item in items:
            if not isinstance(item, dict) or set(item) != {"id", "sha256", "created", "expires"}:
                raise bad("each token is {id, sha256, created, expires}")
            rec = TokenRecord(**{k: str(v) for k, v in item.items()})
            if not _ID_RE.fullmatch(rec.id) or not _HEX64.fullmatch(rec.sha256):
                raise bad("malformed token id or hash")
            try:
                rec.expires_at()
            except ValueError:
                raise bad(f"token {rec.id}: malformed expiry") from None
            out[rec.id] = rec
        return out

    def _write(self, records: dict[str, TokenRecord]) -> None:
        doc = {
            "format": FORMAT,
            "tokens": [
                {"id": r.id, "sha256": r.sha256, "created": r.created, "expires": r.expires}
                for r in sorted(records.values(), key=lambda r: (r.created, r.id))
            ],
        }
        atomic_write(self.path, canonical(doc) + b"\n", mode=0o600)
        os.chmod(self.path, 0o600)  # whatever the umask was
        self._cache = None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with file_lock(self._lock_path):
            yield

    # -- operations ------------------------------------------------------------------------

    def records(self) -> list[TokenRecord]:
        return sorted(self._read().values(), key=lambda r: (r.created, r.id))

    def create(self, expires: dt.datetime) -> NewToken:
        now = _now()
        with self._locked():
            records = {k: r for k, r in self._read().items() if not r.expired(now)}  # prune
            if len(records) >= MAX_TOKENS:
                raise NightCoreError(
                    f"{MAX_TOKENS} unexpired tokens exist; revoke some first", code="TOKEN_LIMIT"
                )
            token_id = secrets.token_hex(6)
            while token_id in records:
                token_id = secrets.token_hex(6)
            token = f"nct_{token_id}_{secrets.token_urlsafe(32)}"
            rec = TokenRecord(token_id, token_sha256(token), _fmt(now), _fmt(expires))
            # Audited before it exists: an unaudited credential never works.
            self.ws.audit().append("serve_token_created", {"id": token_id, "expires": rec.expires})
            records[token_id] = rec
            self._write(records)
        return NewToken(token_id, token, rec.expires)

    def revoke(self, token_id: str) -> None:
        with self._locked():
            records = dict(self._read())
            if token_id not in records:
                raise NightCoreError(f"no token with id {token_id[:20]!r}", code="TOKEN_NOT_FOUND")
            del records[token_id]
            self._write(records)
            self.ws.audit().append("serve_token_revoked", {"id": token_id})

    def check(self, presented: str | None, now: dt.datetime | None = None) -> TokenRecord:
        """The record of a valid, unexpired token; raises :class:`TokenError` otherwise."""
        if not presented:
            raise TokenError("a bearer token is required", code="TOKEN_MISSING")
        m = TOKEN_RE.fullmatch(presented)
        if m is None:
            raise TokenError("malformed bearer token", code="TOKEN_INVALID")
        rec = self._read().get(m.group(1))
        digest = token_sha256(presented)
        # Compare even when the id is unknown, so timing does not reveal which ids exist.
        expected = rec.sha256 if rec is not None else "0" * 64
        if not hmac.compare_digest(digest, expected) or rec is None:
            raise TokenError("unknown or revoked token", code="TOKEN_INVALID")
        if rec.expired(now or _now()):
            raise TokenError(f"token {rec.id} expired at {rec.expires}", code="TOKEN_EXPIRED")
        return rec


def token_file(ws: NodeContext) -> Path:
    return ws.layout.serve_tokens_path
