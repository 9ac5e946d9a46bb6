"""NET grants: the destination patterns of ``capabilities.net`` and the URLs they allow.

Pure functions over strings and IP addresses (no sockets, no DNS): the manifest schema, the
node policy and the host API (:mod:`nightcore.sandbox.net`) all use this one definition.
``docs/net.md`` is the reference; in short:

* a grant is ``scheme://host[:port]/path`` with ``scheme`` ``http`` or ``https``, ``host`` a
  DNS name, ``localhost``, an IPv4 literal or a bracketed IPv6 literal (never a wildcard),
  the port defaulting to the scheme's, and a path that is either exact (``/v1/status``) or a
  prefix ending in ``/*`` (``/v1/*``: ``/v1/`` and everything below it). No user info, query
  or fragment. The schema-1 form ``host:port`` is still read: it grants both schemes, every
  path, on that host and port;
* a grant whose host is an IP literal or the name ``localhost`` is *literal*: only a literal
  grant may reach a non-public address (loopback, private, link-local, shared, reserved), and
  a ``localhost`` grant reaches loopback only;
* a request URL must be ASCII without spaces or control characters (no header injection),
  have no user info or fragment, well-formed percent escapes, and no ``.``/``..`` segment even
  once decoded (so ``/v1/%2e%2e/admin`` cannot leave a ``/v1/*`` grant).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

__all__ = [
    "DEFAULT_PORTS",
    "MAX_URL_CHARS",
    "NetGrant",
    "NetPolicy",
    "NetPolicyError",
    "RequestTarget",
    "address_allowed",
    "covers",
    "parse_grant",
    "parse_grants",
    "parse_request_url",
]

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 2048
MAX_GRANT_CHARS = 512
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_LEGACY_RE = re.compile(r"^([A-Za-z0-9.-]{1,253}):([0-9]{1,5})$")
# scheme :// authority (no '@') path? query? -- parsed by hand after this split.
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?$")
# RFC 3986 pchar plus '/' ('%' checked separately).
_PATH_CHARS = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
_QUERY_CHARS = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$")
_PCT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")


class NetPolicyError(ValueError):
    """A grant or a URL that breaks the rules; the message says which (one line)."""


@dataclass(frozen=True, order=True)
class NetGrant:
    """One allowed destination: scheme, host, port and path (exact, or a prefix)."""

    scheme: str
    host: str  # lower-case name, dotted IPv4, or compressed IPv6 (no brackets)
    port: int
    path: str  # starts with "/"; for a prefix grant, without the trailing "*"
    prefix: bool
    literal: bool  # an IP literal or "localhost": may reach non-public addresses

    def allows(self, target: RequestTarget) -> bool:
        if (self.scheme, self.host, self.port) != (target.scheme, target.host, target.port):
            return False
        return target.path.startswith(self.path) if self.prefix else target.path == self.path

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}{'*' if self.prefix else ''}"


@dataclass(frozen=True)
class RequestTarget:
    """A request URL, parsed and checked (see :func:`parse_request_url`)."""

    scheme: str
    host: str
    port: int
    path: str
    query: str  # "" or "?..."
    ip: str  # the host as an address when it is an IP literal, else ""

    @property
    def request_target(self) -> str:
        """What goes on the request line (origin form)."""
        return self.path + self.query

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


@dataclass(frozen=True)
class NetPolicy:
    """The node's NET policy (``[policy.net]``): which destinations a manifest may be granted
    (``allow``: None = any the manifest lists once ``allow_net`` is on) and the per-run caps."""

    allow: tuple[str, ...] | None = None
    max_request_bytes: int = 64 * 1024
    max_response_bytes: int = 1024 * 1024
    max_requests: int = 16

    def to_dict(self) -> dict[str, object]:
        return {
            "allow": None if self.allow is None else list(self.allow),
            "max_request_bytes": self.max_request_bytes,
            "max_response_bytes": self.max_response_bytes,
            "max_requests": self.max_requests,
        }


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _host(raw: str, what: str) -> tuple[str, bool]:
    """(normalised host, is IP literal) of an authority's host part."""
    if not raw:
        raise NetPolicyError(f"{what}: no host")
    if "*" in raw:
        raise NetPolicyError(f"{what}: wildcards in the host are not allowed; list each host")
    if raw.startswith("["):
        if not raw.endswith("]"):
            raise NetPolicyError(f"{what}: unterminated IPv6 literal")
        addr = _ip(raw[1:-1])
        if not isinstance(addr, ipaddress.IPv6Address) or addr.scope_id:
            raise NetPolicyError(f"{what}: invalid IPv6 literal")
        return addr.compressed, True
    host = raw.lower()
    addr = _ip(host)
    if isinstance(addr, ipaddress.IPv4Address):
        return addr.compressed, True
    if len(host) > 253 or not _DNS_RE.fullmatch(host):
        raise NetPolicyError(f"{what}: invalid host name")
    if host.rsplit(".", 1)[-1].isdigit():
        # "127.1", "2130706433": resolvers read these as addresses; say it as a literal.
        raise NetPolicyError(f"{what}: numeric host that is not a dotted IPv4 address")
    return host, False


def _authority(auth: str, scheme: str, what: str) -> tuple[str, int, bool]:
    if "@" in auth:
        raise NetPolicyError(f"{what}: user info in the URL is not allowed")
    if auth.startswith("["):
        end = auth.find("]")
        host_part, rest = auth[: end + 1], auth[end + 1 :]
    else:
        host_part, _, port_part = auth.partition(":")
        rest = f":{port_part}" if ":" in auth else ""
    if rest and not rest.startswith(":"):
        raise NetPolicyError(f"{what}: malformed authority")
    host, is_ip = _host(host_part, what)
    port = DEFAULT_PORTS[scheme]
    if rest:
        if not _PORT_RE.fullmatch(rest[1:]) or not 0 < int(rest[1:]) < 65536:
            raise NetPolicyError(f"{what}: port must be in [1, 65535]")
        port = int(rest[1:])
    return host, port, is_ip


def _check_path(path: str, what: str) -> None:
    if not path.startswith("/"):
        raise NetPolicyError(f"{what}: the path must start with '/'")
    if not _PATH_CHARS.fullmatch(path) or _PCT_RE.search(path):
        raise NetPolicyError(f"{what}: invalid characters or percent escapes in the path")
    decoded = unquote_to_bytes(path)  # bytes: "%80" is no UTF-8, still a path byte
    segments = decoded.split(b"/")
    if any(s in (b".", b"..") for s in segments) or b"\\" in decoded or b"\x00" in decoded:
        raise NetPolicyError(f"{what}: '.' or '..' segments (or NUL, backslash) in the path")


def parse_grant(text: str) -> tuple[NetGrant, ...]:
    """The grants one ``capabilities.net`` entry stands for (two for a legacy ``host:port``)."""
    what = f"net grant {text[:80]!r}"
    if len(text) > MAX_GRANT_CHARS:
        raise NetPolicyError(f"{what}: longer than {MAX_GRANT_CHARS} characters")
    if text.strip() in ("*", "*:*", "*://*", "*://*/*"):
        raise NetPolicyError(f"{what}: '*' (any destination) is not allowed; list each one")
    if "://" not in text:
        m = _LEGACY_RE.fullmatch(text)
        if m is None or not 0 < int(m.group(2)) < 65536:
            if "*" in text:
                raise NetPolicyError(f"{what}: wildcards in the host are not allowed")
            raise NetPolicyError(f"{what}: expected scheme://host[:port]/path or host:port")
        host, is_ip = _host(m.group(1), what)
        port = int(m.group(2))
        return tuple(
            NetGrant(s, host, port, "/", True, is_ip or host == "localhost")
            for s in ("http", "https")
        )
    m = _URL_RE.fullmatch(text)
    if m is None:
        raise NetPolicyError(f"{what}: expected scheme://host[:port]/path")
    scheme = m.group(1).lower()
    if scheme not in DEFAULT_PORTS:
        raise NetPolicyError(f"{what}: scheme must be http or https")
    if m.group(4) is not None or m.group(5) is not None:
        raise NetPolicyError(f"{what}: no query or fragment in a grant")
    host, port, is_ip = _authority(m.group(2), scheme, what)
    path = m.group(3)
    if not path:
        raise NetPolicyError(f"{what}: needs a path ('/' for the root only, '/*' for all)")
    prefix = path.endswith("/*")
    if prefix:
        path = path[:-1]
    if "*" in path:
        raise NetPolicyError(f"{what}: '*' is allowed only as a final '/*' in the path")
    _check_path(path, what)
    return (NetGrant(scheme, host, port, path, prefix, is_ip or host == "localhost"),)


def parse_grants(entries: tuple[str, ...] | list[str]) -> tuple[NetGrant, ...]:
    out: list[NetGrant] = []
    for e in entries:
        out.extend(parse_grant(e))
    return tuple(sorted(set(out)))


def covers(outer: NetGrant, inner: NetGrant) -> bool:
    """Whether every URL ``inner`` allows is also allowed by ``outer`` (policy narrowing)."""
    if (outer.scheme, outer.host, outer.port) != (inner.scheme, inner.host, inner.port):
        return False
    if not outer.prefix:
        return not inner.prefix and inner.path == outer.path
    return inner.path.startswith(outer.path)


def parse_request_url(url: str) -> RequestTarget:
    """A guest's request URL, checked: raises :class:`NetPolicyError` on anything unsafe."""
    if len(url) > MAX_URL_CHARS:
        raise NetPolicyError(f"URL longer than {MAX_URL_CHARS} characters")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise NetPolicyError("space, control character (CR/LF) or non-ASCII in the URL")
    m = _URL_RE.fullmatch(url)
    if m is None:
        raise NetPolicyError("not an absolute http(s) URL")
    scheme = m.group(1).lower()
    if scheme not in DEFAULT_PORTS:
        raise NetPolicyError("scheme must be http or https")
    if m.group(5) is not None:
        raise NetPolicyError("fragment in the URL")
    host, port, is_ip = _authority(m.group(2), scheme, "URL")
    path = m.group(3) or "/"
    _check_path(path, "URL")
    query = m.group(4) or ""
    if not _QUERY_CHARS.fullmatch(query.lstrip("?")) or _PCT_RE.search(query):
        raise NetPolicyError("URL: invalid characters or percent escapes in the query")
    return RequestTarget(scheme, host, port, path, query, host if is_ip else "")


def address_allowed(address: str, grant: NetGrant) -> tuple[bool, str]:
    """(allowed, why not) for connecting to ``address`` under ``grant``.

    Unspecified and multicast addresses are never allowed. A non-public address (anything
    ``ipaddress`` does not call global: loopback, private, link-local, shared, reserved,
    documentation) needs a literal grant: the grant's own IP literal, or loopback for a
    ``localhost`` grant. IPv4-mapped IPv6 addresses are judged as the IPv4 address they map.
    """
    addr = _ip(address.split("%", 1)[0])
    if addr is None:
        return False, f"not an IP address: {address[:60]!r}"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_unspecified or addr.is_multicast:
        return False, f"address {addr} is unspecified or multicast"
    if addr.is_global:
        return True, ""
    if grant.literal:
        if grant.host == "localhost":
            if addr.is_loopback:
                return True, ""
        elif _ip(grant.host) == addr:
            return True, ""
    return False, f"address {addr} is not public and {grant} does not name it literally"
