"""NET grants, request URLs and the address rule (nightcore.module.netpolicy, docs/net.md),
the manifest and node-policy checks built on them, and the guest-side bounds of the host API."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nightcore.config import parse_config
from nightcore.errors import ConfigError, ManifestError
from nightcore.module.manifest import manifest_from_dict
from nightcore.module.netpolicy import (
    NetGrant,
    NetPolicy,
    NetPolicyError,
    address_allowed,
    covers,
    parse_grant,
    parse_grants,
    parse_request_url,
)
from nightcore.module.verify import policy_violations
from nightcore.policy import Policy

BASE: dict[str, Any] = {"schema": 1, "tenant": "app", "version": "1.0.0"}


def one(text: str) -> NetGrant:
    (g,) = parse_grant(text)
    return g


@pytest.mark.parametrize(
    "text,expected",
    [
        ("https://api.example.com/v1/*", ("https", "api.example.com", 443, "/v1/", True, False)),
        ("http://127.0.0.1:8080/path", ("http", "127.0.0.1", 8080, "/path", False, True)),
        ("HTTP://API.Example.COM/", ("http", "api.example.com", 80, "/", False, False)),
        ("http://localhost:9/*", ("http", "localhost", 9, "/", True, True)),
        ("https://[::1]:8443/a/b", ("https", "::1", 8443, "/a/b", False, True)),
    ],
)
def test_grants_parse(text: str, expected: tuple[Any, ...]) -> None:
    g = one(text)
    assert (g.scheme, g.host, g.port, g.path, g.prefix, g.literal) == expected
    assert parse_grant(str(g)) == (g,)


def test_the_schema_1_host_port_form_grants_both_schemes_every_path() -> None:
    grants = parse_grant("example.org:443")
    assert [(g.scheme, g.host, g.port, g.path, g.prefix) for g in grants] == [
        ("http", "example.org", 443, "/", True),
        ("https", "example.org", 443, "/", True),
    ]


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("*", "any destination"),
        ("*:*", "any destination"),
        ("https://*.example.com/*", "wildcards in the host"),
        ("http://*/x", "wildcards in the host"),
        ("*.example.com:443", "wildcards in the host"),
        ("http://h/x*y", "final '/*'"),
        ("http://h/x*", "final '/*'"),
        ("http://example.com", "needs a path"),
        ("ftp://example.com/", "http or https"),
        ("http://user@example.com/", "user info"),
        ("http://example.com/?q=1", "query or fragment"),
        ("http://example.com/#f", "query or fragment"),
        ("http://example.com:0/", "port"),
        ("http://example.com:70000/", "port"),
        ("http://127.1/", "numeric host"),
        ("http://2130706433/", "numeric host"),
        ("http://exa_mple.com/", "invalid host"),
        ("http://[fe80::1%eth0]/", "IPv6"),
        ("http://h/a/../b", "'..'"),
        ("http://h/a/%2E%2e/b", "'..'"),
        ("no-port", "host:port"),
        ("h:70000", "host:port"),
    ],
)
def test_grants_refused(text: str, fragment: str) -> None:
    with pytest.raises(NetPolicyError) as err:
        parse_grant(text)
    assert fragment in str(err.value)


def test_matching_exact_and_prefix_paths() -> None:
    v1 = one("https://api.example.com/v1/*")
    exact = one("http://127.0.0.1:8080/path")

    def ok(g: NetGrant, url: str) -> bool:
        return g.allows(parse_request_url(url))

    assert ok(v1, "https://api.example.com/v1/")
    assert ok(v1, "https://api.example.com/v1/users?id=3")
    assert ok(v1, "https://API.example.com:443/v1/x")
    assert not ok(v1, "https://api.example.com/v1")
    assert not ok(v1, "https://api.example.com/v1admin")
    assert not ok(v1, "http://api.example.com/v1/x")  # scheme
    assert not ok(v1, "https://api.example.com:8443/v1/x")  # port
    assert not ok(v1, "https://evil.example.com/v1/x")  # host
    assert ok(exact, "http://127.0.0.1:8080/path")
    assert ok(exact, "http://127.0.0.1:8080/path?x=1")
    assert not ok(exact, "http://127.0.0.1:8080/path/")
    assert not ok(exact, "http://localhost:8080/path")  # a name is not the literal


@pytest.mark.parametrize(
    "url",
    [
        "http://h/a\r\nX-Injected: 1",
        "http://h/a b",
        "http://h/a\tb",
        "http://h/\x00",
        "http://h/\x7f",
        "http://h/é",
        "http://user:pw@h/",
        "http://h/#frag",
        "http://h/%zz",
        "http://h/%2e%2e/etc",
        "http://h/a/./b",
        "http://h/a\\b",
        "http://h/?q=%",
        "gopher://h/",
        "//h/",
        "http:///x",
        "http://h/" + "a" * 3000,
    ],
)
def test_request_urls_refused(url: str) -> None:
    with pytest.raises(NetPolicyError):
        parse_request_url(url)


def test_request_target_and_host_header() -> None:
    t = parse_request_url("http://Example.com:8080/a/b?c=d")
    assert (t.host, t.port, t.request_target, t.host_header) == (
        "example.com",
        8080,
        "/a/b?c=d",
        "example.com:8080",
    )
    assert parse_request_url("https://example.com").request_target == "/"
    assert parse_request_url("https://example.com").host_header == "example.com"
    assert parse_request_url("http://[::1]:81/").host_header == "[::1]:81"
    assert parse_request_url("http://127.0.0.1/").ip == "127.0.0.1"


@pytest.mark.parametrize(
    "grant,address,allowed",
    [
        ("https://api.example.com/*", "93.184.216.34", True),
        ("https://api.example.com/*", "127.0.0.1", False),
        ("https://api.example.com/*", "10.1.2.3", False),
        ("https://api.example.com/*", "192.168.0.1", False),
        ("https://api.example.com/*", "169.254.169.254", False),  # cloud metadata
        ("https://api.example.com/*", "100.64.0.1", False),  # shared address space
        ("https://api.example.com/*", "::1", False),
        ("https://api.example.com/*", "::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("https://api.example.com/*", "fe80::1", False),
        ("https://api.example.com/*", "fd00::2", False),
        ("https://api.example.com/*", "2606:2800:220:1::1", True),
        ("http://127.0.0.1:8080/*", "127.0.0.1", True),
        ("http://127.0.0.1:8080/*", "127.0.0.2", False),
        ("http://10.0.0.5/*", "10.0.0.5", True),
        ("http://localhost/*", "127.0.0.1", True),
        ("http://localhost/*", "::1", True),
        ("http://localhost/*", "10.0.0.1", False),
        ("http://0.0.0.0/*", "0.0.0.0", False),  # noqa: S104 - unspecified: never
        ("http://224.0.0.1/*", "224.0.0.1", False),  # multicast: never
    ],
)
def test_address_rule(grant: str, address: str, allowed: bool) -> None:
    ok, why = address_allowed(address, one(grant))
    assert ok is allowed
    assert bool(why) is not allowed


def test_policy_covers() -> None:
    assert covers(one("http://h/*"), one("http://h/a/b"))
    assert covers(one("http://h/a/*"), one("http://h/a/b/*"))
    assert covers(one("http://h/a"), one("http://h/a"))
    assert not covers(one("http://h/a"), one("http://h/a/*"))
    assert not covers(one("http://h/a/*"), one("http://h/b"))
    assert not covers(one("http://h/*"), one("https://h/a"))
    assert not covers(one("http://h/*"), one("http://h:81/a"))


def test_manifest_validation_uses_the_grammar() -> None:
    m = manifest_from_dict({**BASE, "capabilities": {"net": ["https://api.example.com/v1/*"]}})
    assert m.capabilities.net == ("https://api.example.com/v1/*",)
    for bad in ("*", "https://*.example.com/*", "http://h/a\r\n"):
        with pytest.raises(ManifestError) as err:
            manifest_from_dict({**BASE, "capabilities": {"net": [bad]}})
        assert err.value.code == "MANIFEST_INVALID" and "capabilities.net[0]" in err.value.message


def test_node_policy_narrows_manifest_grants() -> None:
    m = manifest_from_dict(
        {**BASE, "capabilities": {"net": ["https://api.example.com/v1/*", "example.org:443"]}}
    )
    assert policy_violations(m, Policy()) == ["network access is not allowed on this node"]
    assert policy_violations(m, Policy(allow_net=True)) == []
    narrow = Policy(allow_net=True, net=NetPolicy(allow=("https://api.example.com/*",)))
    assert policy_violations(m, narrow) == [
        "net grant 'example.org:443' is not covered by the node's policy.net.allow"
    ]
    both = ("https://api.example.com/*", "http://example.org:443/*", "https://example.org:443/*")
    assert policy_violations(m, Policy(allow_net=True, net=NetPolicy(allow=both))) == []


def test_config_policy_net_table() -> None:
    text = b"""
[policy]
allow_net = true
[policy.net]
allow = ["https://api.example.com/*"]
max_request_bytes = 1024
max_response_bytes = 2048
max_requests = 3
"""
    pol = parse_config(text).policy
    assert pol.allow_net and pol.net == NetPolicy(("https://api.example.com/*",), 1024, 2048, 3)
    assert parse_config(b"").policy.net == NetPolicy()
    for bad in (
        b"[policy.net]\nallow = ['*']\n",
        b"[policy.net]\nallow = 'x'\n",
        b"[policy.net]\nmax_requests = -1\n",
        b"[policy.net]\nmax_requests = true\n",
        b"[policy.net]\nproxy = 'x'\n",
        b"[policy]\nnet = 3\n",
    ):
        with pytest.raises(ConfigError):
            parse_config(bad)


# ---- properties ------------------------------------------------------------------------

_SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~%2eEfF", max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parsers_only_ever_raise_their_own_error(text: str) -> None:
    for parse in (parse_grant, parse_request_url):
        with contextlib.suppress(NetPolicyError):
            parse(text)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="abc/%.2eE:@?=&", max_size=40),
    st.sampled_from(["\r", "\n", " ", "\t", "\x00", "\x1b", "\x7f", "\u0085", "\u2028"]),
    st.integers(min_value=0, max_value=40),
)
def test_any_control_or_space_in_a_url_is_refused(tail: str, bad: str, at: int) -> None:
    url = "http://h/" + tail
    at = min(at, len(url))
    with pytest.raises(NetPolicyError):
        parse_request_url(url[:at] + bad + url[at:])


@settings(max_examples=500, deadline=None)
@given(st.lists(_SEGMENT, max_size=6))
def test_a_prefix_grant_never_lets_a_url_climb_out(segments: list[str]) -> None:
    """Whatever the path, a URL a ``/v1/*`` grant allows starts with ``/v1/`` and has no
    ``.``/``..`` segment, even percent-decoded (what a server may normalise away)."""
    from urllib.parse import unquote_to_bytes

    grant = one("http://h/v1/*")
    url = "http://h/v1/" + "/".join(segments)
    try:
        target = parse_request_url(url)
    except NetPolicyError:
        return
    assert grant.allows(target)
    decoded = unquote_to_bytes(target.path)
    assert decoded.startswith(b"/v1/")
    assert not {b".", b".."} & set(decoded.split(b"/"))


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
    ),
)
def test_a_name_grant_never_reaches_a_non_public_address(address: str) -> None:
    ok, _ = address_allowed(address, one("https://api.example.com/*"))
    addr = ipaddress.ip_address(address)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    assert ok == (addr.is_global and not addr.is_multicast and not addr.is_unspecified)


def test_parse_grants_sorts_and_dedups() -> None:
    grants = parse_grants(["http://b/*", "http://a/*", "http://b/*"])
    assert [g.host for g in grants] == ["a", "b"]
