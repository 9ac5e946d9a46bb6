"""Pure trust cores: Ed25519 against Wycheproof, envelopes, canonical JSON, manifests."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nightcore.canonical import canonical, parse_json
from nightcore.errors import ManifestError, NightCoreError, TrustError
from nightcore.module.manifest import manifest_from_dict, parse_manifest_toml
from nightcore.trust.envelope import ParsedEnvelope, RawSignature, parse_envelope, verify_signature
from nightcore.trust.keys import public_key_from_pem

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"


def _wycheproof() -> list[tuple[str, dict[str, Any]]]:
    path = VECTORS / "wycheproof_ed25519_test.json"
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    return [(g["publicKeyPem"], t) for g in doc["testGroups"] for t in g["tests"]]


WYCHEPROOF = _wycheproof()


@pytest.mark.skipif(
    not WYCHEPROOF,
    reason="../shared/vectors is absent (checkout outside "
    "the workplace): Wycheproof vectors not available",
)
def test_ed25519_verification_agrees_with_every_wycheproof_vector() -> None:
    """Our signature check (securesystemslib over DSSE PAE inputs) on raw messages."""
    from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
    from securesystemslib.signer import Signature

    assert len(WYCHEPROOF) == 151
    for pem, case in WYCHEPROOF:
        key = public_key_from_pem(pem.encode())
        msg = bytes.fromhex(case["msg"])
        try:
            key.verify_signature(Signature(key.keyid, case["sig"]), msg)
            accepted = True
        except (UnverifiedSignatureError, VerificationError):
            accepted = False
        assert accepted == (case["result"] == "valid"), case["tcId"]


def test_envelope_signature_check_uses_pae(tmp_path: Path) -> None:
    from nightcore import api
    from nightcore.trust.envelope import sign_payload
    from nightcore.trust.keys import load_signer

    k = api.keygen("k", tmp_path, b"test-passphrase-not-secret")
    signer = load_signer(str(k.private_path))
    raw = sign_payload(b'{"a":1}', [signer])
    env = parse_envelope(raw)
    assert verify_signature(env, signer.public_key)  # type: ignore[arg-type]
    forged = ParsedEnvelope("application/other", env.payload, env.signatures)
    assert not verify_signature(forged, signer.public_key)  # type: ignore[arg-type]
    bad = ParsedEnvelope(
        env.payload_type, env.payload, (RawSignature(env.signatures[0].keyid, b"\x00" * 64),)
    )
    assert not verify_signature(bad, signer.public_key)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "doc",
    [
        b'{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[]}',
        b'{"payload":"e30","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AA=="}]}',
        b'{"payload":"e30=","payloadType":"application/vnd.in-toto+json",'
        b'"signatures":[{"sig":"AA==","extra":1}]}',
        b'{"payload":"e30=","payload":"e30=","payloadType":"application/vnd.in-toto+json",'
        b'"signatures":[{"sig":"AA=="}]}',
        b'{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AA=="}],'
        b'"more":1}',
        b"\xff\xfe",
        b"[" * 100000,
    ],
)
def test_envelope_parser_is_strict(doc: bytes) -> None:
    with pytest.raises(TrustError) as err:
        parse_envelope(doc)
    assert err.value.code == "ENVELOPE_MALFORMED"


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_envelope_parser_never_crashes(data: bytes) -> None:
    try:
        parse_envelope(data)
    except TrustError as exc:
        assert exc.code == "ENVELOPE_MALFORMED"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
@settings(max_examples=200, deadline=None)
def test_canonical_json_round_trips(value: Any) -> None:
    data = canonical(value)
    assert parse_json(data, max_bytes=1 << 20, what="x") == value
    assert canonical(parse_json(data, max_bytes=1 << 20, what="x")) == data


@pytest.mark.parametrize("doc", [b'{"a":1,"a":2}', b'{"a":NaN}', b'{"a":Infinity}', b"\xc3("])
def test_strict_json_refuses(doc: bytes) -> None:
    with pytest.raises(NightCoreError):
        parse_json(doc, max_bytes=100, what="x")


BASE = {"schema": 1, "tenant": "t", "version": "1"}


@pytest.mark.parametrize(
    "patch,fragment",
    [
        ({"tenant": "../etc"}, "tenant"),
        ({"tenant": "UPPER"}, "tenant"),
        ({"limits": {"fuel": True}}, "boolean"),
        ({"limits": {"wall_ms": 0}}, "outside"),
        ({"limits": {"memory_bytes": 2**40}}, "outside"),
        ({"limits": {"cpu": 1}}, "unknown"),
        ({"capabilities": {"fs": [{"path": "a", "mode": "rwx"}]}}, "mode"),
        ({"capabilities": {"fs": [{"path": "a"}, {"path": "a/b"}]}}, "overlapping"),
        ({"capabilities": {"fs": [{"path": "./a"}]}}, "component"),
        ({"capabilities": {"env": {"BAD-NAME": "x"}}}, "variable name"),
        ({"capabilities": {"env": {"A": 1}}}, "expected str"),
        ({"capabilities": {"net": ["no-port"]}}, "host:port"),
        ({"capabilities": {"net": ["h:70000"]}}, "host:port"),
        ({"args": ["a\x00b"]}, "NUL"),
        ({"abi": "wasi_preview9"}, "abi"),
        ({"not_before": "2026-01-01T00:00:00"}, "offset"),
        ({"not_before": "2027-01-01T00:00:00Z", "expires": "2026-01-01T00:00:00Z"}, "after"),
    ],
)
def test_manifest_schema_refusals(patch: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ManifestError) as err:
        manifest_from_dict({**BASE, **patch})
    assert fragment in err.value.message
    assert err.value.code == "MANIFEST_INVALID"


def test_manifest_predicate_round_trip() -> None:
    text = """
schema = 1
tenant = "app"
version = "2.1.0"
args = ["-v"]
not_before = 2026-01-01T00:00:00Z
[capabilities]
env = { B = "2", A = "1" }
net = ["example.org:443"]
[[capabilities.fs]]
path = "data"
mode = "rw"
[limits]
fuel = 5000
"""
    m = parse_manifest_toml(text.encode())
    again = manifest_from_dict(json.loads(canonical(m.to_predicate())))
    assert again == m
    assert m.capabilities.env == (("A", "1"), ("B", "2"))


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_manifest_parser_never_crashes(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        parse_manifest_toml(data)


any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=25,
)


@given(any_json)
@settings(max_examples=400, deadline=None)
def test_canonical_fast_path_equals_rfc8785(value: Any) -> None:
    import rfc8785

    try:
        want = bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, ValueError, TypeError):
        with pytest.raises(NightCoreError):
            canonical(value)
        return
    assert canonical(value) == want
