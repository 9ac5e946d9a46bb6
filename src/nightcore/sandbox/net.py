"""The NET capability: the ``nightcore.http_request`` host function and its enforcement.

A guest granted ``capabilities.net`` may import (docs/net.md has the full reference)::

    (import "nightcore" "http_request"
      (func (param $method_ptr i32) (param $method_len i32)
            (param $url_ptr i32) (param $url_len i32)
            (param $body_ptr i32) (param $body_len i32)
            (param $resp_ptr i32) (param $resp_cap i32)
            (param $status_ptr i32) (result i32)))

It returns the number of response-body bytes written at ``resp_ptr`` (``>= 0``) and stores
the HTTP status as a little-endian u32 at ``status_ptr``, or a negative error number
(:data:`ERROR_CODES`). The module is defined on the Linker only for runs with a NET capability: a
tenant without one that imports it fails to link (``INSTANTIATE_ERROR``).

Two halves:

* :class:`NetPerformer` — the host side, one per run: checks the method and URL, matches the
  grants (:mod:`nightcore.module.netpolicy`), resolves the name once, refuses non-public
  addresses unless granted literally, connects to the address it checked (``Host`` header
  and TLS SNI carry the name), caps request and response sizes, bounds the whole exchange by
  the run's remaining wall time, never follows redirects, and keeps the audit records. In
  process it runs on the run's thread; under ``--strongbox`` it runs in the parent, which
  serves the worker's ``net`` frames (the worker has no network).
* :func:`http_request` — the guest side: bounds-checks every pointer and length against the
  guest's memory (``NC_EFAULT``, never a trap or a host crash), reads the method, URL and
  body, asks the run's performer (or, in a strongbox worker, the parent) and writes back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import wasmtime

from nightcore.module.netpolicy import (
    NetGrant,
    NetPolicyError,
    RequestTarget,
    address_allowed,
    parse_grants,
    parse_request_url,
)
from nightcore.sandbox.types import NetAccess, RunConfig

if TYPE_CHECKING:  # http.client (and email) cost ~10 ms at import: only NET runs need them
    import http.client
    import socket

MODULE = "nightcore"
FUNC = "http_request"
USER_AGENT = "nightcore-net/1"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
MAX_METHOD_BYTES = 16
MAX_URL_BYTES = 2048
MAX_AUDITED = 32  # net_request events per run; the rest go into one net_summary event
MAX_REASON_CHARS = 200
READ_CHUNK = 64 * 1024

# Stable error numbers returned to the guest (docs/net.md) and the audit code of each.
NC_EFAULT = -1
NC_EINVAL = -2
NC_EACCES = -3
NC_EADDR = -4
NC_ERESOLVE = -5
NC_ECONNECT = -6
NC_ETIMEDOUT = -7
NC_E2BIG = -8
NC_ETOOBIG = -9
NC_ELIMIT = -10
NC_EPROTO = -11
NC_ENOTSUP = -12
NC_EIO = -13
ERROR_CODES: dict[int, str] = {
    NC_EFAULT: "NET_FAULT",
    NC_EINVAL: "NET_URL_INVALID",
    NC_EACCES: "NET_DENIED",
    NC_EADDR: "NET_ADDRESS_DENIED",
    NC_ERESOLVE: "NET_RESOLVE_FAILED",
    NC_ECONNECT: "NET_CONNECT_FAILED",
    NC_ETIMEDOUT: "NET_TIMEOUT",
    NC_E2BIG: "NET_REQUEST_TOO_LARGE",
    NC_ETOOBIG: "NET_RESPONSE_TOO_LARGE",
    NC_ELIMIT: "NET_LIMIT",
    NC_EPROTO: "NET_PROTOCOL",
    NC_ENOTSUP: "NET_UNSUPPORTED",
    NC_EIO: "NET_HOST_ERROR",
}

Resolver = Callable[[str, int, float], list[str]]


def system_resolve(host: str, port: int, timeout: float) -> list[str]:
    """The addresses of ``host`` (system resolver), bounded by ``timeout`` seconds.

    ``getaddrinfo`` has no timeout of its own: it runs on a daemon thread that is abandoned
    when the time is up (the run gets ``NC_ETIMEDOUT``)."""
    box: list[list[str]] = []
    errors: list[OSError] = []

    def work() -> None:
        import socket

        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            box.append(list(dict.fromkeys(str(info[4][0]) for info in infos)))
        except OSError as exc:
            errors.append(exc)

    t = threading.Thread(target=work, name="nightcore-net-resolve", daemon=True)
    t.start()
    t.join(max(0.0, timeout))
    if box:
        return box[0]
    if errors:
        raise errors[0]
    raise TimeoutError("name resolution timed out")


# The resolver every performer uses unless given one. Tests replace it (monkeypatch) to make
# a name resolve to an address of their choice without editing /etc/hosts; nothing else does.
resolve: Resolver = system_resolve


@dataclass
class Outcome:
    """What one request gives the guest: ``err`` 0 or a negative NC_* number."""

    err: int
    status: int = 0
    body: bytes = b""


class _Refused(Exception):
    def __init__(self, err: int, reason: str, status: int = 0, received: int = 0) -> None:
        super().__init__(reason)
        self.err = err
        self.reason = reason
        self.status = status
        self.received = received


def _escape(data: bytes, limit: int) -> str:
    """Untrusted bytes as printable ASCII for the audit log (controls as \\xNN), bounded."""
    out = []
    for b in data[:limit]:
        out.append(chr(b) if 0x20 < b < 0x7F and b != 0x5C else f"\\x{b:02x}")
    text = "".join(out)
    return text + ("..." if len(data) > limit else "")


@dataclass
class NetPerformer:
    """The host side of one run's NET capability (see the module docstring)."""

    access: NetAccess
    deadline: float  # time.monotonic() at which the run's wall-clock limit ends
    resolver: Resolver | None = None
    grants: tuple[NetGrant, ...] = ()
    requests: int = 0
    refused: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.grants = parse_grants(self.access.grants)

    # -- one request ---------------------------------------------------------------------

    @property
    def body_cap(self) -> int:
        return self.access.max_request_bytes

    def request(
        self,
        method: bytes,
        url: bytes,
        body: bytes,
        resp_cap: int,
        fault: str = "",
        body_len: int | None = None,
    ) -> Outcome:
        """Check and perform one request; never raises. ``fault`` reports a guest-side
        refusal (bad pointer) so it is counted and audited here like any other;
        ``body_len`` is the guest's body length when the body was too large to copy."""
        self.requests += 1
        size = len(body) if body_len is None else max(body_len, len(body))
        record: dict[str, Any] = {
            "method": _escape(method, MAX_METHOD_BYTES),
            "url": _escape(url, 300),
            "address": "",
            "status": None,
            "request_bytes": size,
            "response_bytes": 0,
        }
        try:
            if self.requests > self.access.max_requests:
                raise _Refused(
                    NC_ELIMIT, f"more than {self.access.max_requests} requests in this run"
                )
            if fault:
                raise _Refused(NC_EFAULT, fault)
            if size > self.access.max_request_bytes:
                raise _Refused(
                    NC_E2BIG,
                    f"request body of {size} bytes exceeds the node's "
                    f"{self.access.max_request_bytes}",
                )
            out = self._perform(method, url, body, resp_cap, record)
        except _Refused as r:
            self.refused += 1
            record.update(
                code=ERROR_CODES[r.err],
                errno=r.err,
                reason=r.reason[:MAX_REASON_CHARS],
                status=r.status or None,
                response_bytes=r.received,
            )
            self.response_bytes += r.received
            self._keep(record)
            return Outcome(r.err, r.status)
        except Exception as exc:  # noqa: BLE001 - a host bug is this request's NC_EIO, audited
            self.refused += 1
            record.update(
                code="NET_HOST_ERROR",
                errno=NC_EIO,
                reason=f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS],
            )
            self._keep(record)
            return Outcome(NC_EIO)
        self.request_bytes += len(body)
        self.response_bytes += len(out.body)
        record.update(code="OK", errno=0, reason="", status=out.status)
        record["response_bytes"] = len(out.body)
        self._keep(record)
        return out

    def _keep(self, record: dict[str, Any]) -> None:
        if len(self.records) < MAX_AUDITED:
            self.records.append(record)

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Refused(NC_ETIMEDOUT, "the run's wall-clock limit is used up")
        return left

    def _perform(
        self, method_b: bytes, url_b: bytes, body: bytes, resp_cap: int, record: dict[str, Any]
    ) -> Outcome:
        try:
            method = method_b.decode("ascii")
        except UnicodeDecodeError:
            method = ""
        if method not in METHODS:
            raise _Refused(NC_EINVAL, f"method must be one of {', '.join(sorted(METHODS))}")
        try:
            target = parse_request_url(url_b.decode("ascii"))
        except UnicodeDecodeError:
            raise _Refused(NC_EINVAL, "non-ASCII byte in the URL") from None
        except NetPolicyError as exc:
            raise _Refused(NC_EINVAL, str(exc)) from None
        grant = next((g for g in self.grants if g.allows(target)), None)
        if grant is None:
            raise _Refused(NC_EACCES, "no granted destination matches the URL")
        addresses = self._addresses(target, grant)
        sock = self._connect(addresses, target.port, record)
        cap = max(0, min(resp_cap, self.access.max_response_bytes))
        status, data = self._exchange(target, sock, method, body, cap)
        return Outcome(len(data), status, data)

    def _addresses(self, target: RequestTarget, grant: NetGrant) -> list[str]:
        """The addresses to connect to: the literal, or the name resolved once, every address
        it resolves to checked (one refused address refuses the request)."""
        if target.ip:
            addresses = [target.ip]
        else:
            resolver = self.resolver or resolve
            try:
                addresses = resolver(target.host, target.port, self._remaining())
            except _Refused:
                raise
            except TimeoutError:
                raise _Refused(NC_ETIMEDOUT, "name resolution timed out") from None
            except OSError as exc:
                raise _Refused(NC_ERESOLVE, f"cannot resolve the host: {exc}") from None
            if not addresses:
                raise _Refused(NC_ERESOLVE, "the host resolves to no address")
        for address in addresses:
            ok, why = address_allowed(address, grant)
            if not ok:
                raise _Refused(NC_EADDR, why)
        return addresses

    def _connect(self, addresses: list[str], port: int, record: dict[str, Any]) -> socket.socket:
        """A connection to the first checked address that accepts one (in resolver order)."""
        import socket

        failure = ""
        for address in addresses:
            try:
                sock = socket.create_connection((address, port), timeout=self._remaining())
            except TimeoutError:
                raise _Refused(NC_ETIMEDOUT, "connect timed out") from None
            except OSError as exc:
                failure = f"connect to {address}: {exc.strerror or exc}"
                continue
            record["address"] = address
            return sock
        raise _Refused(NC_ECONNECT, failure)

    def _exchange(
        self, target: RequestTarget, sock: socket.socket, method: str, body: bytes, cap: int
    ) -> tuple[int, bytes]:
        """One HTTP/1.1 exchange on ``sock``; the whole of it within the run's wall time (a
        timer shuts the socket at the deadline, every blocking call also has the remaining
        time as its timeout)."""
        import http.client
        import ssl

        try:
            left = self._remaining()
        except _Refused:
            sock.close()
            raise
        current = [sock]  # what the timer shuts: the TLS socket once it wraps the plain one
        timer = threading.Timer(left, lambda: _shutdown(current[0]))
        timer.daemon = True
        timer.start()
        conn: http.client.HTTPConnection | None = None
        try:
            if target.scheme == "https":
                ctx = ssl.create_default_context()
                try:
                    sock = current[0] = ctx.wrap_socket(sock, server_hostname=target.host)
                except ssl.SSLError as exc:
                    raise _Refused(NC_ECONNECT, f"TLS: {exc.reason or exc}") from None
            conn = http.client.HTTPConnection(target.host, target.port)
            conn.sock = sock
            sock.settimeout(self._remaining())
            conn.putrequest(
                method, target.request_target, skip_host=True, skip_accept_encoding=True
            )
            conn.putheader("Host", target.host_header)
            conn.putheader("User-Agent", USER_AGENT)
            conn.putheader("Accept-Encoding", "identity")
            conn.putheader("Connection", "close")
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            sock.settimeout(self._remaining())
            resp = conn.getresponse()
            return resp.status, self._read_body(resp, sock, method, cap)
        except _Refused:
            raise
        except TimeoutError:
            raise _Refused(NC_ETIMEDOUT, "the run's wall-clock limit ran out mid-request") from None
        except (http.client.HTTPException, ValueError) as exc:
            if time.monotonic() >= self.deadline:
                raise _Refused(NC_ETIMEDOUT, "the run's wall-clock limit ran out") from None
            raise _Refused(NC_EPROTO, f"malformed HTTP response: {type(exc).__name__}") from None
        except OSError as exc:
            if time.monotonic() >= self.deadline:
                raise _Refused(NC_ETIMEDOUT, "the run's wall-clock limit ran out") from None
            raise _Refused(NC_ECONNECT, f"connection failed: {exc.strerror or exc}") from None
        finally:
            timer.cancel()
            if conn is not None:
                conn.close()
            sock.close()

    def _read_body(
        self, resp: http.client.HTTPResponse, sock: socket.socket, method: str, cap: int
    ) -> bytes:
        status = resp.status
        if method == "HEAD":
            return b""
        length = resp.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > cap:
            raise _Refused(
                NC_ETOOBIG,
                f"response of {int(length)} bytes exceeds the cap of {cap} bytes",
                status=status,
            )
        chunks: list[bytes] = []
        got = 0
        while True:
            sock.settimeout(self._remaining())
            chunk = resp.read1(min(READ_CHUNK, cap + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            if got > cap:
                raise _Refused(
                    NC_ETOOBIG,
                    f"response exceeds the cap of {cap} bytes",
                    status=status,
                    received=got,
                )
        return b"".join(chunks)

    # -- audit -------------------------------------------------------------------------

    def audit_events(self, run_id: str) -> list[tuple[str, dict[str, Any]]]:
        """``net_request`` per request (at most MAX_AUDITED), then one ``net_summary`` when
        some were not itemised."""
        out: list[tuple[str, dict[str, Any]]] = [
            ("net_request", {"run_id": run_id, **r}) for r in self.records
        ]
        if self.requests > len(self.records):
            out.append(
                (
                    "net_summary",
                    {
                        "run_id": run_id,
                        "requests": self.requests,
                        "refused": self.refused,
                        "not_itemised": self.requests - len(self.records),
                        "request_bytes": self.request_bytes,
                        "response_bytes": self.response_bytes,
                    },
                )
            )
        return out


def _shutdown(sock: socket.socket) -> None:
    import socket

    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return  # already closed: the exchange is over


# --------------------------------------------------------------------------------------
# The guest side


class Transport(Protocol):
    """Who performs a guest's requests: a :class:`NetPerformer` in process, the strongbox
    worker's link to its parent otherwise."""

    @property
    def body_cap(self) -> int: ...

    def request(
        self,
        method: bytes,
        url: bytes,
        body: bytes,
        resp_cap: int,
        fault: str = "",
        body_len: int | None = None,
    ) -> Outcome: ...


_tls = threading.local()


def activate(transport: Transport, charge: Callable[[float], None] | None = None) -> None:
    """The NET transport of the run about to execute on this thread; ``charge(seconds)``
    counts the time each request took against the run's wall-clock limit."""
    _tls.net = transport
    _tls.charge = charge


def deactivate() -> None:
    _tls.net = None
    _tls.charge = None


# Set in a strongbox worker only: makes the transport that forwards a run's requests to the
# parent (which performs and audits them). None: requests are performed in this process.
remote_transport: Callable[[RunConfig, float], Transport] | None = None


def start(
    config: RunConfig, deadline: float, charge: Callable[[float], None] | None = None
) -> NetPerformer | None:
    """Activate the NET transport of a run on this thread (a no-op without a capability).
    Returns the in-process performer, whose audit events the caller emits after the run."""
    if config.net is None:
        deactivate()
        return None
    if remote_transport is not None:
        activate(remote_transport(config, deadline), charge)
        return None
    performer = NetPerformer(config.net, deadline)
    activate(performer, charge)
    return performer


def _u32(value: int) -> int:
    return value & 0xFFFF_FFFF


def http_request(
    caller: wasmtime.Caller,
    method_ptr: int,
    method_len: int,
    url_ptr: int,
    url_len: int,
    body_ptr: int,
    body_len: int,
    resp_ptr: int,
    resp_cap: int,
    status_ptr: int,
) -> int:
    # Host functions must never raise (wasmtime-py parks exceptions in a process-global
    # slot, which concurrent runs would race on): every failure is an error number.
    try:
        transport: Transport | None = getattr(_tls, "net", None)
        if transport is None:
            return NC_ENOTSUP
        mem = caller.get("memory")
        if not isinstance(mem, wasmtime.Memory):
            return transport.request(b"", b"", b"", 0, "the module exports no memory").err
        size = mem.data_len(caller)
        spans = {
            "method": (_u32(method_ptr), _u32(method_len), MAX_METHOD_BYTES),
            "url": (_u32(url_ptr), _u32(url_len), MAX_URL_BYTES),
            "body": (_u32(body_ptr), _u32(body_len), None),
            "response buffer": (_u32(resp_ptr), _u32(resp_cap), None),
            "status": (_u32(status_ptr), 4, None),
        }
        for name, (ptr, length, most) in spans.items():
            if ptr + length > size:
                fault = f"{name} pointer/length out of bounds ({ptr}+{length} > {size})"
                return transport.request(b"", b"", b"", 0, fault).err
            if most is not None and length > most:
                fault = f"{name} longer than {most} bytes"
                return transport.request(b"", b"", b"", 0, fault).err
        m_ptr, m_len, _ = spans["method"]
        u_ptr, u_len, _ = spans["url"]
        b_ptr, b_len, _ = spans["body"]
        r_ptr, r_cap, _ = spans["response buffer"]
        method = bytes(mem.read(caller, m_ptr, m_ptr + m_len))
        url = bytes(mem.read(caller, u_ptr, u_ptr + u_len))
        # A body over the node's cap is refused from its length alone (never copied).
        body = bytes(mem.read(caller, b_ptr, b_ptr + b_len)) if b_len <= transport.body_cap else b""
        began = time.monotonic()
        out = transport.request(method, url, body, r_cap, body_len=b_len)
        charge = getattr(_tls, "charge", None)
        if charge is not None:
            charge(time.monotonic() - began)
        mem.write(caller, _u32(out.status).to_bytes(4, "little"), spans["status"][0])
        if out.err < 0:
            return out.err
        data = out.body[:r_cap]
        if data:
            mem.write(caller, data, r_ptr)
        return len(data)
    except Exception:  # noqa: BLE001 - see above: an error number, never a trap
        return NC_EIO


def define(linker: wasmtime.Linker) -> None:
    """Define ``nightcore.http_request`` in ``linker`` (only linkers of NET runs)."""
    i32 = wasmtime.ValType.i32()
    linker.define_func(
        MODULE, FUNC, wasmtime.FuncType([i32] * 9, [i32]), http_request, access_caller=True
    )


# --------------------------------------------------------------------------------------
# Under --strongbox: the parent's side of the worker's `net` frames (docs/net.md)

MAX_FAULT_CHARS = 400


def frame_blob_cap(access: NetAccess) -> int:
    """The largest blob a worker's ``net`` frame may carry: method + URL + body."""
    return MAX_METHOD_BYTES + MAX_URL_BYTES + access.max_request_bytes


def request_frame(
    seq: int,
    method: bytes,
    url: bytes,
    body: bytes,
    body_len: int,
    resp_cap: int,
    fault: str,
    deadline: float,
) -> tuple[dict[str, Any], bytes]:
    """The worker's ``net`` frame for one guest call (``deadline``: the run's, in the
    worker's monotonic clock; sent as the milliseconds left)."""
    remaining = max(0.0, deadline - time.monotonic())
    header = {
        "op": "net",
        "seq": seq,
        "remaining_ms": min(int(remaining * 1000), 2**40),
        "method_len": len(method),
        "url_len": len(url),
        "body_len": body_len,
        "resp_cap": resp_cap,
        "fault": fault[:MAX_FAULT_CHARS],
    }
    return header, method + url + body


def _int(header: dict[str, Any], name: str, most: int) -> int:
    value = header.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most:
        raise ValueError(f"net frame: {name} missing or out of range")
    return value


def serve_frame(
    performer: NetPerformer, header: dict[str, Any], blob: bytes, seq: int, hard_deadline: float
) -> tuple[dict[str, Any], bytes]:
    """Perform one request a strongbox worker forwarded; the reply frame. Everything in the
    frame is untrusted: a frame that breaks the format raises ``ValueError`` (the caller
    kills the worker). The request's deadline is the wall time the worker says its run has
    left, never later than ``hard_deadline`` (the parent's own deadline for the run)."""
    fields = {"op", "seq", "remaining_ms", "method_len", "url_len", "body_len", "resp_cap", "fault"}
    if set(header) != fields or header["seq"] != seq:
        raise ValueError("net frame: unexpected fields or sequence number")
    m = _int(header, "method_len", MAX_METHOD_BYTES)
    u = _int(header, "url_len", MAX_URL_BYTES)
    body_len = _int(header, "body_len", 0xFFFF_FFFF)
    resp_cap = _int(header, "resp_cap", 0xFFFF_FFFF)
    remaining_ms = _int(header, "remaining_ms", 2**40)
    performer.deadline = min(hard_deadline, time.monotonic() + remaining_ms / 1000.0)
    fault = header["fault"]
    if not isinstance(fault, str) or len(fault) > MAX_FAULT_CHARS:
        raise ValueError("net frame: bad fault")
    copied = body_len if body_len <= performer.body_cap else 0
    if len(blob) != m + u + copied:
        raise ValueError("net frame: blob length does not match")
    out = performer.request(
        blob[:m], blob[m : m + u], blob[m + u :], resp_cap, fault, body_len=body_len
    )
    reply = {"op": "net_reply", "seq": seq, "err": out.err, "status": out.status}
    return reply, out.body[:resp_cap]
