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
from nightcore.trust.pubkey import PublicKey

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
    """Our verification key type (cryptography underneath) and securesystemslib's both."""
    from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
    from securesystemslib.signer import Signature

    assert len(WYCHEPROOF) == 151
    for pem, case in WYCHEPROOF:
        ours = PublicKey.from_pem(pem.encode())
        sslib = public_key_from_pem(pem.encode())
        assert ours.keyid == sslib.keyid
        msg = bytes.fromhex(case["msg"])
        try:
            sslib.verify_signature(Signature(sslib.keyid, case["sig"]), msg)
            sslib_accepts = True
        except (UnverifiedSignatureError, VerificationError):
            sslib_accepts = False
        want = case["result"] == "valid"
        assert ours.verify(bytes.fromhex(case["sig"]), msg) == want, case["tcId"]
        assert sslib_accepts == want, case["tcId"]


@pytest.mark.parametrize("fips", [False, True])
def test_key_ids_and_verification_agree_with_securesystemslib(tmp_path: Path, fips: bool) -> None:
    from securesystemslib.signer import CryptoSigner

    signer = CryptoSigner.generate_ecdsa() if fips else CryptoSigner.generate_ed25519()
    sslib = signer.public_key
    ours = PublicKey.from_dict(sslib.keyid, sslib.to_dict())
    assert ours.keyid == sslib.keyid
    assert PublicKey.from_pem(ours.to_pem()).keyid == sslib.keyid
    sig = signer.sign(b"payload")
    assert ours.verify(bytes.fromhex(sig.signature), b"payload")
    assert not ours.verify(bytes.fromhex(sig.signature), b"other")
    assert ours.to_sslib() == sslib
    with pytest.raises(NightCoreError) as err:
        PublicKey.from_dict("0" * 64, sslib.to_dict())
    assert err.value.code == "KEY_ID_MISMATCH"


def test_envelope_signature_check_uses_pae(tmp_path: Path) -> None:
    from nightcore import app
    from nightcore.trust.envelope import sign_payload
    from nightcore.trust.keys import load_signer

    k = app.keygen("k", tmp_path, b"test-passphrase-not-secret")
    signer = load_signer(str(k.private_path))
    raw = sign_payload(b'{"a":1}', [signer])
    env = parse_envelope(raw)
    key = PublicKey.from_dict(signer.public_key.keyid, signer.public_key.to_dict())
    assert verify_signature(env, key)
    forged = ParsedEnvelope("application/other", env.payload, env.signatures)
    assert not verify_signature(forged, key)
    bad = ParsedEnvelope(
        env.payload_type, env.payload, (RawSignature(env.signatures[0].keyid, b"\x00" * 64),)
    )
    assert not verify_signature(bad, key)


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


# -- what one process remembers (docs/security.md) ------------------------------------------


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32))
def test_ed25519_pem_fast_path_agrees_with_cryptography(seed: bytes) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    from nightcore.trust.pubkey import ed25519_raw_from_pem

    pub = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ed25519_raw_from_pem(pem) == pub.public_bytes_raw()
    assert PublicKey.from_pem(pem).keyval["public"] == pub.public_bytes_raw().hex()
    ecdsa = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert ed25519_raw_from_pem(ecdsa) is None  # anything else takes cryptography's loader
    assert PublicKey.from_pem(ecdsa).scheme == "ecdsa-sha2-nistp256"
    lines = pem.splitlines()
    for mangled in (
        pem.replace(b"PUBLIC KEY", b"PRIVATE KEY"),
        b"\n".join([lines[0], lines[1] + b"A", lines[2]]),  # 45 bytes of DER
        b"\n".join([lines[0], lines[1][:-4] + b"!!!!", lines[2]]),  # not base64
        b"\n".join([lines[0], lines[2]]),
    ):
        assert ed25519_raw_from_pem(mangled) is None
        with pytest.raises(NightCoreError):
            PublicKey.from_pem(mangled)


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32))
def test_ed25519_private_pem_fast_path_agrees_with_cryptography(seed: bytes) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    from nightcore.trust.keys import ed25519_from_pkcs8_pem

    private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fast = ed25519_from_pkcs8_pem(pem)
    assert fast is not None and fast.private_bytes_raw() == private.private_bytes_raw()
    assert fast.sign(b"m") == private.sign(b"m")
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    encrypted = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass-phrase"),
    )
    lines = pem.splitlines()
    for not_ours in (
        other,  # any other key type: cryptography's loader
        encrypted,  # encrypted: cryptography's loader
        pem.replace(b"PRIVATE KEY", b"PUBLIC KEY"),
        b"\n".join([lines[0], lines[1] + b"AAAA", lines[2]]),  # longer DER
        b"\n".join([lines[0], lines[1][:-4] + b"!!!!", lines[2]]),  # not base64
        b"\n".join([lines[0], lines[2]]),
    ):
        assert ed25519_from_pkcs8_pem(not_ours) is None


def test_verification_memo_never_remembers_failures() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from nightcore.trust import pubkey

    private = ed25519.Ed25519PrivateKey.generate()
    key = PublicKey.from_fields("ed25519", "ed25519", private.public_key().public_bytes_raw().hex())
    good = private.sign(b"message")
    bad = bytes([good[0] ^ 1]) + good[1:]
    assert not key.verify(bad, b"message")
    assert key.verify(good, b"message")
    assert key.verify(good, b"message")  # remembered: same key, signature and message
    assert not key.verify(bad, b"message")
    assert not key.verify(good, b"messagf")
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    assert not PublicKey.from_fields("ed25519", "ed25519", other).verify(good, b"message")
    for i in range(pubkey._VERIFIED_MAX + 10):  # the memo is bounded and stays correct
        assert key.verify(private.sign(b"%d" % i), b"%d" % i)
    assert len(pubkey._VERIFIED) <= pubkey._VERIFIED_MAX
    assert key.verify(good, b"message") and not key.verify(bad, b"message")


def test_a_remembered_verification_does_not_survive_tampering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same process verifies a package, then sees it tampered: every byte still counts."""
    import base64

    from nightcore import app
    from nightcore.context import NodeContext
    from nightcore.runner.admission import verify_packages
    from tests.conftest import HELLO_WAT, simple_manifest, wat_module, write_tenant

    monkeypatch.setenv("NIGHTCORE_KEY_PASSPHRASE", "pw-for-tests-only")
    ctx = app.init_workspace(tmp_path / "ws")
    key = app.keygen("pub", tmp_path / "keys", b"pw-for-tests-only")
    app.trust_add_key(ctx, key.public_path, scope="*")
    d = write_tenant(ctx.root, "hello", simple_manifest("hello"), wat_module(HELLO_WAT))
    app.sign_tenant(d, str(key.private_path))
    ctx = NodeContext(ctx.root)

    def code() -> str:
        return verify_packages(ctx, ["hello"])[0].decision.code

    assert code() == "OK"
    env_path = d / "module.intoto.dsse.json"
    good = env_path.read_bytes()
    doc = json.loads(good)
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[5] ^= 1
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    env_path.write_text(json.dumps(doc))
    assert code() == "SIGNATURE_INVALID"
    env_path.write_bytes(good)
    assert code() == "OK"
    (d / "manifest.toml").write_text(simple_manifest("hello", 'description = "changed"\n'))
    assert code() == "MANIFEST_MISMATCH"
    (d / "manifest.toml").write_text(simple_manifest("hello"))
    (d / "module.wasm").write_bytes(wat_module(HELLO_WAT) + b"\0")
    assert code() == "DIGEST_MISMATCH"
